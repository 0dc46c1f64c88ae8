"""
### route_and_deliver

Every minute: routes the messages loaded since the last run through the rules of
``config/routes.yaml`` into the durable outbound queue (``outbound_queue``; each hop traced in
``message_route``, messages with an unmapped code held in ``route_review``), then delivers what is
due to each destination (MLLP with TLS or mutual TLS waiting for the ACK, folder, SFTP,
RabbitMQ). Order is kept per destination and patient; a failing message is retried with
exponential backoff and, after ``max_attempts``, becomes a dead letter with an ``outbound_dead``
alert, without holding back other patients. ``hl7ics outbound status`` shows the queue and
``hl7ics outbound retry ID|--dead-letter`` requeues.

*Livraison sortante, toutes les minutes : les messages chargés depuis la dernière exécution sont
routés selon ``config/routes.yaml`` vers la file d'envoi durable (chaque étape tracée dans
``message_route`` ; un code sans correspondance met le message en revue dans ``route_review``),
puis envoyés aux destinations (MLLP avec TLS ou TLS mutuel et attente de l'accusé, dossier, SFTP,
RabbitMQ). L'ordre est conservé par destination et par patient ; un message en échec est
réessayé avec un délai croissant puis, après ``max_attempts``, mis en lettre morte avec une alerte
``outbound_dead``, sans bloquer les autres patients.*

- Schedule: every minute (``HL7ICS_ROUTING_SCHEDULE``), no catch-up, one run at a time.
- ``deliver`` runs even when ``route`` failed: what is already queued still goes out.
- Idempotent: a message is routed once; an acknowledged message is never sent again. A crash
  mid-send may send one message twice (HL7 at-least-once): receivers de-duplicate on MSH-10.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import dag, task
from hl7ics_airflow import routing_tasks
from hl7ics_airflow.alerts import on_dag_failure, on_dag_success
from hl7ics_airflow.policies import default_args

# A retry a minute later would meet the next scheduled run: retry sooner.
DEFAULT_ARGS = {**default_args(), "retry_delay": timedelta(seconds=15)}


@dag(
    dag_id="route_and_deliver",
    schedule=os.environ.get("HL7ICS_ROUTING_SCHEDULE", "* * * * *"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    default_args=DEFAULT_ARGS,
    tags=["hl7ics", "routing", "outbound"],
    doc_md=__doc__,
    on_failure_callback=on_dag_failure,
    on_success_callback=on_dag_success,
)
def route_and_deliver():
    @task
    def route() -> dict:
        return routing_tasks.route_messages()

    @task(trigger_rule="all_done")
    def deliver() -> dict:
        return routing_tasks.deliver_messages()

    route() >> deliver()


route_and_deliver()
