"""Test set-up shared by every test: isolated Airflow home and metadata DB, isolated hl7ics home,
and warehouse fixtures for SQLite and the real PostgreSQL on 127.0.0.1:5432.

Airflow reads its configuration at import time, so the environment is set here, before any test
module imports ``airflow``. Under CI=true a missing PostgreSQL fails the run; on a laptop the
PostgreSQL tests skip with the reason.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
_TMP = Path(tempfile.mkdtemp(prefix="hl7ics-tests-"))

os.environ["AIRFLOW_HOME"] = str(_TMP / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_TMP / 'airflow' / 'airflow.db'}"
os.environ["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"
os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(_TMP / "airflow" / "logs")
os.environ["HL7ICS_HOME"] = str(_TMP / "home")
os.environ["HL7ICS_PATIENT_KEY"] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["HL7ICS_RETRY_DELAY_SECONDS"] = "1"
os.environ.pop("HL7ICS_WAREHOUSE_URL", None)
os.environ.pop("HL7ICS_CONFIG", None)
(_TMP / "airflow").mkdir(parents=True, exist_ok=True)
sys.path.insert(0, str(ROOT / "plugins"))

PG_ADMIN_URL = os.environ.get("HL7ICS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3):
            return None
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"PostgreSQL on 127.0.0.1:5432 is not reachable ({type(exc).__name__})"


@pytest.fixture(scope="session")
def pg_server():
    problem = _pg_available()
    if problem:
        if IN_CI:
            pytest.fail(f"{problem}; CI requires it")
        pytest.skip(problem)
    return PG_ADMIN_URL


@contextlib.contextmanager
def _throwaway_pg(options: str | None = None):
    """A new database, created as production creates it unless ``options`` says otherwise."""
    import psycopg

    from transforms.warehouse import PG_DATABASE_OPTIONS

    name = f"hl7ics_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" {PG_DATABASE_OPTIONS if options is None else options}')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        yield url
    finally:
        from transforms.warehouse import _ENGINES, normalize_url

        eng = _ENGINES.pop(normalize_url(url), None)
        if eng is not None:
            eng.dispose()
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server):
    """A throwaway PostgreSQL database for one test, dropped afterwards."""
    with _throwaway_pg() as url:
        yield url


@pytest.fixture
def second_warehouse_url(warehouse_url, tmp_path):
    """Another empty warehouse of the same kind as ``warehouse_url`` (to compare two loads)."""
    if warehouse_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'second.db'}"
        yield url
        from transforms.warehouse import _ENGINES

        eng = _ENGINES.pop(url, None)
        if eng is not None:
            eng.dispose()
        return
    with _throwaway_pg() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    yield url
    from transforms.warehouse import _ENGINES

    eng = _ENGINES.pop(url, None)
    if eng is not None:
        eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_url(request):
    """Runs the test once on the embedded SQLite and once on the real PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def hl7ics_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HL7ICS_HOME", str(home))
    monkeypatch.setenv("HL7ICS_DATA_DIR", str(home / "data"))
    return home


def require(problem: str | None, how_to: str) -> None:
    """A service a test needs is missing: fail under CI (it must be there), skip on a laptop."""
    if problem:
        if IN_CI:
            pytest.fail(f"{problem}; CI requires it")
        pytest.skip(f"{problem} ({how_to})")


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.initdb()
    return True


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium (installed by scripts/ensure-chromium, which `make test` runs)."""
    import shutil

    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    require(None if path else "chromium is not installed",
            "install with: apt-get install chromium, or run scripts/ensure-chromium")
    return path


AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture(scope="session")
def rabbit() -> str:
    """The RabbitMQ on this machine (127.0.0.1:5672, guest/guest)."""
    import pika

    problem = None
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?connection_attempts=1&socket_timeout=3")).close()
    except Exception as exc:
        problem = f"RabbitMQ is not reachable on 127.0.0.1:5672 ({type(exc).__name__})"
    require(problem, "start rabbitmq-server")
    return AMQP_URL
