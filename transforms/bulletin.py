"""Weekly epidemiological surveillance bulletin (IDSR / SIMR), as HTML and PDF.

Inputs: the statisticians' published tables of migration 008, already small-cell suppressed —
``moh_idsr_weekly`` (its district totals, ``age_group`` = ``sex`` = ``'ALL'``), ``moh_lab_activity``
and ``moh_completeness`` — plus ``dim_facility`` (facility names, the list of districts) and
``config/idsr.yaml`` (disease and lab test names in French and English, notification class, the
small-cell threshold ``k``). An ISO week (``2026W45`` or ``2026-W45``) and a language (``fr``, ``en``).

Outputs:

- ``render_weekly``: the bulletin as one self-contained HTML page, in French or English: title and
  period (Monday to Sunday), a highlighted box of the immediately notifiable diseases with any case
  this week, the week's table per disease, an epidemic curve per disease with cases in the last
  ``weeks_back`` weeks (inline SVG: suspected and confirmed bars, deaths as a line with markers), a
  map-like table of suspected cases by district (regions north to south, as on the map of Togo;
  cells coloured by case-count class), malaria lab activity (RDT and smear) by district,
  completeness and timeliness per facility, and a footer with the source and generation time.
- ``write_weekly``: ``bulletin-2026W45-fr.html`` and ``bulletin-2026W45-fr.pdf`` in a folder, the PDF
  printed from the HTML by Debian's headless Chromium (A4, one page break per section), ready to be
  mailed or printed by a district epidemiologist.

Small cells: a NULL count with ``suppressed`` = 1 is a count of 1 to k-1 the statisticians hid. It is
shown as "<5" (a hatched grey bar in the charts), never as 0. A sum over districts adds the published
counts only and says how many hidden counts it leaves out ("126 + <5"), so no hidden count can be
recomputed from the bulletin. *Les petits effectifs masqués s'affichent « <5 », jamais 0 ; les
totaux n'additionnent que les effectifs publiés.*

The page has no JavaScript and fetches nothing (a Content-Security-Policy forbids scripts and any
network source); every text from the warehouse or the configuration is HTML-escaped. No patient data
is read: the tables hold counts per district or facility only.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import yaml
from sqlalchemy import text
from sqlalchemy.engine import Engine

from .config import ConfigError, Settings
from .dq_report import _esc, _write
from .warehouse import named_queries

SQL_FILE = "bulletin.sql"
LANGS = ("fr", "en")
# Lab activity shown in the bulletin: the malaria tests, the week's main workload and the check on
# the malaria curve (codes of idsr.lab_tests in config/idsr.yaml).
LAB_TESTS = ("MALARIA_RDT", "MALARIA_SMEAR")
COMPLETENESS_TARGET = 0.8  # the IDSR target for completeness and timeliness of reporting
# Health regions from north to south: the district table then reads like the map of Togo.
REGIONS_NORTH_TO_SOUTH = ("Savanes", "Kara", "Centrale", "Plateaux", "Maritime", "Lomé-Commune")
# The d3 "category10" blue, orange and red the data-quality report uses, plus green; exact and
# distinct enough for the screenshot tests to count them, readable side by side for most colour
# vision deficiencies. Hatch greys are distinct from the table borders and text.
COLORS = {"suspected": "#1f77b4", "confirmed": "#ff7f0e", "deaths": "#d62728", "ok": "#2ca02c",
          "low": "#b30000", "hatch_bg": "#bdbdbd", "hatch_line": "#6b6b6b"}
# Case-count classes of the district table: (css class, lowest count, background, text colour).
CLASSES = (("n1", 1, "#fff3b0", "#222222"), ("n10", 10, "#fdb863", "#222222"),
           ("n50", 50, "#e6550d", "#ffffff"), ("n100", 100, "#a50026", "#ffffff"))
CHROMIUM_TIMEOUT = 180  # seconds; a bulletin prints in a few, a hung browser must not block a DAG

_WEEK = re.compile(r"^(\d{4})-?W(\d{2})$")


class BulletinError(ValueError):
    """The bulletin cannot be produced; the message says why and what to do."""


# --------------------------------------------------------------------------------------------------
# Week, language and configuration


def parse_week(week: str) -> tuple[str, date]:
    """``'2026W45'`` or ``'2026-W45'`` -> (``'2026-W45'``, its Monday). ``BulletinError`` otherwise."""
    m = _WEEK.match(str(week).strip().upper())
    if not m:
        raise BulletinError(f"week must be an ISO week like 2026W45 or 2026-W45, not {week!r}")
    year, num = int(m.group(1)), int(m.group(2))
    try:
        monday = date.fromisocalendar(year, num, 1)
    except ValueError:
        # week 0, above 53, or 53 in a year that has 52 ISO weeks
        raise BulletinError(f"{year} has no ISO week {num} (week {week!r})") from None
    return f"{year}-W{num:02d}", monday


def _iso_week(d: date) -> str:
    y, w, _ = d.isocalendar()
    return f"{y}-W{w:02d}"


@dataclass(frozen=True)
class Names:
    """What the bulletin needs from ``idsr.yaml``: names per language and notification class."""
    diseases: dict[str, dict]  # code -> {"fr", "en", "notification"}, in the file's order
    lab_tests: dict[str, dict]  # code -> {"fr", "en"}
    k: int = 5

    def disease(self, code: str, lang: str) -> str:
        return self.diseases.get(code, {}).get(lang) or code

    def lab_test(self, code: str, lang: str) -> str:
        return self.lab_tests.get(code, {}).get(lang) or code


def load_names(config_dir: Path | None = None) -> Names:
    """Disease and lab test names from ``<config_dir>/idsr.yaml`` (default: the configured folder)."""
    path = Path(config_dir or Settings.load().config_dir) / "idsr.yaml"
    try:
        doc = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("idsr")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ConfigError(f"{path.name}: cannot read ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("diseases"), list):
        raise ConfigError(f"{path.name}: expected 'idsr:' with a 'diseases:' list")
    diseases, tests = {}, {}
    for i, d in enumerate(doc["diseases"]):
        if not isinstance(d, dict) or not d.get("code"):
            raise ConfigError(f"{path.name}: idsr.diseases[{i}] needs a 'code'")
        diseases[str(d["code"])] = {"fr": str(d.get("name_fr") or d["code"]), "en": str(d.get("name_en") or d["code"]),
                                    "notification": str(d.get("notification") or "weekly")}
    for i, t in enumerate(doc.get("lab_tests") or []):
        if not isinstance(t, dict) or not t.get("code"):
            raise ConfigError(f"{path.name}: idsr.lab_tests[{i}] needs a 'code'")
        tests[str(t["code"])] = {"fr": str(t.get("name_fr") or t["code"]), "en": str(t.get("name_en") or t["code"])}
    k = doc.get("small_cell_k", 5)
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"{path.name}: idsr.small_cell_k must be a positive integer")
    return Names(diseases, tests, k)


# --------------------------------------------------------------------------------------------------
# Texts (French first: the bulletin's usual language)

_DAYS = {"fr": ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
         "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")}
_MONTHS = {"fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
                  "novembre", "décembre"),
           "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
                  "November", "December")}

T = {
    "fr": {
        "org": "Togo — Surveillance intégrée de la maladie et riposte (SIMR)",
        "title": "Bulletin épidémiologique hebdomadaire",
        "week": "Semaine {w} de {y}",
        "period": "du {a} au {b}",
        "week_short": "S",
        "immediate": "Maladies à notification immédiate",
        "immediate_none": "Aucun cas de maladie à notification immédiate cette semaine.",
        "immediate_intro": "Cas cette semaine ; chaque cas appelle une investigation selon les directives SIMR.",
        "suspected": "suspects", "confirmed": "confirmés", "deaths": "décès",
        "Suspected": "Cas suspects", "Confirmed": "Cas confirmés", "Deaths": "Décès",
        "districts": "districts",
        "situation": "Situation de la semaine",
        "disease": "Maladie", "notification": "Notification",
        "n_immediate": "immédiate", "n_weekly": "hebdomadaire",
        "prev": "Suspects sem. {w}", "window": "Suspects sur {n} sem.",
        "no_cases": "Aucun cas notifié au cours des {n} dernières semaines.",
        "zero_immediate": "Notification immédiate, aucun cas notifié au cours des {n} dernières semaines : {names}.",
        "curves": "Courbes épidémiques ({n} dernières semaines)",
        "hidden_legend": "Effectif masqué (1 à {k1})",
        "small_note": "« <{k} » : effectif de 1 à {k1}, masqué (confidentialité statistique), jamais compté comme 0 ; "
                      "« 126 + <{k} » : 126 cas publiés et un effectif masqué dans un district (« 2×<{k} » : deux).",
        "map": "Cas suspects par district — semaine {w}",
        "map_note": "Régions du nord au sud, comme sur la carte. Un district sans ligne publiée pour une maladie "
                    "compte 0 cas ; la complétude (dernière section) dit si ses formations ont transmis.",
        "region": "Région", "district": "District", "total": "Total",
        "lab": "Activité de laboratoire — paludisme, semaine {w}",
        "tests_done": "Tests", "positives": "Positifs", "positivity": "Positivité",
        "no_lab": "Aucune activité de laboratoire publiée pour cette semaine.",
        "completeness_h": "Complétude et promptitude des données — semaine {w}",
        "facility": "Formation sanitaire", "expected": "Jours attendus", "reporting": "Jours transmis",
        "completeness": "Complétude", "on_time": "Jours à temps", "timeliness": "Promptitude",
        "messages": "Messages", "late": "Messages en retard",
        "low_note": "En rouge : moins de {p} (objectif SIMR). Total : pondéré par les jours attendus.",
        "no_completeness": "Aucune donnée de complétude pour cette semaine.",
        "source": "Source : entrepôt hl7ics, tables publiées moh_idsr_weekly, moh_lab_activity et moh_completeness "
                  "(messages HL7 v2 des formations sanitaires, petits effectifs masqués). Aucune donnée patient.",
        "as_of": "Données mises à jour le {t} UTC.",
        "generated": "Généré le {t} UTC.",
        "not_computable": "non calculable (effectif masqué)",
    },
    "en": {
        "org": "Togo — Integrated Disease Surveillance and Response (IDSR)",
        "title": "Weekly epidemiological bulletin",
        "week": "Week {w} of {y}",
        "period": "{a} to {b}",
        "week_short": "W",
        "immediate": "Immediately notifiable diseases",
        "immediate_none": "No case of an immediately notifiable disease this week.",
        "immediate_intro": "Cases this week; each case calls for an investigation under the IDSR guidelines.",
        "suspected": "suspected", "confirmed": "confirmed", "deaths": "deaths",
        "Suspected": "Suspected cases", "Confirmed": "Confirmed cases", "Deaths": "Deaths",
        "districts": "districts",
        "situation": "This week",
        "disease": "Disease", "notification": "Notification",
        "n_immediate": "immediate", "n_weekly": "weekly",
        "prev": "Suspected wk {w}", "window": "Suspected, {n} wks",
        "no_cases": "No case reported in the last {n} weeks.",
        "zero_immediate": "Immediately notifiable, no case reported in the last {n} weeks: {names}.",
        "curves": "Epidemic curves (last {n} weeks)",
        "hidden_legend": "Hidden count (1 to {k1})",
        "small_note": "“<{k}”: a count of 1 to {k1}, hidden for statistical confidentiality, never counted as 0; "
                      "“126 + <{k}”: 126 published cases plus a hidden count in one district (“2×<{k}”: two).",
        "map": "Suspected cases by district — week {w}",
        "map_note": "Regions from north to south, as on the map. A district without a published row for a disease "
                    "counts no case; completeness (last section) tells whether its facilities reported.",
        "region": "Region", "district": "District", "total": "Total",
        "lab": "Laboratory activity — malaria, week {w}",
        "tests_done": "Tests", "positives": "Positive", "positivity": "Positivity",
        "no_lab": "No laboratory activity published for this week.",
        "completeness_h": "Reporting completeness and timeliness — week {w}",
        "facility": "Health facility", "expected": "Days expected", "reporting": "Days reported",
        "completeness": "Completeness", "on_time": "Days on time", "timeliness": "Timeliness",
        "messages": "Messages", "late": "Late messages",
        "low_note": "In red: below {p} (IDSR target). Total: weighted by expected days.",
        "no_completeness": "No completeness data for this week.",
        "source": "Source: hl7ics warehouse, published tables moh_idsr_weekly, moh_lab_activity and moh_completeness "
                  "(HL7 v2 messages from health facilities, small counts hidden). No patient data.",
        "as_of": "Data updated {t} UTC.",
        "generated": "Generated {t} UTC.",
        "not_computable": "not computable (hidden count)",
    },
}


def _day(d: date, lang: str, weekday: bool = True, year: bool = True) -> str:
    """``lundi 2 novembre 2026`` / ``Monday 2 November 2026`` (no locale: the server's may be C)."""
    num = "1er" if lang == "fr" and d.day == 1 else str(d.day)
    s = f"{num} {_MONTHS[lang][d.month - 1]}" + (f" {d.year}" if year else "")
    return f"{_DAYS[lang][d.weekday()]} {s}" if weekday else s


def _period(monday: date, lang: str) -> str:
    sunday = monday + timedelta(days=6)
    text_ = T[lang]["period"].format(a=_day(monday, lang, year=monday.year != sunday.year), b=_day(sunday, lang))
    return text_[0].upper() + text_[1:]


def _stamp(value, lang: str) -> str:
    """A timestamp (datetime, or the warehouse's text) as ``2 novembre 2026 à 08:00`` / ``2 November 2026, 08:00``."""
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value)[:19])
    hm = value.strftime("%H:%M")
    d = _day(value.date(), lang, weekday=False)
    return f"{d} à {hm}" if lang == "fr" else f"{d}, {hm}"


