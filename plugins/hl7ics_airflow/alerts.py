"""Failure callbacks: every failed task or run writes an ``ops_alert`` row.

Inputs: the Airflow callback context. Output: one ``ops_alert`` row with DAG, task, run, facility
(the mapped task's facility, when there is one), error class and a link to the log. The exception
text is included only for the project's own exceptions, whose messages are written never to contain
patient data; any other exception is reduced to its class name.
"""
from __future__ import annotations

import logging

from sqlalchemy import text

log = logging.getLogger(__name__)
SAFE_MESSAGE_MODULES = ("transforms.",)


def _safe_message(exc: BaseException | None) -> tuple[str | None, str]:
    if exc is None:
        return None, "task failed"
    cls = type(exc)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls.__module__.startswith(SAFE_MESSAGE_MODULES):
        return name, str(exc).replace("\r", " ").replace("\n", " ")[:500]
    return name, f"{cls.__qualname__} raised (details in the task log)"


def record_alert(context: dict, severity: str = "error") -> None:
    from transforms.warehouse import get_engine, utcnow

    from hl7ics_airflow.runtime import settings

    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None)
    task_id = getattr(ti, "task_id", None)
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None)
    facility = None
    rendered = getattr(ti, "rendered_map_index", None)
    if rendered:
        facility = str(rendered)[:64]
    error_class, message = _safe_message(context.get("exception"))
    log_url = getattr(ti, "log_url", None)
    try:
        engine = get_engine(settings().warehouse_url)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO ops_alert (created_at, dag_id, task_id, run_id, facility_code, severity, error_class, "
                "message, log_url) VALUES (:t, :d, :k, :r, :f, :s, :c, :m, :u)"),
                {"t": utcnow(), "d": dag_id, "k": task_id, "r": run_id, "f": facility, "s": severity,
                 "c": error_class, "m": message, "u": log_url})
    except Exception:  # an alerting failure must never mask the original failure
        log.exception("could not record ops_alert for %s.%s", dag_id, task_id)


def on_task_failure(context: dict) -> None:
    record_alert(context, "error")


def on_dag_failure(context: dict) -> None:
    record_alert(context, "error")
