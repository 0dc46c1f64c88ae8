"""The ``hl7ics`` command: the user's front door to the service.

Each sub-command is a thin shell over a module in ``transforms/`` (the DAGs call the same functions),
so the terminal and the scheduler can never disagree. Output is NDJSON or plain tables; nothing
printed ever contains patient data unless the user asked for it (``parse`` shows parsed records,
which is its purpose).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from pathlib import Path

from .config import ConfigError, Settings


def _delegate(module: str, function: str):
    """A command whose whole body lives in ``transforms.<module>.<function>(args)``; imported on
    use, so ``hl7ics parse`` never pays for the claims or routing code."""
    def run(args) -> int:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), function)(args)
    return run


def _shown(path: str) -> str:
    """A path as text that can always be printed: a file name that is not UTF-8 (bytes kept by
    Python as surrogates) crashed the output halfway through a record."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def _settings(args) -> Settings:
    return Settings.load(getattr(args, "config", None), getattr(args, "warehouse", None))


def cmd_parse(args) -> int:
    from .extract import iter_file_records

    had_error = False
    out = sys.stdout
    for path in args.paths:
        if not os.path.isfile(path):
            rec = {"source": {"file": _shown(path)}, "status": "error", "errors": [
                {"code": "FILE_NOT_READABLE", "location": "", "message": "not a readable file", "hl7_code": 0,
                 "severity": "error"}]}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            had_error = True
            continue
        for rec in iter_file_records(path, args.facility_charset):
            if rec["status"] != "ok":
                had_error = True
            rec["source"]["file"] = _shown(path)
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    out.flush()
    return 1 if had_error else 0


def cmd_validate(args) -> int:
    from .charset import decode
    from .parser import iter_file
    from .validate import validate_structure

    bad = 0
    for path in args.paths:
        with open(path, "rb") as fh:
            for rm in iter_file(fh):
                _text, codec, _flags = decode(rm.raw, None, args.facility_charset)
                issues = validate_structure(rm.raw, codec)
                status = "valid" if not issues else "; ".join(f"{i['code']}: {i['detail']}" for i in issues)
                bad += bool(issues)
                print(f"{_shown(path)}#{rm.index}: {status}")
    return 1 if bad else 0


def cmd_listen(args) -> int:
    from .listener import ListenerConfig, serve

    settings = _settings(args)
    if args.listener_config and not Path(args.listener_config).is_file():
        # Named on purpose: running on built-in defaults (bound to 0.0.0.0) would hide the typo.
        raise ConfigError(f"--listener-config {args.listener_config}: no such file")
    cfg = ListenerConfig.load(args.listener_config or settings.config_dir / "listener.yaml",
                              host=args.host, port=args.port, metrics_port=args.metrics_port,
                              tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    return serve(cfg, settings.warehouse_url, settings.facilities(), ready_file=args.ready_file)


def cmd_send(args) -> int:
    import asyncio

    from .ack import parse_ack
    from .mllp import client_ssl_context, send
    from .parser import iter_file

    ctx = None
    # Any TLS option means TLS: --tls-insecure alone sent patient data in clear text.
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_insecure or args.server_name:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        ctx = client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key, verify=not args.tls_insecure)
    messages = []
    for path in args.paths:
        with open(path, "rb") as fh:
            messages.extend(rm.raw for rm in iter_file(fh) if not rm.fragment)
    acks = asyncio.run(send(args.host, args.port, messages, ctx, timeout=args.timeout,
                            server_hostname=args.server_name or args.host))
    rc = 0
    for i, ack in enumerate(acks):
        if ack is None:
            print(f"#{i}: no ACK (timeout or connection closed)")
            rc = 1
            continue
        text = ack.decode("utf-8", errors="replace")
        print(f"#{i}: " + text.replace("\r", "\n     ").rstrip())
        if parse_ack(ack)[0] not in ("AA", "CA"):
            rc = 1
    if len(acks) < len(messages):
        rc = 1
    return rc


