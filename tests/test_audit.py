"""The confound audit on tiny random Llama models (drope_check.audit.run, sink_stats, fp16_eager).

Tiny models stand in for the embedded pair wherever the invariant is a property of the computation,
not of SmolLM2: a statistics-only variant equals a full re-measurement, ``no-rotary`` equals
``suite`` exactly on an identity-rotation model and not on a RoPE model, and fp16 eager attention
overflows on q/k norms like DroPE Llama-2 layer 1. ``test_audit_embedded.py`` checks the DroPE-side
invariant on the embedded pair itself.
"""

from __future__ import annotations

import dataclasses
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

from drope_check.audit import cells as audit_cells
from drope_check.audit import commands as audit_commands
from drope_check.audit import render as audit_render
from drope_check.audit import run as audit
from drope_check.audit.author import AUTHOR_COLUMN
from drope_check.claims import api as claims
from drope_check.engine.attention import allowed_mask
from drope_check.engine.fp16_eager import attention_to_position0_fp16_eager
from drope_check.engine.protocol import FAITHFUL, Protocol
from drope_check.engine.sink_stats import derive_statistics
from drope_check.measurements.measure import cut_to_prompt_tokens, measure_model
from drope_check.models.loading import LoadedModel
from drope_check.models.pairs import ModelSpec, PairSpec
from drope_check.models.qk_norm import apply_identity_rotation
from drope_check.models.tiny_models import build_llama, llama_config

TOY_EXPECTED = Path(__file__).resolve().parent / "data" / "expected"
SINK_KEYS = ("sink_rate", "sink_rate_excl_self", "attention_nan_heads")


def tiny_llama(seed: int = 0, attention_bias: bool = False) -> LlamaForCausalLM:
    """hidden 32, 4 heads of dim 8, 2 KV heads, 3 layers, vocab 64; attention far from uniform."""
    return build_llama(llama_config(layers=3, max_positions=600, attention_bias=attention_bias), seed=seed)


def loaded(model: LlamaForCausalLM, role: str = "rope", variant: str = "rope") -> LoadedModel:
    return LoadedModel(
        model,
        None,
        ModelSpec(role, "tiny", variant),
        bos_token_id=0,
        pad_token_id=0,
        provenance={"model_id": f"tiny-{variant}"},
    )


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


@pytest.mark.parametrize(
    "changes",
    [
        {"sink_tau": 0.2},
        {"sink_tau": 0.5},
        {"sink_strict": True},
        {"sink_self_term": False},
        {"sink_tau": 0.5, "sink_strict": True, "sink_self_term": False},
    ],
)
def test_statistics_only_variant_equals_a_full_remeasurement(changes):
    model, seqs = loaded(tiny_llama()), sequences()
    suite = measure_model(model, seqs, FAITHFUL)
    protocol = FAITHFUL.replace(**changes)
    remeasured = comparable(measure_model(model, seqs, protocol))
    derived = comparable(
        derive_statistics(json.loads(json.dumps(suite)), protocol)
    )  # from the JSON, as a reader would
    assert derived == remeasured
    assert remeasured["layers"]["sink_rate"] != comparable(suite)["layers"]["sink_rate"] or changes == {
        "sink_strict": True
    }


def test_per_sequence_scores_are_kept_and_reproduce_the_rates():
    model, seqs = loaded(tiny_llama()), sequences()
    m = measure_model(model, seqs, FAITHFUL)
    per_seq = m["heads"]["sink_score_per_sequence"]
    assert (
        len(per_seq) == len(seqs) and len(per_seq[0]) == m["n_layers"] and len(per_seq[0][0]) == m["n_heads"]
    )
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
    assert comparable(measure_model(nope, seqs, projections)) == comparable(
        measure_model(nope, seqs, FAITHFUL)
    )
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
    additive = torch.zeros(b, 1, t, t, dtype=torch.float16).masked_fill(
        ~allowed, torch.finfo(torch.float16).min
    )

    class Module(torch.nn.Module):
        num_key_value_groups = h // kvh

    _, weights = eager_attention_forward(
        Module().eval(), q.half(), k.half(), v.half(), additive, scaling=d**-0.5
    )
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
    fp16_sinks = [
        sum(s is not None and s >= 0.3 for s in seq[1]) for seq in fp16["heads"]["sink_score_per_sequence"]
    ]
    assert [a - b for a, b in zip(exact_sinks, fp16_sinks, strict=True)] == [2] * n
    assert fp16["layers"]["sink_rate"][1] == pytest.approx(exact["layers"]["sink_rate"][1] - 2 / 4)
    json.dumps(fp16, allow_nan=False)  # NaN never reaches the JSON


