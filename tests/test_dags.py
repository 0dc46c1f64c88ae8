"""DAG integrity (every DAG imports and declares its operational guards) and end-to-end runs."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
DAG_IDS = {"facility_batch_ingest", "mllp_realtime", "data_quality_report", "interface_monitoring",
           "sla_monthly_report", "moh_reporting", "route_and_deliver", "insurer_claims_extract_inam",
           "insurer_claims_extract_cnss", "insurer_claims_extract_gta_c2a"}




def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_IDS <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_dag_guards(dagbag, dag_id):
    dag = dagbag.get_dag(dag_id)
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and len(dag.doc_md) > 80
    assert dag.tags and "hl7ics" in dag.tags
    assert dag.on_failure_callback and dag.on_success_callback  # alert, and resolve on recovery
    for t in dag.tasks:
        assert t.owner and t.owner != "airflow", t.task_id
        assert t.retries is not None and t.retries >= 1, t.task_id
        assert t.on_failure_callback, t.task_id


def test_dag_files_are_thin():
    """DAG files import no heavy libraries at top level and hold no SQL."""
    for p in (ROOT / "dags").glob("*.py"):
        src = p.read_text()
        for banned in ("import pandas", "import great_expectations", "SELECT ", "INSERT INTO", "from airflow.models",
                       "from airflow.operators", "from airflow.decorators"):
            assert banned not in src, f"{p.name}: {banned}"


def test_facility_batch_ingest_end_to_end(dagbag, hl7ics_home, monkeypatch):
    from transforms.config import Settings
    from transforms.warehouse import get_engine

    data = hl7ics_home / "data" / "inbound" / "CHU-SO"
    data.mkdir(parents=True)
    shutil.copyfile(ROOT / "tests" / "fixtures" / "hl7" / "togo_adt_oru.hl7", data / "day1.hl7")
    dag = dagbag.get_dag("facility_batch_ingest")
    dag.test()
    eng = get_engine(Settings.load().warehouse_url)
    with eng.connect() as c:
        statuses = dict(c.execute(text("SELECT status, COUNT(*) FROM message_store GROUP BY status")).all())
        runs = c.execute(text("SELECT facility_code, files, messages, loaded FROM ingest_run "
                              "WHERE facility_code = 'CHU-SO' AND files > 0")).all()
    assert statuses.get("loaded", 0) >= 3
    assert runs and runs[0][1] == 1
    assert not (data / "day1.hl7").exists(), "file must be archived after commit"
    assert any((hl7ics_home / "archive" / "CHU-SO").glob("*.hl7"))
    assert not list((hl7ics_home / "staging" / "CHU-SO").iterdir()), "staging is emptied after archiving"


def test_demo_twice_duplicates_nothing(dagbag, hl7ics_home):
    import io

    from transforms.demo import run_demo

    first, second = io.StringIO(), io.StringIO()
    assert run_demo(days=1, seed=5, per_day=120, out=first) == 0
    assert run_demo(days=1, seed=5, per_day=120, out=second) == 0

    def table_rows(text):
        part = text.split("Rows per warehouse table")[1].split("Warehouse")[0]
        return {l.split()[0]: int(l.split()[1]) for l in part.strip().splitlines()[1:] if l.strip()}

    a, b = table_rows(first.getvalue()), table_rows(second.getvalue())
    assert a["message_store"] >= 50 and a == b
    # the two queries the demo prints for statisticians run and find data
    from transforms.config import Settings
    from transforms.demo import EXAMPLE_QUERIES
    from transforms.warehouse import get_engine

    with get_engine(Settings.load().warehouse_url).connect() as c:
        admissions = c.exec_driver_sql(EXAMPLE_QUERIES[0][1]).all()
        malaria = c.exec_driver_sql(EXAMPLE_QUERIES[1][1]).all()
    assert admissions and all(r[2] > 0 for r in admissions)
    assert malaria and sum(r[2] for r in malaria) > 0 and all(r[2] <= r[1] for r in malaria)
    assert "TOTAL" in second.getvalue() and "sqlite" in second.getvalue()
    # The second run says what it did (nothing new), not the warehouse's totals as its own.
    this_run = second.getvalue().split("This run / Cette exécution")[1].split("In the warehouse")[0]
    assert "no new file" in this_run and "TOTAL" not in this_run
    first_run = first.getvalue().split("This run / Cette exécution")[1].split("In the warehouse")[0]
    total = [l.split() for l in first_run.splitlines() if l.startswith("TOTAL")][0]
    assert int(total[2]) == a["message_store"]  # the first run's messages are all the warehouse holds


def test_mllp_realtime_end_to_end(dagbag, hl7ics_home, tmp_path):
    """Messages ACKed by a running listener are loaded by one run of the always-on DAG."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from listener_support import ListenerProcess, exchange, msa

    from transforms.config import Settings
    from transforms.warehouse import get_engine

    url = Settings.load().warehouse_url
    lp = ListenerProcess(tmp_path, url).start()
    try:
        data = (ROOT / "tests" / "fixtures" / "hl7" / "togo_adt_oru.hl7").read_bytes().split(b"MSH|")[1:]
        acks = [msa(exchange(lp.port, b"MSH|" + m)) for m in data]
    finally:
        lp.kill()
    assert [a[0] for a in acks] == ["CA", "CA", "CA"]
    dag = dagbag.get_dag("mllp_realtime")
    dag.test()
    with get_engine(url).connect() as c:
        st = dict(c.execute(text("SELECT status, COUNT(*) FROM message_store WHERE source = 'mllp' GROUP BY status")).all())
        names = c.execute(text("SELECT family_name FROM phi_patient")).scalars().all()
    assert st == {"loaded": 3}
    assert "Ɖogbé" in names


