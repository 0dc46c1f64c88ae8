"""The always-on MLLP listener (``hl7ics listen``): receive, store durably, then acknowledge.

Inputs: TCP or TLS connections carrying MLLP frames; ``config/listener.yaml`` (limits, mutual-TLS
identities); the warehouse URL. Outputs: one ``message_store`` row per accepted or rejected
message (``received`` for the ``mllp_realtime`` DAG to load, ``quarantined`` with a reason when
refused), the ACK stored in ``mllp_ack`` and sent only after the commit, ``audit_event`` rows for
security events, Prometheus metrics, and structured logs without patient data.

The promise to senders: an AA/CA is never sent for a message that is not committed. A storage
failure answers AR (CE in enhanced mode) with HL7 error 207; a duplicate (same sending facility,
control ID and SHA-256) gets the stored ACK again, and the resend is stored too (every received
message has a row), with ``resend_of`` naming the original; the loader judges it like any copy.
Frames from all connections are committed in groups (one transaction, one fsync) to keep
throughput high.
"""
from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import os
import queue
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

from .ack import ERROR_TEXT, AckPlan, accept_ack_wanted, ack_mode, build_ack
from .config import ConfigError, only_keys, read_yaml
from .extract import to_record
from .facts import dedupe
from .load import MS_COLUMNS, content_sha256
from .mllp import Framer
from .parser import Message, parse
from .warehouse import Writer, get_engine, utcnow

log = logging.getLogger("hl7ics.listener")

# Parser error codes that make a message unacceptable at the protocol level (AR), with the HL7
# table 0357 code; other errors are content errors (AE) the loader quarantines.
# What the listener refuses (AR/CR) on its own judgement, besides the parse errors of _REJECT that the
# loader finds again. The sender was told the message was refused (and has usually resent it), so a
# replay releases these only when they are named (``replay.EXPLICIT_ONLY``).
REFUSED_REASONS = ("EMBEDDED_END_BLOCK", "EMPTY_MESSAGE", "ORPHAN_ACK", "CONTROL_ID_TOO_LONG", "PROCESSING_ID_REFUSED",
                   "UNSUPPORTED_MESSAGE_TYPE", "SEC-SENDER-MISMATCH")
_REJECT = {"MISSING_MSH": 100, "BAD_DELIMITERS": 102, "MISSING_MESSAGE_TYPE": 101, "MISSING_CONTROL_ID": 101,
           "MISSING_VERSION": 101, "UNSUPPORTED_VERSION": 203, "UNSUPPORTED_CHARSET": 203}


@dataclass
class ListenerConfig:
    host: str = "0.0.0.0"
    port: int = 2575
    metrics_port: int = 9102
    max_frame_bytes: int = 16 << 20
    frame_deadline_seconds: float = 30.0
    # A frame still arriving after the deadline goes on while each further deadline's worth of
    # time brings this rate: a large message on a slow link is not cut, a trickle (slowloris),
    # even after a burst, still is.
    frame_min_rate_bytes: int = 4096
    # 0x1C followed by nothing for this long ends the frame (a sender that never sends the CR and
    # waits for its ACK). Off by default: a frame cut by a 0x1C inside its content, the rest
    # delayed, would then be acknowledged short. Turn on only for a sender known to need it.
    end_block_pause_seconds: float = 0.0
    idle_timeout_seconds: float = 120.0
    handshake_timeout_seconds: float = 10.0
    max_connections: int = 1000
    max_connections_per_peer: int = 50
    lenient_end_block: bool = True
    group_commit_max: int = 256
    accepted_processing_ids: tuple = ("P",)
    certificate_facilities: dict = field(default_factory=dict)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    supported_types: frozenset = frozenset()
    heartbeat_seconds: float = 15.0  # uptime heartbeat and ACK-latency flush (monitoring, SLA)
    commit_parallel: int = 3  # PostgreSQL: group commits in flight at once (2-4 measured alike; 1 far slower)
    # A group commit that has not finished by then is answered AR/CE 207 (a database that stopped
    # answering must not hang the senders); if it did commit, a resend gets the stored ACK.
    commit_timeout_seconds: float = 10.0

    @classmethod
    def load(cls, path: str | os.PathLike | None, **overrides) -> "ListenerConfig":
        """Read ``listener.yaml`` (the ``listener:`` mapping), checked: an unknown key, a value of
        the wrong type or out of range is a ``ConfigError`` naming the file and key."""
        data: dict = {}
        where = str(path)
        if path and Path(path).is_file():
            doc = read_yaml(path, where) or {}
            data = (doc.get("listener") if isinstance(doc, dict) else None) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{where}: 'listener' must be a mapping")
            _check_listener(data, where)
        cfg = cls(**data)
        if isinstance(cfg.accepted_processing_ids, list):
            cfg.accepted_processing_ids = tuple(cfg.accepted_processing_ids)
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        return cfg


_FROM_FILE = ("host", "port", "metrics_port", "max_frame_bytes", "frame_deadline_seconds", "idle_timeout_seconds",
              "handshake_timeout_seconds", "max_connections", "max_connections_per_peer", "lenient_end_block",
              "group_commit_max", "accepted_processing_ids", "certificate_facilities", "tls_cert", "tls_key",
              "tls_client_ca", "heartbeat_seconds", "commit_parallel", "frame_min_rate_bytes",
              "commit_timeout_seconds", "end_block_pause_seconds")


