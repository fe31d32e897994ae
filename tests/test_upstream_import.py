"""``drope-check import-upstream``: the author's committed files as a llama2-7b measurements file.

Claimed: every imported value is the file's number unchanged, and names its commit, file, JSON path
and protocol; derived values come from drope_check.engine.metrics and say so; a NaN (or upstream's 0 for a
run that never happened) is never imported; a missing commit, file or malformed JSON is one sentence
naming it (exit 2 from the CLI); a git clone gives the same file as the folder layout; and judging
the imported file gives the verdicts computed by hand from the raw JSON below.

Needs only the shared copy of the author's files (``shared/data/upstream-results``); skipped without it.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import NO_AUTHOR_FILES, author_files_folder

from drope_check.report.merge import judge_file
from drope_check.sources import field_provenance as sources_field_provenance
from drope_check.sources import table as sources_table
from drope_check.sources import upstream as U

SHARED = author_files_folder()
FILE = "results/phase_metrics/rope_vs_drope_phase_metrics.json"
REPORT_COMMIT = "90f8e3c73617cd4fa8986a8772c3cca53a570354"
DROPE_PHASE_COMMIT = "16a5164c48e060f3648ce1f8ecc98f7e6bd26097"
HEAD_COMMIT = "2395c1535b1c27b8351b41e393db2a5044deefde"
COMMITS = (DROPE_PHASE_COMMIT, REPORT_COMMIT, HEAD_COMMIT)

pytestmark = pytest.mark.skipif(SHARED is None, reason=NO_AUTHOR_FILES)


def raw(commit: str) -> dict[str, Any]:
    """The author's file at a commit, parsed independently of the importer."""
    return json.loads((SHARED / commit / FILE).read_text())


