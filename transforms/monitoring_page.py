"""The interface monitoring page: what it reads from the warehouse and how it is drawn.

Inputs: the warehouse tables the ``interface_monitoring`` DAG maintains (``interface_health``, the
latest snapshot being the rows with the greatest ``checked_at``; ``interface_volume_hourly``), the
open ``ops_alert`` rows, the open ``quarantine`` rows and ``dim_facility``; optional ``region`` and
``facility`` filters. The queries are the named ones in ``sql/monitoring_page.sql``.

Outputs: ``fetch`` returns a ``PageData`` (plain rows and series, JSON-able); ``render_page`` turns
it into one self-contained bilingual HTML page (FR/EN): inline CSS, inline SVG charts, no script,
font or file fetched from anywhere. The small drawing helpers (``sparkline``, ``bar_chart``) and the
tables are pure functions so they can be tested without a browser or Airflow. The Airflow plugin
(``plugins/hl7ics_airflow/monitoring_ui.py``) only adds authentication and HTTP around them.

Time windows are anchored at the latest check, not at the wall clock, so the sparklines, the
daily chart and the table always describe the same moment; a banner says when that check is old
(the DAG stopped). Only counts, codes, facility names and alert texts (written never to hold
patient data) reach the page, and every text is HTML-escaped. No Airflow import here.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import urlencode

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .warehouse import named_queries

SQL_FILE = "monitoring_page.sql"
STATUSES = ("critical", "warning", "ok", "off_hours")
# The d3 "category10" green, orange, red, blue and grey: distinct for most colour vision
# deficiencies, and exact enough for the screenshot test to find them.
COLORS = {"ok": "#2ca02c", "warning": "#ff7f0e", "critical": "#d62728", "off_hours": "#7f7f7f",
          "messages": "#1f77b4", "quarantined": "#d62728"}
STATUS_LABELS = {"ok": "OK", "warning": "Avertissement / Warning", "critical": "Critique / Critical",
                 "off_hours": "Hors horaires / Off hours"}
PROBLEM_LABELS = {"silence": "Silence", "quarantine_spike": "Pic de quarantaine / Quarantine spike",
                  "ack_latency": "Latence ACK / ACK latency", "backlog_age": "File en retard / Backlog age"}
MAX_ALERTS = 50
HOURS = 24
DAYS = 7
STALE_AFTER = timedelta(minutes=15)  # three missed 5-minute checks


# --------------------------------------------------------------------------------------------------
# Reading


def queries() -> dict[str, str]:
    """The named queries of ``sql/monitoring_page.sql`` (``-- name: key`` starts each one)."""
    return named_queries(SQL_FILE)


@dataclass
class PageData:
    checked_at: str | None                 # latest check (naive UTC text), None before the first
    now: str                               # wall clock when read, for the staleness banner
    region: str | None = None
    facility: str | None = None
    facilities: list[dict] = field(default_factory=list)   # every facility, for the filter form
    interfaces: list[dict] = field(default_factory=list)   # the latest snapshot, filtered
    hours: list[str] = field(default_factory=list)         # the 24 hours of the sparklines
    hourly: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # interface key -> series
    days: list[dict] = field(default_factory=list)         # day, messages, quarantined, duplicates
    alerts: list[dict] = field(default_factory=list)       # open alerts, latest first (at most 50)
    alerts_total: int = 0
    reasons: list[dict] = field(default_factory=list)      # open quarantine per stage and reason
    outbound: list[dict] = field(default_factory=list)     # routed copies per destination and status


def interface_key(facility_code: str, source: str, message_type: str) -> str:
    return f"{facility_code}|{source}|{message_type}"


def _ts(value) -> str | None:
    """A timestamp as the page shows it: ``YYYY-MM-DD HH:MM:SS`` (PostgreSQL returns datetime,
    SQLite the stored text)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return f"{value.isoformat()} 00:00:00"
    return str(value)[:19].replace("T", " ")


def _dt(value) -> datetime | None:
    s = _ts(value)
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S") if s else None


