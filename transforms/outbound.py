"""Reliable outbound delivery: routed messages are queued durably, then delivered in order per
patient, retried with backoff, and dead-lettered with an alert when they keep failing.

Inputs: loaded messages (``message_store``, status ``loaded``); a router with
``route(raw) -> list[RouteResult]`` (``transforms.routing``: ``rule``, ``destination``, ``payload``
— the exact bytes to send —, ``review`` — ``[(mapping, code)]`` held for an unmapped code —,
``error``); one plain dict per destination:

- ``{"type": "mllp", "host", "port", "tls": bool, "tls_ca", "tls_cert", "tls_key", "server_name",
  "ack_timeout", "connect_timeout"}`` — TLS and mutual TLS, waits for the ACK;
- ``{"type": "folder", "path": DIR}`` — one file per message, written atomically, named by outbound
  id (``000000000042.hl7``, so name order is queue order); the folder must exist (a missing one may
  be an unmounted share: nothing is written to the local disk instead);
- ``{"type": "sftp", "conn_id", "path", ...}`` — ``transforms.delivery.deliver``, one file per
  message named the same way, the heads of a round in one SFTP session;
- ``{"type": "queue", "conn_id" (or "url"), "queue", "exchange"}`` — RabbitMQ with publisher
  confirms, persistent messages, ``mandatory`` (a missing queue is a failure, not a silent drop);

and on every type ``max_attempts`` (10), ``backoff_seconds`` (30), ``backoff_max_seconds`` (3600).

Outputs: ``outbound_queue`` rows (pending -> sending -> delivered, or failed -> ... -> dead, with
``attempts``, ``next_attempt_at``, ``last_error``, ``ack_code`` and ``ack``); ``message_route`` rows
tracing each hop (queued | review | filtered | error, with the outbound id); ``route_review`` rows
for held messages; ``routing_state`` (migration 011); an ``outbound_dead`` alert per destination
(``transforms.alerting``), resolved once that destination has no dead letter left.

Guarantees:

- Each loaded message is routed once (it is routed when it has a ``message_route`` row); a pass
  reads only messages whose status changed since the last complete pass less a settle window
  (``routing_state``), and the very first pass starts one settle window back: enabling routing
  does not send the warehouse's history (``route_pending(since=...)`` does, on purpose).
- Order per (destination, order_key): only the oldest open message of an order key (the patient:
  the warehouse's keyed pseudonym of PID-3's first identifier, or the facility when there is none;
  never the raw identifier) is attempted; other order keys proceed, so a poison message holds back
  its own patient until it is dead-lettered, and nobody else. Once dead, it no longer holds the
  patient's later messages; ``retry`` puts it back at its place (again the oldest open one).
- Acknowledged means done: a row is marked ``sending`` (committed) before the attempt and
  ``delivered`` in its own commit right after the ACK; ``delivered`` rows are never sent again,
  not even by ``retry``. A crash between the send and that commit leaves a ``sending`` row, which
  the next run after ``stale_after_seconds`` treats as a failed attempt and sends again: HL7's
  at-least-once. The payload, MSH-10 included, is sent unchanged, so receivers de-duplicate by
  MSH-10 (our own listener answers a resent message with its stored ACK and stores nothing twice).
- MLLP answers: AA/CA delivered; AE/AR/CE/CR failed, ``last_error`` = the code and the ERR
  segment's error code (``AE:207``); no ACK within ``ack_timeout``, a closed connection, a refused
  connection or a TLS failure: failed (transient). A failure that concerns the connection stops
  that destination for the run (the other claimed messages are released untouched), so a silent
  receiver costs one ``ack_timeout`` per run, not one per waiting patient.
- Retries: next attempt after ``min(cap, base * 2^(attempts-1))`` seconds with equal jitter
  (between half and all of it); after ``max_attempts``: ``dead``.
- No patient data in ``last_error``, ``message_route.detail``, logs or alerts: codes, counts,
  ids and exception class names only.

No Airflow import here: the ``route_and_deliver`` DAG calls ``route_pending`` then ``deliver_due``
(plugins/hl7ics_airflow/routing_tasks.py); ``hl7ics outbound status|retry`` call ``cli_status`` and
``cli_retry``.
"""
from __future__ import annotations

import errno as _errno
import logging
import math
import os
import random
import re
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

from sqlalchemy import text

from .config import ConfigError
from .ack import control_id_of, parse_ack
from .mllp import Framer, client_ssl_context, frame

log = logging.getLogger("hl7ics.outbound")

STATUSES = ("pending", "sending", "delivered", "failed", "dead")
OPEN_STATUSES = ("pending", "sending", "failed")  # rows that hold back later rows of their order key
TYPES = ("mllp", "folder", "sftp", "queue")
POLICY_DEFAULTS = {"max_attempts": 10, "backoff_seconds": 30.0, "backoff_max_seconds": 3600.0}
MLLP_DEFAULTS = {"ack_timeout": 30.0, "connect_timeout": 10.0}
SETTLE_SECONDS = 3600        # loads that commit later than this after their timestamp are not seen
STALE_SENDING_SECONDS = 600  # a 'sending' row older than this was interrupted: attempt it again
HELD_RETRY_SECONDS = 900     # a copy held for review or failed to build is routed again this often
HELD_RETRY_BATCH = 200       # held messages routed again per pass
_HELD = "outcome IN ('review', 'error')"  # message_route hops of copies not sent (migration 017 indexes them)
ROUND = 100                  # heads claimed per transaction
STATE_NAME = "route_pending"
DEAD_ALERT_KIND = "outbound_dead"
HELD_ALERT_KIND = "routing_held"
_PG_ROUTING_LOCK = 724110    # advisory lock: one routing transaction at a time on PostgreSQL
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


# --- time --------------------------------------------------------------------------------------

