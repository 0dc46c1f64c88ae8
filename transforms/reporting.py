"""MoH reporting: IDSR weekly surveillance, lab, hospital and immunisation activity, and reporting
completeness, rebuilt from the warehouse facts for a range of ISO weeks.

Inputs: the facts (``fact_encounter`` diagnoses and discharge dispositions, ``fact_lab_order``,
``fact_lab_result``, ``fact_immunization``, ``message_store`` arrival times), ``dim_facility`` (region,
district), ``dim_patient`` (sex), birth dates from ``phi_patient`` (read once per build to compute age
bands — an audited read, see ``privacy.audit_phi_read``), and ``config/idsr.yaml`` (diseases and their
ICD-10 / test / result rules, lab tests, EPI antigens, the small-cell threshold ``k``).
Outputs (replaced for the rebuilt weeks or months, so a re-run leaves the tables unchanged):
- restricted working level: ``rpt_idsr_case`` (one row per disease x facility x patient key x week),
  ``rpt_idsr_weekly`` (facility cells);
- statisticians' level (``moh_*``): ``moh_idsr_weekly`` (district x disease x age band x sex, with
  district totals as age_group = sex = 'ALL'), ``moh_lab_activity``, ``moh_hospital_activity``,
  ``moh_immunization``, ``moh_completeness``. Person counts of 1..k-1 are suppressed (NULL,
  ``suppressed`` = 1), with complementary suppression so that no hidden cell can be recomputed
  from the published total of its group (``suppress``).

Counting rules (docs/warehouse.md): a suspected case is a patient with a matching diagnosis (admission
week) or an order for one of the disease's tests (order week); a confirmed case has a positive result
(observation week) — confirmed cases are also suspected; a death is a discharge with disposition 20
(expired, HL7 table 0112) and a matching diagnosis. The week is the ISO week (Monday to Sunday, UTC).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import yaml
from sqlalchemy import text
from sqlalchemy.engine import Engine

from .config import ConfigError
from .warehouse import Writer, timestamp_text, utcnow

AGE_GROUPS = ("0-11m", "1-4y", "5-14y", "15y+", "unknown")
SEXES = ("F", "M", "U")
ALL = "ALL"
EXPIRED = "20"  # HL7 table 0112 discharge disposition: expired
# Order statuses (ORC-5, HL7 table 0038) and order controls (ORC-1, table 0119) of an order that
# was cancelled or stopped: no suspicion of a case.
CANCELLED_ORDER = frozenset(("CA", "DC", "OC", "CR", "OD", "DR"))


@dataclass(frozen=True)
class Disease:
    code: str
    name_fr: str
    name_en: str
    notification: str
    icd10: tuple[str, ...]
    tests: tuple[str, ...]
    positive: tuple[str, ...]


@dataclass(frozen=True)
class LabTest:
    code: str
    name_fr: str
    name_en: str
    tests: tuple[str, ...]
    positive: tuple[str, ...]


@dataclass(frozen=True)
class IdsrConfig:
    diseases: tuple[Disease, ...]
    lab_tests: tuple[LabTest, ...] = ()
    antigens: dict = field(default_factory=dict)  # vaccine code -> antigen
    small_cell_k: int = 5
    week_deadline_days: int = 2
    reporting_days: dict = field(default_factory=dict)  # facility -> expected reporting days a week (default 7)
    reporting_from: dict = field(default_factory=dict)  # facility -> date it went live (weeks before: not expected)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IdsrConfig":
        name = Path(path).name
        try:
            doc = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("idsr")
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{name}: cannot read ({type(exc).__name__})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("diseases"), list):
            raise ConfigError(f"{name}: expected 'idsr:' with a 'diseases:' list")
        diseases, seen = [], set()
        for i, d in enumerate(doc["diseases"]):
            where = f"{name}: disease #{i + 1}"
            if not isinstance(d, dict) or not d.get("code"):
                raise ConfigError(f"{where}: needs a 'code'")
            if d["code"] in seen:
                raise ConfigError(f"{where}: duplicate code {d['code']}")
            seen.add(d["code"])
            if d.get("notification") not in ("immediate", "weekly"):
                raise ConfigError(f"{where} ({d['code']}): notification must be 'immediate' or 'weekly'")
            if not d.get("suspected_icd10") and not d.get("tests"):
                raise ConfigError(f"{where} ({d['code']}): needs suspected_icd10 codes or tests")
            diseases.append(Disease(str(d["code"]), str(d.get("name_fr") or d["code"]), str(d.get("name_en") or d["code"]),
                                    d["notification"], tuple(str(x) for x in d.get("suspected_icd10") or ()),
                                    tuple(str(x) for x in d.get("tests") or ()),
                                    tuple(str(x) for x in d.get("positive") or ())))
        labs = tuple(LabTest(str(t["code"]), str(t.get("name_fr") or t["code"]), str(t.get("name_en") or t["code"]),
                             tuple(str(x) for x in t.get("tests") or ()), tuple(str(x) for x in t.get("positive") or ()))
                     for t in doc.get("lab_tests") or ())
        antigens = {}
        for antigen, codes in (doc.get("antigens") or {}).items():
            for c in codes or ():
                antigens[str(c)] = str(antigen)
        k = doc.get("small_cell_k", 5)
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"{name}: small_cell_k must be a positive integer")
        since = {}
        for fac, day in (doc.get("reporting_from") or {}).items():
            try:
                since[str(fac)] = day if isinstance(day, date) else date.fromisoformat(str(day))
            except ValueError:
                raise ConfigError(f"{name}: reporting_from.{fac} must be a date (YYYY-MM-DD)") from None
        return cls(tuple(diseases), labs, antigens, k, int(doc.get("week_deadline_days", 2)),
                   dict(doc.get("reporting_days") or {}), since)

    def disease(self, code: str) -> Disease:
        return next(d for d in self.diseases if d.code == code)


# -- weeks -----------------------------------------------------------------------------------------

def iso_week(d: date | datetime) -> str:
    y, w, _ = d.isocalendar()
    return f"{y}-W{w:02d}"


def week_built(engine: Engine, iso_week_label: str) -> bool:
    """Whether ``build`` ever covered the ISO week: it writes a completeness row for every
    facility of ``dim_facility`` for every week it rebuilds, cases or not (a warehouse without any
    facility yet cannot tell, and counts as built)."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT 1 FROM moh_completeness WHERE iso_week = :w UNION ALL "
            "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM dim_facility)"), {"w": iso_week_label}).first() is not None


