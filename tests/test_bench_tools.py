"""The benchmark tooling: paired-ratio regression check and the performance table (synthetic runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_ratios  # noqa: E402
import make_table  # noqa: E402


def bench(name: str, path: str, t: int, b: int, ratio: float | None, seconds: float, load=(0.4, 0.3, 0.2)) -> dict:
    info = {"path": path, "T": t, "B": b, "device": "cpu", "tokens": t * b, "tokens_per_s_best": t * b / seconds,
            "loadavg_before": list(load), "loadavg_after": [x + 0.1 for x in load]}
    if ratio is not None:
        info["ratio_to_plain_paired_median"] = ratio
    return {"name": name, "fullname": f"benchmarks/test_throughput.py::{name}", "group": f"cpu forward T={t} B={b}",
            "extra_info": info, "stats": {"min": seconds, "median": seconds, "data": [seconds]}}


def run(capture_ratio: float) -> dict:
    rows = []
    for t, b in ((512, 4), (2048, 1), (8192, 1)):
        rows.append(bench(f"test_forward_path[T{t}xB{b}-sdpa]", "sdpa", t, b, None, 3.0))
        rows.append(bench(f"test_forward_path[T{t}xB{b}-capture]", "capture", t, b, capture_ratio, 3.0 * capture_ratio))
    return {"benchmarks": rows, "machine_info": {"cpu_count": 2}, "drope_check": {"shapes": [[512, 4], [2048, 1], [8192, 1]]}}


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
    claims = {"pytest_seconds": 71.5, "summary": "30 passed", "loadavg_before": [1.0, 1, 1],
              "loadavg_after": [2.0, 1, 1], "cache": "warm"}
    text = make_table.render(run(1.4), None, "up 1 day, load average: 0.10", None, None, claims)
    assert "| capture <= 1.3x plain SDPA forward, T = 512 (B = 4) | 1.40x (paired median) | 0.40 / 0.50 | **missed** |" in text
    assert "| capture <= 1.5x plain SDPA forward, T = 8192 (B = 1) | 1.40x (paired median) | 0.40 / 0.50 | **met** |" in text
    assert "README command 1 (`pytest claims/`, embedded pair) <= 60 s of pytest time | 71.5 s" in text
    assert "30x faster than upstream" in text
    assert "load avg (1 min) start / end" in text
