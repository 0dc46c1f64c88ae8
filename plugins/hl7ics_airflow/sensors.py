"""Deferrable sensor: succeeds when the listener has ``received`` messages waiting to be loaded."""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import BaseOperator


class ReceivedMessagesSensor(BaseOperator):
    """Checks once; if nothing is waiting, defers to ``ReceivedMessagesTrigger`` (no worker slot held).
    Returns the number of waiting messages (0 when the wait interval ended empty)."""

    def __init__(self, poll_seconds: float = 2.0, max_wait_seconds: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.poll_seconds = poll_seconds
        self.max_wait_seconds = max_wait_seconds

    def execute(self, context):
        from hl7ics_airflow.runtime import settings
        from hl7ics_airflow.triggers import ReceivedMessagesTrigger

        from transforms.realtime import count_received
        from transforms.warehouse import get_engine

        url = settings().warehouse_url
        n = count_received(get_engine(url))
        if n:
            return n
        self.defer(trigger=ReceivedMessagesTrigger(self.poll_seconds, self.max_wait_seconds),
                   method_name="execute_complete", timeout=timedelta(seconds=self.max_wait_seconds * 2 + 60))

    def execute_complete(self, context, event=None):
        return (event or {}).get("received", 0)
