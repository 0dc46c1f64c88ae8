"""
### facility_batch_ingest

Pulls each facility's HL7 v2 files from its configured sources (``config/facilities.yaml``) into
a staging area under their content hash, stores every message raw in ``message_store``, loads the warehouse facts, archives the files and
records a per-run summary in ``ingest_run``.

*Récupère les fichiers HL7 de chaque formation sanitaire, stocke chaque message brut, alimente
l'entrepôt, archive les fichiers et enregistre un résumé par exécution.*

- Schedule: every 15 minutes (``HL7ICS_INGEST_SCHEDULE`` to change), no catch-up, one run at a time.
- One mapped task per facility at each step (map index = facility code).
- Every batch is checked against the data-quality suites (``expectations/``): failing rows are
  quarantined with the expectation's name, and a batch past ``HL7ICS_DQ_MAX_FAILURE_RATE`` is held
  and fails its facility's ``load`` task.
- Bad data fails at once (no retry); I/O errors retry. Failures write an ``ops_alert`` row, and
  ``run_outcome`` marks the run failed when any facility's task failed.
- Idempotent: files are tracked by content SHA-256, messages by (source, position).
"""
from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import TriggerRule, dag, get_current_context, task
from hl7ics_airflow import ingest_tasks
from hl7ics_airflow.alerts import on_dag_failure, on_dag_success
from hl7ics_airflow.policies import default_args

DEFAULT_ARGS = default_args()


@dag(
    dag_id="facility_batch_ingest",
    schedule=os.environ.get("HL7ICS_INGEST_SCHEDULE", "*/15 * * * *"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["hl7ics", "ingest"],
    doc_md=__doc__,
    on_failure_callback=on_dag_failure,
    on_success_callback=on_dag_success,
)
def facility_batch_ingest():
    @task
    def facilities() -> list[str]:
        return ingest_tasks.facility_codes()

    @task(map_index_template="{{ facility }}")
    def pull(facility: str) -> dict:
        ctx = get_current_context()
        ctx["facility"] = facility
        return ingest_tasks.pull(facility, ctx["run_id"])

    @task(map_index_template="{{ facility }}")
    def load(pulled: dict) -> dict:
        ctx = get_current_context()
        ctx["facility"] = pulled["facility"]
        return ingest_tasks.load(pulled, ctx["run_id"])

    @task(map_index_template="{{ facility }}")
    def archive(loaded: dict) -> dict:
        ctx = get_current_context()
        ctx["facility"] = loaded["facility"]
        return ingest_tasks.archive(loaded, ctx["run_id"])

    @task(trigger_rule=TriggerRule.ALL_DONE)  # one facility failing must not hide the others' counts
    def summarize(archived: list[dict], codes: list[str]) -> list[dict]:
        return ingest_tasks.summarize(get_current_context()["run_id"], codes)

    @task(trigger_rule=TriggerRule.ONE_FAILED)  # summarize always succeeds; this keeps a failure visible
    def run_outcome() -> None:
        ingest_tasks.fail_run()

    codes = facilities()
    archived = archive.expand(loaded=load.expand(pulled=pull.expand(facility=codes)))
    [archived, summarize(archived, codes)] >> run_outcome()


facility_batch_ingest()
