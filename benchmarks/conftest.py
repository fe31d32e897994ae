"""Fixtures and machine info for the throughput / memory benchmarks (``tox -e bench``).

Run::

    pytest benchmarks/ -n 0 --benchmark-enable --benchmark-json=bench.json
    python benchmarks/make_table.py bench.json --long-context long_context.json --out docs/performance.md

Without ``--benchmark-enable`` (the project's ``addopts`` disable benchmarks) every benchmark is
skipped, so collecting this folder by mistake costs nothing. Sizes and rounds can be shrunk for a
quick try with environment variables:

* ``DROPE_BENCH_SHAPES``  ``"512x4,2048x1"`` (default): sequence length x batch size per CPU size;
* ``DROPE_BENCH_ROUNDS``  timed rounds per path (default 3; upstream's method always 1);
* ``DROPE_BENCH_MEMORY``  ``0`` skips the peak-memory subprocess probes.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory_probe  # noqa: E402
from memory_probe import bench_rounds, bench_shapes  # noqa: E402


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    import numpy
    import transformers

    machine_info["cpu_model"] = _cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["transformers"] = transformers.__version__
    machine_info["numpy"] = numpy.__version__
    machine_info["thread_env"] = {
        k: os.environ[k]
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        if k in os.environ
    }
    machine_info["loadavg_at_start"] = _LOAD_AT_START
    try:
        with open("/proc/meminfo") as fh:
            machine_info["mem_total_kib"] = int(fh.readline().split()[1])
    except OSError:
        pass
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name(0)
        machine_info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        machine_info["cuda"] = torch.version.cuda
    else:
        machine_info["gpu"] = None


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["drope_check"] = {
        "loadavg_at_start": _LOAD_AT_START,
        "loadavg_at_end": _loadavg(),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "shapes": bench_shapes(),
        "rounds": bench_rounds(),
        "text": _TEXT_LABEL.get("label"),
    }


_LOAD_AT_START = _loadavg()
_TEXT_LABEL: dict[str, str] = {}


def _benchmarks_disabled(config) -> bool:
    session = getattr(config, "_benchmarksession", None)
    if session is not None:  # pytest-benchmark's own verdict (also covers xdist workers)
        return bool(session.disabled or session.skip)
    opt = config.getoption
    if opt("benchmark_enable", default=False):
        return False
    return bool(opt("benchmark_disable", default=False)) or bool(opt("benchmark_skip", default=False))


def pytest_collection_modifyitems(config, items):
    if not _benchmarks_disabled(config):
        return
    here = Path(__file__).resolve().parent
    skip = pytest.mark.skip(
        reason="benchmarks are disabled; run `tox -e bench` or `pytest benchmarks/ -n 0 --benchmark-enable`"
    )
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded():
    """The embedded RoPE model (SmolLM2-135M, fp32, CPU), loaded once."""
    from drope_check.models.availability import pair_available

    ok, why = pair_available(memory_probe.PAIR)
    if not ok:
        pytest.skip(f"embedded pair {memory_probe.PAIR} unavailable: {why}")
    return memory_probe.load_embedded()


@pytest.fixture(scope="session")
def bench_text() -> str:
    text, label = memory_probe.bench_text()
    _TEXT_LABEL["label"] = label
    return text


@pytest.fixture(scope="session")
def bench_batches(embedded, bench_text):
    """``{(T, B): (input_ids, attention_mask)}``: the same real-text batch for every path."""
    out = {}
    for tokens, batch in bench_shapes():
        ids = memory_probe.token_rows(embedded.tokenizer, embedded.bos_token_id, tokens, batch, bench_text)
        out[(tokens, batch)] = (ids, torch.ones_like(ids))
    return out


@pytest.fixture(scope="session")
def plain_times() -> dict:
    """Plain-SDPA round times per shape, filled by the sdpa benchmark, read by the others."""
    return {}
