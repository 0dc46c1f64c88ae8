"""Monthly SLA report per facility, computed as the service's SLA defines it.

The SLA (seed): acknowledgement in under 2 s for critical messages (ADT) and under 5 s for the
rest; 99.9% monthly uptime of the real-time listener; no acknowledged message lost.

Inputs: ``listener_heartbeat`` (each running listener upserts a beat every few seconds: the
intervals it covers are uptime), ``ack_latency`` (ACK latencies per minute in histogram buckets
whose edges include 2 s and 5 s, so shares are exact), ``config/sla.yaml`` (scheduled maintenance
windows and the heartbeat tolerance) and a month ``YYYY-MM``. Output: ``SlaReport`` — listener
uptime, scheduled and unscheduled downtime (minutes), and per facility the messages acknowledged
and the share within their SLA — rendered as CSV and HTML by ``write``.

Definitions: downtime is time in the month not covered by any listener heartbeat interval
(``started_at`` to the last beat plus the tolerance, or to ``stopped_at``); time inside a declared
maintenance window is scheduled downtime, the rest unscheduled. Uptime = 1 - unscheduled downtime /
(month - scheduled downtime). A month before the first heartbeat ever has no uptime figure.
"""
from __future__ import annotations

import csv
import html
import io
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .config import ConfigError, read_yaml

UPTIME_TARGET = 0.999


