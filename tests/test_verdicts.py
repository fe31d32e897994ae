"""Verdicts that cannot lie (issue 8, items 1-7): each test failed on the code before its fix.

No model is loaded: measurements are the hand-written files in tests/data, edited per case.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drope_check.claims import api as C
from drope_check.cli import main as cli_main
from drope_check.report.merge import judge_file
from drope_check.report.terminal import terminal_lines

pytest_plugins = ["pytester"]

DATA = Path(__file__).parent / "data"
REPO_EXPECTED = Path(__file__).resolve().parent.parent / "expected"
LLAMA = DATA / "llama2-7b-handwritten.json"


def llama() -> dict[str, Any]:
    return json.loads(LLAMA.read_text())


def write(tmp_path: Path, data: Any, name: str = "m.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


# ----------------------------------------------------------------------------------------------
# 1. a non-finite measured value never passes, in any band kind

NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
POSITIVE = st.floats(min_value=1e-6, max_value=1e6)
BANDS = [
    C.Band("absolute", {"tol": 0.03}),
    C.Band("relative", {"rel": 0.05}),
    C.Band("log_ratio", {"factor": 2.0}),
    C.Band("one_sided", {"op": ">=", "bound": 0.5}),
    C.Band("one_sided", {"op": "<", "bound": 0.5}),
    C.Band("exact", {}),
    C.Band("range", {"lo": -1e9, "hi": 1e9}),
]
MULTI = [
    C.Band("ordering", {"op": ">", "factor": 1.0}),
    C.Band("ordering", {"op": "<=", "factor": 2.0}),
    C.Band("each", {"ops": [">=", "<="], "bounds": [-1e9, 1e9]}),
]


@settings(max_examples=200, deadline=None)
@given(
    band=st.sampled_from(BANDS),
    bad=NON_FINITE,
    value=POSITIVE,
    others=st.lists(POSITIVE, max_size=4),
    where=st.integers(0, 4),
)
def test_no_band_passes_a_non_finite_value(
    band: C.Band, bad: float, value: float, others: list[float], where: int
) -> None:
    assert not band.check(bad, value).passed
    # a per-layer list holding one non-finite value, against a scalar or a per-layer expected value
    measured = list(others)
    measured.insert(min(where, len(measured)), bad)
    assert not band.check(measured, value).passed
    assert not band.check(measured, [value] * len(measured)).passed


@settings(max_examples=200, deadline=None)
@given(band=st.sampled_from(MULTI), bad=NON_FINITE, other=FINITE, first=st.booleans())
def test_no_comparison_passes_a_non_finite_value(band: C.Band, bad: float, other: float, first: bool) -> None:
    measured = [bad, other] if first else [other, bad]
    assert not band.check(measured, None).passed
    assert not band.check([bad, bad], None).passed


def test_a_ratio_with_a_zero_denominator_does_not_pass() -> None:
    """Issue 8: rope min_entropy = 0 made valley_entropy_ratio inf, and the log-ratio band passed it."""
    claim = C.load_claims("llama2-7b", REPO_EXPECTED).get("valley_entropy_ratio", "pair")
    data = llama()
    data["models"]["rope"]["scalars"]["min_entropy"] = 0.0
    verdict = C.evaluate(claim, data)
    assert verdict.outcome == "fail" and "non-finite" in verdict.margin_text


# ----------------------------------------------------------------------------------------------
# 2. NaN / Infinity in a measurements file are refused at load, with the JSON path


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_are_refused_with_the_path(
    tmp_path: Path, constant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = json.dumps(llama(), indent=1).replace('"ppl_baseline": 9.9', f'"ppl_baseline": {constant}', 1)
    assert constant in text
    path = write(tmp_path, text)
    with pytest.raises(
        ValueError, match=r"\$\.models\.rope\.scalars\.ppl_baseline.*" + constant.replace("-", "-?")
    ):
        judge_file(path, "llama2-7b", None)
    assert cli_main(["judge", str(path), "--pair", "llama2-7b", "--report-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "$.models.rope.scalars.ppl_baseline" in err and str(path) in err


# ----------------------------------------------------------------------------------------------
# 3. a golden is not judged against a measurement made under another protocol


def smollm_measurement() -> dict[str, Any]:
    """A measurement of the embedded pair rebuilt from the shipped goldens (see test 4)."""
    return _measurement_from_goldens(C.load_claims("smollm2-135m", REPO_EXPECTED))


def test_a_golden_is_skipped_under_another_protocol_naming_both() -> None:
    cs = C.load_claims("smollm2-135m", REPO_EXPECTED)
    data = smollm_measurement()
    sink = cs.get("sink_rate_average", "rope")
    ppl = cs.get("ppl_baseline", "rope")
    assert C.verdict_for(sink, data).outcome == "pass" and C.verdict_for(ppl, data).outcome == "pass"
    data["protocol"]["sink_tau"] = 0.9
    data["models"]["rope"]["scalars"]["sink_rate_average"] = 0.0254
    verdict = C.verdict_for(sink, data)
    assert verdict.outcome == "skip"
    assert "sink_tau 0.3 there, 0.9 here" in verdict.reason
    assert C.verdict_for(ppl, data).outcome == "pass"  # tau does not change a perplexity
    data["protocol"]["max_tokens"] = 256
    assert "max_tokens 512 there, 256 here" in C.verdict_for(ppl, data).reason


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"sink_self_term": False}, "sink_t0", "sink_t0 'included' there, 'excluded' here"),
        (
            {"prompt_tokens": [6, 12]},
            "max_tokens",
            "max_tokens 512 there, 'short prompts: BOS + 6-12 tokens' here",
        ),
    ],
)
def test_audit_variants_protocol_fields_enter_the_identity(
    change: dict[str, Any], field: str, text: str
) -> None:
    """The confound audit's self-excluded and short-prompts variants change the numbers a golden
    holds: a measurement under either is never judged against the suite's goldens."""
    cs = C.load_claims("smollm2-135m", REPO_EXPECTED)
    data = smollm_measurement()
    sink = cs.get("sink_rate_average", "rope")
    assert C.verdict_for(sink, data).outcome == "pass"
    data["protocol"].update(change)
    verdict = C.verdict_for(sink, data)
    assert verdict.outcome == "skip" and text in verdict.reason, verdict.reason


