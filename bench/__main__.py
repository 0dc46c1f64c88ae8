"""``make bench`` / ``python -m bench [parser|ingest ...] [--quick]``: prints tables of medians."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

SECTIONS = ("parser", "quality", "ingest", "listener", "monitoring", "reporting", "outbound", "claims", "routing")


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench")
    ap.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="smaller inputs and fewer runs (smoke check)")
    args = ap.parse_args()
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    # The interpreter's build moves every figure (docs/performance.md, session 16): say which one ran.
    print(f"hl7ics benchmarks on {platform.python_implementation()} {platform.python_version()} "
          f"({os.path.realpath(sys.executable)}), {os.cpu_count()} CPUs{' (quick)' if args.quick else ''}")
    results = {}
    for name in args.sections or SECTIONS:
        mod = __import__(f"bench.{name}_bench", fromlist=["run"])
        results[name] = mod.run(quick=args.quick)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