def _now(now=None) -> datetime:
    """Naive UTC, second precision (as the warehouse stores timestamps)."""
    if now is None:
        return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    if isinstance(now, str):
        return datetime.strptime(now[:19], "%Y-%m-%d %H:%M:%S")
    if now.tzinfo is not None:
        now = now.astimezone(timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=0)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def _parse_ts(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _now(value)
    return datetime.strptime(str(value)[:19], "%Y-%m-%d %H:%M:%S")


def _clean(value, limit: int = 200) -> str | None:
    """A code or name from a router or a receiver, made safe for a column or a log line."""
    if value is None:
        return None
    s = _CONTROL.sub(" ", str(value)).strip()
    return s[:limit] or None


# --- routing -----------------------------------------------------------------------------------

def order_key(raw: bytes, facility_code: str | None, keyer, charset: str | None = None) -> str:
    """The patient, as the warehouse's keyed pseudonym of PID-3's first identifier (the same value
    as ``dim_patient.patient_key``), else the message's facility. Never the raw identifier."""
    from .extract import patient_of
    from .parser import parse

    facility = facility_code or "UNKNOWN"
    try:
        patient = patient_of(parse(raw, charset), [])
    except Exception:  # an unparsable message still gets an order key: its facility
        patient = None
    if patient and patient.get("id"):
        return "patient:" + keyer.key(facility, patient.get("id_authority") or facility, patient["id"])
    return f"facility:{facility}"


@dataclass
class _NoRoute:
    """What a message with no matching rule (or a router failure) is traced as."""
    rule: str = "-"
    destination: str | None = None
    payload: bytes | None = None
    review: list | None = None
    error: str | None = None


def enqueue(conn, message_id: int, results: Iterable, order_key: str, now=None,
            by_destination: dict | None = None) -> dict:
    """Record the routing of one message in the caller's transaction; returns counts per outcome.

    A result with a payload becomes an ``outbound_queue`` row (pending) and a ``queued`` hop; one
    with ``review`` becomes ``route_review`` rows and a ``review`` hop; one with ``error`` an
    ``error`` hop; anything else a ``filtered`` hop. No result at all (no rule matched, a rule
    with ``to: []``, an unroutable message) is one ``filtered`` hop on rule ``-`` with detail
    ``NO_ROUTE`` (so the message counts as routed). Calling it again for the same message
    writes nothing twice (UNIQUE (message_id, route, destination) and the existing hops).
    ``by_destination``, when given, gathers the new hops per destination (``-`` for none):
    ``{destination: {outcome: count, "codes": [detail codes of review and error hops]}}``."""
    ts = _ts(_now(now))
    counts = {"queued": 0, "review": 0, "filtered": 0, "error": 0}
    seen = {(r, d, o) for r, d, o in conn.execute(
        text("SELECT route, destination, outcome FROM message_route WHERE message_id = :m"), {"m": message_id})}
    results = list(results) or [_NoRoute()]
    for res in results:
        route, dest = _hop_key(res)
        payload = getattr(res, "payload", None)
        review = getattr(res, "review", None)
        error = getattr(res, "error", None)
        detail = None
        if error:
            outcome, detail = "error", _clean(error, 500)
        elif review:
            outcome = "review"
        elif payload is not None and dest:
            outcome = "queued"
        elif payload is not None:
            outcome, detail = "error", "NO_DESTINATION"
        else:
            outcome = "filtered"
            if isinstance(res, _NoRoute):
                detail = "NO_ROUTE"
        if (route, dest, outcome) in seen:
            continue
        outbound_id = None
        if outcome == "queued":
            payload = bytes(payload)
            outbound_id = conn.execute(text(
                "INSERT INTO outbound_queue (message_id, route, destination, order_key, payload, control_id, status, "
                "attempts, next_attempt_at, created_at, updated_at) VALUES (:m, :r, :d, :k, :p, :c, 'pending', 0, "
                ":t, :t, :t) ON CONFLICT (message_id, route, destination) DO NOTHING RETURNING id"),
                {"m": message_id, "r": route, "d": dest, "k": order_key, "p": payload,
                 "c": control_id_of(payload), "t": ts}).scalar()
            if outbound_id is None:  # queued by an earlier routing whose hop row is missing
                outbound_id = conn.execute(text(
                    "SELECT id FROM outbound_queue WHERE message_id = :m AND route = :r AND destination = :d"),
                    {"m": message_id, "r": route, "d": dest}).scalar()
        elif outcome == "review":
            pairs = sorted({(_clean(m, 200) or "?", _clean(c, 200) or "?") for m, c in review})
            conn.execute(text(
                "INSERT INTO route_review (message_id, route, destination, mapping, code, created_at) "
                "VALUES (:m, :r, :d, :map, :code, :t) "
                # held for review again after a retry: the row is open again
                "ON CONFLICT (message_id, route, destination, mapping, code) DO UPDATE SET resolved_at = NULL"),
                [{"m": message_id, "r": route, "d": dest or "-", "map": m, "code": c, "t": ts} for m, c in pairs])
            detail = _clean(", ".join(f"{m}:{c}" for m, c in pairs), 500)
        conn.execute(text(
            "INSERT INTO message_route (message_id, route, destination, outbound_id, outcome, detail, created_at) "
            "VALUES (:m, :r, :d, :o, :out, :detail, :t)"),
            {"m": message_id, "r": route, "d": dest, "o": outbound_id, "out": outcome, "detail": detail, "t": ts})
        seen.add((route, dest, outcome))
        counts[outcome] += 1
        if by_destination is not None:
            d = by_destination.setdefault(dest or "-", {"queued": 0, "review": 0, "filtered": 0, "error": 0,
                                                        "codes": []})
            d[outcome] += 1
            if outcome in ("review", "error") and detail:
                d["codes"].extend(c for c in detail.split(", ") if c not in d["codes"])
    return counts


def _hop_key(res) -> tuple[str, str | None]:
    """(route, destination) of a routing result as message_route records them."""
    return _clean(getattr(res, "rule", None), 100) or "-", _clean(getattr(res, "destination", None), 100)


def _default_keyer():
    from .config import Settings
    from .facts import PatientKeyer

    return PatientKeyer.from_env(Settings.load().home)


def route_pending(engine, router, batch: int = 500, now=None, keyer=None, since=None,
                  settle_seconds: float = SETTLE_SECONDS, max_batches: int | None = None, alerter=None) -> dict:
    """Route the loaded messages that have no ``message_route`` row yet, ``batch`` per transaction.

    Only messages whose status changed since the last complete pass (``routing_state``) less
    ``settle_seconds`` are read. The first pass ever starts ``settle_seconds`` before now: turning
    routing on does not send the warehouse's history to the destinations; pass ``since`` (a UTC
    datetime) to route older messages on purpose. A router exception is traced as an ``error``
    hop with its class name and does not stop the batch. Idempotent, also when two passes race
    (one routing transaction at a time, and routed messages are skipped inside it).

    Copies held for review or failed to build fire ``routing_held`` (key ``routing_held:<name>``)
    for their destination, and are routed again every ``HELD_RETRY_SECONDS`` (``retry_held``):
    once the mapping or the route is fixed, they go. The alert resolves when none is held any more.
    ``alerter`` defaults to one on ``engine``."""
    start = _now(now)
    keyer = keyer or _default_keyer()
    from .load import refuse_other_key

    with engine.connect() as c:
        # Order keys are patient keys: under another key a patient's copies would be ordered
        # under another name than their loaded history's, and against other patients' keys.
        refuse_other_key(c, keyer)
    pg = engine.dialect.name == "postgresql"
    by_dest: dict[str, dict] = {}
    retried = retry_held(engine, router, keyer, start, by_dest)
    if since is not None:
        scan_from = _now(since)
    else:
        with engine.connect() as c:
            last = _parse_ts(c.execute(text("SELECT scanned_to FROM routing_state WHERE name = :n"),
                                       {"n": STATE_NAME}).scalar())
        scan_from = (last or start) - timedelta(seconds=settle_seconds)
    totals = {"messages": 0, "queued": 0, "review": 0, "filtered": 0, "error": 0, "retried": retried}
    drained, batches = False, 0
    while True:
        with engine.connect() as c:
            rows = c.execute(text(
                "SELECT m.id, m.facility_code, m.charset, m.raw FROM message_store m "
                "WHERE m.status = 'loaded' AND m.updated_at >= :since "
                "AND NOT EXISTS (SELECT 1 FROM message_route r WHERE r.message_id = m.id) "
                "ORDER BY m.updated_at, m.id LIMIT :n"), {"since": _ts(scan_from), "n": batch}).all()
        if not rows:
            drained = True
            break
        routed = []
        for mid, facility, charset, raw in rows:
            raw = bytes(raw)
            try:
                # the codec the loader used (MSH-18 or the facility default) decodes it the same way here
                results = list(router.route(raw, facility_charset=charset))
            except Exception as exc:  # one message the router cannot handle must not stop the others
                log.warning("routing failed for message %s: %s", mid, type(exc).__name__)
                results = [_NoRoute(error=f"ROUTER_ERROR:{type(exc).__name__}")]
            routed.append((mid, results, order_key(raw, facility, keyer, charset)))
        with engine.begin() as conn:
            if pg:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_ROUTING_LOCK})
            ids = [r[0] for r in routed]
            marks = ", ".join(f":i{j}" for j in range(len(ids)))
            done = {r[0] for r in conn.execute(text(
                f"SELECT DISTINCT message_id FROM message_route WHERE message_id IN ({marks})"),
                {f"i{j}": i for j, i in enumerate(ids)})}
            for mid, results, key in routed:
                if mid in done:
                    continue  # routed by a concurrent pass meanwhile
                for k, v in enqueue(conn, mid, results, key, start, by_dest).items():
                    totals[k] += v
                totals["messages"] += 1
        batches += 1
        if len(rows) < batch:
            drained = True
            break
        if max_batches and batches >= max_batches:
            break
    if drained:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO routing_state (name, scanned_to, updated_at) VALUES (:n, :s, :t) "
                "ON CONFLICT (name) DO UPDATE SET scanned_to = excluded.scanned_to, updated_at = excluded.updated_at "
                "WHERE routing_state.scanned_to < excluded.scanned_to"),
                {"n": STATE_NAME, "s": _ts(start), "t": _ts(_now())})
    if by_dest:
        _alert_held(engine, by_dest, alerter, start)
    return totals


