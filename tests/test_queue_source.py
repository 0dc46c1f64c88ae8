"""Queue source against the real RabbitMQ on this machine (127.0.0.1:5672): messages are stored and
committed before they are acknowledged, redeliveries after a crash store nothing twice, a failed
store leaves the messages on the queue, and names survive exactly."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from transforms.config import ConfigError, Settings
from transforms.ingest import Ingestor
from transforms.generator import generate_mix

from test_ingest import rows, scalar

ROOT = Path(__file__).resolve().parent.parent
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"




@pytest.fixture
def queue(rabbit):
    import pika

    name = f"hl7ics-test-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(rabbit))
    ch = conn.channel()
    ch.queue_declare(queue=name, durable=True)
    yield name
    ch.queue_delete(queue=name)
    conn.close()


def publish(queue: str, bodies: list[bytes], with_ids: bool = True) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    for i, b in enumerate(bodies):
        props = pika.BasicProperties(delivery_mode=2, message_id=f"m-{i}" if with_ids else None)
        ch.basic_publish(exchange="", routing_key=queue, body=b, properties=props)
    conn.close()


def depth(queue: str) -> int:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    n = conn.channel().queue_declare(queue=queue, durable=True, passive=True).method.message_count
    conn.close()
    return n


@pytest.fixture
def ingestor(tmp_path, warehouse_url, hl7ics_home, queue, monkeypatch):
    cfg = tmp_path / "config"
    shutil.copytree(ROOT / "config", cfg)
    doc = yaml.safe_load((cfg / "facilities.yaml").read_text(encoding="utf-8"))
    for f in doc["facilities"]:
        if f["code"] == "CHU-SO":
            f["sources"].append({"type": "queue", "conn_id": "hl7ics_amqp_test", "queue": queue, "prefetch": 50})
    (cfg / "facilities.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_AMQP_TEST", "amqp://guest:guest@127.0.0.1:5672/%2F")
    ing = Ingestor(Settings.load(cfg, warehouse_url), run_id="run-queue")
    ing.sync_facilities()
    return ing


def test_messages_are_acked_only_after_commit(ingestor, queue):
    bodies = generate_mix(230, seed=4)
    publish(queue, bodies)
    counts = ingestor.ingest_queues("CHU-SO")
    assert counts.messages == 230 and counts.loaded + counts.duplicates + counts.quarantined == 230
    assert depth(queue) == 0
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store WHERE source = 'queue'") == 230
    assert scalar(ingestor.engine, "SELECT COUNT(DISTINCT source_ref) FROM message_store") == 230
    # exact bytes kept
    raw = {bytes(r[0]) for r in rows(ingestor.engine, "SELECT raw FROM message_store")}
    assert raw == set(bodies)


def test_a_crash_before_the_ack_redelivers_and_nothing_is_stored_twice(ingestor, queue, monkeypatch):
    import pika.adapters.blocking_connection as bc

    publish(queue, generate_mix(120, seed=5))
    real_ack = bc.BlockingChannel.basic_ack
    calls = {"n": 0}

    def crash_on_second_ack(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise bc.exceptions.ConnectionClosed(320, "simulated crash after commit")
        return real_ack(self, *a, **k)

    monkeypatch.setattr(bc.BlockingChannel, "basic_ack", crash_on_second_ack)
    with pytest.raises(Exception):
        ingestor.ingest_queues("CHU-SO")
    stored = scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store")
    assert stored == 100  # two batches of 50 committed; the second one's ack was lost
    monkeypatch.setattr(bc.BlockingChannel, "basic_ack", real_ack)
    counts = ingestor.ingest_queues("CHU-SO")  # the broker redelivers the unacked 50 (+ the last 20)
    assert counts.messages == 20
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store") == 120
    assert depth(queue) == 0


def test_a_failed_store_leaves_the_messages_on_the_queue(ingestor, queue, monkeypatch):
    publish(queue, generate_mix(30, seed=6))

    def broken(items):
        raise OSError("disk full")

    monkeypatch.setattr(ingestor, "ingest_messages", broken)
    with pytest.raises(OSError):
        ingestor.ingest_queues("CHU-SO")
    assert depth(queue) == 30
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store") == 0


def test_names_survive_and_ids_fall_back_to_content_hash(ingestor, queue):
    msg = ("MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261102080000||ADT^A04|Q-1|P|2.5|||||||UNICODE UTF-8\r"
           "EVN|A04|20261102080000\rPID|1||P1^^^CHU-SO^MR||Ɖogbé^Kɔfi Ŋɔtsé||19900101|M\r"
           "PV1|1|O|CONS||||||||||||||||V1\r").encode("utf-8")
    publish(queue, [msg, msg], with_ids=False)  # the same body published twice: loaded once
    counts = ingestor.ingest_queues("CHU-SO")
    assert (counts.messages, counts.loaded, counts.duplicates) == (2, 1, 1) and depth(queue) == 0
    assert rows(ingestor.engine, "SELECT family_name, given_name FROM phi_patient") == [("Ɖogbé", "Kɔfi Ŋɔtsé")]
    assert all(r[0].startswith(f"queue:{queue}:") for r in rows(ingestor.engine, "SELECT source_ref FROM message_store"))


def test_a_message_published_again_is_stored_as_a_duplicate_not_dropped(ingestor, queue):
    """A publisher that sends the same messages again (same IDs, same bodies, not a redelivery):
    every copy received has its own row, judged a duplicate, and can be found again; the first
    copies are untouched and the facts are loaded once."""
    bodies = generate_mix(40, seed=11)
    publish(queue, bodies)
    first = ingestor.ingest_queues("CHU-SO")
    before = rows(ingestor.engine, "SELECT id, source_ref, status FROM message_store ORDER BY id")
    facts = scalar(ingestor.engine, "SELECT COUNT(*) FROM fact_lab_result")
    publish(queue, bodies)
    again = ingestor.ingest_queues("CHU-SO")
    assert again.messages == 40 and again.duplicates == first.loaded and depth(queue) == 0
    after = rows(ingestor.engine, "SELECT id, source_ref, status, sha256 FROM message_store ORDER BY id")
    assert [r[:3] for r in after[:40]] == before
    copies = after[40:]
    assert len(copies) == 40 and len({r[1] for r in after}) == 80
    refs = {r[1] for r in before}
    assert all(r[1].split(":copy:")[0] in refs for r in copies)
    assert sorted(r[3] for r in copies) == sorted(r[3] for r in after[:40])
    assert {r[2] for r in copies} <= {"duplicate", "quarantined"}
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM fact_lab_result") == facts


def test_a_reused_message_id_with_another_body_is_another_message(ingestor, queue):
    """Publishers restart their message-ID counters: a new message under an ID already seen must be
    stored, not taken for a redelivery and acknowledged away."""
    first, second = generate_mix(2, seed=8)
    publish(queue, [first])
    assert ingestor.ingest_queues("CHU-SO").messages == 1
    publish(queue, [second])  # message_id "m-0" again
    assert ingestor.ingest_queues("CHU-SO").messages == 1
    assert depth(queue) == 0
    assert scalar(ingestor.engine, "SELECT COUNT(DISTINCT sha256) FROM message_store") == 2


def test_queue_source_configuration_errors(tmp_path):
    from transforms.config import parse_facilities

    base = yaml.safe_load((ROOT / "config" / "facilities.yaml").read_text(encoding="utf-8"))
    fac = base["facilities"][0]
    for src, message in (({"type": "queue", "queue": "q"}, "needs 'conn_id'"),
                         ({"type": "queue", "conn_id": "c", "queue": "q", "prefetch": 0}, "prefetch"),
                         ({"type": "queue", "url": "amqp://u:secret@h/", "queue": "q"}, "not in the file")):
        doc = {"facilities": [{**fac, "sources": [src]}]}
        with pytest.raises(ConfigError, match=message) as exc:
            parse_facilities(doc)
        assert "secret" not in str(exc.value)


def test_refused_credentials_are_a_configuration_error_not_retried(ingestor, queue, monkeypatch):
    """A wrong password fails at once (ConfigError: the retry policy does not retry it), without
    the password in the message."""
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_AMQP_TEST", "amqp://guest:not-the-password@127.0.0.1:5672/%2F")
    with pytest.raises(ConfigError, match="refused the connection's credentials") as err:
        ingestor.ingest_queues("CHU-SO")
    assert "not-the-password" not in str(err.value)


def test_a_message_id_that_is_not_plain_text_is_hashed_not_stored(ingestor, queue):
    """A publisher's message ID with a NUL byte, separators or control characters: source_ref gets
    its hash (PostgreSQL refused the NUL and the whole batch went back on the queue for ever)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    for i, b in enumerate(generate_mix(5, seed=3)):
        mid = ["evil\x00id", "../../etc/passwd", "a\rb", "ok-3", "x" * 255][i]
        ch.basic_publish(exchange="", routing_key=queue, body=b,
                         properties=pika.BasicProperties(delivery_mode=2, message_id=mid))
    conn.close()
    assert ingestor.ingest_queues("CHU-SO").loaded == 5
    assert depth(queue) == 0
    refs = [r[0] for r in rows(ingestor.engine, "SELECT source_ref FROM message_store ORDER BY id")]
    assert len(set(refs)) == 5
    assert not any(bad in r for r in refs for bad in ("\x00", "..", "/", "\r", "x" * 255))
    assert sum(":ok-3:" in r for r in refs) == 1


def test_the_run_summary_counts_what_the_queue_delivered(ingestor, queue):
    """A facility fed by a queue: ingest_run has its messages (it showed zero: no file)."""
    publish(queue, generate_mix(12, seed=9))
    assert ingestor.ingest_queues("CHU-SO").messages == 12
    publish(queue, generate_mix(3, seed=10), with_ids=False)
    ingestor.ingest_queues("CHU-SO")
    [run] = [r for r in ingestor.record_run(["CHU-SO"]) if r["facility"] == "CHU-SO"]
    assert (run["files"], run["messages"], run["loaded"] + run["duplicates"] + run["quarantined"]) == (0, 15, 15)
    assert ingestor.record_run(["CHU-SO"]) == ingestor.record_run(["CHU-SO"])  # recomputed, not added