# ----------------------------------------------------------------------------------------------
# the audit end to end on a tiny pair with the toy claim file


class Texts:
    def to_provenance(self) -> dict[str, Any]:
        return {"name": "tiny random ids", "source": "tests", "n_texts": 5, "sha256": "0" * 64}


def tiny_source(model_factory=tiny_llama, counter: list | None = None) -> audit.AuditSource:
    spec = PairSpec(
        "toy", ModelSpec("rope", "tiny", "rope"), ModelSpec("drope", "tiny", "drope"), None, "tiny pair"
    )
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
    result = audit.run_audit(
        "toy",
        None,
        source=tiny_source(counter=passes),
        claim_set=claims.load_claims("toy", TOY_EXPECTED),
        gpu_available=False,
    )
    return result, passes


def test_audit_runs_each_forward_pass_once_and_derives_statistics(toy_audit):
    result, passes = toy_audit
    # rope: suite, no-rotary, padded-rope, padded (same rope protocol as padded-rope: shared),
    # fp16-eager, short-prompts, upstream; drope: suite (padded-rope's), no-rotary, padded, fp16, short, upstream
    assert len(passes) == 6 + 6 and len(set(passes)) == len(passes)
    status = {v["name"]: v for v in result["audit"]["variants"]}
    for name in ("self-excluded", "tau-0.2", "tau-0.5", "strict", "spike-max-write"):
        assert status[name]["status"] == "derived" and status[name]["pass_of"] == {
            "rope": "suite",
            "drope": "suite",
        }
    assert status["padded-rope"]["pass_of"] == {"drope": "suite"}
    assert status["4bit-nf4"]["status"] == "skipped" and "CUDA GPU" in status["4bit-nf4"]["reason"]
    docs = result["measurements"]
    assert comparable(docs["padded-rope"]["models"]["drope"]) | {"protocol": None} == comparable(
        docs["suite"]["models"]["drope"]
    ) | {"protocol": None}


def test_audit_suite_column_equals_a_direct_measurement(toy_audit):
    result, _ = toy_audit
    model = loaded(tiny_llama())
    direct = measure_model(
        model,
        sequences(),
        FAITHFUL,
        ("bos_mlp_ablation:argmax-ratio", "bos_mlp_ablation:max-write", "qk_disruption:report"),
    )  # max-write: for spike-max-write
    suite = result["measurements"]["suite"]["models"]["rope"]
    assert comparable(suite) | {"protocol": None} == comparable(direct) | {"protocol": None}
    rows = {r["key"]: r for r in result["audit"]["claims"]}
    assert (
        rows["sink_rate_average[toy:rope]"]["cells"]["suite"]["value"]
        == direct["scalars"]["sink_rate_average"]
    )
    tau = result["measurements"]["tau-0.5"]["models"]["rope"]
    assert (
        rows["sink_rate_average[toy:rope]"]["cells"]["tau-0.5"]["value"]
        == tau["scalars"]["sink_rate_average"]
    )


def test_audit_matrix_covers_every_claim_and_variant(toy_audit):
    result, _ = toy_audit
    doc = result["audit"]
    names = [v["name"] for v in doc["variants"]]
    claim_set = claims.load_claims("toy", TOY_EXPECTED)
    assert [r["key"] for r in doc["claims"]] == [c.key for c in claim_set.claims]
    for row in doc["claims"]:
        assert list(row["cells"]) == names
        assert row["robustness"]["verdict"] in (
            audit_cells.ROBUST,
            audit_cells.FRAGILE,
            audit_cells.UPSTREAM_ONLY,
            audit_cells.NOT_EVALUATED,
        )
        if row["kind"] == "verdict":
            assert all("holds" in c for n, c in row["cells"].items() if not c.get("skipped")), row["key"]
        if row["kind"] == "golden":
            assert all("holds" not in c for c in row["cells"].values())  # no verdict under another protocol
            assert all("change" in c for n, c in row["cells"].items() if not c.get("skipped"))
    rows = {r["key"]: r for r in doc["claims"]}
    assert rows["bos_mlp_ablation_ratio[toy:drope]"]["robustness"]["verdict"] == audit_cells.NOT_EVALUATED
    spike = rows["bos_spike_layer[toy:rope]"]["cells"]["spike-max-write"]
    assert spike["read"] == ["rope:scalars.bos_spike_layer_max_write"]
    assert (
        spike["value"]
        == result["measurements"]["suite"]["models"]["rope"]["scalars"]["bos_spike_layer_max_write"]
    )


