"""MoH reporting (issue 7): IDSR counts per disease, district, week, age band and sex from messages
with known content; lab, hospital and immunisation activity; completeness and timeliness; small-cell
suppression (a hidden cell can never be recomputed from a total); the audited PHI read; idempotent
rebuilds; immediately notifiable diseases; PostgreSQL roles proved by connecting as each.
"""
from __future__ import annotations

import itertools
import dataclasses
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import text


from transforms.config import Settings
from transforms.ingest import Ingestor
from transforms.reporting import (IdsrConfig, age_group, build, immediate_cases, iso_week, record_notifications,
                                  suppress, week_start)

from test_ingest import checksum, rows, write

CFG = IdsrConfig.load(Settings.load().config_dir / "idsr.yaml")
W45 = date(2026, 11, 2)  # Monday of ISO week 2026-W45
_n = itertools.count(1)
REPORT_TABLES = ["rpt_idsr_case", "rpt_idsr_weekly", "moh_idsr_weekly", "moh_lab_activity", "moh_hospital_activity",
                 "moh_immunization", "moh_completeness"]


def hl7(day: date, hour: int, *segments: str, facility="CHU-SO", mtype="ADT^A01") -> str:
    ts = f"{day:%Y%m%d}{hour:02d}0000"
    return (f"MSH|^~\\&|SIH|{facility}|HL7ICS|MOH|{ts}||{mtype}|M{next(_n)}|P|2.5\n" + "\n".join(segments) + "\n")


def pid(pid_: str, birth: str, sex: str, facility="CHU-SO") -> str:
    return f"PID|1||{pid_}^^^{facility}^MR||Ɖogbé^Ama||{birth}|{sex}"


def admission(day, pid_, birth, sex, dx, facility="CHU-SO", visit=None, cls="I"):
    visit = visit or f"V{next(_n)}"
    ts = f"{day:%Y%m%d}080000"
    return hl7(day, 8, f"EVN|A01|{ts}", pid(pid_, birth, sex, facility),
               f"PV1|1|{cls}|MED||||||||||||||||{visit}|||||||||||||||||||||||||{ts}",
               f"DG1|1||{dx}^diag^I10||", facility=facility), visit


def discharge(day, pid_, birth, sex, dx, visit, admit_day, disposition="01", facility="CHU-SO"):
    a, d = f"{admit_day:%Y%m%d}080000", f"{day:%Y%m%d}170000"
    return hl7(day, 17, f"EVN|A03|{d}", pid(pid_, birth, sex, facility),
               f"PV1|1|I|MED||||||||||||||||{visit}" + "|" * 17 + f"{disposition}" + "|" * 8 + f"{a}|{d}",
               f"DG1|1||{dx}^diag^I10||", facility=facility, mtype="ADT^A03")


def result(day, pid_, birth, sex, loinc, value, facility="INH-LOME", status="F", placer=None):
    ts = f"{day:%Y%m%d}100000"
    return hl7(day, 11, pid(pid_, birth, sex, facility), f"OBR|1|{placer or f'O{next(_n)}'}||{loinc}^test^LN|||{ts}",
               f"OBX|1|CWE|{loinc}^test^LN||{value}^res^SCT||||||{status}|||{ts}", facility=facility, mtype="ORU^R01")


def vaccination(day, pid_, birth, sex, cvx, facility="USP-NANERGOU"):
    ts = f"{day:%Y%m%d}090000"
    return hl7(day, 9, pid(pid_, birth, sex, facility), "ORC|RE||V1",
               f"RXA|0|1|{ts}|{ts}|{cvx}^vaccine^CVX|0.5|mL", facility=facility, mtype="VXU^V04")


@pytest.fixture
def ingestor(warehouse_url, hl7ics_home):
    ing = Ingestor(Settings.load(warehouse_url=warehouse_url), run_id="run-rpt")
    ing.sync_facilities()
    return ing


