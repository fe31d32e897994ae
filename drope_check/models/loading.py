"""Loading one model of a pair: hub ids, local directories, the embedded GGUF, native DroPE.

A *pair* (:mod:`drope_check.models.pairs`) is a RoPE model, its DroPE counterpart and the token to
prepend as BOS. Every loaded model
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

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drope_check.engine.architectures import (
    UnsupportedArchitecture,
    architecture_for_model_type,
    architecture_of,
)
from drope_check.engine.attention import ATTN_IMPLEMENTATION
from drope_check.engine.perplexity import input_device
from drope_check.models.checkpoints import (
    checkpoint_tensor_digests,
    file_sha256,
    own_load_report,
    refuse_incomplete_load,
    refuse_non_finite_weights,
    require_qk_norm_tensors,
    safetensors_files,
)
from drope_check.models.device import default_device, default_dtype
from drope_check.models.embedded import is_embedded
from drope_check.models.gguf_cache import embedded_base
from drope_check.models.native_drope import (
    is_drope_config,
    llama_config_from_drope,
    native_drope_attention_type,
    native_drope_llama_class,
    read_config_dict,
)
from drope_check.models.pairs import ModelLoadError, ModelSpec, embedded_model
from drope_check.models.qk_norm import apply_identity_rotation, install_qk_norm, set_softmax_scale
from drope_check.models.quantization import QUANTIZED_DTYPE, dtype_name, quantization_settings

# ----------------------------------------------------------------------------------------------
# Identity rotation and QK-norm (native DroPE)


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


def resolve_token_id(tokenizer: Any, token: str | None, what: str, model_name: str) -> int:
    """The id of the ``what`` ("bos", ...) token: of ``token`` when one is named, else the tokenizer's own.

    Refuses, naming ``model_name``, a named token the tokenizer does not know (it would map to the
    unknown token) and a tokenizer that defines no such token, so a wrong BOS is never prepended silently.
    The loader and the preflight check both resolve the BOS here, so they refuse the same pairs."""
    if token is not None:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or (
            tokenizer.unk_token_id is not None
            and tid == tokenizer.unk_token_id
            and token != tokenizer.unk_token
        ):
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

    return Path(
        snapshot_download(source, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model"])
    )


def _finish(model: nn.Module) -> nn.Module:
    model.eval()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


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
    :func:`refuse_incomplete_load`) unless ``allow_incomplete_weights``, which records them in
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
    provenance: dict[str, Any] = {
        "model_id": spec.hub_id or spec.source,
        "revision": spec.revision,
        "variant": spec.variant,
    }

    if is_embedded(spec.source):
        if device_map is not None:
            raise ModelLoadError(
                f"{spec.describe()}: a device_map applies to hub ids and local directories; the embedded model fits one "
                "device, pass device instead"
            )
        embedded = embedded_model(spec.source)
        with own_load_report():
            base, tokenizer, sha, origin, incomplete = embedded_base(spec.source, allow_incomplete_weights)
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
                spec,
                dtype,
                device,
                trust_remote_code,
                quantization,
                provenance,
                placement,
                allow_incomplete_weights,
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
    model (:func:`refuse_incomplete_load`) unless ``allow_incomplete_weights``."""
    from transformers import AutoModelForCausalLM

    cfg = read_config_dict(spec.source, spec.revision)
    if not is_drope_config(cfg):  # (a DroPE config: the native loader refuses what it does not implement)
        try:  # refused before any weights load, with the supported list
            architecture_for_model_type(cfg.get("model_type"))
        except UnsupportedArchitecture as exc:
            raise ModelLoadError(f"{spec.describe()}: {exc}") from None
    # mis-shaped tensors are named by refuse_incomplete_load, not raised as transformers' RuntimeError
    kwargs: dict[str, Any] = {
        "revision": spec.revision,
        "dtype": dtype,
        "use_safetensors": True,
        "ignore_mismatched_sizes": True,
        **placement,
    }
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
            incomplete = refuse_incomplete_load(
                info,
                name,
                where,
                allow=allow_incomplete_weights,
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
            incomplete = refuse_incomplete_load(info, spec.describe(), where, allow=allow_incomplete_weights)
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
