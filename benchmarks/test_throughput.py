"""Throughput and peak-memory benchmarks of the measurement paths (issue 5).

CPU, embedded SmolLM2-135M (fp32), on the same batch of real WikiText-2 tokens at T = 512 (4 rows)
and T = 2048 (1 row): plain SDPA forward, the forward through drope_check's attention with
nothing registered, the one-pass capture, ``output_attentions=True`` eager, and upstream's
per-layer method (see ``memory_probe.py`` for each path's code). Perplexity evaluation: the
``lines`` protocol batched and at batch size 1 against a plain batched forward. Peak memory of
every path in a fresh subprocess. GPU (only with CUDA): the same paths at T = 4096 on a
Llama-2-7B-shaped bf16 model with random weights.

Every non-plain path is timed with a plain SDPA forward run untimed right before each of its rounds
(pytest-benchmark's ``setup``), so each path has a *paired* ratio to the plain forward measured
under the same momentary machine load; ``extra_info`` records tokens/s, the paired plain times and
the ratios. ``benchmarks/make_table.py`` turns the JSON into ``docs/performance.md``.
"""

from __future__ import annotations

import os
import statistics
import time

import memory_probe
import pytest
import torch
from memory_probe import (
    PATHS,
    bench_rounds,
    bench_shapes,
    bench_warmup,
    memory_enabled,
    run_path,
    runs_at,
    synchronize,
)

pytestmark = pytest.mark.bench

CPU_CASES = [(t, b, path) for t, b in bench_shapes() for path in PATHS if runs_at(path, t)]
#: From this T on, each CPU path gets one timed round (T = 8192: ~70 s per plain forward on 2 cores).
LONG_T = 8192
PPL_VARIANTS = ("plain_batched", "lines_batched", "lines_bs1")
PPL_BATCH = 4
GPU_TOKENS = 4096

#: Peak-memory probes at the benchmark shapes: (T, B, path). The long-context series (T up to
#: 8192, and output_attentions at T = 4096, which needs ~18 GB for the full model) is
#: ``benchmarks/long_context.py``. Upstream's method is probed on its first 2 per-layer passes:
#: every pass is one full forward plus one [B, H, T, T] matrix, so all passes have the same peak.
MEMORY_CASES = [(t, b, path) for t, b in bench_shapes() for path in PATHS if runs_at(path, t)]
UPSTREAM_MEMORY_PASSES = 2


def _case_id(case) -> str:
    t, b, path = case
    return f"T{t}xB{b}-{path}"


def _round_times(benchmark) -> list[float]:
    return list(benchmark.stats.stats.data)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _record(benchmark, tokens: int, plain: list[float] | None, reference: dict | None = None) -> None:
    """tokens/s, ratios to the plain forward and the machine load (1/5/15-min averages, at the
    test's start and end: the machine may be shared) into ``extra_info``."""
    times = _round_times(benchmark)
    info = benchmark.extra_info
    info["loadavg_after"] = _loadavg()
    info["tokens"] = tokens
    info["round_s"] = [round(t, 4) for t in times]
    info["tokens_per_s_best"] = tokens / min(times)
    info["tokens_per_s_median"] = tokens / statistics.median(times)
    if plain:
        plain = plain[-len(times) :]  # drop the warm-up rounds' plain forwards
        info["paired_plain_s"] = [round(t, 4) for t in plain]
        per_round = [t / p for t, p in zip(times, plain, strict=True)]
        info["ratio_to_plain_paired_median"] = statistics.median(per_round)
        info["ratio_to_plain_paired_best"] = min(times) / min(plain)
    if reference:
        info["ratio_to_plain_session_best"] = min(times) / reference["best"]


# ------------------------------------------------------------------------------------------------
# CPU forward paths


@pytest.mark.parametrize("case", CPU_CASES, ids=_case_id)
def test_forward_path(benchmark, embedded, bench_batches, plain_times, case):
    tokens, batch, path = case
    ids, mask = bench_batches[(tokens, batch)]
    benchmark.group = f"cpu forward T={tokens} B={batch}"
    benchmark.extra_info.update(path=path, T=tokens, B=batch, device="cpu", loadavg_before=_loadavg())
    long = tokens >= LONG_T  # minutes per forward on 2 cores: one timed round, no warm-up
    if path == "sdpa":
        benchmark.pedantic(
            run_path,
            args=(path, embedded, ids, mask),
            rounds=1 if long else bench_rounds(),
            warmup_rounds=0 if long else bench_warmup(),
        )
        times = _round_times(benchmark)
        plain_times[(tokens, batch)] = {"best": min(times), "median": statistics.median(times)}
        _record(benchmark, tokens * batch, None)
        return

    plain: list[float] = []

    def paired_plain():
        start = time.perf_counter()
        run_path("sdpa", embedded, ids, mask)
        plain.append(time.perf_counter() - start)

    slow = path == "upstream" or long  # upstream: L full forwards per round
    benchmark.pedantic(
        run_path,
        args=(path, embedded, ids, mask),
        setup=paired_plain,
        rounds=1 if slow else bench_rounds(),
        warmup_rounds=0 if slow else bench_warmup(),
    )
    _record(benchmark, tokens * batch, plain, plain_times.get((tokens, batch)))


# ------------------------------------------------------------------------------------------------
# perplexity evaluation


@pytest.fixture(scope="module")
def ppl_seqs(embedded):
    """Upstream's perplexity texts: the first 20 WikiText-2 test rows > 100 characters, BOS + 511."""
    from drope_check.engine.batching import tokenize_with_bos
    from drope_check.engine.texts import wikitext_lines

    path = memory_probe.wikitext_file()
    texts = wikitext_lines(n=20, min_chars=100, path=path, allow_fallback=True)
    return tokenize_with_bos(embedded.tokenizer, list(texts.texts), embedded.bos_token_id, 512)


