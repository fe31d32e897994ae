"""``drope-check judge A.json B.json ... --report-dir D``: several measurements files, ONE claims report.

What is claimed (drope_check.report.merge): each file is judged exactly as it is judged alone (same verdicts), the
report holds every pair (and every variant of a pair, in a column of its own), two files claiming the same
pair, source, variant and model are accepted only when they agree (then named together), and every
refusal is one sentence naming the file(s), exit 2 on the command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from drope_check import cli
from drope_check.report.merge import (
    MeasurementsConflict,
    first_difference,
    judge_file,
    judge_files,
    measurement_variant,
)

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def toy_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Claim files for pairs ``toy`` and ``toy2`` (the same claims) and one measurements file of each."""
    expected = tmp_path / "expected"
    expected.mkdir()
    shutil.copy(DATA / "expected" / "toy.toml", expected / "toy.toml")
    (expected / "toy2.toml").write_text(
        (DATA / "expected" / "toy.toml").read_text().replace('name = "toy"', 'name = "toy2"')
    )
    a = tmp_path / "a.json"
    shutil.copy(DATA / "toy-measurements.json", a)
    doc = json.loads((DATA / "toy-measurements.json").read_text())
    doc["pair"] = "toy2"
    b = tmp_path / "b.json"
    b.write_text(json.dumps(doc))
    return a, b, expected


def as_dicts(verdicts) -> list[dict]:
    return [v.to_dict() for v in verdicts]


def test_two_pairs_give_one_report_with_the_verdicts_each_file_gets_alone(toy_files, tmp_path):
    a, b, expected = toy_files
    merged = judge_files([a, b], report_dir=tmp_path / "report", expected_dir=expected)
    alone = judge_file(a, "toy", None, expected) + judge_file(b, "toy2", None, expected)
    assert as_dicts(merged) == as_dicts(alone)
    doc = json.loads((tmp_path / "report" / "claims-report.json").read_text())
    assert sorted(doc["pairs"]) == ["toy", "toy2"]
    assert {v["pair"] for v in doc["verdicts"]} == {"toy", "toy2"}
    assert len(doc["verdicts"]) == len(alone)
    assert doc["pairs"]["toy"]["origin"] == "a.json" and doc["pairs"]["toy2"]["origin"] == "b.json"
    markdown = (tmp_path / "report" / "claims-report.md").read_text()
    assert "toy: this suite" in markdown and "toy2: this suite" in markdown


def test_a_single_file_reports_as_before(toy_files, tmp_path):
    a, _, expected = toy_files
    judge_file(a, "toy", tmp_path / "one", expected)
    judge_files([a], report_dir=tmp_path / "many", expected_dir=expected)
    one = json.loads((tmp_path / "one" / "claims-report.json").read_text())
    many = json.loads((tmp_path / "many" / "claims-report.json").read_text())
    assert one == many


def test_two_files_of_one_pair_that_agree_are_one_column_naming_both(toy_files, tmp_path):
    a, _, expected = toy_files
    again = tmp_path / "a-rerun.json"
    doc = json.loads(a.read_text())
    doc["models"]["rope"]["provenance"]["seconds"] = 999.0  # another runner, another wall clock
    doc["models"]["rope"]["provenance"]["device"] = "cuda:3"
    doc["models"]["rope"]["scalars"]["ppl_baseline"] *= 1 + 1e-9  # within MERGE_RTOL
    again.write_text(json.dumps(doc))
    verdicts = judge_files([a, again], report_dir=tmp_path / "report", expected_dir=expected)
    assert as_dicts(verdicts) == as_dicts(judge_file(a, "toy", None, expected))
    doc = json.loads((tmp_path / "report" / "claims-report.json").read_text())
    assert list(doc["pairs"]) == ["toy"] and doc["pairs"]["toy"]["origin"] == "a.json (same as a-rerun.json)"


def test_two_files_of_one_pair_model_and_variant_that_disagree_are_refused_naming_both(toy_files, tmp_path):
    a, _, expected = toy_files
    other = tmp_path / "other.json"
    doc = json.loads(a.read_text())
    doc["models"]["drope"]["scalars"]["ppl_baseline"] *= 1.01
    other.write_text(json.dumps(doc))
    with pytest.raises(MeasurementsConflict) as info:
        judge_files([a, other], report_dir=tmp_path / "report", expected_dir=expected)
    message = str(info.value)
    assert str(other) in message and str(a) in message
    assert "drope model" in message and "$.model.scalars.ppl_baseline" in message and "\n" not in message
    assert not (tmp_path / "report").exists()  # refused before anything was written


