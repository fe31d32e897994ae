"""``drope-check``: measure a pair, or judge a measurements file against expected/<pair>.toml.

    drope-check measure --pair smollm2-135m --out m.json [--interventions all] [--wikitext PATH]
    drope-check measure --rope DIR_OR_ID --drope DIR_OR_ID --out m.json
    drope-check judge m.json --pair smollm2-135m [--report-dir DIR]
    drope-check pairs
    drope-check audit --pair smollm2-135m --out-dir audit [--variants a,b,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from drope_check.protocol import SPIKE_RULES, Protocol


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON through a temporary file and a rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _add_measure_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--pair", default=None, help="registered pair (default smollm2-135m); see `drope-check pairs`")
    src.add_argument("--rope", default=None, help="custom pair: RoPE model hub id or local directory (with --drope)")
    parser.add_argument("--drope", default=None, help="custom pair: DroPE model hub id or local directory")
    parser.add_argument("--bos-token", default=None, help="token to prepend as BOS (custom pairs; default: the tokenizer's)")
    parser.add_argument("--out", required=True, type=Path, help="measurements JSON to write")
    parser.add_argument("--wikitext", default=None, help="local WikiText-2 raw test file (wiki.test.raw); env DROPE_CHECK_WIKITEXT")
    parser.add_argument("--no-text-fallback", action="store_true", help="fail instead of using gensim's Wikipedia sample")
    parser.add_argument("--text-set", choices=("lines", "concatenated"), default="lines",
                        help="'lines': upstream's WikiText-2 lines > 100 chars; 'concatenated': the split joined and cut "
                        "into --n-texts sequences of --max-tokens (long context)")
    parser.add_argument("--n-texts", type=int, default=Protocol.n_texts)
    parser.add_argument("--max-tokens", type=int, default=Protocol.max_tokens, help="tokens per sequence, BOS included")
    parser.add_argument("--batch-size", type=int, default=Protocol.batch_size)
    parser.add_argument("--stats-dtype", choices=("auto", "float32", "float64"), default=Protocol.stats_dtype)
    parser.add_argument("--attention-source", choices=("model", "projections"), default="model",
                        help="'projections' = upstream's manual q_proj/k_proj attention without rotary (a confound)")
    parser.add_argument("--pad-to", type=int, default=None, help="right-pad every sequence to N tokens (upstream RoPE confound)")
    parser.add_argument("--padding-in-stats", action="store_true", help="keep pad rows in the statistics (with --pad-to)")
    parser.add_argument("--sink-tau", type=float, default=Protocol.sink_tau)
    parser.add_argument("--sink-strict", action="store_true", help="a sink needs score > tau (Gu et al.) instead of >=")
    parser.add_argument("--interventions", default="all",
                        help=f"'all', 'none', or a comma list of bos_mlp_ablation:{{{','.join(SPIKE_RULES)}}}, qk_disruption:{{report,jin}}")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--quantization", choices=("nf4", "nf4-double", "fp4"), default=None,
                        help="bitsandbytes 4-bit with fp16 compute, as upstream ran (GPU)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="opt in to the checkpoint's remote code instead of drope_check's native DroPE loader")
    parser.add_argument("--no-progress", action="store_true")


def _measure(args: argparse.Namespace) -> int:
    from drope_check.measure import MeasureOptions, measure_pair
    from drope_check.models import custom_pair

    if args.rope or args.drope:
        if not (args.rope and args.drope):
            raise SystemExit("drope-check measure: a custom pair needs both --rope and --drope")
        pair = custom_pair(args.rope, args.drope, args.bos_token)
    else:
        pair = args.pair or "smollm2-135m"
    protocol = Protocol(
        name="cli",
        text_set=args.text_set,
        n_texts=args.n_texts,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        stats_dtype=args.stats_dtype,
        attention_source=args.attention_source,
        pad_to=args.pad_to,
        padding_in_stats=args.padding_in_stats,
        sink_tau=args.sink_tau,
        sink_strict=args.sink_strict,
    )
    options = MeasureOptions(
        wikitext=args.wikitext,
        device=args.device,
        dtype=args.dtype,
        quantization=args.quantization,
        trust_remote_code=args.trust_remote_code,
        allow_text_fallback=not args.no_text_fallback,
        progress=not args.no_progress,
    )
    result = measure_pair(pair, protocol, args.interventions, options)
    write_json_atomic(args.out, result)
    for role, model in result["models"].items():
        s = model["scalars"]
        print(
            f"{role:5s} {model['variant']:13s} ppl {s['ppl_baseline']:.3f}  sink rate {s['sink_rate_average']:.3f}  "
            f"spike L{s['bos_spike_layer_argmax_ratio']} (max-write L{s['bos_spike_layer_max_write']})  "
            f"peak BOS norm {s['peak_bos_norm']:.1f} @ L{s['peak_bos_norm_layer']}  "
            f"min entropy {s['min_entropy']:.4f} @ L{s['min_entropy_layer']}"
        )
        for name, iv in model.get("interventions", {}).items():
            layer = f" L{iv['layer']}" if iv.get("layer") is not None else ""
            print(f"      {name}{layer}: ppl {iv['ppl']:.3f} ({iv['ratio']:.3f}x)")
    print(f"wrote {args.out}")
    return 0


def _judge(args: argparse.Namespace) -> int:
    from drope_check.report import judge_file

    verdicts = judge_file(args.measurements, args.pair, args.report_dir)
    counts: dict[str, int] = {}
    for verdict in verdicts:
        counts[verdict.outcome] = counts.get(verdict.outcome, 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    print(f"judged {len(verdicts)} claims against expected/{args.pair}.toml ({summary}); report in {args.report_dir}")
    # A claim that does not hold, a path that is missing, or a recorded non-generalisation that
    # now holds all need a person: exit non-zero.
    return 1 if any(v.outcome in ("fail", "error", "xpass") for v in verdicts) else 0


def _pairs(_args: argparse.Namespace) -> int:
    from drope_check.models import PAIRS, pair_available

    for name, pair in PAIRS.items():
        ok, why = pair_available(name)
        print(f"{name:14s} {'available' if ok else 'unavailable'}: {why}\n    {pair.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drope-check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    measure = sub.add_parser("measure", help="measure a model pair and write the measurements JSON")
    _add_measure_args(measure)
    measure.set_defaults(func=_measure)
    judge = sub.add_parser("judge", help="judge a measurements JSON against expected/<pair>.toml")
    judge.add_argument("measurements", type=Path)
    judge.add_argument("--pair", required=True)
    judge.add_argument("--report-dir", type=Path, default=Path("claims-report"))
    judge.set_defaults(func=_judge)
    pairs = sub.add_parser("pairs", help="list registered pairs and whether they can be loaded here")
    pairs.set_defaults(func=_pairs)
    from drope_check.audit import add_cli as add_audit_cli

    add_audit_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
