"""The benchmark tooling: paired-ratio regression check and the performance table (synthetic runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_ratios  # noqa: E402
import make_table  # noqa: E402

from drope_check.models import availability as models_availability  # noqa: E402


def bench(
    name: str, path: str, t: int, b: int, ratio: float | None, seconds: float, load=(0.4, 0.3, 0.2)
) -> dict:
    info = {
        "path": path,
        "T": t,
        "B": b,
        "device": "cpu",
        "tokens": t * b,
        "tokens_per_s_best": t * b / seconds,
        "loadavg_before": list(load),
        "loadavg_after": [x + 0.1 for x in load],
    }
    if ratio is not None:
        info["ratio_to_plain_paired_median"] = ratio
    return {
        "name": name,
        "fullname": f"benchmarks/test_throughput.py::{name}",
        "group": f"cpu forward T={t} B={b}",
        "extra_info": info,
        "stats": {"min": seconds, "median": seconds, "data": [seconds]},
    }


def run(capture_ratio: float) -> dict:
    rows = []
    for t, b in ((512, 4), (2048, 1), (8192, 1)):
        rows.append(bench(f"test_forward_path[T{t}xB{b}-sdpa]", "sdpa", t, b, None, 3.0))
        rows.append(
            bench(
                f"test_forward_path[T{t}xB{b}-capture]", "capture", t, b, capture_ratio, 3.0 * capture_ratio
            )
        )
    return {
        "benchmarks": rows,
        "machine_info": {"cpu_count": 2},
        "drope_check": {"shapes": [[512, 4], [2048, 1], [8192, 1]]},
    }


def test_compare_flags_only_regressions_above_20_percent(tmp_path):
    base, same, worse = run(1.25), run(1.40), run(1.60)
    assert compare_ratios.regressions(base, same)[0] == []  # +12%
    bad, _ = compare_ratios.regressions(base, worse)  # +28%
    assert len(bad) == 3 and all("1.250 -> 1.600" in line for line in bad)
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(worse))
    assert compare_ratios.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    assert compare_ratios.main([str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
    assert compare_ratios.main([str(tmp_path / "a.json"), str(tmp_path / "missing.json")]) == 2


def test_table_has_the_issue_targets_with_load_beside_each_number():
    runs = [
        {
            "name": "claims",
            "title": "README command 1",
            "target_seconds": 60.0,
            "clock": "pytest",
            "seconds": 71.5,
            "returncode": 0,
            "summary": "30 passed",
            "loadavg_before": [1.0, 1, 1],
            "loadavg_after": [2.0, 1, 1],
            "cache": "warm",
        },
        {
            "name": "audit",
            "title": "the audit",
            "target_seconds": 600.0,
            "clock": "wall",
            "seconds": 420.0,
            "returncode": 0,
            "summary": "wrote audit.md",
            "loadavg_before": [0.5, 1, 1],
            "loadavg_after": [1.9, 1, 1],
            "cache": "warm",
        },
        {
            "name": "late",
            "title": "a failed run",
            "target_seconds": 600.0,
            "clock": "wall",
            "seconds": 10.0,
            "returncode": 1,
            "summary": "boom",
            "loadavg_before": None,
            "loadavg_after": None,
            "cache": "warm",
        },
        {
            "name": "claims-gemma",
            "title": "Gemma claims",
            "target_seconds": 240.0,
            "clock": "pytest",
            "skipped": "embedded model unavailable: install the extra",
        },
    ]
    text = make_table.render(run(1.4), None, "up 1 day, load average: 0.10", None, None, runs)
    assert (
        "| capture <= 1.3x plain SDPA forward, T = 512 (B = 4) | 1.40x (paired median) | 0.40 / 0.50 | **missed** |"
        in text
    )
    assert (
        "| capture <= 1.15x plain SDPA forward, T = 8192 (B = 1) | 1.40x (paired median) | 0.40 / 0.50 | **missed** |"
        in text
    )
    assert (
        "| capture <= 1.15x plain SDPA forward, T = 8192 (B = 1) | 1.10x (paired median) | 0.40 / 0.50 | **met** |"
        in (make_table.render(run(1.1), None, None, None, None, runs))
    )
    assert (
        "| README command 1 <= 60 s of pytest time on this machine | 71.5 s (30 passed; dequantised-model cache warm) | 1.00 / 2.00 | **missed** |"
        in text
    )
    assert (
        "| the audit <= 600 s of wall time on this machine | 420.0 s (wrote audit.md; dequantised-model cache warm) | 0.50 / 1.90 | **met** |"
        in text
    )
    # a run that failed never meets its target, however fast; a run not made says why
    assert "10.0 s (boom; dequantised-model cache warm; exit status 1) | n/a / n/a | **missed** |" in text
    assert (
        "| Gemma claims <= 240 s of pytest time on this machine | not run: embedded model unavailable: install the extra | | not measured |"
        in text
    )
    assert "30x faster than upstream" in text
    assert "load avg (1 min) start / end" in text
    assert "time_runs.py" in text and "--runs runs.json" in text


def test_time_runs_records_a_run_whose_pair_is_not_installed_as_skipped(monkeypatch):
    import time_runs

    monkeypatch.setattr(
        models_availability, "pair_available", lambda name: (False, f"{name}: package missing")
    )
    record = time_runs.time_run(time_runs.RUNS_BY_NAME["claims-gemma"], [])
    assert record == {
        "name": "claims-gemma",
        "title": time_runs.RUNS_BY_NAME["claims-gemma"].title,
        "target_seconds": 240.0,
        "clock": "pytest",
        "faster_than": None,
        "skipped": "gemma3-270m: package missing",
    }


def test_a_parallel_run_must_beat_the_serial_one():
    """``faster_than``: the -n 2 run of two pairs is met only with less time than the serial run of
    the same file, and not measured when that run failed or was not made."""
    import time_runs

    parallel = time_runs.RUNS_BY_NAME["claims-two-pairs-n2"]
    assert parallel.faster_than == "claims-two-pairs" and parallel.target_seconds is None
    assert "-n" in parallel.argv and [a for a in parallel.argv if a != "-n" and a != "2"] == list(
        time_runs.RUNS_BY_NAME["claims-two-pairs"].argv
    )

    def record(name, seconds, rc=0, **extra):
        return {
            "name": name,
            "title": name,
            "target_seconds": extra.get("target"),
            "clock": "wall",
            "seconds": seconds,
            "returncode": rc,
            "summary": "ok",
            "loadavg_before": [1.0],
            "loadavg_after": [1.0],
            "cache": "warm",
            "faster_than": extra.get("faster_than"),
        }

    def verdict(serial, parallel):
        text = make_table.render(run(1.2), None, None, None, None, [serial, parallel])
        return next(line for line in text.splitlines() if line.startswith("| p: less wall time than s"))

    assert verdict(record("s", 100.0, target=240.0), record("p", 80.0, faster_than="s")).endswith("**met** |")
    assert "(100.0 s)" in verdict(record("s", 100.0, target=240.0), record("p", 80.0, faster_than="s"))
    assert verdict(record("s", 100.0, target=240.0), record("p", 100.0, faster_than="s")).endswith(
        "**missed** |"
    )
    assert verdict(record("s", 100.0, rc=1, target=240.0), record("p", 80.0, faster_than="s")).endswith(
        "not measured |"
    )


def test_time_runs_claims_run_is_readme_command_1():
    """The timed claims run is README command 1's pytest invocation (minus the set-up and report dir), with
    the pairs command 1 judges on the machine it sets up (no Gemma extra) named explicitly."""
    import time_runs

    readme = (ROOT / "README.md").read_text()
    command_1 = next(
        line
        for line in readme.splitlines()
        if line.startswith("bash ci/setup.sh") and "pytest claims/" in line
    )
    assert "--with-gemma" not in command_1
    argv = time_runs.RUNS_BY_NAME["claims"].argv
    assert argv[:2] == ("pytest", "claims/")
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "--pair"]
    assert pairs == ["smollm2-135m", "llama2-7b"]
    rest = [a for a in argv[1:] if a not in ("-p", "no:cacheprovider", "--pair", *pairs)]
    assert rest and all(arg in command_1 for arg in rest)


def test_ci_runs_readme_command_2():
    """CI must call the test command of README.md: .ci/run's last line is README command 2, verbatim."""
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in readme if line.startswith("bash ci/setup.sh")]
    ci_last = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()][-1]
    assert len(commands) >= 2 and ci_last == commands[1]