def load(ingestor, tmp_path, messages: list[str], facility: str):
    f = write(tmp_path / f"{facility}-{next(_n)}.hl7", "".join(messages))
    r = ingestor.ingest_file(f, facility)
    assert r.counts.quarantined == 0, rows(ingestor.engine, "SELECT reason, detail FROM quarantine")
    return r


def test_age_bands_and_weeks():
    at = datetime(2026, 11, 4, 10)
    assert [age_group(b, at) for b in ("2026-06-01", "2025-11-05", "2025-11-04", "2022-01-01", "2012-01-01",
                                       "1990-01-01", None, "2027-01-01", "1985-11", "2024", "bad")] == \
        ["0-11m", "0-11m", "1-4y", "1-4y", "5-14y", "15y+", "unknown", "unknown", "15y+", "1-4y", "unknown"]
    assert iso_week(date(2026, 11, 8)) == "2026-W45" and week_start("2026W45") == W45 == week_start("2026-W45")
    assert iso_week(date(2027, 1, 1)) == "2026-W53"


def test_idsr_counts_by_disease_district_week_band_and_sex(ingestor, tmp_path):
    d = W45 + timedelta(days=1)
    adm = []
    # Malaria, Golfe (CHU-SO), W45: 3 suspected admissions (child F, child F, adult M); one dies.
    m1, v1 = admission(d, "P1", "20230101", "F", "B50.9")
    m2, v2 = admission(d, "P2", "20220615", "F", "B54")
    m3, v3 = admission(d, "P3", "19800101", "M", "B54")
    adm += [m1, m2, m3, discharge(d + timedelta(days=2), "P3", "19800101", "M", "B54", v3, d, disposition="20")]
    # Cholera (immediate), Golfe, W45: one infant.
    m4, _ = admission(d, "P4", "20260501", "M", "A00.9")
    adm.append(m4)
    # Malaria the following week (W46): one more, 5-14 years.
    m5, _ = admission(d + timedelta(days=7), "P5", "20150101", "F", "B50.0")
    adm.append(m5)
    load(ingestor, tmp_path, adm, "CHU-SO")
    # Lab (INH-LOME, also Golfe): P1 positive RDT (confirmed), P6 negative smear (suspected by test only).
    load(ingestor, tmp_path, [result(d, "P1", "20230101", "F", "70569-9", "10828004"),
                              result(d, "P6", "20000101", "M", "32700-7", "260385009")], "INH-LOME")
    build(ingestor.engine, CFG, W45, W45 + timedelta(days=7))
    eng = ingestor.engine
    cells = {tuple(r[:4]): r[4:] for r in rows(eng, "SELECT disease, iso_week, age_group, sex, SUM(suspected), "
                                                    "SUM(confirmed), SUM(deaths) FROM rpt_idsr_weekly WHERE district = 'Golfe' "
                                                    "GROUP BY disease, iso_week, age_group, sex")}
    assert cells[("MALARIA", "2026-W45", "1-4y", "F")] == (3, 1, 0)  # P1 at CHU-SO, P1 at INH-LOME (confirmed), P2
    assert cells[("MALARIA", "2026-W45", "15y+", "M")] == (2, 0, 1)
    assert cells[("MALARIA", "2026-W46", "5-14y", "F")] == (1, 0, 0)
    assert cells[("CHOLERA", "2026-W45", "0-11m", "M")] == (1, 0, 0)
    assert len(cells) == 4
    # The birth dates came from phi_patient through an audited read.
    audit = rows(eng, "SELECT outcome, detail FROM audit_event WHERE event_type = 'phi_read'")
    assert audit and audit[0][0] == "success" and "phi_patient" in audit[0][1] and "Ɖogbé" not in audit[0][1]
    # Published level (district): every cell here is small -> hidden; malaria's total (5) is published,
    # cholera's (1) is not.
    pub = rows(eng, "SELECT disease, age_group, sex, suspected, suppressed FROM moh_idsr_weekly "
                    "WHERE iso_week = '2026-W45' AND district = 'Golfe' ORDER BY 1, 2, 3")
    assert all(r[3] is None and r[4] == 1 for r in pub if r[1] != "ALL")
    # (the malaria row is still flagged: its confirmed and death totals, 1 each, are hidden)
    assert [r for r in pub if r[1] == "ALL"] == [("CHOLERA", "ALL", "ALL", None, 1), ("MALARIA", "ALL", "ALL", 5, 1)]
    assert not rows(eng, "SELECT * FROM moh_idsr_weekly WHERE iso_week = '2026-W45' AND suspected IS NOT NULL "
                         "AND suspected BETWEEN 1 AND 4")