def retry_held(engine, router, keyer, now: datetime, by_dest: dict, limit: int = HELD_RETRY_BATCH) -> int:
    """Route again the loaded messages with a copy held for review or failed to build, last tried
    ``HELD_RETRY_SECONDS`` ago or more (oldest first, ``limit`` per pass); returns how many.

    Only the held copies are rebuilt (after a router failure, which has no destination, every
    copy is). A held copy the router now builds for the same rule and destination gets the new
    outcome as a first routing would (queued, or held again); one it does not build (the router
    failed again, or the rule was renamed) stays held, tried again later. Review rows are resolved
    once their copy is queued or filtered out, and re-opened when it is held for review again."""
    cutoff = _ts(now - timedelta(seconds=HELD_RETRY_SECONDS))
    with engine.connect() as c:
        rows = c.execute(text(
            "SELECT m.id, m.facility_code, m.charset, m.raw FROM message_store m WHERE m.status = 'loaded' "
            f"AND m.id IN (SELECT message_id FROM message_route WHERE {_HELD} "
            "AND created_at <= :cut) ORDER BY m.id LIMIT :n"), {"cut": cutoff, "n": limit}).all()
    ts = _ts(now)
    for mid, facility, charset, raw in rows:
        raw = bytes(raw)
        try:
            results = list(router.route(raw, facility_charset=charset))
        except Exception as exc:
            log.warning("routing failed again for message %s: %s", mid, type(exc).__name__)
            results = [_NoRoute(error=f"ROUTER_ERROR:{type(exc).__name__}")]
        key = order_key(raw, facility, keyer, charset)
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_ROUTING_LOCK})
            held = {(r, d) for r, d in conn.execute(text(
                f"SELECT route, destination FROM message_route WHERE message_id = :m AND {_HELD} "
                "AND created_at <= :cut"), {"m": mid, "cut": cutoff})}
            if not held:
                continue  # routed again by a concurrent pass
            if ("-", None) in held:  # the router itself had failed: whatever it says now is new
                again = {("-", None): results or [_NoRoute()]}
            else:
                again = {}
                for res in results:
                    if _hop_key(res) in held:
                        again.setdefault(_hop_key(res), []).append(res)
            for (r, d) in held:
                where = (f"message_id = :m AND route = :r AND {_HELD} AND "
                         + ("destination IS NULL" if d is None else "destination = :d"))
                if (r, d) not in again:
                    # Not built this time: still held, and tried again after the next interval.
                    conn.execute(text(f"UPDATE message_route SET created_at = :t WHERE {where}"),
                                 {"t": ts, "m": mid, "r": r, "d": d})
                    continue
                conn.execute(text(f"DELETE FROM message_route WHERE {where}"), {"m": mid, "r": r, "d": d})
            rebuilt = [x for xs in again.values() for x in xs]
            for res in rebuilt:
                _settle_review(conn, mid, res, ts)
            if rebuilt:
                enqueue(conn, mid, rebuilt, key, now, by_dest)
    return len(rows)


