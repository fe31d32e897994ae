"""GPU smoke check: the first thing to run when a CUDA device is available (<= 5 minutes on one GPU, no hub).

    python benchmarks/gpu_smoke.py --out gpu_smoke.json            # exit 0: every step passed
    python benchmarks/gpu_smoke.py --steps kernel,nf4_double        # rerun some steps only

Every step asserts what it measures (its ``checks``, each a value against a stated bound); the run exits 1
and prints one line per step that failed, errored or was skipped, and 0 only when every step passed. A step
that did not run (the ``--budget-s`` time budget was spent, or bitsandbytes is missing) is a shortfall too,
unless ``--allow-skip``. Without CUDA it prints ``gpu_smoke: SKIPPED, nothing measured: ...`` and exits 0
(nothing written); ``--simulate-cpu`` runs the same steps on CPU with tiny shapes (the steps' own
self-check, used by ``tests/test_gpu_smoke.py``; bitsandbytes 4-bit needs CUDA, so its steps are skipped).

Random weights built locally, no hub access: the numbers are timings, memory and correctness checks, never
claims about a model. Steps, in order:

1. ``kernel``: transformers' SDPA path vs drope_check's kernel path (``sdpa_with_logsumexp``) on
   Llama-2-7B-shaped bf16 / fp16 / fp32 tensors, with and without a right-padding mask. Checks: the
   outputs are bit-identical (the kernel path calls the very kernel SDPA would, with the same arguments)
   and the attention to BOS from the kernel's log-sum-exp is within :data:`KERNEL_LSE_BOUND` of a float64
   softmax (``kernel_lse_max_rel_error``; the capture only trusts a kernel's log-sum-exp once this holds,
   ``capture.KERNEL_LSE_TRUSTED``).
2. ``rope_bf16``: a Llama-2-7B-wide model (``--layers`` decoder layers) with random bf16 weights: plain
   forward, one-pass capture and the four interventions at :data:`SHAPES`, timed with paired ratios.
   Checks: every captured statistic and every perplexity is finite.
3. ``float32_vs_float64``: the capture of that model with ``stats_dtype`` float32 and float64 on the same
   batch: attention to BOS within :data:`PROMISED_RELATIVE` (the suite's promise for the float32 path).
4. ``write_checkpoints``: the model as a plain Llama checkpoint and as a DroPE checkpoint in SakanaAI's
   layout (``llama_drope``, ``qk_norm_nope``, ``softmax_scale`` :data:`SOFTMAX_SCALE`, sharded
   safetensors with an index; :mod:`drope_check.models.tiny_checkpoints`); layer 1's q/k norm weights give
   per-head q/k norms like DroPE Llama-2-7B's layer 1 (:data:`DROPE_LAYER1_QK_NORMS`).
5. ``drope_bf16``: that checkpoint through the native loader. Checks: loader native, the config's
   ``softmax_scale`` is every attention module's scale and the one the capture sees; the same
   measurements as step 2, finite.
6. ``float64_fallback``: the capture computes exactly layer 1 in float64 (``stats_dtype="auto"``), its
   attention to BOS matches a float64 softmax of the observed q/k within :data:`PROMISED_RELATIVE`, and
   the whole ``auto`` capture matches a ``float64`` one within the same bound.
7. ``nf4_double_rope`` / ``nf4_double_drope``: both checkpoints in bitsandbytes 4-bit NF4 with double
   quantization, fp16 compute and activations (upstream's phase-metrics load). Checks: 4-bit linear layers
   with nested (double) quantization state, float16 activations, provenance ``quantization_config``, a
   finite capture (DroPE's layer 1 again in float64).
8. ``fp4_drope``: the DroPE checkpoint in FP4 (upstream's ablation load): finite capture.
9. ``device_map``: a small model spread over CUDA and the CPU by accelerate (layers alternating, the CPU
   layers computing on the CPU: tensors cross devices between layers); capture, interventions and
   perplexity within :data:`DEVICE_MAP_RTOL` of the same model on one GPU.

The whole run must stay within :data:`TOTAL_BOUND_S` (a check of its own).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: DroPE Llama-2-7B layer 1's per-head q / k norms (the provenance notes): what the float64 fallback must catch.
DROPE_LAYER1_QK_NORMS = (6.6e3, 5.5e3)
#: The suite's promise for attention to BOS against a float64 softmax (README, drope_check/engine/capture.py).
PROMISED_RELATIVE = 1e-4
#: Bound on the kernel log-sum-exp path's relative error in attention to BOS: the suite's promise. Why not
#: tighter: on CPU the bf16 / fp16 flash kernel's reduced-precision exp already costs ~5e-5 (measured,
#: tests/test_attention_capture.py), inside the promise; CUDA's flash / memory-efficient kernels accumulate
#: scores and the log-sum-exp in float32, so they should be near 1e-6. Why not looser: a kernel beyond the
#: promise can never serve the capture, so its error is a finding to look at, not noise.
KERNEL_LSE_BOUND = PROMISED_RELATIVE
#: Attention values below this are compared absolutely, not relatively (float32 underflows near 1e-38).
ATTENTION_FLOOR = 1e-30
#: Two placements of one float32 model (one GPU vs layers on the GPU and the CPU) run different kernels
#: (CUDA vs CPU matmuls, summation orders): float32 rounding, ~1e-6 relative per layer, compounding over a
#: few layers. 1e-4 relative is the suite's promise for attention to BOS; every quantity is held to it.
DEVICE_MAP_RTOL = 1e-4
#: SakanaAI's config key replacing ``head_dim ** -0.5`` (1/sqrt(128) = 0.0884 for Llama-2-7B): a distinct
#: value, so a loader that ignores it is caught.
SOFTMAX_SCALE = 0.0625
#: The run's own budget: steps start only while ``--budget-s`` lasts, and the whole run must end within this.
TOTAL_BOUND_S = 300.0
SHAPES = ((512, 8), (4096, 1))
BATCH_SIZE = 4
PAD_ID, BOS_ID = 2, 1
KERNEL_SHAPE = (4, 32, 512, 128)
#: Where everything runs; "cpu" under ``--simulate-cpu`` (and in tests/test_gpu_smoke.py).
DEVICE = "cuda"
#: ``--simulate-cpu`` sizes: a tiny model, short sequences (the steps' self-check, seconds on a CPU).
SIMULATED = dict(
    model=dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        vocab_size=64,
        max_position_embeddings=128,
    ),
    shapes=((16, 3), (24, 1)),
    batch_size=2,
    kernel_shape=(3, 4, 40, 16),
)


def skip_reason() -> str | None:
    """Why this machine cannot run the smoke check, or ``None``."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


