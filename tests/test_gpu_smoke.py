"""benchmarks/gpu_smoke.py: a smoke check that can fail, and skips cleanly without CUDA.

What is claimed: every step asserts what it measures (a value against a stated bound); a missed bound,
an error, or a step that did not run (time budget spent, bitsandbytes unavailable) is one line on stdout
and exit status 1, unless ``--allow-skip`` accepts the skips; without CUDA the script says so and exits 0.
Both shortfalls are forced here on the CPU-simulated steps (``--simulate-cpu``: the same steps on tiny
shapes), and the full simulated run passes every step a CPU can run (so the first GPU run spends its
minutes measuring, not on a typo).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_smoke  # noqa: E402

FOUR_BIT_STEPS = {"nf4_double_rope", "nf4_double_drope", "fp4_drope"}


@pytest.fixture(autouse=True)
def cpu_device(monkeypatch):
    """The runner's own tests run on CPU; main() sets the module's DEVICE itself (put back after each test)."""
    monkeypatch.setattr(gpu_smoke, "DEVICE", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_smoke.py", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.strip()
        == "gpu_smoke: SKIPPED, nothing measured: no CUDA device (torch.cuda.is_available() is False)"
    )
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# the runner: checks, statuses, one line per shortfall


def test_checks_hold_values_to_their_bounds():
    assert gpu_smoke.Check("err", 5e-5, 1e-4).ok
    assert not gpu_smoke.Check("err", 2e-4, 1e-4).ok
    assert not gpu_smoke.Check("err", math.nan, 1e-4).ok  # a NaN never meets a bound
    assert gpu_smoke.Check("n", 3, 1, ">=").ok and not gpu_smoke.Check("n", 0, 1, ">=").ok
    assert (
        gpu_smoke.Check("same", [0.0625], [0.0625], "==").ok
        and not gpu_smoke.Check("same", True, False, "==").ok
    )
    assert gpu_smoke.Check("err", 2e-4, 1e-4).text() == "err = 0.0002 (must be <= 0.0001)"


def fake_steps() -> list:
    def good(data):
        data.check("error", 1e-6, 1e-4)

    def misses(data):
        data["measured"] = 0.5
        data.check("kernel_lse_max_rel_error", 3e-4, 1e-4)
        data.check("bit identical", True, True, "==")

    def broken(_data):
        raise RuntimeError("CUDA out of memory")

    def cannot(_data):
        raise gpu_smoke.StepSkipped("bitsandbytes is not installed")

    return [("good", good), ("misses", misses), ("broken", broken), ("cannot", cannot)]


def test_a_missed_bound_an_error_and_a_skip_are_each_one_line():
    steps: dict = {}
    gpu_smoke.run_steps(fake_steps(), deadline=float("inf"), report=steps)
    assert [steps[n]["status"] for n in ("good", "misses", "broken", "cannot")] == [
        "pass",
        "fail",
        "error",
        "skipped",
    ]
    assert steps["misses"]["values"] == {"measured": 0.5}
    assert gpu_smoke.shortfalls(steps) == [
        "FAIL misses: kernel_lse_max_rel_error = 0.0003 (must be <= 0.0001)",
        "ERROR broken: RuntimeError: CUDA out of memory",
        "SKIPPED cannot: bitsandbytes is not installed (--allow-skip accepts a skipped step)",
    ]
    assert gpu_smoke.shortfalls(steps, allow_skip=True) == gpu_smoke.shortfalls(steps)[:2]


def test_once_the_budget_is_spent_every_later_step_is_skipped():
    steps: dict = {}
    gpu_smoke.run_steps(fake_steps(), deadline=0.0, report=steps)  # time.monotonic() is always past 0
    assert {e["status"] for e in steps.values()} == {"skipped"}
    lines = gpu_smoke.shortfalls(steps)
    assert len(lines) == 4 and all("time budget (--budget-s) was spent" in line for line in lines)
    assert gpu_smoke.shortfalls(steps, allow_skip=True) == []


def test_step_prerequisites():
    assert gpu_smoke.with_prerequisites(["float64_fallback"]) == {
        "float64_fallback",
        "drope_bf16",
        "write_checkpoints",
        "rope_bf16",
    }
    assert gpu_smoke.with_prerequisites(["kernel"]) == {"kernel"}


# --------------------------------------------------------------------------------------------------
# the script on CPU-simulated steps: both shortfalls forced, and a clean run


def run(capsys, tmp_path, *argv: str) -> tuple[int, list[str], dict]:
    out = tmp_path / "smoke.json"
    rc = gpu_smoke.main(["--simulate-cpu", "--out", str(out), *argv])
    lines = capsys.readouterr().out.strip().splitlines()
    return rc, lines, json.loads(out.read_text())


def test_a_step_skipped_for_time_fails_unless_allowed(capsys, tmp_path):
    rc, lines, report = run(capsys, tmp_path, "--budget-s", "0", "--steps", "kernel")
    assert rc == 1
    assert lines[0] == (
        "gpu_smoke: SKIPPED kernel: the time budget (--budget-s) was spent before it started "
        "(--allow-skip accepts a skipped step)"
    )
    assert report["steps"]["kernel"]["status"] == "skipped"
    rc, lines, _ = run(capsys, tmp_path, "--budget-s", "0", "--steps", "kernel", "--allow-skip")
    assert rc == 0 and lines == [lines[-1]] and "0 of 1 step(s) passed" in lines[-1]


def test_a_simulated_step_missing_its_bound_fails(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_smoke, "KERNEL_LSE_BOUND", 1e-9)  # no kernel is that exact: every case misses
    rc, lines, report = run(capsys, tmp_path, "--steps", "kernel")
    assert rc == 1
    assert lines[0].startswith("gpu_smoke: FAIL kernel: bfloat16: kernel_lse_max_rel_error = ")
    assert "(must be <= 1e-09)" in lines[0]
    assert report["steps"]["kernel"]["status"] == "fail"
    assert report["shortfalls"] == [line.removeprefix("gpu_smoke: ") for line in lines[:-1]]


def test_every_step_a_cpu_can_run_passes_when_simulated(capsys, tmp_path):
    rc, lines, report = run(capsys, tmp_path, "--allow-skip")
    steps = report["steps"]
    assert rc == 0, lines
    assert {n for n, e in steps.items() if e["status"] == "skipped"} == FOUR_BIT_STEPS
    for name in FOUR_BIT_STEPS:
        assert steps[name]["reason"] == "bitsandbytes 4-bit needs CUDA (simulated on CPU)"
    passed = {n for n, e in steps.items() if e["status"] == "pass"}
    assert passed == {
        "kernel",
        "rope_bf16",
        "float32_vs_float64",
        "write_checkpoints",
        "drope_bf16",
        "float64_fallback",
        "device_map",
    }
    for name in passed:
        assert steps[name]["checks"], f"step {name} asserted nothing"
    checks = {c["name"]: c for e in steps.values() for c in e["checks"]}
    assert checks["layers computed in float64 (layer 1 only)"]["value"] == 1
    assert checks["provenance softmax_scale"]["value"] == gpu_smoke.SOFTMAX_SCALE
    assert checks["float32: kernel output bit-identical to SDPA's"]["ok"]
    # without --allow-skip, the same run is three shortfalls: the 4-bit steps did not run
    assert [line.split(":")[0] for line in gpu_smoke.shortfalls(steps)] == [
        "SKIPPED nf4_double_rope",
        "SKIPPED nf4_double_drope",
        "SKIPPED fp4_drope",
    ]