def week_start(week: str) -> date:
    """'2026-W45' or '2026W45' -> the Monday of that ISO week."""
    s = week.replace("-", "").upper()
    try:
        y, w = int(s[:4]), int(s[5:])
        if s[4] != "W" or not 1 <= w <= 53:
            raise ValueError
        return date.fromisocalendar(y, w, 1)
    except (ValueError, IndexError):
        raise ConfigError(f"week must look like 2026W45 or 2026-W45, not {week!r}") from None


def _d(v) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day)
    s = str(v)
    return datetime.strptime(s[:19], "%Y-%m-%d %H:%M:%S") if len(s) >= 19 else datetime.strptime(s[:10], "%Y-%m-%d")


def _birth(v) -> datetime | None:
    """Birth dates may be partial (YYYY or YYYY-MM, as PID-7 allows): the first day of the period."""
    if v is None or isinstance(v, (date, datetime)):
        return _d(v)
    s = str(v).strip()
    try:
        if len(s) == 4:
            return datetime(int(s), 1, 1)
        if len(s) == 7:
            return datetime(int(s[:4]), int(s[5:7]), 1)
        return _d(s)
    except ValueError:
        return None


def age_group(birth, at: datetime) -> str:
    b = _birth(birth)
    if b is None or b > at:
        return "unknown"
    months = (at.year - b.year) * 12 + at.month - b.month - (at.day < b.day)
    if months < 12:
        return "0-11m"
    years = months // 12
    return "1-4y" if years < 5 else "5-14y" if years < 15 else "15y+"


# -- suppression -------------------------------------------------------------------------------------