def at(data: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data[key]
    return data


@pytest.fixture(scope="module")
def report_era() -> dict[str, Any]:
    return U.import_upstream(SHARED, "report")


@pytest.fixture(scope="module")
def head_era() -> dict[str, Any]:
    return U.import_upstream(SHARED, "head")


def _leaves(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict):
        out: list[tuple[str, ...]] = []
        for key, value in node.items():
            out.extend(_leaves(value, (*path, key)))
        return out
    return [path]


# ----------------------------------------------------------------------------------------------
# values and provenance


@pytest.mark.parametrize("era", ["report", "head"])
def test_every_imported_value_equals_the_files_number_exactly(era: str, report_era, head_era) -> None:
    measurements = report_era if era == "report" else head_era
    checked = 0
    for role, model in measurements["models"].items():
        for key, prov in model["field_provenance"].items():
            if prov["derived"] or prov["json_path"] is None:
                continue
            value = U._get(model, _split(key))
            assert value == at(raw(prov["commit"]), prov["json_path"]), (role, key)
            assert type(value) is type(at(raw(prov["commit"]), prov["json_path"]))
            checked += 1
    assert checked >= 30
    # the arrays the report quotes, from the commits the issue names
    rope, drope = measurements["models"]["rope"], measurements["models"]["drope"]
    assert rope["layers"]["bos_norm"] == raw(REPORT_COMMIT)["RoPE"]["baseline"]["bos_norm"]["mean"]
    assert rope["layers"]["sink_rate"] == raw(REPORT_COMMIT)["RoPE"]["baseline"]["sink_rate"]["mean"]
    assert drope["layers"]["sink_rate"] == raw(REPORT_COMMIT)["DroPE"]["baseline"]["sink_rate"]["mean"]
    phase = DROPE_PHASE_COMMIT if era == "report" else HEAD_COMMIT
    for series in ("bos_norm", "bos_ratio", "entropy", "anisotropy"):
        assert drope["layers"][series] == raw(phase)["DroPE"]["baseline"][series]["mean"]


def _split(key: str) -> list[str]:
    # field keys here never hold dots inside a key: split on "."
    return key.split(".")


def test_every_field_names_its_commit_file_path_and_protocol(report_era) -> None:
    for role, model in report_era["models"].items():
        for section in ("layers", "scalars", "perplexity", "interventions"):
            for leaf in _leaves(model[section], (section,)):
                if leaf[-1] in ("protocol", "intervention", "kind"):
                    continue  # labels of an entry, not measured values
                prov = sources_field_provenance.field_provenance_for(report_era, f"{role}:" + ".".join(leaf))
                assert prov is not None, (role, leaf)
                assert prov["commit"] in COMMITS and prov["file"] == FILE
                assert prov["repository"] == "DavidDemitriAfrica/drope-activations"
                assert prov["protocol"]["name"] and prov["protocol"]["text_set"]
                if (
                    prov["derived"] and prov["rule"] in U.TRANSFORMS
                ):  # a count of one JSON path's non-finite values
                    assert prov["inputs"] == [prov["json_path"]]
                elif prov["derived"]:
                    assert prov["json_path"] is None and prov["rule"] and prov["inputs"]
                else:
                    assert prov["json_path"].startswith({"rope": "RoPE.", "drope": "DroPE."}[role])
    rope = report_era["models"]["rope"]["field_provenance"]
    assert rope["layers.sink_rate"]["protocol"]["n_texts"] == 10
    assert "FP4" in rope["layers.sink_rate"]["protocol"]["quantization"]
    assert "WITHOUT the rotary step" in rope["layers.sink_rate"]["protocol"]["attention"]
    assert (
        "NF4" in rope["layers.bos_norm"]["protocol"]["quantization"]
        and rope["layers.bos_norm"]["protocol"]["pad_to"] == 512
    )
    assert "after the final RMSNorm" in rope["layers.bos_norm"]["protocol"]["layer_convention"]
    assert rope["interventions.bos_mlp_ablation:argmax-ratio.ppl"]["protocol"]["n_texts"] == 5
    bos_only = rope["interventions.layer1_ablation:bos_only.ppl"]
    assert bos_only["commit"] == HEAD_COMMIT and bos_only["protocol"]["n_texts"] == 20
    assert "MLP AND attention" in bos_only["protocol"]["layer1_ablation"]
    # a metric path with an index reads the provenance of its series
    assert (
        sources_field_provenance.field_provenance_for(report_era, "drope:layers.sink_rate[1]")["json_path"]
        == "DroPE.baseline.sink_rate.mean"
    )
    # the later WikiText-lines run says when it was first committed (after the report)
    assert (
        bos_only["protocol"]["run"]["first_committed_date"] > sources_table.load_sources()["report"]["date"]
    )


def test_nan_is_imported_only_as_a_count_of_non_finite_layers(report_era) -> None:
    """90f8e3c's DroPE BOS norms [44.2, NaN x 31] (eager attention in fp16) are the evidence of the
    report's "NaN values in hidden states": imported as 31 layers, the first at 1; the file stays finite."""
    norms = raw(REPORT_COMMIT)["DroPE"]["baseline"]["bos_norm"]["mean"]
    expected = [i for i, v in enumerate(norms) if not math.isfinite(v)]
    scalars = report_era["models"]["drope"]["scalars"]
    assert scalars["eager_fp16_nonfinite_layers"] == len(expected) == 31
    assert scalars["eager_fp16_first_nonfinite_layer"] == expected[0] == 1
    prov = report_era["models"]["drope"]["field_provenance"]["scalars.eager_fp16_nonfinite_layers"]
    assert prov["commit"] == REPORT_COMMIT and prov["protocol"]["name"] == "eager-fp16-fp4"
    assert (
        prov["rule"] == "count_nonfinite" and prov["protocol"]["run"]["script"] == "fix_drope_sink_rates.py"
    )
    assert "eager_fp16_nonfinite_layers" not in report_era["models"]["rope"]["scalars"]  # RoPE's are finite
    json.dumps(report_era, allow_nan=False)  # nothing non-finite was written


def test_methods_facts_are_imported_with_their_protocol(report_era) -> None:
    for role, attended in (("rope", "q/k after the rotary step"), ("drope", "raw q_proj/k_proj outputs")):
        method = report_era["models"][role]["provenance"]["method"]
        assert method["attended_qk"] == attended
        assert method["entropy"].startswith("raw Shannon entropy") and "5.0 x" in method["qk_disruption_rule"]
        prov = report_era["models"][role]["field_provenance"]
        assert prov["provenance.method.entropy"]["protocol"]["name"] == f"phase-{role}-nf4"
        assert prov["provenance.method.qk_disruption_rule"]["protocol"]["name"] == "functional-5-prompts-nf4"
        assert prov["provenance.method.attended_qk"]["protocol"]["name"] == "model-architecture"


def test_a_run_made_after_the_report_is_never_a_source() -> None:
    """run_layer1_ablation.py was first committed on 2026-01-21, after the report's commit of 2026-01-20:
    a claim may read its numbers only as evidence against it (contradicted) or as prose_only.later."""
    from drope_check.claims.claim_file import ClaimsFileError, load_claims

    assert "after the report's commit 90f8e3c" in sources_table.run_after_report("wikitext-lines-fp4")
    assert (
        sources_table.run_after_report("functional-5-prompts-nf4") is None
        and sources_table.run_after_report("eager-fp16-fp4") is None
    )
    claims = load_claims("llama2-7b").claims
    for claim in claims:
        ev = claim.author_files
        if ev.kind == "value" and "wikitext-lines-fp4" in ev.protocols:
            assert ev.contradicted, claim.key
    text = (Path(__file__).resolve().parents[1] / "expected" / "llama2-7b.toml").read_text()
    as_source = text.replace(
        'prose_only = { nearest = ["rope:perplexity.prompts.ppl"], later = ["rope:perplexity.lines.ppl"] }',
        'protocol = "wikitext-lines-fp4"',
        1,
    )
    assert as_source != text
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "llama2-7b.toml").write_text(as_source)
        with pytest.raises(ClaimsFileError, match="cannot be where the report's number came from"):
            load_claims("llama2-7b", folder)