def cmd_generate(args) -> int:
    from . import generator

    settings = _settings(args)
    facilities = [f.as_dict() for f in settings.facilities()]
    manifest = generator.generate(args.out, facilities, days=args.days, seed=args.seed,
                                  broken_share=args.broken_share, per_day=args.per_day,
                                  dq_fault_share=args.dq_fault_share)
    print(f"wrote {manifest['messages']} messages in {manifest['files']} files to {args.out}")
    return 0


def _facility_for(path: str, settings: Settings, facilities) -> str | None:
    """The facility whose configured drop folder contains ``path`` (None: trust MSH-4)."""
    from .ingest import folder_of

    p = Path(path).resolve()
    for f in facilities:
        for src in f.sources:
            if src.type == "folder" and folder_of(settings, src.path).resolve() in p.parents:
                return f.code
    codes = {f.code for f in facilities}
    # A copy of a drop folder elsewhere keeps the facility code as its directory name.
    return p.parent.name if p.parent.name in codes else None


def _print_counts(results: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"{'facility':<16}{'files':>7}{'dup.files':>10}{'messages':>10}{'loaded':>9}{'duplicates':>12}"
          f"{'quarantined':>13}", file=out)
    for code, r in sorted(results.items()):
        print(f"{code:<16}{r['files']:>7}{r['duplicate_files']:>10}{r['messages']:>10}{r['loaded']:>9}"
              f"{r['duplicates']:>12}{r['quarantined']:>13}", file=out)


def cmd_ingest(args) -> int:
    from .errors import SourceError
    from .ingest import Ingestor, sniff_file
    from .sources import FolderSource, settled, upload_in_progress
    from .warehouse import printable_url

    settings = _settings(args)
    ing = Ingestor(settings)
    ing.sync_facilities()
    facilities = list(ing.facilities.values())
    if args.facility and args.facility not in ing.facilities:
        raise ConfigError(f"facility {args.facility} is not in {settings.config_dir / 'facilities.yaml'}")
    files: list[Path] = []
    skipped = uploading = 0
    globs = {s.options.get("glob") or "*.hl7" for f in facilities for s in f.sources} or {"*.hl7"}
    # The drop folders' partial-upload rules, as the DAG applies them (FolderSource.ready).
    folders = [(FolderSource(settings, f, s).folder.resolve(), s.options) for f in facilities for s in f.sources
               if s.type == "folder"]
    now = time.time()
    for raw in args.paths:
        p = Path(raw)
        if p.is_dir():
            for x in sorted(p.rglob("*")):
                # Symlinks could point anywhere on the host (FolderSource.ready skips them too).
                if x.is_symlink() or not x.is_file():
                    continue
                try:
                    mtime = x.stat().st_mtime
                except FileNotFoundError:  # archived by a DAG run since the walk listed it
                    continue
                if upload_in_progress(x.name) or any(part.startswith(".") for part in x.relative_to(p).parts) \
                        or any(x.resolve().is_relative_to(d) and not settled(o, mtime, now) for d, o in folders):
                    uploading += 1
                    continue
                # A folder may hold other files (a generator's manifest.json): one with no MSH,
                # FHS or BHS in its first 64 KiB is not a message file. A file named like the
                # drop folders' messages (their globs), or named on the command line, is always
                # taken, and quarantined if it holds no HL7, as the DAG does (bad input 66).
                if not any(fnmatch.fnmatch(x.name, g) for g in globs):
                    problem = sniff_file(x)
                    if problem is not None and problem.code == "NOT_HL7_CONTENT":
                        skipped += 1
                        continue
                files.append(x)
        elif p.is_file():
            files.append(p)
        else:
            print(f"hl7ics: cannot read {raw}", file=sys.stderr)
            return 2
    results: dict = {}
    codes = [args.facility or _facility_for(str(f), settings, facilities) for f in files]
    try:
        done = ing.ingest_files([(f, code) for f, code in zip(files, codes)], max(1, args.workers))
    except SourceError as exc:
        print(f"hl7ics: {exc}", file=sys.stderr)
        return 2
    for code, r in zip(codes, done):
        row = results.setdefault(code or "UNKNOWN", {"files": 0, "duplicate_files": 0, "messages": 0, "loaded": 0,
                                                     "duplicates": 0, "quarantined": 0})
        row["files"] += 1
        row["duplicate_files"] += r.status == "duplicate_file"
        for k, v in r.counts.as_dict().items():
            row[k] += v
    ing.record_run(sorted(results))
    _print_counts(results)
    if skipped:
        print(f"skipped {skipped} file(s) of the folder(s) holding no HL7 message (no MSH, FHS or BHS)")
    if uploading:
        print(f"left {uploading} file(s) still being uploaded (a hidden, .tmp or .part name, or changed in the "
              "last stable_seconds of a stable_size drop folder): they are taken once complete")
    print(f"warehouse: {printable_url(settings.warehouse_url)}")
    _print_breaches(ing.loader.dq_breaches)
    return 0