def _int(n: int, lang: str) -> str:
    # French groups thousands with a narrow no-break space, English with a comma.
    s = f"{n:,}"
    return s.replace(",", "\u202f") if lang == "fr" else s


def _percent(rate: float, lang: str, digits: int = 0) -> str:
    s = f"{rate * 100:.{digits}f}"
    return s.replace(".", ",") + "\u00a0%" if lang == "fr" else s + "%"


# --------------------------------------------------------------------------------------------------
# Counts with hidden cells


@dataclass(frozen=True)
class Count:
    """Published counts added up, and how many hidden (suppressed) counts the sum leaves out."""
    known: int = 0
    hidden: int = 0
    unknown: int = 0  # NULL without the suppressed flag: not published at all

    def __add__(self, other: "Count") -> "Count":
        return Count(self.known + other.known, self.hidden + other.hidden, self.unknown + other.unknown)

    @property
    def any(self) -> bool:
        """At least one case (a hidden count is 1 to k-1, never 0)."""
        return self.known > 0 or self.hidden > 0

    def fmt(self, lang: str, k: int, compact: bool = False) -> str:
        if not self.hidden:
            return "–" if self.unknown and not self.known else _int(self.known, lang)
        small = f"<{k}" if self.hidden == 1 else f"{self.hidden}×<{k}"
        if not self.known:
            return small
        return f"{_int(self.known, lang)}+" if compact else f"{_int(self.known, lang)} + {small}"


