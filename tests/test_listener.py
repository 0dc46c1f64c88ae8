"""The real-time MLLP listener, tested as a running process: bad inputs 1-20 and 42-50 of the
project's bad-input catalogue, TLS and mutual TLS, a third-party client, and the promise that a
message is acknowledged only after it is committed."""
from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from sqlalchemy import text

from listener_support import (CR, FS, VT, ListenerProcess, connect, err_code, exchange, free_port, make_certs, msa,
                              read_frame)
from transforms.warehouse import get_engine


def hl7(control="C-1", mtype="ADT^A04^ADT_A01", version="2.5", facility="CHU-SO", pid="P1", msh_tail="",
        processing="P", family="Kodjo") -> bytes:
    return (f"MSH|^~\\&|SIH|{facility}|HL7ICS|MOH|20261102080000||{mtype}|{control}|{processing}|{version}{msh_tail}\r"
            f"EVN|A04|20261102080000\rPID|1||{pid}^^^{facility}^MR||{family}^Afi||19900101|F\rPV1|1|O|OPD\r"
            ).encode("utf-8")


def rows(url, sql, **p):
    with get_engine(url).connect() as c:
        return [tuple(r) for r in c.execute(text(sql), p)]


@pytest.fixture
def listener(tmp_path, sqlite_url, hl7ics_home):
    procs = []

    def start(url=None, **limits):
        lp = ListenerProcess(tmp_path, url or sqlite_url, **limits).start()
        procs.append(lp)
        return lp

    yield start
    for p in procs:
        p.kill()


def count(url):
    return rows(url, "SELECT COUNT(*) FROM message_store")[0][0]


def test_aa_only_after_commit_and_ack_echoes_sender(listener, sqlite_url):
    lp = listener()
    ack = exchange(lp.port, hl7("A-1"))
    assert msa(ack) == ("AA", "A-1")
    msh = ack.split(b"\r")[0].decode().split("|")
    assert msh[2:6] == ["HL7ICS", "MOH", "SIH", "CHU-SO"] and msh[8].startswith("ACK") and msh[11] == "2.5"
    (row,) = rows(sqlite_url, "SELECT status, source, sha256, control_id FROM message_store")
    assert row[0] == "received" and row[1] == "mllp" and row[3] == "A-1"
    assert rows(sqlite_url, "SELECT ack_code FROM mllp_ack") == [("AA",)]


def test_postgresql_commit_path_keeps_bytes_acks_and_reasons(listener, pg_url):
    """PostgreSQL's group commit is its own code (two round trips, rows sent as JSON): the
    exact bytes (Ewe letters and a Latin-1 byte), the stored ACK replayed for a resend, and a
    refused message's quarantine reason must come out as on SQLite."""
    lp = listener(url=pg_url)
    ewe = hl7("PG-1", family="Ɖɔvɛ Ŋɔ́ʋĩ")
    latin1 = hl7("PG-2", msh_tail="|||||||8859/1").replace(b"Kodjo", b"Ad\xe9la")
    first = exchange(lp.port, ewe)
    assert msa(first) == ("AA", "PG-1")
    assert msa(exchange(lp.port, latin1)) == ("AA", "PG-2")
    assert exchange(lp.port, ewe) == first  # the stored ACK, replayed; the resend has a row of its own
    ack = exchange(lp.port, hl7("PG-3", mtype="ZZZ^Z01"))
    assert msa(ack) == ("AR", "PG-3") and err_code(ack) == "200"
    got = rows(pg_url, "SELECT control_id, raw, status, source FROM message_store ORDER BY id")
    assert [(r[0], r[2]) for r in got] == [("PG-1", "received"), ("PG-2", "received"), ("PG-1", "received"),
                                           ("PG-3", "quarantined")]
    assert bytes(got[0][1]) == ewe == bytes(got[2][1]) and bytes(got[1][1]) == latin1
    assert {r[3] for r in got} == {"mllp"}
    assert [bytes(a) for (a,) in rows(pg_url, "SELECT a.ack FROM mllp_ack a JOIN message_store m "
                                      "ON m.id = a.message_id WHERE m.control_id = 'PG-1'")] == [first, first]
    assert rows(pg_url, "SELECT q.reason FROM quarantine q JOIN message_store m ON m.id = q.message_id") == [
        ("UNSUPPORTED_MESSAGE_TYPE",)]


def test_case_01_garbage_before_start_block(listener, sqlite_url):
    lp = listener()
    with connect(lp.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + VT + hl7("G-1") + FS + CR)
        assert msa(read_frame(s)) == ("AA", "G-1")
    assert count(sqlite_url) == 1


def test_case_02_tls_client_on_plain_port_and_plain_on_tls_port(listener, tmp_path, sqlite_url):
    lp = listener()
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with connect(lp.port, 3) as s:
        with pytest.raises((ssl.SSLError, OSError, socket.timeout)):
            ctx.wrap_socket(s).do_handshake()
    assert msa(exchange(lp.port, hl7("after-tls-noise"))) == ("AA", "after-tls-noise")
    certs = make_certs(tmp_path)
    tp = listener(tls={"tls_cert": certs["server_cert"], "tls_key": certs["server_key"]})
    assert exchange(tp.port, hl7("plain-on-tls"), timeout=3) is None
    time.sleep(0.3)
    assert ("node_authentication_failure", "failure") in rows(sqlite_url, "SELECT event_type, outcome FROM audit_event")
    assert rows(sqlite_url, "SELECT COUNT(*) FROM message_store WHERE control_id = 'plain-on-tls'") == [(0,)]


def test_case_03_no_end_block_nothing_acked_nothing_stored(listener, sqlite_url):
    lp = listener()
    with connect(lp.port) as s:
        s.sendall(VT + hl7("N-1")[:40])
    time.sleep(0.3)
    assert count(sqlite_url) == 0


def test_case_04_end_block_without_cr(listener, sqlite_url):
    lp = listener()
    with connect(lp.port) as s:
        s.sendall(VT + hl7("L-1") + FS + b"\n")
        assert msa(read_frame(s)) == ("AA", "L-1")


def test_end_block_then_the_sender_half_closes_still_gets_its_ack(listener, sqlite_url):
    """The last frame's end block arrives without its CR, then the sender shuts down its side: the
    message is committed, so the ACK must still reach a sender that keeps reading."""
    lp = listener()
    with connect(lp.port) as s:
        s.sendall(VT + hl7("H-1") + FS)
        s.shutdown(socket.SHUT_WR)
        assert msa(read_frame(s)) == ("AA", "H-1")
    assert count(sqlite_url) == 1