def _print_breaches(breaches: list[dict]) -> None:
    for b in breaches:
        print(f"hl7ics: data quality: a batch of {b['validated']} messages from {', '.join(b['facilities'])} was held "
              f"in quarantine ({b['failed']} failed error checks, above HL7ICS_DQ_MAX_FAILURE_RATE); after the fix run "
              "`hl7ics replay --reason DQ_THRESHOLD`", file=sys.stderr)


def cmd_replay(args) -> int:
    from .facts import PatientKeyer
    from .load import Loader
    from .replay import replay
    from .warehouse import get_engine, utcnow

    settings = _settings(args)
    loader = Loader(settings.facilities(), PatientKeyer.from_env(settings.home),
                    run_id=f"replay__{utcnow().replace(' ', 'T')}")
    engine = get_engine(settings.warehouse_url)
    counts = replay(engine, loader, args.reason, args.facility)
    c = counts.as_dict()
    print(f"replayed {c['messages']} quarantined messages: {c['loaded']} loaded, {c['duplicates']} duplicates, "
          f"{c['quarantined']} still quarantined")
    if not c["messages"] and (args.reason or args.facility):
        # A misspelt reason or facility code matches nothing: say what there is to replay.
        from sqlalchemy import text

        with engine.connect() as conn:
            open_rows = conn.execute(text(
                "SELECT q.reason, m.facility_code, COUNT(DISTINCT m.id) FROM quarantine q "
                "JOIN message_store m ON m.id = q.message_id WHERE q.resolved_at IS NULL "
                "AND m.status = 'quarantined' GROUP BY q.reason, m.facility_code ORDER BY 1, 2")).all()
        shown = ", ".join(f"{r} ({f}: {n})" for r, f, n in open_rows[:20]) or "none"
        print(f"nothing in quarantine matches the filter; open reasons (facility: messages): {shown}")
    _print_breaches(loader.dq_breaches)
    return 0


def _existing_warehouse(url: str):
    """The engine of a warehouse that already has the schema, for a command that only reads: given
    another database by mistake, it must say so, not create the tables there and report nothing."""
    from sqlalchemy import inspect

    from .warehouse import get_engine, printable_url

    eng = get_engine(url, migrate=False)
    if not inspect(eng).has_table("schema_migrations"):
        raise ConfigError(f"{printable_url(url)} holds no hl7ics warehouse (run hl7ics db upgrade to create one)")
    return get_engine(url)


def cmd_dq_report(args) -> int:
    from datetime import date

    from .dq_report import cli_report

    try:
        since = date.fromisoformat(args.since) if args.since else None
    except ValueError:
        raise ConfigError(f"--since must be a date (YYYY-MM-DD), not {args.since!r}") from None
    settings = _settings(args)
    if args.facility and args.facility not in {f.code for f in settings.facilities()}:
        raise ConfigError(f"--facility {args.facility}: no such facility in facilities.yaml")
    return cli_report(_existing_warehouse(settings.warehouse_url), args.facility, since)


