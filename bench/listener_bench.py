"""MLLP listener: closed loop with 32 connections and a paced 200 msg/s stream, commit-before-ACK
into SQLite and PostgreSQL, with and without TLS; python-hl7's asyncio MLLP server (which stores
nothing) measured in the same run as the reference; ACK-to-warehouse latency through the same
micro-batch loading the ``mllp_realtime`` DAG runs."""
from __future__ import annotations

import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from . import mllp_load
from .common import table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PYTHON_HL7_SERVER = """
import asyncio, sys, hl7
from hl7.mllp import start_hl7_server
async def cb(reader, writer):
    try:
        while not writer.is_closing():
            msg = await reader.readmessage()
            writer.writemessage(msg.create_ack())
            await writer.drain()
    except Exception:
        pass
async def main():
    # encoding: python-hl7 decodes ASCII-strict by default and would choke on Ewe names
    srv = await start_hl7_server(cb, "127.0.0.1", int(sys.argv[1]), encoding="utf-8")
    open(sys.argv[2], "w").write("up")
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"""


def _message(i: int, tag: str) -> bytes:
    return (f"MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261102080000||ADT^A04^ADT_A01|{tag}-{i:07d}|P|2.5\r"
            f"EVN|A04|20261102080000\rPID|1||{i:07d}^^^CHU-SO^MR||Agbéko^Ɛdem||19900101|F\r"
            f"PV1|1|O|OPD||||||||||||||||V{i}\r").encode("utf-8")


def _closed_loop(port, n, conns, ctx, tag):
    per = n // conns
    chunks = [[_message(c * per + i, tag) for i in range(per)] for c in range(conns)]
    rate, lat, _ = mllp_load.run(port, chunks, ctx)
    return rate, lat


def _paced(port, rate, seconds, ctx, tag):
    conns = 4
    per = int(rate * seconds) // conns
    chunks = [[_message(c * per + i, tag) for i in range(per)] for c in range(conns)]
    return mllp_load.run(port, chunks, ctx, pace=conns / rate)[1]


def _pct(lat, p):
    s = sorted(lat)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000


def _hwm_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(quick: bool = False) -> dict:
    from listener_support import ListenerProcess, free_port, make_certs

    from transforms.warehouse import dispose_all, get_engine

    n = 4_000 if quick else 20_000
    runs = 1 if quick else 3
    results: dict = {}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        os.environ.setdefault("HL7ICS_PATIENT_KEY", "bench" * 8)
        certs = make_certs(d)
        client_ctx = ssl.create_default_context(cafile=str(certs["ca"]))
        backends = [("SQLite", lambda: f"sqlite:///{d}/l-{uuid.uuid4().hex[:6]}.db")]
        from .ingest_bench import _drop_pg, _fresh_pg, _pg_available

        pg_names = []
        if _pg_available():
            def pg():
                name, url = _fresh_pg()
                pg_names.append(name)
                return url
            backends.append(("PostgreSQL", pg))
        for label, make_url in backends:
            for tls in (False, True):
                url = make_url()
                get_engine(url)
                lp = ListenerProcess(d, url, tls={"tls_cert": certs["server_cert"], "tls_key": certs["server_key"]}
                                     if tls else None).start()
                ctx = client_ctx if tls else None
                try:
                    rates, lats = [], []
                    for r in range(runs):
                        rate, lat = _closed_loop(lp.port, n, 32, ctx, f"R{r}{int(tls)}")
                        rates.append(rate)
                        lats.extend(lat)
                    paced = _paced(lp.port, 200, 5 if quick else 10, ctx, f"P{int(tls)}")
                    mem = _hwm_mb(lp.proc.pid)
                finally:
                    lp.kill()
                key = f"{label.lower()}{'_tls' if tls else ''}"
                results[key] = {"msgs_per_s": statistics.median(rates), "p99_ms": _pct(lats, 99),
                                "paced_p99_ms": _pct(paced, 99), "listener_mb": mem}
                rows.append([f"hl7ics listen, {label}{' + TLS' if tls else ''}", statistics.median(rates),
                             _pct(lats, 50), _pct(lats, 99), _pct(paced, 99), mem])
        # Reference: python-hl7's asyncio server, no storage at all.
        port = free_port()
        ready = d / "ref.up"
        ref = subprocess.Popen([sys.executable, "-c", PYTHON_HL7_SERVER, str(port), str(ready)])
        try:
            while not ready.exists():
                time.sleep(0.05)
            rates, lats = [], []
            for r in range(runs):
                rate, lat = _closed_loop(port, n, 32, None, f"X{r}")
                rates.append(rate)
                lats.extend(lat)
            paced = _paced(port, 200, 5 if quick else 10, None, "XP")
            mem = _hwm_mb(ref.pid)
        finally:
            ref.kill()
        rows.append(["python-hl7 asyncio server (stores nothing)", statistics.median(rates), _pct(lats, 50),
                     _pct(lats, 99), _pct(paced, 99), mem])
        results["python_hl7_reference"] = {"msgs_per_s": statistics.median(rates)}
        print(table(f"MLLP listener, closed loop 32 connections x {n:,} msgs (median of {runs}), paced 200 msg/s",
                    ["server", "msgs/s", "p50 ms", "p99 ms", "paced p99 ms", "peak RSS MB"], rows))
        results["ack_to_warehouse"] = _ack_to_warehouse(d, quick)
        dispose_all()
        for name in pg_names:
            _drop_pg(name)
    return results