def suppress_linked(measures: list[dict[tuple, dict[tuple, int]]], k: int) -> set[tuple[tuple, tuple]]:
    """``suppress`` for measures of the same cells that bound each other (confirmed cases and
    deaths are suspected cases too): a cell hidden for one measure is hidden for all, or a
    published confirmed count would set a floor under the hidden suspected one (a zero is still
    published as zero). Then, measure by measure, a hidden non-zero cell left alone in a group
    whose total is published (so recomputable) gets the smallest other non-zero cell hidden
    beside it, until nothing moves."""
    hidden: set[tuple[tuple, tuple]] = set()
    for groups in measures:
        hidden |= suppress(groups, k)
    moved = True
    while moved:
        moved = False
        for groups in measures:
            for g, cells in groups.items():
                if 0 < sum(cells.values()) < k:
                    continue  # a small total is hidden with all its non-zero cells
                alone = [c for c in cells if (g, c) in hidden and cells[c] > 0]
                if len(alone) == 1:
                    others = sorted((n, c) for c, n in cells.items() if n > 0 and (g, c) not in hidden)
                    if others:
                        hidden.add((g, others[0][1]))
                        moved = True
    return hidden


def suppress(groups: dict[tuple, dict[tuple, int]], k: int) -> set[tuple[tuple, tuple]]:
    """Cells to hide: primary (1 <= n < k) and complementary, so that in every group whose total
    is published no hidden cell is alone (it could be recomputed from the total and the others).
    ``groups``: group key -> {cell key -> count}; the group's total is treated as published unless
    it is itself small (then every non-zero cell of the group is hidden, and so is the total)."""
    hidden: set[tuple[tuple, tuple]] = set()
    for g, cells in groups.items():
        total = sum(cells.values())
        if 0 < total < k:
            hidden.update((g, c) for c, n in cells.items() if n > 0)
            continue
        small = [c for c, n in cells.items() if 0 < n < k]
        hidden.update((g, c) for c in small)
        if len(small) == 1:
            # Hide the smallest other non-zero cell too (zeros are public facts, hiding one protects nothing).
            others = sorted((n, c) for c, n in cells.items() if n > 0 and c not in small)
            if others:
                hidden.add((g, others[0][1]))
    return hidden


# -- the build ---------------------------------------------------------------------------------------

@dataclass
class BuildResult:
    weeks: list[str]
    cases: int
    rows: dict


def _week_range(first: date, last: date) -> list[date]:
    start = first - timedelta(days=first.weekday())
    out = []
    while start <= last:
        out.append(start)
        start += timedelta(days=7)
    return out


def _ts(d: date | datetime) -> str:
    if isinstance(d, datetime):
        return d.strftime("%Y-%m-%d %H:%M:%S")
    return d.strftime("%Y-%m-%d 00:00:00")


def _in(codes, prefix: str = "c") -> tuple[str, dict]:
    codes = sorted(set(codes)) or ["\x00"]
    return (", ".join(f":{prefix}{i}" for i in range(len(codes))),
            {f"{prefix}{i}": c for i, c in enumerate(codes)})