def test_a_4bit_measurement_of_a_pair_gets_its_own_column(toy_files, tmp_path):
    a, _, expected = toy_files
    nf4 = tmp_path / "a-nf4.json"
    doc = json.loads(a.read_text())
    for model in doc["models"].values():
        model["provenance"]["quantization"] = "nf4-double"
        model["provenance"]["dtype"] = "float16"
        model["scalars"]["ppl_baseline"] *= 1.5  # another variant may measure anything: no conflict
    nf4.write_text(json.dumps(doc))
    assert measurement_variant(doc) == "4bit-nf4-double"
    verdicts = judge_files([nf4, a], report_dir=tmp_path / "report", expected_dir=expected)
    alone = judge_file(a, "toy", None, expected)
    assert {v.pair for v in verdicts} == {"toy", "toy@4bit-nf4-double"}
    relabelled = [v for v in verdicts if v.pair == "toy@4bit-nf4-double"]
    assert len(relabelled) == len(alone) and all("[toy@4bit-nf4-double:" in v.key for v in relabelled)
    assert as_dicts([v for v in verdicts if v.pair == "toy"]) == as_dicts(
        alone
    )  # the suite variant keeps the name
    doc = json.loads((tmp_path / "report" / "claims-report.json").read_text())
    assert sorted(doc["pairs"]) == ["toy", "toy@4bit-nf4-double"]
    assert "toy (4bit-nf4-double): this suite" in (tmp_path / "report" / "claims-report.md").read_text()


def test_a_custom_measurement_needs_the_pair_named(toy_files, tmp_path):
    a, b, expected = toy_files
    custom = tmp_path / "custom.json"
    doc = json.loads(a.read_text())
    doc["pair"] = "custom"
    custom.write_text(json.dumps(doc))
    with pytest.raises(MeasurementsConflict, match=f"{custom} measures a custom pair.*--pair"):
        judge_files([b, custom], expected_dir=expected)


def test_first_difference_names_the_path_and_values():
    assert first_difference({"a": [1.0, 2.0]}, {"a": [1.0, 2.0 * (1 + 1e-9)]}) is None
    assert first_difference({"a": [1.0, 2.0]}, {"a": [1.0, 2.1]}) == "$.a[1] is 2.0 vs 2.1"
    assert first_difference({"a": 1}, {"b": 1}) == "$.a is in only one of them"
    assert first_difference({"a": [1]}, {"a": [1, 2]}) == "$.a has 1 vs 2 entries"
    assert first_difference({"a": "x"}, {"a": "y"}) == "$.a is 'x' vs 'y'"


# --------------------------------------------------------------------------------------------------
# the command line: the author's files and a suite measurement of llama2-7b in one report


@pytest.fixture
def upstream_file(tmp_path: Path, author_files_path: Path) -> Path:
    from drope_check.sources import upstream as U

    path = tmp_path / "upstream.json"
    path.write_text(json.dumps(U.import_upstream(author_files_path, "report"), allow_nan=False))
    return path


def test_cli_merges_the_authors_files_and_a_suite_measurement(upstream_file, tmp_path, capsys):
    suite = tmp_path / "gpu.json"
    shutil.copy(DATA / "llama2-7b-handwritten.json", suite)
    rc = cli.main(["judge", str(upstream_file), str(suite), "--report-dir", str(tmp_path / "report")])
    out, err = capsys.readouterr()
    assert rc in (0, 1), err
    assert "from 2 measurements files" in out and "llama2-7b" in out
    doc = json.loads((tmp_path / "report" / "claims-report.json").read_text())
    assert list(doc["pairs"]) == ["llama2-7b"] and list(doc["author_files"]) == ["llama2-7b"]
    sources = {v["source"] for v in doc["verdicts"]}
    assert sources == {"suite", "author-files"}
    markdown = (tmp_path / "report" / "claims-report.md").read_text()
    assert "Llama-2-7B: author's files" in markdown and "Llama-2-7B: this suite" in markdown


def test_cli_refuses_conflicting_files_in_one_sentence(tmp_path, capsys):
    first, second = tmp_path / "job-1.json", tmp_path / "job-2.json"
    shutil.copy(DATA / "llama2-7b-handwritten.json", first)
    doc = json.loads(first.read_text())
    doc["models"]["rope"]["scalars"]["ppl_baseline"] *= 2
    second.write_text(json.dumps(doc))
    rc = cli.main(["judge", str(first), str(second), "--report-dir", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(first) in err and str(second) in err and "rope model" in err
    assert not (tmp_path / "report" / "claims-report.json").exists()
