"""GPU smoke check: the first thing to run when a CUDA device is available (<= ~8 minutes on one GPU).

    python benchmarks/gpu_smoke.py --out gpu_smoke.json

Without CUDA it prints one line saying so and exits 0 (nothing measured, no file written). With
CUDA it runs, each step timed and its peak GPU memory recorded, any error caught and written into
the JSON (exit status 1 if a step failed, 0 otherwise):

1. ``kernel``: transformers' SDPA path vs drope_check's kernel path (``sdpa_with_logsumexp``) on
   Llama-2-7B-shaped bf16 / fp16 / fp32 tensors, with and without a right-padding mask: which SDPA
   backend ran, whether the outputs are bit-identical, and ``kernel_lse_max_rel_error`` of the
   attention to BOS from the kernel's log-sum-exp against a float64 softmax (the capture only
   trusts CUDA kernels once this has been measured; see ``capture.KERNEL_LSE_TRUSTED``).
2. ``rope_bf16``: a Llama-2-7B-shaped model with random bf16 weights; plain forward, one-pass
   capture and the interventions at T = 512 x 20 (batches of 4) and T = 4096 x 1, with paired
   ratios to the plain forward of the same tokens.
3. ``drope_bf16``: a DroPE checkpoint of the same shape in SakanaAI's layout (``model_type:
   llama_drope``, ``attention_type: qk_norm_nope``, q/k norm weights, safetensors) written to disk
   and loaded by drope_check's native loader; the same measurements. Its layer-1 q/k norm weights
   make the per-head q/k norms ~6.6e3 / 5.5e3 like DroPE Llama-2-7B's layer 1, so
   ``float64_fallback`` checks that the capture computed exactly that layer in float64 and that its
   attention to BOS matches a float64 softmax of the observed q/k within 1e-4 relative.
4. ``fp4`` / ``nf4``: both checkpoints loaded in bitsandbytes 4-bit, capture + plain at
   T = 512 x 20 with paired ratios.

Steps run in that order while ``--budget-s`` lasts; the first step past it is recorded as skipped
and the rest do not run. Random
weights: the numbers are timings, memory and correctness checks, never claims about a model.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: DroPE Llama-2-7B layer 1's per-head q / k norms (the provenance notes): what the float64 fallback
#: must catch.
DROPE_LAYER1_QK_NORMS = (6.6e3, 5.5e3)
SHAPES = ((512, 20), (4096, 1))
BATCH_SIZE = 4
PAD_ID, BOS_ID = 2, 1
PROMISED_RELATIVE = 1e-4
#: Where everything runs; "cuda" here, "cpu" only for tests/test_gpu_smoke.py's tiny self-check.
DEVICE = "cuda"


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
# helpers


class Step:
    """Times one step, records its peak GPU memory and any error into ``report[name]``."""

    def __init__(self, report: dict[str, Any], name: str, deadline: float) -> None:
        self.report, self.name, self.deadline = report, name, deadline
        self.data: dict[str, Any] = {}

    def __enter__(self) -> dict[str, Any]:
        import torch

        if time.monotonic() > self.deadline:
            raise _OutOfTime(self.name)
        release()
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self.data

    def __exit__(self, exc_type, exc, tb) -> bool:
        import torch

        self.data["seconds"] = round(time.perf_counter() - self.start, 3)
        if DEVICE == "cuda":
            self.data["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if exc is not None:
            self.data["error"] = f"{exc_type.__name__}: {exc}"
            self.data["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))[-4000:]
        self.report[self.name] = self.data
        return exc is not None and not isinstance(exc, _OutOfTime)


class _OutOfTime(Exception):
    pass


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


def random_sequences(t: int, n: int, vocab: int, seed: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [[BOS_ID, *torch.randint(3, vocab, (t - 1,), generator=g).tolist()] for _ in range(n)]


def plain_pass(model, seqs: list[list[int]]) -> None:
    """Plain SDPA forward over the batches the capture uses (logits only)."""
    import memory_probe
    import torch

    from drope_check.batching import make_batches

    device = next(model.parameters()).device
    with memory_probe.attn_implementation(model, "sdpa"), torch.inference_mode():
        for batch in make_batches(seqs, BATCH_SIZE, PAD_ID):
            model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)


def measure_paths(loaded, data: dict[str, Any], shapes=SHAPES, interventions: bool = True) -> None:
    """Paired plain / capture (/ interventions) timings at each shape into ``data``."""
    from drope_check.interventions import measure_interventions
    from drope_check.measure import ALL_INTERVENTIONS, baseline_perplexity, run_capture
    from drope_check.protocol import Protocol

    vocab = loaded.model.config.vocab_size
    for t, n in shapes:
        seqs = random_sequences(t, n, vocab, seed=t + n)
        protocol = Protocol(batch_size=BATCH_SIZE, max_tokens=t, n_texts=n)
        row: dict[str, Any] = {}
        _, plain_s = timed(plain_pass, loaded.model, seqs)
        (captures, nll, precision), capture_s = timed(run_capture, loaded, seqs, protocol)
        row.update(plain_s=round(plain_s, 3), capture_s=round(capture_s, 3),
                   capture_ratio=round(capture_s / plain_s, 3), precision=precision)
        row["finite"] = all(
            math.isfinite(v) for c in captures for vals in c.layers.values() for v in vals
        )
        if interventions:
            baseline = baseline_perplexity(nll)
            spikes = {"argmax-ratio": 1, "max-write": 1}
            result, inter_s = timed(
                measure_interventions, loaded.model, seqs, PAD_ID, spikes, ALL_INTERVENTIONS, BATCH_SIZE, baseline
            )
            row["interventions_s"] = round(inter_s, 3)
            # one ablation pass serves both spike rules (same layer), so 3 passes for 4 names
            row["interventions_ratio_per_pass"] = round(inter_s / 3 / plain_s, 3)
            row["intervention_ppl"] = {k: v["ppl"] for k, v in result.items()}
            row["baseline_ppl"] = baseline.ppl
        data[f"T{t}xB{n}"] = row


def write_tokenizer(folder: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", *[f"t{i}" for i in range(3, vocab)]]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)


def write_shard_index(folder: Path) -> None:
    """``model.safetensors.index.json`` over every ``*.safetensors`` file of ``folder`` (HF's sharded
    layout), so the loader reads the q/k norm shard beside the model's own weights."""
    from safetensors import safe_open

    weight_map: dict[str, str] = {}
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                weight_map[name] = f.name
        total += f.stat().st_size
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def write_checkpoints(rope, root: Path) -> tuple[Path, Path]:
    """The RoPE model as a plain Llama checkpoint and the DroPE one in SakanaAI's layout (same
    weights plus q/k norm weights; layer 1's scaled to DroPE-like q/k norms)."""
    import torch
    from safetensors.torch import save_file

    config = rope.config
    head_dim = config.hidden_size // config.num_attention_heads
    rope_dir, drope_dir = root / "rope", root / "drope"
    rope.save_pretrained(rope_dir, safe_serialization=True)
    write_tokenizer(rope_dir, config.vocab_size)
    drope_dir.mkdir(parents=True)
    for f in rope_dir.glob("*.safetensors"):
        # a lone model.safetensors would shadow the index transformers needs to find the norm shard
        name = "model-base.safetensors" if f.name == "model.safetensors" else f.name
        os.link(f, drope_dir / name) if hasattr(os, "link") else shutil.copy(f, drope_dir / name)
    write_tokenizer(drope_dir, config.vocab_size)
    norms: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(3)
    q_dim, k_dim = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    for layer in range(config.num_hidden_layers):
        q = torch.rand(q_dim, generator=g) * 0.5 + 0.75
        k = torch.rand(k_dim, generator=g) * 0.5 + 0.75
        if layer == 1:  # RMSNorm output has rms 1 per channel: a head's norm is ~sqrt(head_dim) * weight
            q = torch.full((q_dim,), DROPE_LAYER1_QK_NORMS[0] / math.sqrt(head_dim))
            k = torch.full((k_dim,), DROPE_LAYER1_QK_NORMS[1] / math.sqrt(head_dim))
        norms[f"model.layers.{layer}.self_attn.q_norm.weight"] = q.to(torch.bfloat16)
        norms[f"model.layers.{layer}.self_attn.k_norm.weight"] = k.to(torch.bfloat16)
    save_file(norms, str(drope_dir / "qk_norms.safetensors"), metadata={"format": "pt"})
    write_shard_index(drope_dir)
    cfg = json.loads((rope_dir / "config.json").read_text())
    cfg.update(model_type="llama_drope", architectures=["DropeForCausalLM"], attention_type="qk_norm_nope",
               auto_map={"AutoConfig": "drope.DropeConfig", "AutoModelForCausalLM": "drope.DropeForCausalLM"})
    (drope_dir / "config.json").write_text(json.dumps(cfg, indent=1))
    return rope_dir, drope_dir


