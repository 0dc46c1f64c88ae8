"""Data quality (issue 5): every expectation on a small frame (one passing and one failing row),
suite-file errors, and the load path: row-level quarantine with the expectation as reason,
warnings loaded and counted, ``dq_result``, the failure-rate threshold, the unknown-facility alert,
replay after a suite fix, and idempotency — on SQLite and the real PostgreSQL.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from transforms import faults, generator
from transforms.config import Settings
from transforms.ingest import Ingestor
from transforms.quality import (CONTEXT_COLUMNS, TABLES, QualityConfigError, QualityOptions, Validator, load_suites)

from test_ingest import checksum, rows, scalar, write

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "expectations"
NOW = "2026-11-20 12:00:00"
MSG_AT = "2026-11-10 09:00:00"

# A valid row per table; context columns are the same for all.
BASE = {
    "message_store": dict(facility_code="CHU-SO", sending_facility="CHU-SO", message_type="ADT", trigger_event="A01",
                          version="2.5", visit_number="V1", patient_class="I", has_pid=True),
    "phi_patient": dict(patient_key="k", facility_code="CHU-SO", patient_id="P1", id_authority="CHU-SO",
                        family_name="Ɖogbé", given_name="Afi", birth_date="1990-01-01", sex="F", address=None,
                        district="Golfe", phone=None, last_message_id=1, updated_at=NOW),
    "encounter_event": dict(message_id=1, facility_code="CHU-SO", visit_number="V1", trigger_event="A03",
                            event_at=MSG_AT, patient_key="k", patient_class="I", location="MED",
                            admit_at="2026-11-08 10:00:00", discharge_at="2026-11-10 08:00:00",
                            discharge_disposition="01", diagnosis_codes="B50.9"),
    "fact_lab_order": dict(facility_code="INH-LOME", placer_order_number="O1", test_code="32700-7", patient_key="k",
                           visit_number="V1", filler_order_number="F1", test_code_system="LN", test_name="Goutte épaisse",
                           ordered_at="2026-11-10 08:00:00", order_status="NW", message_id=1, updated_at=NOW),
    "fact_lab_result": dict(message_id=1, obx_seq=1, facility_code="INH-LOME", patient_key="k", visit_number="V1",
                            placer_order_number="O1", test_code="718-7", test_code_system="LN", test_name="Hb",
                            value_type="NM", value="12.5", value_numeric=12.5, units="g/dL", reference_range="12-16",
                            abnormal_flag="N", result_status="F", observed_at="2026-11-10 08:30:00"),
    "fact_medication": dict(facility_code="PHARM-ATAKPAME", order_number="R1", drug_code="ACT-AL", patient_key="k",
                            drug_name="Artéméther-luméfantrine", quantity=24.0, units="cp", ordered_at=MSG_AT,
                            dispensed_at=None, message_id=1, updated_at=NOW),
    "fact_immunization": dict(facility_code="USP-NANERGOU", patient_key="k", vaccine_code="05",
                              administered_at="2026-11-10 08:00:00", vaccine_code_system="CVX", vaccine_name="Measles",
                              dose_number="1", lot_number="L1", message_id=1),
    "fact_charge": dict(message_id=1, ft1_seq=1, facility_code="CHU-SO", patient_key="k", visit_number="V1",
                        transaction_id="T1", charge_code="CONS", description="Consultation", quantity=1.0,
                        unit_amount=5000.0, amount=5000.0, currency="XOF", charged_at=MSG_AT,
                        diagnosis_codes=None, transaction_type="CG"),
    "fact_coverage": dict(patient_key="k", facility_code="CHU-SO", insurer_code="INAM", member_id="123456789",
                          insurer_name="INAM", plan_code="AMO", valid_from="2026-01-01", valid_to="2026-12-31",
                          message_id=1, updated_at=NOW),
}
CONTEXT = dict(_message_type="ADT", _trigger_event="A01", _message_at=MSG_AT, _now=NOW)

# expectation -> (table, change that still passes, change that fails)
CASES = {
    "facility_known": ("message_store", {"sending_facility": "INH-LOME"}, {"sending_facility": "CLINIQUE-X"}),
    "visit_number_present": ("message_store", {"trigger_event": "A04", "visit_number": None},
                             {"visit_number": None}),
    "message_datetime_not_future": ("message_store", {"_message_at": NOW}, {"_message_at": "2027-01-01 00:00:00"}),
    "pid3_present": ("phi_patient", {"patient_id": "0001"}, {"patient_id": None}),
    "sex_present": ("phi_patient", {"sex": "U"}, {"sex": None}),
    "sex_in_hl7_table_0001": ("phi_patient", {"sex": "M"}, {"sex": "Q"}),
    "birth_date_not_future": ("phi_patient", {"birth_date": "2026-11-10"},
                              {"birth_date": "2030-01-01", "_message_at": "2030-06-01 00:00:00"}),
    "birth_date_before_event": ("phi_patient", {"birth_date": "2026-11-10"}, {"birth_date": "2026-11-15"}),
    "patient_class_in_hl7_table_0004": ("encounter_event", {"patient_class": "E"}, {"patient_class": "Z"}),
    "patient_class_present": ("encounter_event", {"patient_class": "O"}, {"patient_class": None}),
    "discharge_after_admit": ("encounter_event", {"discharge_at": "2026-11-08 10:00:00"},
                              {"discharge_at": "2026-11-07 10:00:00"}),
    "admit_not_future": ("encounter_event", {"admit_at": NOW, "discharge_at": None},
                         {"admit_at": "2027-01-01 00:00:00", "discharge_at": None}),
    "obr4_present": ("fact_lab_order", {"test_code": "MAL-TDR"}, {"test_code": ""}),
    "order_code_system_recognised": ("fact_lab_order", {"test_code_system": "99INH"}, {"test_code_system": "XYZ"}),
    "ordered_not_future": ("fact_lab_order", {"ordered_at": NOW}, {"ordered_at": "2027-01-01 00:00:00"}),
    "obx3_present": ("fact_lab_result", {"test_code": "L-1"}, {"test_code": None}),
    "obx5_present": ("fact_lab_result", {"result_status": "X", "value": None, "value_numeric": None},
                     {"value": None, "value_numeric": None}),
    "obx2_in_hl7_table_0125": ("fact_lab_result", {"value_type": "ST", "value_numeric": None},
                               {"value_type": "NUM", "value_numeric": None}),
    "obx11_in_hl7_table_0085": ("fact_lab_result", {"result_status": "C"}, {"result_status": "Z"}),
    "abnormal_flag_in_hl7_table_0078": ("fact_lab_result", {"abnormal_flag": "HH"}, {"abnormal_flag": "haut"}),
    "nm_value_numeric": ("fact_lab_result", {"value_type": "ST", "value": "positif", "value_numeric": None},
                         {"value": "12,5,0", "value_numeric": None}),
    "nm_units_present": ("fact_lab_result", {"value_type": "CWE", "value": "POS", "value_numeric": None,
                                             "units": None}, {"units": None}),
    "result_code_system_recognised": ("fact_lab_result", {"test_code_system": "L"}, {"test_code_system": "loinc?"}),
    "observation_not_after_report": ("fact_lab_result", {"observed_at": MSG_AT},
                                     {"observed_at": "2026-11-10 09:00:01"}),
    "drug_code_present": ("fact_medication", {"drug_code": "PARA500"}, {"drug_code": None}),
    "vaccine_code_present": ("fact_immunization", {"vaccine_code": "03"}, {"vaccine_code": None}),
    "vaccine_code_system_recognised": ("fact_immunization", {"vaccine_code_system": "L"},
                                       {"vaccine_code_system": "VACC"}),
    "administered_not_future": ("fact_immunization", {"administered_at": NOW},
                                {"administered_at": "2027-01-01 00:00:00"}),
    "charge_code_present": ("fact_charge", {"charge_code": "LAB"}, {"charge_code": "  "}),
    "charge_amount_present": ("fact_charge", {"amount": 0.0}, {"amount": None}),
    "currency_xof": ("fact_charge", {"currency": "XOF"}, {"currency": "EUR"}),
    "insurer_known": ("fact_coverage", {"insurer_code": "GTA-C2A"},
                      {"insurer_code": "MUTUELLE-X"}),
    "inam_member_id_format": ("fact_coverage", {"member_id": "000000001"}, {"member_id": "INAM-12345"}),
    "cnss_member_id_format": ("fact_coverage", {"insurer_code": "CNSS", "member_id": "1234567890"},
                              {"insurer_code": "CNSS", "member_id": "123456789"}),
    "member_id_present": ("fact_coverage", {"member_id": "987654321"}, {"member_id": None}),
    "coverage_valid_to_after_from": ("fact_coverage", {"valid_to": "2026-01-01"}, {"valid_to": "2025-12-31"}),
}


@pytest.fixture(scope="module")
def validator():
    return Validator(QualityOptions(True, SUITES), ["CHU-SO", "CHU-KARA", "INH-LOME", "PHARM-ATAKPAME",
                                                    "USP-NANERGOU"])


def _frame(table: str, changes: list[dict]):
    import pandas as pd

    base = {**BASE[table], **CONTEXT}
    return pd.DataFrame([{**base, **c} for c in changes], columns=list(TABLES[table]) + list(CONTEXT_COLUMNS))


def test_every_expectation_has_a_case():
    names = {c.name for s in load_suites(SUITES).values() for c in s.checks}
    assert names == set(CASES), "add a passing and a failing case for each new expectation"


def test_base_rows_pass_every_expectation(validator):
    for table in validator.suites:
        failed = {n: ix for n, ix in validator.failures(table, _frame(table, [{}])).items() if ix}
        assert failed == {}, table


@pytest.mark.parametrize("name", sorted(CASES))
def test_expectation_passes_and_fails(validator, name):
    table, good, bad = CASES[name]
    result = validator.failures(table, _frame(table, [good, bad]))
    assert result[name] == [1], f"{name}: the passing row must pass and the failing row fail"
    # the failing change breaks this expectation and no other one (cases stay independent)
    others = {n: ix for n, ix in result.items() if ix and n != name}
    assert others == {}


def _suite_dir(tmp_path: Path, edit) -> Path:
    d = tmp_path / "suites"
    shutil.copytree(SUITES, d)
    edit(d)
    return d


def _edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    fn(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "fact_charge.json").write_text("{not json"), "fact_charge.json: not readable JSON"),
    (lambda d: _edit_json(d / "fact_charge.json", lambda doc: doc["expectations"][0]["meta"].update(severity="fatal")),
     "meta.severity must be 'error' or 'warning'"),
    (lambda d: _edit_json(d / "fact_charge.json", lambda doc: doc["expectations"][0]["meta"].update(name="obx3_present")),
     "name already used"),
    (lambda d: _edit_json(d / "fact_charge.json", lambda doc: doc["expectations"][0]["kwargs"].update(column="montant")),
     "column 'montant' is not in fact_charge"),
    (lambda d: _edit_json(d / "fact_charge.json", lambda doc: doc["meta"].update(table="fact_claims")),
     "meta.table 'fact_claims'"),
])
def test_suite_file_errors_are_clear(tmp_path, edit, message):
    with pytest.raises(QualityConfigError) as exc:
        load_suites(_suite_dir(tmp_path, edit))
    assert message in str(exc.value)


def test_table_level_and_unknown_expectations_are_refused(tmp_path):
    def add(exp):
        return lambda d: _edit_json(d / "fact_charge.json", lambda doc: doc["expectations"].append(exp))

    table_level = {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1},
                   "meta": {"name": "some_rows", "severity": "error"}}
    with pytest.raises(QualityConfigError, match="not row-level"):
        Validator(QualityOptions(True, _suite_dir(tmp_path / "a", add(table_level))), []).engine
    unknown = {"type": "expect_column_values_to_be_pretty", "kwargs": {"column": "amount"},
               "meta": {"name": "pretty", "severity": "warning"}}
    with pytest.raises(QualityConfigError, match="fact_charge.json"):
        Validator(QualityOptions(True, _suite_dir(tmp_path / "b", add(unknown))), []).engine


def test_dq_check_command(capsys, tmp_path):
    from transforms.cli import main

    assert main(["dq", "check"]) == 0
    out = capsys.readouterr().out
    assert "fact_lab_result.json" in out and "suites OK" in out
    bad = _suite_dir(tmp_path, lambda d: (d / "phi_patient.json").write_text("[]"))
    assert main(["dq", "check", "--suites", str(bad)]) == 2
    assert "phi_patient.json" in capsys.readouterr().err


# -- the load path ------------------------------------------------------------------------------

@pytest.fixture
def ingestor(warehouse_url, hl7ics_home):
    s = Settings.load(warehouse_url=warehouse_url)
    ing = Ingestor(s, run_id="run-dq")
    ing.sync_facilities()
    return ing


def _faulty_file(path: Path, n: int, share: float, seed: int = 11) -> dict[int, str]:
    msgs = generator.generate_mix(n, seed=seed)
    bad, planted = faults.inject(msgs, share, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(m if m.endswith((b"\r", b"\n")) else m + b"\r" for m in bad))
    return planted


def test_failing_rows_are_quarantined_with_the_expectation_and_the_rest_loads(ingestor, tmp_path):
    planted = _faulty_file(tmp_path / "day.hl7", 400, 0.1)
    assert 25 <= len(planted) <= 60
    r = ingestor.ingest_file(tmp_path / "day.hl7", "CHU-SO")
    eng = ingestor.engine
    assert r.counts.messages == 400
    quarantined = rows(eng, "SELECT m.source_ref, q.stage, q.reason FROM message_store m "
                            "JOIN quarantine q ON q.message_id = m.id WHERE m.status = 'quarantined'")
    got = {int(ref.split(":")[1]): reason for ref, stage, reason in quarantined if stage == "dq"}
    assert got == planted  # exactly the damaged messages, each with the expectation it breaks
    assert {stage for _, stage, _ in quarantined} == {"dq"}
    assert scalar(eng, "SELECT COUNT(*) FROM message_store WHERE status = 'loaded'") == 400 - len(planted)
    errors = {e for (e,) in rows(eng, "SELECT error FROM message_store WHERE status = 'quarantined'")}
    assert all(e.startswith("dq: ") for e in errors)
    # no fact row of a quarantined message reached the warehouse
    assert scalar(eng, "SELECT COUNT(*) FROM fact_lab_result r JOIN message_store m ON m.id = r.message_id "
                       "WHERE m.status <> 'loaded'") == 0
    # dq_result: per expectation, failed rows = planted messages (one failing row each)
    failed = dict(rows(eng, "SELECT expectation, SUM(failed) FROM dq_result WHERE run_id = 'run-dq' "
                            "GROUP BY expectation"))
    for name in set(planted.values()):
        assert failed[name] == sum(1 for v in planted.values() if v == name), name
    evaluated = scalar(eng, "SELECT evaluated FROM dq_result WHERE expectation = 'facility_known'")
    assert evaluated == 400
    assert scalar(eng, "SELECT COUNT(*) FROM dq_result WHERE failed > evaluated") == 0


def test_rerun_changes_nothing_including_dq_result(ingestor, tmp_path):
    _faulty_file(tmp_path / "day.hl7", 120, 0.2)
    ingestor.ingest_file(tmp_path / "day.hl7", "CHU-SO")
    eng = ingestor.engine
    before = checksum(eng), rows(eng, "SELECT * FROM dq_result ORDER BY expectation")
    ingestor.ingest_file(tmp_path / "day.hl7", "CHU-SO")
    shutil.copyfile(tmp_path / "day.hl7", tmp_path / "renamed.hl7")
    ingestor.ingest_file(tmp_path / "renamed.hl7", "CHU-SO")
    assert (checksum(eng), rows(eng, "SELECT * FROM dq_result ORDER BY expectation")) == before


def test_warnings_load_flag_and_count(ingestor, tmp_path):
    msg = ("MSH|^~\\&|LAB|INH-LOME|HL7ICS|MOH|20261102080000||ORU^R01|W-1|P|2.5\n"
           "PID|1||P9^^^INH-LOME^MR||Ayéfoumi^Kossi||19800101|M\n"
           "OBR|1|O9||718-7^Hb^LN|||20261102070000\n"
           "OBX|1|NM|718-7^Hb^LN||13.1||12-16|weird|||F|||20261102070000\n")
    write(tmp_path / "w.hl7", msg)
    ingestor.ingest_file(tmp_path / "w.hl7", "INH-LOME")
    eng = ingestor.engine
    assert rows(eng, "SELECT status FROM message_store") == [("loaded",)]
    flags = scalar(eng, "SELECT flags FROM message_store")
    assert "dq:abnormal_flag_in_hl7_table_0078" in flags and "dq:nm_units_present" in flags
    assert scalar(eng, "SELECT COUNT(*) FROM fact_lab_result") == 1
    assert dict(rows(eng, "SELECT expectation, failed FROM dq_result WHERE failed > 0")) == {
        "abnormal_flag_in_hl7_table_0078": 1, "nm_units_present": 1}
    assert scalar(eng, "SELECT COUNT(*) FROM quarantine") == 0


def test_unknown_sending_facility_is_loaded_flagged_and_alerted_once(ingestor, tmp_path):
    def adt_from(control):
        return (f"MSH|^~\\&|SIH|CLINIQUE-NOUVELLE|HL7ICS|MOH|20261102080000||ADT^A04|{control}|P|2.5\n"
                "EVN|A04|20261102080000\n"
                "PID|1||P1^^^CLIN^MR||Ŋɔtsé^Yawo||19900101|M\n"
                "PV1|1|O|CONS||||||||||||||||V1\n")
    write(tmp_path / "a.hl7", adt_from("U-1"))
    write(tmp_path / "b.hl7", adt_from("U-2"))
    ingestor.ingest_file(tmp_path / "a.hl7", None)
    ingestor.ingest_file(tmp_path / "b.hl7", None)
    eng = ingestor.engine
    assert [s for (s,) in rows(eng, "SELECT status FROM message_store")] == ["loaded", "loaded"]
    assert all("dq:facility_known" in f for (f,) in rows(eng, "SELECT flags FROM message_store"))
    alerts = rows(eng, "SELECT facility_code, severity, message FROM ops_alert")
    assert len(alerts) == 1 and alerts[0][:2] == ("CLINIQUE-NOUVELLE", "warning")
    assert "Yawo" not in alerts[0][2] and "P1" not in alerts[0][2]


def test_replay_after_a_partial_fix_loads_what_passes_despite_the_threshold(ingestor, tmp_path, monkeypatch):
    """A batch held by the threshold, replayed with most of it still failing: the messages that
    pass their checks load, the others stay quarantined for their own reasons only."""
    from transforms.replay import replay

    monkeypatch.setenv("HL7ICS_DQ_MAX_FAILURE_RATE", "0.2")
    planted = _faulty_file(tmp_path / "bad.hl7", 100, 0.5, seed=3)
    Ingestor(ingestor.settings, run_id="run-held").ingest_file(tmp_path / "bad.hl7", "CHU-SO")
    eng = ingestor.engine
    assert scalar(eng, "SELECT COUNT(*) FROM message_store WHERE status = 'loaded'") == 0
    counts = replay(eng, Ingestor(ingestor.settings, run_id="replay").loader, reason="DQ_THRESHOLD")
    assert counts.loaded == 100 - len(planted) and counts.quarantined == len(planted)
    assert scalar(eng, "SELECT COUNT(*) FROM quarantine WHERE reason = 'DQ_THRESHOLD' AND resolved_at IS NULL") == 0
    assert scalar(eng, "SELECT COUNT(DISTINCT message_id) FROM quarantine WHERE resolved_at IS NULL") == len(planted)


def test_an_unknown_sender_alert_resolves_once_it_is_configured(ingestor):
    import dataclasses

    from transforms.alerting import Alert, Alerter
    from transforms.facts import PatientKeyer
    from transforms.load import Loader

    eng = ingestor.engine
    Alerter(eng).fire(Alert(key="unknown_facility:CLINIQUE-NOUVELLE", kind="unknown_facility", severity="warning",
                            facility_code="CLINIQUE-NOUVELLE", params={"facility_code": "CLINIQUE-NOUVELLE"}))
    facs = list(ingestor.facilities.values())
    loader = Loader(facs, PatientKeyer(b"k" * 32))
    loader.loaded_facilities = {"CHU-SO"}
    loader.flush_alerts(eng)
    assert Alerter(eng).open_keys("unknown_facility:") == ["unknown_facility:CLINIQUE-NOUVELLE"]
    loader = Loader(facs + [dataclasses.replace(facs[0], code="CLINIQUE-NOUVELLE")], PatientKeyer(b"k" * 32))
    loader.loaded_facilities = {"CHU-SO"}
    loader.flush_alerts(eng)
    assert Alerter(eng).open_keys("unknown_facility:") == []


def test_threshold_holds_the_batch_and_fails_the_task(ingestor, tmp_path, monkeypatch):
    from hl7ics_airflow import ingest_tasks

    from transforms.errors import DataQualityError

    monkeypatch.setenv("HL7ICS_DQ_MAX_FAILURE_RATE", "0.2")
    ing = Ingestor(ingestor.settings, run_id="run-threshold")
    planted = _faulty_file(tmp_path / "bad.hl7", 100, 0.5, seed=3)
    assert len(planted) > 30
    r = ing.ingest_file(tmp_path / "bad.hl7", "CHU-SO")
    eng = ing.engine
    assert r.counts.loaded == 0 and r.counts.quarantined == 100
    assert scalar(eng, "SELECT COUNT(DISTINCT message_id) FROM quarantine WHERE reason = 'DQ_THRESHOLD'") == 100
    assert scalar(eng, "SELECT COUNT(*) FROM phi_patient") == 0
    assert ing.loader.dq_breaches and ing.loader.dq_breaches[0]["failed"] == len(planted)
    with pytest.raises(DataQualityError, match="DQ_THRESHOLD") as exc:
        ingest_tasks.raise_on_breach(ing.loader.dq_breaches)
    assert isinstance(exc.value, ValueError)  # bad data: the retry policy fails it at once
    # below the threshold the same kind of batch loads its clean rows
    monkeypatch.setenv("HL7ICS_DQ_MAX_FAILURE_RATE", "0.9")
    ing2 = Ingestor(ingestor.settings, run_id="run-ok")
    _faulty_file(tmp_path / "ok.hl7", 100, 0.5, seed=4)
    assert ing2.ingest_file(tmp_path / "ok.hl7", "CHU-SO").counts.loaded > 30
    assert not ing2.loader.dq_breaches


def test_a_held_batch_alerts_until_its_messages_leave_quarantine(ingestor, tmp_path, monkeypatch):
    """The task that was failed by a hold succeeds on its next run (its own alert resolves), so
    the hold has an alert of its own: open while any message of the facility is held by the
    threshold, resolved by the replay that releases them."""
    from transforms.replay import replay

    def state():
        return rows(ingestor.engine, "SELECT alert_key, kind, severity, state FROM alert_state "
                                     "WHERE alert_key LIKE 'dq_threshold:%'")

    monkeypatch.setenv("HL7ICS_DQ_MAX_FAILURE_RATE", "0.2")
    _faulty_file(tmp_path / "bad.hl7", 100, 0.5, seed=3)
    Ingestor(ingestor.settings, run_id="run-held").ingest_file(tmp_path / "bad.hl7", "CHU-SO")
    assert state() == [("dq_threshold:CHU-SO", "dq_threshold", "error", "open")]
    params = rows(ingestor.engine, "SELECT params FROM alert_state")[0][0]
    assert '"failed": ' in params and '"validated": 100' in params
    monkeypatch.setenv("HL7ICS_DQ_MAX_FAILURE_RATE", "0.9")
    _faulty_file(tmp_path / "ok.hl7", 100, 0.5, seed=4)
    Ingestor(ingestor.settings, run_id="run-next").ingest_file(tmp_path / "ok.hl7", "CHU-SO")
    assert state()[0][3] == "open"  # the held messages are still held
    from transforms.facts import PatientKeyer
    from transforms.load import Loader

    replay(ingestor.engine, Loader(ingestor.facilities.values(), PatientKeyer.from_env(ingestor.settings.home),
                                   QualityOptions(True, max_failure_rate=0.9)), reason="DQ_THRESHOLD")
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM quarantine WHERE reason = 'DQ_THRESHOLD' "
                                   "AND resolved_at IS NULL") == 0
    assert state()[0][3] == "resolved"


def _sex_x_adt(n: int) -> str:
    """An ADT^A04 whose PID-8 is "X", which the shipped suite refuses (sex_in_hl7_table_0001)."""
    return (f"MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261102080000||ADT^A04|S-{n}|P|2.5\n"
            "EVN|A04|20261102080000\n"
            f"PID|1||P{n}^^^CHU-SO^MR||Ɛdɔ^Ama||19900101|X\n"
            f"PV1|1|O|CONS||||||||||||||||V{n}\n")


def test_replay_by_expectation_after_a_suite_fix(ingestor, tmp_path, monkeypatch):
    from transforms.facts import PatientKeyer
    from transforms.load import Loader
    from transforms.replay import replay

    msg = _sex_x_adt(1)
    write(tmp_path / "x.hl7", msg)
    ingestor.ingest_file(tmp_path / "x.hl7", "CHU-SO")
    eng = ingestor.engine
    assert rows(eng, "SELECT stage, reason FROM quarantine") == [("dq", "sex_in_hl7_table_0001")]
    # the MoH adopts "X" (non-binary, HL7 v2.9): the suite file is edited, no Python changes
    fixed = _suite_dir(tmp_path, lambda d: _edit_json(
        d / "phi_patient.json", lambda doc: [e["kwargs"]["value_set"].append("X") for e in doc["expectations"]
                                             if e["meta"]["name"] == "sex_in_hl7_table_0001"]))
    loader = Loader(ingestor.facilities.values(), PatientKeyer.from_env(ingestor.settings.home),
                    QualityOptions(True, fixed), run_id="replay-1")
    assert replay(eng, loader, reason="sex_in_hl7_table_0001").loaded == 1
    assert scalar(eng, "SELECT status FROM message_store") == "loaded"
    assert scalar(eng, "SELECT COUNT(*) FROM quarantine WHERE resolved_at IS NULL") == 0
    assert rows(eng, "SELECT family_name, sex FROM phi_patient") == [("Ɛdɔ", "X")]
    before = checksum(eng)
    assert replay(eng, loader, reason="sex_in_hl7_table_0001").messages == 0
    assert checksum(eng) == before


def _sex_x_allowed(tmp_path):
    return _suite_dir(tmp_path, lambda d: _edit_json(
        d / "phi_patient.json", lambda doc: [e["kwargs"]["value_set"].append("X") for e in doc["expectations"]
                                             if e["meta"]["name"] == "sex_in_hl7_table_0001"]))


def _replayer(ingestor, suites, run_id="replay-1"):
    from transforms.facts import PatientKeyer
    from transforms.load import Loader

    return Loader(ingestor.facilities.values(), PatientKeyer.from_env(ingestor.settings.home),
                  QualityOptions(True, suites), run_id=run_id)


def test_a_copy_of_a_quarantined_message_is_not_its_duplicate(ingestor, tmp_path):
    """The same message sent twice, its first copy quarantined: the second is judged on its own
    (quarantined too), not counted as a duplicate of a message that was never loaded. After the
    fix a replay loads exactly one of them; the other becomes its duplicate."""
    from transforms.replay import replay

    msg = _sex_x_adt(2)
    write(tmp_path / "x.hl7", msg + msg)
    ingestor.ingest_file(tmp_path / "x.hl7", "CHU-SO")
    eng = ingestor.engine
    assert rows(eng, "SELECT status FROM message_store ORDER BY id") == [("quarantined",), ("quarantined",)]
    assert replay(eng, _replayer(ingestor, _sex_x_allowed(tmp_path)), reason="sex_in_hl7_table_0001").loaded == 1
    assert rows(eng, "SELECT status FROM message_store ORDER BY id") == [("loaded",), ("duplicate",)]
    assert scalar(eng, "SELECT COUNT(*) FROM encounter_event") == 1
    assert scalar(eng, "SELECT COUNT(*) FROM quarantine WHERE resolved_at IS NULL") == 0
    flags = rows(eng, "SELECT flags FROM message_store ORDER BY id")
    assert all("CONTROL_ID_REUSE" not in (f or "") for (f,) in flags)  # the same content, not a reuse


def test_a_reason_that_applies_again_reopens_its_quarantine_row(ingestor, tmp_path):
    """A message quarantined for an expectation, replayed under a suite where that check has
    another name: its row is resolved and the new reason opens. Replayed again under the first
    suite, the first reason applies again: its resolved row must open again, or the message stays
    quarantined with no open row for that reason and a replay by that reason never finds it."""
    from transforms.replay import replay

    write(tmp_path / "x.hl7", "MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261102080000||ADT^A04|M-1|P|2.5\n"
          "EVN|A04|20261102080000\nPID|1||P-M-1^^^CHU-SO^MR||Ɛdɔ^Ama||19900101|X\n"
          "PV1|1|O|CONS||||||||||||||||V-M-1\n")
    ingestor.ingest_file(tmp_path / "x.hl7", "CHU-SO")
    eng = ingestor.engine
    m1 = "SELECT reason FROM quarantine WHERE resolved_at IS NULL ORDER BY reason"
    assert rows(eng, m1) == [("sex_in_hl7_table_0001",)]
    renamed = _suite_dir(tmp_path / "renamed", lambda d: _edit_json(
        d / "phi_patient.json", lambda doc: [e["meta"].update(name="sex_in_table_0001_v2") for e in doc["expectations"]
                                             if e["meta"]["name"] == "sex_in_hl7_table_0001"]))
    replay(eng, _replayer(ingestor, renamed))
    assert rows(eng, m1) == [("sex_in_table_0001_v2",)]
    replay(eng, _replayer(ingestor, _suite_dir(tmp_path / "first", lambda d: None), "replay-2"))
    assert scalar(eng, "SELECT status FROM message_store WHERE control_id = 'M-1'") == "quarantined"
    assert rows(eng, m1) == [("sex_in_hl7_table_0001",)]
    assert scalar(eng, "SELECT COUNT(*) FROM message_store m WHERE status = 'quarantined' AND NOT EXISTS "
                       "(SELECT 1 FROM quarantine q WHERE q.message_id = m.id AND q.resolved_at IS NULL)") == 0


def test_validation_can_be_switched_off(warehouse_url, hl7ics_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HL7ICS_DQ", "off")
    ing = Ingestor(Settings.load(warehouse_url=warehouse_url), run_id="run-off")
    planted = _faulty_file(tmp_path / "day.hl7", 60, 0.3)
    r = ing.ingest_file(tmp_path / "day.hl7", "CHU-SO")
    assert planted and r.counts.loaded == 60
    assert scalar(ing.engine, "SELECT COUNT(*) FROM dq_result") == 0


def test_quality_options_from_env_are_checked(monkeypatch):
    from transforms.config import ConfigError

    monkeypatch.setenv("HL7ICS_DQ_MAX_FAILURE_RATE", "150%")
    with pytest.raises(ConfigError, match="HL7ICS_DQ_MAX_FAILURE_RATE"):
        QualityOptions.from_env()
    monkeypatch.setenv("HL7ICS_DQ_MAX_FAILURE_RATE", "0")
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        QualityOptions.from_env()


def test_no_patient_value_reaches_gx(validator):
    """Only the columns a suite reads are handed to GX: names, addresses, phones stay out."""
    read = {c for s in validator.suites.values() for c in s.columns}
    assert not read & {"family_name", "given_name", "address", "phone", "patient_key"}


def test_generated_dq_faults_are_each_caught_once(ingestor, tmp_path):
    """``hl7ics generate --dq-fault-share``: every planted fault (batch files included) is caught."""
    manifest = generator.generate(tmp_path / "gen", [f.as_dict() for f in ingestor.facilities.values()], days=1,
                                  seed=13, per_day=400, broken_share=0.0, dq_fault_share=0.05)
    planted = manifest["dq_faults"]
    assert sum(planted.values()) >= 10
    files = sorted((tmp_path / "gen" / "inbound").rglob("*.hl7"))
    ingestor.ingest_files([(f, f.parent.name) for f in files])
    got = dict(rows(ingestor.engine, "SELECT reason, COUNT(*) FROM quarantine WHERE stage = 'dq' GROUP BY reason"))
    assert got == planted
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store WHERE status = 'quarantined'") == sum(planted.values())


def test_no_gx_thread_is_left_running_when_ingest_forks():
    """GX runs in a thread of its own; before forking workers, ingest stops it, so no thread can
    hold a lock while the workers are copied (a copied held lock deadlocks the child)."""
    import threading

    from transforms.quality import _off_our_stack, before_fork

    assert _off_our_stack(lambda x: x + 1, 1) == 2
    assert any(t.name.startswith("hl7ics-gx") for t in threading.enumerate())
    before_fork()
    assert not any(t.name.startswith("hl7ics-gx") and t.is_alive() for t in threading.enumerate())
    assert _off_our_stack(lambda x: x * 2, 4) == 8  # a later run starts a fresh thread


def test_gx_results_carry_failing_positions_but_never_the_values():
    """Quarantine needs only which rows failed; GX is asked not to gather the failing values, so a
    patient's member ID cannot travel in a validation result (or whatever logs or keeps one)."""
    import pandas as pd

    from transforms.quality import QualityOptions, Validator, _off_our_stack

    v = Validator(QualityOptions(True), ["CHU-SO"])
    frame = pd.DataFrame([
        {"insurer_code": "INAM", "member_id": "SECRET-ID-42", "valid_from": "2026-01-01", "valid_to": "2026-12-31"},
        {"insurer_code": "INAM", "member_id": "123456789", "valid_from": "2026-01-01", "valid_to": "2026-12-31"}])
    assert v.failures("fact_coverage", frame)["inam_member_id_format"] == [0]
    res = _off_our_stack(v.engine.run, "fact_coverage", frame, v.parameters)
    assert "SECRET-ID-42" not in repr([r.to_json_dict() for r in res])