def _count(value, suppressed) -> Count:
    if value is None:
        return Count(hidden=1) if suppressed else Count(unknown=1)
    return Count(known=int(value))


ZERO = Count()


# --------------------------------------------------------------------------------------------------
# SQL and data


def _queries() -> dict[str, str]:
    """The named queries of ``sql/bulletin.sql`` (``-- name: key`` starts each one)."""
    return named_queries(SQL_FILE)


@dataclass
class WeekData:
    week: str
    monday: date
    weeks: list[str]  # the window, oldest first, ending with ``week``
    idsr: list[dict]  # district totals in the window: iso_week, region, district, disease, notification, s, c, d
    lab: list[dict]
    completeness: list[dict]
    districts: dict[str, str]  # district -> region
    as_of: object


def fetch(engine: Engine, week: str, weeks_back: int = 12) -> WeekData:
    """The published figures the bulletin of ``week`` shows (``weeks_back`` weeks for the curves)."""
    iso, monday = parse_week(week)
    weeks = [_iso_week(monday - timedelta(weeks=i)) for i in range(weeks_back - 1, -1, -1)]
    q = _queries()
    with engine.connect() as conn:
        idsr = [{"iso_week": r.iso_week, "region": r.region, "district": r.district, "disease": r.disease,
                 "notification": r.notification, "s": _count(r.suspected, r.suppressed),
                 "c": _count(r.confirmed, r.suppressed), "d": _count(r.deaths, r.suppressed)}
                for r in conn.execute(text(q["idsr_window"]), {"week_from": weeks[0], "week_to": iso})
                if r.iso_week in weeks]  # the text range could hold a malformed week; keep real ones
        lab = [{"region": r.region, "district": r.district, "test": r.test,
                "tests": _count(r.tests_done, r.suppressed), "pos": _count(r.positives, r.suppressed),
                "rate": None if r.positivity_rate is None else float(r.positivity_rate)}
               for r in conn.execute(text(q["lab_week"]), {"week": iso})]
        comp = [{"facility_code": r.facility_code, "name": r.name or r.facility_code, "region": r.region,
                 "district": r.district, "expected": int(r.expected_days), "reporting": int(r.reporting_days),
                 "on_time": int(r.on_time_days), "completeness": float(r.completeness),
                 "timeliness": float(r.timeliness), "messages": int(r.messages), "late": int(r.late_messages)}
                for r in conn.execute(text(q["completeness_week"]), {"week": iso})]
        districts = {r.district: r.region for r in conn.execute(text(q["districts"]))}
        as_of = conn.execute(text(q["data_as_of"]), {"week": iso}).scalar()
    for r in idsr:  # a district known only from the published rows still gets its row in the table
        districts.setdefault(r["district"], r["region"])
    return WeekData(iso, monday, weeks, idsr, lab, comp, districts, as_of)


def _region_key(region: str) -> tuple:
    return (REGIONS_NORTH_TO_SOUTH.index(region) if region in REGIONS_NORTH_TO_SOUTH else len(REGIONS_NORTH_TO_SOUTH),
            region)


# --------------------------------------------------------------------------------------------------
# Epidemic curve (inline SVG)


