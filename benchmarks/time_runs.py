"""Time the project's end-to-end runs that have a time target, and record the machine load.

    python benchmarks/time_runs.py --out runs.json                 # every run below
    python benchmarks/time_runs.py --out runs.json --run claims     # one of them

Each run is a subprocess started exactly as a user starts it (same environment: pass
``DROPE_CHECK_WIKITEXT``; ``HF_HUB_OFFLINE=1`` offline). Recorded per run: the command, its exit
status, the seconds its target is about (pytest's own duration for a pytest run, the wall time of a
CLI run), the wall time, pytest's summary line, the 1/5/15-minute load averages before and after,
and whether the model's dequantised-weights cache existed before (a first run on a machine pays
the GGUF dequantisation once).

The targets (issues 10, 11, 12, 18) live in :data:`RUNS` (a run may instead have to beat another
run, ``faster_than``: ``-n 2`` against the same pairs serially); ``benchmarks/make_table.py --runs`` puts one
row per run into docs/performance.md. A run whose pair is not installed here (the opt-in Gemma
extra) is recorded as skipped with the reason, never timed as if it had run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class TimedRun:
    """One end-to-end run with a time target."""

    name: str
    title: str
    pair: str
    argv: tuple[str, ...]  # after ``python -m``; ``{out}`` is replaced by a fresh temporary folder
    target_seconds: float | None  # None: the target is ``faster_than``
    clock: str  # "pytest" (pytest's reported duration) or "wall"
    faster_than: str | None = None  # the name of a run this one must beat (same clock)


RUNS: tuple[TimedRun, ...] = (
    # README command 1 on the machine it sets up (`ci/setup.sh` without --with-gemma): the default pair and
    # llama2-7b's author files. Named explicitly, so an installed Gemma extra is not timed as part of it.
    TimedRun(
        "claims",
        "README command 1 (`pytest claims/ --strict-claims`: smollm2-135m + llama2-7b's author files)",
        "smollm2-135m",
        (
            "pytest",
            "claims/",
            "--strict-claims",
            "--pair",
            "smollm2-135m",
            "--pair",
            "llama2-7b",
            "-p",
            "no:cacheprovider",
        ),
        60.0,
        "pytest",
    ),
    TimedRun(
        "claims-gemma",
        "`pytest claims/ --pair gemma3-270m --strict-claims` (opt-in pair)",
        "gemma3-270m",
        ("pytest", "claims/", "--pair", "gemma3-270m", "--strict-claims", "-p", "no:cacheprovider"),
        240.0,
        "pytest",
    ),
    # Two model pairs, serially and with -n 2 (issue 18): the parallel run must take less wall time. Wall
    # time, not pytest's: the xdist workers' start-up is part of what -n costs.
    TimedRun(
        "claims-two-pairs",
        "`pytest claims/ --pair smollm2-135m --pair gemma3-270m` (two pairs, serial)",
        "gemma3-270m",
        ("pytest", "claims/", "--pair", "smollm2-135m", "--pair", "gemma3-270m", "-p", "no:cacheprovider"),
        240.0,
        "wall",
    ),
    TimedRun(
        "claims-two-pairs-n2",
        "the same with `-n 2` (one xdist worker per pair)",
        "gemma3-270m",
        (
            "pytest",
            "claims/",
            "--pair",
            "smollm2-135m",
            "--pair",
            "gemma3-270m",
            "-n",
            "2",
            "-p",
            "no:cacheprovider",
        ),
        None,
        "wall",
        faster_than="claims-two-pairs",
    ),
    TimedRun(
        "audit",
        "`drope-check audit --pair smollm2-135m` (every CPU variant, 20 texts)",
        "smollm2-135m",
        ("drope_check.cli", "audit", "--pair", "smollm2-135m", "--out-dir", "{out}", "--no-progress"),
        600.0,
        "wall",
    ),
)
RUNS_BY_NAME = {run.name: run for run in RUNS}


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cache_state(pair: str) -> str:
    """``warm`` / ``cold`` for the pair's dequantised-weights cache, or why it cannot be told."""
    from drope_check.models.checkpoints import file_sha256
    from drope_check.models.gguf_cache import dequantized_cache_path, embedded_gguf_path
    from drope_check.models.pairs import get_pair

    try:
        gguf = embedded_gguf_path(get_pair(pair).rope.source)
        return "warm" if dequantized_cache_path(file_sha256(gguf)).is_dir() else "cold"
    except Exception as exc:  # noqa: BLE001 - the run itself will say what is missing
        return f"n/a ({exc})"


def time_run(run: TimedRun, extra: list[str]) -> dict:
    """Run one :class:`TimedRun` and return its record (see the module docstring)."""
    from drope_check.models.availability import pair_available

    ok, why = pair_available(run.pair)
    base = {
        "name": run.name,
        "title": run.title,
        "target_seconds": run.target_seconds,
        "clock": run.clock,
        "faster_than": run.faster_than,
    }
    if not ok:
        return {**base, "skipped": why}
    cache = _cache_state(run.pair)
    with tempfile.TemporaryDirectory(prefix=f"time-{run.name}-") as out:
        argv = [a.replace("{out}", out) for a in run.argv] + list(extra)
        before = _load()
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
    after = _load()
    last = [line for line in proc.stdout.splitlines() if line.startswith("=")][-1:] or [""]
    match = re.search(r" in ([0-9.]+)s", last[0])
    pytest_seconds = float(match.group(1)) if match else None
    seconds = pytest_seconds if run.clock == "pytest" else round(wall, 1)
    record = {
        **base,
        "command": ("python -m " + " ".join(argv)).replace(out, "<out-dir>"),
        "returncode": proc.returncode,
        "seconds": seconds,
        "pytest_seconds": pytest_seconds,
        "wall_seconds": round(wall, 1),
        "summary": (last[0].strip("= ") or (proc.stdout.strip().splitlines() or [""])[-1]).replace(
            out, "<out-dir>"
        ),
        "loadavg_before": before,
        "loadavg_after": after,
        "cache": cache,
    }
    if proc.returncode != 0:
        record["stderr_tail"] = proc.stderr[-2000:]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs.json"))
    parser.add_argument(
        "--run", action="append", choices=sorted(RUNS_BY_NAME), help="repeatable; default: every run"
    )
    parser.add_argument("extra", nargs="*", help="extra arguments appended to every run's command")
    args = parser.parse_args(argv)
    names = args.run or [run.name for run in RUNS]
    records = []
    for name in names:
        record = time_run(RUNS_BY_NAME[name], args.extra)
        print(json.dumps(record, indent=1), flush=True)
        records.append(record)
    args.out.write_text(json.dumps({"runs": records}, indent=1) + "\n")
    return 0 if all(r.get("returncode", 0) == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
