"""The 4-bit loads as upstream ran them: fp16 compute AND fp16 activations, recorded in provenance; and the
suite's own statistics stay finite where fp16 q.k overflows.

What is claimed: ``--quantization nf4 | nf4-double | fp4`` (and the audit's ``4bit-nf4`` / ``4bit-fp4``
variants) builds bitsandbytes' config with ``bnb_4bit_compute_dtype=float16`` and loads the model in
float16 (upstream passed no ``torch_dtype``; transformers 4.x's bitsandbytes quantizer then chose
float16), and every model's provenance names the quant type, double quantization, compute dtype and
activations dtype. bitsandbytes itself needs CUDA, so here the config and provenance are built without
it and the float16 path runs on a plain float16 tiny model; ``benchmarks/gpu_smoke.py`` loads the real
4-bit models on a GPU.

Where fp16 overflows (DroPE Llama-2-7B's layer 1: per-head q/k norms ~6.6e3 / 5.5e3, so q.k reaches
~3.6e7, far past float16's 65504), eager attention turns the logits into inf and the weights into NaN.
The suite's capture never multiplies q.k in float16: the rounding bound sends that layer to its float64
path (:data:`drope_check.engine.capture.AUTO_FLOAT32_BOUND`), so its attention to BOS is finite and equals a
float64 softmax of the very q/k the model attended with (within the suite's 1e-4 relative promise).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import drope_check.models.loading as models
from drope_check.audit import run as audit
from drope_check.audit.variants import VARIANTS
from drope_check.engine.attention import observe_attention
from drope_check.engine.protocol import Protocol
from drope_check.measurements.measure import run_capture
from drope_check.models.loading import load_model
from drope_check.models.pairs import ModelSpec
from drope_check.models.quantization import QUANTIZATIONS, QUANTIZED_DTYPE, quantization_settings
from drope_check.models.tiny_checkpoints import write_pair_checkpoints
from drope_check.models.tiny_models import build_llama, llama_config

#: The suite's promise for attention to BOS against a float64 softmax (README, capture.py).
PROMISED_RELATIVE = 1e-4
#: DroPE Llama-2-7B layer 1's per-head q / k norms (claims-and-provenance notes, confound 3).
DROPE_LAYER1_QK_NORMS = (6.6e3, 5.5e3)


@pytest.mark.parametrize(
    ("name", "quant_type", "double"),
    [("nf4", "nf4", False), ("nf4-double", "nf4", True), ("fp4", "fp4", False)],
)
def test_settings_and_bitsandbytes_config_are_fp16_compute(name, quant_type, double):
    settings = quantization_settings(name)
    assert settings == {
        "method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": quant_type,
        "bnb_4bit_use_double_quant": double,
        "bnb_4bit_compute_dtype": "float16",
        "activations_dtype": "float16",
    }
    config = models._quantization_config(name, QUANTIZED_DTYPE).to_dict()
    assert config["load_in_4bit"] and config["bnb_4bit_quant_type"] == quant_type
    assert config["bnb_4bit_use_double_quant"] is double and config["bnb_4bit_compute_dtype"] == "float16"


def test_unknown_quantization_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="nf4, nf4-double, fp4"):
        quantization_settings("int8")
    assert tuple(QUANTIZATIONS) == ("nf4", "nf4-double", "fp4")


def test_gpu_variants_name_their_quantization():
    assert VARIANTS["4bit-nf4"].quantization == "nf4" and VARIANTS["4bit-fp4"].quantization == "fp4"
    for name in ("4bit-nf4", "4bit-fp4"):
        assert "fp16 compute and activations" in VARIANTS[name].description


#: ``softmax_scale`` of the two fp16 cases: SakanaAI's config key replacing ``head_dim ** -0.5``. At the default
#: (0.25 here) layer 1's logits reach ~1e6, the rounding bound sends it to float64 and its attention is
#: saturated (0 or 1); at 1e-6 the logits are ~10, float32 is enough by the bound and the attention to BOS
#: takes values inside (0, 1), while the raw fp16 product q.k^T (eager multiplies before scaling) still overflows.
SCALES = {
    "default-scale": (None, "auto: 1 of 3 layer passes in float64"),
    "small-scale": (1e-6, "auto: 0 of 3 layer passes in float64"),
}


def drope_checkpoint(root: Path, softmax_scale: float | None) -> Path:
    """A tiny DroPE checkpoint (SakanaAI layout) whose layer-1 q/k norms are DroPE Llama-2-7B's."""
    model = build_llama(
        llama_config(layers=3, hidden_size=64, heads=4, kv_heads=2, head_dim=16, vocab_size=64),
        seed=1,
        attn=None,
    )
    return write_pair_checkpoints(
        model, root, layer_qk_norms={1: DROPE_LAYER1_QK_NORMS}, softmax_scale=softmax_scale
    )[1]