def test_goldens_that_record_their_protocol_get_a_value_under_every_measured_variant(toy_audit):
    """A golden records the protocol it was measured under (the claims run skips it elsewhere); the audit
    measures under other protocols on purpose and must show the value and its change, never a skip.
    (The shipped goldens record protocols; before this test every protocol-changing cell showed '-'.)"""
    from drope_check.claims.protocol_identity import identity_for_claim

    result, _ = toy_audit
    suite = result["measurements"]["suite"]
    claim_set = claims.load_claims("toy", TOY_EXPECTED)
    recorded = [
        dataclasses.replace(c, protocol=identity_for_claim(suite, c.model, c.metrics))
        if c.status == "golden" and audit_cells.evaluated(c)
        else c
        for c in claim_set.claims
    ]
    assert any(c.protocol for c in recorded)
    again = audit.run_audit(
        "toy",
        None,
        source=tiny_source(),
        claim_set=dataclasses.replace(claim_set, claims=tuple(recorded)),
        gpu_available=False,
    )
    goldens = [r for r in again["audit"]["claims"] if r["kind"] == "golden"]
    assert goldens
    measured = [v["name"] for v in again["audit"]["variants"] if v["status"] in ("measured", "derived")]
    assert "no-rotary" in measured and "short-prompts" in measured
    for row in goldens:
        for name in measured:
            cell = row["cells"][name]
            if "another protocol" in str(cell.get("note", "")):
                raise AssertionError(f"{row['key']} under {name}: {cell['note']}")
    rows = {r["key"]: r for r in again["audit"]["claims"]}
    assert rows["sink_rate_average[toy:rope]"]["cells"]["no-rotary"]["value"] is not None


def test_audit_outputs_and_the_claims_report_section(toy_audit, tmp_path):
    result, _ = toy_audit
    audit_render.write_audit(result, tmp_path / "audit" / "toy")
    folder = tmp_path / "audit" / "toy"
    doc = json.loads((folder / "audit.json").read_text())
    assert doc == json.loads(json.dumps(result["audit"]))
    assert (folder / audit_render.HEATMAP_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "audit.md").read_text()
    for row in doc["claims"]:
        assert row["key"] in md
    assert (folder / "measurements" / "tau-0.5.json").is_file()
    section = "\n".join(audit_render.report_section(tmp_path))
    assert "audit/toy/audit.md" in section
    for row in doc["claims"]:
        assert f"| {row['key']} | {row['robustness']['verdict']} |" in section


def cells(**verdicts) -> dict[str, dict[str, Any]]:
    return {name: {"value": 1.0, "holds": holds} for name, holds in verdicts.items()}


def test_robustness_verdicts():
    from drope_check.audit.variants import VARIANTS

    claim = claims.load_claims("toy", TOY_EXPECTED).get("sink_rate_average", "rope")
    rob = audit_cells.robustness
    assert (
        rob(claim, cells(suite=True, **{"no-rotary": True, "tau-0.5": True}), VARIANTS)["verdict"]
        == audit_cells.ROBUST
    )
    fragile = rob(claim, cells(suite=True, **{"no-rotary": True, "tau-0.5": False}), VARIANTS)
    assert fragile["verdict"] == audit_cells.FRAGILE and fragile["variants"] == ["tau-0.5"]
    up = rob(claim, cells(suite=False, upstream=True, **{"padded-rope": True, "tau-0.5": False}), VARIANTS)
    assert up["verdict"] == audit_cells.UPSTREAM_ONLY and up["variants"] == ["padded-rope", "upstream"]
    mixed = rob(claim, cells(suite=False, upstream=True, **{"tau-0.2": True}), VARIANTS)
    assert mixed["verdict"] == audit_cells.FRAGILE and mixed["variants"] == [
        "tau-0.2",
        "upstream",
    ]  # VARIANTS order


# ----------------------------------------------------------------------------------------------
# errors