def test_a_measurement_that_cannot_state_its_protocol_is_not_judged_against_goldens() -> None:
    cs = C.load_claims("smollm2-135m", REPO_EXPECTED)
    data = smollm_measurement()
    data["protocol"] = {"name": "hand-written"}
    assert C.verdict_for(cs.get("ppl_baseline", "rope"), data).outcome == "skip"


def test_regen_writes_the_protocol_beside_each_golden(tmp_path: Path) -> None:
    from drope_check.claims.regen import updates_from_verdicts

    shutil.copy(REPO_EXPECTED / "smollm2-135m.toml", tmp_path / "smollm2-135m.toml")
    cs = C.load_claims("smollm2-135m", tmp_path)
    data = smollm_measurement()
    data["protocol"]["sink_tau"] = 0.9
    claim = cs.get("sink_rate_average", "rope")
    verdict = C.regen_verdict(claim, data, "by hand")
    assert "protocol or text set differs" in verdict.reason
    C.regen_expected(cs.path, updates_from_verdicts([verdict.to_dict()])["smollm2-135m"])
    again = C.load_claims("smollm2-135m", tmp_path).get("sink_rate_average", "rope")
    assert again.protocol is not None and again.protocol["sink_tau"] == 0.9


def test_every_shipped_golden_records_its_protocol() -> None:
    from drope_check.claims.protocol_identity import relevant_fields

    for pair in C.available_pairs(REPO_EXPECTED):
        for claim in C.load_claims(pair, REPO_EXPECTED).claims:
            if claim.status in ("golden", "does-not-generalise") and not claim.pending:
                assert claim.protocol is not None, claim.key
                assert set(relevant_fields(claim.metrics)) <= set(claim.protocol), claim.key


