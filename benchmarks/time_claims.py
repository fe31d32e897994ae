"""Time README command 1 (``pytest claims/`` on the embedded pair) and record the machine load.

    python benchmarks/time_claims.py --out claims_run.json

Runs the claims suite in a subprocess exactly as README command 1 does (same environment; pass
``DROPE_CHECK_WIKITEXT``), and writes its pytest-reported duration, wall time, summary line, the
1/5/15-minute load averages before and after, and whether the dequantised-model cache existed
before the run (a first run on a machine pays the GGUF dequantisation once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("claims_run.json"))
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -n 2 --dist loadgroup)")
    args = parser.parse_args(argv)
    from drope_check.models import dequantized_cache_path, embedded_gguf_path, file_sha256

    try:
        cache = "warm" if dequantized_cache_path(file_sha256(embedded_gguf_path())).is_dir() else "cold"
    except Exception as exc:  # noqa: BLE001 - the run itself will say what is missing
        cache = f"n/a ({exc})"
    before = _load()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "claims/", "-p", "no:cacheprovider", *args.pytest_args],
        cwd=ROOT, capture_output=True, text=True,
    )
    wall = time.perf_counter() - start
    last = [line for line in proc.stdout.splitlines() if line.startswith("=")][-1:] or [""]
    match = re.search(r" in ([0-9.]+)s", last[0])
    record = {
        "command": "pytest claims/ " + " ".join(args.pytest_args),
        "returncode": proc.returncode,
        "pytest_seconds": float(match.group(1)) if match else None,
        "wall_seconds": round(wall, 1),
        "summary": last[0].strip("= "),
        "loadavg_before": before,
        "loadavg_after": _load(),
        "cache": cache,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