@pytest.fixture(scope="module")
def drope_dir(tmp_path_factory) -> Path:
    return drope_checkpoint(tmp_path_factory.mktemp("fp16"), None)


def test_a_4bit_load_is_float16_with_its_settings_in_provenance(drope_dir, monkeypatch):
    """load_model's own flow for ``quantization="nf4-double"`` on CPU, bitsandbytes' config left out (it needs
    CUDA): the model comes up in float16 and provenance records what the 4-bit load would be."""
    built = []

    def no_bitsandbytes(quantization, dtype):
        built.append((quantization, dtype))
        return None

    monkeypatch.setattr(models, "_quantization_config", no_bitsandbytes)
    loaded = load_model(
        ModelSpec("drope", str(drope_dir), "drope"), bos_token="<s>", device="cpu", quantization="nf4-double"
    )
    assert built == [("nf4-double", torch.float16)]
    assert next(loaded.model.parameters()).dtype == torch.float16
    prov = loaded.provenance
    assert prov["dtype"] == "float16" and prov["quantization"] == "nf4-double"
    assert prov["quantization_config"] == quantization_settings("nf4-double")


def test_the_audit_loads_its_4bit_variants_in_float16_whatever_dtype_was_asked(monkeypatch):
    calls = []
    monkeypatch.setattr("drope_check.models.loading.load_model", lambda spec, **kw: calls.append(kw))
    monkeypatch.setattr("drope_check.measurements.measure.load_texts", lambda protocol, options: None)
    from drope_check.measurements.measure import MeasureOptions

    source = audit.default_source("smollm2-135m", MeasureOptions(dtype="bfloat16"))
    source.load(source.spec.rope, "nf4")
    source.load(source.spec.rope, None)
    assert (
        calls[0]["dtype"] is None and calls[0]["quantization"] == "nf4"
    )  # None -> models_quantization.QUANTIZED_DTYPE
    assert calls[1]["dtype"] == torch.bfloat16 and calls[1]["quantization"] is None


@pytest.mark.parametrize("case", list(SCALES))
def test_fp16_model_keeps_the_suites_statistics_finite_where_fp16_qk_overflows(case, tmp_path):
    softmax_scale, precision_note = SCALES[case]
    folder = drope_checkpoint(tmp_path, softmax_scale)
    loaded = load_model(
        ModelSpec("drope", str(folder), "drope"), bos_token="<s>", device="cpu", dtype=torch.float16
    )
    g = torch.Generator().manual_seed(0)
    seqs = [[1, *torch.randint(3, 64, (n,), generator=g).tolist()] for n in (40, 25)]
    seen: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def grab(call) -> None:
        seen[int(call.module.layer_idx)] = (call.query, call.key, call.scaling)

    with observe_attention(loaded.model, grab):
        captures, nll, precision = run_capture(loaded, seqs, Protocol(batch_size=2, max_tokens=64, n_texts=2))
    q16, k16, scaling = seen[1]
    assert q16.dtype == torch.float16  # the model attended with fp16 q/k ...
    groups = q16.shape[1] // k16.shape[1]
    k16 = k16.repeat_interleave(groups, dim=1)
    eager_logits = q16 @ k16.transpose(-1, -2)  # ... whose fp16 product overflows, as eager attention's does
    assert torch.isinf(eager_logits).any(), "the test no longer exercises the fp16 overflow"
    assert precision.startswith(precision_note), precision
    for seq in captures:
        for name, values in seq.layers.items():
            assert all(torch.isfinite(torch.tensor(values))), name
    assert all(torch.isfinite(torch.tensor([s for s, _ in nll])))
    # layer 1's attention to BOS is a float64 softmax of the observed fp16 q/k (one batch: both sequences)
    q, k = q16.double(), k16.double()
    t = q.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    inside = 0
    for row, seq in enumerate(captures):
        n = seq.n_rows
        scores = (q[row, :, :n] @ k[row, :, :n].transpose(-1, -2)) * scaling
        ref = torch.softmax(scores.masked_fill(~causal[:n, :n], float("-inf")), dim=-1)[..., 0]
        got = seq.attn_to_bos[1]
        assert torch.isfinite(got).all()
        err = ((got - ref).abs() / ref.clamp_min(1e-300)).max().item()
        assert err <= PROMISED_RELATIVE, f"row {row}: layer-1 attention to BOS off by {err:.3g} relative"
        inside += int(((ref > 0.01) & (ref < 0.99)).sum())
    if softmax_scale is not None:
        assert inside > 20, "the small-scale case should give attention weights inside (0, 1)"
