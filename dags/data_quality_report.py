"""
### data_quality_report

Rebuilds the per-day data-quality table ``dq_daily`` from the loads' ``dq_result`` counts, then
writes a static bilingual HTML report (all facilities, and one page per facility with charts of the
daily failure rate and the failed rows per expectation) under
``<HL7ICS_DATA_DIR>/reports/dq/<day>/``, ``<day>`` being the last day reported on (for the midnight run,
the day that just ended).

*Recalcule la table quotidienne de qualité des données ``dq_daily`` à partir des comptages
``dq_result`` des chargements, puis écrit un rapport HTML autonome et bilingue (toutes les
formations, et une page par formation avec les graphiques du taux d'échec quotidien et des lignes
en échec par règle).*

- Schedule: daily (``HL7ICS_DQ_REPORT_SCHEDULE`` to change), no catch-up, one run at a time.
- Window: the days of the data interval plus the 7 days before (late batches); the report shows
  the last 30 days.
- Idempotent: each day of ``dq_daily`` is replaced in one transaction; re-running rewrites the
  same pages. Failures write an ``ops_alert`` row. Counts only, never patient data.
"""
from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag, get_current_context, task
from hl7ics_airflow import dq_tasks
from hl7ics_airflow.alerts import on_dag_failure, on_dag_success
from hl7ics_airflow.policies import default_args

DEFAULT_ARGS = default_args()


@dag(
    dag_id="data_quality_report",
    schedule=os.environ.get("HL7ICS_DQ_REPORT_SCHEDULE", "@daily"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["hl7ics", "data-quality"],
    doc_md=__doc__,
    on_failure_callback=on_dag_failure,
    on_success_callback=on_dag_success,
)
def data_quality_report():
    @task
    def rebuild_daily() -> dict:
        ctx = get_current_context()
        dag_run = ctx.get("dag_run")
        return dq_tasks.rebuild(ctx.get("data_interval_start"), ctx.get("data_interval_end"),
                                getattr(dag_run, "run_after", None))

    @task
    def render_report(rebuilt: dict) -> dict:
        return dq_tasks.render(rebuilt)

    render_report(rebuild_daily())


data_quality_report()
