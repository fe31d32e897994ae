"""The confound audit on tiny random Llama models (drope_check.audit, sink_stats, fp16_eager).

Tiny models stand in for the embedded pair wherever the invariant is a property of the computation,
not of SmolLM2: a statistics-only variant equals a full re-measurement, ``no-rotary`` equals
``suite`` exactly on an identity-rotation model and not on a RoPE model, and fp16 eager attention
overflows on q/k norms like DroPE Llama-2 layer 1. ``test_audit_embedded.py`` checks the DroPE-side
invariant on the embedded pair itself.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import eager_attention_forward

from drope_check import audit, claims
from drope_check.attention import allowed_mask
from drope_check.fp16_eager import attention_to_position0_fp16_eager
from drope_check.measure import cut_to_prompt_tokens, measure_model
from drope_check.models import LoadedModel, ModelSpec, PairSpec, apply_identity_rotation
from drope_check.protocol import FAITHFUL, Protocol
from drope_check.sink_stats import derive_statistics
from drope_check.tiny_models import build_llama, llama_config

TOY_EXPECTED = Path(__file__).resolve().parent / "data" / "expected"
SINK_KEYS = ("sink_rate", "sink_rate_excl_self", "attention_nan_heads")


def tiny_llama(seed: int = 0, attention_bias: bool = False) -> LlamaForCausalLM:
    """hidden 32, 4 heads of dim 8, 2 KV heads, 3 layers, vocab 64; attention far from uniform."""
    return build_llama(llama_config(layers=3, max_positions=600, attention_bias=attention_bias), seed=seed)


def loaded(model: LlamaForCausalLM, role: str = "rope", variant: str = "rope") -> LoadedModel:
    return LoadedModel(model, None, ModelSpec(role, "tiny", variant), bos_token_id=0, pad_token_id=0,
                       provenance={"model_id": f"tiny-{variant}"})


def sequences(seed: int = 3, lengths=(20, 15, 30, 12, 9)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[0] + torch.randint(1, 64, (n,), generator=g).tolist() for n in lengths]


def comparable(model_obj: dict[str, Any]) -> dict[str, Any]:
    """A model object without what legitimately differs between two runs (timing, precision note)."""
    out = json.loads(json.dumps(model_obj))
    out.pop("provenance", None)
    return out


# ----------------------------------------------------------------------------------------------
# statistics-only variants: derived == re-measured


@pytest.mark.parametrize("changes", [
    {"sink_tau": 0.2}, {"sink_tau": 0.5}, {"sink_strict": True}, {"sink_self_term": False},
    {"sink_tau": 0.5, "sink_strict": True, "sink_self_term": False},
])
def test_statistics_only_variant_equals_a_full_remeasurement(changes):
    model, seqs = loaded(tiny_llama()), sequences()
    suite = measure_model(model, seqs, FAITHFUL)
    protocol = FAITHFUL.replace(**changes)
    remeasured = comparable(measure_model(model, seqs, protocol))
    derived = comparable(derive_statistics(json.loads(json.dumps(suite)), protocol))  # from the JSON, as a reader would
    assert derived == remeasured
    assert remeasured["layers"]["sink_rate"] != comparable(suite)["layers"]["sink_rate"] or changes == {"sink_strict": True}


def test_per_sequence_scores_are_kept_and_reproduce_the_rates():
    model, seqs = loaded(tiny_llama()), sequences()
    m = measure_model(model, seqs, FAITHFUL)
    per_seq = m["heads"]["sink_score_per_sequence"]
    assert len(per_seq) == len(seqs) and len(per_seq[0]) == m["n_layers"] and len(per_seq[0][0]) == m["n_heads"]
    # an independent recomputation of layer 1's rate at tau = 0.3 from the stored scores
    by_hand = sum(sum(s >= 0.3 for s in seq[1]) / len(seq[1]) for seq in per_seq) / len(per_seq)
    assert m["layers"]["sink_rate"][1] == pytest.approx(by_hand, abs=1e-15)
    excl = m["heads"]["sink_score_excl_self_per_sequence"]
    assert all(a > b for a, b in zip(per_seq[0][1], excl[0][1], strict=True))  # t = 0 adds (1 - mean) / T > 0


# ----------------------------------------------------------------------------------------------
# no-rotary


def test_no_rotary_equals_suite_exactly_on_identity_rotation_and_not_on_rope():
    seqs = sequences()
    projections = FAITHFUL.replace(attention_source="projections")
    nope = loaded(apply_identity_rotation(tiny_llama()), "drope", "nope-zeroshot")
    assert comparable(measure_model(nope, seqs, projections)) == comparable(measure_model(nope, seqs, FAITHFUL))
    rope = loaded(tiny_llama())
    a, b = measure_model(rope, seqs, projections), measure_model(rope, seqs, FAITHFUL)
    assert a["heads"]["sink_score_per_sequence"] != b["heads"]["sink_score_per_sequence"]
    assert a["layers"]["entropy"] == b["layers"]["entropy"]  # only attention statistics change


# ----------------------------------------------------------------------------------------------
# fp16-eager


def test_fp16_eager_weights_equal_transformers_eager_in_fp16():
    torch.manual_seed(0)
    b, h, kvh, t, d = 2, 4, 2, 9, 8
    q, k, v = torch.randn(b, h, t, d) * 3, torch.randn(b, kvh, t, d) * 3, torch.randn(b, kvh, t, d)
    lengths = [9, 6]
    keep = torch.tensor([[j < n for j in range(t)] for n in lengths])
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool)).view(1, 1, t, t) & keep.view(b, 1, 1, t)
    additive = torch.zeros(b, 1, t, t, dtype=torch.float16).masked_fill(~allowed, torch.finfo(torch.float16).min)

    class Module(torch.nn.Module):
        num_key_value_groups = h // kvh

    _, weights = eager_attention_forward(Module().eval(), q.half(), k.half(), v.half(), additive, scaling=d**-0.5)
    mine = attention_to_position0_fp16_eager(q, k, allowed_mask(additive, t, t, b, "cpu"), d**-0.5)
    assert torch.equal(mine, weights[..., 0].double())


def overflow_model() -> LlamaForCausalLM:
    """Layer 1 with q/k norms like DroPE Llama-2 layer 1 (~6.6e3 / 5.5e3) on query heads 0-1 / KV head 0.

    q and k are constant (weights zeroed, biases set), so q.k = 6.6e3 * 5.5e3 = 3.6e7 > 65504 for
    every key: fp16 gives inf, softmax NaN. The exact computation gives a uniform row (all logits
    equal): attention to BOS 1 / (t + 1), sink score H_T / T, a sink at tau 0.3 for T <= 9.
    """
    model = apply_identity_rotation(tiny_llama(attention_bias=True))
    attn = model.model.layers[1].self_attn
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            if proj.bias is not None:
                proj.bias.zero_()
        attn.q_proj.weight[:16].zero_()
        attn.k_proj.weight[:8].zero_()
        direction = torch.ones(8) / math.sqrt(8)
        attn.q_proj.bias[:8] = 6586.0 * direction
        attn.q_proj.bias[8:16] = 6586.0 * direction
        attn.k_proj.bias[:8] = 5514.0 * direction
    return model


def test_fp16_eager_reproduces_the_overflow_nan_heads_counted_as_non_sinks():
    seqs = [s[:8] for s in sequences()]  # T = 8: short prompts, as upstream's
    model = loaded(overflow_model(), "drope", "drope")
    exact = measure_model(model, seqs, FAITHFUL)
    fp16 = measure_model(model, seqs, FAITHFUL.replace(stats_dtype="fp16-eager"))
    n = len(seqs)
    # exact: heads 0 and 1 of layer 1 attend uniformly, score H_8 / 8 = 0.3397 >= 0.3: sinks
    h8 = sum(1 / (t + 1) for t in range(8)) / 8
    for seq in exact["heads"]["sink_score_per_sequence"]:
        assert seq[1][0] == pytest.approx(h8, rel=1e-6) and seq[1][1] == pytest.approx(h8, rel=1e-6)
    assert exact["scalars"]["attention_nan_heads"] == 0
    # fp16 eager: the same heads are NaN (null in JSON), not sinks, and counted
    assert fp16["layers"]["attention_nan_heads"] == [0, 2 * n, 0]
    assert fp16["scalars"]["attention_nan_heads"] == 2 * n
    for seq in fp16["heads"]["sink_score_per_sequence"]:
        assert seq[1][0] is None and seq[1][1] is None and None not in seq[1][2:]
    assert fp16["heads"]["sink_score"][1][:2] == [None, None]
    exact_sinks = [sum(s >= 0.3 for s in seq[1]) for seq in exact["heads"]["sink_score_per_sequence"]]
    fp16_sinks = [sum(s is not None and s >= 0.3 for s in seq[1]) for seq in fp16["heads"]["sink_score_per_sequence"]]
    assert [a - b for a, b in zip(exact_sinks, fp16_sinks, strict=True)] == [2] * n
    assert fp16["layers"]["sink_rate"][1] == pytest.approx(exact["layers"]["sink_rate"][1] - 2 / 4)
    json.dumps(fp16, allow_nan=False)  # NaN never reaches the JSON


# ----------------------------------------------------------------------------------------------
# the audit end to end on a tiny pair with the toy claim file


class Texts:
    def to_provenance(self) -> dict[str, Any]:
        return {"name": "tiny random ids", "source": "tests", "n_texts": 5, "sha256": "0" * 64}


def tiny_source(model_factory=tiny_llama, counter: list | None = None) -> audit.AuditSource:
    spec = PairSpec("toy", ModelSpec("rope", "tiny", "rope"), ModelSpec("drope", "tiny", "drope"), None, "tiny pair")
    seqs = sequences()

    def load(model_spec: ModelSpec, quantization: str | None) -> LoadedModel:
        model = model_factory()
        if model_spec.role == "drope":
            apply_identity_rotation(model)
        return loaded(model, model_spec.role, model_spec.variant)

    def seqs_for(_loaded: LoadedModel, protocol: Protocol) -> list[list[int]]:
        if counter is not None:
            counter.append((_loaded.spec.role, protocol))
        return cut_to_prompt_tokens(seqs, protocol.prompt_tokens)

    return audit.AuditSource(spec, load, seqs_for, Texts())


@pytest.fixture(scope="module")
def toy_audit():
    passes: list = []
    result = audit.run_audit("toy", None, source=tiny_source(counter=passes),
                             claim_set=claims.load_claims("toy", TOY_EXPECTED), gpu_available=False)
    return result, passes


def test_audit_runs_each_forward_pass_once_and_derives_statistics(toy_audit):
    result, passes = toy_audit
    # rope: suite, no-rotary, padded-rope, padded (same rope protocol as padded-rope: shared),
    # fp16-eager, short-prompts, upstream; drope: suite (padded-rope's), no-rotary, padded, fp16, short, upstream
    assert len(passes) == 6 + 6 and len(set(passes)) == len(passes)
    status = {v["name"]: v for v in result["audit"]["variants"]}
    for name in ("self-excluded", "tau-0.2", "tau-0.5", "strict", "spike-max-write"):
        assert status[name]["status"] == "derived" and status[name]["pass_of"] == {"rope": "suite", "drope": "suite"}
    assert status["padded-rope"]["pass_of"] == {"drope": "suite"}
    assert status["4bit-nf4"]["status"] == "skipped" and "CUDA GPU" in status["4bit-nf4"]["reason"]
    docs = result["measurements"]
    assert comparable(docs["padded-rope"]["models"]["drope"]) | {"protocol": None} == \
        comparable(docs["suite"]["models"]["drope"]) | {"protocol": None}


def test_audit_suite_column_equals_a_direct_measurement(toy_audit):
    result, _ = toy_audit
    model = loaded(tiny_llama())
    direct = measure_model(model, sequences(), FAITHFUL, ("bos_mlp_ablation:argmax-ratio", "bos_mlp_ablation:max-write",
                                                           "qk_disruption:report"))  # max-write: for spike-max-write
    suite = result["measurements"]["suite"]["models"]["rope"]
    assert comparable(suite) | {"protocol": None} == comparable(direct) | {"protocol": None}
    rows = {r["key"]: r for r in result["audit"]["claims"]}
    assert rows["sink_rate_average[toy:rope]"]["cells"]["suite"]["value"] == direct["scalars"]["sink_rate_average"]
    tau = result["measurements"]["tau-0.5"]["models"]["rope"]
    assert rows["sink_rate_average[toy:rope]"]["cells"]["tau-0.5"]["value"] == tau["scalars"]["sink_rate_average"]


def test_audit_matrix_covers_every_claim_and_variant(toy_audit):
    result, _ = toy_audit
    doc = result["audit"]
    names = [v["name"] for v in doc["variants"]]
    claim_set = claims.load_claims("toy", TOY_EXPECTED)
    assert [r["key"] for r in doc["claims"]] == [c.key for c in claim_set.claims]
    for row in doc["claims"]:
        assert list(row["cells"]) == names
        assert row["robustness"]["verdict"] in (audit.ROBUST, audit.FRAGILE, audit.UPSTREAM_ONLY, audit.NOT_EVALUATED)
        if row["kind"] == "verdict":
            assert all("holds" in c for n, c in row["cells"].items() if not c.get("skipped")), row["key"]
        if row["kind"] == "golden":
            assert all("holds" not in c for c in row["cells"].values())  # no verdict under another protocol
            assert all("change" in c for n, c in row["cells"].items() if not c.get("skipped"))
    rows = {r["key"]: r for r in doc["claims"]}
    assert rows["bos_mlp_ablation_ratio[toy:drope]"]["robustness"]["verdict"] == audit.NOT_EVALUATED
    spike = rows["bos_spike_layer[toy:rope]"]["cells"]["spike-max-write"]
    assert spike["read"] == ["rope:scalars.bos_spike_layer_max_write"]
    assert spike["value"] == result["measurements"]["suite"]["models"]["rope"]["scalars"]["bos_spike_layer_max_write"]


def test_audit_outputs_and_the_claims_report_section(toy_audit, tmp_path):
    result, _ = toy_audit
    audit.write_audit(result, tmp_path / "audit" / "toy")
    folder = tmp_path / "audit" / "toy"
    doc = json.loads((folder / "audit.json").read_text())
    assert doc == json.loads(json.dumps(result["audit"]))
    assert (folder / audit.HEATMAP_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "audit.md").read_text()
    for row in doc["claims"]:
        assert row["key"] in md
    assert (folder / "measurements" / "tau-0.5.json").is_file()
    section = "\n".join(audit.report_section(tmp_path))
    assert "audit/toy/audit.md" in section
    for row in doc["claims"]:
        assert f"| {row['key']} | {row['robustness']['verdict']} |" in section


def cells(**verdicts) -> dict[str, dict[str, Any]]:
    return {name: {"value": 1.0, "holds": holds} for name, holds in verdicts.items()}


def test_robustness_verdicts():
    from drope_check.variants import VARIANTS

    claim = claims.load_claims("toy", TOY_EXPECTED).get("sink_rate_average", "rope")
    rob = audit.robustness
    assert rob(claim, cells(suite=True, **{"no-rotary": True, "tau-0.5": True}), VARIANTS)["verdict"] == audit.ROBUST
    fragile = rob(claim, cells(suite=True, **{"no-rotary": True, "tau-0.5": False}), VARIANTS)
    assert fragile["verdict"] == audit.FRAGILE and fragile["variants"] == ["tau-0.5"]
    up = rob(claim, cells(suite=False, upstream=True, **{"padded-rope": True, "tau-0.5": False}), VARIANTS)
    assert up["verdict"] == audit.UPSTREAM_ONLY and up["variants"] == ["padded-rope", "upstream"]
    mixed = rob(claim, cells(suite=False, upstream=True, **{"tau-0.2": True}), VARIANTS)
    assert mixed["verdict"] == audit.FRAGILE and mixed["variants"] == ["tau-0.2", "upstream"]  # VARIANTS order


# ----------------------------------------------------------------------------------------------
# errors


def test_non_finite_value_names_model_layer_quantity_and_variant():
    doc = {"models": {"rope": {"provenance": {"model_id": "m"}, "layers": {"entropy": [1.0, 2.0, float("nan")]}}}}
    with pytest.raises(audit.AuditError, match=r"variant padded: model rope \(m\).*layer 2, quantity entropy"):
        audit.check_finite(doc, "padded")


def test_capture_error_during_a_variant_names_the_variant():
    def broken() -> LlamaForCausalLM:
        model = tiny_llama()
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
        return model

    with pytest.raises(audit.AuditError, match=r"variant\(s\) suite.*layer 1"):
        audit.run_audit("toy", "suite", source=tiny_source(broken), claim_set=claims.load_claims("toy", TOY_EXPECTED),
                        gpu_available=False)


def test_cli_user_errors_exit_2_before_loading():
    for args, needle in ((["--variants", "tau-9"], "unknown variant"), (["--pair", "nope"], "unknown pair")):
        proc = subprocess.run([sys.executable, "-m", "drope_check.cli", "audit", *args], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1], timeout=300)
        assert proc.returncode == 2
        assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