def test_non_finite_value_names_model_layer_quantity_and_variant():
    doc = {
        "models": {"rope": {"provenance": {"model_id": "m"}, "layers": {"entropy": [1.0, 2.0, float("nan")]}}}
    }
    with pytest.raises(
        audit.AuditError, match=r"variant padded: model rope \(m\).*layer 2, quantity entropy"
    ):
        audit.check_finite(doc, "padded")


def test_capture_error_during_a_variant_names_the_variant():
    def broken() -> LlamaForCausalLM:
        model = tiny_llama()
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
        return model

    with pytest.raises(audit.AuditError, match=r"variant\(s\) suite.*layer 1"):
        audit.run_audit(
            "toy",
            "suite",
            source=tiny_source(broken),
            claim_set=claims.load_claims("toy", TOY_EXPECTED),
            gpu_available=False,
        )


def test_cli_user_errors_exit_2_before_loading():
    for args, needle in ((["--variants", "tau-9"], "unknown variant"), (["--pair", "nope"], "unknown pair")):
        proc = subprocess.run(
            [sys.executable, "-m", "drope_check.cli", "audit", *args],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            timeout=300,
        )
        assert proc.returncode == 2
        assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# llama2-7b: the author's files beside the suite's `upstream` variant (no model anywhere)

REPO = Path(__file__).resolve().parents[1]
NO_WEIGHTS = "no Llama-2 weights in this test (a reason as pair_available gives one)"


@pytest.fixture(scope="module")
def author(author_files_path):
    """``(folder, measurements)`` of the shipped author's files; skipped where no copy is beside the repository."""
    from drope_check.sources.author_files import author_files_measurements

    return author_files_path, author_files_measurements(str(author_files_path))


@pytest.fixture(scope="module")
def llama_claims():
    return claims.load_claims("llama2-7b")


def model_free_audit(llama_claims, author, variants=None):
    return audit.run_audit(
        "llama2-7b",
        variants,
        claim_set=llama_claims,
        gpu_available=False,
        models_unavailable=NO_WEIGHTS,
        author_files=lambda: author,
    )


def test_without_models_the_author_files_column_is_the_author_files_evidence(llama_claims, author):
    from drope_check.sources.author_files import author_files_verdict

    result = model_free_audit(llama_claims, author)
    doc = result["audit"]
    assert result["measurements"] == {}
    assert doc["author_files"]["available"] and doc["author_files"]["source"] == str(author[0])
    assert doc["author_files"]["era"] == "report"
    rows = {r["key"]: r for r in doc["claims"]}
    assert list(rows) == [c.key for c in llama_claims.claims]
    judged = 0
    for claim in llama_claims.claims:
        cell = rows[claim.key][audit_render.AUTHOR_COLUMN_KEY]
        verdict = author_files_verdict(claim, author[1]).to_dict()  # the claims tests' author-files source
        assert cell["outcome"] == verdict["outcome"], claim.key
        if verdict["outcome"] in ("pass", "fail", "xfail", "xpass"):
            judged += 1
            assert cell["value"] == verdict["measured"] and cell["holds"] == verdict["passed"], claim.key
            assert (
                cell["commit"] == verdict["source_commit"] and cell["protocol"] == verdict["source_protocol"]
            )
        else:
            assert cell["value"] is None and cell["note"] == verdict["reason"], claim.key
    assert (
        judged == 38
    )  # 45 claims: seven prose-only (issue 20: no committed run made by the report holds them)
    # exact values of the author's committed files (README of shared/data/upstream-results)
    assert rows["sink_rate_average[llama2-7b:rope]"]["author_files"]["value"] == 0.978125
    assert rows["peak_bos_norm[llama2-7b:drope]"]["author_files"]["value"] == pytest.approx(
        632.2048, abs=1e-4
    )
    assert rows["drope_bos_not_critical[llama2-7b:drope]"]["author_files"]["read"] == [
        "drope:interventions.layer1_ablation:bos_only.ratio"
    ]
    assert rows["bos_mlp_ablation_ppl[llama2-7b:drope]"]["author_files"]["outcome"] == "prose-only"
    assert rows["bos_mlp_ablation_ppl[llama2-7b:rope]"]["author_files"]["outcome"] == "prose-only"
    ident = rows["identical_conditions[llama2-7b:pair]"]["author_files"]
    assert ident["outcome"] == "xfail" and ident["value"] == 512 and ident["holds"] is False