# ----------------------------------------------------------------------------------------------
# 4. --regen-expected reproduces both shipped files byte for byte from the measurement that made them


def _set_path(data: dict[str, Any], path: str, value: Any, n_layers: int) -> None:
    parsed = C.parse_path(path)
    node: Any = data if parsed.root == "root" else data["models"][parsed.root]
    steps = list(parsed.steps)
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if step[0] == "key":
            if last:
                node[step[1]] = value
                return
            nxt = steps[i + 1]
            node = node.setdefault(step[1], [0.5] * n_layers if nxt[0] in ("index", "slice") else {})
        elif step[0] == "index":
            node[step[1]] = value
            return
        else:
            node[step[1] : step[2]] = (
                value if isinstance(value, list) else [value] * len(node[step[1] : step[2]])
            )
            return


def _measurement_from_goldens(cs: C.ClaimSet) -> dict[str, Any]:
    """Measurements holding exactly the shipped goldens' values, under the protocol they record."""
    n_layers = 30 if cs.pair == "smollm2-135m" else 32
    models = {
        role: {
            "variant": variant,
            "provenance": {"model_id": cs.model_ids.get(role, "?"), "dtype": "float32"},
        }
        for role, variant in (("rope", "rope"), ("drope", cs.drope_variant))
    }
    data: dict[str, Any] = {
        "schema_version": 1,
        "pair": cs.pair,
        "models": models,
        "texts": {},
        "protocol": {},
    }
    for claim in cs.claims:
        if claim.status not in ("golden", "does-not-generalise") or claim.pending:
            continue
        data["texts"]["sha256"] = claim.texts_sha256
        for key, value in (claim.protocol or {}).items():
            if key == "padding":
                data["protocol"].update(pad_to=None, padding_in_stats=False)
            elif key != "dtype":
                data["protocol"][key] = value
        value = claim.value if claim.status == "golden" else claim.recorded
        if claim.combine is None and len(claim.metrics) == 1:
            _set_path(data, claim.metrics[0], value, n_layers)
    return data


@pytest.mark.parametrize("pair", ["smollm2-135m", "llama2-7b"])
def test_regen_reproduces_the_shipped_files_byte_for_byte(tmp_path: Path, pair: str) -> None:
    from drope_check.claims.regen import updates_from_verdicts

    shutil.copy(REPO_EXPECTED / f"{pair}.toml", tmp_path / f"{pair}.toml")
    cs = C.load_claims(pair, tmp_path)
    before = Path(cs.path).read_bytes()
    verdicts = []
    for claim in cs.claims:
        if (
            claim.status not in ("golden", "does-not-generalise")
            or claim.pending
            or claim.combine
            or len(claim.metrics) != 1
        ):
            continue
        data = _measurement_from_goldens(cs)
        _set_path(data, claim.metrics[0], claim.value if claim.status == "golden" else claim.recorded, 32)
        verdicts.append(C.regen_verdict(claim, data, claim.measured_how or "").to_dict())
    assert all(v["outcome"] == "regenerated" for v in verdicts), [v["reason"] for v in verdicts]
    updates = updates_from_verdicts(verdicts).get(pair, {})
    C.regen_expected(cs.path, updates)
    assert Path(cs.path).read_bytes() == before
    if pair == "smollm2-135m":
        assert len(updates) >= 20


# ----------------------------------------------------------------------------------------------
# 5. a run that checked nothing says so; --strict makes it a failure