def cmd_sla_report(args) -> int:
    from datetime import date

    from .sla import SlaConfig, compute, format_text, previous_month, write

    settings = _settings(args)
    month = args.month or previous_month(date.today())
    report = compute(_existing_warehouse(settings.warehouse_url), month, SlaConfig.load(settings.config_dir / "sla.yaml"))
    print(format_text(report))
    out = Path(args.out) if args.out else settings.data_dir / "reports" / "sla"
    for path in write(report, out, {f.code: f.name for f in settings.facilities()}):
        print(f"wrote {path}")
    return 0


def cmd_monitor_check(args) -> int:
    """One monitoring check by hand: refresh the rollup, print every interface's health."""
    from datetime import datetime, timezone

    from .monitoring import MonitoringConfig, evaluate, refresh_rollup, store
    from .warehouse import get_engine

    settings = _settings(args)
    cfg = MonitoringConfig.load(settings.config_dir / "monitoring.yaml")
    engine = get_engine(settings.warehouse_url)
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    facilities = settings.facilities()
    refresh_rollup(engine, [f.code for f in facilities], now, cfg)
    result = evaluate(engine, facilities, now, cfg)
    if args.store:
        store(engine, result, cfg, now)
    print(f"{'facility':<16}{'source':<8}{'type':<6}{'status':<10}{'1h':>7}{'24h':>8}{'silence':>9}{'p95 ms':>8}"
          f"{'backlog':>8}  problems")
    for r in result.rows:
        sil = "" if r["silence_minutes"] is None else f"{r['silence_minutes']:.0f}m"
        p95 = "" if r["ack_p95_ms"] is None else f"{r['ack_p95_ms']:.0f}"
        print(f"{r['facility_code']:<16}{r['source']:<8}{r['message_type']:<6}{r['status']:<10}{r['messages_1h']:>7}"
              f"{r['messages_24h']:>8}{sil:>9}{p95:>8}{r['backlog']:>8}  {r['problems'] or ''}")
    for pr in result.problems:
        print(f"problem: {pr.key} ({pr.severity})")
    return 0


def cmd_report_build(args) -> int:
    from datetime import date, timedelta

    from .reporting import IdsrConfig, build
    from .warehouse import get_engine

    settings = _settings(args)
    try:
        last = date.fromisoformat(args.to) if args.to else date.today()
        first = date.fromisoformat(args.from_) if args.from_ else last - timedelta(days=7)
    except ValueError:
        raise ConfigError("--from and --to must be dates (YYYY-MM-DD)") from None
    if first > last:
        raise ConfigError("--from is after --to")
    r = build(get_engine(settings.warehouse_url), IdsrConfig.load(settings.config_dir / "idsr.yaml"), first, last)
    print(f"rebuilt {len(r.weeks)} weeks ({r.weeks[0]} .. {r.weeks[-1]}): {r.cases} IDSR cases; "
          + ", ".join(f"{t} {n}" for t, n in r.rows.items()))
    return 0


def _require_built_week(engine, week: str) -> None:
    """A week the reporting tables were never built for reads as a week without any case: the
    bulletin said "no notifiable disease" and the DHIS2 export sent nothing, with exit 0."""
    from datetime import timedelta

    from .dhis2 import iso_week
    from .reporting import week_built, week_start

    try:
        iso = iso_week(week)
    except ValueError as exc:  # PeriodError: "2026 has no ISO week 60", named as before
        raise ConfigError(str(exc)) from None
    if not week_built(engine, iso):
        start = week_start(iso)
        raise ConfigError(f"the reporting tables hold nothing for {iso} (never built): run "
                          f"`hl7ics report build --from {start} --to {start + timedelta(days=6)}` first "
                          "(the moh_reporting DAG does it daily)")