def load(folder: Path, role: str, variant: str, quantization: str | None = None):
    import torch

    from drope_check.models import ModelSpec, load_model

    return load_model(ModelSpec(role, str(folder), variant), bos_token="<s>", device=DEVICE,
                      dtype=torch.bfloat16, quantization=quantization)


def float64_fallback_check(loaded, data: dict[str, Any], t: int = 512) -> None:
    """Layer 1 (DroPE-like q/k norms) must take the float64 path and match a float64 softmax."""
    import torch

    from drope_check.attention import observe_attention
    from drope_check.capture import OnePassCapture
    from drope_check.protocol import Protocol

    seqs = random_sequences(t, 1, loaded.model.config.vocab_size, seed=7)
    ids = torch.tensor(seqs, device=DEVICE)
    seen: dict[str, Any] = {}

    def grab(call) -> None:
        seen["q"], seen["k"], seen["scaling"] = call.query.double(), call.key.double(), call.scaling

    capture = OnePassCapture(loaded.model, Protocol(stats_dtype="auto"), loaded.name)
    with torch.inference_mode(), observe_attention(loaded.model, grab, layers=[1]), capture.batch([t]) as caps:
        loaded.model(input_ids=ids, use_cache=False)
    q, k = seen["q"][0], seen["k"][0]
    groups = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(groups, dim=0)
    scores = (q @ k.transpose(-1, -2)) * seen["scaling"]
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=DEVICE).tril(), float("-inf"))
    ref = torch.softmax(scores, dim=-1)[..., 0].cpu()
    got = caps[0].attn_to_bos[1]
    rel = ((got - ref).abs() / ref.clamp_min(1e-300)).max().item()
    data.update(
        layer1_q_norm_max=float(seen["q"].norm(dim=-1).max()),
        layer1_k_norm_max=float(seen["k"].norm(dim=-1).max()),
        layers_in_float64=capture.layers_in_float64,
        layer1_max_rel_error_vs_float64=rel,
        ok=capture.layers_in_float64 == 1 and rel <= PROMISED_RELATIVE,  # layer 1 and only layer 1
    )
    if not data["ok"]:
        raise AssertionError(f"float64 fallback: {capture.layers_in_float64} layer(s) in float64, layer-1 error {rel:.3g}")