# ------------------------------------------------------------------------------------------------
# steps: records, checks, the runner


class StepSkipped(Exception):
    """A step that cannot run here (bitsandbytes missing, 4-bit without CUDA): a shortfall unless --allow-skip."""


@dataclass
class Check:
    """One asserted quantity: ``value op bound`` (``op`` one of ``<=``, ``>=``, ``==``)."""

    name: str
    value: Any
    bound: Any
    op: str = "<="

    @property
    def ok(self) -> bool:
        if self.op == "==":
            return self.value == self.bound
        if (
            not isinstance(self.value, (int, float))
            or isinstance(self.value, bool)
            or not math.isfinite(self.value)
        ):
            return False  # a NaN or a non-number never meets a bound
        return self.value <= self.bound if self.op == "<=" else self.value >= self.bound

    def text(self) -> str:
        value = f"{self.value:.3g}" if isinstance(self.value, float) else repr(self.value)
        bound = f"{self.bound:.3g}" if isinstance(self.bound, float) else repr(self.bound)
        return f"{self.name} = {value} (must be {self.op} {bound})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "op": self.op, "bound": self.bound, "ok": self.ok}


@dataclass
class StepData:
    """What one step measured (``values``) and asserted (``checks``)."""

    values: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, value: Any, bound: Any, op: str = "<=") -> bool:
        self.checks.append(Check(name, value, bound, op))
        return self.checks[-1].ok

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


Step = tuple[str, Callable[[StepData], None]]


