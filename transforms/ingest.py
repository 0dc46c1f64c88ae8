"""Pull a facility's files and run them through the store-and-load pipeline.

Inputs: the facility registry (config), the warehouse URL, and the facility's sources (this module
implements the ``folder`` source; SFTP and queue sources implement the same ``Source`` protocol).
Outputs: ``message_store``/facts rows via ``load.Loader``, the ``ingested_file`` ledger (by content
SHA-256: a file is processed once even if re-uploaded under another name), archived files under an
internal name, and per-run counts (``ingest_run``).

Used identically by the ``facility_batch_ingest`` DAG (one task per step) and ``hl7ics ingest``.
File names from senders are never used as paths: the archive name is the content hash, and the
original name is kept only as sanitised metadata.
"""
from __future__ import annotations

import gc
import hashlib
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .config import Facility, Settings
from .errors import SourceError
from .extract import iter_parsed
from .facts import PatientKeyer
from .load import UNKNOWN_FACILITY, Counts, Incoming, Loader
from .parser import ParseIssue
from .quality import VALIDATION_CHUNK
from .sources import archive_local, session as source_session, source_for_ref, sources_for
from .warehouse import Writer, get_engine, utcnow

BATCH_SIZE = 2000
LEASE_SECONDS = 600


def _later(seconds: int) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")
_UNSAFE = re.compile(r"[^\w.\- ]+", re.UNICODE)


@dataclass
class FileResult:
    name: str
    sha256: str
    status: str  # done | quarantined | duplicate_file | busy (another worker holds the file's lease)
    counts: Counts = field(default_factory=Counts)
    error: str | None = None


def _remember_origin(path: Path, ref: dict) -> None:
    import json

    refs = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    if ref not in refs:
        refs.append(ref)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(refs), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class _FileJob:
    """A file being ingested: where it resumes, and what its messages said about its envelope."""

    path: Path
    name: str
    sha: str
    facility_code: str | None
    source: str
    done: int  # messages already committed by an earlier attempt
    sniff: ParseIssue | None
    index: int = -1
    envelope_problem: bool = False
    counts: Counts = field(default_factory=Counts)


def sanitize_name(name: str) -> str:
    """Metadata-only form of a sender's file name: basename, no control or path characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip(" .")
    return (base or "unnamed")[:200]


def file_sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def partition_by_facility(specs: list[tuple], workers: int) -> list[list[int]]:
    """Group file specs (as indexes) by facility; a facility's files stay in order in one group.
    One group when ``workers`` <= 1 or there is only one facility."""
    by_fac: dict = {}
    for i, spec in enumerate(specs):
        by_fac.setdefault(spec[1], []).append(i)
    if workers <= 1 or len(by_fac) <= 1:
        return [list(range(len(specs)))] if specs else []
    return list(by_fac.values())


def _weight(specs: list[tuple], indexes: list[int]) -> float:
    """About how many messages some specs' files hold: MSH occurrences in each file's first
    256 KiB, scaled to its size (a file that vanished counts as empty). Work follows messages
    more than bytes: dealt by bytes, the shares of the benchmark day were 3% apart, but one
    worker had 15% more messages and ran 4 s longer than the other."""
    total = 0.0
    for i in indexes:
        try:
            with open(specs[i][0], "rb") as fh:
                head = fh.read(1 << 18)
                size = os.fstat(fh.fileno()).st_size
        except OSError:
            continue
        if head:
            total += head.count(b"MSH") * size / len(head)
    return total


def assign_to_workers(specs: list[tuple], groups: list[list[int]], workers: int) -> list[list[int]]:
    """Facility groups (from ``partition_by_facility``) dealt to ``workers`` processes up
    front, most messages first, each to the worker with the fewest messages so far. A worker then
    loads all its facilities in one ``ingest_files`` call, so its validation chunks run on from
    one facility to the next instead of ending part-full at each (a data-quality run costs
    mostly per expectation, not per row). A facility's files stay together and in order."""
    loads = [0.0] * workers
    out: list[list[int]] = [[] for _ in range(workers)]
    for g, w in sorted(((g, _weight(specs, g)) for g in groups), key=lambda gw: -gw[1]):
        k = loads.index(min(loads))
        out[k].extend(g)
        loads[k] += w
    return [o for o in out if o]


