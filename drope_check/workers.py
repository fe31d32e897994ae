"""Share the machine between pytest-xdist workers: CPU threads split, one GPU each.

``pytest claims/ -n N --dist loadgroup`` keeps every claim of a pair on one worker (the plugin
marks them ``xdist_group("drope-<pair>")``), so each pair is measured once. What made a parallel
run slower than a serial one is the workers' thread pools: each torch process starts as many
OpenMP threads as there are cores, and N spinning pools on the same cores slow every forward
several times. Each worker therefore gets ``cpu_count // N`` threads (at least 1) and, where
several CUDA devices are visible, its own device (``CUDA_VISIBLE_DEVICES``), so pairs (and audit
variants) spread over the devices, one device each: ``pytest claims/ -n 8 --dist loadgroup`` on an
8-GPU machine runs up to 8 pairs (or audit variants) at once, one GPU each. Where CUDA was initialised
in the worker before the variable could act (no NVML, so counting the devices started the runtime),
the worker pins its device by ordinal instead (``torch.cuda.set_device``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerResources:
    """What one xdist worker may use: ``threads`` for torch, ``cuda_device`` (an entry of the visible
    device list) or ``None`` to leave ``CUDA_VISIBLE_DEVICES`` alone."""

    threads: int
    cuda_device: str | None
    #: position of ``cuda_device`` in the visible list: the ordinal to pin when ``CUDA_VISIBLE_DEVICES`` comes too late
    cuda_ordinal: int | None = None


def worker_resources(worker_id: str, worker_count: int, cpu_count: int, visible_devices: list[str]) -> WorkerResources:
    """Resources of worker ``gw<k>`` among ``worker_count``: ``cpu_count // worker_count`` threads
    (>= 1) and device ``visible_devices[k % len]`` when more than one device is visible."""
    if worker_count < 1:
        raise ValueError(f"worker_count must be >= 1, got {worker_count}")
    index = int(worker_id.removeprefix("gw")) if worker_id.startswith("gw") and worker_id[2:].isdigit() else 0
    threads = max(1, cpu_count // worker_count)
    if len(visible_devices) > 1:
        ordinal = index % len(visible_devices)
        return WorkerResources(threads=threads, cuda_device=visible_devices[ordinal], cuda_ordinal=ordinal)
    return WorkerResources(threads=threads, cuda_device=None)


def _visible_devices() -> list[str]:
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]  # NVML count: no CUDA context yet
    except Exception:  # noqa: BLE001 - no torch / driver: no device to hand out
        return []


def apply_to_this_worker(worker_id: str, worker_count: int) -> WorkerResources:
    """Set torch's threads and ``CUDA_VISIBLE_DEVICES`` for this worker (call before any model loads)."""
    resources = worker_resources(worker_id, worker_count, os.cpu_count() or 1, _visible_devices())
    import torch

    if resources.cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = resources.cuda_device
        # NVML reads the variable; without NVML, counting the devices started the CUDA runtime, which then keeps
        # every device: this worker still sees several, so it pins its own by ordinal ("cuda" = that device)
        if torch.cuda.device_count() > 1 and resources.cuda_ordinal is not None:
            torch.cuda.set_device(resources.cuda_ordinal)
    torch.set_num_threads(resources.threads)
    return resources


def claim_param_id(nodeid: str) -> str | None:
    """The parametrize id of a test node id (``claims/test_sink_claims.py::test_sink[<id>]`` ->
    ``<id>``), ignoring a ``@group`` suffix older xdist versions append; ``None`` if it has none."""
    if "@" in nodeid and nodeid.rfind("@") > nodeid.rfind("]"):
        nodeid = nodeid[: nodeid.rfind("@")]
    name = nodeid.rsplit("::", 1)[-1]
    if "[" not in name or not name.endswith("]"):
        return None
    return name[name.index("[") + 1 : -1]


def make_pair_group_scheduler(config, log, group_of_param: dict[str, str]):
    """An xdist ``loadgroup`` scheduler that keeps every claim test of a pair on one worker.

    Why not just the ``xdist_group`` mark (which the plugin also sets): with pytest >= 9.2 and
    pytest-xdist 3.8 the mark no longer reaches the scheduler (xdist rewrites ``item._nodeid``,
    which pytest's structured node ids ignore; pytest-xdist issue #1386), and every worker then
    measured the pair again (``-n 2`` took 3x the serial time). The controller knows the claim
    ids itself, so it groups by them: a test whose parametrize id is a key of ``group_of_param``
    goes to that group; any other test keeps xdist's own loadgroup scoping.
    """
    from xdist.scheduler import LoadGroupScheduling

    class PairGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            group = group_of_param.get(claim_param_id(nodeid) or "")
            return group if group is not None else super()._split_scope(nodeid)

    return PairGroupScheduling(config, log)
