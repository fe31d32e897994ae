"""``drope-check import-upstream``: the author's committed files as a llama2-7b measurements file.

Claimed: every imported value is the file's number unchanged, and names its commit, file, JSON path
and protocol; derived values come from drope_check.metrics and say so; a NaN (or upstream's 0 for a
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

from drope_check import upstream as U
from drope_check.report import judge_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "upstream-results"
if not SHARED.is_dir():  # a worktree under /work/wt/<name> or the main checkout under /work/main
    SHARED = Path("/work/shared/data/upstream-results")
FILE = "results/phase_metrics/rope_vs_drope_phase_metrics.json"
REPORT_COMMIT = "90f8e3c73617cd4fa8986a8772c3cca53a570354"
DROPE_PHASE_COMMIT = "16a5164c48e060f3648ce1f8ecc98f7e6bd26097"
HEAD_COMMIT = "2395c1535b1c27b8351b41e393db2a5044deefde"
COMMITS = (DROPE_PHASE_COMMIT, REPORT_COMMIT, HEAD_COMMIT)

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the author's files are not at {SHARED}")


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
                prov = U.field_provenance_for(report_era, f"{role}:" + ".".join(leaf))
                assert prov is not None, (role, leaf)
                assert prov["commit"] in COMMITS and prov["file"] == FILE
                assert prov["repository"] == "DavidDemitriAfrica/drope-activations"
                assert prov["protocol"]["name"] and prov["protocol"]["text_set"]
                if prov["derived"]:
                    assert prov["json_path"] is None and prov["rule"] and prov["inputs"]
                else:
                    assert prov["json_path"].startswith({"rope": "RoPE.", "drope": "DroPE."}[role])
    rope = report_era["models"]["rope"]["field_provenance"]
    assert rope["layers.sink_rate"]["protocol"]["n_texts"] == 10
    assert "FP4" in rope["layers.sink_rate"]["protocol"]["quantization"]
    assert "WITHOUT the rotary step" in rope["layers.sink_rate"]["protocol"]["attention"]
    assert "NF4" in rope["layers.bos_norm"]["protocol"]["quantization"] and rope["layers.bos_norm"]["protocol"]["pad_to"] == 512
    assert "after the final RMSNorm" in rope["layers.bos_norm"]["protocol"]["layer_convention"]
    assert rope["interventions.bos_mlp_ablation:argmax-ratio.ppl"]["protocol"]["n_texts"] == 5
    bos_only = rope["interventions.layer1_ablation:bos_only.ppl"]
    assert bos_only["commit"] == HEAD_COMMIT and bos_only["protocol"]["n_texts"] == 20
    assert "MLP AND attention" in bos_only["protocol"]["layer1_ablation"]
    # a metric path with an index reads the provenance of its series
    assert U.field_provenance_for(report_era, "drope:layers.sink_rate[1]")["json_path"] == "DroPE.baseline.sink_rate.mean"


def test_derived_values_come_from_the_metric_functions_and_are_marked(report_era) -> None:
    from drope_check import metrics

    for role, key in (("rope", "RoPE"), ("drope", "DroPE")):
        model = report_era["models"][role]
        prov = model["field_provenance"]
        layers, scalars = model["layers"], model["scalars"]
        assert scalars["sink_rate_average"] == metrics.layer_mean(layers["sink_rate"])
        assert scalars["peak_bos_norm_layer"] == metrics.argmax_layer(layers["bos_norm"])
        assert scalars["peak_bos_norm"] == max(layers["bos_norm"])
        assert scalars["min_entropy"] == min(layers["entropy"]) and scalars["min_entropy_layer"] == layers["entropy"].index(min(layers["entropy"]))
        # upstream's own spike layer agrees with the suite's rule on the imported arrays
        assert scalars["bos_spike_layer_argmax_ratio"] == metrics.spike_layer_argmax_ratio(layers["bos_ratio"])
        for name in ("sink_rate_average", "peak_bos_norm", "peak_bos_norm_layer", "min_entropy", "min_entropy_layer"):
            assert prov[f"scalars.{name}"]["derived"] is True
        assert prov["scalars.peak_bos_norm"]["inputs"] == ["layers.bos_norm"]
        ablation = model["interventions"]["bos_mlp_ablation:argmax-ratio"]
        f = raw(REPORT_COMMIT)[key]["functional"]
        assert ablation["ratio"] == f["bos_mlp_ablation"]["perplexity"] / f["baseline"]["perplexity"]
        assert ablation["protocol"] == "prompts" and prov["interventions.bos_mlp_ablation:argmax-ratio.ratio"]["derived"]
    assert report_era["models"]["rope"]["scalars"]["sink_rate_average"] == pytest.approx(0.978125, abs=1e-9)
    assert report_era["models"]["drope"]["scalars"]["sink_rate_average"] == pytest.approx(0.9557617, abs=1e-7)


def test_fields_upstream_never_measured_are_absent(report_era, head_era) -> None:
    for measurements in (report_era, head_era):
        for model in measurements["models"].values():
            assert "heads" not in model
            assert "embedding_bos_norm" not in model["scalars"] and "bos_spike_layer_max_write" not in model["scalars"]
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
    with pytest.raises(U.UpstreamImportError) as info:
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
    with pytest.raises(U.UpstreamImportError, match=f"no file {FILE} at commit {HEAD_COMMIT}"):
        U.import_upstream(root, "report")
    (root / HEAD_COMMIT / FILE).write_text('{"RoPE": {')
    with pytest.raises(U.UpstreamImportError, match=f"{FILE} at commit {HEAD_COMMIT} .* is not valid JSON"):
        U.import_upstream(root, "report")
    with pytest.raises(U.UpstreamImportError, match="is not a folder"):
        U.import_upstream(tmp_path / "nowhere", "report")


def _table_with(change) -> dict[str, Any]:
    table = copy.deepcopy(U.load_sources())
    change(table)
    return table


def test_importing_nan_is_impossible() -> None:
    # 90f8e3c's DroPE phase arrays are NaN / 0: reading them there must fail, naming the NaN
    assert math.isnan(raw(REPORT_COMMIT)["DroPE"]["baseline"]["bos_norm"]["mean"][1])

    def drope_phase_at_report_commit(table: dict[str, Any]) -> None:
        for use in table["eras"]["report"]["uses"]:
            if use["model"] == "drope" and use["source"] == "phase":
                use["commit"] = REPORT_COMMIT

    with pytest.raises(U.UpstreamImportError, match=r"DroPE.baseline.bos_norm.mean holds NaN or inf"):
        U.import_upstream(SHARED, "report", _table_with(drope_phase_at_report_commit))


def test_zeros_for_runs_that_never_happened_are_refused() -> None:
    def ablation_at_head(table: dict[str, Any]) -> None:
        for use in table["eras"]["head"]["uses"]:
            if use["source"] == "functional-head":
                use["source"] = "functional"

    with pytest.raises(U.UpstreamImportError, match=r"functional.bos_mlp_ablation.perplexity is 0, not a perplexity"):
        U.import_upstream(SHARED, "head", _table_with(ablation_at_head))

    def zero_ratio_source(table: dict[str, Any]) -> None:  # DroPE bos_ratio at 90f8e3c is [0.62, 0, 0, ...]
        table["sources"]["sinks"]["fields"].append(
            {"json_path": "{model}.baseline.bos_ratio.mean", "field": ["layers", "bos_ratio"], "check": "per_layer_positive"}
        )

    with pytest.raises(U.UpstreamImportError, match=r"must be > 0 at every layer, but layer 1"):
        U.import_upstream(SHARED, "report", _table_with(zero_ratio_source))


def test_a_derived_value_never_crosses_protocols() -> None:
    def cross(table: dict[str, Any]) -> None:
        table["derived"].append({
            "field": ["interventions", "mixed", "ratio"], "rule": "perplexity_ratio",
            "inputs": [["interventions", "layer1_ablation:bos_only", "ppl"], ["perplexity", "prompts", "ppl"]],
        })

    with pytest.raises(U.UpstreamImportError, match="never crosses protocols"):
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
            check=True, capture_output=True, text=True,
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
    assert set(from_git["upstream"]["files_sha256"].values()) == set(report_era["upstream"]["files_sha256"].values())
    with pytest.raises(U.UpstreamImportError, match=f"does not contain commit {REPORT_COMMIT}"):
        U.import_upstream(repo, "report")


# ----------------------------------------------------------------------------------------------
# judge on the imported file = a verdict table computed by hand from the raw JSON


def hand_verdicts() -> dict[str, str]:
    """Each claim's outcome from the raw files and the bands of expected/llama2-7b.toml, by hand."""
    r90, d16, h = raw(REPORT_COMMIT), raw(DROPE_PHASE_COMMIT), raw(HEAD_COMMIT)
    rope_ppl = h["RoPE"]["layer1_ablation"]["baseline"]["perplexity"]  # 10.2648
    drope_ablated = r90["DroPE"]["functional"]["bos_mlp_ablation"]["perplexity"]  # 4.29 (5 prompts)
    rope_ablated = r90["RoPE"]["functional"]["bos_mlp_ablation"]["perplexity"]  # 3332.6 (5 prompts)
    rope_sinks = r90["RoPE"]["baseline"]["sink_rate"]["mean"]
    drope_norm = d16["DroPE"]["baseline"]["bos_norm"]["mean"]
    rope_norm = r90["RoPE"]["baseline"]["bos_norm"]["mean"]
    valley = min(d16["DroPE"]["baseline"]["entropy"]["mean"]) / min(r90["RoPE"]["baseline"]["entropy"]["mean"])
    qk = r90["RoPE"]["functional"]["qk_disruption"]["perplexity"] / r90["RoPE"]["functional"]["baseline"]["perplexity"]

    def outcome(ok: bool) -> str:
        return "pass" if ok else "fail"

    return {
        # |10.2648 - 10.2| / 10.2 = 0.64% <= 6%
        "ppl_baseline[llama2-7b:rope]": outcome(abs(rope_ppl - 10.2) <= 0.06 * 10.2),
        # 3332.6 vs 12766: x3.83 > x1.35 (a 5-prompt number against a WikiText-lines claim)
        "bos_mlp_ablation_ppl[llama2-7b:rope]": outcome(abs(math.log(rope_ablated / 12766)) <= math.log(1.35)),
        # 4.29 vs 18.5 +- 15%: prose only, no committed result holds 18.5
        "bos_mlp_ablation_ppl[llama2-7b:drope]": outcome(abs(drope_ablated - 18.5) <= 0.15 * 18.5),
        # mean of the 32 per-layer rates = 0.978125, |.. - 0.978| <= 0.03
        "sink_rate_average[llama2-7b:rope]": outcome(abs(sum(rope_sinks) / 32 - 0.978) <= 0.03),
        # every layer 2-30 in [0.91, 1]
        "sink_rate_middle_layers[llama2-7b:rope]": outcome(all(0.91 <= x <= 1.0 for x in rope_sinks[2:31])),
        # 632.205 vs 632.2 within x1.25
        "peak_bos_norm[llama2-7b:drope]": outcome(abs(math.log(max(drope_norm) / 632.2)) <= math.log(1.25)),
        # argmax 23 in [16, 28]; value at 23 / max >= 0.998
        "peak_bos_norm_layer[llama2-7b:rope]": outcome(16 <= rope_norm.index(max(rope_norm)) <= 28),
        "peak_bos_norm_layer_plateau[llama2-7b:pair]": outcome(rope_norm[23] / max(rope_norm) >= 0.998),
        # 0.08954 / 0.0081155 = 11.03 vs 11.05 within x3
        "valley_entropy_ratio[llama2-7b:pair]": outcome(abs(math.log(valley / 11.05)) <= math.log(3)),
        # 25.60 / 3.816 = 6.708 vs 6.7 within x2
        "qk_disruption_ratio[llama2-7b:rope]": outcome(abs(math.log(qk / 6.7)) <= math.log(2)),
        # anisotropy at the valleys: 0.98827 (DroPE L2) < 0.99912 (RoPE L1)
        "valley_more_isotropic[llama2-7b:pair]": outcome(
            d16["DroPE"]["baseline"]["anisotropy"]["mean"][2] < r90["RoPE"]["baseline"]["anisotropy"]["mean"][1]
        ),
        # RoPE padded to 512, DroPE not: 512 - 0 != 0 (the finding)
        "identical_conditions[llama2-7b:pair]": outcome(512 - 0 == 0),
        "eager_attention_nan[llama2-7b:drope]": "skip",
    }


def test_judge_on_the_imported_file_reproduces_the_hand_table(tmp_path: Path, report_era) -> None:
    path = tmp_path / "upstream.json"
    path.write_text(json.dumps(report_era, allow_nan=False))
    verdicts = {v.key: v for v in judge_file(path, "llama2-7b", None)}
    hand = hand_verdicts()
    assert {key: verdicts[key].outcome for key in hand} == hand
    assert [k for k, o in hand.items() if o == "fail"] == [
        "bos_mlp_ablation_ppl[llama2-7b:rope]", "bos_mlp_ablation_ppl[llama2-7b:drope]", "identical_conditions[llama2-7b:pair]",
    ]
    assert verdicts["identical_conditions[llama2-7b:pair]"].measured == 512
    assert verdicts["sink_rate_average[llama2-7b:rope]"].measured == pytest.approx(0.978125, abs=1e-9)
