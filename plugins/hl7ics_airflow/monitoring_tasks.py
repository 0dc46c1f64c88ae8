"""Task bodies of the ``interface_monitoring`` and ``sla_monthly_report`` DAGs.

Small JSON-able inputs and outputs (counts, codes, paths); the work is in ``transforms.monitoring``
and ``transforms.sla``.
"""
from __future__ import annotations

from datetime import datetime, timezone

from hl7ics_airflow.runtime import settings


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def refresh_rollup() -> int:
    from transforms.monitoring import MonitoringConfig, refresh_rollup as run
    from transforms.warehouse import get_engine

    s = settings()
    cfg = MonitoringConfig.load(s.config_dir / "monitoring.yaml")
    return run(get_engine(s.warehouse_url), [f.code for f in s.facilities()], _now(), cfg)


def check_interfaces() -> dict:
    """Evaluate, store ``interface_health`` and alert (fire current problems, resolve cleared ones)."""
    from transforms.alerting import Alerter
    from transforms.monitoring import MonitoringConfig, apply_alerts, evaluate, store
    from transforms.warehouse import get_engine

    from hl7ics_airflow.alerts import resolve_connection

    s = settings()
    cfg = MonitoringConfig.load(s.config_dir / "monitoring.yaml")
    if not cfg.disk_paths:
        import dataclasses

        # Without a list, watch the disks the service itself fills: its home and the drop folders.
        cfg = dataclasses.replace(cfg, disk_paths=tuple(sorted({str(s.home), str(s.data_dir)})))
    engine = get_engine(s.warehouse_url)
    now = _now()
    result = evaluate(engine, s.facilities(), now, cfg)
    store(engine, result, cfg, now)
    alerter = Alerter(engine, None, resolve_connection)
    outcome = apply_alerts(alerter, result.problems, now, result.keep_open)
    statuses: dict[str, int] = {}
    for r in result.rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {"checked_at": result.checked_at, "interfaces": len(result.rows), "statuses": statuses,
            "problems": sorted(p.key for p in result.problems), "resolved": outcome["resolved"]}


def sla_report(month: str | None = None, as_of: datetime | None = None) -> dict:
    """The SLA report of ``month`` (default: the month before ``as_of``, the DAG run's scheduled
    time, else now)."""
    from transforms.sla import SlaConfig, compute, previous_month, write
    from transforms.warehouse import get_engine

    s = settings()
    month = month or previous_month((as_of or _now()).date())
    report = compute(get_engine(s.warehouse_url), month, SlaConfig.load(s.config_dir / "sla.yaml"), _now())
    paths = write(report, s.data_dir / "reports" / "sla", {f.code: f.name for f in s.facilities()})
    return {"month": month, "uptime": report.uptime, "paths": [str(p) for p in paths]}
