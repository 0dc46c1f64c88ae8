"""Settings for tasks: configuration directory and warehouse URL, with Airflow connections first.

The warehouse URL comes from the Airflow connection ``hl7ics_warehouse`` when one is defined
(``AIRFLOW_CONN_HL7ICS_WAREHOUSE`` or a secrets backend), else from ``HL7ICS_WAREHOUSE_URL``, else
the embedded SQLite default. Connection passwords never reach logs: only the URL is built here.
"""
from __future__ import annotations

import os

from transforms.config import Settings

WAREHOUSE_CONN_ID = "hl7ics_warehouse"


def warehouse_url_from_connection(conn_id: str = WAREHOUSE_CONN_ID) -> str | None:
    if not any(k.upper() == f"AIRFLOW_CONN_{conn_id.upper()}" for k in os.environ) \
            and not os.environ.get("HL7ICS_USE_SECRETS_BACKEND"):
        return None  # avoid a metadata round-trip when no connection is configured
    from airflow.sdk import Connection

    try:
        conn = Connection.get(conn_id)
    except Exception:
        return None
    extra = conn.extra_dejson or {}
    if extra.get("sqlalchemy_url"):
        return extra["sqlalchemy_url"]
    if conn.conn_type in ("postgres", "postgresql"):
        from sqlalchemy.engine import URL

        return URL.create("postgresql+psycopg", username=conn.login or None, password=conn.password or None,
                          host=conn.host or "127.0.0.1", port=conn.port or 5432,
                          database=conn.schema or "postgres").render_as_string(hide_password=False)
    if conn.conn_type == "sqlite":
        return f"sqlite:///{conn.host}"
    return None


def settings() -> Settings:
    return Settings.load(warehouse_url=warehouse_url_from_connection())


def run_after():
    """The running DAG run's scheduled time (``run_after``), not the wall clock: a retry or a
    re-run of an old run sees the same period (claims, SLA month, MoH weeks). None outside a task."""
    from airflow.sdk import get_current_context

    try:
        return getattr(get_current_context().get("dag_run"), "run_after", None)
    except Exception:  # not inside a running task (a direct call from a script or test)
        return None
