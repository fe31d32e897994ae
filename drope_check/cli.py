"""``drope-check``: measure a pair, or judge a measurements file against expected/<pair>.toml.

    drope-check measure --pair smollm2-135m --out m.json [--interventions all] [--wikitext PATH]
    drope-check measure --rope DIR_OR_ID --drope DIR_OR_ID --out m.json
    drope-check judge m.json [--pair smollm2-135m] [--report-dir DIR]
    drope-check judge a.json b.json ... --report-dir DIR        (one report for several files)
    drope-check import-upstream SOURCE --out upstream.json [--era head]
    drope-check pairs
    drope-check fetch --pair llama2-7b
    drope-check audit --pair smollm2-135m --out-dir audit [--variants a,b,...]

A user error (a bad path or option value) exits 2 with one sentence on stderr; add --debug for the
traceback. Ctrl-C exits 130 and never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

from drope_check.atomic import atomic_write_json
from drope_check.engine.protocol import SPIKE_RULES, Protocol
from drope_check.errors import UserError


def _add_measure_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--pair", default=None, help="registered pair (default smollm2-135m); see `drope-check pairs`"
    )
    src.add_argument(
        "--rope", default=None, help="custom pair: RoPE model hub id or local directory (with --drope)"
    )
    parser.add_argument("--drope", default=None, help="custom pair: DroPE model hub id or local directory")
    parser.add_argument(
        "--bos-token", default=None, help="token to prepend as BOS (custom pairs; default: the tokenizer's)"
    )
    parser.add_argument("--out", required=True, type=Path, help="measurements JSON to write")
    parser.add_argument(
        "--wikitext",
        default=None,
        help="local WikiText-2 raw test file (wiki.test.raw); env DROPE_CHECK_WIKITEXT",
    )
    parser.add_argument(
        "--no-text-fallback", action="store_true", help="fail instead of using gensim's Wikipedia sample"
    )
    parser.add_argument(
        "--text-set",
        choices=("lines", "concatenated"),
        default="lines",
        help="'lines': upstream's WikiText-2 lines > 100 chars; 'concatenated': the split joined and cut "
        "into --n-texts sequences of --max-tokens (long context)",
    )
    parser.add_argument("--n-texts", type=int, default=Protocol.n_texts)
    parser.add_argument(
        "--max-tokens", type=int, default=Protocol.max_tokens, help="tokens per sequence, BOS included"
    )
    parser.add_argument("--batch-size", type=int, default=Protocol.batch_size)
    parser.add_argument("--stats-dtype", choices=("auto", "float32", "float64"), default=Protocol.stats_dtype)
    parser.add_argument(
        "--attention-source",
        choices=("model", "projections"),
        default="model",
        help="'projections' = upstream's manual q_proj/k_proj attention without rotary (a confound)",
    )
    parser.add_argument(
        "--pad-to",
        type=int,
        default=None,
        help="right-pad every sequence to N tokens (upstream RoPE confound)",
    )
    parser.add_argument(
        "--padding-in-stats", action="store_true", help="keep pad rows in the statistics (with --pad-to)"
    )
    parser.add_argument("--sink-tau", type=float, default=Protocol.sink_tau)
    parser.add_argument(
        "--sink-strict", action="store_true", help="a sink needs score > tau (Gu et al.) instead of >="
    )
    parser.add_argument(
        "--interventions",
        default="all",
        help=f"'all', 'none', or a comma list of bos_mlp_ablation:{{{','.join(SPIKE_RULES)}}}, qk_disruption:{{report,jin}}",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on GPU, fp32 on CPU)"
    )
    parser.add_argument(
        "--quantization",
        choices=("nf4", "nf4-double", "fp4"),
        default=None,
        help="bitsandbytes 4-bit with fp16 compute and fp16 activations, as upstream ran (GPU)",
    )
    parser.add_argument(
        "--device-map",
        default=None,
        metavar="MAP",
        help="accelerate's device map for models larger than one device: auto, balanced, balanced_low_0 or "
        "sequential (layers over every visible GPU, then CPU memory, then --offload-folder); not with --device",
    )
    parser.add_argument(
        "--offload-folder",
        default=None,
        metavar="DIR",
        help="with --device-map: where layers that fit neither the GPUs nor CPU memory are kept",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="opt in to the checkpoint's remote code instead of drope_check's native DroPE loader",
    )
    parser.add_argument(
        "--allow-incomplete-weights",
        action="store_true",
        help="measure a checkpoint whose tensors do not match the model (missing ones keep their random "
        "initialisation, unexpected ones are ignored); refused otherwise, and recorded in the provenance",
    )
    parser.add_argument("--no-progress", action="store_true")


def _measure(args: argparse.Namespace) -> int:
    import re

    from drope_check.measurements.measure import MeasureOptions, measure_pair, resolve_interventions
    from drope_check.models.pairs import PAIRS, custom_pair
    from drope_check.preflight import check_output_file

    if args.rope or args.drope:
        if not (args.rope and args.drope):
            raise UserError(
                "a custom pair needs both --rope and --drope (each a local model directory or a hub id)"
            )
        pair = custom_pair(args.rope, args.drope, args.bos_token)
    else:
        pair = args.pair or "smollm2-135m"
        if pair not in PAIRS:
            raise UserError(
                f"--pair {pair!r} is not registered; choose one of {', '.join(sorted(PAIRS))} (see `drope-check pairs`)"
            )
    try:
        resolve_interventions(args.interventions)
    except ValueError as exc:
        raise UserError(f"--interventions {args.interventions!r}: {exc}") from None
    try:
        protocol = _protocol(args)
    except ValueError as exc:  # Protocol's own checks; its field names are the options' names
        raise UserError(
            re.sub(r"Protocol\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(exc))
        ) from None
    if check_output_file(args.out):
        print(f"note: --out {args.out} exists and will be replaced when the run completes", file=sys.stderr)
    options = MeasureOptions(
        wikitext=args.wikitext,
        device=args.device,
        dtype=args.dtype,
        quantization=args.quantization,
        trust_remote_code=args.trust_remote_code,
        allow_text_fallback=not args.no_text_fallback,
        progress=not args.no_progress,
        allow_incomplete_weights=args.allow_incomplete_weights,
        device_map=args.device_map,
        offload_folder=args.offload_folder,
    )
    result = measure_pair(pair, protocol, args.interventions, options)
    replaced = args.out.exists()
    try:
        atomic_write_json(args.out, result)
    except OSError as exc:  # the folder went away or filled up during the run: keep the measurements
        fd, rescue = tempfile.mkstemp(prefix="drope-check-measurements.", suffix=".json")
        os.close(fd)
        atomic_write_json(Path(rescue), result)
        raise UserError(
            f"cannot write --out {args.out} ({exc.strerror or exc}); the measurements were saved to {rescue}"
        ) from exc
    _print_summary(result)
    print(f"wrote {args.out}" + (" (replaced the previous file)" if replaced else ""))
    return 0


def _protocol(args: argparse.Namespace) -> Protocol:
    return Protocol(
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


def _print_summary(result: dict) -> None:
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


def _judge(args: argparse.Namespace) -> int:
    from drope_check.claims.claim_file import ClaimsFileError, MeasurementsMismatch
    from drope_check.measurements.validate import MeasurementsFileError
    from drope_check.report.merge import judge_files
    from drope_check.report.terminal import unchecked_pair_lines

    try:
        verdicts = judge_files(
            args.measurements, args.pair, args.report_dir, as_pair=args.as_pair, strict=args.strict
        )
    except (MeasurementsFileError, MeasurementsMismatch, ClaimsFileError) as exc:
        # a user error: one sentence naming the file, the JSON path or key, and what was expected
        print(f"drope-check judge: {exc}", file=sys.stderr)
        return 2
    pairs = list(dict.fromkeys(v.pair for v in verdicts))
    for line in unchecked_pair_lines([v.to_dict() for v in verdicts], pairs):
        print(line, file=sys.stderr)
    if args.as_pair and verdicts and verdicts[0].measured_models:
        print(f"--as-pair: judged {verdicts[0].measured_models} against the claims about pair {args.pair}")
    counts: dict[str, int] = {}
    for verdict in verdicts:
        counts[verdict.outcome] = counts.get(verdict.outcome, 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    files = (
        f"{len(args.measurements)} measurements files"
        if len(args.measurements) > 1
        else str(args.measurements[0])
    )
    print(
        f"judged {len(verdicts)} claims of {', '.join(pairs)} from {files} ({summary}); report in {args.report_dir}"
    )
    # A claim that does not hold, a path that is missing, or a recorded non-generalisation that
    # now holds all need a person: exit non-zero.
    return 1 if any(v.outcome in ("fail", "error", "xpass") for v in verdicts) else 0


def _pairs(_args: argparse.Namespace) -> int:
    """Per pair: where its weights stand here (embedded; or per hub model cached / downloadable with
    its size / gated without access, naming HF_TOKEN / not found / unreachable with the reason), and
    whether it needs a GPU this machine lacks. Never downloads."""
    from drope_check.models.availability import gpu_refusal, pair_available
    from drope_check.models.hub import hub_models, human_size, model_status
    from drope_check.models.pairs import PAIRS

    for name, pair in PAIRS.items():
        models = hub_models(pair)
        if not models:
            ok, why = pair_available(name)
            print(f"{name:14s} {'embedded' if ok else 'unavailable'}: {why}")
        else:
            statuses = [model_status(m.source, m.revision) for m in models]
            refused = [s for s in statuses if not s.usable]
            to_download = [s for s in statuses if s.state == "downloadable"]
            if refused:
                state = " / ".join(dict.fromkeys(s.state for s in refused))
            elif to_download:
                state = f"downloadable ({human_size(sum(s.size or 0 for s in to_download))})"
            else:
                state = "cached"
            print(f"{name:14s} {state}")
            for model, status in zip(models, statuses, strict=True):
                print(f"    {model.role:5s} {model.source}: {status.summary()}")
            why_not = gpu_refusal(pair, None)
            if why_not is not None:
                print(f"    {why_not}")
        print(f"    {pair.description}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    """``drope-check fetch --pair NAME``: download what the pair's hub models lack into the HF cache
    (nothing else: no model loads). Exit 0 when everything is cached or downloaded; a gated repo
    without access, an unknown repo or an unreachable hub is one sentence and exit 2, before any
    download."""
    from drope_check.models.hub import hub_models
    from drope_check.models.hub_download import fetch_pair
    from drope_check.models.pairs import PAIRS

    if args.pair not in PAIRS:
        raise UserError(
            f"--pair {args.pair!r} is not registered; choose one of {', '.join(sorted(PAIRS))} (see `drope-check pairs`)"
        )
    pair = PAIRS[args.pair]
    if not hub_models(pair):
        print(f"{args.pair}: nothing to download (its models are {pair.rope.source} and {pair.drope.source})")
        return 0
    folders = fetch_pair(
        pair,
        progress=not args.no_progress,
        trust_remote_code=args.trust_remote_code,
        say=lambda line: print(line, flush=True),
    )
    print(f"{args.pair}: ready ({len(folders)} models in the HF cache)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drope-check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    measure = sub.add_parser("measure", help="measure a model pair and write the measurements JSON")
    _add_measure_args(measure)
    measure.set_defaults(func=_measure)
    judge = sub.add_parser(
        "judge", help="judge measurements JSONs against expected/<pair>.toml, into one report"
    )
    judge.add_argument(
        "measurements",
        type=Path,
        nargs="+",
        help="one or more measurements files (one per pair, or per pair x variant, e.g. a CI matrix's "
        "artifacts): one report for all; two files holding the same pair, model and variant must agree",
    )
    judge.add_argument(
        "--pair",
        default=None,
        help="judge every file against this pair's claims (default: the pair each file names; needed "
        "for a custom measurement)",
    )
    judge.add_argument("--report-dir", type=Path, default=Path("claims-report"))
    judge.add_argument(
        "--as-pair",
        action="store_true",
        help="judge measurements of other models than the pair's (refused otherwise); every verdict names them",
    )
    judge.add_argument(
        "--strict",
        action="store_true",
        help="a claim that was not evaluated (other than one about a recalibrated DroPE model) is an error",
    )
    judge.set_defaults(func=_judge)
    from drope_check.sources import upstream

    imported = sub.add_parser(
        "import-upstream", help="the report author's committed results as a llama2-7b measurements JSON"
    )
    upstream.add_arguments(imported)
    imported.set_defaults(func=upstream.run)
    pairs = sub.add_parser(
        "pairs", help="list registered pairs: cached / downloadable / gated / unreachable / embedded"
    )
    pairs.set_defaults(func=_pairs)
    fetch = sub.add_parser("fetch", help="download a pair's hub weights into the HF cache (and nothing else)")
    fetch.add_argument("--pair", required=True, help="registered pair, e.g. llama2-7b")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    fetch.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="also download the checkpoint's own code (*.py), for --trust-remote-code runs",
    )
    fetch.set_defaults(func=_fetch)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    for command in sub.choices.values():  # accepted after the command too
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    from drope_check.audit.commands import add_cli as add_audit_cli

    add_audit_cli(sub)
    return parser


def _one_line_warning(command: str):
    """``warnings.showwarning`` for a run: drope_check's own warnings (a measurement that is valid
    but must be said, e.g. a RoPE model past its trained positions) as one line on stderr; any
    other warning as Python shows it."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if category.__module__.startswith("drope_check"):
            print(f"drope-check {command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    """Run a command. A :class:`UserError` exits 2 with its one sentence on stderr (the traceback
    too with ``--debug``); Ctrl-C exits 130 (atomic writes leave no partial file)."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "report_dir", None) is not None:
            from drope_check.preflight import check_output_folder

            check_output_folder(args.report_dir, "--report-dir")
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return int(args.func(args))
    except UserError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"drope-check {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"drope-check {args.command}: interrupted; no partial output file was left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
