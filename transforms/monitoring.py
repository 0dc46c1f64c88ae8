"""Interface monitoring: the health of every interface (facility x source x message type), every
few minutes, and the problems that should alert.

Inputs: the warehouse (``message_store``, ``ack_latency`` from the listener, the hourly rollup it
maintains), the facility registry (time zone, working hours, expected interval between messages),
``MonitoringConfig`` (``config/monitoring.yaml``: thresholds, TLS certificates to watch, disk paths)
and the current time. Outputs: ``interface_volume_hourly`` refreshed, one ``interface_health`` row
per interface for this check, and a list of ``Problem`` (what is wrong now, with a stable key) that
``apply_alerts`` turns into alerts: a problem still present is re-fired (the alerter throttles),
one that disappeared is resolved.

Counts only: nothing here reads or writes message content or patient data.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .config import ConfigError, Facility, read_yaml
from .warehouse import Writer

CRITICAL_TYPES = ("ADT",)  # the SLA's critical messages: acknowledged within 2 s, the rest within 5 s
KEY_PREFIXES = ("silence:", "quarantine_spike:", "ack_latency:", "backlog:", "tls:", "disk:")


@dataclass(frozen=True)
class MonitoringConfig:
    ack_sla_ms_critical: int = 2000
    ack_sla_ms_standard: int = 5000
    min_messages: int = 20             # fewer messages than this in the window: no rate-based alert
    spike_factor: float = 2.0          # quarantine rate above factor x baseline ...
    spike_min_points: float = 0.10     # ... and at least 10 points above it
    baseline_weeks: int = 4
    backlog_max_minutes: float = 15.0  # oldest message waiting to be loaded
    tls_warn_days: int = 30
    tls_certificates: tuple = ()
    disk_paths: tuple = ()
    disk_max_percent: float = 90.0
    rollup_backfill_days: int = 35
    health_retention_days: int = 35

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> "MonitoringConfig":
        if not path or not Path(path).is_file():
            return cls()
        doc = read_yaml(path) or {}
        data = doc.get("monitoring") if isinstance(doc, dict) else None
        if not isinstance(data, dict):
            raise ConfigError(f"{Path(path).name}: expected a top-level 'monitoring:' mapping")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{Path(path).name}: unknown key(s) {', '.join(sorted(unknown))}")
        out = {}
        for k, v in data.items():
            default = cls.__dataclass_fields__[k].default
            if isinstance(default, tuple):
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise ConfigError(f"{Path(path).name}: '{k}' must be a list of paths")
                out[k] = tuple(v)
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{Path(path).name}: '{k}' must be a non-negative number")
            else:
                out[k] = type(default)(v)
        return cls(**out)


@dataclass
class Problem:
    key: str
    kind: str
    severity: str
    facility_code: str | None = None
    params: dict = field(default_factory=dict)


@dataclass
class Result:
    checked_at: str
    rows: list[dict]
    problems: list[Problem]
    # Open problems not to resolve although not current: a silence that continues after the
    # facility's working hours is not over, only not alerted on.
    keep_open: set = field(default_factory=set)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def _parse(v) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.replace(tzinfo=None)
    return datetime.strptime(str(v)[:19], "%Y-%m-%d %H:%M:%S")


def in_working_hours(facility: Facility, now: datetime) -> bool:
    """Whether ``now`` (naive UTC) falls in the facility's local working hours [start, end)."""
    start, end = facility.working_hours
    local = now.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(facility.timezone))
    h = local.hour + local.minute / 60
    return start <= h < end if start <= end else (h >= start or h < end)  # a night shift wraps midnight


_PG_LOCK = 724120  # advisory lock: one monitoring writer at a time on PostgreSQL


