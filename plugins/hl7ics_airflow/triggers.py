"""Trigger for the ``mllp_realtime`` DAG: wait, without holding a worker slot, until the listener
has stored messages that are not loaded yet (or a short interval passes).

Runs in the triggerer (an asyncio loop), so the blocking database count goes to a thread.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ReceivedMessagesTrigger(BaseTrigger):
    def __init__(self, poll_seconds: float = 2.0, max_wait_seconds: float = 60.0):
        super().__init__()
        self.poll_seconds = poll_seconds
        self.max_wait_seconds = max_wait_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("hl7ics_airflow.triggers.ReceivedMessagesTrigger",
                {"poll_seconds": self.poll_seconds, "max_wait_seconds": self.max_wait_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from hl7ics_airflow.runtime import settings

        from transforms.realtime import count_received
        from transforms.warehouse import get_engine

        # Resolved here, in the triggerer, so the URL (and its password) is never serialised into
        # Airflow's trigger table.
        engine = get_engine(settings().warehouse_url)
        deadline = time.monotonic() + self.max_wait_seconds
        while True:
            n = await asyncio.to_thread(count_received, engine)
            if n or time.monotonic() >= deadline:
                yield TriggerEvent({"received": n})
                return
            await asyncio.sleep(self.poll_seconds)