def _nice(v: int) -> tuple[int, int]:
    """(axis top, tick step): steps of 1, 2 or 5 x 10^n, at most five of them."""
    e = 0
    while True:
        for m in (1, 2, 5):
            step = m * 10 ** e
            if v <= step * 5:
                return max(step, -(-v // step) * step), step
        e += 1


def _epicurve(code: str, name: str, series: list[tuple[Count, Count, Count]], weeks: list[str], lang: str,
              k: int, idx: int) -> str:
    """Bars of suspected and confirmed cases per week, deaths as a line with markers. A hidden count
    is a hatched grey block labelled "<k" (on top of the published part of a sum), never a gap."""
    t = T[lang]
    width, height = 720, 230
    left, right, top, bottom = 48, 12, 24, 38
    pw, ph = width - left - right, height - top - bottom
    n = len(weeks)
    slot = pw / n
    bw = min(max(2.0, slot * 0.36), 40.0)  # a short window must not draw slabs
    pad = (slot - 2 * bw - 1) / 2  # the pair of bars centred in its week
    cap = k - 1  # a hidden count is at most k-1: its block is drawn that high
    tops = [c.known + cap * c.hidden for s, cf, _ in series for c in (s, cf)]
    tops += [d.known + cap * d.hidden for _, _, d in series]
    ymax, step = _nice(max(tops + [1]))
    base = top + ph

    def y(v: float) -> float:
        return top + ph * (1 - v / ymax)

    hatch = f"hatch-{idx}"
    parts = [f'<svg class="epicurve" data-disease="{_esc(code)}" data-weeks="{n}" data-ymax="{ymax}" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_esc(name)}" xmlns="http://www.w3.org/2000/svg"><title>{_esc(name)}</title>',
             f'<defs><pattern id="{hatch}" width="6" height="6" patternUnits="userSpaceOnUse" '
             f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{COLORS["hatch_bg"]}"/>'
             f'<line x1="0" y1="0" x2="0" y2="6" stroke="{COLORS["hatch_line"]}" stroke-width="2.5"/></pattern></defs>']
    for v in range(0, ymax + 1, step):
        yy = y(v)
        parts.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" stroke="#e3e3e3"/>'
                     f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" font-size="11" fill="#444444">'
                     f'{_esc(_int(v, lang))}</text>')
    every = 1 if n <= 26 else 2 if n <= 52 else 4
    labels = n <= 16  # value labels on the bars only while they have room
    deaths_pts = []
    for i, (wk, (s, cf, d)) in enumerate(zip(weeks, series)):
        x0 = left + i * slot
        if i % every == 0:
            parts.append(f'<text x="{x0 + slot / 2:.1f}" y="{base + 16}" text-anchor="middle" font-size="11" '
                         f'fill="#444444">{t["week_short"]}{_esc(wk[-2:])}</text>')
        for kind, c, x in (("suspected", s, x0 + pad), ("confirmed", cf, x0 + pad + bw + 1)):
            label = f'{t[kind.capitalize()]} {wk}: {c.fmt(lang, k)}'
            yk = base
            if c.known > 0:
                yk = min(y(c.known), base - 1)  # one case next to hundreds stays visible
                parts.append(f'<rect class="bar {kind}" data-week="{wk}" data-value="{c.known}" x="{x:.1f}" '
                             f'y="{yk:.1f}" width="{bw:.1f}" height="{base - yk:.1f}" fill="{COLORS[kind]}">'
                             f'<title>{_esc(label)}</title></rect>')
            ytop = yk
            if c.hidden:
                h = max(ph * cap * c.hidden / ymax, 8.0)
                ytop = yk - h
                parts.append(f'<rect class="bar {kind} suppressed" data-week="{wk}" data-hidden="{c.hidden}" '
                             f'x="{x:.1f}" y="{ytop:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="url(#{hatch})" '
                             f'stroke="{COLORS["hatch_line"]}" stroke-width="0.8"><title>{_esc(label)}</title></rect>')
            if c.hidden or (labels and kind == "suspected" and c.known):
                parts.append(f'<text class="value {kind}" x="{x + bw / 2:.1f}" y="{ytop - 3:.1f}" text-anchor="middle" '
                             f'font-size="9" fill="#222222">{_esc(c.fmt(lang, k, compact=True))}</text>')
        deaths_pts.append((x0 + slot / 2, d, wk))
    # The line only where deaths were published: a red line along zero would read as the axis.
    # It breaks at a week whose deaths are hidden: drawn through it, it put that week at zero.
    if any(d.known for _, d, _ in deaths_pts):
        runs: list[list] = [[]]
        for x, d, _ in deaths_pts:
            if d.hidden:
                runs.append([])
            else:
                runs[-1].append(f"{x:.1f},{y(d.known):.1f}")
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline class="deaths-line" points="{" ".join(run)}" fill="none" '
                             f'stroke="{COLORS["deaths"]}" stroke-width="2" stroke-linejoin="round"/>')
    for x, d, wk in deaths_pts:
        label = _esc(f'{t["Deaths"]} {wk}: {d.fmt(lang, k)}')
        if d.known:
            parts.append(f'<circle class="death" data-week="{wk}" data-value="{d.known}" cx="{x:.1f}" '
                         f'cy="{y(d.known):.1f}" r="4" fill="{COLORS["deaths"]}"><title>{label}</title></circle>')
        if d.hidden:
            # hollow: there were deaths, how many is hidden
            cy = min(y(d.known + cap * d.hidden / 2), base - 7)
            parts.append(f'<circle class="death suppressed" data-week="{wk}" data-hidden="{d.hidden}" '
                         f'cx="{x:.1f}" cy="{cy:.1f}" r="4.5" fill="#ffffff" stroke="{COLORS["deaths"]}" '
                         f'stroke-width="2"><title>{label}</title></circle>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + pw}" y2="{base}" stroke="#888888"/></svg>')
    return "".join(parts)


# --------------------------------------------------------------------------------------------------
# Sections


def _sum(rows, key: str) -> Count:
    total = ZERO
    for r in rows:
        total = total + r[key]
    return total


def _notification(code: str, rows: list[dict], names: Names) -> str:
    if code in names.diseases:
        return names.diseases[code]["notification"]
    return "immediate" if any(r["notification"] == "immediate" for r in rows) else "weekly"