def test_published_counts_above_k_and_complementary_suppression(ingestor, tmp_path):
    d = W45 + timedelta(days=2)
    msgs = []
    for i in range(12):  # 12 adult women with malaria: publishable
        msgs.append(admission(d, f"F{i}", "19900101", "F", "B54")[0])
    for i in range(6):   # 6 adult men
        msgs.append(admission(d, f"M{i}", "19900101", "M", "B54")[0])
    msgs.append(admission(d, "C1", "20240101", "F", "B54")[0])  # 1 child: must be hidden ...
    load(ingestor, tmp_path, msgs, "CHU-SO")
    build(ingestor.engine, CFG, W45, W45)
    pub = {(r[0], r[1]): (r[2], r[3]) for r in rows(ingestor.engine,
           "SELECT age_group, sex, suspected, suppressed FROM moh_idsr_weekly WHERE disease = 'MALARIA'")}
    assert pub[("ALL", "ALL")] == (19, 0)            # the total is published
    assert pub[("1-4y", "F")] == (None, 1)            # primary suppression
    assert pub[("15y+", "M")] == (None, 1)            # complementary: else 19 - 12 - 6 = 1 reveals the child
    assert pub[("15y+", "F")] == (12, 0)


def test_a_published_confirmed_count_does_not_pin_a_hidden_suspected_one(ingestor, tmp_path):
    """Confirmed cases are suspected cases too. Suppressed measure by measure, the men's cell was
    hidden for suspected cases (complementary) but its 6 confirmed were published: with the total
    of 27 and the 20 women, the analyst knew the child's hidden cell was exactly 1."""
    d = W45 + timedelta(days=1)
    msgs = [admission(d, "CHILD", "20240101", "F", "B54")[0]]
    msgs += [admission(d, f"W{i}", "19900101", "F", "B54")[0] for i in range(20)]
    load(ingestor, tmp_path, msgs, "CHU-SO")
    load(ingestor, tmp_path, [result(d, f"M{i}", "19900101", "M", "70569-9", "10828004", facility="CHU-SO")
                              for i in range(6)], "CHU-SO")
    build(ingestor.engine, CFG, W45, W45)
    pub = rows(ingestor.engine, "SELECT age_group, sex, suspected, confirmed, deaths FROM moh_idsr_weekly "
                                "WHERE disease = 'MALARIA' AND age_group <> 'ALL'")
    total = rows(ingestor.engine, "SELECT suspected FROM moh_idsr_weekly WHERE disease = 'MALARIA' "
                                  "AND age_group = 'ALL'")[0][0]
    hidden = [r for r in pub if None in r[2:]]
    # Hidden for one measure, hidden for all: only a zero shows (a public fact, no floor).
    assert all(x in (None, 0) for r in hidden for x in r[2:]) and ("15y+", "M", None, None, 0) in hidden
    # What the analyst can deduce: each hidden cell is at least 1 and at least its published
    # confirmed count (none now); the room left must allow more than one split.
    room = total - sum(r[2] for r in pub if r[2] is not None) - len(hidden)
    assert len(hidden) >= 2 and room > 0


def test_a_cell_hidden_for_suspected_cases_still_shows_its_zero_deaths(ingestor, tmp_path):
    """Hiding a cell for all three measures showed "<5 deaths" where there were none: a zero is
    a public fact, and "<5" means 1 to 4."""
    d = W45 + timedelta(days=1)
    msgs = [admission(d, "CHILD", "20240101", "F", "B54")[0]]
    msgs += [admission(d, f"W{i}", "19900101", "F", "B54")[0] for i in range(20)]
    load(ingestor, tmp_path, msgs, "CHU-SO")
    build(ingestor.engine, CFG, W45, W45)
    pub = rows(ingestor.engine, "SELECT suspected, confirmed, deaths FROM moh_idsr_weekly "
                                "WHERE disease = 'MALARIA' AND age_group = '1-4y'")
    assert pub == [(None, 0, 0)]