def _settle_review(conn, message_id: int, res, ts: str) -> None:
    """The ``route_review`` rows of a copy routed again: resolved when it is now queued or filtered
    out, or (held for review again) for the codes that now map; a copy that failed to build keeps
    its rows open. Codes still missing are re-opened by ``enqueue``."""
    if getattr(res, "error", None):
        return
    r, d = _hop_key(res)
    still = {(_clean(m, 200) or "?", _clean(c, 200) or "?") for m, c in getattr(res, "review", None) or ()}
    for m, c in conn.execute(text(
            "SELECT mapping, code FROM route_review WHERE message_id = :m AND route = :r AND destination = :d "
            "AND resolved_at IS NULL"), {"m": message_id, "r": r, "d": d or "-"}).all():
        if (m, c) not in still:
            conn.execute(text("UPDATE route_review SET resolved_at = :t WHERE message_id = :m AND route = :r "
                              "AND destination = :d AND mapping = :map AND code = :c"),
                         {"t": ts, "m": message_id, "r": r, "d": d or "-", "map": m, "c": c})


def _held_remain(engine, destination: str) -> bool:
    """Whether any loaded message still has a copy for ``destination`` held (``-``: no destination)."""
    with engine.connect() as c:
        return c.execute(text(
            "SELECT 1 FROM message_route r JOIN message_store m ON m.id = r.message_id WHERE m.status = 'loaded' "
            f"AND r.{_HELD} AND "
            + ("r.destination IS NULL" if destination == "-" else "r.destination = :d") + " LIMIT 1"),
            {"d": destination}).first() is not None


def _alert_held(engine, by_dest: dict[str, dict], alerter, now: datetime) -> None:
    """``routing_held`` per destination that got copies held for review or failed in this pass;
    resolved for a destination this pass routed to without any, once none is held any more."""
    from .alerting import Alert, Alerter

    alerter = alerter or Alerter(engine)
    for name, d in sorted(by_dest.items()):
        key = f"{HELD_ALERT_KIND}:{name}"
        if d["review"] or d["error"]:
            log.warning("routing to %s: %d copies held for review, %d failed (%s)", name, d["review"], d["error"],
                        ", ".join(d["codes"][:5]))
            alerter.fire(Alert(key=key, kind=HELD_ALERT_KIND, severity="error" if d["error"] else "warning",
                               params={"destination": name, "review": d["review"], "failed": d["error"],
                                       "codes": ", ".join(d["codes"][:5]) or "-"}), now=now)
        elif d["queued"] and not _held_remain(engine, name):
            alerter.resolve(key, now=now)
    none = by_dest.get("-")
    if not (none and (none["review"] or none["error"])) and any(d["queued"] for d in by_dest.values()) \
            and not _held_remain(engine, "-"):
        # Copies with no destination (a router failure) have no destination whose clean pass
        # could resolve them: any clean pass does.
        alerter.resolve(f"{HELD_ALERT_KIND}:-", now=now)


# --- destinations ------------------------------------------------------------------------------

def check_destination(name: str, spec: dict) -> dict:
    """The destination's parameters with defaults filled in; ConfigError names what is wrong."""
    if not isinstance(spec, dict):
        raise ConfigError(f"destination {name}: expected a mapping of parameters")
    typ = spec.get("type")
    if typ not in TYPES:
        raise ConfigError(f"destination {name}: 'type' must be one of {', '.join(TYPES)}")
    out = {**POLICY_DEFAULTS, **(MLLP_DEFAULTS if typ == "mllp" else {}),
           **{k: v for k, v in spec.items() if v is not None}}
    need = {"mllp": ("host", "port"), "folder": ("path",), "sftp": ("conn_id", "path"), "queue": ("queue",)}[typ]
    missing = [k for k in need if not out.get(k)]
    if typ == "queue" and not (out.get("conn_id") or out.get("url")):
        missing.append("conn_id")
    if missing:
        raise ConfigError(f"destination {name}: a {typ} destination needs {', '.join(missing)}")
    try:
        out["max_attempts"] = int(out["max_attempts"])
        for k in ("backoff_seconds", "backoff_max_seconds", "ack_timeout", "connect_timeout"):
            if k in out:
                out[k] = float(out[k])
        if typ == "mllp":
            out["port"] = int(out["port"])
    except (TypeError, ValueError):
        raise ConfigError(f"destination {name}: port, max_attempts, backoff and timeouts must be numbers") from None
    if out["max_attempts"] < 1 or out["backoff_seconds"] < 0 or out["backoff_max_seconds"] < out["backoff_seconds"]:
        raise ConfigError(f"destination {name}: max_attempts >= 1 and 0 <= backoff_seconds <= backoff_max_seconds")
    out["backoff_max_seconds"] = min(out["backoff_max_seconds"], 7 * 86400.0)  # a week: longer overflows dates
    if typ == "mllp" and (out["ack_timeout"] <= 0 or out["connect_timeout"] <= 0):
        raise ConfigError(f"destination {name}: ack_timeout and connect_timeout must be positive")
    return out


@dataclass
class Outcome:
    """One attempt's result. ``error`` is a code (never content); ``stop`` means the destination
    itself is unreachable or confused, so the rest waits for the next run."""
    ok: bool
    error: str | None = None
    ack_code: str | None = None
    ack: bytes | None = None
    stop: bool = False


@dataclass
class _Row:
    id: int
    message_id: int
    payload: bytes
    control_id: str | None
    attempts: int