def test_received_trigger_fires_when_messages_wait(sqlite_url, monkeypatch):
    import asyncio

    from hl7ics_airflow.triggers import ReceivedMessagesTrigger

    from transforms.warehouse import get_engine, utcnow

    monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", sqlite_url)
    eng = get_engine(sqlite_url)

    async def first_event(trigger):
        async for ev in trigger.run():
            return ev.payload

    t = ReceivedMessagesTrigger(poll_seconds=0.05, max_wait_seconds=0.3)
    assert asyncio.run(first_event(t)) == {"received": 0}  # the interval passed empty
    with eng.begin() as c:
        c.execute(text("INSERT INTO message_store (facility_code, received_at, source, source_ref, sha256, raw, "
                       "size_bytes, status, updated_at) VALUES ('CHU-SO', :t, 'mllp', 'x:1', 'abc', :r, 3, "
                       "'received', :t)"), {"t": utcnow(), "r": b"MSH"})
    assert asyncio.run(first_event(t)) == {"received": 1}
    classpath, kwargs = t.serialize()
    assert classpath == "hl7ics_airflow.triggers.ReceivedMessagesTrigger" and "sqlite" not in repr(kwargs)


def _faulty_drop(hl7ics_home: Path, n: int, share: float, seed: int) -> dict[int, str]:
    from transforms import faults, generator

    msgs, planted = faults.inject(generator.generate_mix(n, seed=seed), share, seed=seed)
    inbox = hl7ics_home / "data" / "inbound" / "CHU-SO"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "day.hl7").write_bytes(b"".join(m if m.endswith((b"\r", b"\n")) else m + b"\r" for m in msgs))
    return planted