def test_suppress_never_leaves_a_lone_hidden_cell():
    groups = {("g1",): {"a": 1, "b": 9, "c": 20}, ("g2",): {"a": 3, "b": 0, "c": 7}, ("g3",): {"a": 2, "b": 1},
              ("g4",): {"a": 0, "b": 15}, ("g5",): {"a": 4, "b": 4, "c": 10}}
    hidden = suppress(groups, 5)
    assert hidden == {(("g1",), "a"), (("g1",), "b"), (("g2",), "a"), (("g2",), "c"), (("g3",), "a"),
                      (("g3",), "b"), (("g5",), "a"), (("g5",), "b")}
    for g, cells in groups.items():
        total = sum(cells.values())
        h = [c for c in cells if (g, c) in hidden]
        # recomputing a hidden cell needs the other hidden ones: never exactly one hidden in a published group
        assert len(h) != 1 or 0 < total < 5


def test_lab_hospital_immunization_and_completeness(ingestor, tmp_path):
    d = W45 + timedelta(days=1)
    results = [result(d, f"L{i}", "19900101", "F", "70569-9", "10828004" if i < 6 else "260385009")
               for i in range(10)]
    load(ingestor, tmp_path, results, "INH-LOME")
    # Three of them sent again: copies are no report (completeness counts each message once).
    assert load(ingestor, tmp_path, results[:3], "INH-LOME").counts.duplicates == 3
    m, v = admission(d, "H1", "19700101", "M", "I10")
    load(ingestor, tmp_path, [m, discharge(d + timedelta(days=3), "H1", "19700101", "M", "I10", v, d)], "CHU-SO")
    load(ingestor, tmp_path, [vaccination(d, f"B{i}", "20260901", "F", "19") for i in range(7)]
         + [vaccination(d, "R1", "20251001", "M", "04")], "USP-NANERGOU")
    build(ingestor.engine, CFG, W45, W45)
    eng = ingestor.engine
    assert rows(eng, "SELECT district, test, tests_done, positives, positivity_rate FROM moh_lab_activity") == [
        ("Golfe", "MALARIA_RDT", 10, 6, 0.6)]
    hosp = rows(eng, "SELECT month, facility_code, admissions, discharges, deaths, bed_days, mean_length_of_stay "
                     "FROM moh_hospital_activity")
    # One stay: its counts, bed-days and length are one patient's, hidden (a zero is a public fact).
    assert [tuple(h) for h in hosp] == [("2026-11", "CHU-SO", None, None, 0, None, None)]
    assert rows(eng, "SELECT month, district, antigen, doses, suppressed FROM moh_immunization ORDER BY antigen") == [
        ("2026-11", "Tône", "BCG", 7, 0), ("2026-11", "Tône", "RR (rougeole-rubéole)", None, 1)]
    comp = {r[0]: r[1:] for r in rows(eng, "SELECT facility_code, expected_days, reporting_days, messages, late_messages "
                                           "FROM moh_completeness WHERE iso_week = '2026-W45'")}
    assert comp["INH-LOME"] == (7, 1, 10, 10)  # ingested today: long after the week's deadline -> late
    assert comp["CHR-SOKODE"] == (7, 0, 0, 0)


def test_an_open_stay_counts_bed_days_up_to_the_build_not_to_the_month_end(ingestor, tmp_path):
    """A patient admitted and not yet discharged: the month's bed-days are the days up to when the
    report is built, not days that have not happened yet."""
    d = W45 + timedelta(days=1)  # 2026-11-03
    m, _v = admission(d, "H2", "19700101", "M", "I10")
    load(ingestor, tmp_path, [m], "CHU-SO")
    build(ingestor.engine, CFG, W45, W45, now=f"{(d + timedelta(days=2)).isoformat()} 08:00:00")
    # k = 1 here: the arithmetic, not the hiding, is under test.
    one = dataclasses.replace(CFG, small_cell_k=1)
    build(ingestor.engine, one, W45, W45, now=f"{(d + timedelta(days=2)).isoformat()} 08:00:00")
    [(admissions, bed_days)] = rows(ingestor.engine, "SELECT admissions, bed_days FROM moh_hospital_activity")
    assert admissions == 1 and bed_days == 2


