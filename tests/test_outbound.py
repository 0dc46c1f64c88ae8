"""Outbound delivery (issue 9, points 4 and 5) on SQLite and the real PostgreSQL: routing into the
durable queue, delivery over MLLP to the project's own listener (plain, TLS, mutual TLS) and to a
scripted receiver (AA, AE/AR with ERR, silence, closed connections), per-patient order with a
poison message, backoff and dead letters with an alert, the retry CLI, crash recovery, and the
folder, SFTP and RabbitMQ destinations.

Time is simulated: ``deliver_due(now=...)`` decides what is due, so no test sleeps through a
backoff. The only real waits are the ACK timeouts configured on the destinations.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import types
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from listener_support import ListenerProcess, free_port, make_certs
from mllp_receivers import ScriptedReceiver
from transforms import outbound
from transforms.alerting import Alerter, AlertingConfig
from transforms.facts import PatientKeyer
from transforms.warehouse import get_engine

ROOT = Path(__file__).resolve().parent.parent
KEYER = PatientKeyer(bytes.fromhex(os.environ["HL7ICS_PATIENT_KEY"]))
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
# Identifiers and names a test can look for: none of them may appear outside payloads and ACKs.
PATIENTS = {"PA": ("TG-771-ADJO", "Adjoa"), "PB": ("TG-552-KOMLAN", "Komlan"), "PC": ("TG-904-ESSI", "Essi"),
            "PD": ("TG-318-YAO", "Yawo")}


def hl7(ctrl: str, patient: str | None = "PA", facility: str = "CHU-SO", mtype: str = "ADT^A08^ADT_A01",
        extra: str = "") -> bytes:
    segs = [f"MSH|^~\\&|SIH|{facility}|HL7ICS|MOH|20261102080000||{mtype}|{ctrl}|P|2.5",
            "EVN|A08|20261102080000"]
    if patient:
        pid, given = PATIENTS[patient]
        segs.append(f"PID|1||{pid}^^^{facility}^MR||Amavi^{given}||19900101|F")
    segs.append(f"PV1|1|I|MED||||||||||||||||V-{ctrl}{extra}")
    return ("\r".join(segs) + "\r").encode("utf-8")


@dataclass
class Result:
    rule: str
    destination: str | None
    payload: bytes | None = None
    review: list | None = None
    error: str | None = None


class FakeRouter:
    """Stands in for transforms.routing.Router: every message to each destination unchanged, SIU
    filtered, a message with an unmapped code held for review, 'BOOM' raises."""

    def __init__(self, destinations=("lab",)):
        self.destinations = destinations

    def route(self, raw: bytes, facility_charset: str | None = None) -> list[Result]:
        if b"BOOM" in raw:
            raise RuntimeError("router failed on " + raw.decode())  # the text must never be stored
        if b"|SIU^" in raw:
            return [Result("no_siu", None)]
        if b"UNMAPPED" in raw:
            return [Result("lab_results", "lab", review=[("loinc", "XYZ-1")])]
        return [Result(f"to_{d}", d, payload=raw) for d in self.destinations]


def store(engine, raws: list[bytes], status: str = "loaded", facility: str = "CHU-SO") -> list[int]:
    """Messages as the loader leaves them in message_store."""
    now = outbound._ts(outbound._now())
    ids = []
    with engine.begin() as c:
        for raw in raws:
            ids.append(c.execute(text(
                "INSERT INTO message_store (facility_code, sending_facility, control_id, received_at, source, source_ref, "
                "sha256, raw, size_bytes, status, updated_at) VALUES (:f, :f, :c, :t, 'test', :ref, :sha, :raw, :n, :s, :t) "
                "RETURNING id"), {"f": facility, "c": outbound.control_id_of(raw), "t": now, "ref": uuid.uuid4().hex,
                                  "sha": uuid.uuid4().hex, "raw": raw, "n": len(raw), "s": status}).scalar())
    return ids


def q(engine, sql: str, **p) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text(sql), p)]


class Clock:
    """The delivery runs' ``now``. It starts a day ahead of the wall clock, so every row queued or
    requeued during the test (stamped with the real time) is already due; after that it only moves
    when a test advances it."""

    def __init__(self):
        self.t = outbound._now() + timedelta(days=1)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> datetime:
        self.t += timedelta(seconds=seconds)
        return self.t


def mllp(port: int, **kw) -> dict:
    return {"type": "mllp", "host": "127.0.0.1", "port": port, "ack_timeout": 10, "connect_timeout": 5,
            "max_attempts": 5, "backoff_seconds": 10, "backoff_max_seconds": 60, **kw}


@pytest.fixture
def engine(warehouse_url):
    return get_engine(warehouse_url)


@pytest.fixture
def alerter(engine):
    return Alerter(engine, AlertingConfig())  # ops_alert only


def route(engine, raws: list[bytes], router=None) -> list[int]:
    store(engine, raws)
    outbound.route_pending(engine, router or FakeRouter(), keyer=KEYER)
    return [r[0] for r in q(engine, "SELECT id FROM outbound_queue ORDER BY id")]


def run(engine, dests, clock, alerter, **kw) -> dict:
    return outbound.deliver_due(engine, dests, now=clock(), alerter=alerter, **kw)


def drain(engine, dests, clock, alerter, runs: int = 20) -> None:
    """Delivery runs, each after every backoff has passed, until nothing is open."""
    for _ in range(runs):
        run(engine, dests, clock, alerter)
        if not q(engine, "SELECT id FROM outbound_queue WHERE status IN ('pending', 'sending', 'failed')"):
            return
        clock.advance(61)
    raise AssertionError("messages still open after the runs")


def by_control(engine) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in q(engine, "SELECT control_id, status, attempts, last_error, ack_code FROM outbound_queue")}


def assert_no_patient_data(engine) -> None:
    texts = q(engine, "SELECT order_key, last_error, control_id FROM outbound_queue") \
        + q(engine, "SELECT route, destination, detail FROM message_route") \
        + q(engine, "SELECT message, alert_key FROM ops_alert") + q(engine, "SELECT params, error_class FROM alert_state")
    blob = " ".join(str(v) for row in texts for v in row)
    for pid, given in PATIENTS.values():
        assert pid not in blob and given not in blob


# --- routing into the queue --------------------------------------------------------------------

def test_enqueue_traces_every_hop_and_is_idempotent(engine):
    raw = hl7("E1")
    [mid] = store(engine, [raw])
    results = [Result("to_lab", "lab", payload=raw), Result("to_dhis", "dhis", payload=raw + b"ZZZ|1\r"),
               Result("lab_results", "lab", review=[("loinc", "XYZ-1"), ("loinc", "XYZ-2")]),
               Result("no_siu", None), Result("broken", "lab", error="MAPPING_FAILED")]
    with engine.begin() as c:
        counts = outbound.enqueue(c, mid, results, "patient:k1")
    assert counts == {"queued": 2, "review": 1, "filtered": 1, "error": 1}
    with engine.begin() as c:  # routing the same message again writes nothing twice
        assert outbound.enqueue(c, mid, results, "patient:k1") == {"queued": 0, "review": 0, "filtered": 0, "error": 0}
    queued = q(engine, "SELECT destination, route, payload, control_id, status, attempts, order_key FROM outbound_queue "
                       "ORDER BY destination")
    assert [(d, r, bytes(p), c, s, a, k) for d, r, p, c, s, a, k in queued] == [
        ("dhis", "to_dhis", raw + b"ZZZ|1\r", "E1", "pending", 0, "patient:k1"),
        ("lab", "to_lab", raw, "E1", "pending", 0, "patient:k1")]
    hops = q(engine, "SELECT route, destination, outcome, detail, outbound_id IS NOT NULL FROM message_route "
                     "WHERE message_id = :m ORDER BY route", m=mid)
    assert hops == [("broken", "lab", "error", "MAPPING_FAILED", False), ("lab_results", "lab", "review",
                    "loinc:XYZ-1, loinc:XYZ-2", False), ("no_siu", None, "filtered", None, False),
                    ("to_dhis", "dhis", "queued", None, True), ("to_lab", "lab", "queued", None, True)]
    assert q(engine, "SELECT mapping, code FROM route_review ORDER BY code") == [("loinc", "XYZ-1"), ("loinc", "XYZ-2")]


def test_route_pending_routes_each_loaded_message_once_with_pseudonymous_order_keys(engine):
    a, b, nopid = hl7("R1", "PA"), hl7("R2", "PB"), hl7("R3", None)
    siu, held, boom = hl7("R4", "PA", mtype="SIU^S12"), hl7("R5", "PB", extra="UNMAPPED"), hl7("R6", "PC", extra="BOOM")
    late = hl7("R7", "PA")
    ids = store(engine, [a, b, nopid, siu, held, boom])
    [late_id] = store(engine, [late], status="received")  # not loaded yet: not routed yet
    got = outbound.route_pending(engine, FakeRouter(), keyer=KEYER, batch=4)  # two batches
    assert got == {"messages": 6, "queued": 3, "review": 1, "filtered": 1, "error": 1, "retried": 0}
    keys = dict(q(engine, "SELECT control_id, order_key FROM outbound_queue"))
    assert keys["R1"] == "patient:" + KEYER.key("CHU-SO", "CHU-SO", PATIENTS["PA"][0])  # = dim_patient.patient_key
    assert keys["R2"] == "patient:" + KEYER.key("CHU-SO", "CHU-SO", PATIENTS["PB"][0])
    assert keys["R3"] == "facility:CHU-SO"
    assert q(engine, "SELECT outcome, detail FROM message_route WHERE message_id = :m", m=ids[5]) == [
        ("error", "ROUTER_ERROR:RuntimeError")]
    assert q(engine, "SELECT message_id, mapping, code FROM route_review") == [(ids[4], "loinc", "XYZ-1")]
    assert_no_patient_data(engine)

    # A second pass finds nothing; the watermark does not hide a message loaded afterwards.
    assert outbound.route_pending(engine, FakeRouter(), keyer=KEYER)["messages"] == 0
    with engine.begin() as c:
        c.execute(text("UPDATE message_store SET status = 'loaded', updated_at = :t WHERE id = :i"),
                  {"t": outbound._ts(outbound._now()), "i": late_id})
    assert outbound.route_pending(engine, FakeRouter(), keyer=KEYER)["queued"] == 1
    assert outbound.route_pending(engine, FakeRouter(), keyer=KEYER)["messages"] == 0
    assert q(engine, "SELECT COUNT(*) FROM outbound_queue") == [(4,)]
    assert q(engine, "SELECT COUNT(DISTINCT message_id), COUNT(*) FROM message_route") == [(7, 7)]
    assert keys["R1"] == dict(q(engine, "SELECT control_id, order_key FROM outbound_queue"))["R7"]


def test_route_pending_refuses_a_patient_key_other_than_the_warehouses(engine):
    """Order keys are patient keys: a routing run with another key than the one the warehouse was
    loaded with fails with a configuration error (not retried), routes nothing, and the message
    names no key; with the warehouse's own key it routes."""
    from transforms.config import ConfigError
    from transforms.facts import PatientKeyer
    from transforms.warehouse import Writer, utcnow

    store(engine, [hl7("K1", "PA")])
    with engine.begin() as c:
        Writer(c).insert("warehouse_setting", ("name", "value", "updated_at"),
                         [("patient_key_check", KEYER.fingerprint, utcnow())], on_conflict_nothing=("name",))
    other = PatientKeyer(b"another key entirely, 32 bytes..")
    with pytest.raises(ConfigError, match="patient key is not the one") as err:
        outbound.route_pending(engine, FakeRouter(), keyer=other)
    assert other.fingerprint not in str(err.value) and KEYER.fingerprint not in str(err.value)
    assert q(engine, "SELECT COUNT(*) FROM message_route") == [(0,)]
    assert outbound.route_pending(engine, FakeRouter(), keyer=KEYER)["queued"] == 1