def test_without_models_every_suite_cell_says_not_measured_and_why(llama_claims, author):
    doc = model_free_audit(llama_claims, author)["audit"]
    from drope_check.audit.variants import VARIANTS

    assert [v["name"] for v in doc["variants"]] == list(VARIANTS)
    for v in doc["variants"]:
        assert v["status"] == audit_cells.NOT_MEASURED and v["reason"] == NO_WEIGHTS
    for row in doc["claims"]:
        assert AUTHOR_COLUMN not in row["cells"]  # a source, never a variant
        for cell in row["cells"].values():
            assert cell["value"] is None and cell["status"] == audit_cells.NOT_MEASURED
            assert cell["note"] == f"not measured: {NO_WEIGHTS}"
        assert row["robustness"]["verdict"] == audit_cells.NOT_EVALUATED
        assert row["reproduction"]["verdict"] == "not compared"
    rows = {r["key"]: r for r in doc["claims"]}
    assert (
        rows["sink_rate_average[llama2-7b:rope]"]["reproduction"]["text"]
        == f"the suite's `upstream` variant has no value: not measured: {NO_WEIGHTS}"
    )
    assert (
        rows["sink_rate_average[llama2-7b:rope]"]["robustness"]["text"]
        == f"no suite value: not measured: {NO_WEIGHTS}"
    )
    assert doc["reproduction"]["summary"] == {"agrees": 0, "disagrees": 0, "not compared": 45}


def test_without_models_audit_md_shows_author_files_beside_upstream(llama_claims, author, tmp_path):
    result = model_free_audit(llama_claims, author)
    audit_render.write_audit(result, tmp_path)
    md = (tmp_path / "audit.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| claim | `suite`"))
    assert "| `upstream` | `author-files` |" in header and header.endswith(
        "| robustness | reproduces the author's? |"
    )
    row = next(line for line in md.splitlines() if line.startswith("| sink_rate_average[llama2-7b:rope] |"))
    assert "| not measured | holds 0.978 | not measured |" in row and row.endswith(
        "| not evaluated | not compared |"
    )
    assert "Not measured here (`suite`, `no-rotary`" in md and NO_WEIGHTS in md
    assert "0 of 0 compared claims agree, 0 disagree, 45 not compared" in md
    assert (tmp_path / audit_render.HEATMAP_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        json.loads((tmp_path / "audit.json").read_text())["reproduction"] == result["audit"]["reproduction"]
    )


def synthetic_rows(llama_claims, author, edit, suite=None):
    """Audit rows with a synthetic ``upstream`` measurement: the author's values, changed by ``edit(doc)``."""
    from drope_check.audit.author import load_author_files
    from drope_check.audit.variants import get_variants

    variants = get_variants("upstream")
    upstream = json.loads(json.dumps(author[1]))
    edit(upstream)
    docs = {"upstream": upstream, **({"suite": suite} if suite is not None else {})}
    status = {
        v.name: {"status": "measured"}
        if v.name in docs
        else {"status": audit_cells.NOT_MEASURED, "reason": "synthetic"}
        for v in variants
    }
    protocols = {v.name: {r: v.protocol(r) for r in ("rope", "drope")} for v in variants}
    rows = audit_cells.audit_rows(
        llama_claims, variants, docs, status, protocols, load_author_files(lambda: author)
    )
    return {r["key"]: r for r in rows}


def test_reproduction_agrees_when_upstream_measures_the_authors_numbers(llama_claims, author):
    rows = synthetic_rows(llama_claims, author, lambda doc: None)
    verdicts = {k: r["reproduction"]["verdict"] for k, r in rows.items()}
    prose_only = {
        f"{cid}[llama2-7b:{m}]"
        for cid in ("ppl_baseline", "bos_mlp_ablation_ppl", "bos_mlp_ablation_ratio")
        for m in ("rope", "drope")
    } | {"methods_ablation_confirmed[llama2-7b:rope]"}
    methods = {k for k in verdicts if k.startswith("methods_")}  # no suite value under any variant
    assert {k for k, v in verdicts.items() if v != "agrees"} == prose_only | methods
    rep = rows["sink_rate_average[llama2-7b:rope]"]["reproduction"]
    assert (
        rep["band"]
        == "the claim's absolute band centred on the author's value: |m - v| <= 0.03: [0.9481, 1.008]"
    )
    assert rep["suite_value"] == 0.978125
    # read where the author's value was read, not at the claim's own (MLP-only, max-write) path
    ablation = rows["drope_bos_not_critical[llama2-7b:drope]"]["reproduction"]
    assert ablation["read"] == ["drope:interventions.layer1_ablation:bos_only.ratio"]
    assert ablation["suite_value"] == rows["drope_bos_not_critical[llama2-7b:drope]"]["author_files"]["value"]
    prose = rows["bos_mlp_ablation_ppl[llama2-7b:drope]"]["reproduction"]
    assert prose["text"].startswith(
        "the author's files give no value (prose-only): prose only: no committed result"
    )