def test_hospital_activity_hides_small_counts_and_one_patients_stay(ingestor, tmp_path):
    """moh_hospital_activity published exact counts per facility: a single death and that
    patient's length of stay, which every other moh_* table hides."""
    d = W45 + timedelta(days=1)
    msgs = []
    for i in range(6):
        m, v = admission(d, f"H{i}", "19700101", "M", "I10")
        msgs += [m, discharge(d + timedelta(days=2), f"H{i}", "19700101", "M", "I10", v, d,
                              disposition="20" if i == 0 else "01")]
    load(ingestor, tmp_path, msgs, "CHU-SO")
    build(ingestor.engine, CFG, W45, W45)
    assert rows(ingestor.engine, "SELECT admissions, discharges, deaths, bed_days, suppressed "
                                 "FROM moh_hospital_activity") == [(6, 6, None, 14, 1)]  # 6 x 2.4 days
    assert rows(ingestor.engine, "SELECT mean_length_of_stay IS NOT NULL FROM moh_hospital_activity") == [(True,)]


def test_a_hidden_number_of_tests_with_no_positives_shows_zero_positives(ingestor, tmp_path):
    """Three negative tests: the number of tests is hidden (below k), but "no positives" is 0, not
    a hidden 1 to k-1 that a reader would take as some positives."""
    d = W45 + timedelta(days=1)
    load(ingestor, tmp_path, [result(d, f"N{i}", "19900101", "F", "70569-9", "260385009") for i in range(3)],
         "INH-LOME")
    build(ingestor.engine, CFG, W45, W45)
    assert rows(ingestor.engine, "SELECT tests_done, positives, positivity_rate, suppressed FROM moh_lab_activity") == [
        (None, 0, None, 1)]


def test_a_test_reported_again_counts_once_with_its_last_value(ingestor, tmp_path):
    """Six smears sent as preliminary, then as final: six tests, not twelve. A cholera culture
    reported positive, then corrected to negative (OBX-11 C): not a confirmed case."""
    d = W45 + timedelta(days=1)
    prelim = [result(d, f"S{i}", "19900101", "F", "70569-9", "10828004", status="P", placer=f"SM-{i}")
              for i in range(6)]
    final = [result(d, f"S{i}", "19900101", "F", "70569-9", "10828004", placer=f"SM-{i}") for i in range(6)]
    load(ingestor, tmp_path, prelim, "INH-LOME")
    load(ingestor, tmp_path, final, "INH-LOME")
    load(ingestor, tmp_path, [result(d, "K9", "19900101", "M", "625-4", "10828004", placer="CU-1")], "INH-LOME")
    load(ingestor, tmp_path, [result(d, "K9", "19900101", "M", "625-4", "260385009", status="C", placer="CU-1")],
         "INH-LOME")
    build(ingestor.engine, CFG, W45, W45)
    assert rows(ingestor.engine, "SELECT test, tests_done, positives FROM moh_lab_activity WHERE test = 'MALARIA_RDT'"
                ) == [("MALARIA_RDT", 6, 6)]
    assert rows(ingestor.engine, "SELECT suspected, confirmed FROM rpt_idsr_case WHERE disease = 'CHOLERA'") == [(1, 0)]