class _MllpTransport:
    """One connection per run and destination, one message at a time (MLLP has no pipelining
    contract); reconnects after a failure that leaves the connection in doubt."""

    def __init__(self, name: str, spec: dict):
        self.name, self.spec = name, spec
        self.sock: socket.socket | None = None
        self.framer: Framer | None = None
        self.frames: list = []        # frames read but not yet used
        self.answered: set[str] = set()  # control IDs already acknowledged on this connection

    def _connect(self) -> Outcome | None:
        s = self.spec
        tls = bool(s.get("tls")) or any(s.get(k) for k in ("tls_ca", "tls_cert", "tls_key"))
        try:
            ctx = client_ssl_context(s.get("tls_ca"), s.get("tls_cert"), s.get("tls_key")) if tls else None
        except (OSError, ssl.SSLError) as exc:  # unreadable CA or key: configuration, fails every time
            return Outcome(False, f"TLS_CONFIG:{type(exc).__name__}", stop=True)
        try:
            sock = socket.create_connection((s["host"], s["port"]), timeout=s["connect_timeout"])
        except ConnectionRefusedError:
            return Outcome(False, "CONNECTION_REFUSED", stop=True)
        except (socket.timeout, TimeoutError):
            return Outcome(False, "CONNECT_TIMEOUT", stop=True)
        except OSError as exc:
            return Outcome(False, f"CONNECT_ERROR:{_errno.errorcode.get(exc.errno, type(exc).__name__)}", stop=True)
        if ctx is not None:
            try:
                sock = ctx.wrap_socket(sock, server_hostname=s.get("server_name") or s["host"])
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                return Outcome(False, f"TLS_ERROR:{type(exc).__name__}", stop=True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.framer, self.frames, self.answered = sock, Framer(), [], set()
        return None

    def _read_reply(self) -> bytes | None:
        """The next reply that is not a late one for a message already acknowledged here (enhanced
        mode sends CA, then AA later): those are passed over, not taken for this message's."""
        deadline = time.monotonic() + self.spec["ack_timeout"]
        while True:
            while self.frames:
                payload = self.frames.pop(0).payload
                ctrl = parse_ack(payload)[1]
                if ctrl and ctrl in self.answered:
                    log.info("mllp %s: a later reply for an acknowledged message passed over", self.name)
                    continue
                return payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                self.frames.extend(self.framer.close())
                if not self.frames:
                    return None
                continue
            self.frames.extend(self.framer.push(data))

    def _still_open(self) -> bool:
        """Whether the receiver kept the connection since the last reply. Many close it after each
        ACK; sending into such a connection fails, and that is not the message's fault. Anything
        that arrived meanwhile (a late ACK) is kept for ``_read_reply``."""
        try:
            # Non-blocking: "nothing to read" (TLS 1.3 session tickets included) means still open.
            self.sock.setblocking(False)
            while True:
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return True
                if not data:
                    return False
                self.frames.extend(self.framer.push(data))
        except (OSError, ValueError):
            return False

    def send(self, row: _Row) -> Outcome:
        if self.sock is not None and not self._still_open():
            self.close()  # closed by the receiver after its last ACK: reconnect, no attempt lost
        if self.sock is None:
            failed = self._connect()
            if failed:
                return failed
        if row.control_id:
            self.answered.discard(row.control_id)  # sent again: its reply is awaited again
        try:
            self.sock.settimeout(self.spec["ack_timeout"])
            self.sock.sendall(frame(row.payload))
            ack = self._read_reply()
        except (socket.timeout, TimeoutError):
            return self._drop("ACK_TIMEOUT")
        except ssl.SSLError as exc:  # e.g. the receiver refused our client certificate after the handshake
            return self._drop(f"TLS_ERROR:{type(exc).__name__}")
        except OSError as exc:
            return self._drop(f"CONNECTION_LOST:{type(exc).__name__}")
        if ack is None:
            return self._drop("CONNECTION_CLOSED")
        code, ctrl, err = parse_ack(ack)
        if code is None:
            return self._drop("ACK_INVALID")
        if row.control_id and ctrl != row.control_id:
            # Not the answer to this message (a late reply to an earlier one?): the connection's
            # state is unknown, so it is dropped and this message tried again.
            return self._drop("ACK_MISMATCH")
        if code in ("AA", "CA"):
            if row.control_id:
                self.answered.add(row.control_id)
            return Outcome(True, ack_code=code, ack=ack)
        if code in ("AE", "AR", "CE", "CR"):
            if row.control_id:
                self.answered.add(row.control_id)
            return Outcome(False, f"{code}:{err}" if err else code, ack_code=code, ack=ack)
        return self._drop("ACK_INVALID")

    def _drop(self, error: str) -> Outcome:
        self.close()
        return Outcome(False, error, stop=True)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = self.framer = None
        self.frames, self.answered = [], set()


def outbound_file_name(outbound_id: int) -> str:
    return f"{outbound_id:012d}.hl7"


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers of the folder never see a partial file: write a hidden temporary file, fsync it,
    rename it over the final name, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _FolderTransport:
    def __init__(self, name: str, spec: dict):
        self.dir = Path(spec["path"])

    def send(self, row: _Row) -> Outcome:
        try:
            if not self.dir.is_dir():
                return Outcome(False, "FOLDER_MISSING", stop=True)
            _atomic_write(self.dir / outbound_file_name(row.id), row.payload)
        except OSError as exc:
            return Outcome(False, f"FOLDER_ERROR:{_errno.errorcode.get(exc.errno, type(exc).__name__)}", stop=True)
        return Outcome(True)

    def close(self) -> None:
        pass


_POLICY_KEYS = set(POLICY_DEFAULTS) | set(MLLP_DEFAULTS)


class _SftpTransport:
    """``transforms.delivery.deliver``: the heads of a round go up in one SFTP session, one file
    per message named by outbound id. When the session fails part-way, the files already in
    place count as delivered and only the others fail (a retry would upload them again, and the
    receiver would get every message before the failure twice)."""

    def __init__(self, name: str, spec: dict, resolve_connection):
        self.spec = {k: v for k, v in spec.items() if k not in _POLICY_KEYS}
        self.resolve = resolve_connection
        self.tmp = tempfile.TemporaryDirectory(prefix="hl7ics-outbound-")

    def send_many(self, rows: list[_Row]) -> list[Outcome]:
        try:
            from .delivery import deliver
        except ImportError:
            return [Outcome(False, "SFTP_UNAVAILABLE", stop=True)] * len(rows)
        paths = [Path(self.tmp.name) / outbound_file_name(row.id) for row in rows]
        arrived: set[str] = set()
        try:
            for path, row in zip(paths, rows):
                path.write_bytes(row.payload)
            result = deliver(paths, dict(self.spec), resolve_connection=self.resolve,
                             delivered=lambda p: arrived.add(p.name))
        except Exception as exc:  # the message of a transport error may hold a host or a path: class only
            failed = Outcome(False, f"SFTP_ERROR:{type(exc).__name__}", stop=True)
            return [Outcome(True) if path.name in arrived else failed for path in paths]
        finally:
            for path in paths:
                path.unlink(missing_ok=True)
        if isinstance(result, dict) and result.get("status", "delivered") != "delivered":
            return [Outcome(False, "SFTP_FAILED", stop=True)] * len(rows)
        return [Outcome(True) for _ in rows]

    def close(self) -> None:
        self.tmp.cleanup()


def _amqp_url(spec: dict, resolve_connection) -> str:
    from .queue_source import _amqp_url as from_connection

    if spec.get("url"):
        return spec["url"]
    conn = resolve_connection(spec["conn_id"])
    if not conn:
        raise ConfigError(f"queue destination: connection {spec['conn_id']} is not defined")
    return from_connection(conn)


class _QueueTransport:
    """RabbitMQ: persistent messages, publisher confirms, ``mandatory`` so that a message no queue
    takes comes back as a failure instead of being dropped by the broker."""

    def __init__(self, name: str, spec: dict, resolve_connection):
        self.spec, self.resolve = spec, resolve_connection
        self.conn = self.ch = None

    def send(self, row: _Row) -> Outcome:
        import pika

        try:
            if self.ch is None:
                params = pika.URLParameters(_amqp_url(self.spec, self.resolve))
                params.connection_attempts = 1
                params.socket_timeout = params.blocked_connection_timeout = 30
                self.conn = pika.BlockingConnection(params)
                self.ch = self.conn.channel()
                self.ch.confirm_delivery()
            # message_id is stable across resends, so a consumer can de-duplicate on it as on MSH-10.
            props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, message_id=f"hl7ics-outbound-{row.id}",
                                         content_type="application/hl7-v2")
            self.ch.basic_publish(exchange=self.spec.get("exchange") or "", routing_key=self.spec["queue"],
                                  body=row.payload, properties=props, mandatory=True)
        except ConfigError:
            return Outcome(False, "AMQP_NO_CONNECTION", stop=True)
        except pika.exceptions.UnroutableError:
            return self._drop("AMQP_UNROUTABLE")
        except pika.exceptions.NackError:
            return self._drop("AMQP_NACK")
        except Exception as exc:  # the URL holds a password: never the message, only the class
            return self._drop(f"AMQP_ERROR:{type(exc).__name__}")
        return Outcome(True)

    def _drop(self, error: str) -> Outcome:
        self.close()
        return Outcome(False, error, stop=True)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = self.ch = None


