"""Task and DAG callbacks: failures, retries and recoveries go through the alerting path.

Inputs: the Airflow callback context (task instance, DAG run, exception). Outputs: calls to
``transforms.alerting.Alerter`` on the warehouse (``ops_alert`` row, e-mail, webhook; throttled per
key, see docs/alerting.md):

- task failure: ``task_failed`` (error), key ``task:<dag_id>.<task_id>:<map label>`` where the map
  label is the rendered map index (the facility code for per-facility tasks), else the map index,
  else ``-``; task retry: ``task_retry`` (warning) on the same key, so a final failure escalates it;
  task success: resolves that key (one primary-key lookup when nothing is open);
- DAG run failure: ``dag_failed`` (error), key ``dag:<dag_id>``; DAG run success resolves it, and
  the open task problems of that DAG that did not occur in this run.

The exception text is included (as the ``detail`` param) only for the project's own exceptions,
whose messages are written never to contain patient data; any other exception is reduced to its
class name. A callback never raises: an alerting failure must not mask the task's own outcome, and
its log line carries only the key and an error class.

``resolve_connection`` looks connection ids up through the Task SDK (connections defined in
Airflow, environment variables or a secrets backend), falling back to ``AIRFLOW_CONN_<ID>`` read
without Airflow when no Task SDK context is available.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)
SAFE_MESSAGE_MODULES = ("transforms.",)
_LABEL = re.compile(r"[^A-Za-z0-9_.-]")


def _safe_message(exc: BaseException | None) -> tuple[str | None, str]:
    if exc is None:
        return None, "task failed"
    cls = type(exc)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls.__module__.startswith(SAFE_MESSAGE_MODULES):
        return name, str(exc).replace("\r", " ").replace("\n", " ")[:500]
    return name, f"{cls.__qualname__} raised (details in the task log)"


def resolve_connection(conn_id: str) -> dict | None:
    """Connection parameters (host, port, login, password, schema, extra, conn_type) or None."""
    from transforms.alerting import connection_from_env

    try:
        from airflow.sdk import Connection

        conn = Connection.get(conn_id)
    except Exception:  # not defined in Airflow, or no Task SDK context (a CLI, a test)
        return connection_from_env(conn_id)
    try:
        extra = conn.extra_dejson or {}
    except Exception:
        extra = {}
    return {"conn_type": conn.conn_type, "host": conn.host, "port": conn.port, "login": conn.login,
            "password": conn.password, "schema": conn.schema, "extra": extra}


def _ti(context: dict):
    return context.get("ti") or context.get("task_instance")


def _attr(obj, name: str):
    try:
        return getattr(obj, name, None)
    except Exception:  # computed properties (log_url) may need configuration that is missing
        return None


def map_label(ti) -> str:
    """The part of a task key that tells mapped instances apart: rendered map index, else the map
    index, else '-'."""
    rendered = _attr(ti, "rendered_map_index")
    if rendered not in (None, ""):
        return _LABEL.sub("_", str(rendered))[:64]
    idx = _attr(ti, "map_index")
    if isinstance(idx, int) and idx >= 0:
        return str(idx)
    return "-"


def task_key(dag_id: str | None, task_id: str | None, label: str = "-") -> str:
    return f"task:{dag_id}.{task_id}:{label}"


def dag_key(dag_id: str | None) -> str:
    return f"dag:{dag_id}"


def _dag_id(context: dict) -> str | None:
    ti, dag_run = _ti(context), context.get("dag_run")
    return _attr(context.get("dag"), "dag_id") or _attr(ti, "dag_id") or _attr(dag_run, "dag_id")


def _run_id(context: dict) -> str | None:
    ti, dag_run = _ti(context), context.get("dag_run")
    return context.get("run_id") or _attr(ti, "run_id") or _attr(dag_run, "run_id")


def _facility(ti) -> str | None:
    rendered = _attr(ti, "rendered_map_index")
    return str(rendered)[:64] if rendered else None


def alert_from_context(context: dict, kind: str, severity: str, dag_level: bool = False):
    """The ``Alert`` for a callback context (task-level, or DAG-level with ``dag_level``)."""
    from transforms.alerting import Alert

    ti = _ti(context)
    dag_id = _dag_id(context)
    exc = context.get("exception")
    error_class, detail = _safe_message(exc) if exc is not None else (None, None)
    params: dict = {}
    if exc is not None and type(exc).__module__.startswith(SAFE_MESSAGE_MODULES):
        params["detail"] = detail
    if kind == "task_retry" and isinstance(_attr(ti, "try_number"), int):
        params["try_number"] = _attr(ti, "try_number")
    if dag_level:
        reason = context.get("reason")
        if isinstance(reason, str) and re.fullmatch(r"[A-Za-z0-9_ .-]{1,64}", reason):
            params["reason"] = reason  # Airflow's own short code, e.g. "task_failure"
        key = dag_key(dag_id)
    else:
        key = task_key(dag_id, _attr(ti, "task_id"), map_label(ti))
    # A run fails as a whole: the facility of its last task would pin it on one facility (each
    # facility's failing task has its own alert).
    return Alert(key=key, kind=kind, severity=severity, facility_code=None if dag_level else _facility(ti),
                 dag_id=dag_id, task_id=_attr(ti, "task_id"), run_id=_run_id(context), error_class=error_class,
                 log_url=_attr(ti, "log_url"), params=params)


def _alerter():
    from transforms.alerting import Alerter
    from transforms.warehouse import get_engine

    from hl7ics_airflow.runtime import settings

    # config=None: alerting.yaml is read only when a message actually goes out.
    url = settings().warehouse_url
    try:
        engine = get_engine(url)
    except Exception:
        # Migrations need the database: an alert must still go out when the warehouse is down
        # (the Alerter then sends without throttling).
        engine = get_engine(url, migrate=False)
    return Alerter(engine, None, resolve_connection)


def record_alert(context: dict, severity: str = "error", kind: str | None = None,
                 dag_level: bool | None = None) -> str | None:
    """Fire the alert for a callback context; returns the alerter's decision, None on failure.
    Without ``kind``/``dag_level``, a context with no task instance is a DAG-level one."""
    if dag_level is None:
        dag_level = kind == "dag_failed" or (kind is None and _ti(context) is None)
    kind = kind or ("dag_failed" if dag_level else "task_failed")
    key = None
    try:
        alert = alert_from_context(context, kind, severity, dag_level=dag_level)
        key = alert.key
        return _alerter().fire(alert)
    except Exception as exc:  # an alerting failure must never mask the original failure
        log.error("could not record alert %s (%s)", key or kind, type(exc).__name__)
        return None


def _resolve(context: dict, key: str, alerter=None) -> bool:
    try:
        alerter = alerter or _alerter()
        return alerter.resolve(key, run_id=_run_id(context), log_url=_attr(_ti(context), "log_url"))
    except Exception as exc:
        log.error("could not resolve alert %s (%s)", key, type(exc).__name__)
        return False


def on_task_failure(context: dict) -> None:
    record_alert(context, "error", "task_failed")


def on_task_retry(context: dict) -> None:
    record_alert(context, "warning", "task_retry")


def on_task_success(context: dict) -> None:
    ti = _ti(context)
    _resolve(context, task_key(_dag_id(context), _attr(ti, "task_id"), map_label(ti)))


def on_dag_failure(context: dict) -> None:
    record_alert(context, "error", "dag_failed")


def on_dag_success(context: dict) -> None:
    """Resolve the DAG's key, and the problems of its tasks that last occurred in an earlier run: a
    task the scheduler skips in a good run (e.g. ``run_outcome``) never runs its own success
    callback, and would otherwise stay open for ever. A task that failed in this very run (a run
    can succeed past a failed task that is not a leaf) stays open."""
    dag_id, run_id = _dag_id(context), _run_id(context)
    try:
        alerter = _alerter()
        stale = [p["key"] for p in alerter.open_problems(f"task:{dag_id}.") if p["run_id"] != run_id]
    except Exception as exc:
        log.error("could not resolve alerts of %s (%s)", dag_key(dag_id), type(exc).__name__)
        return
    for key in [dag_key(dag_id), *stale]:
        _resolve(context, key, alerter)
