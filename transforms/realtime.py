"""Carry messages the MLLP listener stored (status ``received``) through the same loader as files.

Input: a warehouse engine and a ``Loader``. Output: each ``received`` row becomes ``loaded``,
``duplicate`` or ``quarantined`` in place (same row, same id: the ACK already sent refers to it).
Used by the ``mllp_realtime`` DAG; idempotent, since only ``received`` rows are picked up.
"""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .load import Counts, Incoming, Loader


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
        items = [Incoming(bytes(r[1]), r[2], r[3], None, None, [], r[0], str(r[5]) if r[5] is not None else None)
                 for r in rows]
        prepared = loader.prepare(items)
        for p, r in zip(prepared, rows):
            # The listener attributed the row (certificate or MSH-4); keep that attribution.
            if r[4] and r[4] != "UNKNOWN":
                p.facility = r[4]
        with engine.begin() as conn:
            total.add(loader.write(conn, prepared))
        loader.flush_alerts(engine)
    return total