def _transport(name: str, spec: dict, resolve_connection):
    typ = spec["type"]
    if typ == "mllp":
        return _MllpTransport(name, spec)
    if typ == "folder":
        return _FolderTransport(name, spec)
    if typ == "sftp":
        return _SftpTransport(name, spec, resolve_connection)
    return _QueueTransport(name, spec, resolve_connection)


# --- delivery ----------------------------------------------------------------------------------

def backoff_seconds(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay after the ``attempts``-th failed attempt: min(cap, base * 2^(attempts-1)), then equal
    jitter (between half and all of it) so retries of many messages do not arrive together."""
    # The exponent is capped: 2**1024 overflows a float (max_attempts can be large: "never give up").
    delay = min(cap, base * (2 ** min(max(attempts - 1, 0), 60)))
    return delay / 2 + (rng or random).random() * delay / 2


_HEADS = ("SELECT q.id FROM outbound_queue q "
          "WHERE q.destination = :d AND q.status IN ('pending', 'failed') AND q.next_attempt_at <= :now "
          "AND NOT EXISTS (SELECT 1 FROM outbound_queue p WHERE p.destination = q.destination "
          "AND p.order_key = q.order_key AND p.id < q.id AND p.status IN ('pending', 'sending', 'failed')) "
          "ORDER BY q.next_attempt_at, q.id LIMIT :n")


def _claim(engine, destination: str, n: int, now: datetime) -> list[_Row]:
    """Mark up to ``n`` due heads (the oldest open row of each order key) ``sending`` and commit,
    before anything is sent."""
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        ids = [r[0] for r in conn.execute(text(_HEADS + (" FOR UPDATE SKIP LOCKED" if pg else "")),
                                          {"d": destination, "now": _ts(now), "n": n})]
        if not ids:
            return []
        marks = ", ".join(f":i{j}" for j in range(len(ids)))
        got = {r[0]: _Row(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in conn.execute(text(
            f"UPDATE outbound_queue SET status = 'sending', updated_at = :now WHERE id IN ({marks}) "
            "AND status IN ('pending', 'failed') RETURNING id, message_id, payload, control_id, attempts"),
            {"now": _ts(now), **{f"i{j}": i for j, i in enumerate(ids)}})}
    return [got[i] for i in ids if i in got]


def _release(engine, ids: list[int], now: datetime) -> None:
    """Claimed but not attempted: back to what they were, no attempt counted."""
    if not ids:
        return
    marks = ", ".join(f":i{j}" for j in range(len(ids)))
    with engine.begin() as conn:
        conn.execute(text(
            "UPDATE outbound_queue SET status = CASE WHEN attempts = 0 THEN 'pending' ELSE 'failed' END, "
            f"updated_at = :now WHERE id IN ({marks}) AND status = 'sending'"),
            {"now": _ts(now), **{f"i{j}": i for j, i in enumerate(ids)}})


def _finish(engine, row: _Row, outcome: Outcome, spec: dict, now: datetime, rng) -> str:
    """Record one attempt in its own commit: delivered, failed (next attempt after the backoff) or
    dead. Returns the new status ('' if the row was no longer ours)."""
    attempts = row.attempts + 1
    p = {"id": row.id, "a": attempts, "now": _ts(now), "code": outcome.ack_code, "ack": outcome.ack,
         "err": _clean(outcome.error, 200)}
    if outcome.ok:
        status = "delivered"
        # Also when another run took this slow send for an interrupted one meanwhile (and nobody
        # has claimed it again): it was delivered, and must not go out a second time.
        sql = ("UPDATE outbound_queue SET status = 'delivered', attempts = :a, ack_code = :code, ack = :ack, "
               "last_error = NULL, delivered_at = :now, updated_at = :now WHERE id = :id AND (status = 'sending' "
               "OR (status IN ('failed', 'dead') AND last_error = 'INTERRUPTED' AND attempts = :a))")
    elif attempts >= spec["max_attempts"]:
        status = "dead"
        sql = ("UPDATE outbound_queue SET status = 'dead', attempts = :a, ack_code = :code, ack = :ack, "
               "last_error = :err, updated_at = :now WHERE id = :id AND status = 'sending'")
    else:
        status = "failed"
        delay = backoff_seconds(attempts, spec["backoff_seconds"], spec["backoff_max_seconds"], rng)
        p["next"] = _ts(now + timedelta(seconds=math.ceil(delay)))
        sql = ("UPDATE outbound_queue SET status = 'failed', attempts = :a, ack_code = :code, ack = :ack, "
               "last_error = :err, next_attempt_at = :next, updated_at = :now WHERE id = :id AND status = 'sending'")
    with engine.begin() as conn:
        done = conn.execute(text(sql), p).rowcount
    return status if done == 1 else ""


def _recover_stale(engine, destination: str, spec: dict, now: datetime, stale_after: float, rng) -> list[tuple]:
    """'sending' rows left by a run that died mid-attempt: the message may or may not have arrived,
    so it counts as a failed attempt and is sent again (at-least-once)."""
    cutoff = _ts(now - timedelta(seconds=stale_after))
    with engine.connect() as c:
        rows = c.execute(text("SELECT id, message_id, control_id, attempts FROM outbound_queue "
                              "WHERE destination = :d AND status = 'sending' AND updated_at < :c ORDER BY id"),
                         {"d": destination, "c": cutoff}).all()
    out = []
    for rid, mid, ctrl, attempts in rows:
        row = _Row(rid, mid, b"", ctrl, attempts)
        out.append((row, _finish(engine, row, Outcome(False, "INTERRUPTED"), spec, now, rng)))
    return out


def dead_alert_key(destination: str) -> str:
    return f"{DEAD_ALERT_KIND}:{destination}"


def deliver_due(engine, destinations: dict[str, dict], now=None, limit: int = 5000, alerter=None,
                resolve_connection=None, stale_after_seconds: float = STALE_SENDING_SECONDS,
                max_seconds: float | None = None, rng: random.Random | None = None) -> dict:
    """Attempt the due messages of each destination, oldest open message per order key first.

    ``destinations`` maps a destination name to its parameters (see the module docstring); rows
    for names not in it wait. ``limit`` caps the attempts per destination and ``max_seconds``
    the run (checked between messages). ``now`` (naive UTC) replaces the clock for every
    timestamp and due check. Dead letters fire ``outbound_dead`` (key ``outbound_dead:<name>``)
    through ``alerter`` (default ``Alerter(engine)``); the key is resolved once the destination has
    no dead letter left. An invalid destination is skipped and reported by a ConfigError raised
    after the valid ones were served. Returns totals and per-destination counts."""
    from .alerting import connection_from_env

    resolve_connection = resolve_connection or connection_from_env
    rng = rng or random.Random()
    fixed = _now(now) if now is not None else None

    def clock() -> datetime:
        return fixed or _now()

    deadline = time.monotonic() + max_seconds if max_seconds else None
    totals = {"delivered": 0, "failed": 0, "dead": 0, "recovered": 0, "destinations": {}}
    problems = []
    # The run's time budget is shared: a silent receiver costs its ack_timeout every run, so the
    # order is shuffled each run, or destinations sorted after two silent ones would never be
    # served (a rotation by the minute repeats itself when the schedule shares a factor with it).
    names = sorted(destinations)
    rng.shuffle(names)
    for name in names:
        try:
            spec = check_destination(name, destinations[name])
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        r = _deliver_one(engine, name, spec, clock, limit, deadline, resolve_connection, stale_after_seconds, rng)
        totals["destinations"][name] = {k: v for k, v in r.items() if k != "dead_rows"}
        for k in ("delivered", "failed", "dead", "recovered"):
            totals[k] += r[k]
        _alert_dead(engine, name, r["dead_rows"], alerter, clock())
    if problems:
        raise ConfigError("; ".join(problems))
    return totals


def _deliver_one(engine, name, spec, clock, limit, deadline, resolve_connection, stale_after, rng) -> dict:
    r = {"attempted": 0, "delivered": 0, "failed": 0, "dead": 0, "recovered": 0, "stopped": None, "dead_rows": []}

    def count(row: _Row, status: str, outcome: Outcome) -> None:
        if status:
            r[status] += 1
        if status == "dead":
            r["dead_rows"].append((row.id, row.message_id, row.attempts + 1, _clean(outcome.error)))

    def record(row: _Row, outcome: Outcome) -> None:
        status = _finish(engine, row, outcome, spec, clock(), rng)
        r["attempted"] += 1
        count(row, status, outcome)
        if outcome.ok:
            log.debug("outbound %s to %s: %s", row.id, name, status or "lost to a concurrent run")
        else:
            log.info("outbound %s to %s: %s (%s)", row.id, name, status or "lost to a concurrent run",
                     _clean(outcome.error))

    for row, status in _recover_stale(engine, name, spec, clock(), stale_after, rng):
        r["recovered"] += 1
        count(row, status, Outcome(False, "INTERRUPTED"))
    transport = _transport(name, spec, resolve_connection)
    heads: list[_Row] = []
    i = 0
    try:
        while r["attempted"] < limit and not r["stopped"]:
            if deadline is not None and time.monotonic() > deadline:
                break
            heads = _claim(engine, name, min(ROUND, limit - r["attempted"]), clock())
            if not heads:
                break
            i = -1  # index of the last head handled: the ones after it are released
            if hasattr(transport, "send_many"):  # one session for the round (SFTP)
                try:
                    outcomes = transport.send_many(heads)
                except Exception as exc:  # a bug in a transport must not leave the rows 'sending'
                    outcomes = [Outcome(False, f"ERROR:{type(exc).__name__}", stop=True)] * len(heads)
                for i, (row, outcome) in enumerate(zip(heads, outcomes)):
                    record(row, outcome)
                r["stopped"] = next((_clean(o.error) for o in outcomes if o.stop), None)
            else:
                for i, row in enumerate(heads):
                    try:
                        outcome = transport.send(row)
                    except Exception as exc:  # a bug in a transport must not leave the row 'sending'
                        outcome = Outcome(False, f"ERROR:{type(exc).__name__}", stop=True)
                    record(row, outcome)
                    if outcome.stop:
                        r["stopped"] = _clean(outcome.error)
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        break
            _release(engine, [h.id for h in heads[i + 1:]], clock())
            heads = []
    finally:
        transport.close()
        if heads:  # an exception (the database?) mid-round: hand the unattempted rows back if we can
            try:
                _release(engine, [h.id for h in heads[i + 1:]], clock())
            except Exception:
                pass
    return r


def _alert_dead(engine, name: str, dead_rows: list[tuple], alerter, now: datetime) -> None:
    if alerter is None:
        from .alerting import Alerter

        alerter = Alerter(engine)
    key = dead_alert_key(name)
    if dead_rows:
        from .alerting import Alert

        for oid, mid, attempts, err in dead_rows:
            log.warning("outbound %s to %s is dead after %s attempts (%s)", oid, name, attempts, err)
        oid, mid, attempts, err = dead_rows[-1]
        alerter.fire(Alert(key=key, kind=DEAD_ALERT_KIND, severity="error",
                           params={"destination": name, "message_id": mid, "attempts": attempts,
                                   "last_error": err}), now=now)
        return
    with engine.connect() as c:
        left = c.execute(text("SELECT COUNT(*) FROM outbound_queue WHERE destination = :d AND status = 'dead'"),
                         {"d": name}).scalar()
    if not left:
        alerter.resolve(key, now=now)  # one primary-key read when nothing is open


# --- operations --------------------------------------------------------------------------------

def status(engine, now=None) -> list[dict]:
    """Per destination: counts per status, the oldest open message's creation time and age in
    seconds, and the dead letters (id, message_id, route, attempts, last_error, since)."""
    at = _now(now)
    by: dict[str, dict] = {}
    with engine.connect() as c:
        for dest, st, n, oldest in c.execute(text(
                "SELECT destination, status, COUNT(*), MIN(created_at) FROM outbound_queue "
                "GROUP BY destination, status")):
            d = by.setdefault(dest, {"destination": dest, **{s: 0 for s in STATUSES},
                                     "oldest_pending_at": None, "oldest_pending_seconds": None, "dead_letters": []})
            d[st] = n
            if st in OPEN_STATUSES:
                o = _parse_ts(oldest)
                if d["oldest_pending_at"] is None or o < d["oldest_pending_at"]:
                    d["oldest_pending_at"] = o
        for oid, dest, mid, route, attempts, err, since in c.execute(text(
                "SELECT id, destination, message_id, route, attempts, last_error, updated_at FROM outbound_queue "
                "WHERE status = 'dead' ORDER BY destination, id")):
            by[dest]["dead_letters"].append({"id": oid, "message_id": mid, "route": route, "attempts": attempts,
                                             "last_error": err, "since": _parse_ts(since)})
    for d in by.values():
        if d["oldest_pending_at"] is not None:
            d["oldest_pending_seconds"] = max(0, int((at - d["oldest_pending_at"]).total_seconds()))
    return [by[k] for k in sorted(by)]


def retry(engine, id: int | None = None, dead_letter: bool = False, destination: str | None = None,
          now=None) -> int:
    """Requeue now, with a fresh attempt budget: the row ``id`` (dead or failed), or with
    ``dead_letter`` every dead letter (of ``destination``). Delivered rows are never requeued.
    A requeued row keeps its place: it is again the oldest open message of its patient."""
    if id is None and not dead_letter:
        raise ValueError("retry needs an outbound id or dead_letter=True")
    where = ["status IN ('dead', 'failed')" if id is not None and not dead_letter else "status = 'dead'"]
    p: dict = {"now": _ts(_now(now))}
    if id is not None:
        where.append("id = :id")
        p["id"] = int(id)
    if destination:
        where.append("destination = :d")
        p["d"] = destination
    with engine.begin() as conn:
        return conn.execute(text(
            "UPDATE outbound_queue SET status = 'pending', attempts = 0, next_attempt_at = :now, updated_at = :now "
            f"WHERE {' AND '.join(where)}"), p).rowcount


def _engine_for(ns):
    from .config import Settings
    from .warehouse import get_engine

    settings = Settings.load(getattr(ns, "config", None),
                             getattr(ns, "warehouse_url", None) or getattr(ns, "warehouse", None))
    return get_engine(settings.warehouse_url)


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def cli_status(ns, out=None) -> int:
    """``hl7ics outbound status [--warehouse URL]``: counts per destination and status, the
    oldest waiting message's age, and every dead letter. Exit 0."""
    out = out or sys.stdout
    rows = status(_engine_for(ns))
    if not rows:
        print("no outbound messages", file=out)
        return 0
    print(f"{'destination':<24}{'pending':>9}{'sending':>9}{'failed':>8}{'delivered':>11}{'dead':>6}  oldest waiting",
          file=out)
    for d in rows:
        print(f"{d['destination']:<24}{d['pending']:>9}{d['sending']:>9}{d['failed']:>8}{d['delivered']:>11}"
              f"{d['dead']:>6}  {_age(d['oldest_pending_seconds'])}", file=out)
    dead = [(d["destination"], x) for d in rows for x in d["dead_letters"]]
    if dead:
        print("\ndead letters (hl7ics outbound retry ID | --dead-letter [--destination D]):", file=out)
        for dest, x in dead:
            print(f"  #{x['id']} {dest} message {x['message_id']} route {x['route']}: {x['attempts']} attempts, "
                  f"last error {x['last_error'] or '-'}, since {x['since']}", file=out)
    return 0


def cli_retry(ns, out=None, err=None) -> int:
    """``hl7ics outbound retry ID | --dead-letter [--destination D]``. ``ns`` has id (or None),
    dead_letter, destination (optional: warehouse, config). Exit 0 when something was requeued
    (or --dead-letter found none), 1 when the ID is unknown, delivered or already waiting, 2 on
    a usage error."""
    out, err = out or sys.stdout, err or sys.stderr
    oid = getattr(ns, "id", None)
    dead_letter = bool(getattr(ns, "dead_letter", False))
    if oid is None and not dead_letter:
        print("hl7ics outbound retry: give an outbound ID or --dead-letter", file=err)
        return 2
    try:
        oid = int(oid) if oid is not None else None
    except (TypeError, ValueError):
        print("hl7ics outbound retry: the ID is a number (see hl7ics outbound status)", file=err)
        return 2
    n = retry(_engine_for(ns), id=oid, dead_letter=dead_letter, destination=getattr(ns, "destination", None))
    if oid is not None and n == 0:
        print(f"outbound #{oid} was not requeued: unknown, delivered, or already waiting", file=err)
        return 1
    print(f"requeued {n} message(s); the next delivery run sends them", file=out)
    return 0


__all__ = ["Outcome", "backoff_seconds", "check_destination", "cli_retry", "cli_status", "control_id_of",
           "dead_alert_key", "deliver_due", "enqueue", "order_key", "outbound_file_name", "parse_ack", "retry",
           "route_pending", "status"]