def test_a_pair_with_nothing_evaluated_gets_a_loud_line_and_strict_fails_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from drope_check.report.terminal import unchecked_pair_lines

    data = smollm_measurement()
    data["texts"]["sha256"] = "f" * 64  # another text set: every golden skips
    path = write(tmp_path, data)
    verdicts = judge_file(path, "smollm2-135m", None)
    evaluated = [v for v in verdicts if v.outcome in ("pass", "fail", "xfail", "xpass")]
    lines = unchecked_pair_lines([v.to_dict() for v in verdicts], ["smollm2-135m"])
    if not evaluated:
        assert lines and "NOTHING WAS CHECKED" in lines[0]
    strict = judge_file(path, "smollm2-135m", None, strict=True)
    by_key = {v.key: v for v in strict}
    cs = C.load_claims("smollm2-135m", REPO_EXPECTED)
    for claim in cs.claims:
        v = by_key[claim.key]
        if claim.skip_is_recalibrated_only:
            assert v.outcome == "skip", claim.key
        else:
            assert v.outcome != "skip", (claim.key, v.reason)
    assert any(v.outcome == "error" and v.reason.startswith("--strict") for v in strict)
    code = cli_main(
        ["judge", str(path), "--pair", "smollm2-135m", "--strict", "--report-dir", str(tmp_path / "r")]
    )
    assert code == 1
    assert unchecked_pair_lines([{"pair": "p", "outcome": "skip"}], ["p"])  # 0 evaluated: loud
    assert not unchecked_pair_lines(
        [{"pair": "p", "outcome": "skip"}, {"pair": "p", "outcome": "pass"}], ["p"]
    )


def test_ci_runs_the_embedded_pair_strictly() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "--strict-claims" in ci


# ----------------------------------------------------------------------------------------------
# 6. another model is not judged as the pair's unless --as-pair


def test_other_models_are_refused_unless_as_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = llama()
    data["pair"] = "custom"
    for role in ("rope", "drope"):
        data["models"][role]["provenance"]["model_id"] = f"/tmp/random-2-layer-{role}"
    path = write(tmp_path, data)
    with pytest.raises(C.MeasurementsMismatch, match="--as-pair"):
        judge_file(path, "llama2-7b", None)
    assert cli_main(["judge", str(path), "--pair", "llama2-7b", "--report-dir", str(tmp_path / "r")]) == 2
    assert "random-2-layer-rope" in capsys.readouterr().err
    verdicts = judge_file(path, "llama2-7b", None, as_pair=True)
    assert verdicts and all("random-2-layer-rope" in (v.measured_models or "") for v in verdicts)
    for line in terminal_lines([v.to_dict() for v in verdicts])[1:]:
        if line.startswith(("claims:", "skipped")):
            continue
        assert "random-2-layer" in line, line


def test_the_pairs_model_ids_match_the_registry() -> None:
    models = pytest.importorskip("drope_check.models.pairs")
    from drope_check.models.embedded import is_embedded
    from drope_check.models.pairs import embedded_model

    for pair in C.available_pairs(REPO_EXPECTED):
        cs = C.load_claims(pair, REPO_EXPECTED)
        spec = models.PAIRS[pair]
        for role, model in (("rope", spec.rope), ("drope", spec.drope)):
            embedded = embedded_model(model.source) if is_embedded(model.source) else None
            want = f"{embedded.model_id} ({embedded.gguf_name}, dequantised)" if embedded else model.source
            assert cs.model_ids[role] == want


# ----------------------------------------------------------------------------------------------
# 7. one validator: malformed files are refused with one sentence naming file, JSON path, expectation


def _edit(fn: Any) -> dict[str, Any]:
    data = llama()
    fn(data)
    return data


def _rope(data: dict[str, Any]) -> dict[str, Any]:
    return data["models"]["rope"]