def collect_cases(engine: Engine, cfg: IdsrConfig, start: datetime, end: datetime,
                  diseases: tuple[Disease, ...] | None = None) -> dict[tuple, dict]:
    """(disease, facility, patient_key, iso_week) -> {suspected, confirmed, died, first_at} in [start, end)."""
    diseases = diseases or cfg.diseases
    cases: dict[tuple, dict] = {}

    def add(dis, fac, pk, at: datetime, suspected=1, confirmed=0, died=0):
        if not pk or at is None:
            return
        key = (dis, fac, pk, iso_week(at))
        c = cases.get(key)
        if c is None:
            cases[key] = {"suspected": suspected, "confirmed": confirmed, "died": died, "first_at": at}
        else:
            c["suspected"] |= suspected
            c["confirmed"] |= confirmed
            c["died"] |= died
            c["first_at"] = min(c["first_at"], at)

    by_prefix = [(p, d.code) for d in diseases for p in d.icd10]
    s, e = _ts(start), _ts(end)
    with engine.connect() as conn:
        for fac, pk, admit, disch, disp, dx in conn.execute(text(
                "SELECT facility_code, patient_key, admit_at, discharge_at, discharge_disposition, diagnosis_codes "
                "FROM fact_encounter WHERE cancelled = 0 AND diagnosis_codes IS NOT NULL AND "
                "((admit_at >= :s AND admit_at < :e) OR (discharge_at >= :s AND discharge_at < :e))"),
                {"s": s, "e": e}):
            matched = {code for c in dx.split(";") for p, code in by_prefix if c.strip().startswith(p)}
            if not matched:
                continue
            admit, disch = _d(admit), _d(disch)
            for dis in matched:
                if admit is not None and start <= admit < end:
                    add(dis, fac, pk, admit)
                if disp == EXPIRED and disch is not None and start <= disch < end:
                    # Counted in the week of the death; the case itself was counted at admission
                    # (a later week's death is not a second suspected case).
                    add(dis, fac, pk, disch, suspected=0, died=1)
        tests = {t: d.code for d in diseases for t in d.tests}
        if tests:
            marks, params = _in(tests)
            # A cancelled or discontinued order (ORC-5, else ORC-1) is no suspicion of a case.
            for fac, pk, code, at, status in conn.execute(text(
                    f"SELECT facility_code, patient_key, test_code, ordered_at, order_status FROM fact_lab_order "
                    f"WHERE test_code IN ({marks}) AND ordered_at >= :s AND ordered_at < :e"), {**params, "s": s, "e": e}):
                if (status or "").strip().upper() not in CANCELLED_ORDER:
                    add(tests[code], fac, pk, _d(at))
            positives = {d.code: set(d.positive) for d in diseases}
            for fac, pk, code, value, at in latest_results(conn, marks, params, s, e):
                dis = tests[code]
                add(dis, fac, pk, _d(at), confirmed=1 if (value or "").strip() in positives[dis] else 0)
        survivor = _survivors(conn, {k[2] for k in cases})
    if not survivor:
        return cases
    # A message sent after a merge (A40) under the retired patient ID is the same person: its
    # case joins the surviving key's.
    merged: dict[tuple, dict] = {}
    for (dis, fac, pk, wk), c in cases.items():
        key = (dis, fac, survivor.get(pk, pk), wk)
        m = merged.get(key)
        if m is None:
            merged[key] = dict(c)
        else:
            for f in ("suspected", "confirmed", "died"):
                m[f] |= c[f]
            m["first_at"] = min(m["first_at"], c["first_at"])
    return merged


def _survivors(conn, keys: set[str]) -> dict[str, str]:
    """Retired patient key -> the key it was finally merged into, for those of ``keys``."""
    into: dict[str, str] = {}
    todo = sorted(keys)
    while todo:  # a survivor may itself have been merged later: follow the chain
        found = {}
        for i in range(0, len(todo), 900):
            marks, params = _in(todo[i:i + 900])
            # patient_merge too: a merge (A40) that came before any message under the retired ID
            # found no dim_patient row to mark, and that ID's later messages made an unmarked one.
            found.update(conn.execute(text(f"SELECT old_key, new_key FROM patient_merge WHERE old_key IN ({marks})"),
                                      params).all())
            found.update(conn.execute(text(f"SELECT patient_key, merged_into FROM dim_patient WHERE merged_into IS "
                                           f"NOT NULL AND patient_key IN ({marks})"), params).all())
        found = {o: n for o, n in found.items() if o not in into and n != o}
        into.update(found)
        todo = sorted(set(found.values()) - set(into))
    out = {}
    for old in into:
        new, seen = into[old], {old}
        while new in into and new not in seen:  # a cycle (a merge undone by a later one) stops
            seen.add(new)
            new = into[new]
        out[old] = new
    return out


def latest_results(conn, marks: str, params: dict, s: str, e: str) -> list[tuple]:
    """(facility, patient key, test code, value, observed at) of the tests ``marks`` names, one per
    test of an order: its latest result, counted where that result was observed in [s, e). A
    preliminary result followed by the final one, or a final one corrected (OBX-11 C), is one
    test with the last value, not two tests; a result cancelled (X) or deleted (D) last counts as
    none. The order's results observed after [s, e) are read too, so that which weeks are rebuilt
    together does not decide where a test counts (through the test-code and time index: a build of
    recent weeks reads little)."""
    cols = ("SELECT message_id, facility_code, patient_key, placer_order_number, test_code, value, result_status, "
            f"observed_at FROM fact_lab_result WHERE test_code IN ({marks}) ")
    latest: dict[tuple, tuple] = {}

    def keep(rows) -> None:
        for mid, fac, pk, order, code, value, status, at in rows:
            # Without an order number, each message's result stands alone.
            key = (fac, pk, code, order) if order else (fac, pk, code, None, mid)
            if key not in latest or mid > latest[key][0]:
                latest[key] = (mid, fac, pk, code, value, status, at)

    keep(conn.execute(text(cols + "AND observed_at >= :s AND observed_at < :e"), {**params, "s": s, "e": e}))
    orders = sorted({k[3] for k in latest if k[3]})
    for i in range(0, len(orders), 900):
        omarks, oparams = _in(orders[i:i + 900], "o")
        keep(r for r in conn.execute(text(cols + f"AND observed_at >= :e AND placer_order_number IN ({omarks})"),
                                     {**params, **oparams, "e": e})
             if (r[1], r[2], r[4], r[3]) in latest)
    return [r[1:5] + (r[6],) for r in sorted(latest.values(), key=lambda r: r[0])
            if (r[5] or "").strip() not in ("X", "D") and s <= (timestamp_text(r[6]) or "") < e]