def _serialize(conn) -> None:
    """Make concurrent refreshes (the DAG and ``hl7ics monitor check``) wait for each other. Under
    read committed, a second DELETE does not see the rows a first writer has just inserted, and
    its insert then fails on the primary key. SQLite's write transactions are serial already."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})


def opened_at(facility: Facility, now: datetime) -> datetime | None:
    """When the facility's working hours began, for ``now`` (naive UTC) inside them; None for a
    facility open around the clock. The night before is not silence: gaps count from here."""
    start, end = facility.working_hours
    if (start, end) == (0, 24):
        return None
    zone = ZoneInfo(facility.timezone)
    local = now.replace(tzinfo=timezone.utc).astimezone(zone)
    day = local if local.hour + local.minute / 60 >= start else local - timedelta(days=1)
    begin = day.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(hours=start)
    return begin.astimezone(timezone.utc).replace(tzinfo=None)


def working_minutes(facility: Facility, since: datetime, now: datetime) -> float:
    """Minutes of the facility's working hours between ``since`` and ``now`` (naive UTC). A gap
    counted from the last message across nights and weekends: counted from each opening, a
    facility expected every 720 minutes but open 8 hours a day could never be silent."""
    start, end = facility.working_hours
    if (start, end) == (0, 24) or since >= now:
        return max(0.0, (now - since).total_seconds() / 60)
    zone = ZoneInfo(facility.timezone)

    def utc(day, hours: float) -> datetime:
        local = datetime(day.year, day.month, day.day, tzinfo=zone) + timedelta(hours=hours)
        return local.astimezone(timezone.utc).replace(tzinfo=None)

    first = since.replace(tzinfo=timezone.utc).astimezone(zone).date() - timedelta(days=1)
    last = now.replace(tzinfo=timezone.utc).astimezone(zone).date()
    # Past a year the exact figure no longer matters: any expected interval is far exceeded.
    first = max(first, last - timedelta(days=366))
    total = 0.0
    day = first
    while day <= last:
        a, b = utc(day, start), utc(day, end if start < end else end + 24)  # a night shift wraps midnight
        lo, hi = max(a, since), min(b, now)
        if hi > lo:
            total += (hi - lo).total_seconds() / 60
        day += timedelta(days=1)
    return total


def refresh_rollup(engine: Engine, facilities: list[str], now: datetime, cfg: MonitoringConfig) -> int:
    """Recount the hours of ``interface_volume_hourly`` that may have changed: the last two, every
    hour since the last refresh (a paused DAG leaves no hole), and the hours of messages whose
    status changed since then (a replay, a late load); all of history (``rollup_backfill_days``)
    the first time."""
    with engine.connect() as conn:
        latest, refreshed = conn.execute(text("SELECT MAX(hour), MAX(updated_at) FROM interface_volume_hourly")).one()
        known = [r[0] for r in conn.execute(text("SELECT DISTINCT facility_code FROM message_store "
                                                 "WHERE status <> 'received'"))] if latest is None else []
        changed = conn.execute(text(
            "SELECT MIN(received_at) FROM message_store WHERE status IN ('loaded', 'duplicate', 'quarantined') "
            "AND updated_at >= :t"), {"t": _ts(_parse(refreshed))}).scalar() if refreshed is not None else None
    hour0 = now.replace(minute=0, second=0, microsecond=0)
    floor = hour0 - timedelta(days=cfg.rollup_backfill_days)
    if latest is None:
        since = floor
    else:
        since = min([hour0 - timedelta(hours=2), _parse(latest)]
                    + ([_parse(changed).replace(minute=0, second=0)] if changed is not None else []))
        since = max(since, floor)
    codes = sorted(set(facilities) | set(known) | {"UNKNOWN"})
    rows = []
    with engine.connect() as conn:
        for code in codes:  # one range scan of (facility_code, received_at) per facility
            # resends: copies the sender sent again that did not load (see evaluate), never duplicates.
            for hour, source, mtype, n, q, d, rs in conn.execute(text(
                    "SELECT substr(CAST(received_at AS TEXT), 1, 13), source, COALESCE(message_type, '-'), COUNT(*), "
                    "SUM(CASE WHEN status = 'quarantined' THEN 1 ELSE 0 END), "
                    "SUM(CASE WHEN status = 'duplicate' THEN 1 ELSE 0 END), "
                    "SUM(CASE WHEN resend_of IS NOT NULL AND status NOT IN ('loaded', 'duplicate') THEN 1 ELSE 0 END) "
                    "FROM message_store "
                    "WHERE facility_code = :f AND received_at >= :s GROUP BY 1, 2, 3"), {"f": code, "s": _ts(since)}):
                rows.append((hour.replace("T", " ") + ":00:00", code, source, mtype, int(n), int(q or 0), int(d or 0),
                             int(rs or 0), _ts(now)))
    with engine.begin() as conn:
        _serialize(conn)
        # Only the facilities recounted: the published history of one no longer configured stays.
        conn.execute(text("DELETE FROM interface_volume_hourly WHERE hour >= :s AND facility_code = :f"),
                     [{"s": _ts(since), "f": code} for code in codes])
        Writer(conn).copy("interface_volume_hourly", ("hour", "facility_code", "source", "message_type", "messages",
                                                      "quarantined", "duplicates", "resends", "updated_at"), rows)
    return len(rows)


def _percentile(buckets: dict[int, int], q: float) -> float | None:
    """Upper bound (ms) of the bucket holding the q-th quantile; -1 (slowest bucket) -> 60000."""
    total = sum(buckets.values())
    if not total:
        return None
    need, seen = q * total, 0
    for b in sorted(buckets, key=lambda b: 10 ** 9 if b < 0 else b):
        seen += buckets[b]
        if seen >= need:
            return float(60000 if b < 0 else b)
    return None


def evaluate(engine: Engine, facilities: list[Facility], now: datetime, cfg: MonitoringConfig) -> Result:
    """Compute every interface's health at ``now`` (naive UTC) and the problems to alert on."""
    checked = _ts(now)
    h1, h24 = _ts(now - timedelta(hours=1)), _ts(now - timedelta(hours=24))
    hour0 = now.replace(minute=0, second=0, microsecond=0)
    problems: list[Problem] = []
    rows: dict[tuple, dict] = {}
    by_code = {f.code: f for f in facilities}
    with engine.connect() as conn:
        codes = sorted(set(by_code) | {r[0] for r in conn.execute(text(
            "SELECT DISTINCT facility_code FROM interface_volume_hourly WHERE hour >= :s"),
            {"s": _ts(hour0 - timedelta(days=7))})})
        for code in codes:
            # Copies are no sign of life: a sender stuck resending one message is silent, whether
            # that message loaded or not (a resend of a quarantined one is judged anew). A resend
            # that loaded (its original was refused, and has since been fixed) is new data.
            for source, mtype, n, q, last in conn.execute(text(
                    "SELECT source, COALESCE(message_type, '-'), COUNT(*), "
                    "SUM(CASE WHEN status = 'quarantined' THEN 1 ELSE 0 END), "
                    "MAX(CASE WHEN status = 'loaded' OR (status <> 'duplicate' AND resend_of IS NULL) "
                    "THEN received_at END) "
                    "FROM message_store "
                    "WHERE facility_code = :f AND received_at >= :s GROUP BY 1, 2"), {"f": code, "s": h24}):
                rows[(code, source, mtype)] = _row(checked, code, source, mtype, n24=int(n), q24=int(q or 0),
                                                   last=_parse(last))
            for source, mtype, n, q in conn.execute(text(
                    "SELECT source, COALESCE(message_type, '-'), COUNT(*), "
                    "SUM(CASE WHEN status = 'quarantined' THEN 1 ELSE 0 END) FROM message_store "
                    "WHERE facility_code = :f AND received_at >= :s GROUP BY 1, 2"), {"f": code, "s": h1}):
                r = rows.setdefault((code, source, mtype), _row(checked, code, source, mtype))
                r["messages_1h"], r["_q1"] = int(n), int(q or 0)
        # Interfaces quiet for a day still exist (the rollup remembers them): silence shows on them.
        # The rollup gives a last message only from before the day read above, which already
        # decided what counts in it. An hour counts when it had more than copies: duplicates and
        # resends that did not load, as in the day above.
        for code, source, mtype, last_hour in conn.execute(text(
                "SELECT facility_code, source, message_type, "
                "MAX(CASE WHEN messages > duplicates + resends AND hour <= :cut THEN hour END) "
                "FROM interface_volume_hourly "
                "WHERE hour >= :s GROUP BY 1, 2, 3"),
                {"s": _ts(hour0 - timedelta(days=7)), "cut": _ts((now - timedelta(hours=24)).replace(
                    minute=0, second=0, microsecond=0))}):
            r = rows.setdefault((code, source, mtype), _row(checked, code, source, mtype))
            if r["last_message_at"] is None:
                last_hour = _parse(last_hour)
                r["last_message_at"] = _ts(last_hour + timedelta(minutes=59)) if last_hour else None
        # Usual volume for this hour of the week, and the usual quarantine rate, from the rollup.
        weeks = [_ts(hour0 - timedelta(hours=1) - timedelta(weeks=w)) for w in range(1, cfg.baseline_weeks + 1)]
        marks = ", ".join(f":w{i}" for i in range(len(weeks)))
        base = {}
        for code, source, mtype, n in conn.execute(text(
                f"SELECT facility_code, source, message_type, SUM(messages) FROM interface_volume_hourly "
                f"WHERE hour IN ({marks}) GROUP BY 1, 2, 3"), {f"w{i}": w for i, w in enumerate(weeks)}):
            base[(code, source, mtype)] = float(n) / len(weeks)
        qbase = {}
        for code, source, mtype, n, q in conn.execute(text(
                "SELECT facility_code, source, message_type, SUM(messages), SUM(quarantined) FROM interface_volume_hourly "
                "WHERE hour >= :a AND hour < :b GROUP BY 1, 2, 3"),
                {"a": _ts(hour0 - timedelta(days=8)), "b": _ts(hour0 - timedelta(days=1))}):
            qbase[(code, source, mtype)] = float(q or 0) / float(n) if n else None
        latency: dict[tuple, dict[int, int]] = {}
        for code, mtype, bucket, n in conn.execute(text(
                "SELECT facility_code, message_type, bucket_ms, SUM(n) FROM ack_latency WHERE minute >= :s "
                "GROUP BY 1, 2, 3"), {"s": h1}):
            latency.setdefault((code, mtype), {})[int(bucket)] = int(n)
        backlog = {code: (int(n), _parse(oldest)) for code, n, oldest in conn.execute(text(
            "SELECT facility_code, COUNT(*), MIN(received_at) FROM message_store WHERE status = 'received' "
            "GROUP BY facility_code"))}

    # Problems that cannot be judged now (too few messages) stay as they are: resolving them as
    # if they had passed made an interface near min_messages open and close all day.
    keep_open: set[str] = set()
    for key, r in rows.items():
        code, source, mtype = key
        r["expected_1h"] = base.get(key)
        r["quarantine_rate_24h"] = (r["_q24"] / r["messages_24h"]) if r["messages_24h"] else None
        last = _parse(r["last_message_at"])
        r["silence_minutes"] = round((now - last).total_seconds() / 60, 1) if last else None
        if source == "mllp" and (code, mtype) in latency:
            b = latency[(code, mtype)]
            r["ack_p50_ms"], r["ack_p95_ms"], r["ack_p99_ms"] = (_percentile(b, 0.5), _percentile(b, 0.95),
                                                                 _percentile(b, 0.99))
            sla = cfg.ack_sla_ms_critical if mtype in CRITICAL_TYPES else cfg.ack_sla_ms_standard
            if sum(b.values()) < cfg.min_messages:
                keep_open.add(f"ack_latency:{code}:{mtype}")
            elif r["ack_p95_ms"] > sla:
                r["_problems"].append(("ack_latency", "warning"))
                problems.append(Problem(f"ack_latency:{code}:{mtype}", "ack_latency", "warning", code,
                                        {"facility_code": code, "message_type": mtype, "p95_ms": r["ack_p95_ms"],
                                         "sla_ms": sla}))
        qb = qbase.get(key)
        n1, q1 = r["messages_1h"], r["_q1"]
        if n1 < cfg.min_messages or qb is None:
            keep_open.add(f"quarantine_spike:{code}:{source}:{mtype}")
        else:
            rate = q1 / n1
            if rate > qb * cfg.spike_factor and rate - qb >= cfg.spike_min_points:
                r["_problems"].append(("quarantine_spike", "warning"))
                problems.append(Problem(f"quarantine_spike:{code}:{source}:{mtype}", "quarantine_spike", "warning",
                                        code, {"facility_code": code, "source": source, "message_type": mtype,
                                               "rate_pct": round(rate * 100, 1), "baseline_pct": round(qb * 100, 1)}))
        n, oldest = backlog.get(code, (0, None))
        r["backlog"], r["backlog_oldest_at"] = n, _ts(oldest) if oldest else None

    # Silence is a facility's: no message at all, in its working hours, for longer than it
    # usually goes quiet.
    for f in facilities:
        fac_rows = [r for k, r in rows.items() if k[0] == f.code]
        if not fac_rows:
            fac_rows = [rows.setdefault((f.code, "-", "-"), _row(checked, f.code, "-", "-"))]
        lasts = [_parse(r["last_message_at"]) for r in fac_rows if r["last_message_at"]]
        last = max(lasts) if lasts else None
        working = in_working_hours(f, now)
        opened = opened_at(f, now) if working else None
        gap = working_minutes(f, last, now) if last else None
        if gap is None or gap > f.expected_interval_minutes:
            if working:
                for r in fac_rows:
                    r["_problems"].append(("silence", "error"))
                problems.append(Problem(f"silence:{f.code}", "silence", "error", f.code,
                                        {"facility_code": f.code, "minutes": None if gap is None else int(gap),
                                         "expected_minutes": f.expected_interval_minutes}))
            else:
                keep_open.add(f"silence:{f.code}")
                for r in fac_rows:
                    r["_off_hours"] = True
        elif opened is not None and (last is None or last < opened):
            # Nothing since the night: a silence still open from the day before is not over
            # because the working day just began; the first message ends it.
            keep_open.add(f"silence:{f.code}")

    total_backlog = [(n, o) for n, o in backlog.values() if o is not None]
    if total_backlog:
        oldest = min(o for _, o in total_backlog)
        age = (now - oldest).total_seconds() / 60
        if age > cfg.backlog_max_minutes:
            problems.append(Problem("backlog:received", "backlog_age", "error", None,
                                    {"count": sum(n for n, _ in total_backlog), "oldest_minutes": int(age),
                                     "threshold_minutes": cfg.backlog_max_minutes}))
            for r in rows.values():
                if r["backlog"]:
                    r["_problems"].append(("backlog_age", "error"))
    problems.extend(check_certificates(cfg, now))
    problems.extend(check_disks(cfg))

    out = []
    for r in rows.values():
        sev = {s for _, s in r["_problems"]}
        r["status"] = "critical" if "error" in sev else "warning" if sev else \
            "off_hours" if r.get("_off_hours") else "ok"
        r["problems"] = ",".join(sorted({k for k, _ in r["_problems"]})) or None
        out.append({k: v for k, v in r.items() if not k.startswith("_")})
    return Result(checked, sorted(out, key=lambda r: (r["facility_code"], r["source"], r["message_type"])), problems,
                  keep_open)


