"""
### sla_monthly_report

On the 1st of each month: the previous month's SLA report (listener uptime, share of messages
acknowledged within 2 s for critical ADT and 5 s for the rest, unscheduled downtime), as CSV and
HTML under ``<HL7ICS_DATA_DIR>/reports/sla/``. ``hl7ics sla report --month YYYY-MM`` gives the
same by hand.

*Le 1er de chaque mois : rapport SLA du mois précédent (disponibilité du récepteur, part des
accusés de réception dans les délais, indisponibilité non planifiée), en CSV et HTML.*

- Schedule: ``0 6 1 * *`` (``HL7ICS_SLA_SCHEDULE``), no catch-up, one run at a time.
- Maintenance windows (scheduled downtime): ``config/sla.yaml``.
- Idempotent: the month's files are rewritten from the same data.
"""
from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag, task
from hl7ics_airflow import monitoring_tasks
from hl7ics_airflow.alerts import on_dag_failure, on_dag_success
from hl7ics_airflow.policies import default_args
from hl7ics_airflow.runtime import run_after


@dag(
    dag_id="sla_monthly_report",
    schedule=os.environ.get("HL7ICS_SLA_SCHEDULE", "0 6 1 * *"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["hl7ics", "monitoring", "sla"],
    doc_md=__doc__,
    on_failure_callback=on_dag_failure,
    on_success_callback=on_dag_success,
)
def sla_monthly_report():
    @task
    def write_report() -> dict:
        return monitoring_tasks.sla_report(None, run_after())

    write_report()


sla_monthly_report()