def kernel_checks(data: dict[str, Any], shape: tuple[int, int, int, int] = (4, 32, 512, 128)) -> None:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from drope_check.attention import sdpa_with_logsumexp
    from drope_check.capture import attention_to_position0_from_lse

    class Module(torch.nn.Module):
        num_key_value_groups, is_causal = 1, True

    worst = {}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for masked in (False, True):
            g = torch.Generator(device=DEVICE).manual_seed(0)
            b, h, t, d = shape
            q, k, v = (torch.randn(b, h, t, d, generator=g, device=DEVICE).to(dtype) for _ in range(3))
            mask = None
            if masked:  # right padding: row i keeps its first t - 37 i tokens (at least 2)
                lengths = torch.tensor([max(2, t - 37 * i) for i in range(b)], device=DEVICE)
                real = torch.arange(t, device=DEVICE)[None, :] < lengths[:, None]
                mask = (torch.ones(t, t, dtype=torch.bool, device=DEVICE).tril()[None] & real[:, None, :]).unsqueeze(1)
            name = f"{str(dtype).removeprefix('torch.')}{'-padded' if masked else ''}"
            fused = sdpa_with_logsumexp(Module(), q, k, v, mask, scaling=d**-0.5)
            if fused is None:
                data[name] = {"kernel_path": False}
                continue
            out, lse = fused
            ref, _ = sdpa_attention_forward(Module(), q, k, v, mask, scaling=d**-0.5)
            allowed = torch.ones(b, 1, t, t, dtype=torch.bool, device=DEVICE).tril() if mask is None else mask
            scores = (q.double() @ k.double().transpose(-1, -2)) * d**-0.5
            expected = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)[..., 0]
            got = attention_to_position0_from_lse(q, k, lse, allowed[..., 0], d**-0.5)
            rel = float(((got - expected).abs() / expected.clamp_min(1e-300)).max())
            data[name] = {
                "kernel_path": True,
                "output_bit_identical": bool(torch.equal(out, ref)),
                "output_max_abs_diff": float((out.float() - ref.float()).abs().max()),
                "kernel_lse_max_rel_error": rel,
            }
            worst[str(dtype)] = max(worst.get(str(dtype), 0.0), rel)
    data["kernel_lse_max_rel_error"] = worst


