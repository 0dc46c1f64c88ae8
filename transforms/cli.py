"""The ``hl7ics`` command: the user's front door to the service.

Each sub-command is a thin shell over a module in ``transforms/`` (the DAGs call the same functions),
so the terminal and the scheduler can never disagree. Output is NDJSON or plain tables; nothing
printed ever contains patient data unless the user asked for it (``parse`` shows parsed records,
which is its purpose).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, Settings


def _settings(args) -> Settings:
    return Settings.load(getattr(args, "config", None), getattr(args, "warehouse", None))


def cmd_parse(args) -> int:
    from .extract import iter_file_records

    had_error = False
    out = sys.stdout
    for path in args.paths:
        if not os.path.isfile(path):
            rec = {"source": {"file": path}, "status": "error", "errors": [
                {"code": "FILE_NOT_READABLE", "location": "", "message": "not a readable file", "hl7_code": 0,
                 "severity": "error"}]}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            had_error = True
            continue
        for rec in iter_file_records(path, args.facility_charset):
            if rec["status"] != "ok":
                had_error = True
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    out.flush()
    return 1 if had_error else 0


def cmd_generate(args) -> int:
    from . import generator

    settings = _settings(args)
    facilities = [f.as_dict() for f in settings.facilities()]
    manifest = generator.generate(args.out, facilities, days=args.days, seed=args.seed,
                                  broken_share=args.broken_share, per_day=args.per_day)
    print(f"wrote {manifest['messages']} messages in {manifest['files']} files to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hl7ics", description="HL7 Interface Coordination Service (Togo)")
    p.add_argument("--config", help="configuration directory (default: ./config or $HL7ICS_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("parse", help="parse HL7 v2 files and print one JSON record per message (NDJSON)")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--facility-charset", metavar="CODEC", help="fallback codec when MSH-18 is empty")
    sp.set_defaults(func=cmd_parse)

    sp = sub.add_parser("generate", help="write a deterministic synthetic traffic set for the configured facilities")
    sp.add_argument("--out", required=True, metavar="DIR")
    sp.add_argument("--days", type=int, default=1)
    sp.add_argument("--seed", type=int, default=42)
    sp.add_argument("--per-day", type=int, default=None, help="messages per day across all facilities")
    sp.add_argument("--broken-share", type=float, default=0.02)
    sp.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"hl7ics: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
