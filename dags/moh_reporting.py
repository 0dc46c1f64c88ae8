"""
### moh_reporting

Builds the Ministry of Health's reporting tables from the warehouse facts: IDSR weekly counts per
disease, district, age band and sex (suspected, lab-confirmed, deaths), lab activity and
positivity, hospital activity (admissions, discharges, deaths, bed-days, length of stay),
immunisation doses per antigen, and reporting completeness and timeliness per facility. ISO weeks
(Monday to Sunday). Each run rebuilds the previous week (final once its deadline has passed) and
the current week (daily refresh). Statisticians read the ``moh_*`` tables (district level, age
bands, small cells suppressed); ``rpt_*`` is the restricted working level.

*Construit les tableaux du Ministère de la Santé : SIMR hebdomadaire par maladie, district, tranche
d'âge et sexe (suspects, confirmés, décès), activité de laboratoire, activité hospitalière,
vaccination, complétude et promptitude. Semaines ISO (lundi à dimanche) ; chaque exécution recalcule
la semaine précédente et la semaine en cours.*

- Schedule: daily at 05:00 UTC (``HL7ICS_REPORTING_SCHEDULE``), no catch-up, one run at a time.
- Disease rules: ``config/idsr.yaml``. Immediately notifiable diseases alert from
  ``interface_monitoring`` (every 5 minutes), not from here.
- Idempotent: the rebuilt weeks and months are replaced in one transaction.
"""
from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag, task
from hl7ics_airflow import reporting_tasks
from hl7ics_airflow.alerts import on_dag_failure, on_dag_success
from hl7ics_airflow.policies import default_args
from hl7ics_airflow.runtime import run_after


@dag(
    dag_id="moh_reporting",
    schedule=os.environ.get("HL7ICS_REPORTING_SCHEDULE", "0 5 * * *"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["hl7ics", "reporting", "moh"],
    doc_md=__doc__,
    on_failure_callback=on_dag_failure,
    on_success_callback=on_dag_success,
)
def moh_reporting():
    @task
    def build_weeks() -> dict:
        return reporting_tasks.build_weeks(run_after())

    build_weeks()


moh_reporting()