def test_a_death_in_a_later_week_is_not_a_second_case(ingestor, tmp_path):
    """Admitted with cholera on the Saturday of W45, died on the Monday of W46: one suspected case
    (W45) and one death (W46), not two suspected cases."""
    sat, mon = W45 + timedelta(days=5), W45 + timedelta(days=7)
    m, v = admission(sat, "D1", "19800101", "F", "A00.9")
    load(ingestor, tmp_path, [m, discharge(mon, "D1", "19800101", "F", "A00.9", v, sat, disposition="20")], "CHU-SO")
    build(ingestor.engine, CFG, W45, W45 + timedelta(days=7))
    assert rows(ingestor.engine, "SELECT iso_week, SUM(suspected), SUM(deaths) FROM rpt_idsr_weekly "
                                 "WHERE disease = 'CHOLERA' GROUP BY iso_week ORDER BY 1") == [
        ("2026-W45", 1, 0), ("2026-W46", 0, 1)]


@pytest.mark.parametrize("admitted", ["P-OLD", "P-NEW"], ids=["merge-after-admission", "merge-before-any-message"])
def test_a_message_under_a_retired_patient_id_joins_the_survivors_case(admitted, ingestor, tmp_path):
    """P-OLD is merged into P-NEW (A40); a result sent later that week under P-OLD is the same
    person: one case, not two. Also when the merge came before anything under P-OLD (admitted
    under P-NEW): no dim_patient row to mark then, and the merge record itself says who it is."""
    d = W45 + timedelta(days=1)
    m, _v = admission(d, admitted, "19900101", "F", "B54")
    merge = hl7(d, 12, f"EVN|A40|{d:%Y%m%d}120000", pid("P-NEW", "19900101", "F"), "MRG|P-OLD^^^CHU-SO^MR",
                mtype="ADT^A40^ADT_A39")
    load(ingestor, tmp_path, [m, merge], "CHU-SO")
    load(ingestor, tmp_path, [result(d + timedelta(days=1), "P-OLD", "19900101", "F", "70569-9", "10828004",
                                     facility="CHU-SO")], "CHU-SO")
    build(ingestor.engine, CFG, W45, W45)
    assert rows(ingestor.engine, "SELECT COUNT(*), SUM(suspected), SUM(confirmed) FROM rpt_idsr_case "
                                 "WHERE disease = 'MALARIA'") == [(1, 1, 1)]


def test_a_cancelled_order_is_no_suspected_case(ingestor, tmp_path):
    """A cholera culture ordered then cancelled (ORC-1 / ORC-5 CA) still counted as a suspected
    case and raised an immediate notification."""
    from transforms.reporting import immediate_cases

    d = W45 + timedelta(days=1)
    ts = f"{d:%Y%m%d}090000"

    def orm(control, status):
        return hl7(d, 9, pid("K1", "19900101", "M"), "PV1|1|O", f"ORC|{control}|ORD-1||||{status}|||{ts}",
                   f"OBR|1|ORD-1||625-4^Culture^LN|||{ts}", mtype="ORM^O01")

    load(ingestor, tmp_path, [orm("NW", "")], "CHU-SO")
    build(ingestor.engine, CFG, W45, W45)
    assert rows(ingestor.engine, "SELECT disease, suspected FROM rpt_idsr_case") == [("CHOLERA", 1)]
    load(ingestor, tmp_path, [orm("CA", "CA")], "CHU-SO")
    build(ingestor.engine, CFG, W45, W45)
    assert rows(ingestor.engine, "SELECT order_status FROM fact_lab_order") == [("CA",)]
    assert rows(ingestor.engine, "SELECT disease FROM rpt_idsr_case") == []
    assert immediate_cases(ingestor.engine, CFG, datetime(2026, 11, 5)) == []


def test_where_a_test_counts_does_not_depend_on_the_weeks_rebuilt_together(ingestor, tmp_path):
    """A preliminary result on Sunday (W45) and the final one on Monday (W46) for one order: the
    DAG's W45-W46 build counted it in W46, and rebuilding W45 alone put it back in W45 too."""
    sun, mon = W45 + timedelta(days=6), W45 + timedelta(days=7)
    load(ingestor, tmp_path, [result(sun, "R1", "19900101", "F", "70569-9", "10828004", status="P",
                                     placer="ORD-9")], "INH-LOME")
    load(ingestor, tmp_path, [result(mon, "R1", "19900101", "F", "70569-9", "10828004", status="F",
                                     placer="ORD-9")], "INH-LOME")

    def confirmed():
        return rows(ingestor.engine, "SELECT iso_week, SUM(confirmed) FROM rpt_idsr_case WHERE disease = 'MALARIA' "
                                     "GROUP BY iso_week ORDER BY 1")

    build(ingestor.engine, CFG, W45, mon)
    assert confirmed() == [("2026-W46", 1)]
    build(ingestor.engine, CFG, W45, W45)
    assert confirmed() == [("2026-W46", 1)]


