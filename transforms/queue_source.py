"""RabbitMQ (AMQP 0-9-1) source: a facility's HL7 messages published to a queue.

Input: a facility's ``queue`` source (``config/facilities.yaml``: ``conn_id`` of an Airflow
connection holding the AMQP URL — ``amqp://user:password@host:5672/vhost`` —, ``queue``,
``prefetch`` (bounded, default 200), ``max_messages`` per run) and an ``Ingestor``.
Output: every consumed message stored in ``message_store`` (``source = 'queue'``) and loaded by the
same loader as files, then acknowledged. The broker's copy is released only after the commit
(manual acks, ``multiple=True`` up to the last committed delivery): a crash between commit and ack
makes the broker redeliver, and a redelivered message is recognised by its ``source_ref``
(the AMQP ``message_id`` property, else the SHA-256 of the body) and only acknowledged again, so
redeliveries are idempotent. A message the loader cannot even store is never acked (nacked with
requeue) and the run fails, so nothing is lost.

A delivery the broker does not mark ``redelivered`` is a new publication even when its
``source_ref`` is already stored (a publisher that sent the same message again): it gets a row
of its own, under that reference with a ``:copy:`` suffix, and the loader judges it (usually a
``duplicate``), so every message received can be found again.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from sqlalchemy import text

from .config import ConfigError
from .errors import SourceError

DEFAULT_PREFETCH = 200
# A publisher's message ID is used as it is only when it is plain text of this shape; any other
# (NUL bytes, separators, control characters) is replaced by its hash, so no sender-chosen text that
# a database or a path could choke on reaches source_ref.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,200}")


@dataclass(frozen=True)
class QueueOptions:
    url: str
    queue: str
    prefetch: int = DEFAULT_PREFETCH
    max_messages: int = 100_000
    idle_seconds: float = 1.0  # stop when the queue stays empty this long

    @classmethod
    def from_source(cls, options: dict, resolve_connection) -> "QueueOptions":
        conn_id = options.get("conn_id")
        url = options.get("url")
        if conn_id:
            conn = resolve_connection(conn_id)
            if not conn:
                raise ConfigError(f"queue source: connection {conn_id} is not defined")
            url = _amqp_url(conn)
        if not url or not options.get("queue"):
            raise ConfigError("queue source needs 'conn_id' (or 'url') and 'queue'")
        prefetch = int(options.get("prefetch", DEFAULT_PREFETCH))
        if not 1 <= prefetch <= 10_000:
            raise ConfigError("queue source: prefetch must be between 1 and 10000")
        return cls(url, str(options["queue"]), prefetch, int(options.get("max_messages", 100_000)),
                   float(options.get("idle_seconds", 1.0)))


def _amqp_url(conn: dict) -> str:
    from urllib.parse import quote

    extra = conn.get("extra") or {}
    if extra.get("url"):
        return extra["url"]
    user = quote(conn.get("login") or "guest", safe="")
    pw = quote(conn.get("password") or "", safe="")
    vhost = quote(conn.get("schema") or "/", safe="")
    return f"amqp://{user}:{pw}@{conn.get('host') or '127.0.0.1'}:{conn.get('port') or 5672}/{vhost}"


def source_ref(queue: str, properties, body: bytes) -> str:
    """What identifies one delivery's message, so a redelivery after a crash is recognised: the
    publisher's message ID with the start of the body's hash (publishers restart their counters,
    and a reused ID with another body is another message), or the body's hash alone."""
    mid = getattr(properties, "message_id", None)
    digest = hashlib.sha256(body).hexdigest()
    if isinstance(mid, str) and mid and not _PLAIN_ID.fullmatch(mid):
        mid = "h" + hashlib.sha256(mid.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    ident = f"{mid}:{digest[:16]}" if isinstance(mid, str) and mid else digest
    return f"queue:{queue}:{ident}"


def consume(ingestor, facility_code: str, opts: QueueOptions, batch: int | None = None):
    """Consume, store, commit, then ack, batch after batch; returns the loader's Counts."""
    import pika

    from .load import Counts, Incoming

    batch = batch or opts.prefetch
    total = Counts()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(opts.url))
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError,
            pika.exceptions.ProbableAccessDeniedError):
        # Credentials or permissions: retrying cannot help, a person must fix the connection.
        raise ConfigError(f"queue source of {facility_code}: the broker refused the connection's credentials "
                          "or virtual host") from None
    except Exception as exc:  # the URL holds the password: only the class is reported
        raise SourceError(f"queue source of {facility_code}: cannot connect ({type(exc).__name__})") from None
    try:
        ch = conn.channel()
        ch.queue_declare(queue=opts.queue, durable=True, passive=True)
        ch.basic_qos(prefetch_count=opts.prefetch)
        taken = 0
        while taken < opts.max_messages:
            pending: list[tuple[int, str, bytes, bool]] = []
            for method, props, body in ch.consume(opts.queue, inactivity_timeout=opts.idle_seconds):
                if method is None:
                    break
                pending.append((method.delivery_tag, source_ref(opts.queue, props, body), body,
                                bool(method.redelivered)))
                if len(pending) >= batch or taken + len(pending) >= opts.max_messages:
                    break
            if not pending:
                break
            try:
                total.add(_store(ingestor, facility_code, pending, Incoming))
            except Exception:
                ch.basic_nack(delivery_tag=pending[-1][0], multiple=True, requeue=True)
                raise
            # Committed: the broker may forget these deliveries now.
            ch.basic_ack(delivery_tag=pending[-1][0], multiple=True)
            taken += len(pending)
        ch.cancel()
    except pika.exceptions.AMQPError as exc:
        raise SourceError(f"queue source of {facility_code}: {type(exc).__name__}") from None
    finally:
        try:
            conn.close()
        except Exception:
            pass
    return total


def _store(ingestor, facility_code: str, pending: list[tuple[int, str, bytes, bool]], Incoming):
    from .load import Counts

    refs = [r for _, r, _, _ in pending]
    with ingestor.engine.connect() as c:
        known = set()
        for i in range(0, len(refs), 500):
            chunk = refs[i:i + 500]
            marks = ", ".join(f":r{j}" for j in range(len(chunk)))
            known |= {r[0] for r in c.execute(text(f"SELECT source_ref FROM message_store WHERE source = 'queue' "
                                                   f"AND source_ref IN ({marks})"),
                                              {f"r{j}": r for j, r in enumerate(chunk)})}
    seen: set[str] = set()
    items = []
    for _tag, ref, body, redelivered in pending:
        if ref in known or ref in seen:
            if redelivered:
                continue  # a redelivery of a message already committed: acknowledge it again, store nothing
            # Published again: a new message with the same reference. A random suffix keeps the
            # reference unique; a redelivery of this copy is recognised by the reference it shares.
            items.append(Incoming(body, "queue", f"{ref}:copy:{uuid.uuid4().hex[:16]}", facility_code))
            continue
        seen.add(ref)
        items.append(Incoming(body, "queue", ref, facility_code))
    if not items:
        return Counts()
    return ingestor.ingest_messages(items)