MALFORMED = [
    (
        "31 sink_rate entries for 30 layers",
        lambda d: (
            _rope(d).update(n_layers=30),
            [_rope(d)["layers"].__setitem__(k, v[:30]) for k, v in _rope(d)["layers"].items()],
            _rope(d)["layers"]["sink_rate"].append(1.0),
        ),
        "$.models.rope.layers",
    ),
    ("32 entries for 30 layers", lambda d: _rope(d).update(n_layers=30), "expected n_layers = 30"),
    (
        "nested arrays",
        lambda d: _rope(d)["layers"].__setitem__("bos_norm", [[x] for x in _rope(d)["layers"]["bos_norm"]]),
        "$.models.rope.layers.bos_norm[0]: is a nested list",
    ),
    (
        "heads of the wrong width",
        lambda d: _rope(d)["heads"]["sink_score"][3].append(0.5),
        "$.models.rope.heads.sink_score[3]",
    ),
    (
        "peak_bos_norm not the max",
        lambda d: _rope(d)["scalars"].__setitem__("peak_bos_norm", 950.0),
        "$.models.rope.scalars.peak_bos_norm: is 950.0: expected the maximum",
    ),
    (
        "sink_rate_average not the mean",
        lambda d: _rope(d)["scalars"].__setitem__("sink_rate_average", 0.5),
        "$.models.rope.scalars.sink_rate_average: is 0.5: expected the mean",
    ),
    (
        "spike layer not argmax of bos_ratio",
        lambda d: _rope(d)["scalars"].__setitem__("bos_spike_layer_argmax_ratio", 5),
        "$.models.rope.scalars.bos_spike_layer_argmax_ratio",
    ),
    (
        "max-write spike layer wrong",
        lambda d: _rope(d)["scalars"].update(embedding_bos_norm=1.0, bos_spike_layer_max_write=3),
        "$.models.rope.scalars.bos_spike_layer_max_write",
    ),
    (
        "variant 'DroPE'",
        lambda d: d["models"]["drope"].__setitem__("variant", "DroPE"),
        "$.models.drope.variant: is 'DroPE': expected 'drope' or 'nope-zeroshot'",
    ),
    (
        "models as a list",
        lambda d: d.__setitem__("models", [d["models"]["rope"], d["models"]["drope"]]),
        "$.models: is a JSON list",
    ),
    ("missing schema_version", lambda d: d.pop("schema_version"), "$.schema_version: is missing"),
    (
        "a string where a number belongs",
        lambda d: _rope(d)["scalars"].__setitem__("ppl_baseline", "9.9"),
        "$.models.rope.scalars.ppl_baseline",
    ),
]


