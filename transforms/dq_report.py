"""Data-quality report: the ``dq_daily`` table, a terminal summary and a static HTML report.

Inputs: ``dq_result`` (migration 005), where each load's Great Expectations validation counts, per
run, facility, table and expectation, the rows it checked (``evaluated``) and the rows that broke
the expectation (``failed``), with the expectation's ``severity`` (``error`` or ``warning``).

Outputs:

- ``dq_daily``: the plain per-day table for statisticians, one row per UTC day (of ``created_at``),
  facility, table and expectation, with the summed counts and ``failure_rate`` = failed / evaluated
  (0 when nothing was evaluated). ``rebuild_daily`` recomputes whole days from ``dq_result``, so it
  can be re-run at will (the ``data_quality_report`` DAG re-runs the last week every day to pick up
  late batches). *Table quotidienne : une ligne par jour UTC, formation, table et règle, recalculée
  depuis dq_result ; on peut la recalculer autant de fois que nécessaire.*
- ``summary`` / ``format_summary`` / ``cli_report``: an aligned table for ``hl7ics dq report``.
- ``render_html``: a self-contained static report (``index.html`` for all facilities and one page
  per facility): charts are inline SVG drawn here, with no JavaScript, fonts or files fetched from
  anywhere, so the folder can be mailed, archived or served as is. *Rapport HTML autonome, bilingue,
  lisible hors ligne.*

Only counts, facility codes and names, table and expectation names reach the report or the logs:
never patient data. Every text from the warehouse or the configuration is HTML-escaped, and pages
carry a Content-Security-Policy that forbids scripts, in case an escape were ever missed.
"""
from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import sys
import unicodedata
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .warehouse import Writer, named_queries, utcnow

log = logging.getLogger(__name__)

SQL_FILE = "dq_daily.sql"
DAILY_COLUMNS = ("day", "facility_code", "table_name", "expectation", "severity", "evaluated", "failed",
                 "failure_rate", "updated_at")
SEVERITIES = ("error", "warning")
# Vivid, distinct colours (the d3 "category10" red, orange and blue): readable for most colour
# vision deficiencies side by side, and exact enough for the screenshot test to find them.
COLORS = {"error": "#d62728", "warning": "#ff7f0e", "bar": "#1f77b4"}
MAX_BARS = 20  # beyond that a bar chart stops being read; the numbers table lists everything
_EARLIEST = "0001-01-01 00:00:00"  # valid TIMESTAMP on PostgreSQL, sorts first as text on SQLite


# --------------------------------------------------------------------------------------------------
# SQL


def _queries() -> dict[str, str]:
    """The named queries of ``sql/dq_daily.sql`` (``-- name: key`` starts each one)."""
    return named_queries(SQL_FILE)


