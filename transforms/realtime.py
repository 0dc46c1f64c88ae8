"""Carry messages the MLLP listener stored (status ``received``) through the same loader as files.

Input: a warehouse engine and a ``Loader``. Output: each ``received`` row becomes ``loaded``,
``duplicate`` or ``quarantined`` in place (same row, same id: the ACK already sent refers to it).
Used by the ``mllp_realtime`` DAG; idempotent, since only ``received`` rows are picked up, and
two loops at once write each row once (claimed in the write transaction).
"""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .load import Counts, Incoming, Loader, claim


def count_received(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM message_store WHERE status = 'received'")).scalar_one()


def oldest_received_at(engine: Engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT MIN(received_at) FROM message_store WHERE status = 'received'")).scalar()


def process_received(engine: Engine, loader: Loader, batch: int = 2000, max_batches: int = 50) -> Counts:
    total = Counts()
    for _ in range(max_batches):
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT id, raw, source, source_ref, facility_code, received_at FROM message_store "
                "WHERE status = 'received' ORDER BY id LIMIT :n"), {"n": batch}).all()
        if not rows:
            break
        # The listener attributed each row (MSH-4, checked against the client certificate when
        # there is one). A configured facility is the message's origin from the start, so its facts,
        # charset fallback and time zone follow it; any other code loads as UNKNOWN, facts and
        # message_store alike, as it would from a file.
        items = [Incoming(bytes(r[1]), r[2], r[3], r[4] if r[4] in loader.facilities else None, None, [], r[0],
                          str(r[5]) if r[5] is not None else None) for r in rows]
        prepared = loader.prepare(items)
        with engine.begin() as conn:
            # Only rows still waiting are written: another loop (a stalled task whose retry has
            # started, say) may have processed some; it waits here for ours, or we for its.
            waiting = claim(conn, "received", [p.item.message_id for p in prepared])
            total.add(loader.write(conn, [p for p in prepared if p.item.message_id in waiting]))
        loader.flush_alerts(engine)
    return total