def _num(value):
    """Drivers' numbers as JSON-able Python numbers (PostgreSQL sums come back as Decimal)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def fetch(engine: Engine, region: str | None = None, facility: str | None = None,
          now: datetime | None = None, max_alerts: int = MAX_ALERTS) -> PageData:
    """Read everything the page shows, for the given filters, in one connection."""
    q = queries()
    region, facility = _clean(region), _clean(facility)
    now = (now or datetime.now(timezone.utc)).replace(tzinfo=None, microsecond=0)
    flt = {"region": region, "facility": facility}
    with engine.connect() as conn:
        facilities = [dict(r._mapping) for r in conn.execute(text(q["facilities"]))]
        checked_raw = conn.execute(text(q["latest_check"])).scalar()
        checked = _dt(checked_raw)
        anchor = checked or now
        hour0 = anchor.replace(minute=0, second=0)
        first_hour = hour0 - timedelta(hours=HOURS - 1)
        first_day = datetime.combine(anchor.date() - timedelta(days=DAYS - 1), datetime.min.time())
        until = _ts(hour0 + timedelta(hours=1))

        interfaces = []
        if checked_raw is not None:
            for r in conn.execute(text(q["interfaces"]), {"checked_at": checked_raw, **flt}):
                row = {k: _num(v) for k, v in r._mapping.items()}
                for k in ("checked_at", "last_message_at", "backlog_oldest_at"):
                    row[k] = _ts(row[k])
                interfaces.append(row)

        hours = [_ts(first_hour + timedelta(hours=i)) for i in range(HOURS)]
        index = {h: i for i, h in enumerate(hours)}
        hourly: dict[str, dict[str, list[int]]] = {}
        for r in conn.execute(text(q["hourly_volume"]), {"since_at": _ts(first_hour), "until_at": until, **flt}):
            i = index.get(_ts(r.hour))
            if i is None:
                continue
            s = hourly.setdefault(interface_key(r.facility_code, r.source, r.message_type),
                                  {"messages": [0] * HOURS, "quarantined": [0] * HOURS})
            s["messages"][i] += int(r.messages)
            s["quarantined"][i] += int(r.quarantined)

        by_day = {str(r.day): r for r in conn.execute(text(q["daily_volume"]),
                                                      {"since_at": _ts(first_day), "until_at": until, **flt})}
        days = []
        for i in range(DAYS):
            d = (first_day + timedelta(days=i)).date().isoformat()
            r = by_day.get(d)
            days.append({"day": d, "messages": int(r.messages) if r else 0,
                         "quarantined": int(r.quarantined) if r else 0,
                         "duplicates": int(r.duplicates) if r else 0})

        alerts, total = [], 0
        for r in conn.execute(text(q["open_alerts"]), {**flt, "limit": max_alerts}):
            row = {k: _num(v) for k, v in r._mapping.items()}
            total = int(row.pop("total"))
            row["created_at"] = _ts(row["created_at"])
            alerts.append(row)

        name = "quarantine_reasons_filtered" if (region or facility) else "quarantine_reasons"
        reasons = [{"stage": r.stage, "reason": r.reason, "n": int(r.n), "oldest_at": _ts(r.oldest_at)}
                   for r in conn.execute(text(q[name]), flt if (region or facility) else {})]

    return PageData(checked_at=_ts(checked_raw), now=_ts(now), region=region, facility=facility,
                    facilities=facilities, interfaces=interfaces, hours=hours, hourly=hourly, days=days,
                    alerts=alerts, alerts_total=total, reasons=reasons, outbound=_outbound(engine))


# --------------------------------------------------------------------------------------------------
# Drawing


def esc(value) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _fmt_int(n) -> str:
    return "—" if n is None else f"{int(n):,}".replace(",", "\u202f")  # narrow no-break space: FR and EN read it


def _fmt_rate(r) -> str:
    return "—" if r is None else f"{100 * float(r):.1f} %"


def _fmt_minutes(m) -> str:
    if m is None:
        return "—"
    m = float(m)
    if m < 60:
        return f"{m:.0f} min"
    if m < 48 * 60:
        return f"{int(m // 60)} h {int(m % 60):02d}"
    return f"{m / 1440:.0f} j/d"


def _fmt_ms(v) -> str:
    return "—" if v is None else f"{float(v):,.0f} ms".replace(",", "\u202f")


def sparkline(messages: list[int], quarantined: list[int], width: int = 120, height: int = 28) -> str:
    """Inline SVG of hourly messages (blue line) and quarantined (red line) on one scale.

    One scale for both so the red line's height is the real share of the volume; the exact
    totals are in the tooltip. ``data-points`` is the number of hours drawn.
    """
    n = max(len(messages), 1)
    top = max([1, *messages, *quarantined])
    pad = 2.0
    step = (width - 2 * pad) / max(n - 1, 1)

    def points(values: list[int]) -> str:
        return " ".join(f"{pad + i * step:.1f},{height - pad - (v / top) * (height - 2 * pad):.1f}"
                        for i, v in enumerate(values))

    label = (f"{HOURS} h : {sum(messages)} messages, {sum(quarantined)} en quarantaine / "
             f"{sum(messages)} messages, {sum(quarantined)} quarantined")
    return (f'<svg class="spark" data-points="{len(messages)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}"><title>{esc(label)}</title>'
            f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" class="axis"/>'
            # messages drawn last: on an hour without quarantine the blue line is the one seen
            f'<polyline class="spark-quarantined" fill="none" stroke="{COLORS["quarantined"]}" stroke-width="2" '
            f'points="{points(quarantined)}"/>'
            f'<polyline class="spark-messages" fill="none" stroke="{COLORS["messages"]}" stroke-width="2" '
            f'points="{points(messages)}"/></svg>')


def bar_chart(labels: list[str], values: list[int], color: str, title: str, css_class: str,
              width: int = 420, height: int = 170) -> str:
    """Inline SVG bar chart, one bar per label, its own scale (0 to the largest value)."""
    if not values or not any(values):
        return f'<p class="empty {esc(css_class)}">{esc(title)} : aucune donnée / no data</p>'
    left, right, top_pad, bottom = 48, 8, 22, 22
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    top = max(values)
    slot = plot_w / len(values)
    bar_w = max(slot * 0.7, 1)
    parts = [f'<svg class="chart {esc(css_class)}" data-bars="{len(values)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<title>{esc(title)}</title>',
             f'<text x="{left}" y="14" class="chart-title">{esc(title)}</text>',
             f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - right}" y2="{top_pad + plot_h}" class="axis"/>',
             f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" class="axis"/>',
             f'<text x="{left - 4}" y="{top_pad + 4}" text-anchor="end" class="tick">{esc(_fmt_int(top))}</text>',
             f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end" class="tick">0</text>']
    for i, (lab, v) in enumerate(zip(labels, values)):
        h = plot_h * v / top
        x = left + i * slot + (slot - bar_w) / 2
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{top_pad + plot_h - h:.1f}" width="{bar_w:.1f}" '
                     f'height="{h:.1f}" fill="{color}"><title>{esc(lab)} : {esc(_fmt_int(v))}</title></rect>')
        parts.append(f'<text x="{left + i * slot + slot / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                     f'class="tick">{esc(lab[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def status_badge(status: str | None) -> str:
    s = status if status in STATUS_LABELS else "unknown"
    return f'<span class="badge st-{s}" data-status="{esc(status)}">{esc(STATUS_LABELS.get(s, status))}</span>'


def problems_cell(problems: str | None) -> str:
    kinds = [p.strip() for p in (problems or "").split(",") if p.strip()]
    return " ".join(f'<span class="tag" data-kind="{esc(k)}">{esc(PROBLEM_LABELS.get(k, k))}</span>' for k in kinds)


def interfaces_table(rows: list[dict], hourly: dict[str, dict[str, list[int]]]) -> str:
    if not rows:
        return ('<p class="empty" id="no-interfaces">Aucune interface pour ce filtre / '
                'No interface matches this filter.</p>')
    head = ("<tr><th>Statut<br>Status</th><th>Formation<br>Facility</th><th>Région<br>Region</th>"
            "<th>Source</th><th>Type</th><th>Msg 1 h / attendu<br>Msg 1 h / expected</th><th>Msg 24 h</th>"
            "<th>Quarantaine 24 h<br>Quarantine 24 h</th><th>Silence</th><th>ACK p95</th>"
            "<th>File d'attente<br>Backlog</th><th>Problèmes<br>Problems</th><th>Volume 24 h</th></tr>")
    empty = [0] * HOURS
    body = []
    for r in rows:
        s = hourly.get(interface_key(r["facility_code"], r["source"], r["message_type"]),
                       {"messages": empty, "quarantined": empty})
        expected = "—" if r.get("expected_1h") is None else f"{float(r['expected_1h']):.0f}"
        backlog_title = (f' title="plus ancien / oldest {esc(r["backlog_oldest_at"])}"'
                         if r.get("backlog_oldest_at") else "")
        name = r.get("name")
        body.append(
            f'<tr class="iface" data-facility="{esc(r["facility_code"])}" data-status="{esc(r["status"])}">'
            f'<td class="status">{status_badge(r["status"])}</td>'
            f'<td class="facility"><span class="code">{esc(r["facility_code"])}</span>'
            f'{"<br><small>" + esc(name) + "</small>" if name else ""}</td>'
            f'<td>{esc(r.get("region") or "—")}</td><td>{esc(r["source"])}</td><td>{esc(r["message_type"])}</td>'
            f'<td class="num">{_fmt_int(r["messages_1h"])} / {expected}</td>'
            f'<td class="num">{_fmt_int(r["messages_24h"])}</td>'
            f'<td class="num">{_fmt_rate(r.get("quarantine_rate_24h"))}</td>'
            f'<td class="num">{_fmt_minutes(r.get("silence_minutes"))}</td>'
            f'<td class="num">{_fmt_ms(r.get("ack_p95_ms"))}</td>'
            f'<td class="num"{backlog_title}>{_fmt_int(r.get("backlog"))}</td>'
            f'<td>{problems_cell(r.get("problems"))}</td>'
            f'<td class="spark-cell">{sparkline(s["messages"], s["quarantined"])}</td></tr>')
    return f'<table id="interfaces"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _safe_link(url: str | None) -> str | None:
    """Only http(s) and same-site paths become links: never ``javascript:`` or ``data:``."""
    if url and re.match(r"^(https?://|/(?!/))", url, re.IGNORECASE):
        return url
    return None


def alerts_table(rows: list[dict], total: int) -> str:
    if not rows:
        return '<p class="empty" id="no-alerts">Aucune alerte ouverte / No open alert.</p>'
    note = (f'<p class="note">{len(rows)} plus récentes sur {total} / latest {len(rows)} of {total}</p>'
            if total > len(rows) else "")
    body = []
    for a in rows:
        link = _safe_link(a.get("log_url"))
        sev = a.get("severity") or ""
        sev_class = "critical" if sev in ("error", "critical") else "warning" if sev == "warning" else "other"
        where = " / ".join(esc(x) for x in (a.get("dag_id"), a.get("task_id")) if x)
        log = f'<a href="{esc(link)}" target="_top" rel="noopener noreferrer">log</a>' if link else ""
        body.append(
            f'<tr class="alert" data-severity="{esc(sev)}" data-facility="{esc(a.get("facility_code") or "")}">'
            f'<td>{esc(a["created_at"])}</td>'
            f'<td><span class="sev sev-{sev_class}">{esc(sev)}</span></td>'
            f'<td>{esc(a.get("facility_code") or "toutes / all")}</td><td>{where}</td>'
            f'<td>{esc(a.get("error_class") or "")}</td><td class="msg">{esc(a.get("message"))}</td>'
            f'<td>{log}</td></tr>')
    return (f'{note}<table id="alerts"><thead><tr><th>Depuis<br>Since (UTC)</th><th>Gravité<br>Severity</th>'
            f'<th>Formation<br>Facility</th><th>DAG / tâche<br>DAG / task</th><th>Classe<br>Class</th>'
            f'<th>Message</th><th></th></tr></thead><tbody>{"".join(body)}</tbody></table>')


def _outbound(engine: Engine) -> list[dict]:
    """Routed copies per destination and status (a small table; never message content)."""
    with engine.connect() as c:
        rows = c.execute(text(q_outbound())).all()
    out: dict[str, dict] = {}
    for dest, status, n, oldest in rows:
        d = out.setdefault(dest, {"destination": dest, "oldest_open_at": None})
        d[status] = int(n)
        if status in ("pending", "sending", "failed") and oldest is not None:
            o = _ts(oldest)
            d["oldest_open_at"] = min(filter(None, (d["oldest_open_at"], o)))
    return [out[k] for k in sorted(out)]


def q_outbound() -> str:
    return queries()["outbound_by_destination"]


def outbound_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="empty" id="no-outbound">Aucun routage configuré ou aucun message routé / Nothing routed.</p>'
    cells = []
    for r in rows:
        dead = r.get("dead", 0)
        cells.append(f'<tr data-destination="{esc(r["destination"])}"><td>{esc(r["destination"])}</td>'
                     f'<td>{r.get("pending", 0) + r.get("sending", 0)}</td><td>{r.get("failed", 0)}</td>'
                     f'<td class="{"dead" if dead else ""}">{dead}</td><td>{r.get("delivered", 0)}</td>'
                     f'<td>{esc(r["oldest_open_at"] or "")}</td></tr>')
    return ('<table id="outbound"><thead><tr><th>Destination</th><th>En attente<br>Pending</th>'
            '<th>En échec<br>Failed (retrying)</th><th>Lettres mortes<br>Dead letters</th><th>Livrés<br>Delivered</th>'
            '<th>Plus ancien ouvert<br>Oldest open (UTC)</th></tr></thead><tbody>' + "".join(cells) + "</tbody></table>")


def reasons_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="empty" id="no-quarantine">Aucun message en quarantaine / Nothing in quarantine.</p>'
    top = max(r["n"] for r in rows) or 1
    body = "".join(
        f'<tr class="reason" data-reason="{esc(r["reason"])}"><td><code>{esc(r["reason"])}</code></td>'
        f'<td>{esc(r["stage"])}</td><td class="num">{_fmt_int(r["n"])}</td>'
        f'<td><svg class="hbar" width="160" height="12" viewBox="0 0 160 12" aria-hidden="true">'
        f'<rect x="0" y="1" width="{max(160 * r["n"] / top, 1):.1f}" height="10" fill="{COLORS["quarantined"]}"/>'
        f'</svg></td><td>{esc(r["oldest_at"])}</td></tr>' for r in rows)
    return (f'<table id="reasons"><thead><tr><th>Motif<br>Reason</th><th>Étape<br>Stage</th>'
            f'<th>Messages</th><th></th><th>Plus ancien<br>Oldest (UTC)</th></tr></thead><tbody>{body}</tbody></table>')


def filters_form(facilities: list[dict], region: str | None, facility: str | None) -> str:
    regions = sorted({f["region"] for f in facilities if f.get("region")})
    if region and region not in regions:
        regions.append(region)  # keep an unknown choice visible (it simply matches nothing)
    opts_r = ['<option value="">Toutes / All</option>'] + [
        f'<option value="{esc(r)}"{" selected" if r == region else ""}>{esc(r)}</option>' for r in regions]
    opts_f = ['<option value="">Toutes / All</option>']
    codes = set()
    for reg in sorted({f.get("region") or "" for f in facilities}):
        items = [f for f in facilities if (f.get("region") or "") == reg]
        opts_f.append(f'<optgroup label="{esc(reg or "—")}">')
        for f in items:
            codes.add(f["facility_code"])
            opts_f.append(f'<option value="{esc(f["facility_code"])}"'
                          f'{" selected" if f["facility_code"] == facility else ""}>'
                          f'{esc(f["facility_code"])} — {esc(f.get("name"))}</option>')
        opts_f.append("</optgroup>")
    if facility and facility not in codes:
        opts_f.append(f'<option value="{esc(facility)}" selected>{esc(facility)}</option>')
    return ('<form method="get" action="" id="filters">'
            f'<label>Région / Region <select name="region">{"".join(opts_r)}</select></label> '
            f'<label>Formation / Facility <select name="facility">{"".join(opts_f)}</select></label> '
            '<button type="submit">Filtrer / Filter</button> <a href="./">Tout afficher / Show all</a></form>')


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:16px;color:#1a1a1a;
background:#fff;font-size:14px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #e3e3e3;padding:4px 6px;text-align:left;
vertical-align:middle}th{background:#f4f4f4;font-weight:600;font-size:12px}td.num{text-align:right;
white-space:nowrap}tbody tr:nth-child(even){background:#fafafa}
.badge{display:inline-block;min-width:88px;padding:3px 6px;border-radius:3px;font-weight:600;font-size:12px;
text-align:center;color:#fff;white-space:nowrap}
.st-ok{background-color:#2ca02c}.st-warning{background-color:#ff7f0e;color:#1a1a1a}
.st-critical{background-color:#d62728}.st-off_hours{background-color:#7f7f7f}.st-unknown{background-color:#444}
.tag{display:inline-block;border:1px solid #bbb;border-radius:3px;padding:0 4px;margin:1px;font-size:12px}
.code{font-family:ui-monospace,monospace;font-weight:600}
.sev{font-weight:600}.sev-critical{color:#b71c1c}.sev-warning{color:#a84f00}
.summary span{margin-right:14px}.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px}
.stale{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px;margin:8px 0}
.empty{color:#666;font-style:italic}.note{color:#555;margin:4px 0}
.charts{display:flex;flex-wrap:wrap;gap:24px}
svg .axis{stroke:#999;stroke-width:1}svg .tick{font-size:10px;fill:#555}svg .chart-title{font-size:12px;fill:#222;
font-weight:600}
form{margin:10px 0}select{max-width:360px}td.msg{max-width:480px;word-break:break-word}
#daily,#reasons{width:auto;min-width:480px}
"""


