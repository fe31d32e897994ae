"""A user's mistake is one sentence and exit 2, never a traceback, and leaves nothing half-written.

Each case below was a traceback (or a silent success) before: ``judge`` on a file whose
``interventions`` is an empty object (``ValueError: min() arg is an empty sequence``) or that holds
an integer too large for a float (``OverflowError``); ``--report-dir`` on a full disk (``OSError: No
space left on device``, with the report's first files already written); and ``--max-tokens`` past
a RoPE model's ``max_position_embeddings``, accepted without a word. (A checkpoint with NaN weights
and one that does not match its model: ``tests/test_incomplete_weights.py``; ``--claims-report``
naming a file: ``tests/test_plugin.py``.)
"""

from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from test_models import make_checkpoint

from drope_check import cli

DATA = Path(__file__).parent / "data"
MEASUREMENTS: dict = json.loads(
    (DATA / "smollm2-135m-measurements.json").read_text()
)  # see test_measurements_fuzz.py
REPORT_FILES = ("claims-report.json", "claims-report.md")


def run(capsys, *argv: object) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_sentence(err: str, *names: str) -> str:
    __tracebackhide__ = True
    lines = [line for line in err.strip().splitlines() if line.startswith("drope-check")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


# --------------------------------------------------------------------------------------------------
# judge: files a hand edit broke


def test_judge_of_empty_interventions_is_one_sentence(tmp_path, capsys):
    data = copy.deepcopy(MEASUREMENTS)
    data["models"]["rope"]["interventions"] = {}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    rc, _, err = run(capsys, "judge", path, "--pair", "smollm2-135m", "--report-dir", tmp_path / "report")
    assert rc == 2
    one_sentence(err, str(path), "$.models.rope.interventions: is an empty object")
    assert not (tmp_path / "report").exists()


def test_judge_of_an_integer_too_large_for_a_float_is_one_sentence(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text(
        json.dumps(MEASUREMENTS).replace(
            '"peak_bos_norm": 25101.870777235534', '"peak_bos_norm": 1' + "0" * 400
        )
    )
    assert "0" * 400 in path.read_text()
    rc, _, err = run(capsys, "judge", path, "--pair", "smollm2-135m", "--report-dir", tmp_path / "report")
    assert rc == 2
    one_sentence(err, str(path), "$.models.rope.scalars.peak_bos_norm", "too large for a float")


# --------------------------------------------------------------------------------------------------
# --report-dir on a full disk: all or nothing


def judge_into(capsys, tmp_path: Path, report_dir: Path) -> tuple[int, str]:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(MEASUREMENTS))
    rc, _, err = run(capsys, "judge", path, "--pair", "smollm2-135m", "--report-dir", report_dir)
    return rc, err


def test_a_full_disk_while_writing_the_report_leaves_the_old_report_and_no_partial_file(
    tmp_path, capsys, monkeypatch
):
    """ENOSPC on the third file of the report (after two plots were complete): exit 2, one
    sentence naming the folder and the cause, the previous report untouched, no temporary file."""
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "claims-report.md").write_text("the previous report")
    real_fsync, calls = os.fsync, []

    def full_disk(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    rc, err = judge_into(capsys, tmp_path, report_dir)
    assert rc == 2 and len(calls) == 3
    one_sentence(
        err,
        f"cannot write the report into {report_dir} (No space left on device)",
        "no report file was written there",
    )
    assert sorted(p.name for p in report_dir.iterdir()) == ["claims-report.md"]
    assert (report_dir / "claims-report.md").read_text() == "the previous report"
    monkeypatch.setattr(os, "fsync", real_fsync)
    rc, err = judge_into(capsys, tmp_path, report_dir)  # and with space, the whole report
    assert rc == 0, err
    assert {*REPORT_FILES, "smollm2-135m-bos_norm.png"} <= {p.name for p in report_dir.iterdir()}
    assert not [p for p in report_dir.iterdir() if p.name.startswith(".")]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 48 KiB tmpfs (root only: skipped where mount is not permitted)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    try:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(folder)],
                capture_output=True,
                timeout=30,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        mounted = False
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True, timeout=30)


def test_a_really_full_disk_leaves_nothing(tmp_path, capsys, tiny_tmpfs):
    rc, err = judge_into(capsys, tmp_path, tiny_tmpfs / "report")
    assert rc == 2
    one_sentence(err, f"cannot write the report into {tiny_tmpfs / 'report'} (No space left on device)")
    assert [p.name for p in (tiny_tmpfs / "report").iterdir()] == []


# --------------------------------------------------------------------------------------------------
# --max-tokens past a RoPE model's trained positions: said once, recorded


def test_max_tokens_past_max_position_embeddings_is_warned_once_for_rope_and_recorded(tmp_path, capsys):
    pair = []
    for name, attention_type, drope in (("rope", None, False), ("drope", "qk_norm_nope", True)):
        make_checkpoint(tmp_path / name, attention_type, drope=drope)
        config = json.loads((tmp_path / name / "config.json").read_text())
        config["max_position_embeddings"] = 8
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        pair.append(tmp_path / name)
    out = tmp_path / "m.json"
    rc, _, err = run(
        capsys,
        "measure",
        "--rope",
        pair[0],
        "--drope",
        pair[1],
        "--out",
        out,
        "--device",
        "cpu",
        "--interventions",
        "qk_disruption:report",
        "--n-texts",
        "2",
        "--max-tokens",
        "16",
        "--no-progress",
    )
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("drope-check measure: warning:")]
    assert len(warnings) == 1, (
        err
    )  # once, for the RoPE model only (interventions rerun it: no second warning)
    assert (
        f"{pair[0]} (rope): sequences of up to 16 tokens (--max-tokens) exceed its max_position_embeddings 8"
        in warnings[0]
    )
    data = json.loads(out.read_text())
    for role in ("rope", "drope"):  # recorded for both; a legitimate DroPE experiment is not warned about
        assert data["models"][role]["provenance"]["positions_beyond_training"] == {
            "longest_sequence": 16,
            "max_position_embeddings": 8,
        }
