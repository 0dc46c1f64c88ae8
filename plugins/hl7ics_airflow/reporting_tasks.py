"""Task bodies of the ``moh_reporting`` DAG and the IDSR immediate-notification check (run by
``interface_monitoring`` every 5 minutes). Small JSON-able values in and out."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from hl7ics_airflow.runtime import settings


def build_weeks(as_of: date | datetime | None = None) -> dict:
    """The previous ISO week (final once its deadline passed) and the current one (daily refresh),
    of ``as_of`` (the DAG run's scheduled time; default today)."""
    from transforms.reporting import IdsrConfig, build
    from transforms.warehouse import get_engine

    s = settings()
    today = as_of.date() if isinstance(as_of, datetime) else as_of or datetime.now(timezone.utc).date()
    r = build(get_engine(s.warehouse_url), IdsrConfig.load(s.config_dir / "idsr.yaml"),
              today - timedelta(days=7), today)
    return {"weeks": r.weeks, "cases": r.cases, "rows": r.rows}


def notify_immediate() -> dict:
    """Alert once per immediately notifiable disease x facility x week (facility and district only)."""
    from transforms.alerting import Alert, Alerter
    from transforms.reporting import IdsrConfig, immediate_cases, record_notifications
    from transforms.warehouse import get_engine, utcnow

    from hl7ics_airflow.alerts import resolve_connection

    s = settings()
    cfg = IdsrConfig.load(s.config_dir / "idsr.yaml")
    engine = get_engine(s.warehouse_url)
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    found = immediate_cases(engine, cfg, now)
    if found:
        alerter = Alerter(engine, None, resolve_connection)
        for c in found:
            name = cfg.disease(c["disease"])
            alerter.fire(Alert(key=f"idsr:{c['disease']}:{c['facility_code']}:{c['iso_week']}", kind="idsr_immediate",
                               severity="critical", facility_code=c["facility_code"], dag_id="interface_monitoring",
                               params={"disease": f"{name.name_fr} / {name.name_en}", "facility_code": c["facility_code"],
                                       "district": c["district"], "cases": c["cases"]}), now=now)
        record_notifications(engine, found, utcnow())
    closed = close_past_notices(Alerter(engine, None, resolve_connection), now)
    return {"notified": [f"{c['disease']}:{c['facility_code']}:{c['iso_week']}" for c in found], "closed": closed}


def close_past_notices(alerter, now: datetime) -> int:
    """Close, without a message, the ``idsr:...:<ISO week>`` notices of weeks before last week:
    each is a notice, not a problem that resolves, and left open they filled the open alerts."""
    from transforms.reporting import iso_week

    last_week = iso_week(now.date() - timedelta(days=7))
    closed = 0
    for key in alerter.open_keys("idsr:"):
        if key.rsplit(":", 1)[-1] < last_week and alerter.resolve(key, now, notify=False):
            closed += 1
    return closed