def build(engine: Engine, cfg: IdsrConfig, first: date, last: date, now: str | None = None) -> BuildResult:
    """Rebuild every table for the ISO weeks touching [first, last] (and the months they touch)."""
    from .privacy import audit_phi_read

    now = now or utcnow()
    weeks = _week_range(first, last)
    start, end = datetime.combine(weeks[0], datetime.min.time()), datetime.combine(weeks[-1] + timedelta(days=7),
                                                                                   datetime.min.time())
    facilities = _facilities(engine)
    cases = collect_cases(engine, cfg, start, end)
    keys = sorted({k[2] for k in cases})
    births, sexes = {}, {}
    with engine.connect() as conn:
        for i in range(0, len(keys), 900):
            marks, params = _in(keys[i:i + 900])
            for pk, sex in conn.execute(text(f"SELECT patient_key, sex FROM dim_patient WHERE patient_key IN ({marks})"),
                                        params):
                sexes[pk] = sex
    if keys:
        births = audit_phi_read(engine, "phi_patient", "moh_reporting: birth dates for IDSR age bands",
                                "SELECT patient_key, birth_date FROM phi_patient WHERE patient_key IN ({marks})", keys)
    case_rows, weekly = [], {}
    for (dis, fac, pk, wk), c in sorted(cases.items()):
        band = age_group(births.get(pk), c["first_at"])
        sex = sexes.get(pk) if sexes.get(pk) in ("F", "M") else "U"
        ws = week_start(wk)
        case_rows.append((dis, fac, pk, wk, ws.isoformat(), band, sex, c["suspected"], c["confirmed"], c["died"],
                          _ts(c["first_at"]), now))
        region, district = facilities.get(fac, ("?", "?"))
        cell = weekly.setdefault((wk, ws.isoformat(), region, district, fac, dis, band, sex), [0, 0, 0])
        cell[0] += c["suspected"]
        cell[1] += c["confirmed"]
        cell[2] += c["died"]
    s, e = weeks[0].isoformat(), (weeks[-1] + timedelta(days=7)).isoformat()
    with engine.begin() as conn:
        w = Writer(conn)
        for t in ("rpt_idsr_case", "rpt_idsr_weekly", "moh_idsr_weekly", "moh_lab_activity", "moh_completeness"):
            conn.execute(text(f"DELETE FROM {t} WHERE week_start >= :s AND week_start < :e"), {"s": s, "e": e})
        w.copy("rpt_idsr_case", ("disease", "facility_code", "patient_key", "iso_week", "week_start", "age_group", "sex",
                                 "suspected", "confirmed", "died", "first_at", "updated_at"), case_rows)
        w.copy("rpt_idsr_weekly", ("iso_week", "week_start", "region", "district", "facility_code", "disease",
                                   "age_group", "sex", "suspected", "confirmed", "deaths", "updated_at"),
               [k + tuple(v) + (now,) for k, v in sorted(weekly.items())])
        moh = _publish_idsr(cfg, weekly, now)
        w.copy("moh_idsr_weekly", ("iso_week", "week_start", "region", "district", "disease", "notification",
                                   "age_group", "sex", "suspected", "confirmed", "deaths", "suppressed", "updated_at"), moh)
        lab = _lab_activity(conn, cfg, facilities, start, end, now)
        w.copy("moh_lab_activity", ("iso_week", "week_start", "region", "district", "test", "tests_done", "positives",
                                    "positivity_rate", "suppressed", "updated_at"), lab)
        comp = _completeness(conn, cfg, facilities, weeks, now)
        w.copy("moh_completeness", ("iso_week", "week_start", "facility_code", "region", "district", "expected_days",
                                    "reporting_days", "on_time_days", "completeness", "timeliness", "messages",
                                    "late_messages", "updated_at"), comp)
        months = sorted({(d.year, d.month) for wk in weeks for d in (wk, wk + timedelta(days=6))})
        m0 = date(months[0][0], months[0][1], 1)
        m1 = (date(months[-1][0], months[-1][1], 28) + timedelta(days=4)).replace(day=1)
        labels = [f"{y}-{m:02d}" for y, m in months]
        marks, params = _in(labels)
        for t in ("moh_hospital_activity", "moh_immunization"):
            conn.execute(text(f"DELETE FROM {t} WHERE month IN ({marks})"), params)
        hosp = _hospital_activity(conn, facilities, m0, m1, now, cfg.small_cell_k)
        w.copy("moh_hospital_activity", ("month", "facility_code", "region", "district", "admissions", "discharges",
                                         "deaths", "bed_days", "mean_length_of_stay", "suppressed", "updated_at"), hosp)
        imm = _immunization(conn, cfg, facilities, m0, m1, now)
        w.copy("moh_immunization", ("month", "region", "district", "antigen", "doses", "suppressed", "updated_at"), imm)
    return BuildResult([iso_week(wk) for wk in weeks], len(case_rows),
                       {"rpt_idsr_case": len(case_rows), "moh_idsr_weekly": len(moh), "moh_lab_activity": len(lab),
                        "moh_completeness": len(comp), "moh_hospital_activity": len(hosp), "moh_immunization": len(imm)})