def _as_date(value) -> date:
    """A day as the drivers return it: ``date`` on PostgreSQL, ISO text on SQLite."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _parse_day(value: date | str | None, what: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} must be a date as YYYY-MM-DD") from None


def _start_of(day: date) -> str:
    # Timestamps are naive UTC, compared as 'YYYY-MM-DD HH:MM:SS' text on SQLite and cast from that
    # text by PostgreSQL, so one literal form serves both.
    return f"{day.isoformat()} 00:00:00"


def rebuild_daily(engine: Engine, day_from: date, day_to: date) -> int:
    """Recompute ``dq_daily`` for ``day_from``..``day_to`` (inclusive, UTC days) from ``dq_result``.

    The days' rows are deleted and re-inserted in one transaction, so readers see the old or the new
    figures, never a mix, and a re-run gives the same rows. Returns the number of rows written.
    """
    if day_to < day_from:
        raise ValueError(f"day_to {day_to} is before day_from {day_from}")
    q = _queries()
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(text(q["delete_days"]), {"day_from": day_from.isoformat(), "day_to": day_to.isoformat()})
        rows = conn.execute(text(q["aggregate_days"]), {
            "start_at": _start_of(day_from), "end_at": _start_of(day_to + timedelta(days=1))}).all()
        Writer(conn).copy("dq_daily", DAILY_COLUMNS, [
            (_as_date(r.day).isoformat(), r.facility_code, r.table_name, r.expectation, r.severity,
             int(r.evaluated), int(r.failed), float(r.failure_rate), now) for r in rows])
    log.info("dq_daily rebuilt for %s..%s: %d rows", day_from, day_to, len(rows))
    return len(rows)


def summary(engine: Engine, facility: str | None = None, since: date | str | None = None) -> list[dict]:
    """Totals from ``dq_result`` per facility, table, expectation and severity (``created_at`` on or
    after ``since``, a UTC day), ordered by facility, then most failed rows first."""
    since = _parse_day(since, "since")
    with engine.connect() as conn:
        rows = conn.execute(text(_queries()["summary"]), {
            "since_at": _start_of(since) if since else _EARLIEST, "facility": facility}).all()
    return [{"facility_code": r.facility_code, "table_name": r.table_name, "expectation": r.expectation,
             "severity": r.severity, "evaluated": int(r.evaluated), "failed": int(r.failed),
             "failure_rate": float(r.failure_rate)} for r in rows]


def _daily_rows(engine: Engine, day_from: date, day_to: date) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(text(_queries()["daily_window"]),
                            {"day_from": day_from.isoformat(), "day_to": day_to.isoformat()}).all()
    return [{"day": _as_date(r.day), "facility_code": r.facility_code, "table_name": r.table_name,
             "expectation": r.expectation, "severity": r.severity, "evaluated": int(r.evaluated),
             "failed": int(r.failed)} for r in rows]


# --------------------------------------------------------------------------------------------------
# Terminal

_LABELS = {
    "en": {"facility": "facility", "table": "table", "expectation": "expectation", "severity": "severity",
           "evaluated": "evaluated", "failed": "failed", "rate": "failure rate",
           "error": "error", "warning": "warning", "empty": "no data quality results"},
    "fr": {"facility": "formation", "table": "table", "expectation": "règle", "severity": "gravité",
           "evaluated": "évalués", "failed": "en échec", "rate": "taux d'échec",
           "error": "erreur", "warning": "avertissement", "empty": "aucun résultat de qualité des données"},
}


def _terminal_safe(value) -> str:
    # An expectation or facility name is data: control characters (escape sequences, newlines)
    # must not move the cursor or break the table's lines.
    return "".join("?" if unicodedata.category(ch).startswith("C") else ch for ch in str(value))


def _pct(rate: float, lang: str = "en", fixed: bool = False) -> str:
    """A rate as a percentage: fixed two decimals for tables (columns line up), else just enough
    digits for chart labels."""
    p = rate * 100
    s = f"{p:.2f}" if fixed else f"{p:.0f}" if p >= 10 or p == 0 else f"{p:.1f}" if p >= 1 else f"{p:.2f}"
    return s.replace(".", ",") + " %" if lang == "fr" else s + "%"


def format_summary(rows: list[dict], lang: str = "en") -> str:
    """An aligned plain-text table of ``summary`` rows (``lang`` ``en`` or ``fr``)."""
    if lang not in _LABELS:
        raise ValueError(f"lang must be one of {', '.join(_LABELS)}")
    lab = _LABELS[lang]
    if not rows:
        return lab["empty"]
    header = [lab["facility"], lab["table"], lab["expectation"], lab["severity"], lab["evaluated"], lab["failed"],
              lab["rate"]]
    body = [[_terminal_safe(r["facility_code"]), _terminal_safe(r["table_name"]), _terminal_safe(r["expectation"]),
             lab.get(r["severity"], _terminal_safe(r["severity"])), str(r["evaluated"]), str(r["failed"]),
             _pct(r["failure_rate"], lang, fixed=True)] for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    numeric = {4, 5, 6}  # right-aligned so digits line up

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def cli_report(engine: Engine, facility: str | None = None, since: date | str | None = None, out=None) -> int:
    """``hl7ics dq report [--facility F] [--since YYYY-MM-DD]``: print the summary; exit code 0."""
    print(format_summary(summary(engine, facility, since)), file=out or sys.stdout)
    return 0


# --------------------------------------------------------------------------------------------------
# HTML

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


def facility_page_name(code: str) -> str:
    """File name of a facility's page: the code reduced to ``[A-Za-z0-9_-]``. A code that had to be
    changed (or that would be ``index``) gets a short hash of the original, so two codes never
    share a page."""
    safe = _UNSAFE_NAME.sub("_", code)[:64] or "_"
    if safe != code or safe.lower() == "index":
        safe = f"{safe}-{hashlib.sha256(code.encode('utf-8')).hexdigest()[:8]}"
    return safe + ".html"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _rate(evaluated: int, failed: int) -> float:
    return failed / evaluated if evaluated else 0.0


def _share(evaluated: int, failed: int) -> str:
    """A failure rate for a table cell; "—" when nothing was evaluated (0% would claim a pass)."""
    return _pct(_rate(evaluated, failed)) if evaluated else "—"


def _by_day(rows: list[dict]) -> dict[str, dict[date, tuple[int, int]]]:
    """severity -> day -> (evaluated, failed), summed over tables and expectations."""
    out: dict[str, dict[date, tuple[int, int]]] = {s: {} for s in SEVERITIES}
    for r in rows:
        sev = out.setdefault(r["severity"], {})
        e, f = sev.get(r["day"], (0, 0))
        sev[r["day"]] = (e + r["evaluated"], f + r["failed"])
    return out


def _by_expectation(rows: list[dict]) -> list[dict]:
    acc: dict[tuple[str, str], dict] = {}
    for r in rows:
        k = (r["table_name"], r["expectation"])
        a = acc.setdefault(k, {"table_name": k[0], "expectation": k[1], "severity": r["severity"],
                               "evaluated": 0, "failed": 0})
        a["evaluated"] += r["evaluated"]
        a["failed"] += r["failed"]
        if r["severity"] == "error":
            a["severity"] = "error"
    return sorted(acc.values(), key=lambda a: (-a["failed"], a["table_name"], a["expectation"]))


def _y_max(rates: list[float]) -> float:
    top = max(rates, default=0.0)
    # Steps divisible by four, so the four grid lines get round labels.
    for m in (0.004, 0.01, 0.02, 0.04, 0.1, 0.2, 0.4, 1.0):
        if top <= m:
            return m
    return 1.0


def _rate_chart(series: dict[str, dict[date, tuple[int, int]]], day_from: date, days: int,
                width: int = 900, height: int = 280, spark: bool = False) -> str:
    """Line chart of the daily failure rate, one line per severity, x = the days of the window
    (so a day without data shows as a gap in the points, not a squeezed axis)."""
    left, right, top, bottom = (4, 4, 4, 4) if spark else (60, 20, 16, 46)
    pw, ph = width - left - right, height - top - bottom
    points = {s: sorted((d, _rate(*v)) for d, v in series.get(s, {}).items()) for s in SEVERITIES}
    days_with_data = sorted({d for s in SEVERITIES for d, _ in points[s]})
    ymax = _y_max([r for s in SEVERITIES for _, r in points[s]])

    def x(d: date) -> float:
        i = (d - day_from).days
        return left + (pw * i / (days - 1) if days > 1 else pw / 2)

    def y(rate: float) -> float:
        return top + ph * (1 - min(rate, ymax) / ymax)

    kind = "chart-spark" if spark else "chart-rate"
    title = "Failure rate per day / Taux d'échec par jour"
    parts = [f'<svg class="chart {kind}" data-points="{len(days_with_data)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" '
             f'xmlns="http://www.w3.org/2000/svg">', f"<title>{_esc(title)}</title>"]
    if not spark:
        for k in range(5):
            v = ymax * k / 4
            yy = y(v)
            parts.append(f'<line class="grid" x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" '
                         f'stroke="#dddddd" stroke-width="1"/>')
            parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" font-size="11" '
                         f'fill="#444444">{_esc(_pct(v))}</text>')
        step = max(1, -(-days // 8))  # at most about eight date labels
        for i in range(0, days, step):
            d = day_from + timedelta(days=i)
            parts.append(f'<text x="{x(d):.1f}" y="{top + ph + 18}" text-anchor="middle" font-size="11" '
                         f'fill="#444444">{d.strftime("%m-%d")}</text>')
        parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#888888"/>')
    else:
        parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f7f7f7"/>')
    for sev in SEVERITIES:
        pts = points[sev]
        if not pts:
            continue
        color = COLORS[sev]
        coords = " ".join(f"{x(d):.1f},{y(r):.1f}" for d, r in pts)
        parts.append(f'<polyline class="series-{sev}" data-points="{len(pts)}" points="{coords}" fill="none" '
                     f'stroke="{color}" stroke-width="{2 if spark else 3}" stroke-linejoin="round" '
                     f'stroke-linecap="round"/>')
        for d, r in pts:
            ev, fa = series[sev][d]
            parts.append(f'<circle class="point point-{sev}" data-day="{d.isoformat()}" data-rate="{r:.6f}" '
                         f'cx="{x(d):.1f}" cy="{y(r):.1f}" r="{2 if spark else 4}" fill="{color}">'
                         f"<title>{d.isoformat()} {sev}: {_esc(_pct(r))} ({fa}/{ev})</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def _bar_chart(items: list[dict], width: int = 900) -> str:
    """Horizontal bars of failed rows per table and expectation over the window, most first. Only
    expectations with failures get a bar (twenty empty rows would hide the one that matters); the
    numbers table lists them all."""
    shown = [i for i in items if i["failed"] > 0][:MAX_BARS]
    if not shown:
        return ('<p class="empty no-failures">No failed rows in this period / '
                "Aucune ligne en échec sur la période.</p>")
    label_w, value_w, bar_h, gap, top = 400, 110, 20, 8, 8
    bw = width - label_w - value_w
    height = top * 2 + len(shown) * (bar_h + gap)
    most = max((i["failed"] for i in shown), default=0)
    title = "Failed rows by expectation / Lignes en échec par règle"
    parts = [f'<svg class="chart chart-bars" data-bars="{len(shown)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" '
             f'xmlns="http://www.w3.org/2000/svg">', f"<title>{_esc(title)}</title>"]
    for n, it in enumerate(shown):
        yy = top + n * (bar_h + gap)
        w = bw * it["failed"] / most if most else 0
        if it["failed"] and w < 2:
            w = 2  # a few failures must stay visible next to thousands
        label = f'{it["table_name"]} · {it["expectation"]}'
        short = label if len(label) <= 60 else label[:59] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{yy + bar_h - 6}" text-anchor="end" font-size="12" '
                     f'fill="#222222"><title>{_esc(label)}</title>{_esc(short)}</text>')
        parts.append(f'<rect class="bar" data-expectation="{_esc(it["expectation"])}" '
                     f'data-table="{_esc(it["table_name"])}" data-severity="{_esc(it["severity"])}" '
                     f'data-failed="{it["failed"]}" x="{label_w}" y="{yy}" width="{w:.1f}" height="{bar_h}" '
                     f'fill="{COLORS["bar"]}"><title>{_esc(label)}: {it["failed"]} / {it["evaluated"]}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{yy + bar_h - 6}" font-size="12" fill="#222222">'
                     f'{it["failed"]} ({_esc(_pct(_rate(it["evaluated"], it["failed"])))})</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
p.meta{color:#555;margin:0 0 16px;font-size:13px}
table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f2f2f2}
td:first-child,td.n{white-space:nowrap}
a{color:#0b3d91}.legend{font-size:13px;margin:4px 0 8px}.legend span{margin-right:18px}
.swatch{display:inline-block;width:22px;height:4px;vertical-align:middle;margin-right:6px}
.empty{color:#555;font-style:italic}
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\">"
            # No script, style or image may come from anywhere but this file.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def _legend() -> str:
    return ('<div class="legend">'
            f'<span><i class="swatch" style="background:{COLORS["error"]}"></i>Errors / Erreurs</span>'
            f'<span><i class="swatch" style="background:{COLORS["warning"]}"></i>Warnings / Avertissements</span>'
            "</div>")


def _meta(day_from: date, day_to: date) -> str:
    return (f'<p class="meta">Period / Période : {day_from.isoformat()} → {day_to.isoformat()} (UTC) · '
            f"Generated / Généré : {_esc(utcnow())} UTC · Counts only, no patient data / "
            "Comptages uniquement, aucune donnée patient</p>")


def _totals(series: dict[str, dict[date, tuple[int, int]]], sev: str) -> tuple[int, int]:
    vals = series.get(sev, {}).values()
    return sum(e for e, _ in vals), sum(f for _, f in vals)


def _facility_page(code: str, name: str, rows: list[dict], day_from: date, day_to: date, days: int) -> str:
    series = _by_day(rows)
    items = _by_expectation(rows)
    label = f"{name} ({code})" if name != code else code
    out = [f"<h1>Qualité des données / Data quality — {_esc(label)}</h1>", _meta(day_from, day_to),
           '<p><a href="index.html">← All facilities / Toutes les formations</a></p>',
           "<h2>Daily failure rate / Taux d'échec quotidien</h2>", _legend(),
           _rate_chart(series, day_from, days),
           "<h2>Failed rows by expectation / Lignes en échec par règle</h2>", _bar_chart(items)]
    failing = sum(1 for i in items if i["failed"] > 0)
    if failing > MAX_BARS:
        out.append(f'<p class="meta">{MAX_BARS} of {failing} expectations with failures shown; all are in the '
                   f"table below / {MAX_BARS} règles en échec sur {failing} affichées ; toutes sont dans le "
                   "tableau ci-dessous.</p>")
    out.append("<h2>Expectations / Règles</h2><table class=\"numbers numbers-expectations\"><thead><tr>"
               "<th>Table</th><th>Expectation / Règle</th><th>Severity / Gravité</th>"
               "<th class=\"n\">Evaluated / Évalués</th><th class=\"n\">Failed / En échec</th>"
               "<th class=\"n\">Failure rate / Taux d'échec</th></tr></thead><tbody>")
    for it in items:
        out.append(f'<tr data-expectation="{_esc(it["expectation"])}"><td>{_esc(it["table_name"])}</td>'
                   f'<td>{_esc(it["expectation"])}</td><td>{_esc(it["severity"])}</td>'
                   f'<td class="n">{it["evaluated"]}</td><td class="n">{it["failed"]}</td>'
                   f'<td class="n">{_esc(_share(it["evaluated"], it["failed"]))}</td></tr>')
    out.append("</tbody></table>")
    out.append("<h2>Per day / Par jour</h2><table class=\"numbers numbers-days\"><thead><tr><th>Day / Jour</th>"
               "<th class=\"n\">Errors: evaluated / Erreurs : évalués</th><th class=\"n\">failed / en échec</th>"
               "<th class=\"n\">rate / taux</th><th class=\"n\">Warnings: evaluated / Avertissements : évalués</th>"
               "<th class=\"n\">failed / en échec</th><th class=\"n\">rate / taux</th></tr></thead><tbody>")
    for d in sorted({d for s in series.values() for d in s}):
        cells = []
        for sev in SEVERITIES:
            e, f = series.get(sev, {}).get(d, (0, 0))
            cells += [str(e), str(f), _share(e, f)]
        out.append(f"<tr><td>{d.isoformat()}</td>" + "".join(f'<td class="n">{_esc(c)}</td>' for c in cells)
                   + "</tr>")
    out.append("</tbody></table>")
    return _page(f"Qualité des données / Data quality — {label}", "\n".join(out))


def _index_page(by_fac: dict[str, list[dict]], names: dict[str, str], pages: dict[str, str], day_from: date,
                day_to: date, days: int) -> str:
    out = ["<h1>Qualité des données / Data quality</h1>", _meta(day_from, day_to)]
    if not by_fac:
        out.append('<p class="empty">No data quality results in this period / '
                   "Aucun résultat de qualité des données sur la période.</p>")
    else:
        everything = [r for rows in by_fac.values() for r in rows]
        out += ["<h2>All facilities / Toutes les formations</h2>", _legend(),
                _rate_chart(_by_day(everything), day_from, days)]
    summaries = []
    for code in sorted(set(by_fac) | set(names)):
        series = _by_day(by_fac.get(code, []))
        ee, ef = _totals(series, "error")
        we, wf = _totals(series, "warning")
        summaries.append((code, series, ee, ef, we, wf))
    # Worst error rate first: the page is read top-down by someone looking for trouble.
    summaries.sort(key=lambda s: (s[0] not in by_fac, -_rate(s[2], s[3]), s[0]))
    if summaries:
        out.append("<h2>Facilities / Formations sanitaires</h2><table class=\"numbers facilities\"><thead><tr>"
                   "<th>Facility / Formation</th><th class=\"n\">Evaluated / Évalués</th>"
                   "<th class=\"n\">Failed (errors) / En échec (erreurs)</th>"
                   "<th class=\"n\">Error rate / Taux d'erreur</th>"
                   "<th class=\"n\">Warning rate / Taux d'avertissement</th><th>Trend / Tendance</th>"
                   "</tr></thead><tbody>")
    for code, series, ee, ef, we, wf in summaries:
        name = names.get(code) or code
        label = _esc(f"{name} ({code})" if name != code else code)
        if code in by_fac:
            link = f'<a href="{_esc(quote(pages[code]))}">{label}</a>'
            out.append(f'<tr data-facility="{_esc(code)}"><td>{link}</td><td class="n">{ee + we}</td>'
                       f'<td class="n">{ef}</td><td class="n">{_esc(_share(ee, ef))}</td>'
                       f'<td class="n">{_esc(_share(we, wf))}</td>'
                       f"<td>{_rate_chart(series, day_from, days, width=180, height=40, spark=True)}</td></tr>")
        else:
            out.append(f'<tr data-facility="{_esc(code)}"><td>{label}</td>'
                       '<td class="n empty" colspan="5">no data / aucune donnée</td></tr>')
    if summaries:
        out.append("</tbody></table>")
    return _page("Qualité des données / Data quality", "\n".join(out))


def _write(path: Path, content: str) -> Path:
    # Write then rename: whoever serves or mails the folder never picks up a half-written page.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)
    return path


def render_html(engine: Engine, out_dir: Path, day: date, days: int = 30,
                facilities: dict[str, str] | None = None) -> list[Path]:
    """Write the HTML report of the ``days`` days ending on ``day`` (from ``dq_daily``) into
    ``out_dir``: ``index.html`` and one ``<facility>.html`` per facility with data in the window.

    ``facilities`` maps codes to display names; configured facilities without data are listed on
    the index as such. Returns the paths written, ``index.html`` first.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    day_from = day - timedelta(days=days - 1)
    names = dict(facilities or {})
    by_fac: dict[str, list[dict]] = {}
    for r in _daily_rows(engine, day_from, day):
        by_fac.setdefault(r["facility_code"], []).append(r)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = {code: facility_page_name(code) for code in by_fac}
    written = [_write(out_dir / "index.html", _index_page(by_fac, names, pages, day_from, day, days))]
    for code in sorted(by_fac):
        written.append(_write(out_dir / pages[code], _facility_page(
            code, names.get(code) or code, by_fac[code], day_from, day, days)))
    log.info("data-quality report for %s..%s: %d facilities, %d pages", day_from, day, len(by_fac), len(written))
    return written
