"""End to end: files on disk -> parsed -> stored and loaded, committed; SQLite and PostgreSQL."""
from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from .common import child_peak_rss_mb, table
from .pg_server import Unavailable, compose_configured_server

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:
        return False


def _pg_label(admin: str = PG_ADMIN, which: str = "this machine's server") -> str:
    """The server's version and WAL buffer size, which the load's speed depends on
    (docs/operations.md, "PostgreSQL settings"): the rows then say what they measured."""
    import psycopg

    with psycopg.connect(admin, connect_timeout=3) as c:
        version = c.execute("SHOW server_version").fetchone()[0].split()[0]
        wal = c.execute("SHOW wal_buffers").fetchone()[0]
    # The warehouse databases are created with LC_COLLATE 'C' (_fresh_pg), as production's are.
    return f"PostgreSQL {version}, {which} (COPY, wal_buffers {wal}, collation C)"


def _pg_locale(admin: str = PG_ADMIN) -> str:
    import psycopg

    with psycopg.connect(admin, connect_timeout=3) as c:
        return c.execute("SELECT datcollate FROM pg_database WHERE datname = current_database()").fetchone()[0]


def _fresh_pg(admin: str = PG_ADMIN) -> tuple[str, str]:
    import psycopg

    from transforms.warehouse import PG_DATABASE_OPTIONS

    name = f"hl7ics_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" {PG_DATABASE_OPTIONS}')  # as config/postgres/init.sql
    where = dict(kv.split("=", 1) for kv in admin.split())
    return name, f"postgresql+psycopg://postgres@{where['host']}:{where['port']}/{name}"


def _drop_pg(name: str, admin: str = PG_ADMIN) -> None:
    import psycopg

    from transforms.warehouse import dispose_all

    dispose_all()
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ingest_all(url: str, files: list[Path], home: str, workers: int = 1) -> int:
    from transforms.config import Settings
    from transforms.ingest import Ingestor

    os.environ["HL7ICS_HOME"] = home
    ing = Ingestor(Settings.load(warehouse_url=url), run_id=f"bench-{uuid.uuid4().hex[:6]}")
    ing.sync_facilities()
    # As the DAG's load task does: one facility's files together.
    return sum(r.counts.messages for r in ing.ingest_files([(f, f.parent.name) for f in files], workers))


def _generate(out: Path, n: int) -> tuple[list[Path], int]:
    from transforms import generator
    from transforms.config import Settings

    facs = [f.as_dict() for f in Settings.load().facilities()]
    m = generator.generate(out, facs, days=1, seed=99, per_day=n, broken_share=0.01, messages_per_file=2000)
    return sorted((out / "inbound").rglob("*.hl7")), m["messages"]