# The forked workers of ``Ingestor._ingest_parallel`` find their ingestor here (fork copies it).
_PARALLEL: "tuple[Ingestor, list[tuple]] | None" = None


def _worker_start() -> None:
    # A SIGTERM handler inherited from the parent must not outlive the fork: Airflow's task runner
    # (also run in-process by ``dag.test()``) installs one that ignores the signal in any child,
    # and a pool worker that ignores SIGTERM hangs ``Pool.terminate()`` and interpreter exit.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The parent's pooled connections must not be shared: this process opens its own.
    _PARALLEL[0].engine.dispose(close=False)


def _ingest_group(job: tuple[int, int, list[int]]) -> tuple[list[tuple[int, FileResult]], list[dict]]:
    k, n, indexes = job
    ing, specs = _PARALLEL
    ing.loader.dq_breaches = []
    # On SQLite, staggered first chunks (worker k of n commits its first after (k+1)/n of a
    # chunk): workers that start together would otherwise finish their chunks together, and one
    # would sit idle through the other's whole write (docs/performance.md has the lock waits
    # measured). PostgreSQL writers do not wait for each other: no extra chunk there.
    first = VALIDATION_CHUNK * (k + 1) // n if ing.engine.dialect.name == "sqlite" else None
    done = ing.ingest_files([specs[i] for i in indexes], first_chunk=first)
    return list(zip(indexes, done)), ing.loader.dq_breaches


def folder_of(settings: Settings, source_path: str) -> Path:
    p = Path(source_path)
    return p if p.is_absolute() else settings.data_dir / p


def discover(settings: Settings, facility: Facility, now: float | None = None) -> list[str]:
    """Paths of the facility's ready files across its sources, oldest first within each source."""
    return [str(s.local_path(r)) for s in sources_for(settings, facility) for r in s.ready(now)]


def sniff_file(path: Path) -> ParseIssue | None:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.strip():
        return ParseIssue("EMPTY_FILE", "file", "file is empty or whitespace only", 100)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(head) > 1 and head[1:2] == b"\x00"):
        return ParseIssue("UNSUPPORTED_FILE_ENCODING", "file", "file looks like UTF-16/32; HL7 files must be single-byte or UTF-8", 203)
    if not any(h in head for h in (b"MSH", b"FHS", b"BHS")):
        with open(path, "rb") as fh:
            more = fh.read(1 << 16)
        if not any(h in more for h in (b"MSH", b"FHS", b"BHS")):
            return ParseIssue("NOT_HL7_CONTENT", "file", "no MSH, FHS or BHS segment in the first 64 KiB", 100)
    return None