def test_completeness_expects_only_configured_facilities(ingestor, tmp_path):
    """A facility removed from facilities.yaml stayed in dim_facility and scored 0 % every week
    for ever; one with reporting_days 0 scored 0 % too."""
    from transforms.config import Settings
    from transforms.ingest import Ingestor

    def expected():
        return {r[0] for r in rows(ingestor.engine, "SELECT facility_code FROM moh_completeness "
                                                    "WHERE iso_week = '2026-W46'")}

    w46 = W45 + timedelta(days=7)
    build(ingestor.engine, CFG, w46, w46)
    assert "CHR-SOKODE" in expected()
    settings = Settings.load(warehouse_url=str(ingestor.engine.url))
    fewer = Ingestor(settings, run_id="r")
    del fewer.facilities["CHR-SOKODE"]
    with ingestor.engine.begin() as c:  # it left the configuration before that week
        c.execute(text("UPDATE dim_facility SET retired_at = NULL"))
    fewer.sync_facilities()
    with ingestor.engine.begin() as c:
        c.execute(text("UPDATE dim_facility SET retired_at = '2026-11-01 00:00:00' WHERE retired_at IS NOT NULL"))
    quiet = dataclasses.replace(CFG, reporting_days={**CFG.reporting_days, "USP-NANERGOU": 0},
                                reporting_from={"HD-TSEVIE": date(2026, 11, 16), "CHU-SO": date(2026, 11, 15)})
    build(ingestor.engine, quiet, w46, w46)
    got = expected()
    assert "CHR-SOKODE" not in got and "USP-NANERGOU" not in got and "CHU-SO" in got
    assert "HD-TSEVIE" not in got  # live from the week after
    ingestor.sync_facilities()  # configured again
    assert rows(ingestor.engine, "SELECT retired_at FROM dim_facility WHERE facility_code = 'CHR-SOKODE'") == [
        (None,)]


def test_rebuild_is_idempotent(ingestor, tmp_path):
    d = W45 + timedelta(days=1)
    load(ingestor, tmp_path, [admission(d, f"P{i}", "19900101", "F", "B54")[0] for i in range(7)], "CHU-SO")
    facts = checksum(ingestor.engine)
    build(ingestor.engine, CFG, W45, W45, now="2026-11-10 00:00:00")
    assert checksum(ingestor.engine) == facts  # a build reads the facts, never changes them
    before = {t: rows(ingestor.engine, f"SELECT * FROM {t}") for t in REPORT_TABLES}
    build(ingestor.engine, CFG, W45, W45, now="2026-11-10 00:00:00")
    after = {t: rows(ingestor.engine, f"SELECT * FROM {t}") for t in REPORT_TABLES}
    assert before["moh_idsr_weekly"] and before["rpt_idsr_case"]
    assert {t: sorted(map(repr, v)) for t, v in before.items()} == {t: sorted(map(repr, v)) for t, v in after.items()}


def test_immediately_notifiable_cases_notify_once(ingestor, tmp_path):
    now = datetime.utcnow().replace(microsecond=0)
    day = now.date()
    load(ingestor, tmp_path, [admission(day, "K1", "19900101", "F", "A00.9")[0],
                              admission(day, "K2", "19900101", "M", "A00.1")[0],
                              admission(day, "K3", "19900101", "M", "B54")[0]], "CHU-SO")
    found = immediate_cases(ingestor.engine, CFG, now + timedelta(hours=23))
    assert found == [{"disease": "CHOLERA", "facility_code": "CHU-SO", "iso_week": iso_week(day), "district": "Golfe",
                      "cases": 2}]
    record_notifications(ingestor.engine, found, now.strftime("%Y-%m-%d %H:%M:%S"))
    assert immediate_cases(ingestor.engine, CFG, now + timedelta(hours=23)) == []