def _row(checked: str, code: str, source: str, mtype: str, n24: int = 0, q24: int = 0,
         last: datetime | None = None) -> dict:
    return {"checked_at": checked, "facility_code": code, "source": source, "message_type": mtype,
            "status": "ok", "messages_1h": 0, "messages_24h": n24, "expected_1h": None, "quarantine_rate_24h": None,
            "last_message_at": _ts(last) if last else None, "silence_minutes": None, "ack_p50_ms": None,
            "ack_p95_ms": None, "ack_p99_ms": None, "backlog": 0, "backlog_oldest_at": None, "problems": None,
            "_q1": 0, "_q24": q24, "_problems": []}


def check_certificates(cfg: MonitoringConfig, now: datetime) -> list[Problem]:
    from cryptography import x509

    out = []
    for path in cfg.tls_certificates:
        p = Path(path)
        try:
            cert = x509.load_pem_x509_certificate(p.read_bytes())
        except (OSError, ValueError) as exc:
            # Keyed and named by the whole path: two certificates called tls.crt (the listener's and
            # an outbound client's) shared one alert, and the operator could not tell which.
            out.append(Problem(f"tls:{p}", "tls_expiry", "error", None,
                               {"subject": "?", "days_left": None, "file": str(p), "error": type(exc).__name__}))
            continue
        left = (cert.not_valid_after_utc.replace(tzinfo=None) - now).total_seconds() / 86400
        if left < cfg.tls_warn_days:
            cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            out.append(Problem(f"tls:{p}", "tls_expiry", "error" if left < 7 else "warning", None,
                               {"subject": cn[0].value if cn else "?", "days_left": int(left), "file": str(p)}))
    return out