class FixedRouter(FakeRouter):
    """The same routes once the mapping has its row and the router its fix."""

    def route(self, raw: bytes, facility_charset: str | None = None) -> list[Result]:
        if b"UNMAPPED" in raw:
            return [Result("lab_results", "lab", payload=raw)]
        return super().route(raw.replace(b"BOOM", b"B00M"), facility_charset)


def test_held_and_failed_copies_alert_until_none_is_held(engine):
    """Copies held for review or that failed to build are not sent: their destination alerts
    (``routing_held``) and the alert stays open while they are held, clean passes or not. They are
    routed again every HELD_RETRY_SECONDS; once the mapping or the router is fixed they are queued,
    their review rows resolved, and the alert closes."""
    store(engine, [hl7("H1", "PA"), hl7("H2", "PB", extra="UNMAPPED"), hl7("H3", "PC", extra="BOOM")])
    outbound.route_pending(engine, FakeRouter(), keyer=KEYER, alerter=Alerter(engine, AlertingConfig()))
    assert q(engine, "SELECT alert_key, kind, severity, state FROM alert_state ORDER BY alert_key") == [
        ("routing_held:-", "routing_held", "error", "open"), ("routing_held:lab", "routing_held", "warning", "open")]
    texts = " ".join(r[0] for r in q(engine, "SELECT message FROM ops_alert"))
    assert "loinc:XYZ-1" in texts and "ROUTER_ERROR:RuntimeError" in texts
    assert_no_patient_data(engine)
    store(engine, [hl7("H4", "PA")])
    outbound.route_pending(engine, FakeRouter(), keyer=KEYER)
    assert q(engine, "SELECT alert_key, state FROM alert_state ORDER BY alert_key") == [
        ("routing_held:-", "open"), ("routing_held:lab", "open")]
    soon = outbound._now() + timedelta(seconds=60)
    assert outbound.route_pending(engine, FixedRouter(), keyer=KEYER, now=soon)["retried"] == 0  # not due yet
    later = outbound._now() + timedelta(seconds=outbound.HELD_RETRY_SECONDS + 60)
    assert outbound.route_pending(engine, FixedRouter(), keyer=KEYER, now=later)["retried"] == 2
    assert q(engine, "SELECT m.control_id, o.status FROM outbound_queue o JOIN message_store m ON m.id = o.message_id "
                     "ORDER BY m.id") == [("H1", "pending"), ("H2", "pending"), ("H3", "pending"), ("H4", "pending")]
    assert q(engine, "SELECT outcome, COUNT(*) FROM message_route GROUP BY outcome") == [("queued", 4)]
    assert q(engine, "SELECT COUNT(*) FROM route_review WHERE resolved_at IS NULL") == [(0,)]
    # Router failures have no destination: they close once none is left either.
    assert q(engine, "SELECT alert_key, state FROM alert_state ORDER BY alert_key") == [
        ("routing_held:-", "resolved"), ("routing_held:lab", "resolved")]
    assert outbound.route_pending(engine, FixedRouter(), keyer=KEYER, now=later)["retried"] == 0