def _facilities(engine: Engine) -> dict[str, tuple[str, str]]:
    with engine.connect() as conn:
        return {c: (r, d) for c, r, d in conn.execute(text("SELECT facility_code, region, district FROM dim_facility"))}


def _publish_idsr(cfg: IdsrConfig, weekly: dict, now: str) -> list[tuple]:
    """District level, every band x sex cell of a disease-week-district plus its total, suppressed."""
    notif = {d.code: d.notification for d in cfg.diseases}
    dist: dict[tuple, dict[tuple, list]] = {}
    for (wk, ws, region, district, _fac, dis, band, sex), v in weekly.items():
        cells = dist.setdefault((wk, ws, region, district, dis), {})
        c = cells.setdefault((band, sex), [0, 0, 0])
        for i in range(3):
            c[i] += v[i]
    hidden = suppress_linked([{g: {c: v[m] for c, v in cells.items()} for g, cells in dist.items()}
                              for m in range(3)], cfg.small_cell_k)
    out = []
    for g, cells in sorted(dist.items()):
        wk, ws, region, district, dis = g
        totals = [sum(v[m] for v in cells.values()) for m in range(3)]
        for (band, sex), v in sorted(cells.items()):
            # A zero stays public ("<5" means 1 to 4), even in a cell hidden for another measure.
            vals = [None if (g, (band, sex)) in hidden and v[m] else v[m] for m in range(3)]
            out.append((wk, ws, region, district, dis, notif.get(dis, "weekly"), band, sex, *vals,
                        int(any(x is None for x in vals)), now))
        # A total is hidden only when it is small itself (then all its cells are hidden too).
        tot = [None if 0 < t < cfg.small_cell_k else t for t in totals]
        out.append((wk, ws, region, district, dis, notif.get(dis, "weekly"), ALL, ALL, *tot,
                    int(any(x is None for x in tot)), now))
    return out