def cmd_report_weekly(args) -> int:
    from .bulletin import cli_weekly
    from .warehouse import get_engine

    settings = _settings(args)
    out = Path(args.out) if args.out else settings.data_dir / "reports" / "bulletin"
    engine = get_engine(settings.warehouse_url)
    _require_built_week(engine, args.week)
    return cli_weekly(engine, args.week, out, args.lang, pdf=not args.no_pdf, config_dir=settings.config_dir)


def cmd_dhis2_export(args) -> int:
    from .dhis2 import cli_main
    from .warehouse import get_engine

    args.warehouse_url = _settings(args).warehouse_url
    _require_built_week(get_engine(args.warehouse_url), args.period)
    return cli_main(args)


def cmd_db_roles(args) -> int:
    from .privacy import create_roles
    from .warehouse import get_engine

    analyst = create_roles(get_engine(_settings(args).warehouse_url))
    print("roles moh_analyst and data_engineer are in place; moh_analyst may read: " + ", ".join(analyst))
    return 0


def cmd_db_insurer_roles(args) -> int:
    from .claims import load_insurers
    from .insurer_access import create_insurer_roles
    from .warehouse import get_engine

    settings = _settings(args)
    codes = load_insurers(settings.config_dir / "insurers.yaml").codes
    roles = create_insurer_roles(get_engine(settings.warehouse_url), list(codes))
    print("insurer roles in place (each reads only its own rows of insurer_claims / insurer_claim_lines): "
          + ", ".join(roles))
    return 0


def cmd_dq_check(args) -> int:
    """Check suite files after an edit: JSON shape, names, columns, and that GX accepts them."""
    from .quality import QualityOptions, Validator

    opts = QualityOptions.from_env()
    if args.suites:
        opts = QualityOptions(True, Path(args.suites), opts.max_failure_rate, opts.min_batch)
    v = Validator(opts, [f.code for f in _settings(args).facilities()])
    v.engine  # builds every GX suite: raises QualityConfigError on a bad expectation
    for table, suite in sorted(v.suites.items()):
        errors = sum(c.severity == "error" for c in suite.checks)
        print(f"{suite.path.name:<26} {table:<18} {len(suite.checks):>3} expectations ({errors} error, "
              f"{len(suite.checks) - errors} warning)")
    print("suites OK")
    return 0