def test_idsr_config_errors(tmp_path):
    from transforms.config import ConfigError

    p = tmp_path / "idsr.yaml"
    p.write_text("idsr:\n  diseases:\n    - {code: X, notification: sometimes, suspected_icd10: [A00]}\n")
    with pytest.raises(ConfigError, match="notification must be"):
        IdsrConfig.load(p)
    p.write_text("idsr:\n  diseases:\n    - {code: X, notification: weekly}\n")
    with pytest.raises(ConfigError, match="needs suspected_icd10"):
        IdsrConfig.load(p)
    with pytest.raises(ConfigError, match="2026W45"):
        week_start("2026-45")
    p.write_text("idsr:\n  reporting_from: {CHU-SO: soon}\n  diseases:\n"
                 "    - {code: X, notification: weekly, suspected_icd10: [A00]}\n")
    with pytest.raises(ConfigError, match="reporting_from.CHU-SO must be a date"):
        IdsrConfig.load(p)
    p.write_text("idsr:\n  reporting_from: {CHU-SO: 2026-11-16}\n  diseases:\n"
                 "    - {code: X, notification: weekly, suspected_icd10: [A00]}\n")
    assert IdsrConfig.load(p).reporting_from == {"CHU-SO": date(2026, 11, 16)}


def test_roles_prove_what_each_can_read(pg_url, hl7ics_home):
    import uuid

    import psycopg

    from transforms.privacy import create_roles
    from transforms.warehouse import get_engine

    eng = get_engine(pg_url)
    create_roles(eng)
    create_roles(eng)  # idempotent
    db = pg_url.rsplit("/", 1)[1]
    users = {}
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        for role in ("moh_analyst", "data_engineer"):
            user = f"t_{role}_{uuid.uuid4().hex[:6]}"
            admin.execute(f'CREATE ROLE "{user}" LOGIN IN ROLE {role}')
            users[role] = user
    try:
        def can_read(user, table) -> bool:
            with psycopg.connect(f"host=127.0.0.1 user={user} dbname={db}") as c:
                try:
                    c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                    return True
                except psycopg.errors.InsufficientPrivilege:
                    return False
        for table in ("moh_idsr_weekly", "moh_completeness", "dim_facility"):
            assert can_read(users["moh_analyst"], table) and can_read(users["data_engineer"], table)
        for table in ("phi_patient", "rpt_idsr_case", "message_store", "dim_patient", "fact_lab_result"):
            assert not can_read(users["moh_analyst"], table), table
            assert can_read(users["data_engineer"], table), table
        # A migration that remakes a table (019 remade moh_hospital_activity) keeps its grants.
        from sqlalchemy import text as sql_text

        from transforms.warehouse import upgrade

        with eng.begin() as c:
            c.execute(sql_text("DELETE FROM schema_migrations WHERE version = 19"))
        assert upgrade(eng) == [19]
        assert can_read(users["moh_analyst"], "moh_hospital_activity")
        assert not can_read(users["moh_analyst"], "dhis2_sent_value") and can_read(users["data_engineer"],
                                                                                   "dhis2_sent_value")
        # The roles belong to the whole server: a database where `db roles` never ran gets no grants.
        other = f"hl7ics_test_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{other}"')
        try:
            oeng = get_engine(pg_url.rsplit("/", 1)[0] + "/" + other)
            with oeng.connect() as c:
                assert c.execute(sql_text("SELECT has_table_privilege('data_engineer', 'phi_patient', 'SELECT')")
                                 ).scalar() is False
            oeng.dispose()
        finally:
            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
    finally:
        from transforms.warehouse import dispose_all

        dispose_all()
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
            for user in users.values():
                admin.execute(f'DROP ROLE IF EXISTS "{user}"')
