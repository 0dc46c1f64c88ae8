"""Interface monitoring page: time to serve it from a warehouse holding a month of monitoring data.

Seeds a throwaway warehouse (SQLite file; PostgreSQL too when 127.0.0.1:5432 answers, in a
database dropped afterwards) with what the ``interface_monitoring`` DAG leaves after a month: the
hourly volume rollup for every interface, ``interface_health`` snapshots every 5 minutes, open and
resolved alerts, a message store with its open quarantine. Then serves the plugin's app with
FastAPI's TestClient and times whole page loads (queries + rendering + HTTP), with and without the
filters, and the JSON API. Target: under 1 s per page load.

Airflow's JWT check is stubbed (dependency override): it is Airflow's cost (a signature and one
metadata-DB lookup), and the bench must not need an Airflow metadata database.
"""
from __future__ import annotations

import os
import sys
import tempfile
from datetime import datetime, timedelta, timezone

from .common import median_time, table
from .ingest_bench import _drop_pg, _fresh_pg, _pg_available

REGIONS = ("Lomé-Commune", "Maritime", "Plateaux", "Centrale", "Kara", "Savanes")
TYPES = ("ADT", "ORU", "ORM", "DFT", "VXU", "RDE")
STATUSES = ("ok",) * 14 + ("warning", "warning", "critical", "off_hours")
VOLUME_COLS = ("hour", "facility_code", "source", "message_type", "messages", "quarantined", "duplicates", "updated_at")
HEALTH_COLS = ("checked_at", "facility_code", "source", "message_type", "status", "messages_1h", "messages_24h",
               "expected_1h", "quarantine_rate_24h", "last_message_at", "silence_minutes", "ack_p95_ms", "backlog",
               "problems")