def _check_listener(data: dict, where: str) -> None:
    def bad(key: str, what: str):
        raise ConfigError(f"{where}: listener.{key} must be {what}")

    only_keys(data, _FROM_FILE, where, "listener.")
    for key, v in data.items():
        default = ListenerConfig.__dataclass_fields__[key].default
        if key in ("port", "metrics_port"):
            if type(v) is not int or not 0 <= v <= 65535:
                bad(key, "a port number (0 to 65535)")
        elif type(default) is int:
            if type(v) is not int or v < 1:
                bad(key, "a positive integer")
        elif key == "end_block_pause_seconds":
            if type(v) not in (int, float) or not v >= 0:
                bad(key, "a number of seconds (0: off)")
        elif type(default) is float:
            if type(v) not in (int, float) or not v > 0:
                bad(key, "a positive number of seconds")
        elif type(default) is bool:
            if type(v) is not bool:
                bad(key, "true or false")
        elif key == "host":
            if not isinstance(v, str) or not v:
                bad(key, "a host name or address")
        elif key.startswith("tls_"):
            if v is not None and (not isinstance(v, str) or not v):
                bad(key, "a file path")
        elif key == "accepted_processing_ids":
            if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
                bad(key, "a list of MSH-11 codes, e.g. [P]")
        elif key == "certificate_facilities":
            # A single code instead of a list became a set of its letters: every message of that
            # certificate was then refused as a sender mismatch.
            if not isinstance(v, dict) or not all(
                    isinstance(cn, str) and isinstance(codes, list) and all(isinstance(c, str) and c for c in codes)
                    for cn, codes in v.items()):
                bad(key, "a mapping of certificate CN -> list of facility codes, e.g. {chu-so.hl7.sante.tg: [CHU-SO]}")