def _notif_label(notification: str, lang: str) -> str:
    return T[lang].get("n_" + notification) or notification


def _colon(lang: str) -> str:
    # French puts a (no-break) space before a colon.
    return "\u00a0: " if lang == "fr" else ": "


def _cell_class(c: Count) -> str:
    if c.hidden:
        return "cell suppressed"
    if c.unknown and not c.known:
        return "cell nodata"
    cls = "n0"
    for name, low, _, _ in CLASSES:
        if c.known >= low:
            cls = name
    return f"cell {cls}"


def _immediate_box(data: WeekData, shown: list[str], by_dw: dict, names: Names, notif: dict, lang: str) -> str:
    t, k = T[lang], names.k
    items = []
    for code in shown:
        if notif[code] != "immediate":
            continue
        rows = by_dw.get(code, {}).get(data.week, [])
        s, c, d = _sum(rows, "s"), _sum(rows, "c"), _sum(rows, "d")
        if not (s.any or c.any or d.any):
            continue
        where = ", ".join(f'{_esc(r["district"])} ({_esc(r["s"].fmt(lang, k))})'
                          for r in sorted(rows, key=lambda r: (_region_key(r["region"]), r["district"]))
                          if r["s"].any or r["c"].any or r["d"].any)
        colon = _colon(lang)
        items.append(f'<li data-disease="{_esc(code)}"><strong>{_esc(names.disease(code, lang))}</strong>{colon}'
                     f'<span class="n">{_esc(s.fmt(lang, k))}</span> {t["suspected"]}, '
                     f'<span class="n">{_esc(c.fmt(lang, k))}</span> {t["confirmed"]}, '
                     f'<span class="n">{_esc(d.fmt(lang, k))}</span> {t["deaths"]} — {t["districts"]}{colon}{where}</li>')
    if not items:
        return (f'<div class="immediate calm"><h2>{t["immediate"]}</h2>'
                f'<p>{t["immediate_none"]}</p></div>')
    return (f'<div class="immediate alert" data-diseases="{len(items)}"><h2>{t["immediate"]}</h2>'
            f'<p>{t["immediate_intro"]}</p><ul>{"".join(items)}</ul></div>')


