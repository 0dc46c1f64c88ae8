"""
### insurer_claims_extract_&lt;insurer&gt;

One DAG per insurer of ``config/insurers.yaml`` (INAM, CNSS, private insurers), on the insurer's
schedule: rebuilds the insurer's claims from the facilities' DFT charges and IN1 coverage (one claim
per facility and visit), writes the extract of the period that just ended (Parquet and/or CSV, a
manifest with totals and checksums, a French summary) under
``<HL7ICS_DATA_DIR>/claims/<insurer>/<period>/v<N>/``, then delivers it (outbox folder or SFTP
through the Airflow connection named in the configuration). Claims not ready in time (visit still
open, or charges dated within ``ready_after_days``) go into the next period's extract.

*Un DAG par assureur : recalcule les demandes de remboursement à partir des actes facturés (DFT) et
de la couverture (IN1), écrit l'extrait de la période qui vient de se terminer (Parquet et/ou CSV,
manifeste avec totaux et empreintes, résumé en français), puis le dépose (dossier de sortie ou SFTP).
Une demande pas encore prête part dans l'extrait suivant.*

- Schedule: the insurer's ``schedule`` (UTC); no catch-up, one run at a time.
- Idempotent: a re-run rewrites byte-identical files and does not deliver twice.
- Corrections (a sent claim whose charges changed) are issued by a person with a reason:
  ``hl7ics claims extract --insurer CODE --period P --reason "..."`` (version N+1 of the period);
  the extract task counts the corrections due. *Les corrections sont émises avec un motif.*
- Minimum necessary: no patient name, ID or pseudonym in the files; only the insurer's columns.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task
from hl7ics_airflow import claims_tasks
from hl7ics_airflow.alerts import on_dag_failure, on_dag_success
from hl7ics_airflow.policies import default_args
from hl7ics_airflow.runtime import run_after


def _doc(ins) -> str:
    where = ins.delivery["path"] if ins.delivery["type"] == "outbox" else \
        f"sftp (connection {ins.delivery['conn_id']}) {ins.delivery['path']}"
    return (__doc__ + f"\n\n**{ins.code}** — {ins.name}: {ins.period} periods, schedule ``{ins.schedule}``, "
            f"ready {ins.ready_after_days} days after the last charge, formats {', '.join(ins.formats)}, "
            f"{len(ins.facilities)} contracted facilities, delivery to {where}.")


def _claims_dag(ins):
    code = ins.code

    @dag(
        dag_id=ins.dag_id,
        schedule=ins.schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=default_args(),
        tags=["hl7ics", "claims", "insurer", code.lower()],
        doc_md=_doc(ins),
        on_failure_callback=on_dag_failure,
        on_success_callback=on_dag_success,
    )
    def insurer_claims_extract():
        @task
        def build_claims() -> dict:
            return claims_tasks.build(code, run_after())

        @task
        def extract_period(built: dict) -> dict:
            return claims_tasks.extract(code, run_after())

        @task
        def deliver(extracted: dict) -> dict:
            return claims_tasks.deliver(code, extracted)

        deliver(extract_period(build_claims()))

    return insurer_claims_extract()


for _ins in claims_tasks.insurers_for_dags():
    globals()[_ins.dag_id] = _claims_dag(_ins)