def run_steps(steps: list[Step], deadline: float, report: dict[str, Any]) -> None:
    """Run ``steps`` in order into ``report[name]``: status ``pass`` (every check met), ``fail`` (a check
    missed its bound), ``error`` (an exception) or ``skipped`` (:class:`StepSkipped`, or the deadline passed
    before it started: then every later step is skipped too). Each entry has its seconds and, on CUDA, its
    peak GPU memory."""
    out_of_time = False
    for name, fn in steps:
        if out_of_time or time.monotonic() > deadline:
            out_of_time = True
            report[name] = {
                "status": "skipped",
                "reason": "the time budget (--budget-s) was spent before it started",
            }
            continue
        release()
        _reset_peak()
        data = StepData()
        start = time.perf_counter()
        entry: dict[str, Any] = {}
        try:
            fn(data)
        except StepSkipped as exc:
            entry.update(status="skipped", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken step is recorded, the others still run
            entry.update(
                status="error",
                error=f"{type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
            )
        else:
            entry["status"] = "pass" if all(c.ok for c in data.checks) else "fail"
        entry["seconds"] = round(time.perf_counter() - start, 3)
        peak = _peak_mib()
        if peak is not None:
            entry["peak_gpu_mib"] = peak
        entry["checks"] = [c.to_dict() for c in data.checks]
        entry["values"] = data.values
        report[name] = entry


def shortfalls(steps: dict[str, Any], allow_skip: bool = False) -> list[str]:
    """One line per step that did not pass: failed checks, the error, or why it was skipped (a skip is a
    shortfall unless ``allow_skip``)."""
    lines = []
    for name, entry in steps.items():
        status = entry.get("status")
        if status == "fail":
            missed = [
                Check(**{k: c[k] for k in ("name", "value", "bound", "op")})
                for c in entry["checks"]
                if not c["ok"]
            ]
            lines.append(f"FAIL {name}: " + "; ".join(c.text() for c in missed))
        elif status == "error":
            lines.append(f"ERROR {name}: {entry.get('error')}")
        elif status == "skipped" and not allow_skip:
            lines.append(f"SKIPPED {name}: {entry.get('reason')} (--allow-skip accepts a skipped step)")
    return lines


def release() -> None:
    import torch

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _reset_peak() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if DEVICE == "cuda" else None


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    sync()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync()
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
# measurements the steps share


def random_sequences(t: int, n: int, vocab: int, seed: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [[BOS_ID, *torch.randint(3, vocab, (t - 1,), generator=g).tolist()] for _ in range(n)]


def plain_pass(model, seqs: list[list[int]], batch_size: int) -> None:
    """Plain SDPA forward over the batches the capture uses (logits only)."""
    import memory_probe
    import torch

    from drope_check.engine.batching import make_batches
    from drope_check.engine.perplexity import input_device

    device = input_device(model)
    with memory_probe.attn_implementation(model, "sdpa"), torch.inference_mode():
        for batch in make_batches(seqs, batch_size, PAD_ID):
            model(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                use_cache=False,
            )


def measure_paths(loaded, data: StepData, shapes, batch_size: int, interventions: bool = True) -> None:
    """Paired plain / capture (/ interventions) timings at each shape, and checks that every captured
    statistic and perplexity is finite."""
    from drope_check.engine.interventions import INTERVENTIONS, measure_interventions
    from drope_check.engine.protocol import Protocol
    from drope_check.measurements.measure import baseline_perplexity, run_capture

    vocab = loaded.model.config.vocab_size
    for t, n in shapes:
        key = f"T{t}xB{n}"
        seqs = random_sequences(t, n, vocab, seed=t + n)
        protocol = Protocol(batch_size=batch_size, max_tokens=t, n_texts=n)
        row: dict[str, Any] = {}
        _, plain_s = timed(plain_pass, loaded.model, seqs, batch_size)
        (captures, nll, precision), capture_s = timed(run_capture, loaded, seqs, protocol)
        row.update(
            plain_s=round(plain_s, 3),
            capture_s=round(capture_s, 3),
            capture_ratio=round(capture_s / plain_s, 3),
            precision=precision,
        )
        non_finite = sum(not math.isfinite(v) for c in captures for vals in c.layers.values() for v in vals)
        non_finite += sum(not bool(a.isfinite().all()) for c in captures for a in c.attn_to_bos)
        data.check(f"{key}: non-finite captured values", non_finite, 0, "==")
        baseline = baseline_perplexity(nll)
        row["baseline_ppl"] = baseline.ppl
        data.check(f"{key}: baseline perplexity finite", math.isfinite(baseline.ppl), True, "==")
        if interventions:
            spikes = {"argmax-ratio": 1, "max-write": 1}
            result, inter_s = timed(
                measure_interventions, loaded.model, seqs, PAD_ID, spikes, INTERVENTIONS, batch_size, baseline
            )
            row["interventions_s"] = round(inter_s, 3)
            # one ablation pass serves both spike rules (same layer), so 3 passes for 4 names
            row["interventions_ratio_per_pass"] = round(inter_s / 3 / plain_s, 3)
            row["intervention_ppl"] = {k: v["ppl"] for k, v in result.items()}
            data.check(
                f"{key}: intervention perplexities finite",
                all(math.isfinite(v["ppl"]) for v in result.values()),
                True,
                "==",
            )
        data[key] = row


def max_relative(got, ref, floor: float = ATTENTION_FLOOR) -> float:
    """Largest ``|got - ref| / max(|ref|, floor)`` over two tensors (float64)."""
    import torch

    got, ref = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    return float(((got - ref).abs() / ref.abs().clamp_min(floor)).max())


def capture_attention(loaded, seqs: list[list[int]], stats_dtype: str, batch_size: int) -> tuple[list, Any]:
    """Per sequence and layer the captured attention to BOS (``[H, T]`` float64 on the CPU), and the capture."""
    import torch

    from drope_check.engine.batching import make_batches
    from drope_check.engine.capture import OnePassCapture
    from drope_check.engine.perplexity import input_device
    from drope_check.engine.protocol import Protocol

    capture = OnePassCapture(loaded.model, Protocol(stats_dtype=stats_dtype), loaded.name)
    device = input_device(loaded.model)
    out: list = []
    with torch.inference_mode():
        for batch in make_batches(seqs, batch_size, PAD_ID):
            with capture.batch(batch.lengths) as caps:
                loaded.model(
                    input_ids=batch.input_ids.to(device),
                    attention_mask=batch.attention_mask.to(device),
                    use_cache=False,
                )
            out += [[a.double() for a in c.attn_to_bos] for c in caps]
    return out, capture


def compare_captures(a: list, b: list) -> float:
    return max(
        max_relative(x, y)
        for seq_a, seq_b in zip(a, b, strict=True)
        for x, y in zip(seq_a, seq_b, strict=True)
    )


def load(folder: Path, role: str, quantization: str | None = None, dtype=None):
    import torch

    from drope_check.models.loading import load_model
    from drope_check.models.pairs import ModelSpec

    dtype = dtype if dtype is not None or quantization is not None else torch.bfloat16
    return load_model(
        ModelSpec(role, str(folder), role),
        bos_token="<s>",
        device=DEVICE,
        dtype=dtype,
        quantization=quantization,
    )


def float64_fallback_check(loaded, data: StepData, t: int = 512) -> None:
    """Layer 1 (DroPE-like q/k norms) takes the float64 path, and only it, and matches a float64 softmax."""
    import torch

    from drope_check.engine.attention import observe_attention
    from drope_check.engine.capture import OnePassCapture
    from drope_check.engine.perplexity import input_device
    from drope_check.engine.protocol import Protocol

    seqs = random_sequences(t, 1, loaded.model.config.vocab_size, seed=7)
    device = input_device(loaded.model)
    ids = torch.tensor(seqs, device=device)
    seen: dict[str, Any] = {}

    def grab(call) -> None:
        seen["q"], seen["k"], seen["scaling"] = call.query.double(), call.key.double(), call.scaling

    capture = OnePassCapture(loaded.model, Protocol(stats_dtype="auto"), loaded.name)
    with (
        torch.inference_mode(),
        observe_attention(loaded.model, grab, layers=[1]),
        capture.batch([t]) as caps,
    ):
        loaded.model(input_ids=ids, use_cache=False)
    q, k = seen["q"][0], seen["k"][0]
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    scores = (q @ k.transpose(-1, -2)) * seen["scaling"]
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    ref = torch.softmax(scores, dim=-1)[..., 0].cpu()
    data["layer1_q_norm_max"] = float(seen["q"].norm(dim=-1).max())
    data["layer1_k_norm_max"] = float(seen["k"].norm(dim=-1).max())
    data.check("layers computed in float64 (layer 1 only)", capture.layers_in_float64, 1, "==")
    data.check(
        "layer-1 attention to BOS vs float64 softmax, relative",
        max_relative(caps[0].attn_to_bos[1], ref),
        PROMISED_RELATIVE,
    )


def kernel_checks(data: StepData, shape: tuple[int, int, int, int] = KERNEL_SHAPE) -> None:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from drope_check.engine.attention import sdpa_with_logsumexp
    from drope_check.engine.capture import attention_to_position0_from_lse

    class Module(torch.nn.Module):
        num_key_value_groups, is_causal = 1, True

    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for masked in (False, True):
            g = torch.Generator(device=DEVICE).manual_seed(0)
            b, h, t, d = shape
            q, k, v = (torch.randn(b, h, t, d, generator=g, device=DEVICE).to(dtype) for _ in range(3))
            mask = None
            if masked:  # right padding: row i keeps its first t - 37 i tokens (at least 2)
                lengths = torch.tensor([max(2, t - 37 * i) for i in range(b)], device=DEVICE)
                real = torch.arange(t, device=DEVICE)[None, :] < lengths[:, None]
                mask = (
                    torch.ones(t, t, dtype=torch.bool, device=DEVICE).tril()[None] & real[:, None, :]
                ).unsqueeze(1)
            name = f"{str(dtype).removeprefix('torch.')}{'-padded' if masked else ''}"
            fused = sdpa_with_logsumexp(Module(), q, k, v, mask, scaling=d**-0.5)
            if fused is None:  # no kernel path for this case: the capture recomputes, nothing to assert
                data[name] = {"kernel_path": False}
                continue
            out, lse = fused
            ref, _ = sdpa_attention_forward(Module(), q, k, v, mask, scaling=d**-0.5)
            allowed = torch.ones(b, 1, t, t, dtype=torch.bool, device=DEVICE).tril() if mask is None else mask
            scores = (q.double() @ k.double().transpose(-1, -2)) * d**-0.5
            expected = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)[..., 0]
            got = attention_to_position0_from_lse(q, k, lse, allowed[..., 0], d**-0.5)
            rel = max_relative(got, expected)
            data[name] = {
                "kernel_path": True,
                "output_max_abs_diff": float((out.float() - ref.float()).abs().max()),
                "kernel_lse_max_rel_error": rel,
            }
            data.check(
                f"{name}: kernel output bit-identical to SDPA's", bool(torch.equal(out, ref)), True, "=="
            )
            data.check(f"{name}: kernel_lse_max_rel_error", rel, KERNEL_LSE_BOUND)


def check_softmax_scale(loaded, data: StepData) -> None:
    """The config's ``softmax_scale`` is in provenance, on every attention module, and what attention sees."""
    import torch

    from drope_check.engine.attention import attention_modules, observe_attention
    from drope_check.engine.perplexity import input_device

    prov = loaded.provenance
    data["provenance"] = {k: prov.get(k) for k in ("loader", "attention_type", "softmax_scale")}
    data.check("loader", prov.get("loader"), "native", "==")
    data.check("attention_type", prov.get("attention_type"), "qk_norm_nope", "==")
    data.check("provenance softmax_scale", prov.get("softmax_scale"), SOFTMAX_SCALE, "==")
    scales = sorted({float(m.scaling) for m in attention_modules(loaded.model)})
    data.check("attention modules' scaling", scales, [SOFTMAX_SCALE], "==")
    seen: list[float] = []
    ids = torch.tensor(
        random_sequences(8, 1, loaded.model.config.vocab_size, seed=1), device=input_device(loaded.model)
    )
    with (
        torch.inference_mode(),
        observe_attention(loaded.model, lambda call: seen.append(float(call.scaling))),
    ):
        loaded.model(input_ids=ids, use_cache=False)
    data.check("scaling the attention function saw", sorted(set(seen)), [SOFTMAX_SCALE], "==")


def check_4bit(loaded, quantization: str, data: StepData, shapes, batch_size: int) -> None:
    """A bitsandbytes 4-bit load as upstream ran it, and a finite capture."""
    import torch

    from drope_check.models.quantization import quantization_settings

    linear4 = [m for m in loaded.model.modules() if type(m).__name__ == "Linear4bit"]
    data.check("4-bit linear layers", len(linear4), 1, ">=")
    if quantization == "nf4-double" and linear4:
        state = getattr(linear4[0].weight, "quant_state", None)
        data.check(
            "double quantization (nested quant state)", bool(getattr(state, "nested", False)), True, "=="
        )
    data.check(
        "activations dtype", str(loaded.model.get_input_embeddings().weight.dtype), str(torch.float16), "=="
    )
    data.check(
        "provenance quantization_config",
        loaded.provenance.get("quantization_config"),
        quantization_settings(quantization),
        "==",
    )
    measure_paths(loaded, data, shapes, batch_size, interventions=False)


def device_map_check(data: StepData, config: dict[str, Any], offload_dir: Path, batch_size: int) -> None:
    """A small float32 model measured on one device and spread by accelerate over the GPU and the CPU (CPU
    layers computing on the CPU; under --simulate-cpu: CPU and disk): every number within DEVICE_MAP_RTOL."""
    import memory_probe
    import torch
    from accelerate import dispatch_model

    from drope_check.engine.protocol import Protocol
    from drope_check.measurements.measure import measure_model
    from drope_check.models.loading import LoadedModel
    from drope_check.models.pairs import ModelSpec

    def loaded(model) -> LoadedModel:
        return LoadedModel(model, None, ModelSpec("rope", "random", "rope"), BOS_ID, PAD_ID, {})

    base = memory_probe.llama2_7b_shaped(
        "cpu", torch.float32, **config
    )  # one set of weights for both placements
    seqs = random_sequences(24, 3, config["vocab_size"], seed=5)
    protocol = Protocol(batch_size=batch_size, max_tokens=24, n_texts=3)
    names = ("bos_mlp_ablation:argmax-ratio", "qk_disruption:report", "qk_disruption:jin")
    one = measure_model(loaded(copy.deepcopy(base).to(DEVICE)), seqs, protocol, names)
    spread = loaded(base)
    n = config["num_hidden_layers"]
    away = "disk" if DEVICE == "cpu" else "cpu"
    here: Any = "cpu" if DEVICE == "cpu" else 0
    device_map = {
        "model.embed_tokens": here,
        "model.rotary_emb": here,
        "model.norm": away,
        "lm_head": here,
        **{f"model.layers.{i}": (here if i % 2 == 0 else away) for i in range(n)},
    }
    dispatch_model(spread.model, device_map, main_device="cpu", offload_dir=str(offload_dir))
    data["device_map"] = {k: str(v) for k, v in device_map.items()}
    # the guard: parameters really sit on both sides (under --simulate-cpu the disk ones wait on "meta")
    data.check(
        "where the parameters are",
        sorted({p.device.type for p in base.parameters()}),
        ["cpu", "cuda"] if DEVICE == "cuda" else ["cpu", "meta"],
        "==",
    )
    got = measure_model(spread, seqs, protocol, names)
    worst: dict[str, float] = {}
    # (sink rates count heads past a threshold: a score at the threshold may flip; the scores themselves are held)
    for key in ("bos_norm", "bos_ratio", "entropy", "bos_mlp_write_norm"):
        worst[key] = max_relative(got["layers"][key], one["layers"][key], floor=1e-12)
    worst["sink_score"] = max_relative(got["heads"]["sink_score"], one["heads"]["sink_score"], floor=1e-12)
    worst["ppl_baseline"] = max_relative(got["scalars"]["ppl_baseline"], one["scalars"]["ppl_baseline"])
    for name in names:
        worst[name] = max_relative(got["interventions"][name]["ppl"], one["interventions"][name]["ppl"])
    data["max_relative_difference"] = worst
    for key, value in worst.items():
        data.check(f"{key}: spread vs one device, relative", value, DEVICE_MAP_RTOL)


# ------------------------------------------------------------------------------------------------


#: What each step needs an earlier step to have built (``--steps`` runs those too).
REQUIRES: dict[str, tuple[str, ...]] = {
    "float32_vs_float64": ("rope_bf16",),
    "write_checkpoints": ("rope_bf16",),
    "drope_bf16": ("write_checkpoints",),
    "float64_fallback": ("drope_bf16",),
    "nf4_double_rope": ("write_checkpoints",),
    "nf4_double_drope": ("write_checkpoints",),
    "fp4_drope": ("write_checkpoints",),
}


def with_prerequisites(names: list[str]) -> set[str]:
    """``names`` and, transitively, the steps they need (:data:`REQUIRES`)."""
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo += REQUIRES.get(name, ())
    return out


def build_steps(args: argparse.Namespace, root: Path, held: dict[str, Any]) -> list[Step]:
    """The steps in order; ``held`` keeps models alive between the steps that share them."""
    import memory_probe
    import torch

    from drope_check.models.loading import LoadedModel
    from drope_check.models.pairs import ModelSpec
    from drope_check.models.tiny_checkpoints import write_pair_checkpoints

    simulate = args.simulate_cpu
    model_config = dict(SIMULATED["model"]) if simulate else {"num_hidden_layers": args.layers}
    shapes = SIMULATED["shapes"] if simulate else SHAPES
    batch = SIMULATED["batch_size"] if simulate else BATCH_SIZE
    small = (
        dict(SIMULATED["model"], num_hidden_layers=4)
        if simulate
        else dict(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=64,
            vocab_size=512,
            max_position_embeddings=128,
        )
    )
    dirs: dict[str, Path] = {}

    def kernel(data: StepData) -> None:
        kernel_checks(data, SIMULATED["kernel_shape"] if simulate else KERNEL_SHAPE)

    def rope_bf16(data: StepData) -> None:
        model = memory_probe.llama2_7b_shaped(DEVICE, torch.bfloat16, **model_config)
        held["rope"] = LoadedModel(
            model, None, ModelSpec("rope", "random-7b-shaped", "rope"), BOS_ID, PAD_ID, {}
        )
        measure_paths(held["rope"], data, shapes, batch)

    def float32_vs_float64(data: StepData) -> None:
        t, n = shapes[0]
        seqs = random_sequences(t, n, held["rope"].model.config.vocab_size, seed=11)
        f32, _ = capture_attention(held["rope"], seqs, "float32", batch)
        f64, _ = capture_attention(held["rope"], seqs, "float64", batch)
        data.check(
            "attention to BOS, float32 vs float64 capture, relative",
            compare_captures(f32, f64),
            PROMISED_RELATIVE,
        )

    def write_checkpoints(data: StepData) -> None:
        dirs["rope"], dirs["drope"] = write_pair_checkpoints(
            held.pop("rope").model,
            root,
            softmax_scale=SOFTMAX_SCALE,
            layer_qk_norms={1: DROPE_LAYER1_QK_NORMS},
        )
        config = json.loads((dirs["drope"] / "config.json").read_text())
        data["bytes"] = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        data.check("DroPE config model_type", config.get("model_type"), "llama_drope", "==")
        data.check("DroPE config softmax_scale", config.get("softmax_scale"), SOFTMAX_SCALE, "==")
        data.check(
            "DroPE shard index", (dirs["drope"] / "model.safetensors.index.json").is_file(), True, "=="
        )

    def drope_bf16(data: StepData) -> None:
        held["drope"] = load(dirs["drope"], "drope")
        check_softmax_scale(held["drope"], data)
        measure_paths(held["drope"], data, shapes, batch)

    def float64_fallback(data: StepData) -> None:
        loaded = held.pop("drope")
        float64_fallback_check(loaded, data, t=shapes[0][0])
        seqs = random_sequences(shapes[0][0], shapes[0][1], loaded.model.config.vocab_size, seed=13)
        auto, _ = capture_attention(loaded, seqs, "auto", batch)
        f64, _ = capture_attention(loaded, seqs, "float64", batch)
        data.check(
            "attention to BOS, auto vs float64 capture, relative",
            compare_captures(auto, f64),
            PROMISED_RELATIVE,
        )

    def four_bit(role: str, quantization: str) -> Callable[[StepData], None]:
        def step(data: StepData) -> None:
            if DEVICE != "cuda":
                raise StepSkipped("bitsandbytes 4-bit needs CUDA (simulated on CPU)")
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise StepSkipped(
                    "bitsandbytes is not installed: pip install -c ci/constraints-gpu.txt -e '.[gpu]'"
                )
            loaded = load(dirs[role], role, quantization=quantization)
            check_4bit(loaded, quantization, data, shapes[:1], batch)
            if role == "drope":  # fp16 q/k whose q.k overflows fp16: layer 1, and only it, in float64
                float64_fallback_check(loaded, data, t=shapes[0][0])

        return step

    def device_map(data: StepData) -> None:
        device_map_check(data, small, root / "offload", batch)

    return [
        ("kernel", kernel),
        ("rope_bf16", rope_bf16),
        ("float32_vs_float64", float32_vs_float64),
        ("write_checkpoints", write_checkpoints),
        ("drope_bf16", drope_bf16),
        ("float64_fallback", float64_fallback),
        ("nf4_double_rope", four_bit("rope", "nf4-double")),
        ("nf4_double_drope", four_bit("drope", "nf4-double")),
        ("fp4_drope", four_bit("drope", "fp4")),
        ("device_map", device_map),
    ]


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--out", default="gpu_smoke.json", help="where the JSON goes (default gpu_smoke.json)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=240.0,
        help=f"start no step after this many seconds (default 240; the run must end within {TOTAL_BOUND_S:.0f})",
    )
    parser.add_argument(
        "--layers", type=int, default=8, help="decoder layers of the Llama-2-7B-wide models (8)"
    )
    parser.add_argument(
        "--steps", default=None, help="run only these steps (comma list; e.g. a rerun of one that failed)"
    )
    parser.add_argument(
        "--allow-skip", action="store_true", help="a step that could not run is not a shortfall"
    )
    parser.add_argument(
        "--simulate-cpu",
        action="store_true",
        help="run the steps on CPU with tiny shapes (their self-check; 4-bit steps skip)",
    )
    parser.add_argument("--workdir", default=None, help="where the checkpoints are written (a temp dir)")
    args = parser.parse_args(argv)

    if not args.simulate_cpu:
        reason = skip_reason()
        if reason is not None:
            print(f"gpu_smoke: SKIPPED, nothing measured: {reason}")
            return 0
    DEVICE = "cpu" if args.simulate_cpu else "cuda"

    import torch
    import transformers

    started = time.monotonic()
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (--simulate-cpu)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "layers": args.layers,
        "bounds": {
            "kernel_lse": KERNEL_LSE_BOUND,
            "promised_relative": PROMISED_RELATIVE,
            "device_map_rtol": DEVICE_MAP_RTOL,
            "total_s": TOTAL_BOUND_S,
        },
        "steps": {},
    }
    root = Path(args.workdir or tempfile.mkdtemp(prefix="drope_gpu_smoke_"))
    held: dict[str, Any] = {}
    try:
        steps = build_steps(args, root, held)
        if args.steps:
            wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
            unknown = sorted(set(wanted) - {name for name, _ in steps})
            if unknown:
                print(
                    f"gpu_smoke: unknown step(s) {', '.join(unknown)}; the steps are {', '.join(n for n, _ in steps)}",
                    file=sys.stderr,
                )
                return 2
            needed = with_prerequisites(wanted)
            steps = [s for s in steps if s[0] in needed]
        run_steps(steps, started + args.budget_s, report["steps"])
    finally:
        held.clear()
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    report["total_s"] = round(time.monotonic() - started, 1)
    lines = shortfalls(report["steps"], allow_skip=args.allow_skip)
    total = Check("total seconds", report["total_s"], TOTAL_BOUND_S)
    if not total.ok:
        lines.append(f"FAIL total: {total.text()}")
    report["shortfalls"] = lines
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    for line in lines:
        print(f"gpu_smoke: {line}")
    passed = sum(1 for e in report["steps"].values() if e.get("status") == "pass")
    print(
        f"gpu_smoke: wrote {args.out}; {passed} of {len(report['steps'])} step(s) passed in {report['total_s']} s"
        + ("" if not lines else f"; {len(lines)} shortfall(s)")
    )
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
