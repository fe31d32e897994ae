"""The audit's entry points: ``drope-check audit`` and ``pytest claims/ --audit``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from drope_check.audit.author import (
    default_author_files,
    has_author_files,
)
from drope_check.audit.cells import (
    FRAGILE,
    NOT_EVALUATED,
    ROBUST,
    UPSTREAM_ONLY,
    not_measured,
)
from drope_check.audit.render import (
    write_audit,
)
from drope_check.audit.run import AuditError, default_source, run_audit
from drope_check.audit.variants import get_variants
from drope_check.claims import api as claims
from drope_check.engine.protocol import FAITHFUL


def add_cli(sub: Any) -> None:
    """Register ``drope-check audit`` on the CLI's subparsers (cli.py calls this)."""
    parser = sub.add_parser(
        "audit", help="re-judge every claim of a pair under each protocol variant (confound audit)"
    )
    parser.add_argument("--pair", default="smollm2-135m", help="registered pair with an expected/<pair>.toml")
    parser.add_argument(
        "--out-dir", type=Path, default=Path("audit"), help="where audit.md, audit.json, the heatmap go"
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="comma list (default: all; suite is always included); see docs/audit.md",
    )
    parser.add_argument(
        "--n-texts",
        type=int,
        default=FAITHFUL.n_texts,
        help="texts of every variant (recorded in each protocol; goldens assume the default)",
    )
    parser.add_argument(
        "--wikitext", default=None, help="local WikiText-2 raw test file; env DROPE_CHECK_WIKITEXT"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument(
        "--upstream",
        default=None,
        help="the report author's result files for the author-files column (a git clone or a "
        "<commit>/<path> folder); default $DROPE_CHECK_UPSTREAM, else the shipped copy",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=cli_audit)


def models_here(pair: str, device: str | None = None) -> tuple[bool, str]:
    """Whether the pair's models can be loaded here (on ``device``, when one is named), and if not
    why (never raises)."""
    try:
        from drope_check.models.availability import pair_available

        ok, reason = pair_available(pair, device=device)
    except Exception as exc:  # a broken engine is a reason not to measure, said in the audit
        return False, f"pair_available({pair!r}) raised {type(exc).__name__}: {exc}"
    return bool(ok), str(reason)


def summary_lines(pair: str, audit: Mapping[str, Any], where: Path) -> list[str]:
    """What the CLI and ``pytest --audit`` print for one audit: robustness counts, reproduction, the file."""
    s = audit["summary"]
    lines = [
        f"audit of {pair}: {ROBUST} {s[ROBUST]}, {FRAGILE} {s[FRAGILE]}, {UPSTREAM_ONLY} {s[UPSTREAM_ONLY]}, "
        f"{NOT_EVALUATED} {s[NOT_EVALUATED]}: {where}"
    ]
    lines += [
        f"audit of {pair}: suite variants not measured: {reason}" for reason in sorted(not_measured(audit))
    ]
    if audit.get("reproduction"):
        lines.append(f"audit of {pair}: {audit['reproduction']['line']}")
    return lines


def cli_audit(args: Any) -> int:
    """``drope-check audit``: user errors (unknown pair or variant, bad --n-texts or --upstream) exit 2 before
    any weights load. Without the pair's models, a pair with the author's files is audited without them
    (the ``author-files`` column filled, every variant *not measured* with the reason); any other pair exits 2."""
    from drope_check.measurements.measure import MeasureOptions
    from drope_check.models.pairs import get_pair
    from drope_check.sources.author_files import AuthorFilesBroken, locate_upstream

    try:
        get_pair(args.pair)
        claim_set = claims.load_claims(args.pair)
        get_variants(args.variants)
        base = FAITHFUL.replace(n_texts=args.n_texts)
        if args.upstream is not None:
            locate_upstream(args.upstream, [])
    except (KeyError, ValueError, FileNotFoundError, AuthorFilesBroken) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"drope-check audit: {message}", file=sys.stderr)
        return 2
    ok, why = models_here(args.pair, args.device)
    if not ok and not has_author_files(claim_set):
        print(
            f"drope-check audit: pair {args.pair} cannot be measured here ({why}) and its claims have no "
            "author-files tables: nothing to audit without its models",
            file=sys.stderr,
        )
        return 2
    options = MeasureOptions(
        wikitext=args.wikitext, device=args.device, dtype=args.dtype, progress=not args.no_progress
    )
    start = time.perf_counter()
    result = run_audit(
        args.pair,
        args.variants,
        options=options,
        base=base,
        claim_set=claim_set,
        progress=not args.no_progress,
        models_unavailable=None if ok else why,
        author_files=lambda: default_author_files(args.upstream),
    )
    write_audit(result, args.out_dir)
    audit = result["audit"]
    print(
        f"audit of {args.pair}: {len(audit['claims'])} claims x {len(audit['variants'])} variants in "
        f"{time.perf_counter() - start:.0f} s"
    )
    for line in summary_lines(args.pair, audit, args.out_dir / "audit.md"):
        print(line)
    return 0


def audit_session(
    config: Any,
    state: Any,
    pairs: Sequence[str],
    report_dir: str | None,
    options: Any,
    pair_available: Callable[[str], tuple[bool, str]],
) -> list[str]:
    """Run the audit of every pair of a pytest session; returns lines for the terminal summary.

    Writes ``<report_dir>/audit/<pair>/`` (``./audit/<pair>/`` without ``--claims-report``), where
    the claims report finds it. A pair whose models are not available here is audited without them
    when its claims have author-files tables (the ``author-files`` column from the session's copy of
    the author's files, every variant *not measured* with the reason); any other such pair is listed
    as not audited.
    """
    root = Path(report_dir) if report_dir else Path(".")
    if not root.is_absolute():
        root = Path(str(config.invocation_params.dir)) / root
    lines = []
    for pair in pairs:
        ok, reason = pair_available(pair)
        claim_set = state.claim_set(pair)
        if not ok and not has_author_files(claim_set):
            lines.append(f"audit of {pair}: not run ({reason})")
            continue
        out = root / "audit" / pair
        try:
            result = run_audit(
                pair,
                source=default_source(pair, options) if ok else None,
                claim_set=claim_set,
                progress=True,
                models_unavailable=None if ok else reason,
                author_files=state.upstream,
            )
        except AuditError as exc:
            lines.append(f"audit failed: {pair}: {exc}")
            continue
        write_audit(result, out)
        lines += summary_lines(pair, result["audit"], out / "audit.md")
    return lines