@dataclass(frozen=True)
class SlaConfig:
    critical_types: tuple = ("ADT",)
    critical_ms: int = 2000
    standard_ms: int = 5000
    heartbeat_tolerance_seconds: int = 45  # a gap shorter than this between beats is not downtime
    maintenance: tuple = ()  # ((start, end, reason), ...) naive UTC datetimes

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> "SlaConfig":
        if not path or not Path(path).is_file():
            return cls()
        name = Path(path).name
        doc = read_yaml(path) or {}
        doc = (doc.get("sla") if isinstance(doc, dict) else None) or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{name}: expected a top-level 'sla:' mapping")
        windows = []
        for i, w in enumerate(doc.get("maintenance") or []):
            try:
                start, end = _dt(w["start"]), _dt(w["end"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{name}: maintenance #{i + 1} needs 'start' and 'end' as 'YYYY-MM-DD HH:MM' (UTC)") from None
            if end <= start:
                raise ConfigError(f"{name}: maintenance #{i + 1} ends before it starts")
            windows.append((start, end, str(w.get("reason") or "")))
        try:
            tol = int(doc.get("heartbeat_tolerance_seconds", cls.heartbeat_tolerance_seconds))
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: heartbeat_tolerance_seconds must be an integer") from None
        return cls(heartbeat_tolerance_seconds=tol, maintenance=tuple(windows))


def _dt(v) -> datetime:
    if isinstance(v, datetime):
        return v.replace(tzinfo=None)
    return datetime.fromisoformat(str(v).replace("T", " ")).replace(tzinfo=None)


def month_bounds(month: str) -> tuple[datetime, datetime]:
    try:
        first = datetime.strptime(month, "%Y-%m")
    except ValueError:
        raise ConfigError(f"month must be YYYY-MM, not {month!r}") from None
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return first, nxt


def _merge(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[list[datetime]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _outside(gap: tuple[datetime, datetime], windows: list[tuple[datetime, datetime]]) -> list[tuple]:
    """The parts of ``gap`` outside the (merged, sorted) maintenance ``windows``: an outage that
    ran into a window is listed for its unscheduled minutes only."""
    out, start = [], gap[0]
    for a, b in windows:
        if b <= start or a >= gap[1]:
            continue
        if a > start:
            out.append((start, a))
        start = max(start, b)
    if start < gap[1]:
        out.append((start, gap[1]))
    return out


def _overlap(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> float:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return max(0.0, (hi - lo).total_seconds())


@dataclass
class FacilitySla:
    facility_code: str
    critical_messages: int = 0
    critical_within: int = 0
    standard_messages: int = 0
    standard_within: int = 0

    @property
    def critical_share(self) -> float | None:
        return self.critical_within / self.critical_messages if self.critical_messages else None

    @property
    def standard_share(self) -> float | None:
        return self.standard_within / self.standard_messages if self.standard_messages else None


@dataclass
class SlaReport:
    month: str
    start: datetime
    end: datetime
    measured_from: datetime | None  # first heartbeat ever (None: the listener never ran)
    uptime: float | None
    scheduled_downtime_minutes: float
    unscheduled_downtime_minutes: float
    outages: list[tuple[datetime, datetime]] = field(default_factory=list)  # unscheduled gaps
    facilities: list[FacilitySla] = field(default_factory=list)


def compute(engine: Engine, month: str, cfg: SlaConfig | None = None, now: datetime | None = None) -> SlaReport:
    cfg = cfg or SlaConfig()
    start, end = month_bounds(month)
    now = now or datetime.utcnow()
    end_eff = min(end, now)  # the current month counts up to now
    tol = timedelta(seconds=cfg.heartbeat_tolerance_seconds)
    with engine.connect() as conn:
        first = conn.execute(text("SELECT MIN(started_at) FROM listener_heartbeat")).scalar()
        beats = conn.execute(text(
            "SELECT started_at, beat_at, stopped_at FROM listener_heartbeat WHERE beat_at >= :s AND started_at < :e"),
            {"s": start - tol, "e": end}).all()
        lat = conn.execute(text(
            "SELECT facility_code, message_type, bucket_ms, SUM(n) FROM ack_latency WHERE minute >= :s AND minute < :e "
            "GROUP BY 1, 2, 3"), {"s": start, "e": end}).all()
    first = _dt(first) if first is not None else None
    up = _merge([(_dt(s), _dt(x) if x is not None else _dt(b) + tol) for s, b, x, in beats])
    # Downtime counts only from the first heartbeat ever (the service did not exist before).
    window_start = max(start, first) if first else None
    gaps: list[tuple[datetime, datetime]] = []
    if window_start is not None and window_start < end_eff:
        cursor = window_start
        for a, b in up:
            if b <= cursor:
                continue
            if a > cursor:
                gaps.append((cursor, min(a, end_eff)))
            cursor = max(cursor, b)
            if cursor >= end_eff:
                break
        if cursor < end_eff:
            gaps.append((cursor, end_eff))
    gaps = [(a, b) for a, b in gaps if b > a]
    # Merged first: overlapping windows would count their shared minutes twice, and adjacent
    # ones would each cover only part of an outage that spans both.
    windows = _merge([(w[0], w[1]) for w in cfg.maintenance])
    scheduled = sum(_overlap(g, w) for g in gaps for w in windows)
    down = sum((b - a).total_seconds() for a, b in gaps)
    unscheduled = down - scheduled
    outages = [piece for g in gaps for piece in _outside(g, windows)]
    uptime = None
    if window_start is not None and window_start < end_eff:
        total = (end_eff - window_start).total_seconds() - scheduled
        uptime = 1.0 - unscheduled / total if total > 0 else None
    per: dict[str, FacilitySla] = {}
    for code, mtype, bucket, n in lat:
        bucket, n = int(bucket), int(n)  # PostgreSQL sums BIGINT as NUMERIC
        f = per.setdefault(code, FacilitySla(code))
        within = bucket >= 0
        if mtype in cfg.critical_types:
            f.critical_messages += n
            f.critical_within += n if within and bucket <= cfg.critical_ms else 0
        else:
            f.standard_messages += n
            f.standard_within += n if within and bucket <= cfg.standard_ms else 0
    return SlaReport(month, start, end, first, uptime, scheduled / 60, unscheduled / 60, outages,
                     [per[k] for k in sorted(per)])


def _pct(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v * 100:.{digits}f}%"


CSV_COLUMNS = ("month", "facility_code", "critical_messages", "critical_within_2s", "critical_share",
               "standard_messages", "standard_within_5s", "standard_share", "listener_uptime",
               "unscheduled_downtime_minutes", "scheduled_downtime_minutes")


def to_csv(r: SlaReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    common = (_pct(r.uptime, 3), f"{r.unscheduled_downtime_minutes:.1f}", f"{r.scheduled_downtime_minutes:.1f}")
    for f in r.facilities or [FacilitySla("ALL")]:
        w.writerow((r.month, f.facility_code, f.critical_messages, f.critical_within, _pct(f.critical_share),
                    f.standard_messages, f.standard_within, _pct(f.standard_share), *common))
    return buf.getvalue()


def _mark(share: float | None) -> str:
    return "ok" if share is None or round(share, 4) >= 0.999 else "bad"


def to_html(r: SlaReport, names: dict[str, str] | None = None) -> str:
    names = names or {}
    e = html.escape
    # Judged on the figure shown: 99.899% printed as 99.90% must not be red against 99.9%.
    ok = r.uptime is not None and round(r.uptime, 5) >= UPTIME_TARGET
    rows = []
    for f in r.facilities:
        rows.append("<tr><td>{}</td><td>{}</td><td class='{}'>{}</td><td>{}</td><td class='{}'>{}</td></tr>".format(
            e(f"{names.get(f.facility_code, f.facility_code)} ({f.facility_code})"), f.critical_messages,
            _mark(f.critical_share), _pct(f.critical_share), f.standard_messages,
            _mark(f.standard_share), _pct(f.standard_share)))
    shown = r.outages[:100]
    outages = "".join(f"<li>{a:%Y-%m-%d %H:%M:%S} → {b:%Y-%m-%d %H:%M:%S} UTC ({(b - a).total_seconds() / 60:.1f} min)</li>"
                      for a, b in shown) or "<li>none / aucune</li>"
    if len(r.outages) > len(shown):
        outages += f"<li>… {len(r.outages) - len(shown)} more / de plus</li>"
    uptime = _pct(r.uptime, 3) if r.uptime is not None else "no listener data / pas de données du récepteur"
    return f"""<!doctype html><html lang="fr"><head><meta charset="utf-8">
<title>SLA {e(r.month)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
.ok{{color:#2ca02c}}.bad{{color:#d62728;font-weight:bold}}.big{{font-size:2em}}</style></head><body>
<h1>Rapport SLA / SLA report — {e(r.month)}</h1>
<p>Disponibilité du récepteur MLLP / MLLP listener uptime:
<span class="big {'ok' if ok else 'bad'}" id="uptime">{e(uptime)}</span> (objectif / target 99.9%)</p>
<p>Indisponibilité non planifiée / unscheduled downtime: <b id="unscheduled">{r.unscheduled_downtime_minutes:.1f}</b> min ·
planifiée / scheduled: {r.scheduled_downtime_minutes:.1f} min</p>
<h2>Accusés de réception dans les délais / ACKs within SLA</h2>
<table><tr><th>Formation / Facility</th><th>Critiques (ADT)</th><th>&lt; 2 s</th><th>Standard</th><th>&lt; 5 s</th></tr>
{''.join(rows) or '<tr><td colspan=5>no real-time traffic / pas de trafic temps réel</td></tr>'}</table>
<h2>Interruptions non planifiées / Unscheduled outages</h2><ul>{outages}</ul>
</body></html>"""


def write(r: SlaReport, out_dir: Path, names: dict[str, str] | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, html_path = out_dir / f"sla-{r.month}.csv", out_dir / f"sla-{r.month}.html"
    csv_path.write_text(to_csv(r), encoding="utf-8")
    html_path.write_text(to_html(r, names), encoding="utf-8")
    return [csv_path, html_path]


def format_text(r: SlaReport) -> str:
    lines = [f"SLA {r.month}: listener uptime {_pct(r.uptime, 3) or 'n/a (no listener data)'}, "
             f"unscheduled downtime {r.unscheduled_downtime_minutes:.1f} min, scheduled {r.scheduled_downtime_minutes:.1f} min",
             f"{'facility':<16}{'critical':>10}{'<2s':>10}{'standard':>10}{'<5s':>10}"]
    for f in r.facilities:
        lines.append(f"{f.facility_code:<16}{f.critical_messages:>10}{_pct(f.critical_share):>10}"
                     f"{f.standard_messages:>10}{_pct(f.standard_share):>10}")
    return "\n".join(lines)


def previous_month(today: date) -> str:
    first = today.replace(day=1)
    return (first - timedelta(days=1)).strftime("%Y-%m")