def _lab_activity(conn, cfg: IdsrConfig, facilities, start: datetime, end: datetime, now: str) -> list[tuple]:
    codes = {c: t for t in cfg.lab_tests for c in t.tests}
    if not codes:
        return []
    marks, params = _in(codes)
    agg: dict[tuple, list[int]] = {}
    for fac, _pk, code, value, at in latest_results(conn, marks, params, _ts(start), _ts(end)):
        t = codes[code]
        at = _d(at)
        region, district = facilities.get(fac, ("?", "?"))
        wk = iso_week(at)
        a = agg.setdefault((wk, week_start(wk).isoformat(), region, district, t.code), [0, 0])
        a[0] += 1
        a[1] += 1 if (value or "").strip() in t.positive else 0
    out = []
    k = cfg.small_cell_k
    for key, (n, pos) in sorted(agg.items()):
        hide_n, hide_p = 0 < n < k, 0 < pos < k
        rate = None if (hide_n or hide_p) else (pos / n if n else None)
        # A hidden count stands for 1 to k-1: no positives at all is shown as 0 even when the
        # number of tests is hidden (it reveals nothing about who was tested).
        out.append((*key, None if hide_n else n, None if hide_p else pos, rate, int(hide_n or hide_p), now))
    return out


def _completeness(conn, cfg: IdsrConfig, facilities, weeks: list[date], now: str) -> list[tuple]:
    """Per facility and week. Not expected, so no row: a facility with ``reporting_days`` 0, the
    weeks that end before its ``reporting_from`` date (it went live later), and the weeks from
    when it left the configuration (``dim_facility.retired_at``)."""
    out = []
    late_margin = timedelta(days=30)  # arrivals later than this are not looked for (index range bound)
    retired = {c: _d(r) for c, r in conn.execute(text(
        "SELECT facility_code, retired_at FROM dim_facility WHERE retired_at IS NOT NULL"))}
    for fac, (region, district) in sorted(facilities.items()):
        expected = int(cfg.reporting_days.get(fac, 7))
        if expected <= 0:
            continue
        live = cfg.reporting_from.get(fac)
        for ws in weeks:
            if fac in retired and datetime.combine(ws, datetime.min.time()) >= retired[fac]:
                continue
            we = ws + timedelta(days=7)
            if live is not None and we <= live:
                continue
            deadline = datetime.combine(we, datetime.min.time()) + timedelta(days=cfg.week_deadline_days)
            days, on_time, n, late = set(), set(), 0, 0
            for mdt, rcv in conn.execute(text(
                    "SELECT message_datetime, received_at FROM message_store WHERE facility_code = :f "
                    "AND received_at >= :s AND received_at < :r AND message_datetime >= :s AND message_datetime < :e "
                    # Copies are no report: duplicates, and listener resends (judged anew when
                    # quarantined), would count a sender stuck resending as reporting, and late.
                    "AND status <> 'received' AND status <> 'duplicate' AND resend_of IS NULL"),
                    {"f": fac, "s": _ts(ws), "e": _ts(we), "r": _ts(deadline + late_margin)}):
                mdt, rcv = _d(mdt), _d(rcv)
                n += 1
                days.add(mdt.date())
                if rcv <= deadline:
                    on_time.add(mdt.date())
                else:
                    late += 1
            rep = min(len(days), expected)
            out.append((iso_week(ws), ws.isoformat(), fac, region, district, expected, rep, min(len(on_time), expected),
                        rep / expected if expected else 0.0, min(len(on_time), expected) / expected if expected else 0.0,
                        n, late, now))
    return out