@pytest.mark.parametrize("name, edit, fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_measurements_are_refused_in_one_sentence(
    tmp_path: Path, name: str, edit: Any, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, _edit(edit))
    with pytest.raises(ValueError) as info:
        judge_file(path, "llama2-7b", None)
    assert fragment in str(info.value) and str(path) in str(info.value)
    assert cli_main(["judge", str(path), "--pair", "llama2-7b", "--report-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["truncated", "missing", "unknown pair"])
def test_file_level_problems_are_one_sentence(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.json"
    pair = "llama2-7b"
    if case == "truncated":
        path.write_text(LLAMA.read_text()[:500])
    elif case == "unknown pair":
        shutil.copy(LLAMA, path)
        pair = "llama3"
    assert cli_main(["judge", str(path), "--pair", pair, "--report-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert {
        "truncated": "not valid JSON",
        "missing": "no such file",
        "unknown pair": "no claim file for pair 'llama3'",
    }[case] in err


def test_the_plugin_refuses_a_malformed_file_with_the_same_validator(pytester: pytest.Pytester) -> None:
    data = _edit(lambda d: _rope(d)["scalars"].__setitem__("sink_rate_average", 0.5))
    (pytester.path / "m.json").write_text(json.dumps(data))
    result = pytester.runpytest_subprocess(
        "--measurements", "m.json", "--expected-dir", str(REPO_EXPECTED), "--collect-only", "-q"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*m.json: $.models.rope.scalars.sink_rate_average: is 0.5: expected the mean*"]
    )


def test_optional_fields_may_be_absent_and_their_claims_skip() -> None:
    """A source that measured little (an importer of upstream's result files, say) is valid; the
    claims reading what it lacks skip as "not measured by this source", never error."""
    from drope_check.measurements.validate import validate_measurements

    data = {
        "schema_version": 1,
        "pair": "llama2-7b",
        "models": {
            "rope": {
                "variant": "rope",
                "provenance": {"model_id": "meta-llama/Llama-2-7b-hf"},
                "scalars": {"sink_rate_average": 0.978125},
            },
            "drope": {"variant": "drope", "provenance": {"model_id": "SakanaAI/Llama-2-7b-hf-DroPE"}},
        },
    }
    validate_measurements(data, "minimal.json")
    cs = C.load_claims("llama2-7b", REPO_EXPECTED)
    verdicts = {c.key: C.verdict_for(c, data) for c in cs.claims}
    assert verdicts["sink_rate_average[llama2-7b:rope]"].outcome == "pass"
    assert verdicts["ppl_baseline[llama2-7b:rope]"].outcome == "skip"
    assert "not measured by this source" in verdicts["ppl_baseline[llama2-7b:rope]"].reason
    assert not [k for k, v in verdicts.items() if v.outcome == "error"]


def test_claim_files_refuse_negative_indices(tmp_path: Path) -> None:
    body = """schema_version = 1
[pair]
name = "toy"
drope_variant = "drope"
run_hint = "x"
[[claim]]
id = "last"
model = "rope"
family = "sink"
sentence = "s"
metric = "rope:layers.sink_rate[-1]"
value = 0.9
status = "claim"
band = { kind = "absolute", tol = 0.1 }
rationale = "r"
provenance = { source = "prose-only", text_set = "t" }
"""
    (tmp_path / "toy.toml").write_text(body)
    with pytest.raises(C.ClaimsFileError, match="counts from the end"):
        C.load_claims("toy", tmp_path)
    for pair in C.available_pairs(REPO_EXPECTED):
        for claim in C.load_claims(pair, REPO_EXPECTED).claims:
            assert not any("-" in m.split("[", 1)[-1] for m in claim.metrics if "[" in m), claim.key


def test_per_sequence_head_scores_are_one_grid_per_sequence() -> None:
    """``heads.*_per_sequence`` (kept for the confound audit) is ``[sequence][layer][head]``: valid
    with any number of sequences, ``null`` marking an overflowed fp16-eager head; a grid of the
    wrong shape is named by its JSON path. (The suite's own measurements carry it: a validator that
    read it as ``[layer][head]`` refused every real run.)"""
    from drope_check.measurements.validate import MeasurementsFileError, validate_measurements

    data = llama()
    rope = data["models"]["rope"]
    grid = [[0.5] * rope["n_heads"] for _ in range(rope["n_layers"])]
    rope["heads"]["sink_score_per_sequence"] = [grid, [[None] + row[1:] for row in grid], grid]
    validate_measurements(data, "per-seq.json")
    rope["heads"]["sink_score_per_sequence"][1] = grid[:-1]
    with pytest.raises(MeasurementsFileError, match=r"heads\.sink_score_per_sequence\[1\].*n_layers = 32"):
        validate_measurements(data, "per-seq.json")


# ----------------------------------------------------------------------------------------------
# 8. a failing per-layer band names every layer outside it (issue 17), not only the worst margin

#: Values on a 0.01 grid: none lies within the edge slack of the band [0.91, 1.0] without being on it.
GRID = st.integers(0, 120).map(lambda k: round(k * 0.01, 2))
OUTSIDE_AT = re.compile(
    r"; outside at layers? ([0-9, -]+) \(of ([0-9]+)-([0-9]+)\)(?:, worst at layer ([0-9]+))?$"
)


def middle_layers(model: str = "rope") -> C.Claim:
    """``sink_rate_middle_layers``: ``rope:layers.sink_rate[2:31]`` in ``range`` [0.91, 1.0]."""
    return C.load_claims("llama2-7b", REPO_EXPECTED).get("sink_rate_middle_layers", model)


def with_middle_rates(rates: dict[int, float], fill: float = 1.0) -> dict[str, Any]:
    data = llama()
    series = data["models"]["rope"]["layers"]["sink_rate"]
    series[2:31] = [fill] * 29
    for layer, rate in rates.items():
        series[layer] = rate
    return data


def expand(ranges: str) -> list[int]:
    """``"2-5, 9"`` -> ``[2, 3, 4, 5, 9]`` (the inverse of :func:`drope_check.claims.bands.index_ranges`)."""
    out: list[int] = []
    for part in ranges.split(", "):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def test_a_failing_per_layer_band_names_every_failing_layer_and_the_worst() -> None:
    # 0.9 is just below lo = 0.91; layer 12 (0.2) is the worst, 0.71 outside
    verdict = C.evaluate(
        middle_layers(), with_middle_rates({3: 0.5, 4: 0.6, 5: 0.7, 6: 0.9, 12: 0.2, 30: 0.85})
    )
    assert verdict.outcome == "fail"
    assert (
        verdict.margin_text == "outside by 0.71; outside at layers 3-6, 12, 30 (of 2-30), worst at layer 12"
    )
    assert (
        "margin      : outside by 0.71; outside at layers 3-6, 12, 30 (of 2-30)" in verdict.failure_message()
    )


def test_one_failing_layer_is_named_alone() -> None:
    verdict = C.evaluate(middle_layers(), with_middle_rates({30: 0.5}))
    assert verdict.margin_text == "outside by 0.41; outside at layer 30 (of 2-30)"


def test_a_series_read_whole_counts_its_layers_from_0() -> None:
    claim = dataclasses.replace(middle_layers(), metrics=("rope:layers.sink_rate",))
    data = with_middle_rates({9: 0.3})
    data["models"]["rope"]["layers"]["sink_rate"][:2] = [0.95, 0.99]
    data["models"]["rope"]["layers"]["sink_rate"][31] = 0.5
    verdict = C.evaluate(claim, data)
    assert verdict.margin_text == "outside by 0.61; outside at layers 9, 31 (of 0-31), worst at layer 9"


def test_passing_and_scalar_verdicts_keep_their_wording() -> None:
    passing = C.evaluate(middle_layers(), with_middle_rates({}, fill=0.95))
    assert passing.outcome == "pass" and passing.margin_text == "inside by 0.04"
    average = C.load_claims("llama2-7b", REPO_EXPECTED).get("sink_rate_average", "rope")
    data = llama()
    data["models"]["rope"]["scalars"]["sink_rate_average"] = 0.5
    failing = C.evaluate(average, data)
    assert failing.outcome == "fail" and "layer" not in failing.margin_text
    assert failing.margin_text == average.band.check(0.5, average.value).margin_text


@settings(max_examples=300, deadline=None)
@given(rates=st.lists(GRID, min_size=29, max_size=29))
def test_the_layers_named_are_exactly_those_outside_the_band(rates: list[float]) -> None:
    claim = middle_layers()
    lo, hi = claim.band.params["lo"], claim.band.params["hi"]
    verdict = C.evaluate(claim, with_middle_rates(dict(enumerate(rates, start=2))))
    outside = [
        layer for layer, rate in enumerate(rates, start=2) if not lo <= rate <= hi
    ]  # independent of bands.py
    assert verdict.passed is (not outside)
    match = OUTSIDE_AT.search(verdict.margin_text)
    if not outside:
        assert match is None and verdict.margin_text.startswith("inside by")
        return
    assert match is not None, verdict.margin_text
    assert expand(match.group(1)) == outside and (int(match.group(2)), int(match.group(3))) == (2, 30)
    margins = {layer: min(rate - lo, hi - rate) for layer, rate in enumerate(rates, start=2)}
    worst = int(match.group(4)) if match.group(4) else outside[0]
    assert margins[worst] == min(margins.values())
    assert verdict.margin_text.startswith(f"outside by {C.fmt(-min(margins.values()))}")


@given(st.lists(st.integers(0, 80), max_size=30))
def test_index_ranges_round_trip(indices: list[int]) -> None:
    from drope_check.claims.bands import index_ranges

    text = index_ranges(indices)
    assert (expand(text) if text else []) == sorted(set(indices))
    assert ", " not in text or all(b[0] > a[-1] + 1 for a, b in _pairs_of_runs(text))


def _pairs_of_runs(text: str) -> list[tuple[list[int], list[int]]]:
    runs = [expand(part) for part in text.split(", ")]
    return list(zip(runs, runs[1:], strict=False))