def _plain_batched(model, seqs, pad_id):
    from drope_check.engine.batching import make_batches

    for batch in make_batches(seqs, PPL_BATCH, pad_id):
        memory_probe.forward(model, batch.input_ids, batch.attention_mask).logits  # noqa: B018


@pytest.mark.parametrize("variant", PPL_VARIANTS)
def test_perplexity(benchmark, embedded, ppl_seqs, variant):
    from drope_check.engine.perplexity import perplexity_lines

    model, pad = embedded.model, embedded.pad_token_id
    n_tokens = sum(len(s) for s in ppl_seqs)
    benchmark.group = "cpu perplexity (lines protocol, 20 WikiText-2 rows)"
    benchmark.extra_info.update(path=f"ppl_{variant}", n_sequences=len(ppl_seqs), device="cpu")
    if variant == "plain_batched":
        benchmark.pedantic(
            _plain_batched, args=(model, ppl_seqs, pad), rounds=bench_rounds(), warmup_rounds=bench_warmup()
        )
        _record(benchmark, n_tokens, None)
        return
    plain: list[float] = []

    def paired_plain():
        start = time.perf_counter()
        _plain_batched(model, ppl_seqs, pad)
        plain.append(time.perf_counter() - start)

    batch_size = PPL_BATCH if variant == "lines_batched" else 1
    benchmark.extra_info["batch_size"] = batch_size
    benchmark.pedantic(
        perplexity_lines,
        args=(model, ppl_seqs, pad, batch_size),
        setup=paired_plain,
        rounds=bench_rounds(),
        warmup_rounds=bench_warmup(),
    )
    _record(benchmark, n_tokens, plain)


# ------------------------------------------------------------------------------------------------
# CPU peak memory (fresh subprocess per path)


@pytest.mark.parametrize("case", MEMORY_CASES, ids=_case_id)
def test_peak_memory(benchmark, embedded, case):
    """RSS high-water mark above the pre-path RSS, in a fresh process. The benchmark time is the
    subprocess's wall time (model load included): not a throughput."""
    if not memory_enabled():
        pytest.skip("DROPE_BENCH_MEMORY=0")
    tokens, batch, path = case
    benchmark.group = "cpu peak memory (subprocess wall time, not a throughput)"
    passes = UPSTREAM_MEMORY_PASSES if path == "upstream" else None
    result = benchmark.pedantic(
        memory_probe.probe_subprocess,
        args=(path, tokens, batch),
        kwargs={"upstream_passes": passes},
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(result)
    benchmark.extra_info.update(memory=True, T=tokens, B=batch)


# ------------------------------------------------------------------------------------------------
# GPU: Llama-2-7B-shaped, bf16, random weights, T = 4096

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: GPU benchmarks need one"
)


@pytest.fixture(scope="module")
def gpu_model():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = memory_probe.llama2_7b_shaped("cuda", torch.bfloat16)
    yield model
    del model
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def gpu_batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (1, GPU_TOKENS), generator=gen)
    ids[:, 0] = 1  # <s>
    return ids.cuda(), torch.ones_like(ids).cuda()


@pytest.fixture(scope="module")
def gpu_plain_times() -> dict:
    return {}


def _gpu_run(path, model, ids, mask):
    out = run_path(path, None, ids, mask, model=model)
    synchronize(ids.device)
    return out


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("path", PATHS)
def test_gpu_forward_path(benchmark, gpu_model, gpu_batch, gpu_plain_times, path):
    ids, mask = gpu_batch
    benchmark.group = f"gpu forward T={GPU_TOKENS} B=1 (Llama-2-7B shape, bf16, random weights)"
    benchmark.extra_info.update(path=path, T=GPU_TOKENS, B=1, device=torch.cuda.get_device_name(0))
    tokens = ids.numel()
    if path == "sdpa":
        benchmark.pedantic(_gpu_run, args=(path, gpu_model, ids, mask), rounds=5, warmup_rounds=2)
        times = _round_times(benchmark)
        gpu_plain_times["ref"] = {"best": min(times), "median": statistics.median(times)}
        _record(benchmark, tokens, None)
        return
    plain: list[float] = []

    def paired_plain():
        synchronize(ids.device)
        start = time.perf_counter()
        _gpu_run("sdpa", gpu_model, ids, mask)
        plain.append(time.perf_counter() - start)

    slow = path == "upstream"
    benchmark.pedantic(
        _gpu_run,
        args=(path, gpu_model, ids, mask),
        setup=paired_plain,
        rounds=1 if slow else 5,
        warmup_rounds=1 if slow else 2,
    )
    _record(benchmark, tokens, plain, gpu_plain_times.get("ref"))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("path", PATHS)
def test_gpu_peak_memory(benchmark, gpu_model, gpu_batch, path):
    """``torch.cuda.max_memory_allocated`` above the allocation before the path (weights excluded)."""
    ids, mask = gpu_batch
    dev = ids.device
    benchmark.group = "gpu peak memory (time of the measured run)"

    def measure():
        out = None
        torch.cuda.empty_cache()
        synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        out = _gpu_run(path, gpu_model, ids, mask)
        peak = torch.cuda.max_memory_allocated(dev)
        del out
        return base, peak

    base, peak = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(
        memory=True,
        path=path,
        T=GPU_TOKENS,
        B=1,
        device=torch.cuda.get_device_name(0),
        method="cuda.max_memory_allocated",
        baseline_bytes=base,
        peak_bytes=peak,
        delta_bytes=peak - base,
    )