def test_derived_values_come_from_the_metric_functions_and_are_marked(report_era) -> None:
    from drope_check.engine import metrics

    for role, key in (("rope", "RoPE"), ("drope", "DroPE")):
        model = report_era["models"][role]
        prov = model["field_provenance"]
        layers, scalars = model["layers"], model["scalars"]
        assert scalars["sink_rate_average"] == metrics.layer_mean(layers["sink_rate"])
        assert scalars["peak_bos_norm_layer"] == metrics.argmax_layer(layers["bos_norm"])
        assert scalars["peak_bos_norm"] == max(layers["bos_norm"])
        assert scalars["min_entropy"] == min(layers["entropy"]) and scalars["min_entropy_layer"] == layers[
            "entropy"
        ].index(min(layers["entropy"]))
        # upstream's own spike layer agrees with the suite's rule on the imported arrays
        assert scalars["bos_spike_layer_argmax_ratio"] == metrics.spike_layer_argmax_ratio(
            layers["bos_ratio"]
        )
        for name in (
            "sink_rate_average",
            "peak_bos_norm",
            "peak_bos_norm_layer",
            "min_entropy",
            "min_entropy_layer",
        ):
            assert prov[f"scalars.{name}"]["derived"] is True
        assert prov["scalars.peak_bos_norm"]["inputs"] == ["layers.bos_norm"]
        ablation = model["interventions"]["bos_mlp_ablation:argmax-ratio"]
        f = raw(REPORT_COMMIT)[key]["functional"]
        assert ablation["ratio"] == f["bos_mlp_ablation"]["perplexity"] / f["baseline"]["perplexity"]
        assert (
            ablation["protocol"] == "prompts"
            and prov["interventions.bos_mlp_ablation:argmax-ratio.ratio"]["derived"]
        )
    assert report_era["models"]["rope"]["scalars"]["sink_rate_average"] == pytest.approx(0.978125, abs=1e-9)
    assert report_era["models"]["drope"]["scalars"]["sink_rate_average"] == pytest.approx(0.9557617, abs=1e-7)


def test_fields_upstream_never_measured_are_absent(report_era, head_era) -> None:
    for measurements in (report_era, head_era):
        for model in measurements["models"].values():
            assert "heads" not in model
            assert (
                "embedding_bos_norm" not in model["scalars"]
                and "bos_spike_layer_max_write" not in model["scalars"]
            )
            assert "entropy_normalized" not in model["layers"] and "bos_mlp_write_norm" not in model["layers"]
    # HEAD's 5-prompt ablation is 0 (never run): absent in the head era, never imported as a value
    for model in head_era["models"].values():
        assert "bos_mlp_ablation:argmax-ratio" not in model["interventions"]
        assert "qk_disruption:report" in model["interventions"]
    assert head_era["models"]["drope"]["scalars"]["peak_bos_norm"] == pytest.approx(518.8667, abs=1e-4)
    assert head_era["models"]["drope"]["scalars"]["min_entropy"] == pytest.approx(0.128525, abs=1e-6)