def test_a_start_block_inside_an_open_frame_starts_a_new_frame(listener, sqlite_url):
    """A frame cut short (no end block) followed by the next one: the cut frame is dropped without
    an ACK (its sender sends it again), and the next is stored and acknowledged as itself, not
    spliced into the cut one under the cut one's control ID."""
    lp = listener()
    with connect(lp.port) as s:
        s.sendall(VT + hl7("C-1", pid="P-CUT")[:-4] + VT + hl7("C-2", pid="P-NEXT") + FS + CR)
        assert msa(read_frame(s)) == ("AA", "C-2")
    assert rows(sqlite_url, "SELECT control_id, status FROM message_store") == [("C-2", "received")]
    raw = rows(sqlite_url, "SELECT raw FROM message_store")[0][0]
    assert b"P-NEXT" in bytes(raw) and b"P-CUT" not in bytes(raw)


def test_case_05_and_06_pipelined_and_one_byte_segments(listener, sqlite_url):
    lp = listener()
    with connect(lp.port) as s:
        s.sendall(VT + hl7("P-1") + FS + CR + VT + hl7("P-2") + FS + CR)
        assert msa(read_frame(s)) == ("AA", "P-1")
        assert msa(read_frame(s)) == ("AA", "P-2")
    with connect(lp.port) as s:
        for b in VT + hl7("P-3") + FS + CR:
            s.send(bytes([b]))
        assert msa(read_frame(s)) == ("AA", "P-3")
    assert count(sqlite_url) == 3


def test_case_07_and_10_slowloris_and_endless_stream_are_cut(listener, sqlite_url):
    lp = listener(frame_deadline_seconds=1, max_frame_bytes=65536)
    with connect(lp.port) as s:
        s.sendall(VT + b"MSH|^~\\&|")
        time.sleep(0.6)
        s.sendall(b"S")
        time.sleep(0.8)
        with pytest.raises((ConnectionError, OSError)):
            for _ in range(50):
                s.sendall(b"x" * 65536)  # keeps going past the cap: memory stays bounded, then closed
                time.sleep(0.05)
    assert count(sqlite_url) == 0


def test_case_08_connection_limits(listener, sqlite_url):
    lp = listener(max_connections=3, max_connections_per_peer=3)
    held = [connect(lp.port) for _ in range(3)]
    time.sleep(0.2)
    extra = connect(lp.port, 2)
    assert extra.recv(10) == b""  # refused: closed at once
    for s in held:
        s.close()
    time.sleep(0.2)
    assert msa(exchange(lp.port, hl7("after-limit"))) == ("AA", "after-limit")


def test_case_09_huge_message_refused_with_ar_104_and_not_stored(listener, sqlite_url):
    lp = listener(max_frame_bytes=4096)
    big = hl7("BIG-1")[:-1] + b"\rOBX|1|ED|PDF||" + b"A" * 100_000 + b"\r"
    ack = exchange(lp.port, big)
    assert msa(ack) == ("AR", "BIG-1") and err_code(ack) == "104"
    assert count(sqlite_url) == 0


def test_case_11_end_block_inside_content(listener, sqlite_url):
    lp = listener()
    m = hl7("E-1")
    with connect(lp.port) as s:
        s.sendall(VT + m[:60] + FS + b"tail of the message" + FS + CR)
        a = read_frame(s)
    assert msa(a)[0] == "AR"
    assert rows(sqlite_url, "SELECT status FROM message_store") == [("quarantined",)]
    assert rows(sqlite_url, "SELECT reason FROM quarantine") == [("EMBEDDED_END_BLOCK",)]


def test_case_12_empty_frame(listener, sqlite_url):
    lp = listener()
    ack = exchange(lp.port, b"")
    assert msa(ack) == ("AR", "") and err_code(ack) == "100"


def test_case_13_and_42_lost_ack_then_resend_replays_stored_ack(listener, sqlite_url):
    lp = listener()
    with connect(lp.port) as s:
        s.sendall(VT + hl7("R-1") + FS + CR)  # the sender vanishes before reading the ACK
    time.sleep(0.5)
    ack = exchange(lp.port, hl7("R-1"))
    assert msa(ack) == ("AA", "R-1")
    # Every received message has a row: the resend waits beside its original for the loader, with
    # the ACK it was sent, its original's.
    (o, _, _), (r, of, _) = got = rows(sqlite_url, "SELECT id, resend_of, status FROM message_store ORDER BY id")
    assert of == o and {g[2] for g in got} == {"received"}
    assert [(i, bytes(a)) for i, a in rows(sqlite_url, "SELECT message_id, ack FROM mllp_ack ORDER BY 1")] == [
        (o, ack), (r, ack)]