def cmd_db_upgrade(args) -> int:
    from .warehouse import collation_advice, current_version, get_engine, upgrade

    eng = get_engine(_settings(args).warehouse_url, migrate=False)
    applied = upgrade(eng)
    print(f"applied migrations: {applied or 'none'}; schema version {current_version(eng)}")
    advice = collation_advice(eng)
    if advice:
        print(f"hl7ics: note: {advice}", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    if args.config:  # the DAG's tasks read it from the environment, as a deployment sets it
        os.environ["HL7ICS_CONFIG"] = str(Path(args.config).resolve())
    return run_demo(days=args.days, seed=args.seed, per_day=args.per_day)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hl7ics", description="HL7 Interface Coordination Service (Togo)")
    p.add_argument("--config", help="configuration directory (default: $HL7ICS_CONFIG, else the project's config/)")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("parse", help="parse HL7 v2 files and print one JSON record per message (NDJSON)")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--facility-charset", metavar="CODEC", help="fallback codec when MSH-18 is empty")
    sp.set_defaults(func=cmd_parse)

    sp = sub.add_parser("listen", help="run the real-time MLLP listener (stores, then ACKs)")
    sp.add_argument("--host")
    sp.add_argument("--port", type=_port)
    sp.add_argument("--metrics-port", type=_port, help="Prometheus port (0 disables)")
    sp.add_argument("--warehouse", metavar="URL")
    sp.add_argument("--tls-cert", metavar="C")
    sp.add_argument("--tls-key", metavar="K")
    sp.add_argument("--tls-client-ca", metavar="CA", help="require client certificates from this CA (mutual TLS)")
    sp.add_argument("--listener-config", metavar="FILE", help="default: <config>/listener.yaml")
    sp.add_argument("--ready-file", metavar="FILE", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_listen)

    sp = sub.add_parser("send", help="send HL7 files over MLLP and print each ACK (interface testing)")
    sp.add_argument("paths", nargs="+", metavar="FILE")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=_port, default=2575)
    sp.add_argument("--tls", action="store_true", help="use TLS (implied by any other --tls-* option)")
    sp.add_argument("--tls-ca", metavar="CA")
    sp.add_argument("--tls-cert", metavar="C")
    sp.add_argument("--tls-key", metavar="K")
    sp.add_argument("--tls-insecure", action="store_true", help="do not verify the server certificate")
    sp.add_argument("--server-name", help="TLS server name (default: --host)")
    sp.add_argument("--timeout", type=float, default=30.0)
    sp.set_defaults(func=cmd_send)

    sp = sub.add_parser("validate", help="strict structural validation with hl7apy (interface onboarding)")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--facility-charset", metavar="CODEC")
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("generate", help="write a deterministic synthetic traffic set for the configured facilities")
    sp.add_argument("--out", required=True, metavar="DIR")
    sp.add_argument("--days", type=int, default=1)
    sp.add_argument("--seed", type=int, default=42)
    sp.add_argument("--per-day", type=int, default=None, help="messages per day across all facilities")
    sp.add_argument("--broken-share", type=float, default=0.02)
    sp.add_argument("--dq-fault-share", type=float, default=0.0,
                    help="share of well-formed messages given one data-quality fault (see transforms/faults.py)")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("ingest", help="store and load HL7 files or folders into the warehouse (same code as the DAG)")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--warehouse", metavar="URL", help="SQLAlchemy URL (default: embedded SQLite)")
    sp.add_argument("--facility", metavar="CODE", help="facility the files come from (default: by folder, else MSH-4)")
    sp.add_argument("--workers", type=int, metavar="N", default=os.cpu_count() or 1,
                    help="processes loading different facilities at once (default: one per CPU; 1 = this process)")
    sp.set_defaults(func=cmd_ingest)

    sp = sub.add_parser("replay", help="re-process quarantined messages after a fix (idempotent)")
    sp.add_argument("--reason", metavar="R", help="only this quarantine reason code")
    sp.add_argument("--facility", metavar="F", help="only this facility's messages (also those stored as UNKNOWN "
                    "with F in MSH-4, before F was configured)")
    sp.add_argument("--warehouse", metavar="URL")
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("dq", help="data quality: report results, check suite files")
    dsub = sp.add_subparsers(dest="dq_command", required=True)
    rp = dsub.add_parser("report", help="failed and checked rows per facility, table and expectation")
    rp.add_argument("--facility", metavar="F")
    rp.add_argument("--since", metavar="YYYY-MM-DD")
    rp.add_argument("--warehouse", metavar="URL")
    rp.set_defaults(func=cmd_dq_report)
    ck = dsub.add_parser("check", help="validate the expectation suite files (after editing them)")
    ck.add_argument("--suites", metavar="DIR", help="default: expectations/ or $HL7ICS_EXPECTATIONS_DIR")
    ck.set_defaults(func=cmd_dq_check)

    sp = sub.add_parser("sla", help="SLA report (listener uptime, ACKs within 2 s / 5 s)")
    ssub = sp.add_subparsers(dest="sla_command", required=True)
    rp = ssub.add_parser("report", help="a month's SLA report as text, CSV and HTML")
    rp.add_argument("--month", metavar="YYYY-MM", help="default: the previous month")
    rp.add_argument("--out", metavar="DIR", help="default: <data dir>/reports/sla")
    rp.add_argument("--warehouse", metavar="URL")
    rp.set_defaults(func=cmd_sla_report)

    sp = sub.add_parser("monitor", help="interface monitoring")
    msub = sp.add_subparsers(dest="monitor_command", required=True)
    ck = msub.add_parser("check", help="compute every interface's health now and print it (no alerts sent)")
    ck.add_argument("--store", action="store_true", help="also write the rows to interface_health")
    ck.add_argument("--warehouse", metavar="URL")
    ck.set_defaults(func=cmd_monitor_check)

    sp = sub.add_parser("report", help="MoH reporting tables and the weekly bulletin")
    rsub = sp.add_subparsers(dest="report_command", required=True)
    rb = rsub.add_parser("build", help="rebuild the reporting tables for the ISO weeks in a date range")
    rb.add_argument("--from", dest="from_", metavar="YYYY-MM-DD", help="default: 7 days before --to")
    rb.add_argument("--to", metavar="YYYY-MM-DD", help="default: today")
    rb.add_argument("--warehouse", metavar="URL")
    rb.set_defaults(func=cmd_report_build)
    rw = rsub.add_parser("weekly", help="the week's surveillance bulletin as HTML and PDF")
    rw.add_argument("--week", required=True, metavar="2026W45")
    rw.add_argument("--lang", choices=("fr", "en"), default="fr")
    rw.add_argument("--out", metavar="DIR", help="default: <data dir>/reports/bulletin")
    rw.add_argument("--no-pdf", action="store_true", help="HTML only (no Chromium needed)")
    rw.add_argument("--warehouse", metavar="URL")
    rw.set_defaults(func=cmd_report_weekly)

    sp = sub.add_parser("dhis2", help="DHIS2 exchange")
    hsub = sp.add_subparsers(dest="dhis2_command", required=True)
    ex = hsub.add_parser("export", help="weekly IDSR data as a DHIS2 dataValueSets JSON (and optional push)")
    ex.add_argument("--period", required=True, metavar="2026W45")
    ex.add_argument("--dry-run", action="store_true",
                    help="build and print/write only, contacting nothing; with --push, DHIS2's own dry run only "
                         "(the payload and credentials are sent, nothing is imported)")
    ex.add_argument("--out", metavar="FILE")
    ex.add_argument("--push", metavar="URL", help="DHIS2 base URL: dryRun=true first, then the import")
    ex.add_argument("--suppress", type=int, metavar="K", help="omit counts 1..K-1 (for a public instance)")
    ex.add_argument("--warehouse", metavar="URL")
    ex.set_defaults(func=cmd_dhis2_export)

    sp = sub.add_parser("claims", help="insurer claim extracts (AMU: INAM, CNSS, ...)")
    csub = sp.add_subparsers(dest="claims_command", required=True)
    ce = csub.add_parser("extract", help="build claims and write (or re-write identically) a period's extract")
    ce.add_argument("--insurer", required=True, metavar="CODE")
    ce.add_argument("--period", required=True, metavar="2026-11|2026-W45")
    ce.add_argument("--out", metavar="DIR", help="default: <data dir>/claims")
    ce.add_argument("--reason", metavar="R", help="required for a correction (a new version of the period)")
    ce.add_argument("--warehouse", metavar="URL")
    ce.set_defaults(func=_delegate("claims", "cli_extract"))
    cs = csub.add_parser("status", help="periods, versions, deliveries and corrections")
    cs.add_argument("--insurer", metavar="CODE")
    cs.add_argument("--warehouse", metavar="URL")
    cs.set_defaults(func=_delegate("claims", "cli_status"))

    sp = sub.add_parser("outbound", help="outbound delivery queue (routed messages)")
    osub = sp.add_subparsers(dest="outbound_command", required=True)
    st = osub.add_parser("status", help="per destination: pending, delivered, failed and dead letters")
    st.add_argument("--warehouse", metavar="URL")
    st.set_defaults(func=_delegate("outbound", "cli_status"))
    rt = osub.add_parser("retry", help="requeue a message (ID) or the dead letters")
    rt.add_argument("id", nargs="?", metavar="ID")
    rt.add_argument("--dead-letter", action="store_true")
    rt.add_argument("--destination", metavar="D")
    rt.add_argument("--warehouse", metavar="URL")
    rt.set_defaults(func=_delegate("outbound", "cli_retry"))

    sp = sub.add_parser("route", help="routing rules")
    rsub2 = sp.add_subparsers(dest="route_command", required=True)
    rt2 = rsub2.add_parser("test", help="dry run: which rules match each message, and the bytes each destination gets")
    rt2.add_argument("paths", nargs="+", metavar="FILE")
    rt2.add_argument("--routes", metavar="PATH", help="default: <config>/routes.yaml")
    rt2.add_argument("--facility-charset", metavar="CODEC", help="fallback codec when MSH-18 is empty")
    rt2.set_defaults(func=_delegate("routing", "cli_route_test"))

    sp = sub.add_parser("db", help="warehouse schema")
    dsub = sp.add_subparsers(dest="db_command", required=True)
    up = dsub.add_parser("upgrade", help="apply pending migrations")
    up.add_argument("--warehouse", metavar="URL")
    up.set_defaults(func=cmd_db_upgrade)
    ro = dsub.add_parser("roles", help="create the PostgreSQL roles moh_analyst and data_engineer (idempotent)")
    ro.add_argument("--warehouse", metavar="URL")
    ro.set_defaults(func=cmd_db_roles)
    ir = dsub.add_parser("insurer-roles", help="PostgreSQL: a role per insurer, row-level security on its claims")
    ir.add_argument("--warehouse", metavar="URL")
    ir.set_defaults(func=cmd_db_insurer_roles)

    sp = sub.add_parser("demo", help="generate sample traffic and run facility_batch_ingest end to end (embedded)")
    sp.add_argument("--days", type=int, default=3)
    sp.add_argument("--seed", type=int, default=2026)
    sp.add_argument("--per-day", type=int, default=400)
    sp.set_defaults(func=cmd_demo)
    return p


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n} is not a port number (0 to 65535)")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"hl7ics: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output went away (| head): not our failure
        try:
            sys.stdout = open(os.devnull, "w")  # no second error when Python flushes at exit
        except OSError:
            pass
        return 0
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"hl7ics: I/O error: {type(exc).__name__}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except ValueError as exc:
        # A value the command cannot use (an out-of-range number, a malformed URL): one line, no
        # traceback, and the exit code of a usage error.
        print(f"hl7ics: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}",
              file=sys.stderr)
        return 2
    except Exception as exc:
        line = _warehouse_error(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2


def _warehouse_error(exc: Exception) -> str | None:
    """One line for a warehouse URL that is malformed or names no installed driver, a database that
    is down, does not exist, is not a database, or refuses this user (None: not such an error).
    The class and the driver's first line only: no bound parameters, and the URL's password is
    masked by SQLAlchemy. A value error's first line can quote a value (patient data): its class
    only. Writer's COPY and executemany run on the driver, whose errors come raw, not wrapped."""
    from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError

    # Among the modules already imported: importing psycopg would cost every command 0.15 s.
    drivers = [m for m in (sys.modules.get("psycopg"), sys.modules.get("sqlite3")) if m is not None]
    if not isinstance(exc, (ArgumentError, DBAPIError, *(m.Error for m in drivers))):
        return None
    values = (DataError, IntegrityError, *(e for m in drivers for e in (m.DataError, m.IntegrityError)))
    detail = "" if isinstance(exc, values) else \
        ": " + (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0][:200]
    return f"hl7ics: warehouse error: {type(exc).__name__}{detail}"


if __name__ == "__main__":
    sys.exit(main())