def test_facility_batch_ingest_quarantines_exactly_the_bad_rows(dagbag, hl7ics_home):
    """A generated batch with a known share of bad rows: those rows, and only those, end in
    quarantine with the expectation they break; the rest of the batch loads."""
    from transforms.config import Settings
    from transforms.warehouse import get_engine

    planted = _faulty_drop(hl7ics_home, 300, 0.1, seed=21)
    assert len(planted) >= 15
    dr = dagbag.get_dag("facility_batch_ingest").test()
    assert str(dr.state).endswith("success")
    with get_engine(Settings.load().warehouse_url).connect() as c:
        got = {int(ref.split(":")[1]): reason for ref, reason in c.execute(text(
            "SELECT m.source_ref, q.reason FROM message_store m JOIN quarantine q ON q.message_id = m.id "
            "WHERE m.status = 'quarantined'"))}
        loaded = c.execute(text("SELECT COUNT(*) FROM message_store WHERE status = 'loaded'")).scalar()
        dq_runs = c.execute(text("SELECT DISTINCT run_id FROM dq_result")).scalars().all()
    assert got == planted
    assert loaded == 300 - len(planted)
    assert dq_runs == [dr.run_id]


def test_data_quality_threshold_fails_the_load_task(dagbag, hl7ics_home, monkeypatch):
    from transforms.config import Settings
    from transforms.warehouse import get_engine

    monkeypatch.setenv("HL7ICS_DQ_MAX_FAILURE_RATE", "0.1")
    planted = _faulty_drop(hl7ics_home, 200, 0.4, seed=22)
    dr = dagbag.get_dag("facility_batch_ingest").test()
    assert str(dr.state).endswith("failed")
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances() if ti.map_index in (-1, 0)}
    assert states["load"].endswith("failed") and states["archive"].endswith("upstream_failed")
    with get_engine(Settings.load().warehouse_url).connect() as c:
        statuses = dict(c.execute(text("SELECT status, COUNT(*) FROM message_store GROUP BY status")).all())
        held = c.execute(text("SELECT COUNT(DISTINCT message_id) FROM quarantine WHERE reason = 'DQ_THRESHOLD'")).scalar()
        alerts = c.execute(text("SELECT task_id, facility_code, error_class FROM ops_alert "
                                "WHERE task_id = 'load'")).all()
    assert statuses == {"quarantined": 200} and held == 200  # stored and held, nothing lost, nothing loaded
    assert len(planted) > 20
    assert alerts and alerts[0][1] == "CHU-SO" and alerts[0][2] == "transforms.errors.DataQualityError"


def test_interface_monitoring_end_to_end(dagbag, hl7ics_home):
    """One check after a batch run: every interface gets a health row; silent facilities alert."""
    from transforms.config import Settings
    from transforms.warehouse import get_engine

    data = hl7ics_home / "data" / "inbound" / "CHU-SO"
    data.mkdir(parents=True)
    shutil.copyfile(ROOT / "tests" / "fixtures" / "hl7" / "togo_adt_oru.hl7", data / "day1.hl7")
    assert str(dagbag.get_dag("facility_batch_ingest").test().state).endswith("success")
    dr = dagbag.get_dag("interface_monitoring").test()
    assert str(dr.state).endswith("success")
    with get_engine(Settings.load().warehouse_url).connect() as c:
        health = c.execute(text("SELECT facility_code, source, status FROM interface_health")).all()
        hourly = c.execute(text("SELECT SUM(messages) FROM interface_volume_hourly")).scalar()
        alerts = c.execute(text("SELECT facility_code FROM ops_alert WHERE resolved_at IS NULL")).scalars().all()
    codes = {f.code for f in Settings.load().facilities()}
    assert {h[0] for h in health} >= codes  # every configured facility is shown
    assert ("CHU-SO", "folder", "ok") in [tuple(h) for h in health]
    assert hourly >= 3
    # the other facilities have never sent: those inside their working hours now are silent
    from datetime import datetime

    from transforms.monitoring import in_working_hours

    now = datetime.utcnow()
    working = {f.code for f in Settings.load().facilities() if in_working_hours(f, now)}
    assert set(alerts) >= working - {"CHU-SO"}
    assert not set(alerts) & (codes - working)  # never outside their hours
    before = sorted(alerts)
    assert str(dagbag.get_dag("interface_monitoring").test().state).endswith("success")
    with get_engine(Settings.load().warehouse_url).connect() as c:
        again = c.execute(text("SELECT facility_code FROM ops_alert WHERE resolved_at IS NULL")).scalars().all()
    assert sorted(again) == before  # a second check alerts nobody twice