def release() -> None:
    import torch

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default="gpu_smoke.json", help="where the JSON goes (default gpu_smoke.json)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no step after this many seconds")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers of the 7B-shaped models (32)")
    parser.add_argument("--workdir", default=None, help="where the checkpoints are written (a temp dir)")
    args = parser.parse_args(argv)

    reason = skip_reason()
    if reason is not None:
        print(f"gpu_smoke: SKIPPED, nothing measured: {reason}")
        return 0

    import memory_probe
    import torch
    import transformers

    from drope_check.models import LoadedModel, ModelSpec

    started = time.monotonic()
    deadline = started + args.budget_s
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "layers": args.layers,
        "shapes": [f"T{t}xB{n}" for t, n in SHAPES],
        "batch_size": BATCH_SIZE,
        "steps": {},
    }
    steps = report["steps"]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="drope_gpu_smoke_"))
    held: dict[str, Any] = {}  # models alive between steps, dropped as soon as they are not needed
    dirs: dict[str, Path] = {}
    try:
        try:
            with Step(steps, "kernel", deadline) as data:
                kernel_checks(data)
            with Step(steps, "rope_bf16", deadline) as data:
                model = memory_probe.llama2_7b_shaped(DEVICE, torch.bfloat16, num_hidden_layers=args.layers)
                held["rope"] = LoadedModel(model, None, ModelSpec("rope", "random-7b-shaped", "rope"), BOS_ID, PAD_ID, {})
                del model
                measure_paths(held["rope"], data)
            with Step(steps, "write_checkpoints", deadline) as data:
                dirs["rope"], dirs["drope"] = write_checkpoints(held.pop("rope").model, root)
                data["bytes"] = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
            held.clear()
            release()
            with Step(steps, "drope_bf16", deadline) as data:
                held["drope"] = load(dirs["drope"], "drope", "drope")
                data["provenance"] = {k: held["drope"].provenance.get(k) for k in ("loader", "attention_type", "softmax_scale")}
                measure_paths(held["drope"], data)
            with Step(steps, "float64_fallback", deadline) as data:
                float64_fallback_check(held["drope"], data)
            held.clear()
            release()
            for quant in ("fp4", "nf4"):
                for role in ("rope", "drope"):
                    with Step(steps, f"{quant}_{role}", deadline) as data:
                        held["q"] = load(dirs[role], role, role, quantization=quant)
                        measure_paths(held["q"], data, shapes=SHAPES[:1], interventions=False)
                    held.clear()
                    release()
        except _OutOfTime as out:
            steps[str(out)] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
    finally:
        shutil.rmtree(root, ignore_errors=True) if args.workdir is None else None
        report["total_s"] = round(time.monotonic() - started, 1)
        errors = {k: v["error"] for k, v in steps.items() if "error" in v}
        report["errors"] = errors
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        print(f"gpu_smoke: wrote {args.out}; {len(steps)} step(s), {len(errors)} error(s)")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
