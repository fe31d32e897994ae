"""Embedded GGUF models: located, dequantised once per machine into a safetensors cache, loaded once per process."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drope_check.models.checkpoints import (
    file_sha256,
    refuse_incomplete_load,
)
from drope_check.models.embedded import EmbeddedUnavailable, cache_dir
from drope_check.models.pairs import ModelLoadError, embedded_model


def embedded_gguf_path(source: str = "embedded") -> Path:
    """The GGUF file of an embedded model (``"embedded"`` = the default pair's), located (or, for a
    chunked package, assembled once) without loading weights."""
    try:
        return embedded_model(source).gguf_path()
    except EmbeddedUnavailable as exc:
        raise ModelLoadError(str(exc)) from exc


#: Bump when the layout of a cached dequantised model changes (old entries are then ignored).
DEQUANT_CACHE_FORMAT = 1


def dequantized_cache_path(gguf_sha256: str) -> Path:
    """Where the dequantised float32 copy of the GGUF with this sha256 is kept (a folder with
    ``model.safetensors``, ``config.json`` and the tokenizer files)."""
    return cache_dir() / "dequantized" / f"{gguf_sha256}-v{DEQUANT_CACHE_FORMAT}"


#: GGUF tensors that are derived data, not weights (llama.cpp stores Llama 3's rotary frequencies;
#: transformers computes them from the config): never reported as unexpected.
GGUF_DERIVED_TENSORS: tuple[str, ...] = ("rope_freqs.weight",)


def gguf_unmapped_tensors(path: Path, model: nn.Module) -> set[str]:
    """GGUF tensors of ``path`` that map to no parameter of ``model``: transformers' GGUF loader
    drops them without a word (it reports only the model's missing keys), so a GGUF with extra
    tensors (e.g. q/k/v biases a Llama lacks) would load as if they were not there."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    reader = GGUFReader(str(path))
    architecture = (read_field(reader, "general.architecture") or [""])[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=model.config.to_dict())
    mapped = get_gguf_hf_weights_map(model, processor)
    return {t.name for t in reader.tensors if t.name not in mapped and t.name not in GGUF_DERIVED_TENSORS}


def _dequantize_gguf(path: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The GGUF's model (float32) and tokenizer, and its loading info: transformers' missing /
    mis-shaped keys plus, as unexpected, every GGUF tensor that maps to no parameter
    (:func:`gguf_unmapped_tensors`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, output_loading_info=True
    )
    info = {
        **info,
        "unexpected_keys": set(info.get("unexpected_keys") or ()) | gguf_unmapped_tensors(path, model),
    }
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer, info


def _write_dequantized_cache(model: nn.Module, tokenizer: Any, target: Path, gguf_sha256: str) -> None:
    """Save to a temporary sibling folder, then rename it into place: a reader never sees a
    half-written entry, and of two processes writing at once the second simply drops its copy."""
    import tempfile

    import transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # save_pretrained refuses a model loaded from GGUF ("not serializable"); its weights are
        # plain float32 tensors after dequantisation, so write them and a config without the
        # GGUF loading details directly (shared tensors, e.g. tied embeddings, stored once).
        from safetensors.torch import save_model

        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        manifest = {
            "gguf_sha256": gguf_sha256,
            "format": DEQUANT_CACHE_FORMAT,
            "transformers": transformers.__version__,
        }
        (tmp / "drope_check_cache.json").write_text(json.dumps(manifest, indent=1))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "drope_check_cache.json").is_file():
                raise
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=2)
def embedded_base(
    source: str = "embedded", allow_incomplete_weights: bool = False
) -> tuple[nn.Module, Any, str, str, dict[str, list[str]] | None]:
    """Load an embedded GGUF once per process (callers get deep copies), dequantised once per
    machine: the float32 weights are kept as safetensors in :func:`dequantized_cache_path`, keyed by
    the GGUF's sha256. Returns (model, tokenizer, GGUF sha256, where the weights came from, the
    tensors that did not match: None when every tensor was read).

    Both the GGUF and a cache entry must match the model exactly (:func:`refuse_incomplete_load`);
    a GGUF loaded incompletely under ``allow_incomplete_weights`` is never written to the cache."""
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError("loading the embedded GGUF model needs `pip install gguf accelerate`") from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = f"{source} ({embedded_model(source).model_id})"
    path = embedded_gguf_path(source)
    sha = file_sha256(path)
    cached = dequantized_cache_path(sha)
    if (cached / "drope_check_cache.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(cached))
        model, info = AutoModelForCausalLM.from_pretrained(
            str(cached), dtype=torch.float32, output_loading_info=True
        )
        incomplete = refuse_incomplete_load(
            info,
            name,
            f"the dequantised cache {cached}",
            allow=allow_incomplete_weights,
            hint="delete that folder to rebuild it from the GGUF",
        )
        return model.eval(), tokenizer, sha, f"dequantised cache {cached}", incomplete
    model, tokenizer, info = _dequantize_gguf(path)
    incomplete = refuse_incomplete_load(info, name, str(path), allow=allow_incomplete_weights)
    origin = f"dequantised from {path.name} in this process"
    if incomplete:
        origin += " (not cached: its tensors do not match the model)"
        return model.eval(), tokenizer, sha, origin, incomplete
    try:
        _write_dequantized_cache(model, tokenizer, cached, sha)
        origin += f" (cached to {cached})"
    except OSError as exc:  # a read-only or full cache dir costs time, never the measurement
        origin += f" (not cached: {exc})"
    return model.eval(), tokenizer, sha, origin, None