class RaisingRouter(FakeRouter):
    def route(self, raw: bytes, facility_charset: str | None = None):
        raise RuntimeError("mapping file being rewritten")


class RenamedRouter(FakeRouter):
    def route(self, raw: bytes, facility_charset: str | None = None):
        return [Result("lab_results_v2", "lab", payload=raw)]


@pytest.mark.parametrize("router", [RaisingRouter, RenamedRouter], ids=["router-fails", "rule-renamed"])
def test_a_held_copy_the_retry_does_not_build_stays_held(engine, router):
    """A retry in which the router fails, or builds the copy under another rule, must not turn the
    held copy into 'filtered': it stays held, its review row open, and is tried again later."""
    store(engine, [hl7("H6", "PA", extra="UNMAPPED")])
    outbound.route_pending(engine, FakeRouter(), keyer=KEYER, alerter=Alerter(engine, AlertingConfig()))
    later = outbound._now() + timedelta(seconds=outbound.HELD_RETRY_SECONDS + 60)
    assert outbound.route_pending(engine, router(), keyer=KEYER, now=later)["retried"] == 1
    assert q(engine, "SELECT route, destination, outcome FROM message_route") == [("lab_results", "lab", "review")]
    assert q(engine, "SELECT resolved_at FROM route_review") == [(None,)]
    assert q(engine, "SELECT COUNT(*) FROM outbound_queue") == [(0,)]
    assert q(engine, "SELECT state FROM alert_state WHERE alert_key = 'routing_held:lab'") == [("open",)]
    even_later = later + timedelta(seconds=outbound.HELD_RETRY_SECONDS + 60)
    assert outbound.route_pending(engine, FixedRouter(), keyer=KEYER, now=even_later)["retried"] == 1
    assert q(engine, "SELECT outcome FROM message_route") == [("queued",)]


def test_a_review_row_reopens_when_its_copy_is_held_for_review_again(engine):
    """Review, then a retry that fails to build (rows stay open), then review again (rows open)."""

    class ErrorRouter(FakeRouter):
        def route(self, raw: bytes, facility_charset: str | None = None):
            return [Result("lab_results", "lab", error="CHARSET_UNREPRESENTABLE: PID-5")]

    store(engine, [hl7("H7", "PA", extra="UNMAPPED")])
    outbound.route_pending(engine, FakeRouter(), keyer=KEYER)
    t = outbound._now()
    for router in (ErrorRouter(), FakeRouter()):
        t += timedelta(seconds=outbound.HELD_RETRY_SECONDS + 60)
        assert outbound.route_pending(engine, router, keyer=KEYER, now=t)["retried"] == 1
        assert q(engine, "SELECT COUNT(*) FROM route_review WHERE resolved_at IS NULL") == [(1,)]
    assert q(engine, "SELECT outcome FROM message_route") == [("review",)]


def test_a_copy_still_unmapped_stays_held_and_waits_for_the_next_retry(engine):
    store(engine, [hl7("H5", "PA", extra="UNMAPPED")])
    outbound.route_pending(engine, FakeRouter(), keyer=KEYER)
    later = outbound._now() + timedelta(seconds=outbound.HELD_RETRY_SECONDS + 60)
    assert outbound.route_pending(engine, FakeRouter(), keyer=KEYER, now=later)["retried"] == 1
    assert q(engine, "SELECT outcome FROM message_route") == [("review",)]
    assert q(engine, "SELECT mapping, code, resolved_at FROM route_review") == [("loinc", "XYZ-1", None)]
    assert outbound.route_pending(engine, FakeRouter(), keyer=KEYER, now=later)["retried"] == 0  # tried: waits


# --- MLLP to the project's own listener --------------------------------------------------------

def test_delivery_to_the_project_listener_traces_received_to_ack(engine, tmp_path, alerter):
    receiver_url = f"sqlite:///{tmp_path / 'receiver.db'}"
    lp = ListenerProcess(tmp_path, receiver_url)
    try:
        lp.start()
        raws = [hl7(f"L{i}", p) for i, p in enumerate(["PA", "PB", "PA", "PC", "PB", "PA"])]
        route(engine, raws)
        clock = Clock()
        got = run(engine, {"lab": mllp(lp.port)}, clock, alerter)
        assert got["delivered"] == 6 and got["failed"] == got["dead"] == 0
    finally:
        lp.kill()
    trace = q(engine, "SELECT m.control_id, r.outcome, o.status, o.ack_code, o.ack, o.attempts FROM message_store m "
                      "JOIN message_route r ON r.message_id = m.id JOIN outbound_queue o ON o.id = r.outbound_id "
                      "ORDER BY m.id")
    assert [t[0] for t in trace] == [f"L{i}" for i in range(6)]
    for ctrl, outcome, status, code, ack, attempts in trace:
        assert (outcome, status, code, attempts) == ("queued", "delivered", "AA", 1)
        assert outbound.parse_ack(bytes(ack))[:2] == ("AA", ctrl)
    receiver = get_engine(receiver_url)
    assert sorted(q(receiver, "SELECT control_id, COUNT(*) FROM message_store GROUP BY control_id")) == \
        [(f"L{i}", 1) for i in range(6)]