@pytest.mark.parametrize("table", sorted(TABLES))
def test_screening_then_locating_finds_the_rows_one_complete_run_finds(validator, table):
    """Expectations are screened pass/fail first and only the failed ones run again for positions;
    every row a single COMPLETE run of the whole suite flags must still be flagged, and no other."""
    from transforms.quality import _RESULT_FORMAT, _off_our_stack

    cases = [c for c in CASES.values() if c[0] == table]
    frame = _frame(table, [{}] + [c for _, good, bad in cases for c in (good, bad)] + [{}])

    def one_complete_run():
        eng = validator.engine
        batch = eng.batches[table].get_batch(batch_parameters={"dataframe": frame})
        return batch.validate(eng.suites[table], result_format=_RESULT_FORMAT,
                              expectation_parameters=validator.parameters).results

    expected = {r.expectation_config.meta["name"]: r.result.get("unexpected_index_list") or []
                for r in _off_our_stack(one_complete_run)}
    assert any(expected.values()), "the frame must fail some expectation"
    assert validator.failures(table, frame) == expected
    results = _off_our_stack(validator.engine.run, table, frame, validator.parameters)
    # Passing expectations were only screened: GX computed no positions for them.
    assert all("unexpected_index_list" not in (r.result or {}) for r in results
               if not expected[r.expectation_config.meta["name"]])


