"""The benchmark paths, and a peak-memory probe that runs one of them in a fresh process.

Every path timed by ``benchmarks/test_throughput.py`` is defined here once, so the code whose time
is measured is the code whose memory is measured:

* ``sdpa``        plain forward, ``attn_implementation="sdpa"``;
* ``drope_attn``  plain forward through drope_check's attention function, nothing registered;
* ``capture``     the one-pass capture (``OnePassCapture(...).batch(rows)`` around the forward;
                  default ``Protocol()``, i.e. ``stats_dtype="auto"``);
* ``eager_attn``  ``attn_implementation="eager"`` with ``output_attentions=True`` (every layer's
                  [B, H, T, T] map kept alive until the forward returns);
* ``upstream``    upstream's sink measurement: for every layer L one full forward with hooks on
                  layer L's ``q_proj`` / ``k_proj``, then a float32 ``softmax(q k^T / sqrt(d))``
                  with a causal mask over the raw projections (no rotary), the full [B, H, T, T]
                  matrix, from which the per-head attention to position 0 is read.

Peak memory on CPU is the RSS high-water mark above the RSS just before the path runs, in a fresh
process that has loaded the model (tracemalloc does not see torch's allocations). The kernel's
high-water mark is reset through ``/proc/self/clear_refs`` (``echo 5``) after the baseline is taken;
where that is not allowed the probe falls back to ``ru_maxrss`` and says so (``method``). On CUDA
it is ``torch.cuda.max_memory_allocated()`` above ``memory_allocated()`` before the path.

As a script it prints one JSON line::

    python benchmarks/memory_probe.py --path capture --tokens 2048 --batch 1
    python benchmarks/memory_probe.py --path eager_attn --tokens 4096 --layers 4   # first 4 layers only
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the text fallback must not wait ~25 s for the hub

import torch  # noqa: E402

PATHS: tuple[str, ...] = ("sdpa", "drope_attn", "capture", "eager_attn", "upstream")
#: The decoder stack without the LM head (no [B, T, vocab] logits): the peak then falls inside the
#: layers, where the capture's own buffers live (long-context memory series only).
BODY_PATHS: tuple[str, ...] = ("sdpa_body", "capture_body")
PAIR = "smollm2-135m"
SHARED_WIKITEXT = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-raw/wiki.test.raw"


# ------------------------------------------------------------------------------------------------
# benchmark configuration (environment)


def bench_shapes() -> list[tuple[int, int]]:
    spec = os.environ.get("DROPE_BENCH_SHAPES", "512x4,2048x1,8192x1")
    shapes = []
    for part in spec.split(","):
        t, _, b = part.strip().partition("x")
        shapes.append((int(t), int(b or 1)))
    return shapes


#: Longest T at which the quadratic paths run in the timed benchmarks: ``output_attentions`` keeps
#: 30 x 9 x T^2 float32 maps (72 GB at T = 8192) and upstream's method is 30 full forwards.
QUADRATIC_PATHS_MAX_T = 2048


def runs_at(path: str, tokens: int) -> bool:
    """Whether ``path`` is benchmarked at sequence length ``tokens`` (see QUADRATIC_PATHS_MAX_T)."""
    return path not in ("eager_attn", "upstream") or tokens <= QUADRATIC_PATHS_MAX_T


def bench_rounds() -> int:
    return max(1, int(os.environ.get("DROPE_BENCH_ROUNDS", "3")))


def bench_warmup() -> int:
    """Untimed warm-up rounds before each path's timed rounds (``DROPE_BENCH_WARMUP``, default 1)."""
    return max(0, int(os.environ.get("DROPE_BENCH_WARMUP", "1")))


def memory_enabled() -> bool:
    return os.environ.get("DROPE_BENCH_MEMORY", "1") != "0"


# ------------------------------------------------------------------------------------------------
# texts and tokens