class Ingestor:
    """Holds the loader and engine for one run; ``ingest_file`` is idempotent and resumable."""

    def __init__(self, settings: Settings, engine: Engine | None = None, run_id: str | None = None):
        self.settings = settings
        self.engine = engine or get_engine(settings.warehouse_url)
        self.facilities = {f.code: f for f in settings.facilities()}
        # A run id is also the lease owner: two manual runs started in the same second must not
        # share one (each would take the other's files as its own).
        self.run_id = run_id or f"manual__{utcnow().replace(' ', 'T')}__{uuid.uuid4().hex[:8]}"
        self.loader = Loader(self.facilities.values(), PatientKeyer.from_env(settings.home), run_id=self.run_id)
        # Retries of the same DAG run resume a file at once; any other worker waits for the lease.
        # The owner is the run and the facility (``_owner``): one run maps a task per facility, and
        # the same file dropped in two facilities' folders must be loaded by one of them only.
        self.lease_owner = self.run_id
        self._owners: set[str] = set()
        self._renewed_at = 0.0  # monotonic time of the last lease renewal
        # How sources find their connections (Airflow's resolver inside a task, so a secrets
        # backend works; None: AIRFLOW_CONN_* variables only).
        self.resolve_connection = None

    def sync_facilities(self) -> None:
        """dim_facility mirrors the configuration (upsert; facilities are never deleted: one no
        longer configured gets ``retired_at``, and loses it if it comes back)."""
        now = utcnow()
        # A facility configured without a charset reads undeclared text as UTF-8 (bytes that are
        # not UTF-8 fall back to CP1252): "utf-8" here, where NULL broke every sync (NOT NULL).
        rows = [(f.code, f.name, f.type, f.region, f.district, f.dhis2_org_unit, f.timezone, f.charset or "utf-8",
                 now) for f in self.facilities.values()]
        described = ("name", "type", "region", "district", "dhis2_org_unit", "timezone", "charset")
        # updated_at moves only with the configuration: a sync that changes nothing leaves it.
        changed = " OR ".join(f"COALESCE(excluded.{c}, '') <> COALESCE(dim_facility.{c}, '')" for c in described)
        with self.engine.begin() as conn:
            Writer(conn).upsert("dim_facility", ("facility_code", *described, "updated_at"), rows,
                                key=("facility_code",), update=(*described, "updated_at"), where=changed)
            configured = set(self.facilities)
            for code, retired in conn.execute(text("SELECT facility_code, retired_at FROM dim_facility")).all():
                if (code in configured) == (retired is not None):
                    conn.execute(text("UPDATE dim_facility SET retired_at = :r WHERE facility_code = :c"),
                                 {"r": None if code in configured else now, "c": code})

    def ingest_file(self, path: str | Path, facility_code: str | None, source: str = "folder",
                    original_name: str | None = None) -> FileResult:
        """Store and load one file. ``facility_code`` None means "trust MSH-4" (hand-run ingest)."""
        return self.ingest_files([(path, facility_code, source, original_name)])[0]

    def ingest_files(self, specs: list[tuple], workers: int = 1, first_chunk: int | None = None) -> list[FileResult]:
        """Store and load files given as ``(path, facility_code[, source[, original_name]])``.

        ``workers`` > 1 loads different facilities' files in that many processes at once (see
        ``_ingest_parallel``); one facility's files always stay in one process, in order.

        Messages are validated in chunks of up to ``VALIDATION_CHUNK`` across files (the cost of a
        data-quality run is mostly per expectation, not per row), and each chunk is committed in
        one transaction, in file order; a file's ledger entry is closed in the transaction that
        commits its last message, so an interrupted run resumes exactly where it stopped.
        ``first_chunk`` commits the first chunk after that many messages (see ``_ingest_group``).
        """
        if specs:
            # Before any lease is taken: a refused key must not leave the files leased to a run
            # that loads nothing.
            with self.engine.begin() as conn:
                self.loader.check_key(conn)
        groups = partition_by_facility(specs, workers)
        if len(groups) > 1:
            return self._ingest_parallel(specs, groups, workers)
        # The cyclic collector would otherwise rescan the chunk's hundreds of thousands of live
        # objects again and again while it grows (about a sixth of the run); the load path makes
        # no reference cycles of its own, and each flush collects what a chunk left behind.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._ingest_files(specs, first_chunk or VALIDATION_CHUNK)
        finally:
            if was_enabled:
                gc.enable()

    def _ingest_files(self, specs: list[tuple], first_chunk: int) -> list[FileResult]:
        results: list[FileResult | None] = [None] * len(specs)
        limit = first_chunk
        pending: list[tuple[_FileJob, list]] = []
        waiting: list[tuple[int, _FileJob]] = []

        def flush() -> None:
            nonlocal limit
            chunk = [p for _, b in pending for p in b]
            if not chunk and not waiting:
                return  # nothing to commit (the last chunk ended exactly with the last file)
            self.loader.validate(chunk)
            # One transaction and one write for the whole chunk: a commit is an fsync, every
            # statement has a fixed cost, and a patient seen in several files is upserted once. A
            # file's ledger entry only counts what is committed, so a crash still resumes at the
            # right message.
            with self.engine.begin() as conn:
                self.loader.write(conn, chunk)
                committed: dict[str, tuple[_FileJob, Counts]] = {}
                for job, counts in ((job, self.loader.counts_of(b)) for job, b in pending):
                    job.counts.add(counts)
                    committed.setdefault(job.sha, (job, Counts()))[1].add(counts)
                self._count_run_files(conn, committed.values())
                for i, job in waiting:  # files whose last message is in this chunk
                    results[i] = self._finish(conn, job)
            pending.clear()
            waiting.clear()
            # Freed now by reference counting; the collector would scan it all. No name in this
            # frame may still hold a batch (a loop variable did: 2,000 prepared messages scanned).
            chunk.clear()
            gc.collect(1)
            limit = VALIDATION_CHUNK

        for i, job in enumerate(self._open_all(specs)):
            if isinstance(job, FileResult):
                results[i] = job
                continue
            for batch in self._batches(job):
                pending.append((job, self.loader.prepare(batch)))
                if sum(len(b) for _, b in pending) >= limit:
                    flush()
            waiting.append((i, job))
        flush()
        self.loader.flush_alerts(self.engine)
        return results

    def _ingest_parallel(self, specs: list[tuple], groups: list[list[int]], workers: int) -> list[FileResult]:
        """Facility groups of spec indexes dealt over ``workers`` forked processes
        (``assign_to_workers``), each loading its share in one ``ingest_files`` call; results back
        in spec order.

        Why processes: parsing is CPU-bound Python, and on PostgreSQL the writes of different
        facilities do not contend (each transaction's upserts are in key order, so no deadlock);
        on SQLite the writers take turns on the database lock while the others parse.
        """
        import multiprocessing

        if self.loader.validator is not None:
            # Built once here, the data-quality suites are shared by the workers (copy on write)
            # instead of each building its own.
            self.loader.validator.engine
        from .quality import before_fork

        before_fork()
        global _PARALLEL
        _PARALLEL = (self, specs)
        try:
            shares = assign_to_workers(specs, groups, workers)
            pool = multiprocessing.get_context("fork").Pool(len(shares), _worker_start)
            try:
                outs = list(pool.imap_unordered(_ingest_group, [(k, len(shares), share)
                                                                for k, share in enumerate(shares)], chunksize=1))
                # close + join lets each worker finish on its stop sentinel; terminate (what the
                # pool's context manager does) is only for the error path.
                pool.close()
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()
        finally:
            _PARALLEL = None
        results: list[FileResult | None] = [None] * len(specs)
        for done, breaches in outs:
            for i, r in done:
                results[i] = r
            self.loader.dq_breaches.extend(breaches)
        return results

    def ingest_messages(self, items: list[Incoming]) -> Counts:
        """Store and load messages that did not come in a file (a queue), in one transaction,
        which also adds them to this run's queue counts (``ingest_run_queue``, read by ``record_run``)."""
        prepared = self.loader.prepare(items)
        self.loader.validate(prepared)
        with self.engine.begin() as conn:
            counts = self.loader.write(conn, prepared)
            by_facility: dict[str, list] = {}
            for p in prepared:
                by_facility.setdefault(p.facility, []).append(p)
            counted = {f: self.loader.counts_of(ps) for f, ps in sorted(by_facility.items())}
            conn.execute(text(
                "INSERT INTO ingest_run_queue (run_id, facility_code, messages, loaded, duplicates, quarantined, "
                "updated_at) VALUES (:r, :f, :m, :l, :d, :q, :now) ON CONFLICT (run_id, facility_code) DO UPDATE SET "
                "messages = ingest_run_queue.messages + excluded.messages, "
                "loaded = ingest_run_queue.loaded + excluded.loaded, "
                "duplicates = ingest_run_queue.duplicates + excluded.duplicates, "
                "quarantined = ingest_run_queue.quarantined + excluded.quarantined, updated_at = excluded.updated_at"),
                [{"r": self.run_id, "f": f, "m": c.messages, "l": c.loaded, "d": c.duplicates, "q": c.quarantined,
                  "now": utcnow()} for f, c in counted.items()])
        self.loader.flush_alerts(self.engine)
        return counts

    def ingest_queues(self, facility_code: str, resolve_connection=None) -> Counts:
        """Consume the facility's queue sources (ack after commit); see transforms.queue_source."""
        from .alerting import connection_from_env
        from .queue_source import QueueOptions, consume

        total = Counts()
        for src in self.facilities[facility_code].sources:
            if src.type == "queue":
                opts = QueueOptions.from_source(src.options, resolve_connection or self.resolve_connection
                                                or connection_from_env)
                total.add(consume(self, facility_code, opts))
        return total

    def _open_all(self, specs: list[tuple]) -> "list[FileResult | _FileJob]":
        """Register every file in the ledger and take their leases, in one transaction before any
        parsing (a write transaction mid-load would wait for another loader's whole chunk on
        SQLite); a FileResult for a file with nothing to do."""
        hashed = []
        for spec in specs:
            path, facility_code = Path(spec[0]), spec[1]
            try:
                hashed.append((spec, *file_sha256(path)))
            except OSError as exc:
                raise SourceError(f"cannot read file from facility {facility_code}: {type(exc).__name__}") from None
        opened: set[str] = set()
        with self.engine.begin() as conn:
            out = [self._open(conn, opened, sha, size, *spec) for spec, sha, size in hashed]
        self._renewed_at = time.monotonic()
        return out

    def _open(self, conn, opened: set[str], sha: str, size: int, path: str | Path, facility_code: str | None,
              source: str = "folder", original_name: str | None = None) -> "FileResult | _FileJob":
        """Register one file and take its lease (``opened``: hashes already opened in this call)."""
        path = Path(path)
        name = sanitize_name(original_name or path.name)
        if sha in opened:  # the same content twice in one call
            return FileResult(name, sha, "duplicate_file")
        opened.add(sha)
        now = utcnow()
        conn.execute(text(
            "INSERT INTO ingested_file (sha256, facility_code, source, original_name, size_bytes, status, "
            "run_id, first_seen_at) VALUES (:s, :f, :src, :n, :z, 'processing', :r, :t) "
            "ON CONFLICT (sha256) DO NOTHING"),
            {"s": sha, "f": facility_code or UNKNOWN_FACILITY, "src": source, "n": name, "z": size,
             "r": self.run_id, "t": now})
        status = conn.execute(text("SELECT status FROM ingested_file WHERE sha256 = :s"), {"s": sha}).scalar_one()
        if status != "processing":
            return FileResult(name, sha, "duplicate_file")
        # A lease, not a lock held across the whole file: a worker that dies lets go when it expires.
        me = f"{self.lease_owner}/{facility_code or '-'}"
        self._owners.add(me)
        got = conn.execute(text(
            "UPDATE ingested_file SET lease_owner = :me, lease_until = :until WHERE sha256 = :s "
            "AND status = 'processing' AND (lease_owner IS NULL OR lease_owner = :me OR lease_until < :now)"),
            {"me": me, "until": _later(LEASE_SECONDS), "s": sha, "now": now}).rowcount
        if not got:
            return FileResult(name, sha, "busy")
        done = conn.execute(text("SELECT COUNT(*) FROM message_store WHERE file_sha256 = :s"),
                            {"s": sha}).scalar_one()
        return _FileJob(path, name, sha, facility_code, source, done, sniff_file(path))

    def _batches(self, job: "_FileJob"):
        # Renewed at each file too: a run of many small files never fills a batch, and its leases
        # on the files still waiting would otherwise run out under it.
        self._renew()
        with open(job.path, "rb") as fh:
            batch: list[Incoming] = []
            for rm, _msg, extra in self._messages(fh, job.facility_code, job.sniff):
                job.index = rm.index
                if extra:
                    job.envelope_problem = True
                if rm.index < job.done:
                    continue  # committed by an earlier, interrupted attempt
                batch.append(Incoming(rm.raw, job.source, f"{job.sha}:{rm.index}", job.facility_code, job.sha,
                                      list(extra)))
                if len(batch) >= BATCH_SIZE:
                    self._renew()
                    yield batch
                    batch = []
            if batch:
                yield batch

    def _count_run_files(self, conn, committed) -> None:
        """Add what a chunk committed of each file to this run's ``ingest_run_file`` counts, in the
        chunk's transaction: a run that resumes another's file counts the messages it committed."""
        now = utcnow()
        rows = [{"r": self.run_id, "s": job.sha, "f": job.facility_code or UNKNOWN_FACILITY, "m": c.messages,
                 "l": c.loaded, "d": c.duplicates, "q": c.quarantined, "now": now}
                for job, c in sorted(committed, key=lambda jc: jc[0].sha) if c.messages]
        if not rows:
            return
        conn.execute(text(
            "INSERT INTO ingest_run_file (run_id, file_sha256, facility_code, messages, loaded, duplicates, "
            "quarantined, updated_at) VALUES (:r, :s, :f, :m, :l, :d, :q, :now) "
            "ON CONFLICT (run_id, file_sha256) DO UPDATE SET "
            "messages = ingest_run_file.messages + excluded.messages, "
            "loaded = ingest_run_file.loaded + excluded.loaded, "
            "duplicates = ingest_run_file.duplicates + excluded.duplicates, "
            "quarantined = ingest_run_file.quarantined + excluded.quarantined, updated_at = excluded.updated_at"), rows)

    def _finish(self, conn, job: "_FileJob") -> FileResult:
        """Close the file's ledger entry in the transaction that commits its last messages."""
        status = "quarantined" if (job.envelope_problem or job.sniff is not None) else "done"
        err = job.sniff.code if job.sniff else ("BATCH_ENVELOPE" if job.envelope_problem else None)
        conn.execute(text(
            "UPDATE ingested_file SET status = :st, messages = :m, error = :e, completed_at = :t, "
            "lease_owner = NULL, lease_until = NULL WHERE sha256 = :s"),
            {"st": status, "m": job.index + 1, "e": err, "t": utcnow(), "s": job.sha})
        return FileResult(job.name, job.sha, status, job.counts, err)

    def _renew(self) -> None:
        """Extend every lease this run holds, at most every third of the lease time."""
        if time.monotonic() - self._renewed_at < LEASE_SECONDS / 3:
            return
        with self.engine.begin() as conn:
            for me in sorted(self._owners):
                conn.execute(text("UPDATE ingested_file SET lease_until = :until WHERE lease_owner = :me "
                                  "AND status = 'processing'"), {"until": _later(LEASE_SECONDS), "me": me})
        self._renewed_at = time.monotonic()

    def _messages(self, fh, facility_code: str | None, sniff: ParseIssue | None):
        fac = self.facilities.get(facility_code or "")
        for rm, msg, extra in iter_parsed(fh, fac.charset if fac else None, parse_messages=False):
            if sniff is not None:
                extra = extra + [sniff]
            yield rm, msg, extra

    def archive(self, path: str | Path, facility_code: str, source: str = "folder",
                sha: str | None = None) -> str | None:
        """Hand a committed file back to its source to archive; never one that is not committed."""
        path = Path(path)
        if not path.exists():
            return None
        if sha is None:
            sha, _ = file_sha256(path)
        with self.engine.connect() as conn:
            st = conn.execute(text("SELECT status FROM ingested_file WHERE sha256 = :s"), {"s": sha}).scalar()
        if st not in ("done", "quarantined"):
            return None
        if source == "folder":
            # Local files (a drop folder, or the staging copy of any source) archive the same way,
            # whether or not the facility also has a drop folder.
            return archive_local(self.settings, facility_code, path, sha)
        ref = {"source": source, "ref": str(path), "name": path.name}
        return source_for_ref(self.settings, self.facilities[facility_code], ref,
                              self.resolve_connection).finish(ref, sha)

    # -- staging: what the DAG's pull -> load -> archive steps pass around is a content hash --------
    def staging_dir(self, facility_code: str) -> Path:
        d = self.settings.home / "staging" / facility_code
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage(self, facility_code: str) -> list[str]:
        """Take the facility's ready files into ``$HL7ICS_HOME/staging/<facility>/<sha256>.hl7`` and
        return every staged hash, oldest first (leftovers of an interrupted run included). Sender
        file names stay out of XCom and logs: they are kept beside the file as metadata only."""
        fac = self.facilities[facility_code]
        d = self.staging_dir(facility_code)
        for src in sources_for(self.settings, fac, self.resolve_connection):
            with source_session(src):  # one connection for a source's listing and downloads
                self._stage_from(src, facility_code, d)
        staged = sorted(d.glob("*.hl7"), key=lambda p: (p.stat().st_mtime, p.name))
        return [p.stem for p in staged]

    def _stage_from(self, src, facility_code: str, d: Path) -> None:
        import shutil

        for ref in src.ready():
            path = src.local_path(ref)
            try:
                sha, size = file_sha256(path)
                dest = d / f"{sha}.hl7"
                if src.type != "folder":
                    # A remote origin is finished (moved or deleted there) only after the commit,
                    # and only if it still has the size staged (see SftpSource.finish).
                    _remember_origin(d / f"{sha}.src", {**ref, "staged_size": size})
                if dest.exists():
                    path.unlink()  # the same content is already waiting
                    continue
                (d / f"{sha}.name").write_text(sanitize_name(ref.get("name") or path.name), encoding="utf-8")
                shutil.move(str(path), dest)
            except OSError as exc:
                raise SourceError(f"cannot stage a file of facility {facility_code}: {type(exc).__name__}") from None

    def ingest_staged(self, facility_code: str, shas: list[str]) -> list[FileResult]:
        """Ingest staged files (named by content hash) of one facility, validated together."""
        import json

        d = self.staging_dir(facility_code)
        specs = []
        for sha in shas:
            name_file = d / f"{sha}.name"
            name = name_file.read_text(encoding="utf-8") if name_file.exists() else None
            origin = d / f"{sha}.src"
            # The type of the source it came from (message_store.source): sftp for a file staged
            # from a server, folder for a drop folder.
            kind = json.loads(origin.read_text(encoding="utf-8"))[0]["source"] if origin.exists() else "folder"
            specs.append((d / f"{sha}.hl7", facility_code, kind, name))
        return self.ingest_files(specs)

    def archive_all(self, facility_code: str, shas: list[str]) -> int:
        """``archive_staged`` for each of ``shas``, each remote source's files finished over one
        connection (one per file could be refused by a server that limits connections)."""
        import contextlib

        fac = self.facilities[facility_code]
        with contextlib.ExitStack() as stack:
            opened: dict[int, object] = {}
            made = sources_for(self.settings, fac, self.resolve_connection)

            def finishing(ref):
                src = source_for_ref(self.settings, fac, ref, among=made)
                if id(src) not in opened:  # connected at its first file only
                    opened[id(src)] = stack.enter_context(source_session(src))
                return src

            return sum(1 for sha in shas if self.archive_staged(facility_code, sha, finishing))

    def archive_staged(self, facility_code: str, sha: str, source_of=None) -> str | None:
        """Finish a loaded staged file at its origin (``source_of(ref)``: the source to use,
        default a new one) and archive the local copy."""
        import json

        d = self.staging_dir(facility_code)
        origin = d / f"{sha}.src"
        if origin.exists():
            with self.engine.connect() as conn:
                st = conn.execute(text("SELECT status FROM ingested_file WHERE sha256 = :s"), {"s": sha}).scalar()
            if st not in ("done", "quarantined"):
                return None
            fac = self.facilities[facility_code]
            for ref in json.loads(origin.read_text(encoding="utf-8")):
                src = source_of(ref) if source_of else source_for_ref(self.settings, fac, ref, self.resolve_connection)
                src.finish(ref, sha, d / f"{sha}.hl7")
            origin.unlink()
        dest = self.archive(d / f"{sha}.hl7", facility_code, sha=sha)  # staged files are named by their hash
        if dest is not None:
            (d / f"{sha}.name").unlink(missing_ok=True)
        return dest

    def record_run(self, facility_codes: list[str] | None = None) -> list[dict]:
        """Per-facility counts of this run, recomputed from what it recorded (so a re-run writes the
        same): the files it registered or committed messages of, and the messages it committed from
        files (``ingest_run_file``) and queues (``ingest_run_queue``), as the load judged them."""
        sql = text(
            "SELECT facility_code, COUNT(DISTINCT sha256), SUM(messages), SUM(loaded), SUM(duplicates), "
            "SUM(quarantined) FROM ("
            "SELECT facility_code, sha256, 0 AS messages, 0 AS loaded, 0 AS duplicates, 0 AS quarantined "
            "FROM ingested_file WHERE run_id = :r UNION ALL "
            "SELECT facility_code, file_sha256, messages, loaded, duplicates, quarantined "
            "FROM ingest_run_file WHERE run_id = :r) x GROUP BY facility_code ORDER BY facility_code")
        now = utcnow()
        with self.engine.begin() as conn:
            rows = [tuple(r) for r in conn.execute(sql, {"r": self.run_id})]
            queued = {r[0]: r[1:] for r in conn.execute(text(
                "SELECT facility_code, messages, loaded, duplicates, quarantined FROM ingest_run_queue "
                "WHERE run_id = :r"), {"r": self.run_id})}
            codes = set(facility_codes or []) | {r[0] for r in rows} | set(queued)
            by = {r[0]: r for r in rows}
            out = []
            for code in sorted(codes):
                r = by.get(code, (code, 0, 0, 0, 0, 0))
                q = queued.get(code, (0, 0, 0, 0))
                out.append((self.run_id, code, r[1], r[2] + q[0], (r[3] or 0) + q[1], (r[4] or 0) + q[2],
                            (r[5] or 0) + q[3], now))
            Writer(conn).upsert("ingest_run", ("run_id", "facility_code", "files", "messages", "loaded", "duplicates",
                                               "quarantined", "updated_at"), out, key=("run_id", "facility_code"),
                                update=("files", "messages", "loaded", "duplicates", "quarantined"))
        return [{"facility": r[1], "files": r[2], "messages": r[3], "loaded": r[4], "duplicates": r[5],
                 "quarantined": r[6]} for r in out]