def test_mostly_is_refused(tmp_path):
    suites = _suite_dir(tmp_path, lambda d: _edit_json(
        d / "fact_charge.json", lambda doc: doc["expectations"][1]["kwargs"].update(mostly=0.9)))
    with pytest.raises(QualityConfigError, match="'mostly' is not supported.*HL7ICS_DQ_MAX_FAILURE_RATE"):
        load_suites(suites)


@pytest.mark.parametrize("values", [
    ["Kɔmlaʋi", None, "Ɖogbé", "ŋ", ""],    # text with missing values: built by pyarrow
    ["ORU", "ADT"] * 3,
    [None, None],                           # nothing but missing values: pandas' object
    [],
    [1.5, None, 2.0],                       # numbers, flags and mixed types: pandas' own inference
    [1, 2, 3],
    [True, False, True],
    ["12", 12, None],
    ["a", float("nan")],
], ids=["text", "codes", "all-missing", "empty", "floats", "ints", "bools", "mixed", "text-and-nan"])
def test_frame_columns_have_the_dtype_and_values_pandas_would_infer(values):
    """The frames GX validates are built with ``quality._column``; a column must come out exactly
    as ``pd.DataFrame`` infers it, or expectations could judge other values or types."""
    import pandas as pd

    from transforms.quality import _column

    expected = pd.DataFrame({"c": list(values)}, index=pd.RangeIndex(len(values)))
    got = pd.DataFrame({"c": _column(list(values))}, index=pd.RangeIndex(len(values)))
    pd.testing.assert_frame_equal(got, expected)
    assert got["c"].dtype == expected["c"].dtype
    assert got["c"].isna().tolist() == expected["c"].isna().tolist()


