"""
### mllp_realtime

Always on. Carries the messages the MLLP listener (``hl7ics listen``) stored durably through the
same parse → load code as the batch DAG, in micro-batches: a deferrable sensor waits in the
triggerer (no worker slot) until ``received`` messages exist or a minute passes, then one task
marks them ``loaded``, ``duplicate`` or ``quarantined``.

*Toujours actif : charge dans l'entrepôt les messages reçus en temps réel par le récepteur MLLP,
par micro-lots, avec le même code que l'ingestion par fichiers.*

- Schedule ``@continuous`` with ``max_active_runs=1`` (needs the scheduler; ``dag.test()`` runs once).
- Failures write an ``ops_alert`` row; I/O errors retry, bad data fails at once.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, get_current_context, task
from hl7ics_airflow import ingest_tasks
from hl7ics_airflow.alerts import on_dag_failure, on_dag_success
from hl7ics_airflow.policies import default_args
from hl7ics_airflow.sensors import ReceivedMessagesSensor

DEFAULT_ARGS = default_args()


@dag(
    dag_id="mllp_realtime",
    schedule="@continuous",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["hl7ics", "mllp", "realtime"],
    doc_md=__doc__,
    on_failure_callback=on_dag_failure,
    on_success_callback=on_dag_success,
)
def mllp_realtime():
    waiting = ReceivedMessagesSensor(task_id="wait_for_received", poll_seconds=2, max_wait_seconds=60)

    @task
    def load_received() -> dict:
        return ingest_tasks.process_received(get_current_context()["run_id"])

    waiting >> load_received()


mllp_realtime()