def _ack_to_warehouse(d: Path, quick: bool) -> dict:
    """Paced traffic into the embedded default while the DAG's micro-batch loop runs (poll 2 s, as
    the trigger does); latency = the message's loaded time minus the time its ACK arrived."""
    from listener_support import ListenerProcess

    from sqlalchemy import text

    from transforms.config import Settings
    from transforms.facts import PatientKeyer
    from transforms.load import Loader
    from transforms.realtime import count_received, process_received
    from transforms.warehouse import get_engine

    url = f"sqlite:///{d}/e2e.db"
    engine = get_engine(url)
    settings = Settings.load(warehouse_url=url)
    loader = Loader(settings.facilities(), PatientKeyer(b"bench-key-0123456789"))
    lp = ListenerProcess(d, url).start()
    acked: dict[str, float] = {}
    loaded: dict[str, float] = {}
    stop = threading.Event()

    def dag_loop():
        while not stop.is_set():
            if count_received(engine):
                process_received(engine, loader)
                with engine.connect() as c:
                    now = time.time()
                    for (cid,) in c.execute(text("SELECT control_id FROM message_store WHERE status <> 'received'")):
                        loaded.setdefault(cid, now)
            stop.wait(2.0)

    t = threading.Thread(target=dag_loop)
    t.start()

    total = 300 if quick else 1500
    try:
        # One connection at 50 msg/s: ACKs arrive in sending order.
        _, _, ack_times = mllp_load.run(lp.port, [[_message(i, "E2E") for i in range(total)]], pace=1 / 50)
        acked.update((f"E2E-{i:07d}", t) for i, t in enumerate(ack_times))
        deadline = time.time() + 60
        while len(loaded) < len(acked) and time.time() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        t.join()
        lp.kill()
    lat = [loaded[c] - acked[c] for c in acked if c in loaded]
    out = {"messages": len(acked), "loaded": len(lat), "p50_s": _pct(lat, 50) / 1000, "p95_s": _pct(lat, 95) / 1000}
    print(table("ACK to warehouse row (embedded SQLite, micro-batches every 2 s as the trigger polls)",
                ["messages", "loaded", "p50 s", "p95 s"], [[out["messages"], out["loaded"], out["p50_s"], out["p95_s"]]]))
    return out
