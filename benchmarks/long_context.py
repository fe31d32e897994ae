"""Long-context memory of the capture path: peak RSS above the baseline at T = 1024 ... 16384.

Each point is a fresh process (``memory_probe.probe_subprocess``) running ONE real-text sequence of
T tokens (the WikiText-2 test split joined with ``"\\n\\n"``, BOS first), so this does not depend on
the measurement engine's text selection (whose WikiText rows are all shorter than 512 tokens).

* ``sdpa`` and ``capture`` at every T: capture's extra memory is ``capture - sdpa`` (the plain
  forward's own peak is the [T, vocab] logits at the end, which can hide the capture's buffers);
* ``sdpa_body`` and ``capture_body``: the same without the LM head, so the peak is inside the
  layers and ``capture_body - sdpa_body`` shows the capture's own buffers growing with T;
* ``eager_attn`` (``output_attentions=True``) on the full model only where it fits the memory cap
  (``30 x 9 x T^2 x 4`` bytes of retained maps: 1.1 GB at 2048, 18 GB at 4096), and at
  ``--eager-layers-tokens`` on the first ``--eager-layers`` layers with the per-layer cost scaled to 30.

Writes JSON (``--out``) for ``make_table.py`` and prints a table with the growth factor of each
path's extra memory per doubling of T (2 = linear, 4 = quadratic)::

    python benchmarks/long_context.py --out long_context.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory_probe  # noqa: E402

#: Never start a probe whose attention maps alone would need more than this (shared machine).
MEMORY_CAP_BYTES = 12e9
EMBEDDED_LAYERS, EMBEDDED_HEADS = 30, 9
PLAIN = ("sdpa", "sdpa_body")


def eager_maps_bytes(tokens: int, layers: int = EMBEDDED_LAYERS, batch: int = 1) -> float:
    return layers * EMBEDDED_HEADS * batch * tokens * tokens * 4.0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run(args: argparse.Namespace) -> dict:
    rows = []

    def probe(path: str, tokens: int, layers: int | None = None) -> None:
        est = eager_maps_bytes(tokens, layers or EMBEDDED_LAYERS) if path == "eager_attn" else 0.0
        if est > MEMORY_CAP_BYTES:
            print(f"skip {path} T={tokens}: ~{est / 1e9:.1f} GB of attention maps > cap", flush=True)
            return
        result = memory_probe.probe_subprocess(path, tokens, 1, layers, timeout=args.timeout)
        rows.append(result)
        print(
            f"{path:11s} T={tokens:5d} layers={result['layers']:2d}  delta {result['delta_bytes'] / 2**20:9.1f} MiB  "
            f"{result['seconds']:8.1f} s",
            flush=True,
        )

    for tokens in _ints(args.tokens):
        probe("sdpa", tokens)
        probe("capture", tokens)
    for tokens in _ints(args.body_tokens):
        probe("sdpa_body", tokens)
        probe("capture_body", tokens)
    for tokens in _ints(args.eager_tokens):
        probe("eager_attn", tokens)
    for tokens in _ints(args.eager_layers_tokens):
        probe("sdpa", tokens, args.eager_layers)
        probe("eager_attn", tokens, args.eager_layers)
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_end": load,
        "full_layers": EMBEDDED_LAYERS,
        "rows": rows,
    }


def summarise(data: dict) -> list[dict]:
    """Extra memory over the plain forward per (path, T), per-doubling growth, scaled eager."""
    full = data.get("full_layers", EMBEDDED_LAYERS)
    base = {
        (r["path"], r["tokens"], r["layers"]): r["delta_bytes"] for r in data["rows"] if r["path"] in PLAIN
    }
    out = []
    for r in data["rows"]:
        if r["path"] in PLAIN:
            continue
        plain_path = "sdpa_body" if r["path"].endswith("_body") else "sdpa"
        plain = base.get((plain_path, r["tokens"], r["layers"]))
        if plain is None:
            continue
        extra = r["delta_bytes"] - plain
        scaled = extra * full / r["layers"] if r["layers"] != full else extra
        out.append(
            {
                "path": r["path"],
                "tokens": r["tokens"],
                "layers_run": r["layers"],
                "delta_bytes": r["delta_bytes"],
                "plain_delta_bytes": plain,
                "extra_bytes": extra,
                "extra_bytes_full_model": scaled,
                "seconds": r["seconds"],
            }
        )
    for path in {o["path"] for o in out}:
        series = sorted((o for o in out if o["path"] == path), key=lambda o: o["tokens"])
        for prev, cur in zip(series, series[1:], strict=False):
            if prev["extra_bytes_full_model"] > 0:
                factor = cur["tokens"] / prev["tokens"]
                growth = cur["extra_bytes_full_model"] / prev["extra_bytes_full_model"]
                cur["growth_per_doubling"] = growth ** (1 / max(1e-9, math.log2(factor)))
    return sorted(out, key=lambda o: (o["path"], o["tokens"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("long_context.json"))
    parser.add_argument("--tokens", default="1024,2048,4096,8192,16384", help="T values for sdpa and capture")
    parser.add_argument(
        "--body-tokens",
        default="1024,2048,4096,8192",
        help="T values for sdpa_body / capture_body (no LM head, so the peak is inside the layers)",
    )
    parser.add_argument(
        "--eager-tokens", default="1024,2048", help="T values for output_attentions, full model"
    )
    parser.add_argument("--eager-layers", type=int, default=4)
    parser.add_argument(
        "--eager-layers-tokens", default="4096", help="T values for output_attentions, first N layers"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per probe")
    args = parser.parse_args(argv)
    data = run(args)
    data["summary"] = summarise(data)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print("\npath        T      extra MiB (30 layers)  growth/doubling")
    for s in data["summary"]:
        growth = s.get("growth_per_doubling")
        print(
            f"{s['path']:11s} {s['tokens']:5d}  {s['extra_bytes_full_model'] / 2**20:12.1f}"
            + (f"           {growth:5.2f}" if growth else "")
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