def test_mllp_over_tls_and_mutual_tls(sqlite_url, tmp_path, monkeypatch):
    connects: dict[str, int] = {}
    real_connect = outbound._MllpTransport._connect

    def counted(self):
        connects[self.name] = connects.get(self.name, 0) + 1
        return real_connect(self)

    monkeypatch.setattr(outbound._MllpTransport, "_connect", counted)
    engine = get_engine(sqlite_url)
    alerter = Alerter(engine, AlertingConfig())
    certs = make_certs(tmp_path)
    route(engine, [hl7("T1", "PA"), hl7("T2", "PB")], FakeRouter(("tls", "mtls", "mtls_nocert", "untrusted")))
    tls_rx = ListenerProcess(tmp_path, f"sqlite:///{tmp_path / 'tls.db'}",
                             tls={"tls_cert": certs["server_cert"], "tls_key": certs["server_key"]})
    mtls_rx = ListenerProcess(tmp_path, f"sqlite:///{tmp_path / 'mtls.db'}",
                              tls={"tls_cert": certs["server_cert"], "tls_key": certs["server_key"],
                                   "tls_client_ca": certs["ca"]},
                              certificate_facilities={"chu-so.test": ["CHU-SO"]})
    try:
        tls_rx.start()
        mtls_rx.start()
        dests = {"tls": mllp(tls_rx.port, tls=True, tls_ca=str(certs["ca"]), server_name="localhost"),
                 "mtls": mllp(mtls_rx.port, tls=True, tls_ca=str(certs["ca"]), tls_cert=str(certs["chu_cert"]),
                              tls_key=str(certs["chu_key"]), server_name="localhost"),
                 "mtls_nocert": mllp(mtls_rx.port, tls=True, tls_ca=str(certs["ca"]), server_name="localhost"),
                 # the server's certificate is checked: signed by a CA we do not trust, nothing is sent
                 "untrusted": mllp(tls_rx.port, tls=True, tls_ca=str(certs["rogue_cert"]), server_name="localhost")}
        got = run(engine, dests, Clock(), alerter)
    finally:
        tls_rx.kill()
        mtls_rx.kill()
    assert got["destinations"]["tls"]["delivered"] == 2
    assert got["destinations"]["mtls"]["delivered"] == 2
    # One connection carries both (TLS 1.3's session tickets after the handshake are not a close).
    assert connects["tls"] == connects["mtls"] == 1
    rows = q(engine, "SELECT destination, status, attempts, last_error, ack_code FROM outbound_queue "
                     "WHERE destination = 'mtls_nocert'")
    # Refused client: a transient failure of the first message; the second was not attempted.
    assert sorted(r[:3] for r in rows) == [("mtls_nocert", "failed", 1), ("mtls_nocert", "pending", 0)]
    err = [r[3] for r in rows if r[1] == "failed"][0]
    assert err.startswith(("TLS_ERROR:", "CONNECTION_LOST:", "CONNECTION_CLOSED")), err
    assert sorted(q(get_engine(f"sqlite:///{tmp_path / 'mtls.db'}"), "SELECT control_id FROM message_store")) == \
        [("T1",), ("T2",)]
    assert sorted(q(get_engine(f"sqlite:///{tmp_path / 'tls.db'}"), "SELECT control_id FROM message_store")) == \
        [("T1",), ("T2",)]
    assert q(engine, "SELECT attempts, last_error FROM outbound_queue WHERE destination = 'untrusted' "
                     "AND status = 'failed'") == [(1, "TLS_ERROR:SSLCertVerificationError")]


# --- failures, order, retries ------------------------------------------------------------------

def test_receiver_down_then_up_nothing_lost_delivered_once_in_order(engine, alerter):
    port = free_port()
    rx = ScriptedReceiver(port=port)  # not started: connections are refused
    order = ["PA", "PB", "PA", "PB", "PA", "PB"]
    route(engine, [hl7(f"D{i}", p) for i, p in enumerate(order)])
    dests = {"lab": mllp(port, max_attempts=20)}
    clock = Clock()
    for _ in range(3):
        got = run(engine, dests, clock, alerter)
        assert got["delivered"] == 0
        clock.advance(61)
    states = by_control(engine)
    assert all(s[0] in ("pending", "failed") for s in states.values())
    assert {s[2] for s in states.values() if s[0] == "failed"} == {"CONNECTION_REFUSED"}
    # Each run spends one attempt (on the first message it tries), not one per waiting message.
    assert sum(s[1] for s in states.values()) == 3
    with rx:
        drain(engine, dests, clock, alerter)
    assert sorted(rx.control_ids) == [f"D{i}" for i in range(6)]  # each exactly once
    for p in ("PA", "PB"):
        mine = [f"D{i}" for i, x in enumerate(order) if x == p]
        assert [c for c in rx.control_ids if c in mine] == mine
    assert {s[0] for s in by_control(engine).values()} == {"delivered"}
    assert outbound.status(engine)[0]["oldest_pending_seconds"] is None


def test_poison_message_holds_its_patient_only_then_dead_letter_alert(engine, alerter):
    rx = ScriptedReceiver(lambda p: "AE" if outbound.control_id_of(p) == "A2" else "AA")
    order = [("A1", "PA"), ("B1", "PB"), ("A2", "PA"), ("B2", "PB"), ("A3", "PA"), ("B3", "PB")]
    route(engine, [hl7(c, p) for c, p in order])
    dests = {"lab": mllp(rx.port, max_attempts=3)}
    clock = Clock()
    with rx:
        got = run(engine, dests, clock, alerter)
        s = by_control(engine)
        assert [c for c in rx.control_ids if c.startswith("B")] == ["B1", "B2", "B3"]  # the other patient flows
        assert s["A1"][0] == "delivered" and s["A2"][:3] == ("failed", 1, "AE:207") and s["A2"][3] == "AE"
        assert s["A3"][:2] == ("pending", 0) and "A3" not in rx.control_ids  # order kept behind the poison
        assert got["delivered"] == 4 and got["failed"] == 1
        assert q(engine, "SELECT COUNT(*) FROM ops_alert") == [(0,)]
        drain(engine, dests, clock, alerter)
    s = by_control(engine)
    assert s["A2"][:3] == ("dead", 3, "AE:207")
    assert s["A3"][0] == "delivered"
    assert [c for c in rx.control_ids if c.startswith("A")] == ["A1", "A2", "A2", "A2", "A3"]
    alerts = q(engine, "SELECT alert_key, severity FROM ops_alert")
    assert alerts == [("outbound_dead:lab", "error")]
    assert q(engine, "SELECT kind, state FROM alert_state") == [("outbound_dead", "open")]
    params = q(engine, "SELECT params FROM alert_state")[0][0]
    [a2] = q(engine, "SELECT message_id FROM outbound_queue WHERE control_id = 'A2'")
    assert '"last_error": "AE:207"' in params and f'"message_id": {a2[0]}' in params and '"attempts": 3' in params
    assert_no_patient_data(engine)
    st = outbound.status(engine)[0]
    assert (st["destination"], st["delivered"], st["dead"]) == ("lab", 5, 1)
    assert [d["last_error"] for d in st["dead_letters"]] == ["AE:207"]