def render_page(data: PageData, now: datetime | None = None) -> str:
    """The whole page as one HTML string."""
    now_dt = _dt(data.now) if now is None else now
    checked = _dt(data.checked_at)
    counts = {s: 0 for s in STATUSES}
    for r in data.interfaces:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = "".join(
        f'<span class="count" data-status="{esc(s)}"><span class="dot st-{s if s in STATUS_LABELS else "unknown"}">'
        f'</span>{esc(STATUS_LABELS.get(s, s))} : {n}</span>' for s, n in counts.items() if n)
    if checked is None:
        banner = ('<p class="stale" id="stale">Aucune vérification enregistrée : le DAG interface_monitoring '
                  "n'a pas encore tourné / No check recorded yet: the interface_monitoring DAG has not run.</p>")
    elif now_dt - checked > STALE_AFTER:
        age = _fmt_minutes((now_dt - checked).total_seconds() / 60)
        banner = (f'<p class="stale" id="stale">Données anciennes : dernière vérification il y a {esc(age)} '
                  f"(le DAG interface_monitoring tourne-t-il ?) / Stale data: last check {esc(age)} ago "
                  f"(is the interface_monitoring DAG running?)</p>")
    else:
        banner = ""
    scope = " · ".join(esc(x) for x in (data.region, data.facility) if x) or "toutes / all"
    qs = urlencode({k: v for k, v in (("region", data.region), ("facility", data.facility)) if v})
    day_labels = [d["day"] for d in data.days]
    charts = (bar_chart(day_labels, [d["messages"] for d in data.days], COLORS["messages"],
                        "Messages par jour / Messages per day", "chart-messages")
              + bar_chart(day_labels, [d["quarantined"] for d in data.days], COLORS["quarantined"],
                          "Quarantaine par jour / Quarantined per day", "chart-quarantined"))
    day_rows = "".join(
        f'<tr><td>{esc(d["day"])}</td><td class="num">{_fmt_int(d["messages"])}</td>'
        f'<td class="num">{_fmt_int(d["quarantined"])}</td><td class="num">{_fmt_int(d["duplicates"])}</td>'
        f'<td class="num">{_fmt_rate(d["quarantined"] / d["messages"] if d["messages"] else None)}</td></tr>'
        for d in data.days)
    return f"""<!DOCTYPE html>
<html lang="fr"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="300">
<title>Surveillance des interfaces / Interface monitoring</title>
<style>{CSS}</style></head>
<body>
<h1>Surveillance des interfaces / Interface monitoring</h1>
<p class="meta">Dernière vérification / Last check (UTC) : <strong id="checked-at">{esc(data.checked_at or "—")}</strong>
· Périmètre / Scope : <strong id="scope">{scope}</strong>
· <a href="api/interfaces{"?" + esc(qs) if qs else ""}">JSON</a></p>
{banner}
{filters_form(data.facilities, data.region, data.facility)}
<p class="summary" id="summary">{summary}</p>
<h2>Interfaces ({len(data.interfaces)})</h2>
<p class="note">Une interface = formation × source × type de message ; courbes : messages (bleu) et quarantaine
(rouge) par heure sur 24 h / One interface = facility × source × message type; lines: messages (blue) and
quarantined (red) per hour over 24 h.</p>
{interfaces_table(data.interfaces, data.hourly)}
<h2>Volume et erreurs, 7 jours / Volume and errors, 7 days</h2>
<div class="charts" id="daily-charts">{charts}</div>
<table id="daily"><thead><tr><th>Jour<br>Day (UTC)</th><th>Messages</th><th>Quarantaine<br>Quarantined</th>
<th>Doublons<br>Duplicates</th><th>Taux<br>Rate</th></tr></thead><tbody>{day_rows}</tbody></table>
<h2>Alertes ouvertes / Open alerts ({data.alerts_total})</h2>
{alerts_table(data.alerts, data.alerts_total)}
<h2>Quarantaine ouverte par motif / Open quarantine by reason</h2>
{reasons_table(data.reasons)}
<h2>Livraison sortante / Outbound delivery</h2>
<p class="note">Chaque message routé, par destination (message_route relie chaque message reçu à ses copies et
leurs accusés) / Each routed copy by destination (message_route traces every hop to its ACK).</p>
{outbound_table(data.outbound)}
</body></html>
"""
