"""Flag regressions of the paired ratios between two benchmark runs (pytest-benchmark JSON).

    python benchmarks/compare_ratios.py benchmarks/baseline_bench.json bench.json [--max-regression 0.2]

Absolute timings move with the machine and its load; the ratio of a path to the plain forward run
right before it (``extra_info.ratio_to_plain_paired_median``) does not, so that is what is
compared: a benchmark whose ratio grew by more than ``--max-regression`` (20%) of the baseline's
is reported and the exit status is 1. For throughput ratios where larger is better (none yet) the
comparison would be inverted. Benchmarks present in only one file are listed, not failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RATIO_KEY = "ratio_to_plain_paired_median"


def paired_ratios(data: dict) -> dict[str, float]:
    """``{benchmark name: paired ratio}`` of every benchmark that has one."""
    out = {}
    for bench in data.get("benchmarks", []):
        ratio = bench.get("extra_info", {}).get(RATIO_KEY)
        if isinstance(ratio, (int, float)):
            out[bench.get("fullname") or bench["name"]] = float(ratio)
    return out


def regressions(baseline: dict, current: dict, max_regression: float = 0.2) -> tuple[list[str], list[str]]:
    """(regression lines, notes about benchmarks in one file only)."""
    old, new = paired_ratios(baseline), paired_ratios(current)
    bad = [
        f"{name}: paired ratio {old[name]:.3f} -> {new[name]:.3f} (+{(new[name] / old[name] - 1) * 100:.0f}%)"
        for name in sorted(old.keys() & new.keys())
        if new[name] > old[name] * (1 + max_regression)
    ]
    notes = [f"only in baseline: {n}" for n in sorted(old.keys() - new.keys())]
    notes += [f"new: {n}" for n in sorted(new.keys() - old.keys())]
    return bad, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("current", type=Path)
    parser.add_argument(
        "--max-regression", type=float, default=0.2, help="allowed relative growth of a ratio"
    )
    args = parser.parse_args(argv)
    try:
        baseline, current = (json.loads(p.read_text()) for p in (args.baseline, args.current))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"compare_ratios: cannot read the benchmark JSON: {exc}", file=sys.stderr)
        return 2
    bad, notes = regressions(baseline, current, args.max_regression)
    for line in notes:
        print(line)
    for line in bad:
        print(f"REGRESSION {line}")
    print(f"compare_ratios: {len(bad)} paired ratio(s) regressed by more than {args.max_regression:.0%}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
