"""Turn the benchmark JSON (+ the long-context memory JSON) into ``docs/performance.md``.

    python benchmarks/make_table.py bench.json --long-context long_context.json \\
        --load-before "$(cat uptime_before.txt)" --load-after "$(cat uptime_after.txt)" --out docs/performance.md

Times are ratios to the plain SDPA forward on the same batch. The *paired* ratio is the median over
rounds of (path round time / plain forward run right before that round), which cancels most of the
drift of a shared machine's load; "best" is min(path) / min(plain). Memory is the peak RSS above
the pre-path RSS (fresh process per path, ``memory_probe.py``); "extra" is that minus the plain
forward's.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from long_context import summarise  # noqa: E402

MiB = 2**20
#: Design options measured by hand (each with how, where and when), copied into the table's page.
STUDIES = Path(__file__).resolve().parent / "capture_options.md"
PATH_LABELS = {
    "sdpa": "plain forward (SDPA)",
    "drope_attn": "plain forward, drope_check attention, nothing registered",
    "capture": "one-pass capture (all phase metrics)",
    "eager_attn": "`output_attentions=True` (eager)",
    "upstream": "upstream: one forward per layer + T x T softmax",
}
TARGETS = {
    "capture_time": 1.3,  # T = 512 x 4 and 2048 x 1 (issues 11, 18)
    "capture_time_long": 1.15,  # T >= 8192 (issue 18; 1.5 in issue 11)
    "upstream_speedup": 30.0,
    "memory_ratio": 20.0,
    "ppl_ratio": 0.9,
}


def capture_target(tokens: int) -> float:
    return TARGETS["capture_time_long"] if tokens >= 8192 else TARGETS["capture_time"]


def _load_text(info: dict) -> str:
    """The 1-minute load average at a benchmark's start and end (the machine may be shared)."""
    before, after = info.get("loadavg_before"), info.get("loadavg_after")
    if not before and not after:
        return "n/a"
    return f"{_fmt(before[0] if before else None)} / {_fmt(after[0] if after else None)}"