def wikitext_file() -> Path | None:
    """``$DROPE_CHECK_WIKITEXT``, else the shared checkout's ``wiki.test.raw``, else None."""
    env = os.environ.get("DROPE_CHECK_WIKITEXT")
    if env:
        return Path(env)
    return SHARED_WIKITEXT if SHARED_WIKITEXT.is_file() else None


def bench_text() -> tuple[str, str]:
    """One long real text and a label: the WikiText-2 test split joined with ``"\\n\\n"`` (as the
    HF perplexity guide does), or, without the file, gensim's Wikipedia paragraphs joined likewise."""
    from drope_check.engine.gensim_texts import gensim_fallback
    from drope_check.engine.text_set import TextSourceError
    from drope_check.engine.texts import wikitext_split_text

    path = wikitext_file()
    if path is not None:
        ts = wikitext_split_text(path)
        return ts.texts[0], ts.name
    for n in (1000, 500, 200, 100, 50, 20):
        try:
            ts = gensim_fallback(n=n, min_chars=100)
        except TextSourceError:
            continue
        return "\n\n".join(ts.texts), ts.name
    raise RuntimeError("no benchmark text: provide wiki.test.raw (DROPE_CHECK_WIKITEXT) or install gensim")


def token_rows(
    tokenizer: Any, bos_token_id: int, tokens: int, batch: int, text: str | None = None
) -> torch.Tensor:
    """``[batch, tokens]`` ids: consecutive ``tokens - 1``-token slices of the text, each with BOS first.

    Raises if the text is too short (the joined WikiText-2 test split holds ~300k tokens)."""
    text = bench_text()[0] if text is None else text
    need = batch * (tokens - 1)
    chars = min(len(text), need * 6 + 1000)
    while True:
        ids = tokenizer.encode(text[:chars], add_special_tokens=False)
        if len(ids) >= need or chars >= len(text):
            break
        chars = min(len(text), chars * 2)
    if len(ids) < need:
        raise RuntimeError(
            f"the benchmark text has {len(ids)} tokens; {need} are needed for {batch} x {tokens}"
        )
    rows = [[bos_token_id] + ids[i * (tokens - 1) : (i + 1) * (tokens - 1)] for i in range(batch)]
    return torch.tensor(rows, dtype=torch.long)


# ------------------------------------------------------------------------------------------------
# models


def load_embedded(layers: int | None = None):
    """The embedded RoPE model (``LoadedModel``), optionally cut to its first ``layers`` layers."""
    from drope_check.models.loading import load_model
    from drope_check.models.pairs import PAIRS

    pair = PAIRS[PAIR]
    loaded = load_model(pair.rope, bos_token=pair.bos_token)
    if layers is not None:
        truncate_layers(loaded.model, layers)
    return loaded


def truncate_layers(model: torch.nn.Module, layers: int) -> None:
    inner = model.model
    inner.layers = inner.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]


def llama2_7b_shaped(
    device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, **overrides: Any
):
    """A Llama-2-7B-shaped ``LlamaForCausalLM`` with random weights (32 layers, hidden 4096,
    32 heads, MLP 11008, vocab 32000), switched to drope_check's attention. ``overrides`` change
    the config (the self-check uses a tiny one on CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from drope_check.engine.attention import ATTN_IMPLEMENTATION

    shape = dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
    )
    shape.update(overrides)
    config = LlamaConfig(**shape)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


@contextlib.contextmanager
def attn_implementation(model: torch.nn.Module, name: str):
    """Switch the model's attention implementation for the block, then back."""
    previous = model.config._attn_implementation
    if previous != name:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if previous != name:
            model.set_attn_implementation(previous)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# the paths


def forward(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any):
    with torch.inference_mode():
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)