def test_sla_monthly_report_end_to_end(dagbag, hl7ics_home):
    from transforms.config import Settings

    dr = dagbag.get_dag("sla_monthly_report").test()
    assert str(dr.state).endswith("success")
    files = sorted((Settings.load().data_dir / "reports" / "sla").glob("sla-*"))
    assert [f.suffix for f in files] == [".csv", ".html"]


def test_moh_reporting_end_to_end(dagbag, hl7ics_home):
    """Generated traffic of the last days -> facility_batch_ingest -> moh_reporting: the current
    week's IDSR, lab, completeness and hospital tables are filled, and a re-run changes nothing."""
    from datetime import date, timedelta

    from transforms import generator
    from transforms.config import Settings
    from transforms.warehouse import get_engine

    s = Settings.load()
    generator.generate(s.data_dir, [f.as_dict() for f in s.facilities()], days=3, seed=31, per_day=600,
                       start=date.today() - timedelta(days=2), broken_share=0.0)
    assert str(dagbag.get_dag("facility_batch_ingest").test().state).endswith("success")
    assert str(dagbag.get_dag("moh_reporting").test().state).endswith("success")

    def snapshot():
        with get_engine(s.warehouse_url).connect() as c:
            return {t: sorted(repr(tuple(r)[:-1]) for r in c.execute(text(f"SELECT * FROM {t}")))
                    for t in ("moh_idsr_weekly", "moh_lab_activity", "moh_completeness", "moh_hospital_activity",
                              "rpt_idsr_case")}
    first = snapshot()
    assert first["rpt_idsr_case"] and first["moh_idsr_weekly"] and first["moh_lab_activity"]
    assert len({r.split(",")[2] for r in first["moh_completeness"]}) == len(s.facilities())
    assert str(dagbag.get_dag("moh_reporting").test().state).endswith("success")
    assert snapshot() == first


def test_immediately_notifiable_disease_alerts_from_the_monitoring_run(dagbag, hl7ics_home):
    """A cholera admission arrives: the next interface_monitoring run raises one critical alert
    with facility and district, never the patient; the run after that raises nothing new."""
    from datetime import datetime

    from transforms.config import Settings
    from transforms.warehouse import get_engine

    now = datetime.utcnow()
    ts = now.strftime("%Y%m%d%H%M%S")
    inbox = hl7ics_home / "data" / "inbound" / "CHU-KARA"
    inbox.mkdir(parents=True)
    (inbox / "adt.hl7").write_bytes((
        f"MSH|^~\\&|SIH|CHU-KARA|HL7ICS|MOH|{ts}||ADT^A01|CH-1|P|2.5\r"
        f"EVN|A01|{ts}\rPID|1||K77^^^CHU-KARA^MR||Ŋɔtsé^Abla||19900101|F\r"
        f"PV1|1|I|INF||||||||||||||||VK77|||||||||||||||||||||||||{ts}\r"
        "DG1|1||A00.9^Choléra^I10||\r").encode("utf-8"))
    assert str(dagbag.get_dag("facility_batch_ingest").test().state).endswith("success")
    for _ in range(2):
        assert str(dagbag.get_dag("interface_monitoring").test().state).endswith("success")
    with get_engine(Settings.load().warehouse_url).connect() as c:
        alerts = c.execute(text("SELECT facility_code, severity, message FROM ops_alert "
                                "WHERE alert_key LIKE 'idsr:%'")).all()
        notes = c.execute(text("SELECT disease, district, cases FROM idsr_notification")).all()
    assert len(alerts) == 1 and alerts[0][:2] == ("CHU-KARA", "critical")
    assert "Kozah" in alerts[0][2] and "Ŋɔtsé" not in alerts[0][2] and "K77" not in alerts[0][2]
    assert [tuple(n) for n in notes] == [("CHOLERA", "Kozah", 1)]
