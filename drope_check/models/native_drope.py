"""DroPE checkpoints read natively: their config.json, the supported model types, the Llama class with QK-norm modules."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig
from drope_check.models.pairs import ModelLoadError, looks_like_local_path
from drope_check.models.qk_norm import add_qk_norm_modules, qk_norm_variant

#: ``model_type`` values of DroPE checkpoints the native loader implements. SakanaAI's code names a
#: DroPE config ``f"{base.model_type}_drope"`` (custom_models/drope.py: ``llama_drope``,
#: ``qwen2_drope``); a plain ``llama`` config carrying ``attention_type`` is the same architecture.
NATIVE_DROPE_MODEL_TYPES: tuple[str, ...] = ("llama_drope", "llama")


def _parse_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{path} is not valid JSON ({exc}); fix it or copy the checkpoint's config.json again"
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a JSON {type(data).__name__}, not the object a model config is")
    return data


def read_config_dict(source: str, revision: str | None) -> dict[str, Any]:
    """config.json of a local directory or a hub id (hub or local HF cache), without remote code.

    A source that can only be a local path (:func:`looks_like_local_path`) is never tried on the hub.
    Raises :class:`ModelLoadError` naming the source for a missing directory, a directory without
    config.json, an unreadable or non-JSON file, or a hub id whose config cannot be fetched."""
    local = Path(source)
    if local.is_dir():
        cfg = local / "config.json"
        if not cfg.is_file():
            raise ModelLoadError(
                f"{source}: no config.json in the directory; pass the folder the checkpoint was saved to"
            )
        return _parse_config_file(cfg)
    if looks_like_local_path(source):
        what = "is a file, not a model directory" if local.exists() else "does not exist"
        raise ModelLoadError(
            f"{source} {what}; pass a local model directory (config.json, *.safetensors, tokenizer) or a hub id"
        )
    try:
        from huggingface_hub import hf_hub_download

        cfg_path = hf_hub_download(source, "config.json", revision=revision)
    except Exception as exc:  # hub unreachable, gated, or not cached
        raise ModelLoadError(
            f"{source} is no local directory, and its config.json cannot be read from the hub or the local HF cache "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); log in (HF_TOKEN) on a machine "
            "with hub access, or pass a local directory"
        ) from exc
    return _parse_config_file(Path(cfg_path))


def is_drope_config(cfg: dict[str, Any]) -> bool:
    """A DroPE checkpoint's config: SakanaAI's ``<base>_drope`` model types, or any config with an
    ``attention_type`` (the DroPE attention variant)."""
    model_type = str(cfg.get("model_type") or "")
    return model_type.endswith("_drope") or "attention_type" in cfg


def native_drope_attention_type(cfg: dict[str, Any], name: str) -> str:
    """The DroPE attention variant of a checkpoint the native loader implements; refuses any other
    (naming the model, its model_type and the supported ones) so it is never loaded as Llama."""
    model_type = cfg.get("model_type")
    if model_type not in NATIVE_DROPE_MODEL_TYPES:
        raise ModelLoadError(
            f"{name}: DroPE checkpoints of model_type {model_type!r} are not implemented by drope_check's native "
            f"loader (supported: {', '.join(NATIVE_DROPE_MODEL_TYPES)}); pass --trust-remote-code to run the "
            "checkpoint's own code instead"
        )
    attention_type = cfg.get("attention_type", "nope")
    try:
        qk_norm_variant(attention_type)
    except ValueError as exc:
        raise ModelLoadError(f"{name}: {exc}") from None
    return attention_type


def llama_config_from_drope(cfg: dict[str, Any]) -> LlamaConfig:
    """The ``LlamaConfig`` the native loader builds a DroPE checkpoint on: the checkpoint's config.json
    without its remote-code keys (``auto_map``, ``architectures``, ``model_type``), so the DroPE keys
    (``attention_type``, ``softmax_scale``) stay readable as attributes. Raises what ``LlamaConfig``
    raises on an invalid config; its callers turn that into a :class:`ModelLoadError` naming the model or file."""
    from transformers import LlamaConfig

    plain = {k: v for k, v in cfg.items() if k not in ("auto_map", "architectures", "model_type")}
    config = LlamaConfig(**plain)
    config.architectures = ["LlamaForCausalLM"]
    return config


@functools.cache
def native_drope_llama_class() -> type:
    """``LlamaForCausalLM`` plus DroPE's QK-norm modules, created before the weights load.

    ``from_pretrained`` then loads ``q_norm`` / ``k_norm`` like any other weight: they are never
    reported as unexpected, and a missing one is reported missing (and refused by the loader)."""
    from transformers import LlamaForCausalLM

    class NativeDropeLlamaForCausalLM(LlamaForCausalLM):
        def __init__(self, config) -> None:
            super().__init__(config)
            add_qk_norm_modules(self, getattr(config, "attention_type", "nope"))

    return NativeDropeLlamaForCausalLM