class Metrics:
    """Prometheus metrics in a registry of the listener's own (several listeners per test process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.messages = Counter("hl7ics_mllp_messages_total", "Messages received", ["facility", "outcome"],
                                registry=self.registry)
        self.latency = Histogram("hl7ics_mllp_ack_latency_seconds", "Frame end to ACK sent", ["facility"],
                                 buckets=(.001, .0025, .005, .01, .015, .025, .05, .1, .25, .5, 1, 2, 5, 10),
                                 registry=self.registry)
        self.connections = Gauge("hl7ics_mllp_open_connections", "Open connections", registry=self.registry)
        self.bytes = Counter("hl7ics_mllp_bytes_total", "Bytes received", registry=self.registry)
        self.frame_errors = Counter("hl7ics_mllp_frame_errors_total", "Framing problems", ["kind"],
                                    registry=self.registry)


# ACK latency buckets (upper bounds in ms; -1 = slower than the last): the SLA's 2 s and 5 s are
# bucket edges, so "acknowledged within" shares are exact, and percentiles are read to a bucket.
LATENCY_BUCKETS_MS = (5, 10, 15, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 30000)


class LatencyBook:
    """ACK latencies counted per minute, facility, message type and bucket, in memory until the
    next flush (a crash loses at most one heartbeat interval of statistics, never a message)."""

    def __init__(self):
        self.counts: dict[tuple, int] = {}
        self._minute = (-1, "")  # (epoch minute, its label): formatted once a minute, not per ACK

    def record(self, facility: str, message_type: str, seconds: float, at: float | None = None) -> None:
        ms = seconds * 1000.0
        bucket = -1
        for b in LATENCY_BUCKETS_MS:
            if ms <= b:
                bucket = b
                break
        m = int((at if at is not None else time.time()) // 60)
        if m != self._minute[0]:
            self._minute = (m, time.strftime("%Y-%m-%d %H:%M:00", time.gmtime(m * 60)))
        key = (self._minute[1], facility, message_type, bucket)
        self.counts[key] = self.counts.get(key, 0) + 1

    def take(self) -> dict[tuple, int]:
        out, self.counts = self.counts, {}
        return out


def _jlog(level: int, event: str, **fields) -> None:
    if log.isEnabledFor(level):
        # Values are ours (codes, counts, peers, control IDs), never message content; CR/LF are
        # removed so a hostile value cannot forge log lines (CWE-117).
        clean = {k: (str(v).replace("\r", " ").replace("\n", " ") if isinstance(v, str) else v)
                 for k, v in fields.items()}
        log.log(level, json.dumps({"event": event, **clean}, ensure_ascii=False))


@dataclass
class Pending:
    raw: bytes
    msg: Message | None
    rec: dict | None
    plan: AckPlan
    ack: bytes | None
    status: str  # received | quarantined (both stored) | ack_only (answered, not stored)
    reasons: list[tuple[str, str]]
    facility: str | None
    future: asyncio.Future | None = None
    csha: str = ""
    resend_of: "int | Pending | None" = None  # the stored original's id, or an original in the same group
    ack_code: str | None = None  # MSA-1 of ``ack`` when it is a stored one (else the plan's)


class GroupCommitter:
    """Commits queued messages from every connection in one transaction per group (SQLite in a
    thread, since its driver blocks; PostgreSQL on the event loop, with psycopg's async
    connections), and resolves each message's future only after the commit."""

    def __init__(self, engine, max_group: int, loop: asyncio.AbstractEventLoop, parallel: int = 2,
                 timeout: float = 10.0):
        self.engine = engine
        self.timeout = timeout
        self.max_group = max_group
        self.loop = loop
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.instance = uuid.uuid4().hex[:12]
        self.seq = itertools.count(1)  # next() is atomic: two commit threads never share a ref
        self.task: asyncio.Task | None = None
        # PostgreSQL: several groups in flight, so one group's work overlaps the others' round
        # trips and commits. SQLite allows one writer at a time; a second group would only wait.
        self.parallel = max(1, parallel) if engine.dialect.name == "postgresql" else 1
        self._pg_pool: list = []  # PostgreSQL connections between groups

    def start(self) -> None:
        self.task = self.loop.create_task(self._run())

    async def close(self) -> None:
        """Close the kept PostgreSQL connections (groups still in flight return theirs later)."""
        while self._pg_pool:
            try:
                await self._pg_pool.pop().close()
            except Exception:
                pass  # shutting down: a connection already broken needs no goodbye

    async def submit(self, p: Pending):
        p.future = self.loop.create_future()
        p.csha = content_sha256(p.raw)
        await self.queue.put(p)
        return await p.future

    @staticmethod
    def _key(p: Pending) -> tuple | None:
        """What makes a later message a resend of ``p``; None when nothing can (no control ID, an
        ACK). Refused messages have one too: a sender stuck resending one is resending."""
        if p.rec and p.rec.get("control_id") and p.status in ("received", "quarantined"):
            return p.rec.get("sending_facility"), p.rec["control_id"], p.csha
        return None

    @classmethod
    def _keys(cls, group: list[Pending]) -> set[tuple]:
        return {k for k in map(cls._key, group) if k is not None}

    async def _run(self) -> None:
        inflight: dict[asyncio.Task, set[tuple]] = {}
        while True:
            first = await self.queue.get()
            group = [first]
            while len(group) < self.max_group and not self.queue.empty():
                group.append(self.queue.get_nowait())
            keys = self._keys(group)
            # A duplicate must see the earlier copy committed: a group sharing a key with one in
            # flight waits for it, and so does any group once the in-flight limit is reached.
            while inflight and (len(inflight) >= self.parallel or any(keys & k for k in inflight.values())):
                done, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    inflight.pop(t, None)
            inflight[self.loop.create_task(self._commit_group(group))] = keys

    async def _commit_group(self, group: list[Pending]) -> None:
        try:
            # A SQLite thread cannot be stopped: it may still commit after the timeout, and then
            # the sender's resend is answered with the stored ACK (never an AA before a commit).
            async with asyncio.timeout(self.timeout):
                if self.engine.dialect.name == "postgresql":
                    results = await self._commit_pg(group)
                else:
                    results = await asyncio.to_thread(self._commit, group)
        except Exception as exc:
            _jlog(logging.ERROR, "storage_failure", error=type(exc).__name__, messages=len(group))
            for p in group:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, r in zip(group, results):
            if not p.future.done():
                p.future.set_result(r)

    def _commit(self, group: list[Pending]) -> list[tuple[str, bytes | None]]:
        """SQLite, in a thread: returns per message ("stored", ack) or ("duplicate", stored_ack)."""
        with self.engine.begin() as conn:
            w = Writer(conn)
            keys = self._keys(group)
            rows = [r for sql, params in self._lookups(keys) for r in w.query(sql, params)]
            out, to_store = self._decide(group, self._match(rows, keys))
            self._write(w.copy, to_store, w.allocate_ids("message_store", len(to_store)))
        return out

    async def _commit_pg(self, group: list[Pending]) -> list[tuple[str, bytes | None]]:
        """The same commit on PostgreSQL, on the event loop (psycopg's async connections, kept by
        the committer, in autocommit mode), in two round trips: (1) the duplicate lookup and the
        id reservation in one query, (2) all the inserts in one statement, which is its own
        transaction (one commit, one fsync).

        Why not a thread as for SQLite: a commit thread needs the GIL back after every round
        trip while the event loop holds it; measured, a two-message commit then took 2.3 ms
        instead of 0.5. Through SQLAlchemy, with COPY, a group took seven round trips."""
        import psycopg

        try:
            pg = self._pg_pool.pop()
        except IndexError:
            pg = await psycopg.AsyncConnection.connect(
                self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                autocommit=True, connect_timeout=max(1, int(self.timeout)))
        try:
            # One id per message of the group: ids of duplicates are left unused (sequence gaps
            # are harmless) so that the lookup and the reservation share a round trip.
            keys = self._keys(group)
            parts = [(f"SELECT *, NULL::bigint FROM ({sql}) AS found", params) for sql, params in self._lookups(keys)]
            parts.append(("SELECT NULL::bigint, NULL, NULL, NULL, NULL, NULL, NULL::bytea, "
                          "nextval('message_store_id_seq') "
                          "FROM generate_series(1, ?)", [len(group)]))
            cur = await pg.execute(" UNION ALL ".join(sql for sql, _ in parts).replace("?", "%s"),
                                   [v for _, params in parts for v in params])
            found, ids = [], []
            for *row, mid in await cur.fetchall():
                if mid is None:
                    found.append(row)
                else:
                    ids.append(mid)
            ids.sort()
            out, to_store = self._decide(group, self._match(found, keys))
            docs: dict[str, str] = {}

            def stage(table, columns, rows):
                # The rows travel as one JSON parameter per table: json.dumps is C, where
                # psycopg would adapt every value in Python, and the statement text never changes.
                docs[table] = json.dumps([dict(zip(columns, r)) for r in rows], default=_json_bytea)

            self._write(stage, to_store, ids)
            # Data-modifying CTEs: one statement, so one transaction in autocommit mode. The
            # foreign key from mllp_ack is checked at the end of the statement.
            await pg.execute(
                "WITH m AS (" + _insert_json("message_store", STORE_COLUMNS) + "), "
                "a AS (" + _insert_json("mllp_ack", ACK_COLUMNS) + ") "
                + _insert_json("quarantine", QUARANTINE_COLUMNS),
                (docs["message_store"], docs["mllp_ack"], docs["quarantine"]))
        except BaseException:
            try:
                await pg.close()  # never hand a connection in an unknown state to the next group
            except Exception:
                pass
            raise
        self._pg_pool.append(pg)
        return out

    @staticmethod
    def _lookups(keys: set[tuple]) -> list[tuple[str, list]]:
        """Queries (``?`` placeholders) for the stored originals of the group's messages
        (``_keys``): rows of (id, sending facility, control ID, content hash, status, stored ACK's
        code, stored ACK)."""
        cids = sorted({k[1] for k in keys if k[1]})
        # IN lists, not Writer.query_in's = ANY(array): measured on PostgreSQL, the array form
        # cost the listener a fifth of its throughput and doubled its paced p99 (the loader's
        # lookups of thousands of IDs are the other way round).
        return [(
            # Scalar subqueries, not a join: with stale statistics PostgreSQL chose to hash-join
            # the whole mllp_ack table on every group commit.
            "SELECT m.id, m.sending_facility, m.control_id, COALESCE(m.content_sha256, m.sha256), m.status, "
            "(SELECT a.ack_code FROM mllp_ack a WHERE a.message_id = m.id), "
            "(SELECT a.ack FROM mllp_ack a WHERE a.message_id = m.id) "
            # Resends are left out (their original is found itself): a sender stuck resending
            # one message would otherwise make every lookup longer.
            # A resend is of an earlier MLLP copy; one that came in a file is the loader's duplicate.
            "FROM message_store m WHERE m.control_id IN ("
            + ", ".join("?" * len(chunk)) + ") AND m.resend_of IS NULL AND m.source = 'mllp'", chunk)
            for chunk in (cids[i:i + 500] for i in range(0, len(cids), 500))]

    @staticmethod
    def _match(rows: list[tuple], keys: set[tuple]) -> dict[tuple, tuple[int, bytes | None, str | None]]:
        """key -> (the first stored original's id, the stored ACK a resend gets and its code, or
        None for an answer of its own).

        The stored ACK is a live copy's (waiting or loaded). A resend of a message that is
        quarantined is judged anew, as it was the first time: the sender may have fixed it, or
        we the configuration. A refusal (AR/CR) stored with a copy that a replay has since loaded
        is not sent again: that message is accepted now."""
        found: dict[tuple, list[tuple]] = {}
        for mid, sf, cid, sha, status, code, ack in rows:
            if (sf, cid, sha) in keys:
                found.setdefault((sf, cid, sha), []).append((mid, status, code, ack))
        existing: dict[tuple, tuple[int, bytes | None, str | None]] = {}
        for key, copies in found.items():
            copies.sort(key=lambda c: c[0])
            live = [c for c in copies if c[1] != "quarantined" and c[3] is not None]
            ack = code = None
            if live and not (live[0][1] == "loaded" and live[0][2] in ("AR", "CR")):
                ack, code = bytes(live[0][3]), live[0][2]
            existing[key] = (copies[0][0], ack, code)
        return existing

    @classmethod
    def _decide(cls, group: list[Pending], existing: dict[tuple, tuple[int, bytes | None, str | None]]):
        """Per message: ("duplicate", the ACK sent) or ("stored", its ACK); and the messages to store.

        A resend is stored like every received message (one row each, as a file's copies are),
        with ``resend_of`` naming its original, and the ACK it was sent. An accepted one waits as
        ``received``, and the loader judges it by the one rule for every source (only a loaded copy
        makes a duplicate). It gets its original's stored ACK when there is one (see ``_match``)."""
        out: list[tuple[str, bytes | None]] = []
        to_store: list[Pending] = []
        seen: dict[tuple, Pending] = {}
        for p in group:
            key = cls._key(p)
            if key in existing or key in seen:
                if key in existing:
                    first, stored, code = existing[key]
                else:
                    first = seen[key]
                    stored, code = (first.ack, first.plan.code) if first.status == "received" else (None, None)
                p.resend_of = first
                if p.status == "received" and stored is not None:
                    p.ack, p.ack_code = stored, code
                out.append(("duplicate", p.ack))
            else:
                if key:
                    seen[key] = p
                out.append(("stored", p.ack))
            to_store.append(p)
        return out, to_store

    def _write(self, insert, to_store: list[Pending], ids: list[int]) -> None:
        """``insert(table, columns, rows)`` the stored messages, their ACKs and quarantine reasons."""
        now = utcnow()
        rows, acks, quarantine = [], [], []
        mids = {id(p): mid for p, mid in zip(to_store, ids)}
        for p, mid in zip(to_store, ids):
            seq = next(self.seq)
            r = p.rec or {}
            of = mids[id(p.resend_of)] if isinstance(p.resend_of, Pending) else p.resend_of
            rows.append((mid, p.facility or "UNKNOWN", r.get("sending_facility"), r.get("sending_application"),
                         r.get("control_id"), r.get("message_type"), r.get("trigger_event"), r.get("version"),
                         None, now, "mllp", f"mllp:{self.instance}:{seq}", None,
                         r.get("sha256") or _sha(p.raw), p.raw, len(p.raw), r.get("charset"), p.status,
                         "; ".join(f"{c}@{loc}" for c, loc in p.reasons) or None, None, now, p.csha, of))
            if p.ack is not None:  # the ACK this copy was sent (a resend's may be its original's)
                acks.append((mid, p.ack_code or p.plan.code or "", p.ack, now))
            for code, loc in p.reasons:
                if p.status == "quarantined":
                    quarantine.append((mid, "listener", code, f"{loc}: refused by the listener", now))
        insert("message_store", STORE_COLUMNS, rows)
        insert("mllp_ack", ACK_COLUMNS, acks)
        insert("quarantine", QUARANTINE_COLUMNS, dedupe(quarantine, (0, 1, 2)))