def test_gx_does_not_fingerprint_frames():
    """GX would hash every frame into a batch marker nobody reads (a fifth of its time per
    chunk); the engine turns that off through the pinned GX's ``HASH_THRESHOLD``. If an upgrade
    renames the setting, this fails instead of the ingest silently slowing down."""
    import pandas as pd
    from great_expectations.execution_engine import pandas_execution_engine

    from transforms.quality import QualityOptions, Validator

    v = Validator(QualityOptions(True), ["CHU-SO"])
    batch = v.engine.batches["fact_coverage"].get_batch(batch_parameters={"dataframe": pd.DataFrame(
        {"insurer_code": ["INAM"], "member_id": ["123456789"], "valid_from": [None], "valid_to": [None]})})
    assert pandas_execution_engine.HASH_THRESHOLD == 0
    assert "pandas_data_fingerprint" not in batch.batch_markers
    assert "ge_load_time" in batch.batch_markers  # the markers themselves are still there


def test_an_expectation_gx_cannot_evaluate_is_an_error_not_a_pass(tmp_path):
    """GX reports an exception in one of an expectation's metrics (here a numeric range on a text
    column) under the metric's id and marks the result unsuccessful, with no failing rows. Read as
    is, every row passed the check; it must stop the batch with a clear error instead."""
    import pandas as pd

    suites = _suite_dir(tmp_path, lambda d: _edit_json(d / "fact_charge.json", lambda doc: doc["expectations"].append(
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "charge_code", "min_value": 0,
                                                                   "max_value": 10},
         "meta": {"name": "charge_code_in_range", "severity": "error"}})))
    v = Validator(QualityOptions(True, suites), ["CHU-SO"])
    frame = pd.DataFrame({"charge_code": ["CONS-01", "LAB-02"], "amount": [1500.0, 2500.0],
                          "currency": ["XOF", "XOF"]})
    with pytest.raises(QualityConfigError, match="fact_charge.json: expectation 'charge_code_in_range' could not "
                                                 "be evaluated"):
        v.failures("fact_charge", frame)