def _keep_output(store: dict[str, torch.Tensor], key: str):
    def hook(_module: torch.nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        store[key] = out.detach()

    return hook


def upstream_per_layer(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, passes: int | None = None
) -> torch.Tensor:
    """Upstream's method: per layer, one full forward capturing that layer's ``q_proj`` / ``k_proj``
    outputs, then the float32 T x T causal softmax of the raw projections (no rotary). Returns the
    sink score (mean attention to position 0 over the real queries) per layer, row and head,
    ``[L, B, H]``. The forwards run with the model's current attention (SDPA or drope_check's),
    which is cheaper than the eager attention upstream ran, so this is a lower bound on its cost.
    ``passes`` stops after that many layers (the memory probe: every pass has the same peak)."""
    from transformers.integrations.sdpa_attention import repeat_kv

    from drope_check.engine.attention import attention_modules

    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    b, t = input_ids.shape
    real = attention_mask.to(torch.bool)
    allowed = (
        torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()[None, None]
        & real[:, None, None, :]
    )
    n_real = real.sum(dim=1).clamp_min(1).to(torch.float32)
    scores = []
    for attn in attention_modules(model)[:passes]:
        got: dict[str, torch.Tensor] = {}
        hooks = [
            attn.q_proj.register_forward_hook(_keep_output(got, "q")),
            attn.k_proj.register_forward_hook(_keep_output(got, "k")),
        ]
        try:
            forward(model, input_ids, attention_mask)
        finally:
            for hook in hooks:
                hook.remove()
        d = attn.head_dim
        with torch.inference_mode():
            q = got.pop("q").float().view(b, t, heads, d).transpose(1, 2)
            k = got.pop("k").float().view(b, t, kv_heads, d).transpose(1, 2)
            k = repeat_kv(k, heads // kv_heads)
            logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)  # [B, H, T, T] fp32
            logits = logits.masked_fill(~allowed, float("-inf"))
            weights = torch.softmax(logits, dim=-1)
            weights = torch.nan_to_num(weights, nan=0.0)  # fully masked (padding) query rows
            to_bos = (weights[..., 0] * real[:, None, :]).sum(dim=-1) / n_real[:, None]  # [B, H]
            del logits, weights, q, k
        scores.append(to_bos)
    return torch.stack(scores)


def run_path(
    path: str,
    loaded: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    model: torch.nn.Module | None = None,
    upstream_passes: int | None = None,
):
    """Run one path once on one batch. ``loaded`` is a ``LoadedModel`` (or None with ``model``)."""
    model = model if model is not None else loaded.model
    if path == "sdpa":
        with attn_implementation(model, "sdpa"):
            return forward(model, input_ids, attention_mask).logits
    if path == "drope_attn":
        from drope_check.engine.attention import ATTN_IMPLEMENTATION

        with attn_implementation(model, ATTN_IMPLEMENTATION):
            return forward(model, input_ids, attention_mask).logits
    if path == "capture":
        from drope_check.engine.attention import ATTN_IMPLEMENTATION
        from drope_check.engine.capture import OnePassCapture
        from drope_check.engine.protocol import Protocol

        name = loaded.name if loaded is not None else "bench-model"
        rows = [int(n) for n in attention_mask.sum(dim=1).tolist()]
        with attn_implementation(model, ATTN_IMPLEMENTATION):
            capture = OnePassCapture(model, Protocol(), name)
            with capture.batch(rows) as seqs:
                logits = forward(model, input_ids, attention_mask).logits
        return logits, seqs
    if path == "eager_attn":
        with attn_implementation(model, "eager"):
            out = forward(model, input_ids, attention_mask, output_attentions=True)
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("output_attentions=True returned no attention maps")
        return out.logits, out.attentions
    if path == "upstream":
        with attn_implementation(model, "sdpa"):
            return upstream_per_layer(model, input_ids, attention_mask, upstream_passes)
    if path == "sdpa_body":
        with attn_implementation(model, "sdpa"):
            return forward(model.model, input_ids, attention_mask).last_hidden_state
    if path == "capture_body":
        from drope_check.engine.attention import ATTN_IMPLEMENTATION
        from drope_check.engine.capture import OnePassCapture
        from drope_check.engine.protocol import Protocol

        rows = [int(n) for n in attention_mask.sum(dim=1).tolist()]
        with attn_implementation(model, ATTN_IMPLEMENTATION):
            capture = OnePassCapture(model, Protocol(), loaded.name if loaded is not None else "bench-model")
            with capture.batch(rows) as seqs:
                hidden = forward(model.model, input_ids, attention_mask).last_hidden_state
        return hidden, seqs
    raise ValueError(f"unknown path {path!r}; choose from {', '.join(PATHS)}")


# ------------------------------------------------------------------------------------------------
# memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def probe(
    path: str,
    tokens: int,
    batch: int = 1,
    layers: int | None = None,
    device: str = "cpu",
    upstream_passes: int | None = None,
) -> dict[str, Any]:
    """Load the embedded model, run ``path`` once on ``batch`` x ``tokens`` real tokens, return the
    peak memory above the baseline. Meant to run in a fresh process (see :func:`probe_subprocess`).
    ``upstream_passes`` limits upstream's method to its first N per-layer passes (same peak, less time)."""
    dev = torch.device(device)
    loaded = load_embedded(layers)
    if dev.type != "cpu":
        loaded.model.to(dev)
    ids = token_rows(loaded.tokenizer, loaded.bos_token_id, tokens, batch).to(dev)
    mask = torch.ones_like(ids)
    # Warm up the libraries (thread pools, kernels) on a short input, so their one-off buffers are
    # part of the baseline and not of the path's peak.
    run_path(path, loaded, ids[:, :16], mask[:, :16], upstream_passes=1)
    _release_freed_memory()
    result: dict[str, Any] = {
        "path": path,
        "tokens": tokens,
        "batch": batch,
        "layers": len(loaded.model.model.layers),
        "device": str(dev),
    }
    if path == "upstream":
        result["upstream_passes"] = upstream_passes or len(loaded.model.model.layers)
    if dev.type == "cuda":
        synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        out = run_path(path, loaded, ids, mask, upstream_passes=upstream_passes)
        synchronize(dev)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(dev)
        result.update(method="cuda.max_memory_allocated", baseline_bytes=base, peak_bytes=peak)
    else:
        base = _status_kib("VmRSS") * 1024
        if _reset_peak_rss():
            method = "VmHWM after clear_refs=5, minus VmRSS before"
            start = time.perf_counter()
            out = run_path(path, loaded, ids, mask, upstream_passes=upstream_passes)
            seconds = time.perf_counter() - start
            peak = _status_kib("VmHWM") * 1024
        else:
            method = "ru_maxrss after minus max(ru_maxrss, VmRSS) before (high-water mark could not be reset)"
            base = max(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            start = time.perf_counter()
            out = run_path(path, loaded, ids, mask, upstream_passes=upstream_passes)
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.update(method=method, baseline_bytes=base, peak_bytes=peak)
    del out
    result["delta_bytes"] = max(0, result["peak_bytes"] - result["baseline_bytes"])
    result["seconds"] = round(seconds, 3)
    return result


def probe_subprocess(
    path: str,
    tokens: int,
    batch: int = 1,
    layers: int | None = None,
    device: str = "cpu",
    timeout: float = 3600,
    upstream_passes: int | None = None,
) -> dict[str, Any]:
    """:func:`probe` in a fresh ``python`` process; returns its JSON line as a dict."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--path",
        path,
        "--tokens",
        str(tokens),
        "--batch",
        str(batch),
        "--device",
        device,
    ]
    if layers is not None:
        cmd += ["--layers", str(layers)]
    if upstream_passes is not None:
        cmd += ["--upstream-passes", str(upstream_passes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"memory probe {' '.join(cmd[2:])} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", required=True, choices=PATHS + BODY_PATHS)
    parser.add_argument("--tokens", type=int, required=True, help="sequence length T (BOS included)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N decoder layers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--upstream-passes", type=int, default=None, help="upstream: only the first N layer passes"
    )
    args = parser.parse_args(argv)
    result = probe(args.path, args.tokens, args.batch, args.layers, args.device, args.upstream_passes)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