def _fmt(x: float | None, spec: str = ".2f", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def load(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path and path.exists() else None


def load_long_context(paths: list[Path] | None) -> dict[str, Any] | None:
    """Merge one or more long_context.py outputs (rows of later files win) and re-summarise."""
    merged: dict[tuple, dict] = {}
    created = []
    for path in paths or []:
        data = load(path)
        if not data:
            continue
        created.append(data.get("created"))
        for r in data["rows"]:
            merged[(r["path"], r["tokens"], r["layers"], r["batch"])] = r
    if not merged:
        return None
    data = {"created": created, "rows": list(merged.values())}
    data["summary"] = summarise(data)
    return data


def split(bench: dict[str, Any]):
    """(forward timings, ppl timings, cpu memory, gpu timings, gpu memory) from the JSON's benchmarks."""
    fwd, ppl, mem, gfwd, gmem = {}, {}, {}, {}, {}
    for b in bench.get("benchmarks", []):
        info = b.get("extra_info", {})
        name = b["name"]
        path = info.get("path")
        if name.startswith("test_forward_path"):
            fwd[(info["T"], info["B"], path)] = (b["stats"], info)
        elif name.startswith("test_perplexity"):
            ppl[path] = (b["stats"], info)
        elif name.startswith("test_peak_memory"):
            mem[(info["T"], info["B"], path)] = info
        elif name.startswith("test_gpu_forward_path"):
            gfwd[path] = (b["stats"], info)
        elif name.startswith("test_gpu_peak_memory"):
            gmem[path] = info
    return fwd, ppl, mem, gfwd, gmem


def forward_table(fwd: dict, mem: dict, shapes: list[tuple[int, int]]) -> list[str]:
    lines = []
    for t, b in shapes:
        plain = fwd.get((t, b, "sdpa"))
        plain_mem = mem.get((t, b, "sdpa"), {}).get("delta_bytes")
        lines += [
            f"#### T = {t}, batch {b} ({t * b} tokens per forward)",
            "",
            "| path | best round (s) | tokens/s (best) | time vs plain, paired median | time vs plain, best/best "
            "| load avg (1 min) start / end | peak RSS above baseline (MiB) | peak vs plain | extra over plain (MiB) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for path, label in PATH_LABELS.items():
            entry = fwd.get((t, b, path))
            m = mem.get((t, b, path), {})
            delta = m.get("delta_bytes")
            if entry is None and delta is None:
                continue
            if entry is not None:
                stats, info = entry
                best = stats["min"]
                tps = info.get("tokens_per_s_best")
                paired = info.get("ratio_to_plain_paired_median", 1.0 if path == "sdpa" else None)
                bestbest = 1.0 if path == "sdpa" else (best / plain[0]["min"] if plain else None)
                load = _load_text(info)
            else:
                best = tps = paired = bestbest = None
                load = "n/a"
            mem_ratio = delta / plain_mem if (delta is not None and plain_mem) else None
            extra = (delta - plain_mem) / MiB if (delta is not None and plain_mem is not None) else None
            note = ""
            if path == "upstream" and m.get("upstream_passes"):
                note = f" (memory: first {m['upstream_passes']} passes)"
            lines.append(
                f"| {label}{note} | {_fmt(best, '.3f')} | {_fmt(tps, ',.0f')} | {_x(paired)} | {_x(bestbest)} | {load} "
                f"| {_fmt(delta / MiB if delta is not None else None, ',.0f')} | {_x(mem_ratio)} | {_fmt(extra, ',.0f')} |"
            )
        lines.append("")
    return lines


def ppl_table(ppl: dict) -> list[str]:
    if not ppl:
        return []
    labels = {
        "ppl_plain_batched": "plain batched forward (batch 4, logits only)",
        "ppl_lines_batched": "`perplexity_lines`, batch 4",
        "ppl_lines_bs1": "`perplexity_lines`, batch 1",
    }
    plain = ppl.get("ppl_plain_batched")
    lines = [
        "| evaluation | best round (s) | tokens/s (best) | tokens/s vs plain batched, paired median | best/best |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in labels.items():
        if key not in ppl:
            continue
        stats, info = ppl[key]
        paired = info.get("ratio_to_plain_paired_median")
        speed = 1.0 if key == "ppl_plain_batched" else (1 / paired if paired else None)
        bb = 1.0 if key == "ppl_plain_batched" else (plain[0]["min"] / stats["min"] if plain else None)
        lines.append(
            f"| {label} | {stats['min']:.3f} | {_fmt(info.get('tokens_per_s_best'), ',.0f')} | {_x(speed)} | {_x(bb)} |"
        )
    return lines + [""]


def long_context_table(lc: dict | None) -> list[str]:
    if not lc:
        return ["Not run (`python benchmarks/long_context.py --out long_context.json`).", ""]
    lines = [
        "| path | T | layers run | peak RSS above baseline (MiB) | plain forward, same T (MiB) | extra (MiB) "
        "| extra scaled to 30 layers (MiB) | growth of extra per doubling of T | wall time of the path (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = {"sdpa": "plain (SDPA)", "sdpa_body": "plain, no LM head (sdpa_body)"}
    plain = [r for r in lc["rows"] if r["path"] in labels]
    for r in sorted(plain, key=lambda r: (r["path"], r["layers"], r["tokens"])):
        lines.append(
            f"| {labels[r['path']]} | {r['tokens']} | {r['layers']} | {r['delta_bytes'] / MiB:,.0f} | | | | | {r['seconds']:.1f} |"
        )
    for s in lc.get("summary", []):
        growth = s.get("growth_per_doubling")
        lines.append(
            f"| {s['path']} | {s['tokens']} | {s['layers_run']} | {s['delta_bytes'] / MiB:,.0f} | {s['plain_delta_bytes'] / MiB:,.0f} "
            f"| {s['extra_bytes'] / MiB:,.0f} | {s['extra_bytes_full_model'] / MiB:,.0f} | {_fmt(growth)} | {s['seconds']:.1f} |"
        )
    return lines + [""]


def gpu_section(gfwd: dict, gmem: dict, machine: dict) -> list[str]:
    if not gfwd and not gmem:
        return [
            "Not run in this table's run: no CUDA device on the machine (the GPU benchmarks skip with that "
            "reason). On a GPU runner the same command adds `test_gpu_forward_path[*]` and "
            "`test_gpu_peak_memory[*]` (T = 4096, Llama-2-7B shape: 32 layers, hidden 4096, 32 heads, "
            "bf16, random weights) and this script adds their table here.",
            "",
        ]
    lines = [
        f"Card: **{machine.get('gpu')}** (compute capability {machine.get('gpu_capability')}, CUDA {machine.get('cuda')}).",
        "",
        "| path | best round (s) | tokens/s (best) | time vs plain, paired median | peak above weights (MiB) | peak vs plain |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    plain_mem = gmem.get("sdpa", {}).get("delta_bytes")
    for path, label in PATH_LABELS.items():
        if path not in gfwd and path not in gmem:
            continue
        stats, info = gfwd.get(path, ({}, {}))
        delta = gmem.get(path, {}).get("delta_bytes")
        paired = info.get("ratio_to_plain_paired_median", 1.0 if path == "sdpa" else None)
        lines.append(
            f"| {label} | {_fmt(stats.get('min'), '.3f')} | {_fmt(info.get('tokens_per_s_best'), ',.0f')} | {_x(paired)} "
            f"| {_fmt(delta / MiB if delta is not None else None, ',.0f')} | {_x(delta / plain_mem if delta and plain_mem else None)} |"
        )
    return lines + [""]


def _body_note(by: dict, eager: dict) -> str:
    body = by.get(("capture_body", 4096))
    if not body or body["extra_bytes"] <= 0:
        return ""
    ratio = eager["extra_bytes_full_model"] / body["extra_bytes"]
    return (
        f"; without the LM head, where the plain forward's logits peak cannot hide the capture's buffers: "
        f"{body['extra_bytes'] / MiB:,.0f} MiB = {ratio:.0f}x"
    )


def run_rows(runs: list[dict]) -> list[str]:
    """One target row per end-to-end run of ``benchmarks/time_runs.py`` (its own target and clock;
    a run with ``faster_than`` must take less time than that run of the same file)."""
    rows = []
    by_name = {run.get("name"): run for run in runs}
    for run in runs:
        goal, title = run.get("target_seconds"), run.get("title", run.get("name", "?"))
        clock = "pytest time" if run.get("clock") == "pytest" else "wall time"
        rival = by_name.get(run.get("faster_than")) if run.get("faster_than") else None
        if run.get("faster_than"):
            goal = rival.get("seconds") if rival and rival.get("returncode") == 0 else None
            head = (
                f"| {title}: less {clock} than {run['faster_than']} ({_fmt(goal, '.1f')} s) on this machine"
            )
        else:
            head = f"| {title} <= {_fmt(goal, '.0f')} s of {clock} on this machine"
        if run.get("skipped"):
            rows.append(f"{head} | not run: {run['skipped']} | | not measured |")
            continue
        secs = run.get("seconds")
        load = f"{_fmt((run.get('loadavg_before') or [None])[0])} / {_fmt((run.get('loadavg_after') or [None])[0])}"
        if run.get("faster_than"):
            ok = None if secs is None or goal is None else (secs < goal and run.get("returncode") == 0)
        else:
            ok = None if secs is None or goal is None else (secs <= goal and run.get("returncode") == 0)
        status = "" if run.get("returncode") == 0 else f"; exit status {run.get('returncode')}"
        rows.append(
            f"{head} | {_fmt(secs, '.1f')} s ({run.get('summary', '')}; dequantised-model cache {run.get('cache', 'n/a')}"
            f"{status}) | {load} | {_verdict(ok)} |"
        )
    if not runs:
        rows.append(
            "| end-to-end runs (claims, Gemma claims, audit) | not measured (`benchmarks/time_runs.py`) | | not measured |"
        )
    return rows


def targets(
    fwd: dict, ppl: dict, lc: dict | None, shapes: list[tuple[int, int]], runs: list[dict] | None = None
) -> list[str]:
    rows = ["| target | measured | load avg (1 min) start / end | verdict |", "| --- | --- | --- | --- |"]
    for t, b in shapes:
        entry = fwd.get((t, b, "capture"))
        r = entry[1].get("ratio_to_plain_paired_median") if entry else None
        goal = capture_target(t)
        rows.append(
            f"| capture <= {goal}x plain SDPA forward, T = {t} (B = {b}) | {_fmt(r)}x (paired median) "
            f"| {_load_text(entry[1]) if entry else 'n/a'} | {_verdict(None if r is None else r <= goal)} |"
        )
    big = max((s for s in shapes if s[0] == 2048), default=None) or (max(shapes) if shapes else None)
    if big:
        cap, up = fwd.get((*big, "capture")), fwd.get((*big, "upstream"))
        speed = bestbest = None
        if cap and up:
            bestbest = up[0]["min"] / cap[0]["min"]
            r_up, r_cap = (
                up[1].get("ratio_to_plain_paired_median"),
                cap[1].get("ratio_to_plain_paired_median"),
            )
            speed = r_up / r_cap if r_up and r_cap else bestbest
        rows.append(
            f"| capture >= {TARGETS['upstream_speedup']:.0f}x faster than upstream's per-layer method, T = {big[0]} "
            f"| {_fmt(speed, '.1f')}x (ratio of paired medians; best/best {_fmt(bestbest, '.1f')}x) "
            f"| {_load_text(up[1]) if up else 'n/a'} "
            f"| {_verdict(None if speed is None else speed >= TARGETS['upstream_speedup'])} |"
        )
    ratio = None
    if lc:
        by = {(s["path"], s["tokens"]): s for s in lc.get("summary", [])}
        cap, eager = by.get(("capture", 4096)), by.get(("eager_attn", 4096))
        if cap and eager and cap["extra_bytes"] > 0:
            ratio = eager["extra_bytes_full_model"] / cap["extra_bytes"]
            rows.append(
                f"| capture's extra peak memory >= {TARGETS['memory_ratio']:.0f}x less than output_attentions, T = 4096 "
                f"| {eager['extra_bytes_full_model'] / MiB:,.0f} MiB vs {cap['extra_bytes'] / MiB:,.0f} MiB = {ratio:.0f}x "
                f"(eager: first {eager['layers_run']} layers, scaled to 30){_body_note(by, eager)} "
                f"| see the long-context run | {_verdict(ratio >= TARGETS['memory_ratio'])} |"
            )
    if ratio is None:
        rows.append(
            "| capture's extra memory >= 20x less than output_attentions, T = 4096 | not measured | | not measured |"
        )
    if "ppl_lines_batched" in ppl:
        paired = ppl["ppl_lines_batched"][1].get("ratio_to_plain_paired_median")
        speed = 1 / paired if paired else None
        rows.append(
            f"| batched perplexity >= {TARGETS['ppl_ratio']}x tokens/s of a plain batched forward | {_fmt(speed)}x (paired median) "
            f"| {_load_text(ppl['ppl_lines_batched'][1])} | {_verdict(None if speed is None else speed >= TARGETS['ppl_ratio'])} |"
        )
    rows += run_rows(runs or [])
    return rows + [""]


def render(
    bench: dict,
    lc: dict | None,
    load_before: str | None,
    load_after: str | None,
    notes: str | None,
    runs: list[dict] | None = None,
    studies: str | None = None,
) -> str:
    machine = bench.get("machine_info", {})
    extra = bench.get("drope_check", {})
    shapes = [tuple(s) for s in extra.get("shapes", [])]
    fwd, ppl, mem, gfwd, gmem = split(bench)
    if not shapes:
        shapes = sorted({(t, b) for t, b, _ in fwd})
    date = bench.get("datetime") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    commit = bench.get("commit_info", {})
    out = [
        "# Performance: one-pass capture vs the alternatives",
        "",
        "Generated by `benchmarks/make_table.py` from one run of `pytest benchmarks/ -n 0 --benchmark-enable` "
        "(`tox -e bench`) and `benchmarks/long_context.py`. Do not edit by hand; rerun (see *Reproduce*).",
        "",
        "## Run",
        "",
        f"- date: {date} (benchmarks finished {extra.get('finished', 'n/a')})",
        f"- commit: {commit.get('id', 'n/a')}{' (dirty working tree)' if commit.get('dirty') else ''}",
        f"- CPU: {machine.get('cpu_model', machine.get('cpu', {}).get('brand_raw', 'n/a'))}, {machine.get('cpu_count')} cores, "
        f"{_fmt((machine.get('mem_total_kib') or 0) / 2**20, '.1f')} GiB RAM; GPU: {machine.get('gpu') or 'none'}",
        f"- torch {machine.get('torch')} ({machine.get('torch_threads')} threads), transformers {machine.get('transformers')}, "
        f"numpy {machine.get('numpy')}, Python {machine.get('python_version')}; thread env: {machine.get('thread_env') or 'none set'}",
        "- model: embedded SmolLM2-135M-Instruct (30 layers, 9 heads / 3 KV heads, d = 576), float32, CPU",
        f"- text: {extra.get('text', 'n/a')}; rows are consecutive slices of it, BOS first",
        f"- rounds per path: {extra.get('rounds')} timed (upstream's method: 1), each preceded by an untimed plain forward",
        f"- **machine load**: `uptime` before: `{load_before or 'n/a'}`; after: `{load_after or 'n/a'}`; "
        f"load average at benchmark start / end: {extra.get('loadavg_at_start')} / {extra.get('loadavg_at_end')}",
        "",
    ]
    if notes:
        out += [notes.strip(), ""]
    out += [
        "## Targets",
        "",
        "The machine may be shared with other jobs: every timing carries the 1-minute load average at its start "
        "and end, and each ratio pairs a path with a plain forward run right before it, under the same load. "
        "On 2 cores a load above ~2 means the numbers are slowed by other work and only the paired ratios compare.",
        "",
    ] + targets(fwd, ppl, lc, shapes, runs)
    out += ["## Forward paths (CPU)", ""] + forward_table(fwd, mem, shapes)
    out += [
        "## Perplexity evaluation (CPU, `lines` protocol, the 20 WikiText-2 rows, BOS + up to 511 tokens)",
        "",
    ]
    out += ppl_table(ppl)
    out += [
        "## Long context: peak memory against T (CPU, one sequence)",
        "",
        'Each row is a fresh process running one sequence of T real tokens. "Extra" is the path\'s peak '
        "minus the plain forward's at the same T and layer count. `output_attentions` keeps "
        "30 x 9 x T^2 float32 maps (18 GB at T = 4096), so at T = 4096 it runs on the first 4 layers and "
        "its per-layer extra is scaled to 30 layers (each layer's map is kept independently).",
        "",
    ] + long_context_table(lc)
    out += ["## GPU", ""] + gpu_section(gfwd, gmem, machine)
    if studies:
        out += [studies.strip(), ""]
    out += [
        "## Reproduce",
        "",
        "```sh",
        "uptime > uptime_before.txt",
        "tox -e bench        # = pytest benchmarks/ -n 0 --benchmark-enable --benchmark-json=bench.json",
        "python benchmarks/long_context.py --out long_context.json",
        "python benchmarks/time_runs.py --out runs.json   # README command 1, the Gemma claims run, the audit, timed",
        "uptime > uptime_after.txt",
        "python benchmarks/make_table.py bench.json --long-context long_context.json --runs runs.json \\",
        '    --load-before "$(cat uptime_before.txt)" --load-after "$(cat uptime_after.txt)" --out docs/performance.md',
        "python benchmarks/compare_ratios.py benchmarks/baseline_bench.json bench.json   # > 20% ratio regressions",
        "```",
        "",
        "Quick try with small sizes: `DROPE_BENCH_SHAPES=128x2 DROPE_BENCH_ROUNDS=1 DROPE_BENCH_MEMORY=0 "
        "pytest benchmarks/ -n 0 --benchmark-enable`. Timings on a machine shared with other jobs are noisy; "
        "compare ratios from one run only.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument(
        "--long-context", type=Path, nargs="*", default=None, help="long_context.py JSON file(s)"
    )
    parser.add_argument("--load-before", default=None, help="`uptime` output before the run")
    parser.add_argument("--load-after", default=None, help="`uptime` output after the run")
    parser.add_argument("--notes", default=None, help="a paragraph to add under Run (e.g. what else ran)")
    parser.add_argument("--runs", type=Path, default=None, help="time_runs.py JSON (end-to-end runs timed)")
    parser.add_argument(
        "--studies",
        type=Path,
        default=STUDIES,
        help="hand-written measurements of design options, copied in verbatim (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args(argv)
    text = render(
        load(args.bench) or {},
        load_long_context(args.long_context),
        args.load_before,
        args.load_after,
        args.notes,
        (load(args.runs) or {}).get("runs", []),
        args.studies.read_text() if args.studies and args.studies.is_file() else None,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