STORE_COLS = ("facility_code", "message_type", "received_at", "source", "source_ref", "sha256", "raw", "size_bytes",
              "status", "updated_at")


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def _seed(engine, n_fac: int, n_types: int, health_days: int, store_rows: int, now: datetime) -> dict:
    """A month of monitoring data for n_fac facilities x n_types message types; returns row counts."""
    from sqlalchemy import text

    from transforms.warehouse import Writer

    facs = [(f"FAC-{i:03d}", f"Formation {i:03d}", REGIONS[i % len(REGIONS)]) for i in range(n_fac)]
    types = TYPES[:n_types]
    hour0 = now.replace(minute=0, second=0)
    volume = []
    for k in range(30 * 24):
        hour = _ts(hour0 - timedelta(hours=k))
        for i, (code, _n, _r) in enumerate(facs):
            src = "mllp" if i % 3 == 0 else "folder"
            for j, t in enumerate(types):
                n = 5 + (k * 7 + i * 3 + j) % 40
                volume.append((hour, code, src, t, n, n // 25, 1 if k % 24 == 3 else 0, _ts(now)))
    health = []
    checks = health_days * 288
    for c in range(checks):
        at = now - timedelta(minutes=5 * c)
        for i, (code, _n, _r) in enumerate(facs):
            src = "mllp" if i % 3 == 0 else "folder"
            for j, t in enumerate(types):
                st = STATUSES[(i * 7 + j + c) % len(STATUSES)]
                health.append((_ts(at), code, src, t, st, 20 + j, 480 + i, 21.5, 0.02, _ts(at - timedelta(minutes=2)),
                               2.0, 800.0 if src == "mllp" else None, 0,
                               None if st in ("ok", "off_hours") else "silence"))
    store = []
    for m in range(store_rows):
        code = facs[m % n_fac][0]
        status = "quarantined" if m % 33 == 0 else "loaded"
        at = _ts(now - timedelta(seconds=30 * m))
        store.append((code, "ADT", at, "folder", f"bench:{m}", f"{m:064x}", b"MSH|^~\\&|bench", 14, status, at))
    with engine.begin() as conn:
        w = Writer(conn)
        conn.execute(text("INSERT INTO dim_facility (facility_code, name, type, region, district, dhis2_org_unit, "
                          "timezone, charset, updated_at) VALUES (:c, :n, 'chu', :r, 'd', 'ou', 'Africa/Lome', "
                          "'UTF-8', :t)"), [{"c": c, "n": n, "r": r, "t": _ts(now)} for c, n, r in facs])
        w.copy("interface_volume_hourly", VOLUME_COLS, volume)
        w.copy("interface_health", HEALTH_COLS, health)
        w.copy("message_store", STORE_COLS, store)
        ids = [r[0] for r in conn.execute(text("SELECT id FROM message_store WHERE status = 'quarantined'"))]
        reasons = ("MISSING_CONTROL_ID", "obx3_present", "BATCH_COUNT_MISMATCH", "pid3_present", "UNKNOWN_FACILITY")
        w.copy("quarantine", ("message_id", "stage", "reason", "detail", "created_at"),
               [(mid, "parse", reasons[k % len(reasons)], "MSH-10", _ts(now)) for k, mid in enumerate(ids)])
        alerts = [(_ts(now - timedelta(minutes=k)), "interface_monitoring", "check_interfaces", facs[k % n_fac][0],
                   "error", "transforms.Example", f"alert {k}", None, _ts(now) if k >= 300 else None)
                  for k in range(3300)]
        w.copy("ops_alert", ("created_at", "dag_id", "task_id", "facility_code", "severity", "error_class", "message",
                             "log_url", "resolved_at"), alerts)
    return {"interfaces": n_fac * n_types, "volume": len(volume), "health": len(health), "store": len(store),
            "first": facs[0][0], "region": facs[0][2]}


def _client():
    import warnings

    with warnings.catch_warnings():  # starlette's notice about its httpx test transport: not ours
        warnings.filterwarnings("ignore", message=".*httpx.*")
        from fastapi.testclient import TestClient

    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user
    from hl7ics_airflow.monitoring_ui import create_app

    app = create_app()
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="bench", role="VIEWER")
    # The page asks the auth manager whether the user may read the monitoring DAG (the API server
    # initialises it at start). Airflow's simple one, with every user an admin: it then neither
    # writes nor prints generated passwords.
    from airflow.api_fastapi.app import init_auth_manager

    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
    init_auth_manager()
    return TestClient(app)


def run(quick: bool = False) -> dict:
    from transforms.config import PROJECT_ROOT, Settings
    from transforms.demo import _airflow_env
    from transforms.warehouse import get_engine

    # Importing Airflow reads (and on first use writes) its home: use the demo's, never ~/airflow.
    _airflow_env(Settings.load().home)
    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    sizes = [(7, 3, 30, 20_000)] if quick else [(7, 3, 30, 100_000), (60, 4, 7, 100_000)]
    runs = 3 if quick else 7
    saved = {k: os.environ.get(k) for k in ("HL7ICS_WAREHOUSE_URL", "AIRFLOW_CONN_HL7ICS_WAREHOUSE")}
    os.environ.pop("AIRFLOW_CONN_HL7ICS_WAREHOUSE", None)
    now = datetime.now(timezone.utc).replace(tzinfo=None, second=0, microsecond=0)
    now -= timedelta(minutes=now.minute % 5)
    backends = [("SQLite", "sqlite")] + ([("PostgreSQL", "postgresql")] if _pg_available() else [])
    results: dict = {}
    rows = []
    client = _client()
    try:
        with tempfile.TemporaryDirectory() as d:
            for label, kind in backends:
                for n_fac, n_types, health_days, store_rows in sizes:
                    pg_name = None
                    if kind == "sqlite":
                        url = f"sqlite:///{d}/monitoring-{n_fac}.db"
                    else:
                        pg_name, url = _fresh_pg()
                    try:
                        counts = _seed(get_engine(url), n_fac, n_types, health_days, store_rows, now)
                        os.environ["HL7ICS_WAREHOUSE_URL"] = url
                        cases = {"all": ("/", {}), "region": ("/", {"region": counts["region"]}),
                                 "facility": ("/", {"facility": counts["first"]}), "json": ("/api/interfaces", {})}
                        ms = {}
                        for name, (path, params) in cases.items():
                            r = client.get(path, params=params)  # warm: engine, migrations check, SQL file
                            assert r.status_code == 200, (name, r.status_code, r.text[:300])
                            ms[name] = 1000 * median_time(lambda: client.get(path, params=params), runs)
                        size_kb = len(client.get("/").content) / 1024
                        key = f"{kind}_{n_fac}x{n_types}"
                        results[key] = {**ms, "page_kb": round(size_kb, 1), "health_rows": counts["health"]}
                        rows.append([label, f"{n_fac} x {n_types} = {counts['interfaces']}", counts["health"],
                                     counts["volume"], ms["all"], ms["region"], ms["facility"], ms["json"], size_kb,
                                     "yes" if max(ms.values()) < 1000 else "NO"])
                    finally:
                        if pg_name:
                            _drop_pg(pg_name)
                        else:
                            from transforms.warehouse import _ENGINES

                            eng = _ENGINES.pop(url, None)
                            if eng is not None:
                                eng.dispose()
    finally:
        client.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    print(table(f"Interface monitoring page (TestClient, auth stubbed), median ms of {runs} loads; target < 1 s",
                ["warehouse", "interfaces", "health rows", "volume rows", "page", "region", "facility", "JSON",
                 "page KB", "< 1 s"], rows))
    return results


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