def run(quick: bool = False) -> dict:
    n = 20_000 if quick else 200_000
    runs = 1 if quick else 3
    workers = os.cpu_count() or 1
    results: dict = {"workers": workers}
    rows = []
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as servers:
        files, total = _generate(Path(d) / "gen", n)
        mb = sum(f.stat().st_size for f in files) / 1e6
        os.environ.setdefault("HL7ICS_PATIENT_KEY", "bench" * 8)
        backends = [("SQLite (WAL, synchronous=FULL)", "sqlite", "")]
        if _pg_available():
            backends.append((_pg_label(), "postgresql", PG_ADMIN))
        # Production's configuration (docker-compose.yml) beside the machine's server as it is:
        # the same binaries and locale, so the two rows differ by the settings alone.
        try:
            admin = servers.enter_context(compose_configured_server(_pg_locale() if backends[1:] else "C.UTF-8"))
            backends.append((_pg_label(admin, "private, set as docker-compose.yml"), "postgresql_compose", admin))
        except Unavailable as exc:
            print(f"(no PostgreSQL configured as docker-compose.yml: {exc})")
        # Validation on and off in the same run, so the ratio compares like with like. GX is
        # imported and the suites built before timing (a long-lived worker pays that once).
        from transforms.quality import QualityOptions, Validator
        from transforms.warehouse import get_engine

        Validator(QualityOptions(True), []).engine
        # As `hl7ics ingest` runs by default (one process per CPU, facilities spread over them),
        # and in one process for reference (what one DAG task does for one facility).
        modes = (("on", workers), ("off", workers), ("off", 1))
        for label, kind, admin in backends:

            def one(dq: str, procs: int) -> float:
                """Seconds for the ingest alone. Creating the warehouse and its schema comes
                before the clock starts (a warehouse in use has them), and dropping it after:
                PostgreSQL's DROP DATABASE forces a checkpoint of everything just loaded."""
                os.environ["HL7ICS_DQ"] = dq
                name = None
                if kind == "sqlite":
                    url = f"sqlite:///{d}/w-{uuid.uuid4().hex[:6]}.db"
                else:
                    name, url = _fresh_pg(admin)
                try:
                    get_engine(url)
                    t = time.perf_counter()
                    _ingest_all(url, files, f"{d}/home", procs)
                    return time.perf_counter() - t
                finally:
                    if name:
                        _drop_pg(name, admin)

            # One untimed run first: a server that has not yet written this much WAL creates and
            # zero-fills each 16 MB segment as it goes (a server in use recycles them), which made
            # the first run of a fresh server 20-30% slower than the next, whatever was measured.
            if kind != "sqlite":
                one("off", workers)
            # The modes take turns, run after run, so a drift of the machine or the server over the
            # minutes of the measurement falls on all of them alike, not on the one measured first.
            times: dict[tuple, list[float]] = {m: [] for m in modes}
            for _ in range(runs):
                for m in modes:
                    times[m].append(one(*m))
            rates = {m: total / statistics.median(t) for m, t in times.items()}
            os.environ.pop("HL7ICS_DQ", None)
            on, off, single = rates[("on", workers)], rates[("off", workers)], rates[("off", 1)]
            results[kind] = on
            results[f"{kind}_dq_off"] = off
            results[f"{kind}_one_process"] = single
            cost = 1 - on / off
            results[f"{kind}_dq_cost"] = cost
            rows.append([label, total, on, mb / (total / on), off, f"{cost:.0%}", single, f"{off / single:.2f}x"])
        print(table(f"Ingest end to end (files -> message_store + facts, committed), {workers} worker processes, "
                    f"median of {runs} runs",
                    ["warehouse", "messages", "msgs/s (DQ on)", "MB/s", "msgs/s (DQ off)", "DQ cost",
                     "1 process (DQ off)", f"{workers} vs 1"], rows))
        mem = {}
        # Up to 400,000: a worker's memory rises until its facility's chunks reach
        # VALIDATION_CHUNK messages (at about 200,000 a day here), then must stay flat.
        for size in ([5_000, 20_000] if quick else [50_000, 200_000, 400_000]):
            sub = Path(d) / f"mem{size}"
            sub_files, _ = _generate(sub, size)
            mem[size] = [_peak(sub, sub_files, 1), _peak(sub, sub_files, workers)]
        print(table("Ingest peak memory (SQLite, DQ on, separate process each)",
                    ["messages in the day", "1 process: peak RSS MB", f"{workers} workers: peak total PSS MB"],
                    [[k, *v] for k, v in mem.items()]))
        results["memory"] = mem
    return results


def _peak(sub: Path, files: list[Path], workers: int) -> float:
    """Peak memory of an ingest in a fresh process: with workers, the highest total PSS of the
    process and its workers, sampled every 0.1 s (PSS splits the pages forked workers share with
    their parent, so the sum is the memory really used); for one process, its peak RSS."""
    code = (f"from bench.ingest_bench import _ingest_all\nfrom pathlib import Path\n"
            f"_ingest_all('sqlite:///{sub}/w{workers}.db', [Path(p) for p in {[str(f) for f in files]!r}], "
            f"'{sub}/home', {workers})\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    if workers <= 1:
        return child_peak_rss_mb(code, env=env)
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_pss_mb(proc.pid))
        time.sleep(0.1)
    if proc.returncode:
        raise RuntimeError(f"ingest for the memory measurement failed ({proc.returncode})")
    return peak


def _tree_pss_mb(pid: int) -> float:
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("Pss:")) / 1024
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo.extend(int(c) for c in fh.read().split())
        except (OSError, StopIteration):
            continue  # the process ended between two reads
    return total


def loaded_warehouses(files: list[Path], d: str, run_id: str):
    """For each available backend, a throwaway warehouse loaded with ``files``; yields
    (label, kind, ingestor) and drops it afterwards. Validation is off: the set-up is not measured."""
    from transforms.config import Settings
    from transforms.ingest import Ingestor

    backends = [("SQLite", "sqlite")] + ([("PostgreSQL", "postgresql")] if _pg_available() else [])
    for label, kind in backends:
        name = None
        if kind == "sqlite":
            url = f"sqlite:///{d}/w-{uuid.uuid4().hex[:6]}.db"
        else:
            name, url = _fresh_pg()
        try:
            os.environ["HL7ICS_HOME"] = f"{d}/home"
            os.environ["HL7ICS_DQ"] = "off"
            ing = Ingestor(Settings.load(warehouse_url=url), run_id=run_id)
            ing.sync_facilities()
            ing.ingest_files([(f, f.parent.name) for f in files])
            os.environ.pop("HL7ICS_DQ", None)
            yield label, kind, ing
        finally:
            os.environ.pop("HL7ICS_DQ", None)
            if name:
                _drop_pg(name)
