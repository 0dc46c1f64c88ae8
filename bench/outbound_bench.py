"""Outbound MLLP delivery rate: ``deliver_due`` draining a queue of N messages (SQLite sender
warehouse: one commit to claim each round, one per message after its ACK) to a local receiver —
the project's own listener storing into SQLite (commit before ACK), and a trivial AA-only
receiver that stores nothing (the ceiling set by the sender alone). Each receiver runs in its own
process; the median of the runs is reported, the AA-only receiver as the peer."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .common import median_time, table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _message(i: int, tag: str) -> bytes:
    return (f"MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261102080000||ADT^A08^ADT_A01|{tag}-{i:07d}|P|2.5\r"
            f"EVN|A08|20261102080000\rPID|1||{i % 500:07d}^^^CHU-SO^MR||Agbéko^Ɛdem||19900101|F\r"
            f"PV1|1|I|MED||||||||||||||||V{i}\r").encode("utf-8")


class _Result:
    def __init__(self, payload: bytes):
        self.rule, self.destination, self.payload, self.review, self.error = "bench", "rx", payload, None, None


def _queued_warehouse(d: Path, n: int):
    """A fresh SQLite warehouse holding ``n`` pending messages for 500 patients."""
    from transforms.outbound import enqueue
    from transforms.warehouse import get_engine

    url = f"sqlite:///{d}/out-{uuid.uuid4().hex[:8]}.db"
    engine = get_engine(url)
    tag = uuid.uuid4().hex[:8]
    with engine.begin() as conn:
        for i in range(n):
            enqueue(conn, i + 1, [_Result(_message(i, tag))], f"patient:{i % 500}")
    return engine


def _aa_receiver(d: Path):
    from listener_support import free_port
    from mllp_receivers import AA_ONLY_SERVER

    port = free_port()
    ready = d / f"aa-{port}"
    proc = subprocess.Popen([sys.executable, "-c", AA_ONLY_SERVER, str(port), str(ready)])
    deadline = time.time() + 20
    while not ready.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("AA-only receiver did not start")
        time.sleep(0.05)
    return port, proc.terminate


def _listener(d: Path):
    from listener_support import ListenerProcess

    lp = ListenerProcess(d, f"sqlite:///{d}/listener-{uuid.uuid4().hex[:6]}.db").start()
    return lp.port, lp.terminate


def run(quick: bool = False) -> dict:
    from transforms.outbound import deliver_due
    from transforms.alerting import Alerter, AlertingConfig
    from transforms.warehouse import dispose_all

    n = 500 if quick else 3_000
    runs = 1 if quick else 3
    os.environ.setdefault("HL7ICS_PATIENT_KEY", "bench" * 8)
    results: dict = {}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for label, start in (("AA-only receiver (stores nothing)", _aa_receiver),
                             ("hl7ics listener, SQLite (commit before ACK)", _listener)):
            port, stop = start(d)
            try:
                engines = [_queued_warehouse(d, n) for _ in range(runs)]
                spec = {"rx": {"type": "mllp", "host": "127.0.0.1", "port": port, "ack_timeout": 30}}
                delivered = []

                def once():
                    engine = engines[len(delivered)]
                    r = deliver_due(engine, spec, limit=n, alerter=Alerter(engine, AlertingConfig()))
                    delivered.append(r["delivered"])

                t = median_time(once, runs)
            finally:
                stop()
            if any(x != n for x in delivered):
                raise RuntimeError(f"{label}: delivered {delivered} of {n}")
            rate = n / t
            results[label] = {"messages": n, "seconds": t, "msg_per_s": rate}
            rows.append([label, n, rate, 1000.0 * t / n])
            dispose_all()
    peer = rows[0][2]
    print(table(f"Outbound MLLP delivery, SQLite sender warehouse (median of {runs})",
                ["receiver", "messages", "msg/s", "ms/msg", "vs AA-only"],
                [r + [f"{r[2] / peer:.2f}x"] for r in rows]))
    return results


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