def test_reproduction_disagrees_outside_the_claims_band_around_the_authors_value(llama_claims, author):
    def edit(doc):
        doc["models"]["rope"]["scalars"]["sink_rate_average"] = 0.978125 - 0.04  # tol 0.03: out
        doc["models"]["drope"]["scalars"]["sink_rate_average"] = 0.95576171875 + 0.02  # in
        doc["models"]["rope"]["layers"]["sink_rate"][10] = 0.9  # range [0.91, 1]: fails, the author's holds
        q = {r: doc["models"][r]["interventions"]["qk_disruption:report"] for r in ("rope", "drope")}
        q["rope"]["ratio"], q["drope"]["ratio"] = q["drope"]["ratio"], q["rope"]["ratio"]  # ordering flips

    rows = synthetic_rows(llama_claims, author, edit)
    out = rows["sink_rate_average[llama2-7b:rope]"]["reproduction"]
    assert (
        out["verdict"] == "disagrees" and "outside by 0.01" in out["text"] and "absolute band" in out["band"]
    )
    assert rows["sink_rate_average[llama2-7b:drope]"]["reproduction"]["verdict"] == "agrees"
    middle = rows["sink_rate_middle_layers[llama2-7b:rope]"]["reproduction"]
    assert (
        middle["verdict"] == "disagrees"
        and "a bound, not a width: agreement is the same verdict" in middle["band"]
    )
    assert middle["text"].endswith("fails, author [0.9719 .. 1] (29 values) holds")
    qk = rows["qk_disruption_drope_more_robust[llama2-7b:pair]"]["reproduction"]
    assert qk["verdict"] == "disagrees" and "ordering bound" in qk["band"]
    # the rope ratio moved from 6.708 to 1.291: outside the claim's factor-2 band around the author's value
    assert rows["qk_disruption_ratio[llama2-7b:rope]"]["reproduction"]["verdict"] == "disagrees"
    # both fail the bound: identical_conditions (512 pad tokens on one side) agrees with the contradicting files
    assert rows["identical_conditions[llama2-7b:pair]"]["reproduction"]["verdict"] == "agrees"


def test_reproduction_not_compared_when_a_side_is_missing(llama_claims, author):
    def edit(doc):
        del doc["models"]["drope"]["interventions"]["layer1_ablation:bos_only"]  # the suite never measures it

    rows = synthetic_rows(llama_claims, author, edit)
    missing = rows["drope_bos_not_critical[llama2-7b:drope]"]["reproduction"]
    assert missing["verdict"] == "not compared" and "suite_value" not in missing
    assert missing["text"].startswith("the suite's `upstream` variant has no value: ")
    assert "layer1_ablation:bos_only" in missing["text"]
    # the variant not in the audit at all (--variants without upstream)
    from drope_check.audit.author import agreement, author_cell

    claim = llama_claims.get("sink_rate_average", "rope")
    alone = agreement(claim, None, author_cell(claim, author))
    assert alone == {
        "verdict": "not compared",
        "text": "the suite's `upstream` variant is not in this audit (--variants)",
    }
    # no copy of the author's files: every author cell says where the search looked, nothing is compared
    from drope_check.sources.author_files import AuthorFilesUnavailable

    gone = AuthorFilesUnavailable("no copy found (looked in /nowhere)")
    cell = author_cell(claim, gone)
    assert cell == {"value": None, "outcome": "skip", "note": "no copy found (looked in /nowhere)"}
    assert agreement(claim, {"value": 0.97, "holds": True}, cell)["verdict"] == "not compared"


