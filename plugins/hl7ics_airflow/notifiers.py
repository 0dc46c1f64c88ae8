"""``HL7ICSNotifier``: the alerting path (docs/alerting.md) as an Airflow notifier object, for DAG
authors who prefer ``on_failure_callback=HL7ICSNotifier()`` to the plain callbacks of alerts.py.

Inputs: the callback context. Outputs: what the matching plain callback does (fire or resolve a
task or DAG key through ``transforms.alerting``). Use it as a task-level callback; at DAG level,
wrap it in a plain function, since a notifier used as a DAG callback fails under ``dags test``
(apache/airflow#64649): ``on_failure_callback=lambda ctx: HL7ICSNotifier(level="dag")(ctx)``.
"""
from __future__ import annotations

from airflow.sdk import BaseNotifier

from hl7ics_airflow import alerts


class HL7ICSNotifier(BaseNotifier):
    """``action``: "fire" (default) or "resolve"; ``level``: "task" or "dag"; ``kind`` and
    ``severity`` of the fired alert (defaults: task_failed / dag_failed, error)."""

    template_fields = ()

    def __init__(self, action: str = "fire", level: str = "task", kind: str | None = None,
                 severity: str = "error"):
        super().__init__()
        if action not in ("fire", "resolve") or level not in ("task", "dag"):
            raise ValueError("action must be 'fire' or 'resolve' and level 'task' or 'dag'")
        self.action, self.level, self.severity = action, level, severity
        self.kind = kind or ("dag_failed" if level == "dag" else "task_failed")

    def notify(self, context) -> None:
        if self.action == "resolve":
            (alerts.on_dag_success if self.level == "dag" else alerts.on_task_success)(context)
            return
        alerts.record_alert(context, self.severity, self.kind, dag_level=self.level == "dag")
