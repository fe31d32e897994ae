"""xdist workers share the machine: one per pair, cores shared while measuring, one GPU each (drope_check.engine.workers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from drope_check.engine.workers import CoreShare, claims_only, planned_workers, worker_resources


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

    from drope_check.engine.workers import apply_to_this_worker

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
    from drope_check.engine.workers import claim_param_id

    node = "claims/test_sink_claims.py::test_sink[sink_rate_average[toy:rope]]"
    assert claim_param_id(node) == "sink_rate_average[toy:rope]"
    assert claim_param_id(node + "@drope-toy") == "sink_rate_average[toy:rope]"
    assert (
        claim_param_id("claims/test_method_claim.py::test_manual_projection_attention_fails_for_rope") is None
    )


# the claim-family files (the method claim's own tests load models and are not claims of a pair)
CLAIM_FILES = [f"claims/test_{f}_claims.py" for f in ("intervention", "perplexity", "phase", "sink")]
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def run_claims(tmp_path: Path, pairs: tuple[str, ...], *args: str) -> str:
    """``pytest <claim files> --measurements ...`` on the toy pairs (toy2 = toy's claims under another
    name), no model anywhere; returns stdout."""
    expected = tmp_path / "expected"
    expected.mkdir(exist_ok=True)
    toy = (DATA / "expected" / "toy.toml").read_text()
    files = []
    for pair in pairs:
        (expected / f"{pair}.toml").write_text(toy.replace('name = "toy"', f'name = "{pair}"'))
        files += ["--measurements", str(DATA / f"{pair}-measurements.json")]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *CLAIM_FILES,
            *args,
            "-v",
            "-p",
            "no:cacheprovider",
            "--expected-dir",
            str(expected),
            *files,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout


def workers_of(out: str, pair: str) -> set[str]:
    return set(re.findall(rf"\[(gw\d+)\] \[\s*\d+%\] \w+ claims/\S+\[[^\s]*\[{pair}:", out))


@pytest.mark.parametrize("dist", [("--dist", "loadgroup"), ()], ids=["loadgroup", "plain-n"])
def test_parallel_run_keeps_every_claim_of_a_pair_on_one_worker(tmp_path, dist):
    """``-n 2`` (``--dist loadgroup`` or xdist's default ``load``) on two judged pairs (no model):
    each pair's claims run on one worker, so a measuring run measures each pair once, and the two
    pairs on different workers (queued first). Fails on pytest 9.2 + xdist 3.8 with the xdist_group
    mark alone (pytest-xdist issue #1386)."""
    out = run_claims(tmp_path, ("toy", "toy2"), "-n", "2", *dist)
    assert "PairGroupScheduling" in out, out[-3000:]
    toy, toy2 = workers_of(out, "toy"), workers_of(out, "toy2")
    assert len(toy) == 1 and len(toy2) == 1 and toy != toy2, out[-3000:]


def test_one_pair_runs_serially_instead_of_starting_workers(tmp_path):
    """``-n 2`` with one pair to judge: the same outcomes as serially, no worker started, and the
    header says why."""
    out = run_claims(tmp_path, ("toy",), "-n", "2")
    assert "running serially instead of 2" in out, out[-3000:]
    assert "[gw0]" not in out and "PairGroupScheduling" not in out
    assert "3 failed, 7 passed, 2 skipped, 1 xfailed" in out


def test_planned_workers_one_per_pair_with_work():
    assert planned_workers(2, 1) == 1
    assert planned_workers(2, 0) == 1  # nothing to measure: serial
    assert planned_workers(2, 2) == 2
    assert planned_workers(8, 3) == 3
    assert planned_workers(2, 5) == 2
    with pytest.raises(ValueError, match="requested"):
        planned_workers(0, 2)


def test_claims_only_sees_the_paths_given(tmp_path):
    root = tmp_path
    (root / "claims").mkdir()
    assert claims_only(["claims"], root, root)
    assert claims_only(
        ["claims/test_sink_claims.py::test_sink[x]", "claims/test_phase_claims.py"], root, root
    )
    assert claims_only(["test_sink_claims.py"], root / "claims", root)  # relative to where pytest ran
    assert not claims_only(["claims", "tests"], root, root)
    assert not claims_only([], root, root)  # testpaths: tests and claims
    assert not claims_only(["claims_extra/test_x.py"], root, root)


def test_core_share_gives_each_measuring_worker_its_part(tmp_path):
    a = CoreShare(tmp_path / "cores", "gw0", cpu_count=4)
    b = CoreShare(tmp_path / "cores", "gw1", cpu_count=4)
    assert a.threads_now() == 4  # nobody measuring yet
    with a.holding():
        assert a.threads_now() == 4
        with b.holding():
            assert a.threads_now() == b.threads_now() == 2
        assert a.threads_now() == 4  # the other pair is done: all cores
    assert not list((tmp_path / "cores").iterdir())
    (tmp_path / "cores" / "gw7").write_text("999999999")  # a worker that died without cleaning up
    with a.holding():
        assert a.threads_now() == 4
    assert CoreShare(tmp_path / "x", "gw0", cpu_count=1).threads_now() == 1
    with pytest.raises(ValueError, match="cpu_count"):
        CoreShare(tmp_path, "gw0", cpu_count=0)


def test_measuring_sets_threads_before_every_forward_and_removes_its_hook(tmp_path):
    """In a worker that shares cores, each forward of the measured model runs with the share of the
    moment: all cores alone, half once another worker measures. Elsewhere nothing changes."""
    import torch

    from drope_check.engine import workers

    model = torch.nn.Linear(2, 2)
    seen: list[int] = []
    model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        with workers.measuring(model):  # not a worker: untouched
            model(torch.ones(1, 2))
        assert seen == [before]
        share = workers.join_core_share(tmp_path / "cores", "gw0", cpu_count=2)
        other = CoreShare(tmp_path / "cores", "gw1", cpu_count=2)
        with workers.measuring(model):
            model(torch.ones(1, 2))
            with other.holding():
                model(torch.ones(1, 2))
            model(torch.ones(1, 2))
        assert seen[1:] == [2, 1, 2]
        assert share.holders() == 1 and not model._forward_pre_hooks
    finally:
        workers.join_core_share(None, "gw0")
        torch.set_num_threads(before)