def _hospital_activity(conn, facilities, m0: date, m1: date, now: str, k: int) -> list[tuple]:
    """Inpatients per facility and month: admissions, discharges, deaths, bed-days (days occupied
    within the month) and mean length of stay of the month's discharges. Counts of 1 to k-1 are
    hidden (NULL, ``suppressed`` 1), and so are the bed-days of fewer than k stays and the mean
    stay of fewer than k discharges: at a small facility they are one patient's stay."""
    agg: dict[tuple, dict] = {}
    months = []
    m = m0
    while m < m1:
        months.append(m)
        m = (m.replace(day=28) + timedelta(days=4)).replace(day=1)
    for fac in facilities:
        for mm in months:
            agg[(mm.strftime("%Y-%m"), fac)] = {"adm": 0, "dis": 0, "dead": 0, "bed": 0.0, "stays": 0, "los": []}
    limit = datetime.combine(m1, datetime.min.time())
    first = datetime.combine(m0, datetime.min.time())
    built_at = _d(now)  # a stay still open counts the days up to now, not to the month's end
    for fac, admit, disch, disp in conn.execute(text(
            "SELECT facility_code, admit_at, discharge_at, discharge_disposition FROM fact_encounter "
            "WHERE cancelled = 0 AND patient_class = 'I' AND admit_at < :e AND (discharge_at IS NULL OR discharge_at >= :s)"),
            {"s": _ts(first), "e": _ts(limit)}):
        admit, disch = _d(admit), _d(disch)
        if admit is None or fac not in facilities:
            continue
        for mm in months:
            ms = datetime.combine(mm, datetime.min.time())
            me = datetime.combine((mm.replace(day=28) + timedelta(days=4)).replace(day=1), datetime.min.time())
            a = agg[(mm.strftime("%Y-%m"), fac)]
            if ms <= admit < me:
                a["adm"] += 1
            if disch is not None and ms <= disch < me:
                a["dis"] += 1
                a["dead"] += disp == EXPIRED
                a["los"].append(max((disch - admit).total_seconds() / 86400, 0.0))
            lo, hi = max(admit, ms), min(disch or built_at, me)
            if hi > lo:
                a["bed"] += (hi - lo).total_seconds() / 86400
                a["stays"] += 1
    out = []
    for (month, fac), a in sorted(agg.items()):
        if not (a["adm"] or a["dis"] or a["bed"]):
            continue
        region, district = facilities[fac]
        counts = [None if 0 < n < k else n for n in (a["adm"], a["dis"], a["dead"])]
        bed = int(round(a["bed"])) if a["stays"] >= k else None
        los = round(sum(a["los"]) / len(a["los"]), 2) if len(a["los"]) >= k else None
        hidden = int(None in counts or (bed is None and a["stays"] > 0) or (los is None and len(a["los"]) > 0))
        out.append((month, fac, region, district, *counts, bed, los, hidden, now))
    return out


def _immunization(conn, cfg: IdsrConfig, facilities, m0: date, m1: date, now: str) -> list[tuple]:
    agg: dict[tuple, int] = {}
    for fac, code, at in conn.execute(text(
            "SELECT facility_code, vaccine_code, administered_at FROM fact_immunization "
            "WHERE administered_at >= :s AND administered_at < :e"), {"s": _ts(m0), "e": _ts(m1)}):
        antigen = cfg.antigens.get(code or "", "Autre / other")
        region, district = facilities.get(fac, ("?", "?"))
        key = (_d(at).strftime("%Y-%m"), region, district, antigen)
        agg[key] = agg.get(key, 0) + 1
    k = cfg.small_cell_k
    return [(*key, None if 0 < n < k else n, int(0 < n < k), now) for key, n in sorted(agg.items())]


# -- immediately notifiable diseases -------------------------------------------------------------

def immediate_cases(engine: Engine, cfg: IdsrConfig, now: datetime, days: int = 8) -> list[dict]:
    """Immediately notifiable diseases seen in the last ``days`` days and not yet notified: one entry
    per disease x facility x week, with facility and district but no patient identity."""
    diseases = tuple(d for d in cfg.diseases if d.notification == "immediate")
    if not diseases:
        return []
    cases = collect_cases(engine, cfg, now - timedelta(days=days), now + timedelta(minutes=1), diseases)
    counts: dict[tuple, int] = {}
    for (dis, fac, _pk, wk) in cases:
        counts[(dis, fac, wk)] = counts.get((dis, fac, wk), 0) + 1
    if not counts:
        return []
    facilities = _facilities(engine)
    with engine.connect() as conn:
        done = {tuple(r) for r in conn.execute(text(
            "SELECT disease, facility_code, iso_week FROM idsr_notification WHERE notified_at >= :s"),
            {"s": _ts(now - timedelta(days=days + 14))})}
    return [{"disease": dis, "facility_code": fac, "iso_week": wk, "district": facilities.get(fac, ("?", "?"))[1],
             "cases": n} for (dis, fac, wk), n in sorted(counts.items()) if (dis, fac, wk) not in done]


def record_notifications(engine: Engine, notified: list[dict], now: str) -> None:
    with engine.begin() as conn:
        Writer(conn).insert("idsr_notification", ("disease", "facility_code", "iso_week", "district", "cases",
                                                  "notified_at"),
                            [(n["disease"], n["facility_code"], n["iso_week"], n["district"], n["cases"], now)
                             for n in notified], on_conflict_nothing=("disease", "facility_code", "iso_week"))