def check_disks(cfg: MonitoringConfig) -> list[Problem]:
    out = []
    for path in cfg.disk_paths:
        try:
            u = shutil.disk_usage(path)
        except OSError:
            continue
        pct = 100.0 * (u.total - u.free) / u.total if u.total else 0.0
        if pct > cfg.disk_max_percent:
            out.append(Problem(f"disk:{path}", "disk_usage", "error", None,
                               {"path": path, "percent": round(pct, 1), "threshold": cfg.disk_max_percent}))
    return out


HEALTH_COLUMNS = ("checked_at", "facility_code", "source", "message_type", "status", "messages_1h", "messages_24h",
                  "expected_1h", "quarantine_rate_24h", "last_message_at", "silence_minutes", "ack_p50_ms",
                  "ack_p95_ms", "ack_p99_ms", "backlog", "backlog_oldest_at", "problems")


def store(engine: Engine, result: Result, cfg: MonitoringConfig, now: datetime) -> None:
    """Write this check's rows (replacing a re-run of the same check) and drop old history."""
    with engine.begin() as conn:
        _serialize(conn)
        conn.execute(text("DELETE FROM interface_health WHERE checked_at = :c OR checked_at < :old"),
                     {"c": result.checked_at, "old": _ts(now - timedelta(days=cfg.health_retention_days))})
        Writer(conn).copy("interface_health", HEALTH_COLUMNS, [tuple(r[c] for c in HEALTH_COLUMNS) for r in result.rows])


def apply_alerts(alerter, problems: list[Problem], now: datetime | None = None, keep_open=()) -> dict:
    """Fire every current problem; resolve the monitoring problems that are gone, except
    ``keep_open`` (``Result.keep_open``)."""
    from .alerting import Alert

    fired = {}
    for p in problems:
        fired[p.key] = alerter.fire(Alert(key=p.key, kind=p.kind, severity=p.severity, facility_code=p.facility_code,
                                          dag_id="interface_monitoring", params=p.params), now=now)
    current = {p.key for p in problems}
    resolved = [k for prefix in KEY_PREFIXES for k in alerter.open_keys(prefix)
                if k not in current and k not in keep_open]
    for k in resolved:
        alerter.resolve(k, now=now)
    return {"fired": fired, "resolved": resolved}
