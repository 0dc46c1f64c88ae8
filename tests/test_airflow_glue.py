"""Airflow-facing glue: retry policy decisions and the failure callback's ops_alert row."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import text


def test_bad_data_fails_at_once_and_io_retries():
    from airflow.sdk import RetryAction
    from hl7ics_airflow.policies import IO_RETRY_POLICY
    from sqlalchemy.exc import OperationalError

    from transforms.config import ConfigError
    from transforms.errors import BadDataError, SourceError

    def action(exc):
        return IO_RETRY_POLICY.evaluate(exc, 1, 3).action

    assert action(BadDataError("threshold exceeded")) == RetryAction.FAIL
    assert action(ConfigError("facilities.yaml: bad")) == RetryAction.FAIL
    assert action(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")) == RetryAction.FAIL
    assert action(SourceError("share unavailable")) == RetryAction.RETRY
    assert action(FileNotFoundError("gone")) == RetryAction.RETRY
    assert action(OperationalError("SELECT 1", {}, Exception("db down"))) == RetryAction.RETRY
    # A rule's delay would override the task's: the every-minute DAGs' shorter delays must hold.
    assert all(IO_RETRY_POLICY.evaluate(e, 1, 3).retry_delay is None
               for e in (SourceError("x"), FileNotFoundError("x"), OperationalError("SELECT 1", {}, Exception())))


def test_driver_errors_are_classified_without_importing_the_driver_at_parse():
    """psycopg's errors are named by path: a DAG file's parse does not import psycopg (a fresh
    interpreter parses one), and the policy still fails bad data and retries a lost server."""
    import subprocess
    import sys
    from pathlib import Path

    import psycopg
    from airflow.sdk import RetryAction
    from hl7ics_airflow.policies import IO_RETRY_POLICY

    root = Path(__file__).resolve().parent.parent
    code = ("import runpy, sys\nrunpy.run_path(sys.argv[1])\n"
            "print('psycopg' in sys.modules, 'default_args' in open(sys.argv[1]).read())")
    out = subprocess.run([sys.executable, "-c", code, str(root / "dags" / "facility_batch_ingest.py")],
                         capture_output=True, text=True, check=True, cwd=root,
                         env={**__import__("os").environ, "PYTHONPATH": f"{root / 'plugins'}:{root}"})
    assert out.stdout.split() == ["False", "True"]
    assert IO_RETRY_POLICY.evaluate(psycopg.DataError("bad value"), 1, 3).action == RetryAction.FAIL
    assert IO_RETRY_POLICY.evaluate(psycopg.errors.UniqueViolation("dup"), 1, 3).action == RetryAction.FAIL
    assert IO_RETRY_POLICY.evaluate(psycopg.OperationalError("server gone"), 1, 3).action == RetryAction.RETRY


def test_a_connection_that_is_not_defined_fails_at_once():
    """A missing connection is configuration, not a passing I/O problem: no retry."""
    from airflow.sdk import RetryAction
    from hl7ics_airflow.policies import IO_RETRY_POLICY

    from transforms.config import ConfigError
    from transforms.queue_source import QueueOptions

    with pytest.raises(ConfigError, match="connection amqp_x is not defined") as err:
        QueueOptions.from_source({"conn_id": "amqp_x", "queue": "q"}, lambda _id: None)
    assert IO_RETRY_POLICY.evaluate(err.value, 1, 3).action == RetryAction.FAIL


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", url)
    from transforms.warehouse import get_engine

    return get_engine(url)


def _context(exc, task_id="load"):
    ti = SimpleNamespace(dag_id="facility_batch_ingest", task_id=task_id, run_id="scheduled__2026-11-02",
                         rendered_map_index="CHU-SO", log_url="http://airflow/log/1")
    return {"ti": ti, "exception": exc}


def test_failure_callback_writes_an_alert_without_patient_data(warehouse):
    from hl7ics_airflow.alerts import on_task_failure

    # Two tasks: the same task failing twice is one open problem, hence one row (tests/test_alerting.py).
    on_task_failure(_context(KeyError("Ɖogbé Améyo 19870412")))
    on_task_failure(_context(__import__("transforms.errors", fromlist=["x"]).SourceError("share CHU-SO unavailable"),
                             task_id="pull"))
    with warehouse.connect() as c:
        rows = c.execute(text("SELECT dag_id, task_id, run_id, facility_code, error_class, message, log_url "
                              "FROM ops_alert ORDER BY id")).all()
    assert len(rows) == 2
    assert rows[0][:4] == ("facility_batch_ingest", "load", "scheduled__2026-11-02", "CHU-SO")
    assert rows[0][4] == "builtins.KeyError" and "Améyo" not in rows[0][5] and "1987" not in rows[0][5]
    assert rows[1][4] == "transforms.errors.SourceError" and "share CHU-SO unavailable" in rows[1][5]


def test_warehouse_url_from_airflow_connection(monkeypatch):
    from hl7ics_airflow.runtime import warehouse_url_from_connection

    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_WAREHOUSE", raising=False)
    assert warehouse_url_from_connection() is None
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_WAREHOUSE",
                       '{"conn_type": "postgres", "host": "db", "login": "u", "password": "p", "schema": "wh", "port": 5432}')
    assert warehouse_url_from_connection() == "postgresql+psycopg://u:p@db:5432/wh"
