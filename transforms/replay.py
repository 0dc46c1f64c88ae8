"""Re-process quarantined messages after a fix (parser, mapping, configuration or suite).

Input: a warehouse engine and optional filters (reason code, facility). Output: each selected
message goes through the same ``Loader`` again, from its stored raw bytes; messages that now pass
become ``loaded`` (or ``duplicate``) and their quarantine rows get ``resolved_at``; messages that
still fail stay quarantined with their current reasons. Idempotent: a second replay finds nothing
new to do. ``dq_result`` is not added to: it counted these messages when they arrived. The
data-quality failure-rate threshold does not hold a replayed batch: each message is judged on its
own checks. Batch-envelope holds and the listener's refusals are only replayed when their reason is
named explicitly: releasing a truncated transfer, test data (MSH-11) or a message from a sender
its certificate does not allow is an operator's decision, not a default.
"""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .listener import REFUSED_REASONS
from .load import UNKNOWN_FACILITY, Counts, Incoming, Loader, claim
from .warehouse import utcnow

class KeptHold(NamedTuple):
    """A hold of EXPLICIT_ONLY carried through a replay for another reason: an issue like the
    parser's (it quarantines the message again), written back with the stage and detail it had."""

    code: str
    location: str
    message: str
    stage: str
    hl7_code: int = 207
    severity: str = "error"

    def as_dict(self) -> dict:
        return {"code": self.code, "location": self.location, "message": self.message, "hl7_code": self.hl7_code,
                "severity": self.severity, "stage": self.stage}


EXPLICIT_ONLY = ("BATCH_COUNT_MISMATCH", "BATCH_STRUCTURE", "BATCH_ENVELOPE", *REFUSED_REASONS)
BATCH = 1000


def replay(engine: Engine, loader: Loader, reason: str | None = None, facility: str | None = None) -> Counts:
    loader.count_quality = False  # dq_result counted these messages when they arrived
    loader.hold_batches = False  # each message is judged on its own checks (see Loader.hold_batches)
    where = ["q.resolved_at IS NULL", "m.status = 'quarantined'"]
    params: dict = {}
    if reason:
        where.append("q.reason = :reason")
        params["reason"] = reason
    else:
        where.append("m.id NOT IN (SELECT message_id FROM quarantine WHERE resolved_at IS NULL AND reason IN ("
                     + ", ".join(f"'{r}'" for r in EXPLICIT_ONLY) + "))")
    if facility:
        # Also its messages stored before it was configured: under UNKNOWN, named in MSH-4.
        where.append(f"(m.facility_code = :facility OR (m.facility_code = '{UNKNOWN_FACILITY}' "
                     f"AND m.sending_facility = :facility))")
        params["facility"] = facility
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text(
            f"SELECT DISTINCT m.id FROM message_store m JOIN quarantine q ON q.message_id = m.id "
            f"WHERE {' AND '.join(where)} ORDER BY m.id"), params)]
    total = Counts()
    for i in range(0, len(ids), BATCH):
        chunk = ids[i:i + BATCH]
        marks = ", ".join(f":i{j}" for j in range(len(chunk)))
        p = {f"i{j}": v for j, v in enumerate(chunk)}
        with engine.connect() as conn:
            rows = conn.execute(text(
                f"SELECT id, raw, source, source_ref, facility_code, file_sha256, received_at FROM message_store "
                f"WHERE id IN ({marks}) ORDER BY id"), p).all()
            holds = conn.execute(text(
                f"SELECT message_id, stage, reason, detail FROM quarantine WHERE resolved_at IS NULL AND message_id IN "
                f"({marks}) AND reason IN ({', '.join(repr(r) for r in EXPLICIT_ONLY)})"), p).all()
        # A hold of EXPLICIT_ONLY survives a replay for another reason: only naming it releases it.
        # The loader writes it back as it was (stage and detail), so its row does not change.
        kept: dict[int, list[KeptHold]] = {}
        for mid, stage, rsn, detail in holds:
            if rsn != reason:
                loc, _, why = (detail or "").partition(": ")
                kept.setdefault(mid, []).append(KeptHold(rsn, loc or "batch", why or "held until its reason is "
                                                         "named in a replay", stage))
        items = [Incoming(bytes(r[1]), r[2], r[3], r[4] if r[4] != "UNKNOWN" else None, r[5], kept.get(r[0], []),
                          r[0], str(r[6]) if r[6] is not None else None) for r in rows]
        prepared = loader.prepare(items)
        with engine.begin() as conn:
            # Another replay may have loaded some of these since they were read.
            still = claim(conn, "quarantined", chunk)
            prepared = [x for x in prepared if x.item.message_id in still]
            counts = loader.write(conn, prepared)
            now = utcnow()
            open_rows = conn.execute(text(
                f"SELECT id, message_id, stage, reason FROM quarantine WHERE resolved_at IS NULL "
                f"AND message_id IN ({marks})"), p).all()
            # A row is resolved when its message left quarantine or its reason no longer applies.
            done = [qid for qid, mid, stage, rsn in open_rows if mid in still
                    and (loader.outcomes[mid][0] != "quarantined" or (stage, rsn) not in loader.outcomes[mid][1])]
            if done:
                conn.execute(text("UPDATE quarantine SET resolved_at = :now WHERE id = :q"),
                             [{"now": now, "q": q} for q in done])
        total.add(counts)
        loader.flush_alerts(engine)
    return total