def test_robustness_never_counts_the_author_files_column(llama_claims, author):
    """suite and upstream both fail sink_rate_average[rope] (0.90 vs 0.978 +- 0.03); the author's files
    hold. Robust ("fails under every variant"), not fragile: the author's files are a source."""

    def edit(doc):
        doc["models"]["rope"]["scalars"]["sink_rate_average"] = 0.90

    suite = json.loads(json.dumps(author[1]))
    suite["models"]["rope"]["scalars"]["sink_rate_average"] = 0.90
    rows = synthetic_rows(llama_claims, author, edit, suite=suite)
    row = rows["sink_rate_average[llama2-7b:rope]"]
    assert row["author_files"]["holds"] is True
    assert [c["holds"] for c in row["cells"].values()] == [False, False]
    assert row["robustness"] == {
        "verdict": audit_cells.ROBUST,
        "variants": [],
        "text": "fails under every variant",
    }
    assert row["reproduction"]["verdict"] == "disagrees"


def test_pytest_audit_without_models_writes_the_author_files_column(llama_claims, author, tmp_path):
    from types import SimpleNamespace

    state = SimpleNamespace(
        claim_set=lambda pair: (
            llama_claims if pair == "llama2-7b" else claims.load_claims(pair, TOY_EXPECTED)
        ),
        upstream=lambda: author,
    )
    config = SimpleNamespace(invocation_params=SimpleNamespace(dir=tmp_path))
    lines = audit_commands.audit_session(
        config, state, ["llama2-7b", "toy"], "report", None, lambda pair: (False, NO_WEIGHTS)
    )
    assert lines[0] == (
        f"audit of llama2-7b: robust 0, fragile 0, holds only under upstream's choices 0, not evaluated 45: "
        f"{tmp_path / 'report' / 'audit' / 'llama2-7b' / 'audit.md'}"
    )
    assert lines[1] == f"audit of llama2-7b: suite variants not measured: {NO_WEIGHTS}"
    assert lines[2].endswith("0 of 0 compared claims agree, 0 disagree, 45 not compared")
    assert (
        lines[3] == f"audit of toy: not run ({NO_WEIGHTS})"
    )  # no author's files: nothing to show without models
    written = json.loads((tmp_path / "report" / "audit" / "llama2-7b" / "audit.json").read_text())
    assert written["claims"][0]["author_files"]["outcome"] == "prose-only"  # ppl_baseline[rope] (issue 20)
    by_key = {c["key"]: c for c in written["claims"]}
    assert by_key["qk_disruption_ratio[llama2-7b:rope]"]["author_files"]["value"] == pytest.approx(
        6.708, abs=1e-3
    )
    section = "\n".join(audit_render.report_section(tmp_path / "report"))
    assert "Author's files: reproduces the author's numbers" in section
    # no suite variant measured: one sentence with the reason, not 36 rows repeating it
    assert f"No suite variant measured ({NO_WEIGHTS}): no robustness verdict for its 45 claims" in section
    assert section.count(NO_WEIGHTS) == 1 and "| claim | robustness | why |" not in section


def test_cli_audits_llama2_without_models(author, tmp_path):
    if audit_commands.models_here("llama2-7b")[0]:
        pytest.skip("the llama2-7b weights are here: the CLI would measure them (not a unit test)")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "drope_check.cli",
            "audit",
            "--pair",
            "llama2-7b",
            "--out-dir",
            str(tmp_path),
            "--no-progress",
            "--upstream",
            str(author[0]),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "audit.json").read_text())
    assert all(v["status"] == audit_cells.NOT_MEASURED for v in doc["variants"])
    assert doc["claims"][10]["key"] == "sink_rate_average[llama2-7b:rope]"
    assert doc["claims"][10]["author_files"]["value"] == 0.978125
    assert "reproduces the author's numbers" in proc.stdout and "suite variants not measured" in proc.stdout


def test_cli_pair_without_models_or_author_files_exits_2(monkeypatch, tmp_path, capsys):
    from types import SimpleNamespace

    load = claims.load_claims
    monkeypatch.setattr(audit_commands, "models_here", lambda pair, device=None: (False, NO_WEIGHTS))
    monkeypatch.setattr(audit.claims, "load_claims", lambda pair: load(pair, TOY_EXPECTED))
    monkeypatch.setattr("drope_check.models.pairs.get_pair", lambda pair: None)
    args = SimpleNamespace(
        pair="toy",
        variants=None,
        n_texts=FAITHFUL.n_texts,
        upstream=None,
        out_dir=tmp_path,
        wikitext=None,
        device=None,
        dtype=None,
        no_progress=True,
    )
    assert audit_commands.cli_audit(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"drope-check audit: pair toy cannot be measured here ({NO_WEIGHTS}) and its claims have no "
        "author-files tables: nothing to audit without its models\n"
    )
    assert not (tmp_path / "audit.json").exists()
