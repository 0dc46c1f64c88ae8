"""Crash test: clients send thousands of messages over several connections while the listener is
killed with SIGKILL and restarted. Every message that got AA is stored exactly once, and after the
clients' retries every message is present (SQLite and PostgreSQL)."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from sqlalchemy import text

from listener_support import CR, FS, VT, ListenerProcess, free_port, msa, read_frame
from transforms.warehouse import get_engine

CONNECTIONS = 4
PER_CONNECTION = 550  # 2,200 messages in all


def message(conn: int, i: int) -> bytes:
    cid = f"K{conn}-{i:05d}"
    return (f"MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261102080000||ADT^A04^ADT_A01|{cid}|P|2.5\r"
            f"EVN|A04|20261102080000\rPID|1||{conn}{i:05d}^^^CHU-SO^MR||Agbéko^Ɛdem||19900101|F\r"
            f"PV1|1|O|OPD||||||||||||||||V{conn}-{i}\r").encode("utf-8")


def client(port: int, conn: int, acked: set, stop: threading.Event) -> None:
    i = 0
    sock = None
    while i < PER_CONNECTION and not stop.is_set():
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.settimeout(5)
            sock.sendall(VT + message(conn, i) + FS + CR)
            reply = read_frame(sock)
            if reply is None:
                raise ConnectionError("no ACK")
            code, ctl = msa(reply)
            if code == "AA":
                assert ctl == f"K{conn}-{i:05d}"
                acked.add(ctl)
                i += 1
            # AR 207 (storage trouble) or anything else: resend the same message, as senders do
        except (OSError, ConnectionError):
            if sock is not None:
                sock.close()
            sock = None
            time.sleep(0.05)  # listener down: retry until it is back
    if sock is not None:
        sock.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_never_loses_an_acked_message(backend, request, tmp_path, hl7ics_home):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    get_engine(url)  # create the schema before the first kill
    port = free_port()
    lp = ListenerProcess(tmp_path, url, port=port).start()
    acked: set[str] = set()
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(port, c, acked, stop)) for c in range(CONNECTIONS)]
    for t in threads:
        t.start()
    kills = 0
    try:
        for _ in range(3):
            time.sleep(1.5)
            lp.kill()  # SIGKILL: no chance to finish anything
            kills += 1
            time.sleep(0.3)
            lp = ListenerProcess(tmp_path, url, port=port).start()
        deadline = time.time() + 240
        while any(t.is_alive() for t in threads) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        lp.kill()
    assert kills == 3
    total = CONNECTIONS * PER_CONNECTION
    assert len(acked) == total, "clients' retries should have delivered everything"
    with get_engine(url).connect() as c:
        rows = c.execute(text("SELECT control_id, SUM(CASE WHEN resend_of IS NULL THEN 1 ELSE 0 END) "
                              "FROM message_store GROUP BY control_id")).all()
        # A message committed but killed before its ACK left is resent: a row of its own, whose
        # resend_of names the original of the same message.
        strays = c.execute(text("SELECT COUNT(*) FROM message_store r JOIN message_store o ON o.id = r.resend_of "
                                "WHERE o.control_id <> r.control_id OR o.resend_of IS NOT NULL")).scalar()
        names = c.execute(text("SELECT raw FROM message_store WHERE control_id = 'K0-00000' AND resend_of IS NULL"
                               )).scalar()
    stored = {cid: n for cid, n in rows}
    assert set(stored) == acked  # every AA'd message is there ...
    assert all(n == 1 for n in stored.values()) and strays == 0  # ... accepted exactly once
    assert "Agbéko^Ɛdem" in bytes(names).decode("utf-8")
