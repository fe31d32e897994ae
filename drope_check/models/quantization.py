"""4-bit loads as upstream ran them (bitsandbytes), device maps, and how provenance names a dtype."""

from __future__ import annotations

from typing import Any

import torch

#: ``--quantization`` values -> (``bnb_4bit_quant_type``, ``bnb_4bit_use_double_quant``). Upstream's phase-metrics
#: script asked for NF4 with double quantization (``nf4-double``); its layer-1 ablation and sink-rate fix scripts
#: passed only ``load_in_4bit=True``, i.e. bitsandbytes' default type FP4 (``fp4``).
QUANTIZATIONS: dict[str, tuple[str, bool]] = {
    "nf4": ("nf4", False),
    "nf4-double": ("nf4", True),
    "fp4": ("fp4", False),
}

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
