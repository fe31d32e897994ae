"""Share the machine between pytest-xdist workers: as many workers as pairs, cores shared, one GPU each.

``pytest claims/ -n N`` keeps every claim of a pair on one worker (the plugin's scheduler groups
them, under ``--dist load`` and ``loadgroup`` alike), so each pair is measured once; the pairs'
groups are handed out first, one per worker, so two pairs are measured side by side.

* **How many workers.** A claims-only run starts one worker per pair group that has something to do
  here (a pair measured here or judged from a file), at most N (:func:`planned_workers`); with one
  such pair it runs serially instead of paying for workers that would only wait.
* **Threads.** Each torch process starts as many OpenMP threads as there are cores, and N spinning
  pools on the same cores slow every forward several times. A worker starts with
  ``cpu_count // N`` threads (at least 1); while it measures, it holds a share of the cores
  (:class:`CoreShare`): before every forward it takes ``cpu_count // (workers measuring now)``
  threads, so once the other pair is done, the last one measured gets all the cores.
* **GPUs.** Where several CUDA devices are visible, each worker gets its own
  (``CUDA_VISIBLE_DEVICES``), so pairs (and audit variants) spread over the devices, one each:
  ``pytest claims/ -n 8`` on an 8-GPU machine runs up to 8 pairs (or audit variants) at once, one
  GPU each. Where CUDA was initialised in the worker before the variable could act (no NVML, so
  counting the devices started the runtime), the worker pins its device by ordinal instead
  (``torch.cuda.set_device``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: ``workerinput`` key of the folder where measuring workers register (made by the controller).
CORES_DIR_KEY = "drope_cores_dir"


@dataclass(frozen=True)
class WorkerResources:
    """What one xdist worker may use: ``threads`` for torch, ``cuda_device`` (an entry of the visible
    device list) or ``None`` to leave ``CUDA_VISIBLE_DEVICES`` alone."""

    threads: int
    cuda_device: str | None
    #: position of ``cuda_device`` in the visible list: the ordinal to pin when ``CUDA_VISIBLE_DEVICES`` comes too late
    cuda_ordinal: int | None = None


def worker_resources(
    worker_id: str, worker_count: int, cpu_count: int, visible_devices: list[str]
) -> WorkerResources:
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


def make_pair_group_scheduler(config, log, group_of_param: dict[str, str], first: list[str] | None = None):
    """An xdist scheduler that keeps every claim test of a pair on one worker, pairs first.

    Why not just the ``xdist_group`` mark (which the plugin also sets): with pytest >= 9.2 and
    pytest-xdist 3.8 the mark no longer reaches the scheduler (xdist rewrites ``item._nodeid``,
    which pytest's structured node ids ignore; pytest-xdist issue #1386), and every worker then
    measured the pair again (``-n 2`` took 3x the serial time). The controller knows the claim
    ids itself, so it groups by them: a test whose parametrize id is a key of ``group_of_param``
    goes to that group; any other test keeps xdist's own loadgroup scoping (its own scope under
    ``--dist load``, where no ``@group`` suffix is added).

    The groups in ``first`` (the pairs with work here) are queued before every other scope, so
    those pairs go to different workers and are measured side by side; xdist would otherwise queue
    the largest scopes first and could hand two pairs to one worker while another only skips.
    """
    from xdist.scheduler import LoadGroupScheduling

    pair_groups = list(first or ())

    class PairGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            group = group_of_param.get(claim_param_id(nodeid) or "")
            return group if group is not None else super()._split_scope(nodeid)

        def schedule(self) -> None:
            if self.collection is None and not self.workqueue and self.registered_collections:
                collected = next(iter(self.registered_collections.values()))
                present = {self._split_scope(nodeid) for nodeid in collected}
                for group in pair_groups:  # an existing key keeps its place when xdist fills the queue
                    if group in present:
                        self.workqueue[group] = {}
            super().schedule()

    return PairGroupScheduling(config, log)


# ------------------------------------------------------------------------------------------------
# how many workers


def planned_workers(requested: int, pair_groups: int) -> int:
    """Workers worth starting for a claims-only run: one per pair group with work here (a pair
    measured here or judged from a file), at most ``requested``, at least 1 (1 = run serially).
    More workers than pairs would only start, collect and wait: every claim of a pair runs where
    the pair is measured."""
    if requested < 1:
        raise ValueError(f"requested must be >= 1, got {requested}")
    return max(1, min(requested, pair_groups))


def claims_only(args: list[str], invocation_dir: Path, rootpath: Path) -> bool:
    """Whether every path pytest was given lies in ``<rootdir>/claims`` (a claims run; a run that
    also holds unit tests keeps its workers: they have tests of their own to share)."""
    if not args:
        return False
    claims = (rootpath / "claims").resolve()
    for arg in args:
        path = (invocation_dir / arg.split("::", 1)[0]).resolve()
        if path != claims and claims not in path.parents:
            return False
    return True


# ------------------------------------------------------------------------------------------------
# cores shared between the workers that measure


class CoreShare:
    """The cores of the machine, shared by the workers of one run that are measuring right now.

    A measuring worker holds a file ``<folder>/<worker id>`` (its pid inside) for as long as it
    measures; :meth:`threads_now` is ``cpu_count // (live holders)`` (>= 1). Files of processes that
    no longer exist are not counted (a killed worker cannot starve the others)."""

    def __init__(self, folder: str | Path, worker_id: str, cpu_count: int) -> None:
        if cpu_count < 1:
            raise ValueError(f"cpu_count must be >= 1, got {cpu_count}")
        self.folder = Path(folder)
        self.worker_id = worker_id
        self.cpu_count = cpu_count

    def holders(self) -> int:
        """Live workers measuring now (this one included while it holds its share)."""
        count = 0
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return 1
        for entry in entries:
            try:
                pid = int(entry.read_text() or "0")
            except (OSError, ValueError):
                continue
            if _alive(pid):
                count += 1
        return max(1, count)

    def threads_now(self) -> int:
        return max(1, self.cpu_count // self.holders())

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Hold a share of the cores while the block runs (the file is removed also on error)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        mine = self.folder / self.worker_id
        mine.write_text(str(os.getpid()))
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                mine.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_share: CoreShare | None = None


def join_core_share(
    folder: str | Path | None, worker_id: str, cpu_count: int | None = None
) -> CoreShare | None:
    """Make this process (an xdist worker) share the cores with the run's other workers while it
    measures (:func:`measuring`); ``folder`` None leaves it alone (a serial run)."""
    global _share
    _share = None if folder is None else CoreShare(folder, worker_id, cpu_count or os.cpu_count() or 1)
    return _share


def rebalance(share: CoreShare) -> int:
    """Set torch's threads to this worker's share of the cores now; returns the count."""
    import torch

    threads = share.threads_now()
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def measuring(model: Any) -> Iterator[None]:
    """Around the measurement of ``model``: in an xdist worker of a run that shares its cores, hold
    a share and, before every forward pass of the model, take ``cpu_count // (workers measuring
    now)`` threads (called on the thread that runs the forward, where torch's setting applies).
    Elsewhere (a serial run, the controller) nothing changes."""
    share = _share
    if share is None:
        yield
        return
    with share.holding():
        rebalance(share)

        def before_forward(_module: Any, _args: Any) -> None:
            rebalance(share)

        handle = model.register_forward_pre_hook(before_forward)
        try:
            yield
        finally:
            handle.remove()