def test_written_file_is_strict_json_and_the_cli_writes_it(tmp_path: Path) -> None:
    from drope_check.cli import main

    out = tmp_path / "upstream.json"
    assert main(["import-upstream", str(SHARED), "--out", str(out)]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-finite literal {constant} in the written file")

    data = json.loads(out.read_text(), parse_constant=refuse)
    assert data["pair"] == "llama2-7b" and data["schema_version"] == 1 and data["upstream"]["era"] == "report"
    assert set(data["upstream"]["files_sha256"]) == set(COMMITS)


# ----------------------------------------------------------------------------------------------
# refusals: one sentence naming what is wrong


def _copy_shared(tmp_path: Path) -> Path:
    root = tmp_path / "up"
    shutil.copytree(SHARED, root)
    return root


def test_a_folder_missing_a_commit_is_one_sentence_naming_it(tmp_path: Path, capsys) -> None:
    root = _copy_shared(tmp_path)
    shutil.rmtree(root / DROPE_PHASE_COMMIT)
    with pytest.raises(sources_table.UpstreamImportError) as info:
        U.import_upstream(root, "report")
    message = str(info.value)
    assert DROPE_PHASE_COMMIT in message and str(root) in message and "\n" not in message
    assert U.main([str(root), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and DROPE_PHASE_COMMIT in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()
    # the head era does not need that commit
    assert U.import_upstream(root, "head")["upstream"]["era"] == "head"


def test_a_missing_file_and_malformed_json_are_named(tmp_path: Path) -> None:
    root = _copy_shared(tmp_path)
    (root / HEAD_COMMIT / FILE).unlink()
    with pytest.raises(sources_table.UpstreamImportError, match=f"no file {FILE} at commit {HEAD_COMMIT}"):
        U.import_upstream(root, "report")
    (root / HEAD_COMMIT / FILE).write_text('{"RoPE": {')
    with pytest.raises(
        sources_table.UpstreamImportError, match=f"{FILE} at commit {HEAD_COMMIT} .* is not valid JSON"
    ):
        U.import_upstream(root, "report")
    with pytest.raises(sources_table.UpstreamImportError, match="is not a folder"):
        U.import_upstream(tmp_path / "nowhere", "report")


def _table_with(change) -> dict[str, Any]:
    table = copy.deepcopy(sources_table.load_sources())
    change(table)
    return table


def test_importing_nan_is_impossible() -> None:
    # 90f8e3c's DroPE phase arrays are NaN / 0: reading them there must fail, naming the NaN
    assert math.isnan(raw(REPORT_COMMIT)["DroPE"]["baseline"]["bos_norm"]["mean"][1])

    def drope_phase_at_report_commit(table: dict[str, Any]) -> None:
        for use in table["eras"]["report"]["uses"]:
            if use["model"] == "drope" and use["source"] == "phase":
                use["commit"] = REPORT_COMMIT

    with pytest.raises(
        sources_table.UpstreamImportError, match=r"DroPE.baseline.bos_norm.mean holds NaN or inf"
    ):
        U.import_upstream(SHARED, "report", _table_with(drope_phase_at_report_commit))


def test_zeros_for_runs_that_never_happened_are_refused() -> None:
    def ablation_at_head(table: dict[str, Any]) -> None:
        for use in table["eras"]["head"]["uses"]:
            if use["source"] == "functional-head":
                use["source"] = "functional"

    with pytest.raises(
        sources_table.UpstreamImportError,
        match=r"functional.bos_mlp_ablation.perplexity is 0, not a perplexity",
    ):
        U.import_upstream(SHARED, "head", _table_with(ablation_at_head))

    def zero_ratio_source(table: dict[str, Any]) -> None:  # DroPE bos_ratio at 90f8e3c is [0.62, 0, 0, ...]
        table["sources"]["sinks"]["fields"].append(
            {
                "json_path": "{model}.baseline.bos_ratio.mean",
                "field": ["layers", "bos_ratio"],
                "check": "per_layer_positive",
            }
        )

    with pytest.raises(sources_table.UpstreamImportError, match=r"must be > 0 at every layer, but layer 1"):
        U.import_upstream(SHARED, "report", _table_with(zero_ratio_source))


def test_a_derived_value_never_crosses_protocols() -> None:
    def cross(table: dict[str, Any]) -> None:
        table["derived"].append(
            {
                "field": ["interventions", "mixed", "ratio"],
                "rule": "perplexity_ratio",
                "inputs": [
                    ["interventions", "layer1_ablation:bos_only", "ppl"],
                    ["perplexity", "prompts", "ppl"],
                ],
            }
        )

    with pytest.raises(sources_table.UpstreamImportError, match="never crosses protocols"):
        U.import_upstream(SHARED, "report", _table_with(cross))


# ----------------------------------------------------------------------------------------------
# a git clone as SOURCE


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_git_clone_gives_the_same_measurements_as_the_folder(tmp_path: Path, report_era) -> None:
    repo = tmp_path / "clone"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    renamed: dict[str, str] = {}
    for commit in COMMITS:  # in history order: 16a5164, 90f8e3c, 2395c15
        target = repo / FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / commit / FILE, target)
        git("add", FILE)
        git("commit", "-q", "--allow-empty", "-m", f"results at {commit[:7]}")
        renamed[commit] = git("rev-parse", "HEAD")
    (repo / FILE).write_text("{}")  # the working tree is never read: only `git show COMMIT:PATH`

    def to_clone_commits(table: dict[str, Any]) -> None:
        for era in table["eras"].values():
            for use in era["uses"]:
                use["commit"] = renamed[use["commit"]]

    from_git = U.import_upstream(repo, "report", _table_with(to_clone_commits))
    assert from_git["upstream"]["source"].startswith("git clone")
    for role in ("rope", "drope"):
        got, want = from_git["models"][role], report_era["models"][role]
        for section in ("layers", "scalars", "perplexity", "interventions"):
            assert got[section] == want[section]
    assert set(from_git["upstream"]["files_sha256"].values()) == set(
        report_era["upstream"]["files_sha256"].values()
    )
    with pytest.raises(sources_table.UpstreamImportError, match=f"does not contain commit {REPORT_COMMIT}"):
        U.import_upstream(repo, "report")


# ----------------------------------------------------------------------------------------------
# judge on the imported file = a verdict table computed by hand from the raw JSON


AF = ":author-files]"


def hand_verdicts() -> dict[str, str]:
    """Each claim's author-files outcome from the raw files and expected/llama2-7b.toml, by hand.

    Each value is read at the path and under the protocol its claim's evidence table names (the
    protocol the report's value came from); a prose-only number is a finding, never a pass. A run
    committed after the report (the WikiText-lines run, first committed 2026-01-21) is never a source.
    """
    r90, d16 = raw(REPORT_COMMIT), raw(DROPE_PHASE_COMMIT)
    h = raw(HEAD_COMMIT)
    rope_sinks = r90["RoPE"]["baseline"]["sink_rate"]["mean"]
    drope_sinks = r90["DroPE"]["baseline"]["sink_rate"]["mean"]
    drope_norm = d16["DroPE"]["baseline"]["bos_norm"]["mean"]
    rope_norm = r90["RoPE"]["baseline"]["bos_norm"]["mean"]
    valley = min(d16["DroPE"]["baseline"]["entropy"]["mean"]) / min(
        r90["RoPE"]["baseline"]["entropy"]["mean"]
    )
    f_rope, f_drope = r90["RoPE"]["functional"], r90["DroPE"]["functional"]
    qk = f_rope["qk_disruption"]["perplexity"] / f_rope["baseline"]["perplexity"]
    rope_5 = (
        f_rope["bos_mlp_ablation"]["perplexity"] / f_rope["baseline"]["perplexity"]
    )  # 873x (5 phase paragraphs)
    drope_5 = f_drope["bos_mlp_ablation"]["perplexity"] / f_drope["baseline"]["perplexity"]  # 1.015x
    eager_nan = sum(1 for x in r90["DroPE"]["baseline"]["bos_norm"]["mean"] if not math.isfinite(x))  # 31
    lines = h["DroPE"]["layer1_ablation"]
    drope_layer1 = (
        lines["layer1_bos_only"]["perplexity"] / lines["baseline"]["perplexity"]
    )  # 171x (later run)

    def outcome(ok: bool) -> str:
        return "pass" if ok else "fail"

    def contradicted(ok: bool) -> str:
        return "xpass" if ok else "xfail"

    return {
        # prose only: no run committed by the report's commit holds these numbers; the WikiText-lines
        # run that gives 10.26 / 17.65 / 14422 / 1405x was first committed after the report
        **{
            f"{cid}[llama2-7b:{m}" + AF: "prose-only"
            for cid in ("ppl_baseline", "bos_mlp_ablation_ppl", "bos_mlp_ablation_ratio")
            for m in ("rope", "drope")
        },
        "methods_ablation_confirmed[llama2-7b:rope" + AF: "prose-only",
        # the qualitative pair claim on the one run of both models under one protocol: 873x >= 100, 1.015x <= 1.10
        "bos_mlp_ablation_only_rope_collapses[llama2-7b:pair" + AF: outcome(
            rope_5 >= 100 and drope_5 <= 1.10
        ),
        # mean of the 32 per-layer rates = 0.978125, |.. - 0.978| <= 0.03
        "sink_rate_average[llama2-7b:rope" + AF: outcome(abs(sum(rope_sinks) / 32 - 0.978) <= 0.03),
        # every layer 2-30 in [0.91, 1]
        "sink_rate_middle_layers[llama2-7b:rope" + AF: outcome(
            all(0.91 <= x <= 1.0 for x in rope_sinks[2:31])
        ),
        # DroPE: the report's 94-99%, tested at 99% as the report rounds (< 0.995): the file reaches 1.0 -> contradicted
        "sink_rate_middle_layers[llama2-7b:drope" + AF: contradicted(
            all(0.88 <= x <= 0.995 for x in drope_sinks[2:31])
        ),
        # 632.205 vs 632.2 within x1.25
        "peak_bos_norm[llama2-7b:drope" + AF: outcome(
            abs(math.log(max(drope_norm) / 632.2)) <= math.log(1.25)
        ),
        # argmax 23 on the plateau [4, 28]; value at 23 / max >= 0.995
        "peak_bos_norm_layer[llama2-7b:rope" + AF: outcome(4 <= rope_norm.index(max(rope_norm)) <= 28),
        "peak_bos_norm_layer_plateau[llama2-7b:pair" + AF: outcome(rope_norm[23] / max(rope_norm) >= 0.995),
        # 0.08954 / 0.0081155 = 11.03 vs 11.05 within x3
        "valley_entropy_ratio[llama2-7b:pair" + AF: outcome(abs(math.log(valley / 11.05)) <= math.log(3)),
        # 25.60 / 3.816 = 6.708 vs 6.7 within x2
        "qk_disruption_ratio[llama2-7b:rope" + AF: outcome(abs(math.log(qk / 6.7)) <= math.log(2)),
        # anisotropy at the valleys: 0.98827 (DroPE L2) < 0.99912 (RoPE L1)
        "valley_more_isotropic[llama2-7b:pair" + AF: outcome(
            d16["DroPE"]["baseline"]["anisotropy"]["mean"][2]
            < r90["RoPE"]["baseline"]["anisotropy"]["mean"][1]
        ),
        # RoPE padded to 512, DroPE not: 512 - 0 != 0; recorded as contradicted by the files: a strict xfail
        "identical_conditions[llama2-7b:pair" + AF: contradicted(512 - 0 == 0),
        # 31 layers with a non-finite BOS hidden state under eager fp16 attention: >= 1
        "eager_attention_nan[llama2-7b:drope" + AF: outcome(eager_nan >= 1),
        # "not critical": the later layer-1 BOS ablation gives 171x > 1.10 -> contradicted
        "drope_bos_not_critical[llama2-7b:drope" + AF: contradicted(drope_layer1 <= 1.10),
        # Methods statements against the facts of the author's code
        "methods_entropy_normalized[llama2-7b:pair" + AF: "xfail",  # raw entropy, not normalised
        "methods_qk_disruption_rule[llama2-7b:pair" + AF: "xfail",  # 5.0x mean dim norm, no 10 std
        "methods_perplexity_texts[llama2-7b:pair"
        + AF: "xfail",  # the first 5 phase paragraphs, not WikiText-2
        "methods_manual_hooks_valid[llama2-7b:rope" + AF: "xfail",  # RoPE attends after the rotary step
        "methods_manual_hooks_valid[llama2-7b:drope" + AF: "pass",  # DroPE: identity rotation
        "methods_bos_mlp_ablation[llama2-7b:pair" + AF: "pass",
        "methods_sink_threshold[llama2-7b:pair" + AF: "pass",
    }


@pytest.fixture
def imported_file(tmp_path: Path, report_era) -> Path:
    path = tmp_path / "upstream.json"
    path.write_text(json.dumps(report_era, allow_nan=False))
    return path


def test_judge_on_the_imported_file_reproduces_the_hand_table(imported_file: Path) -> None:
    verdicts = {v.key: v for v in judge_file(imported_file, "llama2-7b", None)}
    # 45: every claim of the file has an author-files test (none is suite only since issue 20)
    assert len(verdicts) == 45 and all(v.source == "author-files" for v in verdicts.values())
    hand = hand_verdicts()
    assert {key: verdicts[key].outcome for key in hand} == hand
    # every other claim passes: the report's numbers are the author's (transcribed) or inside the bands
    others = {k: v.outcome for k, v in verdicts.items() if k not in hand}
    assert set(others.values()) == {"pass"}, others
    assert verdicts["identical_conditions[llama2-7b:pair" + AF].measured == 512
    assert verdicts["sink_rate_average[llama2-7b:rope" + AF].measured == pytest.approx(0.978125, abs=1e-9)
    # a later run judges a claim only as evidence against it, and says so
    later = verdicts["drope_bos_not_critical[llama2-7b:drope" + AF]
    assert later.source_commit == HEAD_COMMIT and later.source_protocol == "20 WikiText lines, FP4"
    assert (
        "later evidence (run_layer1_ablation.py, first committed e134c15 on 2026-01-21T15:05" in later.reason
    )
    nan = verdicts["eager_attention_nan[llama2-7b:drope" + AF]
    assert nan.measured == 31 and nan.source_commit == REPORT_COMMIT
    valley = verdicts["valley_entropy_ratio[llama2-7b:pair" + AF]
    assert valley.source_commit == f"{DROPE_PHASE_COMMIT}, {REPORT_COMMIT}"
    assert valley.source_protocol == "phase prompts unpadded, NF4; phase prompts padded to 512, NF4"


def test_prose_only_names_the_nearest_numbers_with_commit_and_protocol(imported_file: Path) -> None:
    verdicts = {v.key: v for v in judge_file(imported_file, "llama2-7b", None)}
    v = verdicts["bos_mlp_ablation_ppl[llama2-7b:drope" + AF]
    assert v.outcome == "prose-only" and v.measured is None and v.passed is None
    assert v.reason.startswith(
        "prose only: no committed result holds this number (the report says 18.5). Nearest: "
    )
    assert (
        "4.29 = drope:interventions.bos_mlp_ablation:argmax-ratio.ppl (5 phase prompts, NF4 @90f8e3c)"
        in v.reason
    )
    assert "4.225 = drope:perplexity.prompts.ppl (5 phase prompts, NF4 @90f8e3c)" in v.reason
    assert (
        "Later evidence, not the source: 3018 = drope:interventions.layer1_ablation:bos_only.ppl (20 WikiText lines, "
        "FP4 @2395c15; run_layer1_ablation.py, first committed e134c15 on 2026-01-21T15:05, after the report's "
        "commit 90f8e3c of 2026-01-20T23:26)"
    ) in v.reason
    f = raw(REPORT_COMMIT)["DroPE"]["functional"]
    assert [n["value"] for n in v.nearest][:2] == [
        f["bos_mlp_ablation"]["perplexity"],
        f["baseline"]["perplexity"],
    ]
    assert [bool(n.get("later")) for n in v.nearest] == [False, False, True]
    # the four numbers the later run used to "support" (issue 20): prose only, the later run dated
    for key in (
        "ppl_baseline[llama2-7b:rope",
        "ppl_baseline[llama2-7b:drope",
        "bos_mlp_ablation_ppl[llama2-7b:rope",
        "bos_mlp_ablation_ratio[llama2-7b:rope",
    ):
        v = verdicts[key + AF]
        assert v.outcome == "prose-only" and "Later evidence, not the source: " in v.reason, key
        assert "2026-01-21T15:05" in v.reason.split("Later evidence")[1], key
        assert all(
            "@2395c15" not in part for part in v.reason.split("Later evidence")[0].split("Nearest:")[1:]
        ), key


def test_a_value_of_another_protocol_is_never_judged(report_era) -> None:
    """A WikiText-lines ratio against the 5-phase-paragraph Q/K 6.7x: skipped naming both protocols."""
    import dataclasses

    from drope_check.claims.claim_file import load_claims
    from drope_check.sources.author_files import author_files_verdict

    claim = load_claims("llama2-7b").get("qk_disruption_ratio", "rope")
    wrong = dataclasses.replace(
        claim,
        author_files=dataclasses.replace(
            claim.author_files, metrics=("rope:interventions.layer1_ablation:bos_only.ratio",)
        ),
    )
    v = author_files_verdict(wrong, report_era)
    assert v.outcome == "skip" and v.measured is None
    assert "made under another protocol than the report's value" in v.reason
    assert "'functional-5-prompts-nf4' for the report's value, 'wikitext-lines-fp4' in the file" in v.reason
    # the head era's DroPE phase arrays are the rerun: not the NF4 run the report's 632.2 came from
    head = U.import_upstream(SHARED, "head")
    peak = load_claims("llama2-7b").get("peak_bos_norm", "drope")
    v = author_files_verdict(peak, head)
    assert (
        v.outcome == "skip"
        and "'phase-drope-nf4' for the report's value, 'phase-drope-rerun' in the file" in v.reason
    )
    assert author_files_verdict(load_claims("llama2-7b").get("peak_bos_norm", "rope"), head).outcome == "pass"


def test_a_path_the_files_lack_is_a_skip_and_an_unknown_protocol_an_error(report_era) -> None:
    import dataclasses

    from drope_check.claims.claim_file import load_claims
    from drope_check.sources.author_files import author_files_verdict

    claim = load_claims("llama2-7b").get("peak_bos_norm", "rope")
    lacking = dataclasses.replace(
        claim,
        author_files=dataclasses.replace(claim.author_files, metrics=("rope:scalars.embedding_bos_norm",)),
    )
    v = author_files_verdict(lacking, report_era)
    assert v.outcome == "skip" and v.reason.startswith("not in the author's files: ")
    unknown = dataclasses.replace(
        claim, author_files=dataclasses.replace(claim.author_files, protocols=("nf5",))
    )
    v = author_files_verdict(unknown, report_era)
    assert v.outcome == "error" and "'nf5'" in v.reason and "wikitext-lines-fp4" in v.reason


def test_the_report_of_the_imported_file_has_the_evidence_table(imported_file: Path, tmp_path: Path) -> None:
    judge_file(imported_file, "llama2-7b", tmp_path / "rep")
    md = (tmp_path / "rep" / "claims-report.md").read_text()
    table = md[md.index("## Evidence") : md.index("## Summary")]
    row = next(line for line in table.splitlines() if line.startswith("| bos_mlp_ablation_ppl[rope] |"))
    assert row.startswith(
        "| bos_mlp_ablation_ppl[rope] | 12766 | **prose only**: no committed number; nearest 3333 "
        "(5 phase prompts, NF4 @90f8e3c); later, not the source: 1.442e+04 (20 WikiText lines, FP4 "
        "@2395c15, committed after the report) |"
    )
    row = next(line for line in table.splitlines() if line.startswith("| bos_mlp_ablation_ppl[drope] |"))
    assert "**prose only**: no committed number; nearest 4.29 (5 phase prompts, NF4 @90f8e3c)" in row
    row = next(line for line in table.splitlines() if line.startswith("| methods_entropy_normalized[pair] |"))
    assert "contradicted by the files (xfail)" in row and "n/a: a statement about the author's method" in row
    assert "## Prose only" in md and "## Does not generalise" in md


def test_judge_strict_on_the_imported_file_evaluates_every_claim(imported_file: Path, capsys) -> None:
    from drope_check.cli import main

    verdicts = judge_file(imported_file, "llama2-7b", None, strict=True)
    assert not [v.key for v in verdicts if v.outcome in ("skip", "error")]
    assert main(["judge", str(imported_file), "--pair", "llama2-7b", "--strict"]) == 0