def _summary_table(data: WeekData, shown: list[str], by_dw: dict, names: Names, notif: dict, lang: str) -> str:
    t, k = T[lang], names.k
    prev = data.weeks[-2] if len(data.weeks) > 1 else None
    head = (f'<table class="summary"><thead><tr><th>{t["disease"]}</th><th>{t["notification"]}</th>'
            f'<th class="n">{t["Suspected"]}</th><th class="n">{t["Confirmed"]}</th><th class="n">{t["Deaths"]}</th>'
            + (f'<th class="n">{_esc(t["prev"].format(w=prev[-2:]))}</th>' if prev else "")
            + f'<th class="n">{_esc(t["window"].format(n=len(data.weeks)))}</th></tr></thead><tbody>')
    out = [head]
    for code in shown:
        weeks = by_dw.get(code, {})
        now = weeks.get(data.week, [])
        s, c, d = _sum(now, "s"), _sum(now, "c"), _sum(now, "d")
        total = ZERO
        for wk in data.weeks:
            total = total + _sum(weeks.get(wk, []), "s")
        alert = notif[code] == "immediate" and (s.any or c.any or d.any)
        cells = [s, c, d] + ([_sum(weeks.get(prev, []), "s")] if prev else []) + [total]
        cls = ' class="alert"' if alert else ""
        out.append(f'<tr data-disease="{_esc(code)}"{cls}>'
                   f'<td>{_esc(names.disease(code, lang))}</td><td>{_esc(_notif_label(notif[code], lang))}</td>'
                   + "".join(f'<td class="n{" suppressed" if v.hidden else ""}">{_esc(v.fmt(lang, k))}</td>' for v in cells)
                   + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _legend(lang: str, k: int) -> str:
    t = T[lang]
    return (f'<p class="legend"><span><i class="sw sw-suspected"></i>{t["Suspected"]}</span>'
            f'<span><i class="sw sw-confirmed"></i>{t["Confirmed"]}</span>'
            f'<span><i class="sw sw-deaths"></i>{t["Deaths"]}</span>'
            f'<span><i class="sw sw-hidden"></i>{_esc(t["hidden_legend"].format(k1=k - 1))}</span></p>')


def _district_table(data: WeekData, shown: list[str], by_dw: dict, names: Names, lang: str) -> str:
    t, k = T[lang], names.k
    cells: dict[tuple[str, str], dict] = {}
    for code in shown:
        for r in by_dw.get(code, {}).get(data.week, []):
            cells[(r["district"], code)] = r
    by_region: dict[str, list[str]] = {}
    for district, region in data.districts.items():
        by_region.setdefault(region, []).append(district)
    out = [f'<table class="map"><thead><tr><th>{t["region"]}</th><th>{t["district"]}</th>'
           + "".join(f'<th class="n" data-disease="{_esc(c)}">{_esc(names.disease(c, lang))}</th>' for c in shown)
           + "</tr></thead><tbody>"]
    for region in sorted(by_region, key=_region_key):
        districts = sorted(by_region[region])
        for j, district in enumerate(districts):
            row = [f'<tr data-district="{_esc(district)}">']
            if j == 0:
                row.append(f'<th class="region" rowspan="{len(districts)}">{_esc(region)}</th>')
            row.append(f'<td class="district">{_esc(district)}</td>')
            for code in shown:
                r = cells.get((district, code))
                s = r["s"] if r else ZERO
                tip = (f'{names.disease(code, lang)}, {district}: {s.fmt(lang, k)} {t["suspected"]}, '
                       f'{(r["c"] if r else ZERO).fmt(lang, k)} {t["confirmed"]}, '
                       f'{(r["d"] if r else ZERO).fmt(lang, k)} {t["deaths"]}')
                row.append(f'<td class="{_cell_class(s)}" data-disease="{_esc(code)}" title="{_esc(tip)}">'
                           f'{_esc(s.fmt(lang, k))}</td>')
            out.append("".join(row) + "</tr>")
    totals = [_sum([r for (_, c), r in cells.items() if c == code], "s") for code in shown]
    out.append(f'</tbody><tfoot><tr class="total"><th colspan="2">{t["total"]}</th>'
               + "".join(f'<td class="cell total" data-disease="{_esc(c)}">{_esc(v.fmt(lang, k))}</td>'
                         for c, v in zip(shown, totals))
               + "</tr></tfoot></table>")
    legend = ['<p class="legend classes"><span><i class="sw cell n0"></i>0</span>']
    bounds = [low for _, low, _, _ in CLASSES] + [None]
    for (name, low, _, _), high in zip(CLASSES, bounds[1:]):
        legend.append(f'<span><i class="sw cell {name}"></i>{low}–{high - 1}</span>' if high
                      else f'<span><i class="sw cell {name}"></i>≥ {low}</span>')
    legend.append(f'<span><i class="sw cell suppressed"></i>&lt;{k}</span></p>')
    return "".join(out) + "".join(legend)


def _lab_table(data: WeekData, names: Names, lang: str) -> str:
    t, k = T[lang], names.k
    rows = [r for r in data.lab if r["test"] in LAB_TESTS]
    if not rows:
        return f'<p class="empty">{t["no_lab"]}</p>'
    tests = [c for c in LAB_TESTS if any(r["test"] == c for r in rows)]
    by_district: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        by_district.setdefault((r["region"], r["district"]), {})[r["test"]] = r

    def rate(tests_c: Count, pos_c: Count, given: float | None) -> tuple[str, str]:
        if given is not None:
            return _percent(given, lang, 1), ""
        if not tests_c.hidden and not pos_c.hidden and not tests_c.unknown and not pos_c.unknown and tests_c.known:
            return _percent(pos_c.known / tests_c.known, lang, 1), ""
        return "–", t["not_computable"] if (tests_c.hidden or pos_c.hidden) else ""

    def cells(test: str, r: dict | None) -> str:
        if r is None:
            return '<td class="n">–</td><td class="n">–</td><td class="n">–</td>'
        pct, why = rate(r["tests"], r["pos"], r["rate"])
        title = f' title="{_esc(why)}"' if why else ""
        counts = "".join(f'<td class="n{" suppressed" if c.hidden else ""}" data-test="{_esc(test)}">'
                         f'{_esc(c.fmt(lang, k))}</td>' for c in (r["tests"], r["pos"]))
        return f'{counts}<td class="n rate" data-test="{_esc(test)}"{title}>{_esc(pct)}</td>'

    out = ['<table class="lab"><thead><tr><th rowspan="2">' + t["region"] + '</th><th rowspan="2">' + t["district"]
           + "</th>" + "".join(f'<th colspan="3" data-test="{_esc(c)}">{_esc(names.lab_test(c, lang))}</th>'
                               for c in tests) + "</tr><tr>"
           + "".join(f'<th class="n">{t["tests_done"]}</th><th class="n">{t["positives"]}</th>'
                     f'<th class="n">{t["positivity"]}</th>' for _ in tests) + "</tr></thead><tbody>"]
    for region, district in sorted(by_district, key=lambda rd: (_region_key(rd[0]), rd[1])):
        got = by_district[(region, district)]
        out.append(f'<tr data-district="{_esc(district)}"><td>{_esc(region)}</td><td>{_esc(district)}</td>'
                   + "".join(cells(c, got.get(c)) for c in tests) + "</tr>")
    total = []
    for c in tests:
        tc, pc = _sum([r for r in rows if r["test"] == c], "tests"), _sum([r for r in rows if r["test"] == c], "pos")
        total.append(cells(c, {"tests": tc, "pos": pc, "rate": None}))
    out.append(f'</tbody><tfoot><tr class="total"><th colspan="2">{t["total"]}</th>{"".join(total)}</tr></tfoot></table>')
    return "".join(out)


def _rate_cell(rate: float, lang: str, kind: str) -> str:
    low = round(rate, 2) < COMPLETENESS_TARGET  # judged on the whole percent shown (79.8% prints 80 %)
    color = COLORS["low"] if low else COLORS["ok"]
    w = max(0.0, min(rate, 1.0)) * 60
    return (f'<td class="n rate {kind}{" low" if low else ""}" data-rate="{rate:.4f}">'
            f'<svg class="ratebar" width="60" height="10" viewBox="0 0 60 10" aria-hidden="true">'
            f'<rect width="60" height="10" fill="#eeeeee"/><rect width="{w:.1f}" height="10" fill="{color}"/></svg> '
            f'{_esc(_percent(rate, lang))}</td>')


def _completeness_table(data: WeekData, lang: str) -> str:
    t = T[lang]
    if not data.completeness:
        return f'<p class="empty">{t["no_completeness"]}</p>'
    out = [f'<table class="completeness"><thead><tr><th>{t["region"]}</th><th>{t["district"]}</th>'
           f'<th>{t["facility"]}</th><th class="n">{t["expected"]}</th><th class="n">{t["reporting"]}</th>'
           f'<th class="n">{t["completeness"]}</th><th class="n">{t["on_time"]}</th><th class="n">{t["timeliness"]}</th>'
           f'<th class="n">{t["messages"]}</th><th class="n">{t["late"]}</th></tr></thead><tbody>']
    rows = sorted(data.completeness, key=lambda r: (_region_key(r["region"]), r["district"], r["name"]))
    for r in rows:
        out.append(f'<tr data-facility="{_esc(r["facility_code"])}"><td>{_esc(r["region"])}</td>'
                   f'<td>{_esc(r["district"])}</td><td class="fac">{_esc(r["name"])} <span class="code">({_esc(r["facility_code"])})'
                   f'</span></td><td class="n">{r["expected"]}</td><td class="n">{r["reporting"]}</td>'
                   + _rate_cell(r["completeness"], lang, "completeness")
                   + f'<td class="n">{r["on_time"]}</td>' + _rate_cell(r["timeliness"], lang, "timeliness")
                   + f'<td class="n">{_esc(_int(r["messages"], lang))}</td><td class="n">{_esc(_int(r["late"], lang))}</td>'
                   "</tr>")
    exp = sum(r["expected"] for r in rows)
    # Weighted by expected days, so the total is the share of all expected reporting days.
    comp = sum(r["completeness"] * r["expected"] for r in rows) / exp if exp else 0.0
    tim = sum(r["timeliness"] * r["expected"] for r in rows) / exp if exp else 0.0
    out.append(f'</tbody><tfoot><tr class="total"><th colspan="3">{t["total"]}</th><td class="n">{exp}</td>'
               f'<td class="n">{sum(r["reporting"] for r in rows)}</td>' + _rate_cell(comp, lang, "completeness")
               + f'<td class="n">{sum(r["on_time"] for r in rows)}</td>' + _rate_cell(tim, lang, "timeliness")
               + f'<td class="n">{_esc(_int(sum(r["messages"] for r in rows), lang))}</td>'
               f'<td class="n">{_esc(_int(sum(r["late"] for r in rows), lang))}</td></tr></tfoot></table>'
               f'<p class="note">{_esc(t["low_note"].format(p=_percent(COMPLETENESS_TARGET, lang)))}</p>')
    return "".join(out)


_CSS = """
@page{size:A4;margin:14mm 12mm 16mm 12mm}
html{-webkit-print-color-adjust:exact;print-color-adjust:exact}
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:24px auto;color:#222;max-width:1000px;font-size:13px}
header.masthead{border-bottom:3px solid #1f4e79;padding-bottom:6px;margin-bottom:12px}
p.org{margin:0;color:#1f4e79;font-weight:bold;font-size:12px}
h1{font-size:22px;margin:4px 0}h2{font-size:16px;margin:18px 0 8px;color:#1f4e79}
p.period{margin:0;font-size:14px}
.immediate{border:3px solid #d62728;background:#fdecea;padding:6px 12px;margin:12px 0}
.immediate h2{margin:4px 0;color:#a50f15}.immediate.calm{border-color:#9ecae1;background:#f1f7fb}
.immediate.calm h2{color:#1f4e79}.immediate ul{margin:6px 0;padding-left:20px}
table{border-collapse:collapse;margin:6px 0;width:100%}
th,td{border:1px solid #d0d0d0;padding:3px 6px;text-align:left;vertical-align:middle}
th{background:#eef2f6;font-weight:bold}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.n{white-space:nowrap}tr.alert td{background:#fdecea;font-weight:bold}
tfoot th,tfoot td{font-weight:bold;background:#f5f5f5}
td.suppressed,.cell.suppressed{background:repeating-linear-gradient(45deg,#e2e2e2 0 3px,#f6f6f6 3px 6px)}
table.map td.cell{text-align:center;min-width:44px}table.map th.region{background:#f5f5f5}
table.map thead th.n{text-align:center}table.completeness td.fac{min-width:170px}
td.cell.n0{background:#ffffff;color:#777}td.cell.nodata{color:#777}
""" + "".join(f"td.cell.{c},i.sw.{c}{{background:{bg};color:{fg}}}" for c, _, bg, fg in CLASSES) + """
i.sw.n0{background:#ffffff;border:1px solid #ccc}
td.rate.low{color:#b30000;font-weight:bold}svg.ratebar{vertical-align:middle}
figure.curve{margin:8px 0 14px;break-inside:avoid}figcaption{font-weight:bold;margin-bottom:2px}
figcaption .notif{font-weight:normal;color:#555}
svg.epicurve{max-width:100%;height:auto;display:block}
.legend span{margin-right:16px;white-space:nowrap}
i.sw{display:inline-block;width:12px;height:12px;vertical-align:-1px;margin-right:5px;border:1px solid #bbb}
""" + f"""i.sw-suspected{{background:{COLORS["suspected"]}}}i.sw-confirmed{{background:{COLORS["confirmed"]}}}
i.sw-deaths{{background:{COLORS["deaths"]};height:3px;vertical-align:3px}}
i.sw-hidden{{background:repeating-linear-gradient(45deg,{COLORS["hatch_line"]} 0 2px,{COLORS["hatch_bg"]} 2px 5px)}}
""" + """
p.note,p.legend{font-size:12px;color:#444}.empty{color:#555;font-style:italic}
span.code{color:#666;font-size:11px}
footer{margin-top:24px;border-top:1px solid #ccc;padding-top:6px;font-size:11px;color:#444}
@media print{body{margin:0;max-width:none;font-size:11px}h1{font-size:18px}section.page{break-before:page}
thead{display:table-header-group}tr{break-inside:avoid}h2{break-after:avoid}}
"""


def render_weekly(engine: Engine, week: str, lang: str = "fr", weeks_back: int = 12, config_dir: Path | None = None,
                  *, generated_at: datetime | None = None) -> str:
    """The bulletin of ISO ``week`` (``2026W45`` or ``2026-W45``) as a self-contained HTML page in
    ``lang`` (``fr`` or ``en``), with curves over the last ``weeks_back`` weeks. ``generated_at``
    (UTC; default now) is printed in the footer."""
    if lang not in LANGS:
        raise BulletinError(f"lang must be one of {', '.join(LANGS)}, not {lang!r}")
    if not isinstance(weeks_back, int) or not 1 <= weeks_back <= 104:
        raise BulletinError("weeks_back must be a whole number of weeks from 1 to 104")
    names = load_names(config_dir)
    data = fetch(engine, week, weeks_back)
    t, k = T[lang], names.k

    by_dw: dict[str, dict[str, list[dict]]] = {}  # disease -> week -> district rows
    for r in data.idsr:
        by_dw.setdefault(r["disease"], {}).setdefault(r["iso_week"], []).append(r)
    # Curves and columns for the diseases with a case in the window, in idsr.yaml's order (the
    # programme's order), then any code the configuration does not know.
    order = list(names.diseases)
    shown = sorted((c for c, wk in by_dw.items()
                    if any(r["s"].any or r["c"].any or r["d"].any for rows in wk.values() for r in rows)),
                   key=lambda c: (order.index(c) if c in order else len(order), c))
    notif = {c: _notification(c, [r for rows in by_dw[c].values() for r in rows], names) for c in shown}

    year, num = data.week.split("-W")
    title = f'{t["title"]} — {t["week"].format(w=int(num), y=year)}'
    body = [f'<header class="masthead"><p class="org">{_esc(t["org"])}</p><h1>{_esc(title)}</h1>'
            f'<p class="period">{_esc(_period(data.monday, lang))}</p></header>',
            '<section class="situation">', _immediate_box(data, shown, by_dw, names, notif, lang),
            f'<h2>{_esc(t["situation"])}</h2>']
    if shown:
        body.append(_summary_table(data, shown, by_dw, names, notif, lang))
        body.append(f'<p class="note">{_esc(t["small_note"].format(k=k, k1=k - 1))}</p>')
        body.append(f'<h2>{_esc(t["curves"].format(n=weeks_back))}</h2>' + _legend(lang, k))
        for i, code in enumerate(shown):
            series = [(_sum(by_dw[code].get(wk, []), "s"), _sum(by_dw[code].get(wk, []), "c"),
                       _sum(by_dw[code].get(wk, []), "d")) for wk in data.weeks]
            name = names.disease(code, lang)
            body.append(f'<figure class="curve" data-disease="{_esc(code)}"><figcaption>{_esc(name)} '
                        f'<span class="notif">({_esc(_notif_label(notif[code], lang))})'
                        f'</span></figcaption>{_epicurve(code, name, series, data.weeks, lang, k, i)}</figure>')
    else:
        body.append(f'<p class="empty no-cases">{_esc(t["no_cases"].format(n=weeks_back))}</p>')
    # Zero reports matter in IDSR: say which immediately notifiable diseases had no case at all.
    silent = [c for c, d in names.diseases.items() if d["notification"] == "immediate" and c not in shown]
    if silent:
        note = t["zero_immediate"].format(n=weeks_back, names=", ".join(names.disease(c, lang) for c in silent))
        body.append(f'<p class="note zero-immediate">{_esc(note)}</p>')
    body.append("</section>")
    body += ['<section class="districts page">', f'<h2>{_esc(t["map"].format(w=int(num)))}</h2>',
             _district_table(data, shown, by_dw, names, lang), f'<p class="note">{_esc(t["map_note"])}</p>',
             "</section>",
             '<section class="lab page">', f'<h2>{_esc(t["lab"].format(w=int(num)))}</h2>',
             _lab_table(data, names, lang), "</section>",
             '<section class="completeness page">', f'<h2>{_esc(t["completeness_h"].format(w=int(num)))}</h2>',
             _completeness_table(data, lang), "</section>"]
    now = generated_at or datetime.now(timezone.utc)
    if now.tzinfo is not None:  # printed as UTC, like every time in the warehouse
        now = now.astimezone(timezone.utc).replace(tzinfo=None)
    foot = [_esc(t["source"])]
    if data.as_of is not None:
        foot.append(_esc(t["as_of"].format(t=_stamp(data.as_of, lang))))
    foot.append(_esc(t["generated"].format(t=_stamp(now, lang))))
    body.append(f'<footer><p>{" ".join(foot)}</p></footer>')
    return (f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
            # No script, style or image may come from anywhere but this file.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
            f'<body class="bulletin" data-week="{data.week}" data-lang="{lang}">\n' + "\n".join(body)
            + "\n</body></html>\n")


# --------------------------------------------------------------------------------------------------
# Files and PDF


def chromium_path() -> str:
    """Debian's ``chromium``, or ``BulletinError`` saying how to install it."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if path is None:
        raise BulletinError("chromium is needed to print the PDF bulletin and is not installed: install it with "
                            "`apt-get install chromium fonts-dejavu-core` (or run scripts/ensure-chromium)")
    return path


def print_pdf(html_path: Path, pdf_path: Path, chromium: str | None = None) -> Path:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium (A4, from the page's CSS)."""
    chromium = chromium or chromium_path()
    pdf_path = Path(pdf_path)
    tmp = pdf_path.with_name(pdf_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    # A private profile per run: two bulletins printed at once must not share (and lock) one.
    with tempfile.TemporaryDirectory(prefix="hl7ics-chromium-") as profile:
        try:
            r = subprocess.run(
                [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                 f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions",
                 f"--print-to-pdf={tmp}", Path(html_path).resolve().as_uri()],
                capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            tmp.unlink(missing_ok=True)
            raise BulletinError(f"chromium did not print {html_path.name} within {CHROMIUM_TIMEOUT} s") from None
    if r.returncode != 0 or not tmp.is_file() or tmp.read_bytes()[:5] != b"%PDF-":
        tmp.unlink(missing_ok=True)
        raise BulletinError(f"chromium could not print {html_path.name} (exit {r.returncode}): "
                            f"{r.stderr.strip()[-500:]}")
    os.replace(tmp, pdf_path)  # whoever mails the folder never picks up a half-written PDF
    return pdf_path


def write_weekly(engine: Engine, week: str, out_dir: Path, lang: str = "fr", *, weeks_back: int = 12,
                 config_dir: Path | None = None, pdf: bool = True) -> list[Path]:
    """Write ``bulletin-2026W45-<lang>.html`` and, with ``pdf``, the ``.pdf`` printed from it into
    ``out_dir``. Returns the paths written, HTML first. Chromium is looked for before anything is
    written, so a missing browser fails fast with the command to install it."""
    iso, _ = parse_week(week)
    chromium = chromium_path() if pdf else None
    page = render_weekly(engine, iso, lang, weeks_back, config_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bulletin-{iso.replace('-', '')}-{lang}"
    html = out_dir / f"{stem}.html"
    if not pdf:
        return [_write(html, page)]
    # The pair changes together: the new HTML is printed from a staging folder and takes its
    # place only once its PDF has, so a failed print leaves the previous HTML with its PDF
    # (a district mailing the folder never sends two bulletins with different figures).
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))  # one per call: fr and en may run at once
    draft = _write(staging / html.name, page)
    try:
        pdf_path = print_pdf(draft, out_dir / f"{stem}.pdf", chromium)
        os.replace(draft, html)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [html, pdf_path]


def cli_weekly(engine: Engine, week: str, out_dir: Path, lang: str = "fr", pdf: bool = True,
               config_dir: Path | None = None, out=None) -> int:
    """``hl7ics report weekly --week 2026W45 [--lang fr|en]``: write the files and print their paths;
    exit code 0, or 2 with the reason on stderr."""
    try:
        paths = write_weekly(engine, week, out_dir, lang, pdf=pdf, config_dir=config_dir)
    except BulletinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p, file=out or sys.stdout)
    return 0