def test_ack_timeouts_closed_connections_and_rejections_are_retried(engine, alerter):
    seen: dict[str, int] = {}

    def behaviour(payload):
        c = outbound.control_id_of(payload)
        seen[c] = seen.get(c, 0) + 1
        if seen[c] == 1:
            return {"M1": "silent", "M2": "close", "M3": "AR", "M4": "wrong_id"}.get(c, "AA")
        return "AA"

    rx = ScriptedReceiver(behaviour)
    route(engine, [hl7("M1", "PA"), hl7("M2", "PB"), hl7("M3", "PC"), hl7("M4", "PD")])
    dests = {"lab": mllp(rx.port, ack_timeout=0.5)}
    clock = Clock()
    with rx:
        first = run(engine, dests, clock, alerter)  # M1 times out: the destination waits for the next run
        assert first["destinations"]["lab"]["stopped"] == "ACK_TIMEOUT"
        assert by_control(engine)["M1"][:3] == ("failed", 1, "ACK_TIMEOUT")
        assert by_control(engine)["M2"][:2] == ("pending", 0)  # released, no attempt spent
        second = run(engine, dests, clock, alerter)  # M1 is backing off; M2's connection is closed
        assert second["destinations"]["lab"]["stopped"] == "CONNECTION_CLOSED"
        assert by_control(engine)["M2"][:3] == ("failed", 1, "CONNECTION_CLOSED")
        third = run(engine, dests, clock, alerter)  # M3 is rejected with AR: the run goes on to M4,
        assert by_control(engine)["M3"][:4] == ("failed", 1, "AR:200", "AR")
        # whose ACK answers another control ID: not taken as delivered, the connection is dropped.
        assert third["destinations"]["lab"]["stopped"] == "ACK_MISMATCH"
        assert by_control(engine)["M4"][:3] == ("failed", 1, "ACK_MISMATCH")
        drain(engine, dests, clock, alerter)
    s = by_control(engine)
    assert {c: s[c][:4] for c in s} == {c: ("delivered", 2, None, "AA") for c in ("M1", "M2", "M3", "M4")}
    # A timed-out message may have arrived: it is sent again (at-least-once, same MSH-10).
    assert seen == {"M1": 2, "M2": 2, "M3": 2, "M4": 2}


def test_next_attempt_waits_for_the_backoff(engine, alerter):
    rx = ScriptedReceiver(lambda p: "AE")
    route(engine, [hl7("W1")])
    dests = {"lab": mllp(rx.port, max_attempts=10, backoff_seconds=100, backoff_max_seconds=250)}
    clock = Clock()
    with rx:
        run(engine, dests, clock, alerter)
        waits = []
        for _ in range(4):
            [(due,)] = q(engine, "SELECT next_attempt_at FROM outbound_queue")
            waits.append((outbound._parse_ts(due) - clock()).total_seconds())
            clock.advance(waits[-1] - 1)
            run(engine, dests, clock, alerter)  # one second early: nothing is attempted
            clock.advance(1)
            run(engine, dests, clock, alerter)
    assert len(rx.received) == 5
    for wait, full in zip(waits, (100, 200, 250, 250)):  # base * 2^(attempts-1), capped, equal jitter
        assert full / 2 <= wait <= full + 1


def test_interrupted_send_is_sent_again_and_delivered_rows_never_are(engine, alerter):
    rx = ScriptedReceiver()
    route(engine, [hl7("S1", "PA"), hl7("S2", "PB"), hl7("S3", "PC")])
    clock = Clock()
    old = outbound._ts(clock() - timedelta(hours=1))
    with engine.begin() as c:  # S1 was acknowledged; a run died while sending S2 and while sending S3 just now
        c.execute(text("UPDATE outbound_queue SET status = 'delivered', attempts = 1, ack_code = 'AA' "
                       "WHERE control_id = 'S1'"))
        c.execute(text("UPDATE outbound_queue SET status = 'sending', updated_at = :t WHERE control_id = 'S2'"),
                  {"t": old})
        c.execute(text("UPDATE outbound_queue SET status = 'sending', updated_at = :t WHERE control_id = 'S3'"),
                  {"t": outbound._ts(clock())})
    dests = {"lab": mllp(rx.port)}
    with rx:
        got = run(engine, dests, clock, alerter)
        assert got["recovered"] == 1
        assert by_control(engine)["S2"][:3] == ("failed", 1, "INTERRUPTED")
        assert by_control(engine)["S3"][:2] == ("sending", 0)  # not stale yet: maybe still in flight
        clock.advance(outbound.STALE_SENDING_SECONDS + 61)
        drain(engine, dests, clock, alerter)
        clock.advance(3600)
        run(engine, dests, clock, alerter)  # and nothing delivered goes out again
    assert sorted(rx.control_ids) == ["S2", "S3"]
    assert {c: s[:2] for c, s in by_control(engine).items()} == {
        "S1": ("delivered", 1), "S2": ("delivered", 2), "S3": ("delivered", 2)}


