"""xdist workers share the machine: threads split, one GPU each (drope_check.workers)."""

from __future__ import annotations

import os

import pytest

from drope_check.workers import worker_resources


def test_threads_split_between_workers():
    assert worker_resources("gw0", 2, 2, []).threads == 1
    assert worker_resources("gw1", 2, 16, []).threads == 8
    assert worker_resources("gw3", 8, 2, []).threads == 1  # never 0
    assert worker_resources("gw0", 1, 4, []).threads == 4


def test_one_device_each_when_several_are_visible():
    devices = ["0", "1", "2", "3"]
    got = [worker_resources(f"gw{k}", 6, 16, devices).cuda_device for k in range(6)]
    assert got == ["0", "1", "2", "3", "0", "1"]
    assert worker_resources("gw1", 2, 16, ["5", "7"]).cuda_device == "7"  # entries of the visible list
    assert worker_resources("gw1", 2, 16, ["0"]).cuda_device is None  # one device: leave it alone
    assert worker_resources("gw1", 2, 16, []).cuda_device is None


@pytest.mark.parametrize(("count_after", "pinned"), [(1, []), (4, [2])])
def test_a_worker_pins_its_own_gpu(monkeypatch, count_after, pinned):
    """Worker gw2 of 4 on a 4-GPU machine: CUDA_VISIBLE_DEVICES names its GPU; if the runtime still shows four
    devices afterwards (it started before the variable could act), the worker pins its ordinal instead."""
    import torch

    from drope_check.workers import apply_to_this_worker

    calls: list[int] = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count_after)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    threads = torch.get_num_threads()
    try:
        resources = apply_to_this_worker("gw2", 4)
    finally:
        torch.set_num_threads(threads)
    assert resources.cuda_device == "6" and resources.cuda_ordinal == 2
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    assert calls == pinned


def test_bad_worker_count():
    with pytest.raises(ValueError, match="worker_count"):
        worker_resources("gw0", 0, 2, [])


def test_claim_param_id_with_and_without_group_suffix():
    from drope_check.workers import claim_param_id

    node = "claims/test_sink_claims.py::test_sink[sink_rate_average[toy:rope]]"
    assert claim_param_id(node) == "sink_rate_average[toy:rope]"
    assert claim_param_id(node + "@drope-toy") == "sink_rate_average[toy:rope]"
    assert claim_param_id("claims/test_method_claim.py::test_manual_projection_attention_fails_for_rope") is None


# the claim-family files (the method claim's own tests load models and are not claims of a pair)
CLAIM_FILES = [f"claims/test_{f}_claims.py" for f in ("intervention", "perplexity", "phase", "sink")]


def test_parallel_run_keeps_every_claim_of_a_pair_on_one_worker():
    """``-n 2 --dist loadgroup`` on judged measurements (no model): each pair's claims run on one
    worker, so a measuring run measures each pair once. Fails on pytest 9.2 + xdist 3.8 with the
    xdist_group mark alone (pytest-xdist issue #1386)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *CLAIM_FILES, "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
         "--expected-dir", "tests/data/expected", "--measurements", "tests/data/toy-measurements.json"],
        cwd=root, capture_output=True, text=True, timeout=600,
    ).stdout
    workers = set(re.findall(r"\[(gw\d+)\] \[\s*\d+%\] \w+ claims/\S+\[[^\s]*\[toy:", out))
    assert "PairGroupScheduling" in out
    assert len(workers) == 1, out[-3000:]