def test_replay_does_not_count_its_messages_in_dq_result_again(ingestor, tmp_path):
    """dq_result counted a message when it arrived; replays (here two, with nothing fixed) must not
    count it again, or dq_daily's failure rates grow with every replay."""
    from transforms.replay import replay

    msg = _sex_x_adt(4)
    write(tmp_path / "x.hl7", msg)
    ingestor.ingest_file(tmp_path / "x.hl7", "CHU-SO")
    eng = ingestor.engine
    counted = "SELECT expectation, SUM(evaluated), SUM(failed) FROM dq_result GROUP BY expectation ORDER BY 1"
    before = rows(eng, counted)
    with eng.begin() as conn:  # a time no replay can write (the clock has second precision)
        conn.execute(text("UPDATE message_store SET updated_at = '2026-11-02 08:00:05'"))
    stored = rows(eng, "SELECT status, error, flags, updated_at FROM message_store")
    assert ("sex_in_hl7_table_0001", 1, 1) in before
    for run in ("replay-1", "replay-2"):
        assert replay(eng, _replayer(ingestor, SUITES, run)).quarantined == 1
    assert rows(eng, counted) == before
    # Nothing changed for the message either, so neither did the time its row last changed.
    assert rows(eng, "SELECT status, error, flags, updated_at FROM message_store") == stored