def test_retry_cli_requeues_a_dead_letter_never_a_delivered_message(warehouse_url, engine, alerter):
    accept = {"X2": False}
    rx = ScriptedReceiver(lambda p: "AA" if outbound.control_id_of(p) != "X2" or accept["X2"] else "AE")
    route(engine, [hl7("X1", "PA"), hl7("X2", "PB")])
    dests = {"lab": mllp(rx.port, max_attempts=1)}
    clock = Clock()
    ns = argparse.Namespace(warehouse=warehouse_url, config=None, id=None, dead_letter=False, destination=None)
    with rx:
        run(engine, dests, clock, alerter)
        ids = dict(q(engine, "SELECT control_id, id FROM outbound_queue"))
        assert by_control(engine)["X2"][:3] == ("dead", 1, "AE:207")
        out = io.StringIO()
        assert outbound.cli_status(ns, out=out) == 0
        assert "lab" in out.getvalue() and f"#{ids['X2']} lab" in out.getvalue() and "AE:207" in out.getvalue()

        err = io.StringIO()
        assert outbound.cli_retry(argparse.Namespace(**{**vars(ns), "id": ids["X1"]}), out=io.StringIO(), err=err) == 1
        assert "not requeued" in err.getvalue()
        assert outbound.cli_retry(ns, out=io.StringIO(), err=io.StringIO()) == 2  # neither ID nor --dead-letter
        other = argparse.Namespace(**{**vars(ns), "dead_letter": True, "destination": "elsewhere"})
        assert outbound.cli_retry(other, out=io.StringIO()) == 0
        assert by_control(engine)["X2"][0] == "dead"
        out = io.StringIO()
        assert outbound.cli_retry(argparse.Namespace(**{**vars(ns), "dead_letter": True, "destination": "lab"}),
                                  out=out) == 0
        assert "requeued 1" in out.getvalue()
        assert by_control(engine)["X2"][:2] == ("pending", 0)
        accept["X2"] = True
        run(engine, dests, clock, alerter)
    assert {c: s[:2] for c, s in by_control(engine).items()} == {"X1": ("delivered", 1), "X2": ("delivered", 1)}
    assert rx.control_ids == ["X1", "X2", "X2"]
    assert q(engine, "SELECT state FROM alert_state WHERE alert_key = 'outbound_dead:lab'") == [("resolved",)]
    assert outbound.retry(engine, id=ids["X1"]) == 0  # delivered: never requeued


# --- other destination types -------------------------------------------------------------------

def test_folder_destination_writes_one_file_per_message_atomically(engine, tmp_path, alerter):
    out = tmp_path / "out"
    out.mkdir()
    raws = [hl7("F1", "PA"), hl7("F2", "PB")]
    route(engine, raws, FakeRouter(("files", "nowhere")))
    dests = {"files": {"type": "folder", "path": str(out)}, "nowhere": {"type": "folder", "path": str(tmp_path / "no")}}
    got = run(engine, dests, Clock(), alerter)
    assert got["destinations"]["files"]["delivered"] == 2
    ids = dict(q(engine, "SELECT control_id, id FROM outbound_queue WHERE destination = 'files'"))
    assert sorted(p.name for p in out.iterdir()) == sorted(outbound.outbound_file_name(ids[c]) for c in ("F1", "F2"))
    assert (out / outbound.outbound_file_name(ids["F1"])).read_bytes() == raws[0]
    assert (out / outbound.outbound_file_name(ids["F2"])).read_bytes() == raws[1]
    assert not (tmp_path / "no").exists()  # a missing folder is an error, never created
    assert q(engine, "SELECT status, last_error FROM outbound_queue WHERE destination = 'nowhere' AND attempts = 1") == \
        [("failed", "FOLDER_MISSING")]


def test_sftp_destination_uploads_each_round_in_one_session(engine, tmp_path, alerter):
    from sftp_support import SftpServer

    raws = [hl7("P1", "PA"), hl7("P2", "PB"), hl7("P3", "PA")]
    route(engine, raws, FakeRouter(("sftp",)))
    spec = {"type": "sftp", "conn_id": "moh_sftp", "path": "/in/hl7", "max_attempts": 4}
    clock = Clock()
    with SftpServer(tmp_path / "sftp") as srv:
        conn = srv.connection("/")

        def resolve(conn_id):
            return conn if conn_id == "moh_sftp" else None

        got = outbound.deliver_due(engine, {"sftp": spec}, now=clock(), alerter=alerter, resolve_connection=resolve)
        logins = srv.logins
    assert got["delivered"] == 3
    # Round 1: the heads P1 and P2 in one session; round 2: P3, which waited behind P1.
    assert logins == 2
    ids = dict(q(engine, "SELECT control_id, id FROM outbound_queue"))
    remote = tmp_path / "sftp" / "in" / "hl7"
    assert sorted(p.name for p in remote.iterdir()) == sorted(outbound.outbound_file_name(i) for i in ids.values())
    for raw, c in zip(raws, ("P1", "P2", "P3")):
        assert (remote / outbound.outbound_file_name(ids[c])).read_bytes() == raw
    route(engine, [hl7("P4", "PC")], FakeRouter(("sftp",)))  # the server is gone now
    got = outbound.deliver_due(engine, {"sftp": spec}, now=clock(), alerter=alerter, resolve_connection=resolve)
    status, attempts, err = q(engine, "SELECT status, attempts, last_error FROM outbound_queue "
                                      "WHERE control_id = 'P4'")[0]
    assert (status, attempts) == ("failed", 1) and err.startswith("SFTP_ERROR:") and "127.0.0.1" not in err




def test_sftp_round_that_fails_part_way_keeps_the_files_that_arrived(engine, tmp_path, alerter):
    """One upload of a round fails (the remote name is taken by a folder): the files uploaded
    before it are delivered, and only the rest wait for the next round. The whole round used to
    fail, and every file before the failure was uploaded again."""
    from sftp_support import SftpServer

    route(engine, [hl7("S1", "PA"), hl7("S2", "PB"), hl7("S3", "PC")], FakeRouter(("sftp",)))
    ids = dict(q(engine, "SELECT control_id, id FROM outbound_queue"))
    spec = {"type": "sftp", "conn_id": "moh_sftp", "path": "/in/hl7", "max_attempts": 4}
    clock = Clock()
    remote = tmp_path / "sftp" / "in" / "hl7"
    with SftpServer(tmp_path / "sftp") as srv:
        conn = srv.connection("/")

        def resolve(conn_id):
            return conn if conn_id == "moh_sftp" else None

        (remote / outbound.outbound_file_name(ids["S2"])).mkdir(parents=True)
        outbound.deliver_due(engine, {"sftp": spec}, now=clock(), alerter=alerter, resolve_connection=resolve)
        assert q(engine, "SELECT control_id, status, attempts FROM outbound_queue ORDER BY control_id") == [
            ("S1", "delivered", 1), ("S2", "failed", 1), ("S3", "failed", 1)]
        (remote / outbound.outbound_file_name(ids["S2"])).rmdir()
        (remote / outbound.outbound_file_name(ids["S1"])).unlink()  # delivered: must not come again
        clock.advance(3600)
        got = outbound.deliver_due(engine, {"sftp": spec}, now=clock(), alerter=alerter, resolve_connection=resolve)
    assert got["delivered"] == 2
    assert sorted(p.name for p in remote.iterdir()) == sorted(outbound.outbound_file_name(ids[c]) for c in ("S2", "S3"))
    assert {s for (s,) in q(engine, "SELECT status FROM outbound_queue")} == {"delivered"}