STORE_COLUMNS = MS_COLUMNS + ("resend_of",)
ACK_COLUMNS = ("message_id", "ack_code", "ack", "created_at")
QUARANTINE_COLUMNS = ("message_id", "stage", "reason", "detail", "created_at")


def _insert_json(table: str, columns) -> str:
    cols = ", ".join(columns)
    return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{table}, %s::json)"


def _json_bytea(value):
    if isinstance(value, bytes):
        return "\\x" + value.hex()  # bytea's hex input format
    raise TypeError(type(value).__name__)


def _sha(raw: bytes) -> str:
    import hashlib

    return hashlib.sha256(raw).hexdigest()


async def _in_daemon_thread(fn, *args):
    """``fn(*args)`` in a daemon thread of its own. ``asyncio.to_thread`` uses the default
    executor, whose threads the process waits for at exit: a heartbeat stuck on the database
    held the shutdown for as long as the database did."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def done(result, exc):
        if not fut.done():
            fut.set_exception(exc) if exc is not None else fut.set_result(result)

    def run():
        try:
            r = fn(*args)
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(done, None, exc)
        else:
            loop.call_soon_threadsafe(done, r, None)

    threading.Thread(target=run, name="hl7ics-beat", daemon=True).start()
    return await fut


class _RateWindow:
    """The frame deadline: a frame must end within ``seconds`` of its start, or bring at least
    ``rate`` bytes per second over each window of ``seconds`` (a burst does not buy time for a
    trickle after it)."""

    def __init__(self, seconds: float, rate: int):
        self.seconds, self.rate = seconds, rate
        self.frame = self.at = None
        self.bytes = 0

    def left(self, framer: Framer, now: float) -> float:
        """Seconds until the current window closes; 0 when the frame is too slow."""
        if self.frame != framer.frames_started:  # a new frame
            self.frame, self.at, self.bytes = framer.frames_started, framer.frame_started_at, 0
        elapsed = now - self.at
        if elapsed >= self.seconds:
            if framer.received - self.bytes < self.rate * elapsed:
                return 0.0
            self.at, self.bytes, elapsed = now, framer.received, 0.0
        return self.seconds - elapsed


class AuditWriter:
    """``audit_event`` rows written by a thread of their own. An audit on the event loop held up
    every connection while the database was slow or unreachable: one failed TLS handshake (a
    port probe) then froze the listener. Rows wait in a bounded queue; beyond it they are
    counted in the log, not kept."""

    LIMIT = 10_000

    def __init__(self, engine):
        self.engine = engine
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.dropped = 0
        self._thread: threading.Thread | None = None

    def put(self, row: dict) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hl7ics-audit", daemon=True)
            self._thread.start()
        if self.queue.qsize() >= self.LIMIT:
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                _jlog(logging.ERROR, "audit_dropped", dropped=self.dropped)
            return
        self.queue.put(row)

    def close(self, timeout: float) -> None:
        """Write what is queued, waiting at most ``timeout`` seconds (a database that does not
        answer must not hold up the shutdown); what is left is counted in the log."""
        if self._thread is not None:
            self.queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                _jlog(logging.ERROR, "audit_dropped", dropped=self.queue.qsize(), reason="shutdown")

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while batch[-1] is not None and len(batch) < 500:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            rows = [r for r in batch if r is not None]
            if rows:
                try:
                    with self.engine.begin() as conn:
                        conn.execute(text("INSERT INTO audit_event (created_at, event_type, outcome, peer, "
                                          "facility_code, detail) VALUES (:t, :e, :o, :p, :f, :d)"), rows)
                except Exception as exc:  # auditing must not take the listener down; it is logged instead
                    _jlog(logging.ERROR, "audit_failed", audit_events=sorted({r["e"] for r in rows}),
                          error=type(exc).__name__)
            if batch[-1] is None:
                return


class Listener:
    def __init__(self, cfg: ListenerConfig, warehouse_url: str, facilities=None):
        self.cfg = cfg
        self.engine = get_engine(warehouse_url)
        self.metrics = Metrics()
        self.facilities = {f.code: f for f in (facilities or [])}
        types = set(cfg.supported_types) or {t.split("^")[0] for f in self.facilities.values() for t in f.message_types}
        self.supported_types = types | {"ACK"}
        self.per_peer: dict[str, int] = {}
        self.active = 0
        self.handshaking = 0  # TLS handshakes in progress count against max_connections too
        self.handshaking_by_ip: dict[str, int] = {}  # ... and, per address, against max_connections_per_peer
        self.auditor = AuditWriter(self.engine)
        self.server: asyncio.AbstractServer | None = None
        self.committer: GroupCommitter | None = None
        self.tls = self._tls_context()
        self.inflight = 0
        self.stopping = False
        self.latencies = LatencyBook()
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at: str | None = None
        self._segment: str | None = None  # start of the current stretch of heartbeats (after a gap)
        self._last_beat: float | None = None  # monotonic time of the last beat written
        self._housekeeper: asyncio.Task | None = None

    # -- set-up -------------------------------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.cfg.tls_cert:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195: no TLS 1.0/1.1
        ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # AEAD with forward secrecy only
        ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        if self.cfg.tls_client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.cfg.tls_client_ca)
        return ctx

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.committer = GroupCommitter(self.engine, self.cfg.group_commit_max, loop, self.cfg.commit_parallel,
                                        self.cfg.commit_timeout_seconds)
        self.committer.start()
        if self.tls is None:
            self.server = await asyncio.start_server(self._handle, self.cfg.host, self.cfg.port, limit=1 << 20)
        else:
            self.server = _TlsServer(self)
        port = self.server.sockets[0].getsockname()[1]
        self.audit("listener_start", "success", detail=f"port {port}{' tls' if self.tls else ''}")
        self.started_at = utcnow()
        await _in_daemon_thread(self._beat)
        self._housekeeper = loop.create_task(self._housekeeping())
        _jlog(logging.INFO, "listening", host=self.cfg.host, port=port, tls=bool(self.tls),
              mutual_tls=bool(self.cfg.tls_client_ca))
        return port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight commits finish and their ACKs go out, then close."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        deadline = time.monotonic() + grace
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.committer and self.committer.task:
            self.committer.task.cancel()
            await self.committer.close()
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        # Bounded: with the database gone, the last heartbeat and audit rows are given up (logged)
        # rather than hold the shutdown past the container's grace period.
        try:
            async with asyncio.timeout(5):
                await _in_daemon_thread(self._beat, True)
        except TimeoutError:
            _jlog(logging.ERROR, "heartbeat_failed", error="TimeoutError")
        self.audit("listener_stop", "success")
        await _in_daemon_thread(self.auditor.close, 5)
        _jlog(logging.INFO, "stopped")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_seconds)
            await _in_daemon_thread(self._beat)

    def _beat(self, stopping: bool = False) -> None:
        """Heartbeat (uptime for the SLA) and the ACK latencies counted since the last beat.

        A row covers one stretch of beats (``started_at`` to ``beat_at``). After a gap (beats
        that failed while the database was unreachable, a stalled loop) the next beat starts a
        new row, so the SLA report sees the gap as downtime instead of one unbroken stretch."""
        counts = self.latencies.take()
        now = utcnow()
        mono = time.monotonic()
        if self._last_beat is not None and mono - self._last_beat > 2 * self.cfg.heartbeat_seconds:
            self._segment = now
        try:
            with self.engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO listener_heartbeat (instance, started_at, beat_at, stopped_at) VALUES (:i, :s, :b, :x) "
                    "ON CONFLICT (instance, started_at) DO UPDATE SET beat_at = excluded.beat_at, "
                    "stopped_at = excluded.stopped_at"),
                    {"i": self.instance, "s": self._segment or self.started_at or now, "b": now,
                     "x": now if stopping else None})
                if counts:
                    conn.execute(text(
                        "INSERT INTO ack_latency (minute, facility_code, message_type, bucket_ms, n) "
                        "VALUES (:m, :f, :t, :b, :n) ON CONFLICT (minute, facility_code, message_type, bucket_ms) "
                        "DO UPDATE SET n = ack_latency.n + excluded.n"),
                        [{"m": m, "f": f, "t": t, "b": b, "n": n} for (m, f, t, b), n in sorted(counts.items())])
        except Exception as exc:  # statistics must never take the listener down
            _jlog(logging.ERROR, "heartbeat_failed", error=type(exc).__name__)
            return
        self._last_beat = mono

    def audit(self, event: str, outcome: str, peer: str | None = None, facility: str | None = None,
              detail: str | None = None) -> None:
        self.auditor.put({"t": utcnow(), "e": event, "o": outcome, "p": peer, "f": facility, "d": detail})

    # -- connections --------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_ip = self._admit(writer.get_extra_info("peername"), writer.close)
        if peer_ip is not None:
            await self._serve(reader, writer, peer_ip, peer_ip, None)

    def _admit(self, peer_addr, close) -> str | None:
        """The peer's IP if a new connection may proceed; otherwise ``close()`` and None."""
        peer_ip = peer_addr[0] if peer_addr else "?"
        if self.stopping or self.active + self.handshaking >= self.cfg.max_connections:
            _jlog(logging.WARNING, "connection_refused", peer=peer_ip, reason="max_connections")
            close()
            return None
        return peer_ip

    async def _tls_accept(self, sock: socket.socket, peer_addr) -> None:
        loop = asyncio.get_running_loop()
        peer_ip = self._admit(peer_addr, sock.close)
        if peer_ip is None:
            return
        if self.handshaking_by_ip.get(peer_ip, 0) >= self.cfg.max_connections_per_peer:
            # Before the handshake only the address is known: one address holding handshakes open
            # must not take every slot of max_connections.
            _jlog(logging.WARNING, "connection_refused", peer=peer_ip, reason="max_connections_per_peer")
            sock.close()
            return
        reader = asyncio.StreamReader(limit=1 << 20)
        # Our protocol, not the one returned: uvloop returns its SSL protocol there.
        proto = asyncio.StreamReaderProtocol(reader)
        self.handshaking += 1
        self.handshaking_by_ip[peer_ip] = self.handshaking_by_ip.get(peer_ip, 0) + 1
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: proto, sock, ssl=self.tls,
                ssl_handshake_timeout=self.cfg.handshake_timeout_seconds)
        except (ssl.SSLError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
            self.metrics.frame_errors.labels("tls_handshake").inc()
            self.audit("node_authentication_failure", "failure", peer=peer_ip, detail=type(exc).__name__)
            _jlog(logging.WARNING, "tls_handshake_failed", peer=peer_ip, error=type(exc).__name__)
            sock.close()
            return
        finally:
            self.handshaking -= 1
            if self.handshaking_by_ip[peer_ip] <= 1:
                del self.handshaking_by_ip[peer_ip]
            else:
                self.handshaking_by_ip[peer_ip] -= 1
        writer = asyncio.StreamWriter(transport, proto, reader, loop)
        identity, allowed = peer_ip, None
        if self.cfg.tls_client_ca:
            cn = _common_name(writer.get_extra_info("peercert"))
            identity = f"cn:{cn}"
            allowed = set(self.cfg.certificate_facilities.get(cn, []))
        await self._serve(reader, writer, peer_ip, identity, allowed)

    async def _serve(self, reader, writer, peer_ip: str, identity: str, allowed: set[str] | None) -> None:
        if self.per_peer.get(identity, 0) >= self.cfg.max_connections_per_peer:
            _jlog(logging.WARNING, "connection_refused", peer=peer_ip, reason="max_connections_per_peer")
            writer.close()
            return
        self.per_peer[identity] = self.per_peer.get(identity, 0) + 1
        self.active += 1
        self.metrics.connections.inc()
        framer = Framer(self.cfg.max_frame_bytes, self.cfg.lenient_end_block)
        loop = asyncio.get_running_loop()
        pause = self.cfg.end_block_pause_seconds if self.cfg.lenient_end_block else 0
        window = _RateWindow(self.cfg.frame_deadline_seconds, self.cfg.frame_min_rate_bytes)
        try:
            while not self.stopping:
                now = loop.time()
                timeout = self.cfg.idle_timeout_seconds
                if framer.partial and framer.frame_started_at is not None:
                    left = window.left(framer, now)
                    if left <= 0:
                        self.metrics.frame_errors.labels("frame_deadline").inc()
                        _jlog(logging.WARNING, "frame_deadline", peer=peer_ip)
                        break
                    timeout = min(timeout, left)
                    if pause and framer.awaiting_end:
                        timeout = min(timeout, pause)
                try:
                    # One timer per read, not wait_for's extra task per read.
                    async with asyncio.timeout(timeout):
                        data = await reader.read(65536)
                except TimeoutError:
                    if pause and framer.awaiting_end:
                        # 0x1C, then nothing: a sender that sends no CR and waits for its ACK.
                        for fr in framer.close():
                            if not await self._frame(fr, writer, peer_ip, allowed):
                                return
                        continue
                    if framer.partial and window.left(framer, loop.time()) > 0:
                        continue  # a window closed with enough bytes: the frame goes on
                    kind = "frame_deadline" if framer.partial else "idle_timeout"
                    if framer.partial:
                        self.metrics.frame_errors.labels("partial_frame").inc()
                    _jlog(logging.INFO, kind, peer=peer_ip)
                    break
                except (ConnectionError, ssl.SSLError, OSError):
                    break
                if not data:
                    # The peer stopped sending; on TCP it may still read (a half-close), so the
                    # last frame is acknowledged like the others.
                    for fr in framer.close():
                        await self._frame(fr, writer, peer_ip, allowed)
                    if framer.partial:
                        self.metrics.frame_errors.labels("partial_frame").inc()
                    break
                self.metrics.bytes.inc(len(data))
                garbage_before, restarts_before = framer.garbage, framer.restarts
                frames = framer.push(data, loop.time())
                if framer.garbage > garbage_before:
                    self.metrics.frame_errors.labels("garbage_bytes").inc(framer.garbage - garbage_before)
                if framer.restarts > restarts_before:
                    self.metrics.frame_errors.labels("frame_cut_by_start_block").inc(framer.restarts - restarts_before)
                    _jlog(logging.WARNING, "frame_cut_by_start_block", peer=peer_ip)
                for fr in frames:
                    if not await self._frame(fr, writer, peer_ip, allowed):
                        return
        finally:
            if framer.garbage:
                _jlog(logging.INFO, "garbage_discarded", peer=peer_ip, bytes=framer.garbage)
            self.active -= 1
            self.per_peer[identity] -= 1
            self.metrics.connections.dec()
            try:
                writer.close()
            except Exception:
                pass

    async def _frame(self, fr, writer, peer: str, allowed: set[str] | None) -> bool:
        t0 = time.perf_counter()
        self.inflight += 1
        try:
            pending = self._plan(fr, allowed, peer)
            # A label per configured facility only: any MSH-4 a sender makes up would otherwise
            # be a new metrics series and ack_latency row (unbounded).
            facility = pending.facility if pending.facility in self.facilities else "UNKNOWN"
            try:
                if pending.status == "ack_only":
                    outcome, ack = "refused_unstored", pending.ack
                else:
                    outcome, ack = await self.committer.submit(pending)
            except Exception:
                # Storage failed: never AA. AR/CE 207 tells the sender to retry later.
                plan = AckPlan("CE" if ack_mode(pending.msg) == "enhanced" else "AR", 207, "",
                               "storage temporarily unavailable, retry later")
                ack = build_ack(pending.msg, plan)
                outcome = "storage_failure"
            self.metrics.messages.labels(facility, outcome if outcome != "stored" else (pending.plan.code or "none")).inc()
            if ack is not None:
                try:
                    writer.write(b"\x0b" + ack + b"\x1c\r")
                    await writer.drain()
                except (ConnectionError, OSError):
                    # Already committed: the sender will resend, we will replay the stored ACK.
                    self.metrics.frame_errors.labels("ack_delivery_failed").inc()
                    _jlog(logging.WARNING, "ack_delivery_failed", peer=peer, facility=facility)
                    return False
            elapsed = time.perf_counter() - t0
            self.metrics.latency.labels(facility).observe(elapsed)
            if ack is not None and pending.status != "ack_only":
                self.latencies.record(facility, (pending.rec or {}).get("message_type") or "UNKNOWN", elapsed)
            _jlog(logging.DEBUG, "message", peer=peer, facility=facility, outcome=outcome,
                  ack=pending.plan.code, control_id=(pending.rec or {}).get("control_id"))
            return True
        finally:
            self.inflight -= 1

    # -- decisions ----------------------------------------------------------------------------
    def _plan(self, fr, allowed: set[str] | None, peer: str) -> Pending:
        raw = fr.payload
        if fr.truncated:
            msg = parse(raw) if raw.lstrip()[:3] == b"MSH" else None
            plan = AckPlan("AR", 104, "", "message too large")
            self.metrics.frame_errors.labels("oversize").inc()
            # Oversized content is not stored (bounded memory and disk); the sender keeps it.
            return Pending(raw, msg, None, plan, build_ack(msg, plan), "ack_only", [], None)
        if fr.embedded_fs:
            # 0x1C inside content (bad input 11): what arrived is a truncated message. Keep it as
            # evidence, refuse it so the sender resends the whole message properly.
            msg = parse(raw) if raw.lstrip()[:3] == b"MSH" else None
            rec = to_record(msg) if msg is not None else None
            plan = AckPlan("AR", 100, "", "frame cut by a 0x1C inside the content")
            self.metrics.frame_errors.labels("embedded_end_block").inc()
            return Pending(raw, msg, rec, plan, build_ack(msg, plan), "quarantined", [("EMBEDDED_END_BLOCK", "frame")],
                           (rec or {}).get("sending_facility"))
        if not raw.strip():
            plan = AckPlan("AR", 100, "MSH", "empty message")
            p = Pending(raw, None, None, plan, build_ack(None, plan), "quarantined", [("EMPTY_MESSAGE", "MSH")], None)
            return p
        msg = parse(raw)
        rec = to_record(msg)
        facility = rec.get("sending_facility")
        if rec.get("message_type") == "ACK":
            # Never acknowledge an acknowledgement; keep it (lossless) as an orphan.
            return Pending(raw, msg, rec, AckPlan(None), None, "quarantined", [("ORPHAN_ACK", "MSH-9")], facility)
        reasons: list[tuple[str, str]] = []
        code = 0
        location = ""
        for e in rec["errors"]:
            if e["code"] in _REJECT and not code:
                code, location = _REJECT[e["code"]], e["location"]
                reasons.append((e["code"], e["location"]))
        msh_ok = msg.segments and msg.segments[0][0] == "MSH"
        if not code and msh_ok and len(rec.get("control_id") or "") > 199:
            code, location = 104, "MSH-10"  # 199 is the v2.7+ maximum; longer is not an ID
            reasons.append(("CONTROL_ID_TOO_LONG", "MSH-10"))
        if not code and msh_ok:
            pid = (rec.get("processing_id") or "P")[:1]
            if pid not in self.cfg.accepted_processing_ids:
                code, location = 202, "MSH-11"
                reasons.append(("PROCESSING_ID_REFUSED", "MSH-11"))
            elif rec.get("message_type") not in self.supported_types:
                code, location = 200, "MSH-9"
                reasons.append(("UNSUPPORTED_MESSAGE_TYPE", "MSH-9"))
            elif allowed is not None and facility not in allowed:
                code, location = 207, "MSH-4"
                reasons.append(("SEC-SENDER-MISMATCH", "MSH-4"))
                self.audit("sender_mismatch", "failure", peer=peer, facility=facility if facility in
                           self.facilities else None, detail="MSH-4 not allowed for the client certificate")
        enhanced = ack_mode(msg) == "enhanced"
        if code:
            plan = AckPlan("CR" if enhanced else "AR", code, location, _reason_text(code))
            ack = build_ack(msg, plan) if accept_ack_wanted(msg, False) else None
            return Pending(raw, msg, rec, plan, ack, "quarantined", reasons, facility)
        content = [e for e in rec["errors"] if e["code"] not in _REJECT]
        if content:
            e = content[0]
            # Stored, so committed: enhanced mode answers CA (CE would mean "not committed, send
            # again", and every resend would get the stored CE back). The ERR says what is wrong.
            plan = AckPlan("CA" if enhanced else "AE", e["hl7_code"] or 207, e["location"], e["message"])
            ack = build_ack(msg, plan) if accept_ack_wanted(msg, enhanced) else None
            # Stored as received: the loader quarantines it with the same reasons (one code path).
            return Pending(raw, msg, rec, plan, ack, "received", [], facility)
        plan = AckPlan("CA" if enhanced else "AA")
        ack = build_ack(msg, plan) if accept_ack_wanted(msg, True) else None
        return Pending(raw, msg, rec, plan, ack, "received", [], facility)


class _TlsServer:
    """Accepts TCP connections itself and negotiates TLS in a task per connection, so that a
    failed handshake raises where it can be audited: a TLS server from ``create_server`` drops
    it silently. (An earlier version paused the accepted transport and called ``start_tls``;
    uvloop starts reading after ``connection_made`` whatever the protocol asked, and a
    ClientHello read before ``start_tls`` was lost: the handshake stalled.)"""

    def __init__(self, listener: "Listener"):
        cfg = listener.cfg
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self.sock = socket.create_server((cfg.host, cfg.port), family=family, backlog=1024)
        self.sock.setblocking(False)
        self.sockets = [self.sock]
        self.task = asyncio.get_running_loop().create_task(self._accept(listener))

    async def _accept(self, listener: "Listener") -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except OSError as exc:  # e.g. EMFILE: keep serving the connections already open
                _jlog(logging.ERROR, "accept_failed", error=type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            loop.create_task(listener._tls_accept(conn, addr))

    def close(self) -> None:
        self.task.cancel()
        self.sock.close()


def _reason_text(code: int) -> str:
    return ERROR_TEXT.get(code, "error")


def _common_name(cert: dict | None) -> str | None:
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


def serve(cfg: ListenerConfig, warehouse_url: str, facilities, ready_file: str | None = None) -> int:
    """Run until SIGTERM/SIGINT. Writes the bound port to ``ready_file`` once listening."""
    logging.basicConfig(level=os.environ.get("HL7ICS_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # SQLite's commit thread waits on the database for most of a group commit; when an answer
    # comes back it needs the GIL from the event loop. Python's default 5 ms switch interval would
    # add up to 5 ms per database call to every ACK. (PostgreSQL commits on the event loop.)
    sys.setswitchinterval(float(os.environ.get("HL7ICS_SWITCH_INTERVAL", "0.0005")))
    listener = Listener(cfg, warehouse_url, facilities)
    if cfg.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(cfg.metrics_port, addr=cfg.host, registry=listener.metrics.registry)

    # Our own default executor (SQLite commits run in it), so the shutdown can stop waiting for
    # a thread stuck on the database.
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(thread_name_prefix="hl7ics-commit")

    async def main():
        asyncio.get_running_loop().set_default_executor(executor)
        port = await listener.start()
        # Start-up objects (SQLAlchemy, metrics, config) never die: out of the collector's
        # sight, so the full collections that stall every connection's ACK stay short.
        gc.freeze()
        if ready_file:
            Path(ready_file).write_text(str(port))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # signal.signal, not loop.add_signal_handler: under uvloop 0.23 the latter made every
            # later start_tls handshake stall (measured: TLS clients timed out).
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        await stop.wait()
        await listener.stop()

    # uvloop: the same asyncio API with the event loop in C; measured +20% throughput on
    # PostgreSQL (32 connections). HL7ICS_EVENT_LOOP=asyncio falls back to the standard loop.
    loop_factory = None
    if os.environ.get("HL7ICS_EVENT_LOOP", "uvloop") == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    runner = asyncio.Runner(loop_factory=loop_factory)
    try:
        runner.run(main())
    finally:
        # A SQLite commit thread may still wait on a locked database: Runner.close() would wait
        # for it, and the interpreter's exit after it. Give it 5 s, then leave without it: what
        # it holds was never acknowledged (the sender resends).
        waiter = threading.Thread(target=executor.shutdown, kwargs={"wait": True}, daemon=True)
        waiter.start()
        waiter.join(5)
        if waiter.is_alive():
            _jlog(logging.ERROR, "stopped_with_threads_running")
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        runner.close()
    return 0