def test_case_14_concurrent_resends_store_once(listener, sqlite_url):
    lp = listener()
    acks = []

    def go():
        acks.append(msa(exchange(lp.port, hl7("D-1"))))

    ts = [threading.Thread(target=go) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert acks == [("AA", "D-1")] * 6
    # One original; five resends of it, each stored with the ACK it was sent: the original's.
    assert rows(sqlite_url, "SELECT COUNT(*), COUNT(resend_of), COUNT(DISTINCT COALESCE(resend_of, id)) "
                            "FROM message_store") == [(6, 5, 1)]
    assert rows(sqlite_url, "SELECT COUNT(*), COUNT(DISTINCT ack) FROM mllp_ack") == [(6, 1)]


def _realtime_loader(url):
    from transforms.config import Settings
    from transforms.facts import PatientKeyer
    from transforms.ingest import Ingestor
    from transforms.load import Loader

    settings = Settings.load(warehouse_url=url)
    Ingestor(settings, run_id="sync").sync_facilities()
    return Loader(settings.facilities(), PatientKeyer.from_env(settings.home), run_id="rt")


@pytest.mark.parametrize("url", ["sqlite", "pg"])
def test_resends_have_rows_and_only_a_loaded_original_makes_them_duplicates(listener, url, sqlite_url, pg_url,
                                                                            hl7ics_home):
    """Every received message has a row (issue 3's message_store), a listener resend too, with
    ``resend_of`` naming its original and the ACK it was sent. The loader judges resends like any
    copy: a duplicate of a loaded original; the resend of a message it quarantined is judged on
    its own (quarantined again, with an answer of its own), never a duplicate of it."""
    from transforms.realtime import process_received

    url = sqlite_url if url == "sqlite" else pg_url
    lp = listener(url=url)
    good, bad = hl7("RS-1"), hl7("RS-2").replace(b"19900101", b"19901399")  # an invalid birth date: AE
    first = exchange(lp.port, good)
    assert exchange(lp.port, good) == first and msa(first) == ("AA", "RS-1")
    bad_ack = exchange(lp.port, bad)
    assert msa(bad_ack)[0] == "AE"
    loader = _realtime_loader(url)
    counts = process_received(get_engine(url), loader)
    assert (counts.loaded, counts.duplicates, counts.quarantined) == (1, 1, 1)
    assert exchange(lp.port, good) == first
    assert msa(exchange(lp.port, bad))[0] == "AE"
    c = process_received(get_engine(url), loader)
    assert (c.duplicates, c.quarantined) == (1, 1)
    got = rows(url, "SELECT id, control_id, status, resend_of FROM message_store ORDER BY id")
    ids = {g[1]: g[0] for g in reversed(got)}  # each control ID's first row
    assert [g[1:] for g in got] == [
        ("RS-1", "loaded", None), ("RS-1", "duplicate", ids["RS-1"]), ("RS-2", "quarantined", None),
        ("RS-1", "duplicate", ids["RS-1"]), ("RS-2", "quarantined", ids["RS-2"])]
    # Every copy has the ACK it was sent: the accepted message's one ACK three times; the refused
    # one's original and its resend each answered on their own.
    assert rows(url, "SELECT m.control_id, COUNT(*), COUNT(DISTINCT a.ack) FROM mllp_ack a JOIN message_store m "
                "ON m.id = a.message_id GROUP BY m.control_id ORDER BY 1") == [("RS-1", 3, 1), ("RS-2", 2, 2)]


def test_a_resend_whose_original_was_quarantined_gets_a_stored_answer_every_time(listener, sqlite_url, hl7ics_home):
    """The original (AE) waits; its resend R1 waits too; the loader quarantines the original alone
    (a batch boundary). Later resends found only R1, which had no stored ACK, and each got a new
    ACK stored nowhere, a different one each time. Now a resend of a quarantined message is judged
    anew and stored with the answer it was sent."""
    from transforms.realtime import process_received

    lp = listener()
    bad = hl7("AE-1").replace(b"19900101", b"19901399")
    first = exchange(lp.port, bad)
    assert msa(first)[0] == "AE" and exchange(lp.port, bad) == first
    process_received(get_engine(sqlite_url), _realtime_loader(sqlite_url), batch=1, max_batches=1)
    assert rows(sqlite_url, "SELECT status FROM message_store ORDER BY id") == [("quarantined",), ("received",)]
    r2, r3 = exchange(lp.port, bad), exchange(lp.port, bad)
    sent = {bytes(a) for (a,) in rows(sqlite_url, "SELECT ack FROM mllp_ack")}
    assert r2 in sent and r3 in sent and msa(r2)[0] == msa(r3)[0] == "AE"
    assert rows(sqlite_url, "SELECT COUNT(*) FROM message_store m WHERE NOT EXISTS "
                            "(SELECT 1 FROM mllp_ack a WHERE a.message_id = m.id)") == [(0,)]


def test_a_resend_after_a_replayed_refusal_is_accepted(listener, sqlite_url, hl7ics_home):
    """The listener refused a message (AR 202: the processing ID was not accepted), the operator
    fixed the configuration and replayed it: it is loaded. The sender's resend used to get the
    stored AR back, and a sender that retries on AR looped for ever."""
    from transforms.realtime import process_received
    from transforms.replay import replay

    lp = listener(accepted_processing_ids=["T"])
    assert msa(exchange(lp.port, hl7("RP-1")))[0] == "AR"
    lp.kill()
    lp = listener()  # the configuration fixed
    loader = _realtime_loader(sqlite_url)
    assert replay(get_engine(sqlite_url), loader, reason="PROCESSING_ID_REFUSED").loaded == 1
    assert msa(exchange(lp.port, hl7("RP-1"))) == ("AA", "RP-1")
    assert process_received(get_engine(sqlite_url), loader).duplicates == 1
    assert rows(sqlite_url, "SELECT status, resend_of IS NULL FROM message_store ORDER BY id") == [
        ("loaded", 1), ("duplicate", 0)]


def test_a_copy_that_came_in_a_file_is_no_resend(sqlite_url, hl7ics_home, tmp_path):
    """A resend is of an earlier MLLP copy. The same message already loaded from a file is the
    loader's duplicate, not a resend: resend_of would hide it from the silence check by another
    rule than the one every source shares."""
    from transforms.config import Settings
    from transforms.ingest import Ingestor
    from transforms.listener import GroupCommitter
    from transforms.warehouse import Writer

    ing = Ingestor(Settings.load(warehouse_url=sqlite_url))
    ing.sync_facilities()
    f = tmp_path / "copy.hl7"
    f.write_bytes(hl7("FC-1"))
    assert ing.ingest_file(f, "CHU-SO").counts.loaded == 1
    ((sf, cid, csha),) = rows(sqlite_url, "SELECT sending_facility, control_id, content_sha256 FROM message_store")
    keys = {(sf, cid, csha)}
    with get_engine(sqlite_url).connect() as c:
        found = [r for sql, params in GroupCommitter._lookups(keys) for r in Writer(c).query(sql, params)]
    assert found == [] and GroupCommitter._match(found, keys) == {}


def test_case_15_storage_failure_is_never_aa_and_recovers(listener, pg_url):
    lp = listener(url=pg_url)
    assert msa(exchange(lp.port, hl7("S-1"))) == ("AA", "S-1")
    eng = get_engine(pg_url)
    with eng.begin() as c:
        c.execute(text("ALTER TABLE message_store RENAME TO message_store_away"))
    ack = exchange(lp.port, hl7("S-2"))
    assert msa(ack) == ("AR", "S-2") and err_code(ack) == "207"
    with eng.begin() as c:
        c.execute(text("ALTER TABLE message_store_away RENAME TO message_store"))
    assert msa(exchange(lp.port, hl7("S-2"))) == ("AA", "S-2")
    assert rows(pg_url, "SELECT control_id FROM message_store ORDER BY id") == [("S-1",), ("S-2",)]


def test_case_17_old_tls_versions_refused(listener, tmp_path):
    certs = make_certs(tmp_path)
    lp = listener(tls={"tls_cert": certs["server_cert"], "tls_key": certs["server_key"]})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs["ca"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with connect(lp.port, 3) as s:
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(s, server_hostname="localhost").do_handshake()
    ok = ssl.create_default_context(cafile=str(certs["ca"]))
    with connect(lp.port) as s, ok.wrap_socket(s, server_hostname="localhost") as t:
        assert t.version() in ("TLSv1.2", "TLSv1.3")
        t.sendall(VT + hl7("TLS-1") + FS + CR)
        assert msa(read_frame(t)) == ("AA", "TLS-1")


@pytest.fixture
def mtls(listener, tmp_path):
    certs = make_certs(tmp_path)
    lp = listener(tls={"tls_cert": certs["server_cert"], "tls_key": certs["server_key"], "tls_client_ca": certs["ca"]},
                  certificate_facilities={"chu-so.test": ["CHU-SO"]})

    def client(label):
        ctx = ssl.create_default_context(cafile=str(certs["ca"]))
        if label:
            ctx.load_cert_chain(certs[f"{label}_cert"], certs[f"{label}_key"])
        return ctx

    return lp, client


def _tls_exchange(port, ctx, payload):
    with connect(port, 5) as s, ctx.wrap_socket(s, server_hostname="localhost") as t:
        t.sendall(VT + payload + FS + CR)
        return read_frame(t)


def test_case_18_missing_or_rogue_client_certificate_refused(mtls, sqlite_url):
    lp, client = mtls
    for label in (None, "rogue"):
        try:
            assert _tls_exchange(lp.port, client(label), hl7("M-0")) is None
        except (ssl.SSLError, OSError):
            pass
    time.sleep(0.3)
    assert count(sqlite_url) == 0
    assert len(rows(sqlite_url, "SELECT * FROM audit_event WHERE event_type = 'node_authentication_failure'")) >= 2


def test_case_19_certificate_may_only_send_as_its_facility(mtls, sqlite_url):
    lp, client = mtls
    assert msa(_tls_exchange(lp.port, client("chu"), hl7("M-1"))) == ("AA", "M-1")
    ack = _tls_exchange(lp.port, client("chu"), hl7("M-2", facility="INH-LOME"))
    assert msa(ack) == ("AR", "M-2") and err_code(ack) == "207"
    ack = _tls_exchange(lp.port, client("other"), hl7("M-3"))
    assert msa(ack)[0] == "AR"
    assert rows(sqlite_url, "SELECT reason FROM quarantine ORDER BY id") == [("SEC-SENDER-MISMATCH",)] * 2
    assert len(rows(sqlite_url, "SELECT * FROM audit_event WHERE event_type = 'sender_mismatch'")) == 2


def test_case_43_same_control_id_other_content_is_stored(listener, sqlite_url):
    lp = listener()
    assert msa(exchange(lp.port, hl7("U-1", family="Kodjo"))) == ("AA", "U-1")
    assert msa(exchange(lp.port, hl7("U-1", family="Mensah"))) == ("AA", "U-1")
    assert count(sqlite_url) == 2


@pytest.mark.parametrize("control,code", [("", "101"), ("X" * 250, "104")])
def test_case_44_missing_or_absurd_control_id(listener, sqlite_url, control, code):
    lp = listener()
    ack = exchange(lp.port, hl7(control))
    assert msa(ack)[0] == "AR" and err_code(ack) == code
    assert rows(sqlite_url, "SELECT status FROM message_store") == [("quarantined",)]


@pytest.mark.parametrize("kwargs,code", [
    ({"mtype": "ZZZ^Z01"}, "200"),
    ({"version": "3.0"}, "203"),
    ({"processing": "T"}, "202"),
    ({"processing": "D"}, "202"),
    # Codecs that are not ASCII-compatible: an ACK written in them could not be read.
    ({"msh_tail": "||||||CP500"}, "203"),
    ({"msh_tail": "||||||UTF-7"}, "203"),
], ids=["case45-type", "case46-version", "case47-training", "case47-debug", "ebcdic", "utf-7"])
def test_cases_45_46_47_protocol_rejects(listener, sqlite_url, kwargs, code):
    lp = listener()
    ack = exchange(lp.port, hl7("X-1", **kwargs))
    assert msa(ack) == ("AR", "X-1") and err_code(ack) == code
    assert rows(sqlite_url, "SELECT status FROM message_store") == [("quarantined",)]
    assert rows(sqlite_url, "SELECT COUNT(*) FROM quarantine") == [(1,)]


def test_a_plain_replay_leaves_what_the_listener_refused(listener, sqlite_url):
    """The sender was told AR (test data, a sender its certificate does not allow, a cut frame...):
    ``hl7ics replay`` without a reason must not load it behind the sender's back; naming the
    reason does (an operator's decision)."""
    from transforms.config import Settings
    from transforms.facts import PatientKeyer
    from transforms.load import Loader
    from transforms.replay import replay

    lp = listener()
    assert msa(exchange(lp.port, hl7("T-1", processing="T")))[0] == "AR"
    settings = Settings.load(warehouse_url=sqlite_url)
    loader = Loader(settings.facilities(), PatientKeyer.from_env(settings.home), run_id="replay")
    assert replay(get_engine(sqlite_url), loader).messages == 0
    assert rows(sqlite_url, "SELECT status FROM message_store") == [("quarantined",)]
    assert replay(get_engine(sqlite_url), loader, reason="DQ_THRESHOLD").messages == 0
    counts = replay(get_engine(sqlite_url), loader, reason="PROCESSING_ID_REFUSED")
    assert counts.loaded == 1
    assert rows(sqlite_url, "SELECT status FROM message_store") == [("loaded",)]
    assert rows(sqlite_url, "SELECT COUNT(*) FROM quarantine WHERE resolved_at IS NULL") == [(0,)]


def test_case_46_localised_version_is_accepted(listener):
    lp = listener()
    assert msa(exchange(lp.port, hl7("V-1", version="2.5.1^FRA^2.5"))) == ("AA", "V-1")


def test_case_48_enhanced_mode(listener, sqlite_url):
    lp = listener()
    assert msa(exchange(lp.port, hl7("EN-1", msh_tail="|||AL|NE"))) == ("CA", "EN-1")
    assert exchange(lp.port, hl7("EN-2", msh_tail="|||NE|NE"), timeout=2) is None  # no accept ACK wanted
    assert exchange(lp.port, hl7("EN-3", msh_tail="|||ER|NE"), timeout=2) is None  # only on error
    ack = exchange(lp.port, hl7("EN-4", mtype="ZZZ^Z01", msh_tail="|||ER|NE"))
    assert msa(ack) == ("CR", "EN-4")
    assert count(sqlite_url) == 4  # stored whether or not an ACK was wanted


def test_case_49_sequence_numbers_are_ignored_unless_enabled(listener):
    lp = listener()
    assert msa(exchange(lp.port, hl7("Q-1", msh_tail="|7"))) == ("AA", "Q-1")


def test_case_50_ack_is_never_acked(listener, sqlite_url):
    lp = listener()
    incoming = b"MSH|^~\\&|LAB|CHU-SO|HL7ICS|MOH|20261102||ACK^A01|K-1|P|2.5\rMSA|AA|Z-9\r"
    assert exchange(lp.port, incoming, timeout=2) is None
    assert rows(sqlite_url, "SELECT q.reason FROM quarantine q") == [("ORPHAN_ACK",)]


def test_content_error_gets_ae_and_is_stored_for_the_loader(listener, sqlite_url):
    lp = listener()
    no_pv1 = hl7("AE-1", mtype="ADT^A01^ADT_A01").split(b"PV1|")[0]
    ack = exchange(lp.port, no_pv1)
    assert msa(ack) == ("AE", "AE-1") and err_code(ack) == "100"
    assert rows(sqlite_url, "SELECT status FROM message_store") == [("received",)]


def test_content_error_in_enhanced_mode_is_committed_ca(listener, sqlite_url):
    """The message is stored, so committed: CA with the ERR. CE would tell the sender to send it
    again, and every resend would get the stored CE back."""
    lp = listener()
    no_pv1 = hl7("CE-1", mtype="ADT^A01^ADT_A01", msh_tail="|||AL|NE").split(b"PV1|")[0]
    ack = exchange(lp.port, no_pv1)
    assert msa(ack) == ("CA", "CE-1") and err_code(ack) == "100"
    assert rows(sqlite_url, "SELECT status FROM message_store") == [("received",)]


@pytest.mark.parametrize("version, location, err", [
    ("2.5", "PID-7", "ERR||PID^1^7|102^Data type error^HL70357|E||||bad date"),
    ("2.5", "OBX[2]-14", "ERR||OBX^2^14|102^Data type error^HL70357|E||||bad date"),
    ("2.3", "PID-7", "ERR|PID^1^7^102&Data type error&HL70357"),
    ("2.5", "file", "ERR|||102^Data type error^HL70357|E||||bad date"),
])
def test_err_segment_locations(version, location, err):
    """ERR-2 (2.5+) is segment ^ sequence ^ field; ERR-1 (before 2.5) adds the code in
    subcomponents. "PID-7" used to become PID^7 (sequence 7, no field)."""
    from transforms.ack import AckPlan, build_ack
    from transforms.parser import parse

    ack = build_ack(parse(hl7("E-1", version=version)), AckPlan("AE", 102, location, "bad date")).decode()
    segs = ack.split("\r")
    assert segs[2] == err
    control = segs[0].split("|")[9]
    assert len(control) <= 20 and control != build_ack(parse(hl7("E-2")), AckPlan("AA")).decode().split("|")[9]


def test_ack_msh18_names_the_charset_it_is_written_in():
    """The ACK is encoded in the codec the message was read with. A sender that labels UTF-8 as
    8859/1 gets an ACK whose MSH-18 says UTF-8 when the ACK holds non-ASCII text (its own
    application name echoed back); an ASCII ACK keeps the sender's label, and so does a correct one."""
    from transforms.ack import AckPlan, build_ack
    from transforms.parser import parse

    def msg(app: str, label: str, encoding: str) -> bytes:
        return (f"MSH|^~\\&|{app}|CHU-SO|HL7ICS|MOH-TG|20261102083000||ADT^A04|CS-1|P|2.5|||AL|NE||{label}\r"
                f"EVN|A04|20261102083000\rPID|1||P1^^^CHU-SO^MR||Agbéko^Afi\rPV1|1|O\r").encode(encoding)

    def header(ack: bytes, encoding: str) -> list[str]:
        return ack.decode(encoding).split("\r")[0].split("|")

    mislabelled = build_ack(parse(msg("Sérvice-É", "8859/1", "utf-8")), AckPlan("AA"))
    h = header(mislabelled, "utf-8")
    assert h[4] == "Sérvice-É" and h[17] == "UNICODE UTF-8"
    ascii_ack = build_ack(parse(msg("SIH", "8859/1", "utf-8")), AckPlan("AA"))
    assert header(ascii_ack, "ascii")[17] == "8859/1"
    latin = build_ack(parse(msg("Sérvice-É", "8859/1", "latin-1")), AckPlan("AA"))
    h = header(latin, "latin-1")
    assert h[4] == "Sérvice-É" and h[17] == "8859/1"


def test_third_party_client_python_hl7(listener, sqlite_url):
    from hl7.client import MLLPClient

    lp = listener()
    with MLLPClient("127.0.0.1", lp.port) as client:
        reply = client.send_message(hl7("TP-1").decode())
    assert b"MSA|AA|TP-1" in reply
    assert count(sqlite_url) == 1


def test_bench_load_client_measures_only_acknowledged_messages(listener, sqlite_url, tmp_path):
    """The load client behind the listener's bench figures: every message is stored and
    answered AA before it counts, and a refusal fails the run instead of flattering it."""
    from bench import mllp_load

    lp = listener()
    chunks = [[hl7(f"LC-{c}-{i}") for i in range(5)] for c in range(3)]
    rate, lat, acked_at = mllp_load.run(lp.port, chunks, deadline_s=30)
    assert rate > 0 and len(lat) == len(acked_at) == 15 and min(lat) > 0
    assert count(sqlite_url) == 15
    _, paced, _ = mllp_load.run(lp.port, [[hl7("LC-P-1"), hl7("LC-P-2")]], pace=0.05, deadline_s=30)
    assert len(paced) == 2
    with pytest.raises(AssertionError, match="not an AA"):
        mllp_load.run(lp.port, [[hl7("LC-X", mtype="ZZZ^Z01")]], deadline_s=30)


def test_latency_book_buckets_and_minutes():
    from transforms.listener import LatencyBook

    book = LatencyBook()
    t = 1_764_633_599.5  # 2025-12-01 23:59:59.5 UTC: the next record is in the next minute
    book.record("F", "ADT", 0.004, at=t)
    book.record("F", "ADT", 0.005, at=t)  # 5 ms is the 5 ms bucket's edge
    book.record("F", "ADT", 0.0051, at=t + 1)
    book.record("F", "ORU", 99.0, at=t + 1)  # slower than the last bucket
    assert book.take() == {("2025-12-01 23:59:00", "F", "ADT", 5): 2,
                           ("2025-12-02 00:00:00", "F", "ADT", 10): 1,
                           ("2025-12-02 00:00:00", "F", "ORU", -1): 1}
    assert book.take() == {}


def test_a_database_that_does_not_answer_gets_ar_207_not_a_hang(listener, sqlite_url):
    """While the warehouse is locked by another writer, a group commit that does not finish in
    commit_timeout_seconds is answered AR 207 (retry later), never AA; the resend after the lock
    is released gets AA and the message is stored once."""
    import sqlite3

    lp = listener(commit_timeout_seconds=1)
    assert msa(exchange(lp.port, hl7("DB-0"))) == ("AA", "DB-0")
    blocker = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        ack = exchange(lp.port, hl7("DB-1"), timeout=20)  # the busy timeout is 30 s
        assert msa(ack) == ("AR", "DB-1") and err_code(ack) == "207"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert msa(exchange(lp.port, hl7("DB-1"), timeout=20)) == ("AA", "DB-1")
    # The timed-out commit may still have gone through once the lock was released: then the
    # resend is a second row, its resend; never two originals.
    stored = rows(sqlite_url, "SELECT status, resend_of IS NULL FROM message_store WHERE control_id = 'DB-1' "
                              "ORDER BY id")
    assert stored in ([("received", 1)], [("received", 1), ("received", 0)])


def test_failed_tls_handshakes_do_not_hold_up_the_listener_while_the_database_waits(listener, sqlite_url, tmp_path):
    """A failed handshake (a port probe) is audited by a thread of its own: written on the event
    loop, it stopped every connection for as long as the database made it wait."""
    import sqlite3

    certs = make_certs(tmp_path)
    lp = listener(tls={"tls_cert": certs["server_cert"], "tls_key": certs["server_key"]}, max_frame_bytes=65536)
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    blocker = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        connect(lp.port, 3).close()  # a plain TCP probe: a failed handshake, audited
        time.sleep(0.3)
        # An oversized frame is refused without the database: the reply must not wait for it.
        with ctx.wrap_socket(connect(lp.port, 10), server_hostname="localhost") as s:
            s.sendall(VT + hl7("BIG") + b"OBX|1|ED|PDF||" + b"A" * 70_000 + b"\r" + FS + CR)
            ack = read_frame(s)
        assert msa(ack) == ("AR", "BIG") and err_code(ack) == "104"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.time() + 10
    while time.time() < deadline and not rows(
            sqlite_url, "SELECT 1 FROM audit_event WHERE event_type = 'node_authentication_failure'"):
        time.sleep(0.1)
    assert rows(sqlite_url, "SELECT outcome FROM audit_event WHERE event_type = 'node_authentication_failure'") == [
        ("failure",)]


def test_a_large_frame_on_a_slow_link_is_not_cut_by_the_frame_deadline(listener, sqlite_url):
    """After frame_deadline_seconds a frame goes on while it arrives at frame_min_rate_bytes or
    faster; a trickle below that rate is still cut (slowloris)."""
    lp = listener(frame_deadline_seconds=1, frame_min_rate_bytes=2000)
    payload = hl7("SLOW-1")[:-1] + b"\rNTE|1||" + b"n" * 9000 + b"\r"
    data = VT + payload + FS + CR
    with connect(lp.port, 20) as s:
        for i in range(0, len(data), 1000):  # about 4,000 bytes/s for 2.5 s
            s.sendall(data[i:i + 1000])
            time.sleep(0.25)
        assert msa(read_frame(s)) == ("AA", "SLOW-1")
    with connect(lp.port, 20) as s:
        s.sendall(VT + hl7("SLOW-2")[:100])
        with pytest.raises((ConnectionError, OSError)):
            for _ in range(40):  # 10 bytes/s: far below the rate, cut after about a second
                s.sendall(b"x" * 5)
                time.sleep(0.5)
    assert rows(sqlite_url, "SELECT control_id FROM message_store") == [("SLOW-1",)]


def test_end_block_without_cr_before_the_next_frame_or_after_a_configured_pause(listener, sqlite_url):
    """0x1C without its CR ends the frame when the next frame's 0x0B follows (pipelining); before,
    the first was quarantined as cut and the second was never answered. A pause ends it only
    where end_block_pause_seconds is set for such a sender: by default a 0x1C inside the
    content, the rest delayed, is still refused (AR 100), never acknowledged short."""
    lp = listener()
    with connect(lp.port, 10) as s:
        s.sendall(VT + hl7("NOCR-1") + FS + VT + hl7("NOCR-2") + FS + CR)
        assert msa(read_frame(s)) == ("AA", "NOCR-1")
        assert msa(read_frame(s)) == ("AA", "NOCR-2")
    msg = hl7("CUT-1")
    cut = msg.index(b"PV1|")
    with connect(lp.port, 10) as s:
        s.sendall(VT + msg[:cut] + FS)
        time.sleep(1.5)
        s.sendall(msg[cut:] + FS + CR)
        ack = read_frame(s)
    assert msa(ack) == ("AR", "CUT-1") and err_code(ack) == "100"
    lp2 = listener(end_block_pause_seconds=1)
    with connect(lp2.port, 10) as s:
        s.sendall(VT + hl7("NOCR-3") + FS)  # then waits for its ACK
        assert msa(read_frame(s)) == ("AA", "NOCR-3")
    assert rows(sqlite_url, "SELECT control_id, status FROM message_store ORDER BY id") == [
        ("NOCR-1", "received"), ("NOCR-2", "received"), ("CUT-1", "quarantined"), ("NOCR-3", "received")]


def test_a_burst_does_not_buy_time_for_a_trickle(listener, sqlite_url):
    """The deadline grew with every byte received: a burst bought minutes for a sender that then
    sent almost nothing. Each window of frame_deadline_seconds must bring the minimum rate."""
    lp = listener(frame_deadline_seconds=1, frame_min_rate_bytes=4096, max_frame_bytes=65536)
    with connect(lp.port, 30) as s:
        s.sendall(VT + b"x" * 400_000)
        with pytest.raises((ConnectionError, OSError)):
            for _ in range(20):  # then a byte every half second: cut after a window or two
                time.sleep(0.5)
                s.sendall(b"y")
    assert count(sqlite_url) == 0


def test_one_address_holding_handshakes_cannot_lock_other_facilities_out(listener, sqlite_url, tmp_path):
    """Handshakes in progress count against max_connections; an address is held to
    max_connections_per_peer of them, so connections that never send a ClientHello from one
    address do not take every slot."""
    certs = make_certs(tmp_path)
    lp = listener(tls={"tls_cert": certs["server_cert"], "tls_key": certs["server_key"]},
                  max_connections=3, max_connections_per_peer=1, handshake_timeout_seconds=10)
    idle = [socket.create_connection(("127.0.0.1", lp.port), 15, source_address=("127.0.0.1", 0))
            for _ in range(5)]
    try:
        time.sleep(0.3)
        ctx = ssl.create_default_context(cafile=str(certs["ca"]))
        other = socket.create_connection(("127.0.0.1", lp.port), 10, source_address=("127.0.0.2", 0))
        with ctx.wrap_socket(other, server_hostname="localhost") as s:
            s.sendall(VT + hl7("LEGIT-1") + FS + CR)
            assert msa(read_frame(s)) == ("AA", "LEGIT-1")
    finally:
        for s in idle:
            s.close()


def test_the_shutdown_does_not_wait_for_a_database_that_does_not_answer(listener, sqlite_url):
    """The last heartbeat and audit rows wait 5 s each at most, and a thread still stuck on the
    database does not hold the exit: docker-compose kills the listener 30 s after SIGTERM."""
    import signal
    import sqlite3

    lp = listener()
    blocker = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.time()
        lp.proc.send_signal(signal.SIGTERM)
        lp.proc.wait(timeout=60)
        took = time.time() - t0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert took < 25, took  # the busy timeout alone is 30 s


def test_unconfigured_sending_facilities_share_one_metrics_label(listener, sqlite_url):
    """Any MSH-4 a sender makes up would otherwise add a metrics series and ack_latency rows."""
    lp = listener(metrics_port=free_port(), heartbeat_seconds=0.5)
    import urllib.request

    for i in range(3):
        exchange(lp.port, hl7(f"LBL-{i}", facility=f"MADE-UP-{i}"))
    assert msa(exchange(lp.port, hl7("LBL-OK"))) == ("AA", "LBL-OK")
    with urllib.request.urlopen(f"http://127.0.0.1:{lp.metrics_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert "MADE-UP" not in metrics and 'facility="UNKNOWN"' in metrics and 'facility="CHU-SO"' in metrics
    deadline = time.time() + 10
    while time.time() < deadline and not rows(sqlite_url, "SELECT 1 FROM ack_latency WHERE facility_code = 'UNKNOWN'"):
        time.sleep(0.2)
    assert {r[0] for r in rows(sqlite_url, "SELECT facility_code FROM ack_latency")} == {"UNKNOWN", "CHU-SO"}


def test_sigterm_is_graceful(listener, sqlite_url):
    lp = listener()
    assert msa(exchange(lp.port, hl7("T-1"))) == ("AA", "T-1")
    assert lp.terminate() == 0
    assert ("listener_stop", "success") in rows(sqlite_url, "SELECT event_type, outcome FROM audit_event")


def test_logs_never_contain_patient_data(listener, tmp_path):
    lp = listener()
    exchange(lp.port, hl7("LOG-1", family="Ɖogbé", pid="PATIENT-777"))
    exchange(lp.port, hl7("", family="Ɖogbé", pid="PATIENT-777"))
    lp.terminate()
    log = lp.log.read_text(encoding="utf-8")
    assert "listening" in log
    assert "Ɖogbé" not in log and "PATIENT-777" not in log and "19900101" not in log


def test_case_16_disk_full_is_never_aa(tmp_path, hl7ics_home):
    """16: Disk full / insert fails -> AR 207 (never AA), and it resumes when space is back.
    SQLite's page cap raises exactly the error a full disk does (SQLITE_FULL)."""
    import asyncio

    from sqlalchemy import event

    from transforms.listener import Listener, ListenerConfig

    url = f"sqlite:///{tmp_path / 'full.db'}"
    eng = get_engine(url)
    with eng.connect() as c:
        pages = c.exec_driver_sql("PRAGMA page_count").scalar()
    cap = {"pages": pages + 2}

    @event.listens_for(eng, "connect")
    def _cap(dbapi_conn, _rec):
        dbapi_conn.execute(f"PRAGMA max_page_count = {cap['pages']}")

    eng.dispose()
    port = free_port()
    cfg = ListenerConfig(host="127.0.0.1", port=port, metrics_port=0)
    loop = asyncio.new_event_loop()
    from transforms.config import Settings

    listener = Listener(cfg, url, Settings.load().facilities())
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(listener.start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        big = "X" * 3000
        acks = [exchange(port, hl7(f"F-{i}", family=f"Kodjo{big}{i}")) for i in range(12)]
        codes = [msa(a)[0] for a in acks]
        assert "AR" in codes and codes[0] == "AA", codes
        first_ar = codes.index("AR")
        assert err_code(acks[first_ar]) == "207"
        assert all(c == "AR" for c in codes[first_ar:])  # once full, never a false AA
        stored = {r[0] for r in rows(url, "SELECT control_id FROM message_store")}
        assert stored == {f"F-{i}" for i in range(first_ar)}  # exactly the AA'd ones
        cap["pages"] = 1_000_000
        eng.dispose()  # new connections get the raised cap
        assert msa(exchange(port, hl7(f"F-{first_ar}")))[0] == "AA"  # space is back: it resumes
    finally:
        asyncio.run_coroutine_threadsafe(listener.stop(grace=1), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)


def test_concurrent_copies_on_postgresql_store_once(tmp_path, pg_url, hl7ics_home):
    """Two group commits run at once on PostgreSQL: the same message sent on many connections at the
    same moment is still accepted once (one original; the others are its resends, each stored with
    the original's ACK), and every sender gets the same acceptance."""
    from concurrent.futures import ThreadPoolExecutor

    lp = ListenerProcess(tmp_path, pg_url).start()
    try:
        with ThreadPoolExecutor(max_workers=24) as pool:
            acks = list(pool.map(lambda i: msa(exchange(lp.port, hl7("SAME-1") if i % 2 else hl7(f"U-{i}"))),
                                 range(48)))
    finally:
        assert lp.terminate() == 0
    assert all(a and a[0] == "AA" for a in acks)
    with get_engine(pg_url).connect() as c:
        same = c.execute(text("SELECT COUNT(*) FROM message_store WHERE control_id = 'SAME-1'")).scalar()
        total = c.execute(text("SELECT COUNT(*) FROM message_store")).scalar()
        acked = c.execute(text("SELECT COUNT(*) FROM mllp_ack a JOIN message_store m ON m.id = a.message_id "
                               "WHERE m.control_id = 'SAME-1'")).scalar()
        originals = c.execute(text("SELECT COUNT(*) FROM message_store WHERE control_id = 'SAME-1' "
                                   "AND resend_of IS NULL")).scalar()
        answers = c.execute(text("SELECT COUNT(DISTINCT a.ack) FROM mllp_ack a JOIN message_store m "
                                 "ON m.id = a.message_id WHERE m.control_id = 'SAME-1'")).scalar()
    assert (same, total, acked, originals, answers) == (24, 48, 24, 1, 1)


@pytest.mark.parametrize("body, message", [
    ("  certificate_facilities: {chu-so.hl7.sante.tg: CHU-SO}\n", "certificate_facilities must be a mapping"),
    ("  heartbeat_seconds: -3\n", "heartbeat_seconds must be a positive number"),
    ("  max_connections: many\n", "max_connections must be a positive integer"),
    ("  max_conections: 5\n", "unknown key(s) listener.max_conections"),
    ("  lenient_end_block: 1\n", "lenient_end_block must be true or false"),
    ("  port: 70000\n", "port must be a port number"),
    ("  accepted_processing_ids: P\n", "accepted_processing_ids must be a list"),
])
def test_listener_config_mistakes_are_named(tmp_path, body, message):
    """Found by review: each was accepted. A single facility code instead of a list became the
    set of its letters, and every message on that certificate was refused as spoofed."""
    from transforms.config import ConfigError
    from transforms.listener import ListenerConfig

    p = tmp_path / "listener.yaml"
    p.write_text("listener:\n" + body, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        ListenerConfig.load(p)
    assert message in str(err.value) and str(p) in str(err.value)


def test_shipped_listener_config_is_valid():
    from pathlib import Path

    from transforms.listener import ListenerConfig

    cfg = ListenerConfig.load(Path(__file__).resolve().parent.parent / "config" / "listener.yaml")
    assert cfg.port == 2575 and cfg.accepted_processing_ids == ("P",)


def test_send_credits_a_reply_to_its_message_only():
    """`hl7ics send` waits for the ACK of the message it sent: a frame acknowledging another
    control ID (a late reply) is skipped, not credited to it."""
    import asyncio

    from mllp_receivers import ScriptedReceiver

    from transforms.mllp import send

    answers = iter(["wrong_id", "AA"])
    with ScriptedReceiver(lambda payload: next(answers)) as rx:
        got = asyncio.run(send("127.0.0.1", rx.port, [hl7("SND-1"), hl7("SND-2")], timeout=1.5))
    assert got == [None]  # SND-1's only reply was for LATE-SND-1: no ACK, and the run stops there


@pytest.mark.parametrize("option", [["--tls-insecure"], ["--server-name", "localhost"]])
def test_send_with_any_tls_option_never_falls_back_to_clear_text(option, tmp_path, capsys):
    """`hl7ics send --tls-insecure` without --tls sent the message (patient data) in clear text."""
    from mllp_receivers import ScriptedReceiver

    from transforms import cli

    msg = tmp_path / "m.hl7"
    msg.write_bytes(hl7("TLS-1"))
    with ScriptedReceiver(lambda payload: "AA") as rx:  # a plain-TCP receiver
        try:
            rc = cli.main(["send", str(msg), "--port", str(rx.port), "--timeout", "3", *option])
        except (ssl.SSLError, OSError, SystemExit) as exc:
            rc = getattr(exc, "code", 1)
        time.sleep(0.2)
        # The receiver may frame a piece of the TLS handshake by chance (its random bytes can hold
        # 0x0B and 0x1C); what must never reach it is the message in clear text.
        assert not any(b"MSH" in p or b"TLS-1" in p for p in rx.received) and rc != 0


@pytest.mark.parametrize("version, msh9", [("2.1", "ACK"), ("2.2", "ACK^A04"), ("2.3", "ACK^A04"),
                                           ("2.3.1", "ACK^A04^ACK"), ("2.5", "ACK^A04^ACK")])
def test_ack_message_type_follows_the_version(version, msh9):
    from transforms.ack import AckPlan, build_ack
    from transforms.parser import parse

    assert build_ack(parse(hl7("V-1", version=version)), AckPlan("AA")).decode().split("|")[8] == msh9


def test_a_gap_in_heartbeats_starts_a_new_stretch_the_sla_counts_as_downtime(sqlite_url, hl7ics_home):
    """Each beat moved beat_at on one row per process: two hours without beats (the database
    unreachable, a stalled loop) left no trace and the SLA report showed full uptime."""
    from datetime import datetime, timedelta

    from transforms import listener as lmod
    from transforms.sla import SlaConfig, compute

    lst = lmod.Listener(lmod.ListenerConfig(heartbeat_seconds=15), sqlite_url)
    times = iter(["2026-11-10 08:00:00", "2026-11-10 08:00:15", "2026-11-10 10:00:15", "2026-11-10 10:00:30"])
    clock = {"mono": 1000.0}
    real_utcnow, real_mono = lmod.utcnow, lmod.time.monotonic
    lmod.utcnow = lambda: next(times)
    lmod.time.monotonic = lambda: clock["mono"]
    try:
        lst.started_at = "2026-11-10 08:00:00"
        lst._beat()
        clock["mono"] += 15
        lst._beat()
        clock["mono"] += 7200  # no beat for two hours
        lst._beat()
        clock["mono"] += 15
        lst._beat()
    finally:
        lmod.utcnow, lmod.time.monotonic = real_utcnow, real_mono
    assert rows(sqlite_url, "SELECT started_at, beat_at FROM listener_heartbeat ORDER BY started_at") == [
        ("2026-11-10 08:00:00", "2026-11-10 08:00:15"), ("2026-11-10 10:00:15", "2026-11-10 10:00:30")]
    rep = compute(get_engine(sqlite_url), "2026-11", SlaConfig(), now=datetime(2026, 11, 10, 10, 0, 30))
    assert rep.outages and rep.outages[0][1] - rep.outages[0][0] >= timedelta(minutes=119)