def test_queue_destination_publishes_persistent_confirmed_messages(engine, rabbit, monkeypatch, alerter):
    import pika

    name = f"hl7ics-out-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(rabbit))
    ch = conn.channel()
    ch.queue_declare(queue=name, durable=True)
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_AMQP_OUT_TEST", rabbit)
    try:
        raws = [hl7("Q1", "PA"), hl7("Q2", "PB"), hl7("Q3", "PA")]
        route(engine, raws, FakeRouter(("amqp", "amqp_missing")))
        dests = {"amqp": {"type": "queue", "conn_id": "hl7ics_amqp_out_test", "queue": name},
                 "amqp_missing": {"type": "queue", "conn_id": "hl7ics_amqp_out_test", "queue": name + "-absent"}}
        got = run(engine, dests, Clock(), alerter)
        assert got["destinations"]["amqp"]["delivered"] == 3
        got_msgs = []
        for _ in range(3):
            method, props, body = ch.basic_get(name, auto_ack=True)
            got_msgs.append((body, props.delivery_mode, props.message_id))
        assert ch.basic_get(name, auto_ack=True)[0] is None
    finally:
        ch.queue_delete(queue=name)
        conn.close()
    ids = dict(q(engine, "SELECT control_id, id FROM outbound_queue WHERE destination = 'amqp'"))
    assert got_msgs == [(raws[i], 2, f"hl7ics-outbound-{ids[c]}") for i, c in enumerate(("Q1", "Q2", "Q3"))]
    missing = q(engine, "SELECT status, attempts, last_error FROM outbound_queue WHERE destination = 'amqp_missing' "
                        "AND attempts > 0")
    assert missing == [("failed", 1, "AMQP_UNROUTABLE")]


# --- configuration, units, Airflow glue --------------------------------------------------------

def test_an_invalid_destination_is_reported_after_the_valid_ones_are_served(engine, tmp_path, alerter):
    out = tmp_path / "out"
    out.mkdir()
    route(engine, [hl7("C1")], FakeRouter(("files", "broken")))
    from transforms.config import ConfigError

    with pytest.raises(ConfigError, match="destination broken: a mllp destination needs host"):
        run(engine, {"files": {"type": "folder", "path": str(out)}, "broken": {"type": "mllp", "port": 1}},
            Clock(), alerter)
    assert dict(q(engine, "SELECT destination, status FROM outbound_queue")) == {"files": "delivered",
                                                                                "broken": "pending"}


def test_parse_ack_reads_err_codes_of_every_version():
    v25 = b"MSH|^~\\&|A|B|C|D|20260101||ACK^A01^ACK|X|P|2.5\rMSA|AE|C-1\rERR||PID^1^3|101^Required field missing^HL70357|E\r"
    v23 = b"MSH|^~\\&|A|B|C|D|20260101||ACK|X|P|2.3\rMSA|AR|C-2|Unsupported\rERR|PID^1^3^200&Unsupported&HL70357\r"
    odd = b"MSH#^~\\&#A#B#C#D#20260101##ACK#X#P#2.5\nMSA#CA#C-3\n"
    assert outbound.parse_ack(v25) == ("AE", "C-1", "101")
    assert outbound.parse_ack(v23) == ("AR", "C-2", "200")
    assert outbound.parse_ack(odd) == ("CA", "C-3", None)
    free_text = b"MSH|^~\\&|A|B|C|D|1||ACK|X|P|2.5\rMSA|AE|C-4\rERR|||patient Adjoa born 1990|E\r"
    assert outbound.parse_ack(free_text) == ("AE", "C-4", None)  # not a code: not kept


def test_backoff_is_exponential_capped_and_jittered():
    import random

    rng = random.Random(1)
    for attempts, full in ((1, 30), (2, 60), (3, 120), (8, 3600), (30, 3600), (1025, 3600), (100_000, 3600)):
        values = [outbound.backoff_seconds(attempts, 30, 3600, rng) for _ in range(200)]
        assert all(full / 2 <= v <= full for v in values)
        assert max(values) - min(values) > full / 4  # jittered, not a constant


def test_a_backoff_longer_than_a_week_is_a_week():
    spec = outbound.check_destination("x", {"type": "folder", "path": "/tmp/x", "backoff_max_seconds": 1e300})
    assert spec["backoff_max_seconds"] == 7 * 86400


def test_routing_tasks_read_routes_through_route_config(engine, warehouse_url, tmp_path, monkeypatch):
    from hl7ics_airflow import routing_tasks

    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir()
    (cfg_dir / "routes.yaml").write_text("destinations: []\n")
    out = tmp_path / "out"
    out.mkdir()

    class RouteConfig:
        def __init__(self):
            self.destinations = [types.SimpleNamespace(name="files", type="folder", params={"path": str(out)})]

        @classmethod
        def load(cls, path):
            assert Path(path) == cfg_dir / "routes.yaml"
            return cls()

    class Router(FakeRouter):
        def __init__(self, config):
            super().__init__(("files",))

    monkeypatch.setitem(sys.modules, "transforms.routing", types.SimpleNamespace(RouteConfig=RouteConfig, Router=Router))
    monkeypatch.setenv("HL7ICS_CONFIG", str(cfg_dir))
    monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", warehouse_url)
    store(engine, [hl7("G1"), hl7("G2", "PB")])
    assert routing_tasks.route_messages()["queued"] == 2
    assert routing_tasks.deliver_messages()["delivered"] == 2
    assert len(list(out.iterdir())) == 2
    (cfg_dir / "routes.yaml").unlink()
    assert routing_tasks.route_messages() == {"skipped": "no routes.yaml"}
    assert routing_tasks.destination_specs({"destinations": {"a": {"type": "mllp", "host": "h", "port": 1}}}) == \
        {"a": {"type": "mllp", "host": "h", "port": 1}}


