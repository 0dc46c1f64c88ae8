"""
### interface_monitoring

Every 5 minutes: refreshes the hourly volume rollup, computes the health of every interface
(facility × source × message type: volume against the usual for this hour of the week,
quarantine rate, silence, ACK latency percentiles from the listener, backlog of stored but not yet
loaded messages), writes ``interface_health`` and alerts through the alerting path: a facility
silent beyond its expected interval during its working hours, quarantine spikes, ACK p95 above the
SLA (2 s ADT, 5 s otherwise), backlog age, TLS certificates expiring within 30 days, disk usage.
Problems that cleared are resolved. It also raises the IDSR alert for immediately notifiable
diseases (cholera, measles, meningitis, VHF, ...) within one interval of their arrival.

*Toutes les 5 minutes : santé de chaque interface (volume par rapport à l'habituel, taux de
quarantaine, silence, latence des accusés, file d'attente), table ``interface_health`` et alertes
(formation silencieuse pendant ses heures d'activité, pics de quarantaine, SLA des accusés,
certificats TLS, disque). Les problèmes disparus sont clos. Les maladies à notification immédiate
(choléra, rougeole, méningite, FHV…) déclenchent une alerte dès leur apparition.*

- Schedule: ``*/5 * * * *`` (``HL7ICS_MONITORING_SCHEDULE``), no catch-up, one run at a time.
- Thresholds: ``config/monitoring.yaml``; channels: ``config/alerting.yaml``.
- Idempotent: a re-run of a check replaces its rows; alerts are de-duplicated by key.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import dag, task
from hl7ics_airflow import monitoring_tasks, reporting_tasks
from hl7ics_airflow.alerts import on_dag_failure, on_dag_success
from hl7ics_airflow.policies import default_args

DEFAULT_ARGS = {**default_args(), "retry_delay": timedelta(seconds=30)}


@dag(
    dag_id="interface_monitoring",
    schedule=os.environ.get("HL7ICS_MONITORING_SCHEDULE", "*/5 * * * *"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    default_args=DEFAULT_ARGS,
    tags=["hl7ics", "monitoring"],
    doc_md=__doc__,
    on_failure_callback=on_dag_failure,
    on_success_callback=on_dag_success,
)
def interface_monitoring():
    # Health is judged at the time the check runs (wall clock), not at a logical date: a late
    # or re-run check must not report an old "now".
    @task
    def refresh_rollup() -> int:
        return monitoring_tasks.refresh_rollup()

    @task
    def check_interfaces(rows: int) -> dict:
        return monitoring_tasks.check_interfaces()

    @task
    def notify_immediate_diseases() -> dict:
        return reporting_tasks.notify_immediate()

    check_interfaces(refresh_rollup())
    notify_immediate_diseases()


interface_monitoring()