def test_real_route_config_and_router_end_to_end(engine, warehouse_url, tmp_path, monkeypatch):
    """config/routes.yaml through transforms.routing, as the DAG's tasks read it."""
    from hl7ics_airflow import routing_tasks

    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (cfg_dir / "routes.yaml").write_text(
        "destinations:\n"
        f"  files: {{type: folder, path: '{out}', max_attempts: 3}}\n"
        "rules:\n"
        "  - {name: adt_copy, match: {message_type: ['ADT^*']}, to: [files]}\n", encoding="utf-8")
    monkeypatch.setenv("HL7ICS_CONFIG", str(cfg_dir))
    monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", warehouse_url)
    raws = [hl7("H1", "PA"), hl7("H2", "PB", mtype="ORU^R01")]
    ids = store(engine, raws)
    assert routing_tasks.route_messages() == {"messages": 2, "queued": 1, "review": 0, "filtered": 1, "error": 0,
                                              "retried": 0}
    assert routing_tasks.deliver_messages()["delivered"] == 1
    [(oid,)] = q(engine, "SELECT id FROM outbound_queue")
    assert (out / outbound.outbound_file_name(oid)).read_bytes() == raws[0]
    assert q(engine, "SELECT message_id, route, outcome, detail FROM message_route ORDER BY message_id") == [
        (ids[0], "adt_copy", "queued", None), (ids[1], "-", "filtered", "NO_ROUTE")]


def test_route_and_deliver_dag_is_thin_and_guarded():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "route_and_deliver.py"))
    assert bag.import_errors == {}
    dag = bag.dags["route_and_deliver"]  # parsed only: no metadata database needed
    assert dag.catchup is False and dag.max_active_runs == 1 and "hl7ics" in dag.tags
    assert dag.on_failure_callback and dag.on_success_callback and "Livraison" in dag.doc_md
    assert [t.task_id for t in dag.topological_sort()] == ["route", "deliver"]
    assert dag.get_task("deliver").trigger_rule == "all_done"  # queued messages go out even if routing failed
    for t in dag.tasks:
        assert t.owner == "data-engineering" and t.retries >= 1 and t.on_failure_callback
    src = (ROOT / "dags" / "route_and_deliver.py").read_text()
    assert "import transforms" not in src and "SELECT " not in src


def test_a_slow_send_taken_for_interrupted_is_still_recorded_as_delivered(engine, alerter):
    """Run A is still waiting for its ACK when run B finds the row 'sending' for too long and
    marks it interrupted. A's ACK then arrives: the row is delivered, and no later run sends it
    again."""
    import random

    rx = ScriptedReceiver()
    route(engine, [hl7("W1", "PA")])
    clock = Clock()
    dests = {"lab": mllp(rx.port)}
    spec = outbound.check_destination("lab", dests["lab"])
    [row] = outbound._claim(engine, "lab", 1, clock())  # run A claims it and starts sending
    later = clock() + timedelta(seconds=outbound.STALE_SENDING_SECONDS + 1)
    outbound._recover_stale(engine, "lab", spec, later, outbound.STALE_SENDING_SECONDS, random.Random(1))
    assert by_control(engine)["W1"][:3] == ("failed", 1, "INTERRUPTED")
    ok = outbound.Outcome(True, ack_code="AA", ack=b"MSH|...")
    assert outbound._finish(engine, row, ok, spec, later, random.Random(1)) == "delivered"
    clock.advance(3600 + outbound.STALE_SENDING_SECONDS)
    with rx:
        run(engine, dests, clock, alerter)
    assert rx.control_ids == []
    assert by_control(engine)["W1"][:2] == ("delivered", 1)


class _CaThenAa(ScriptedReceiver):
    """Enhanced mode: an accept ACK (CA) at once, the application ACK (AA) 50 ms later."""

    async def _handle(self, reader, writer):
        import asyncio

        from transforms.ack import AckPlan, build_ack
        from transforms.mllp import Framer, frame
        from transforms.parser import parse

        framer = Framer()
        while data := await reader.read(65536):
            for f in framer.push(data):
                self.received.append(f.payload)
                writer.write(frame(build_ack(parse(f.payload), AckPlan("CA"))))
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(frame(build_ack(parse(f.payload), AckPlan("AA"))))
                await writer.drain()
        writer.close()


class _AckThenClose(ScriptedReceiver):
    """One message per connection: AA, then the receiver closes."""

    async def _handle(self, reader, writer):
        from transforms.ack import AckPlan, build_ack
        from transforms.mllp import Framer, frame
        from transforms.parser import parse

        for f in Framer().push(await reader.read(65536))[:1]:
            self.received.append(f.payload)
            writer.write(frame(build_ack(parse(f.payload), AckPlan("AA"))))
            await writer.drain()
        writer.close()


@pytest.mark.parametrize("receiver", [_CaThenAa, _AckThenClose], ids=["CA-then-AA", "closes-after-each-ACK"])
def test_healthy_receivers_get_each_message_once(engine, alerter, receiver):
    """A late AA after a CA is not the next message's reply, and a receiver that closes after each
    ACK is reconnected to: neither sends anything twice nor charges a failed attempt."""
    import time

    PATIENTS.update({f"Q{i}": (f"TG-Q{i}", f"Q{i}") for i in range(6)})
    route(engine, [hl7(f"E{i}", f"Q{i}") for i in range(6)])
    clock = Clock()
    rec = receiver().start()
    try:
        for _ in range(2):
            run(engine, {"lab": mllp(rec.port, ack_timeout=2)}, clock, alerter)
            time.sleep(0.2)
            clock.advance(61)
    finally:
        rec.stop()
    assert rec.control_ids == [f"E{i}" for i in range(6)]
    assert q(engine, "SELECT status, attempts, COUNT(*) FROM outbound_queue GROUP BY status, attempts") == [
        ("delivered", 1, 6)]


def test_silent_receivers_do_not_starve_the_destinations_after_them(engine, alerter, tmp_path):
    """The run's time budget is shared. Two silent receivers (each costs its ack_timeout, every
    run) sorted before a healthy destination used to take all of it, run after run."""
    (tmp_path / "out").mkdir()
    route(engine, [hl7(f"Z{i}", p) for i, p in enumerate(["PA", "PB", "PC"])],
          FakeRouter(destinations=("dpi-a", "dpi-b", "surveillance")))
    clock = Clock()
    silent = ScriptedReceiver(lambda p: "silent").start()
    dests = {"dpi-a": mllp(silent.port, ack_timeout=1), "dpi-b": mllp(silent.port, ack_timeout=1),
             "surveillance": {"type": "folder", "path": str(tmp_path / "out")}}
    import random

    rng = random.Random(7)  # the order is shuffled each run; seeded, the test is the same every time
    try:
        for _ in range(4):
            run(engine, dests, clock, alerter, max_seconds=1.5, rng=rng)
            clock.advance(61)
    finally:
        silent.stop()
    assert q(engine, "SELECT status, COUNT(*) FROM outbound_queue WHERE destination = 'surveillance' "
                     "GROUP BY status") == [("delivered", 3)]
