"""Store and load a batch of received messages: the single code path shared by the batch DAG, the
real-time DAG, ``hl7ics ingest`` and ``hl7ics replay``.

Input: ``Incoming`` items (exact bytes plus provenance; optionally the id of a ``message_store`` row
the MLLP listener already committed). Output: every item ends in exactly one state in
``message_store`` — ``loaded`` (facts written), ``duplicate`` (same sending facility + control ID +
SHA-256 as an earlier message; never loaded twice) or ``quarantined`` (a ``quarantine`` row says
why) — and the counts are returned.

``prepare`` parses outside any transaction; ``write`` does all database work in the caller's
transaction, so a batch is either wholly committed or not at all (a crash re-runs it).
"""
from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mypy_extensions import mypyc_attr
from sqlalchemy import text
from sqlalchemy.engine import Connection

from .config import ConfigError, Facility
from .datetimes import to_utc
from .extract import internal_error_record, to_record
from .facts import (COLUMNS, COVERAGE_KEY, ENCOUNTER_COLUMNS, PatientKeyer, dedupe, extract_facts, fold_encounter,
                    message_row)
from .parser import ParseIssue, parse
from .privacy import record_phi_read
from .quality import STAGE as DQ_STAGE, THRESHOLD_REASON, UNKNOWN_FACILITY_CHECK, QualityOptions, Validator, Verdict
from .warehouse import Writer, timestamp_text as _ts_text, utcnow

UNKNOWN_FACILITY = "UNKNOWN"
DQ_ALERT_KIND = "dq_threshold"
_SAFE_CODE = re.compile(r"[^A-Za-z0-9_.-]")
MS_COLUMNS = ("id", "facility_code", "sending_facility", "sending_application", "control_id", "message_type",
              "trigger_event", "version", "message_datetime", "received_at", "source", "source_ref", "file_sha256",
              "sha256", "raw", "size_bytes", "charset", "status", "error", "flags", "updated_at", "content_sha256")


def content_sha256(raw: bytes) -> str:
    """Hash of what a message *is*: its bytes without a leading BOM or trailing line endings, with
    one segment terminator. Duplicates are judged on this; ``sha256`` stays the exact-bytes hash."""
    return hashlib.sha256(_content(raw)).hexdigest()


def message_hashes(raw: bytes) -> tuple[str, str]:
    """(exact-bytes SHA-256, ``content_sha256``) of a message. When the content is the start of
    the bytes (a usual message: only its last terminator differs), both come from one pass."""
    body = _content(raw)
    if not raw.startswith(body):
        return hashlib.sha256(raw).hexdigest(), hashlib.sha256(body).hexdigest()
    h = hashlib.sha256(body)
    content = h.hexdigest()
    h.update(raw[len(body):])  # hexdigest does not finalize: the same state goes on to the whole bytes
    return h.hexdigest(), content


def _content(raw: bytes) -> bytes:
    body = raw
    if body[:3] != b"MSH":  # the usual start needs no stripping
        body = body.lstrip(b" \t\r\n")
        while body[:3] == b"\xef\xbb\xbf":
            body = body[3:].lstrip(b" \t\r\n")
    body = body.rstrip(b" \t\r\n")
    if b"\n" in body:  # CR, LF and CRLF are the same segment terminator to HL7
        body = body.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return body


@dataclass
class Incoming:
    raw: bytes
    source: str  # folder | sftp | queue | mllp | replay
    source_ref: str  # never a path chosen by the sender
    facility_code: str | None = None  # authenticated origin (folder owner, certificate); None = from MSH-4
    file_sha256: str | None = None
    extra_issues: list = field(default_factory=list)
    message_id: int | None = None  # already in message_store (listener, replay)
    received_at: str | None = None


@dataclass
class Prepared:
    """A parsed message with its facts computed against a placeholder id (see ``_PLACEHOLDER``),
    so preparation can run in another process and ids are only assigned inside the transaction."""

    item: Incoming
    rec: dict
    facility: str
    tz: str
    facts: dict | None = None
    fact_error: str | None = None
    check: tuple | None = None  # the message_store row data-quality suites see (facts.MESSAGE_COLUMNS)
    check_context: tuple | None = None  # (message type, trigger event, message time UTC)
    dq: "Verdict | None" = None  # set by quality.Validator


_NO_REASONS: frozenset = frozenset()  # the quarantine reasons of most messages (shared, never changed)

# Facts are extracted before the message has its message_store id; this sentinel marks the id
# columns, which ``write`` fills in. Column positions come from facts.COLUMNS.
_PLACEHOLDER = -1
# Advisory lock class (first key) of the per-sender duplicate check on PostgreSQL; 724120 is the
# monitoring rollup's.
DUPLICATE_LOCK = 724121
DUPLICATE_LOCK_SLOTS = 64
_ID_COLUMNS = {t: [i for i, c in enumerate(cols) if c in ("message_id", "last_message_id")]
               for t, cols in COLUMNS.items()}


_SLIM_KEYS = ("status", "errors", "sha256", "sending_facility", "sending_application", "control_id",
              "message_type", "trigger_event", "version", "message_datetime", "charset")


def _slim(rec: dict, content_hash: str) -> dict:
    """What ``write`` needs of a record: keeps batches small in memory."""
    out = {k: rec.get(k) for k in _SLIM_KEYS}
    out["content_sha256"] = content_hash
    out["flag_codes"] = list(dict.fromkeys(list(rec.get("flags") or []) + [w["code"] for w in rec.get("warnings") or []]))
    return out


def _add_with_id(out: dict[str, list], facts: dict, mid: int) -> None:
    """Append ``facts``' rows to ``out`` (table -> rows), the placeholder ids set to ``mid``."""
    for table, rows in facts.items():
        dest = out.get(table)
        if dest is None:
            dest = out[table] = []
        idx = _ID_COLUMNS.get(table)
        if not idx:
            dest.extend(rows)
        elif len(idx) == 1:  # every fact table but one: a single id column
            i = idx[0]
            for r in rows:
                dest.append(r[:i] + (mid,) + r[i + 1:] if r[i] == _PLACEHOLDER else r)
        else:
            dest.extend(tuple(mid if k in idx and v == _PLACEHOLDER else v for k, v in enumerate(r)) for r in rows)


@dataclass
class Counts:
    messages: int = 0
    loaded: int = 0
    duplicates: int = 0
    quarantined: int = 0

    def add(self, other: "Counts") -> None:
        self.messages += other.messages
        self.loaded += other.loaded
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined

    def as_dict(self) -> dict:
        return {"messages": self.messages, "loaded": self.loaded, "duplicates": self.duplicates,
                "quarantined": self.quarantined}


def _issue_text(errors: list[dict] | None) -> str | None:
    if not errors:
        return None
    return "; ".join(f"{e['code']}@{e['location']}" for e in errors)[:1000]


_OTHER_KEY = ("the patient key is not the one this warehouse was loaded with: set HL7ICS_PATIENT_KEY (or "
              "HL7ICS_HOME, whose secrets/patient_key holds it) as for its earlier loads; with another key every "
              "patient would get a second patient_key")
_KEY_CHECK = "SELECT value FROM warehouse_setting WHERE name = 'patient_key_check'"


def refuse_other_key(conn: Connection, keyer: PatientKeyer) -> None:
    """Raise ``ConfigError`` when the warehouse records a patient key other than ``keyer``'s. For
    readers that compute patient keys without writing them (routing's order keys); loading checks
    more (``Loader.check_key``)."""
    stored = conn.execute(text(_KEY_CHECK)).scalar()
    if stored is not None and stored != keyer.fingerprint:
        raise ConfigError(_OTHER_KEY)


_SPLIT_KEYS = ("this warehouse already holds patients under more than one patient key (a load ran with another "
               "key): see 'Patient key' in docs/operations.md before loading more")


@mypyc_attr(native_class=False)  # compiled methods, but a plain class: tests and callers may patch it
class Loader:
    """``quality``: the data-quality options (default: from the environment; ``enabled=False`` loads
    without validation). ``run_id`` labels ``dq_result`` rows."""

    def __init__(self, facilities: Iterable[Facility], keyer: PatientKeyer, quality: QualityOptions | None = None,
                 run_id: str = "manual"):
        self.facilities = {f.code: f for f in facilities}
        self.keyer = keyer
        self.quality = quality or QualityOptions.from_env()
        self.run_id = run_id
        # Whether write adds what it validated to dq_result; replay turns it off (its messages
        # were counted when they arrived, and counting each replay again inflates dq_daily).
        self.count_quality = True
        # Whether the failure-rate threshold may hold a whole batch. Replay turns it off: the
        # operator replays after a fix, and a message that now passes its checks must load even
        # beside others that still fail (those stay quarantined for their own reasons).
        self.hold_batches = True
        self._validator: Validator | None = None
        self.dq_breaches: list[dict] = []  # batches held by the failure-rate threshold (no patient data)
        # (kind, facility code) -> params, sent by flush_alerts after the commit
        self.pending_alerts: dict[tuple[str, str], dict] = {}
        self.loaded_facilities: set[str] = set()  # facilities written since the last flush_alerts
        # How the alerter finds its channels' connections (Airflow's resolver inside a task;
        # None: AIRFLOW_CONN_* variables only).
        self.resolve_connection: Callable[..., Any] | None = None
        self._key_checked: set[str] = set()  # warehouses whose patient key check passed

    @property
    def validator(self) -> Validator | None:
        if self.quality.enabled and self._validator is None:
            self._validator = Validator(self.quality, list(self.facilities))
        return self._validator if self.quality.enabled else None

    def validate(self, prepared: list[Prepared]) -> None:
        """Run the data-quality suites on messages not yet validated (one GX run per table)."""
        v = self.validator
        if v is None:
            return
        res = v.validate(prepared, utcnow(), self.hold_batches)
        if res.held:
            facs = sorted({p.facility for p in prepared if p.dq is not None})
            self.dq_breaches.append({"facilities": facs, "validated": res.validated,
                                     "failed": res.failed_messages})
            for fac in facs:
                self.pending_alerts[(DQ_ALERT_KIND, fac)] = {"facility_code": fac, "failed": res.failed_messages,
                                                             "validated": res.validated}

    # -- parsing (no database) ------------------------------------------------------------------
    def prepare(self, items: list[Incoming]) -> list[Prepared]:
        """Parse, build the record and extract facts; pure CPU work, picklable result."""
        out = []
        now = utcnow()
        for it in items:
            fac = self.facilities.get(it.facility_code or "")
            msg = parse(it.raw, fac.charset if fac else None)
            if fac is None and msg.segments and msg.segments[0][0] == "MSH":
                # Real-time traffic: the facility is named in MSH-4; retry with its charset.
                code = (msg.segments[0][3] if len(msg.segments[0]) > 3 else "").split(msg.delims.component, 1)[0]
                fac = self.facilities.get(code)
                if fac is not None and fac.charset and not it.raw.isascii():
                    msg = parse(it.raw, fac.charset)  # only 8-bit text can decode differently
            exact, content = message_hashes(it.raw)
            try:
                rec = to_record(msg, None, it.extra_issues, exact)
            except Exception as exc:  # never lose a message to a parser bug
                rec = internal_error_record(msg, {}, exc)
            facility = it.facility_code or (fac.code if fac else None) or UNKNOWN_FACILITY
            if fac is not None and rec.get("sending_facility") and rec["sending_facility"] != fac.code \
                    and it.facility_code:
                rec["warnings"].append(ParseIssue("SENDING_FACILITY_MISMATCH", "MSH-4",
                                                  "MSH-4 differs from the facility that delivered the file", 0,
                                                  "warning").as_dict())
            tz = fac.timezone if fac else "Africa/Lome"
            facts = fact_error = check = ctx = None
            if rec["status"] != "error":
                try:
                    facts = extract_facts(msg, rec, facility, tz, _PLACEHOLDER, self.keyer, now)
                    if self.quality.enabled:  # only the data-quality suites read these
                        check = message_row(msg, rec, facility)
                        ctx = (rec.get("message_type"), rec.get("trigger_event"),
                               _utc(rec.get("message_datetime"), tz))
                except Exception as exc:
                    fact_error = type(exc).__name__
            out.append(Prepared(it, _slim(rec, content), facility, tz, facts, fact_error, check, ctx))
        return out

    # -- database --------------------------------------------------------------------------------
    def check_key(self, conn: Connection) -> None:
        """Refuse to write with a patient key other than the one this warehouse was loaded with:
        the same patient would get a second ``patient_key``, splitting their history. The
        warehouse keeps the key's fingerprint; one loaded before it did is asked its patients."""
        where = conn.engine.url.render_as_string(hide_password=True)
        if where in self._key_checked:
            return
        get = text(_KEY_CHECK)
        stored = conn.execute(get).scalar()
        known = stored is not None
        if not known:
            # No fingerprint yet: the first loader must not make its own key the warehouse's
            # when the patients already stored say otherwise (an operator's shell without
            # HL7ICS_PATIENT_KEY gets a new random key from its HL7ICS_HOME).
            sample = conn.execute(text("SELECT patient_key, facility_code, patient_id, id_authority FROM phi_patient "
                                       "ORDER BY patient_key LIMIT 20")).all()
            same = [self.keyer.key(fac, auth or fac, pid) == key for key, fac, pid, auth in sample]
            if same and not all(same):
                raise ConfigError(_SPLIT_KEYS if any(same) else _OTHER_KEY)
            # The IDs were read (never shown) to compare keys: audited as every read of phi_*.
            if sample:
                record_phi_read(conn, f"phi_patient: patient key check: {len(sample)} rows")
            Writer(conn).insert("warehouse_setting", ("name", "value", "updated_at"),
                                [("patient_key_check", self.keyer.fingerprint, utcnow())], on_conflict_nothing=("name",))
            stored = conn.execute(get).scalar()
        if stored != self.keyer.fingerprint:
            raise ConfigError(_OTHER_KEY)
        if known:  # what this transaction wrote itself is only known once it commits
            self._key_checked.add(where)

    def write(self, conn: Connection, prepared: list[Prepared]) -> Counts:
        self.outcomes: dict[int | None, tuple[str, set | frozenset]] = {}
        if not prepared:
            return Counts()
        self.check_key(conn)
        w = Writer(conn)
        now = utcnow()
        new = [p for p in prepared if p.item.message_id is None]
        new_ids = {id(p) for p in new}
        ids = w.allocate_ids("message_store", len(new))
        for p, i in zip(new, ids):
            p.item.message_id = i
        if w.dialect == "postgresql":
            # The duplicate check below reads what other transactions have committed. Two writers
            # of one sender's messages at once (a file chunk and the real-time loop, or a replay)
            # would each find the other's copy absent and both load it. So one lock per sending
            # facility, taken in order and held to the commit (SQLite's BEGIN IMMEDIATE already
            # serialises all writers); different facilities still load in parallel. Senders share
            # DUPLICATE_LOCK_SLOTS locks: a chunk of thousands of distinct MSH-4 values would
            # otherwise fill PostgreSQL's lock table.
            # Messages that failed to parse are never checked (nor locked for).
            for slot in sorted({zlib.crc32((p.rec.get("sending_facility") or "").encode("utf-8", "surrogatepass"))
                                % DUPLICATE_LOCK_SLOTS for p in prepared if p.rec["status"] != "error"}):
                w.query("SELECT pg_advisory_xact_lock(?, ?)", [DUPLICATE_LOCK, slot])
        existing = self._existing_keys(w, prepared)
        seen: dict[tuple, int] = {}  # (facility, control id, content hash) -> id loaded in this batch
        seen_ids: dict[tuple, set] = {}  # (facility, control id) -> content hashes in this batch
        # A stored row of a message in this batch has a status this write is about to replace:
        # its copies are judged by what this batch decides for it (``seen``), not by that status.
        in_batch = {p.item.message_id for p in prepared}
        quarantine_rows: list[tuple] = []
        facts_by_table: dict[str, list] = {}
        if any(p.dq is None and p.facts is not None for p in prepared):
            self.validate(prepared)  # callers may validate larger chunks beforehand; this catches the rest
        checks = self._validator.checks if self._validator is not None else {}
        self.loaded_facilities.update(p.facility for p in prepared)
        dq_errors: dict[int | None, str] = {}
        dq_counted: list[Prepared] = []
        for p in sorted(prepared, key=lambda p: p.item.message_id or 0):
            rec = p.rec
            mid: int = p.item.message_id  # type: ignore[assignment]  # every message has its id by now
            qstart = len(quarantine_rows)
            flags = list(rec["flag_codes"])
            if rec["status"] == "error":
                status = "quarantined"
                for e in rec["errors"]:
                    # A replay's kept hold names the stage that wrote it (replay.KeptHold).
                    quarantine_rows.append((mid, e.get("stage", "parse"), e["code"],
                                            f"{e['location']}: {e['message']}"[:500], now))
            else:
                key = (rec.get("sending_facility"), rec.get("control_id"), rec["content_sha256"])
                same_id = [x for x in existing.get(key[:2], []) if x[0] not in in_batch and _counts_before(x, mid)]
                if any(x[1] == key[2] for x in same_id) or key in seen:
                    status = "duplicate"
                else:
                    others = seen_ids.setdefault(key[:2], set())
                    if (others and others != {key[2]}) or same_id:
                        flags.append("CONTROL_ID_REUSE")
                    others.add(key[2])
                    if p.fact_error is not None or p.facts is None:
                        status = "quarantined"
                        quarantine_rows.append((mid, "load", "LOAD_ERROR",
                                                f"fact extraction failed ({p.fact_error})", now))
                    elif checks and p.dq is not None and (p.dq.held or (p.dq.failed and p.dq.errors(checks))):
                        status = "quarantined"
                        dq_errors[mid] = self._dq_quarantine(p.dq, checks, mid, now, quarantine_rows)
                    else:
                        status = "loaded"
                        # Only a loaded copy makes later ones duplicates: a copy of a quarantined
                        # message is judged on its own, so a replay can still load one of them.
                        seen[key] = mid
                        _add_with_id(facts_by_table, p.facts, mid)
                    if checks and p.dq is not None:
                        if p.dq.failed:
                            flags.extend(f"dq:{n}" for n in p.dq.warnings(checks))
                        dq_counted.append(p)
            self.outcomes[mid] = (status, {(q[1], q[2]) for q in quarantine_rows[qstart:]}
                                  if len(quarantine_rows) > qstart else _NO_REASONS)
            p.rec["_flags"] = ",".join(dict.fromkeys(flags)) or None
        # message_store: new rows inserted with their final state; listener rows updated in place.
        outcomes = self.outcomes
        ms_rows = []
        for p in new:
            r = p.rec
            ms_rows.append((p.item.message_id, p.facility, r.get("sending_facility"), r.get("sending_application"),
                            r.get("control_id"), r.get("message_type"), r.get("trigger_event"), r.get("version"),
                            _utc(r.get("message_datetime"), p.tz), p.item.received_at or now, p.item.source,
                            p.item.source_ref, p.item.file_sha256, r["sha256"], p.item.raw, len(p.item.raw),
                            r.get("charset"), outcomes[p.item.message_id][0],
                            dq_errors.get(p.item.message_id) or _issue_text(r.get("errors")),
                            r["_flags"], now, r["content_sha256"]))
        # New rows have ids allocated in this transaction and a source_ref no other row has (file
        # leases, unique listener refs): a straight COPY, binary for the raw bytes.
        w.copy("message_store", MS_COLUMNS, ms_rows, binary=True)
        old = [p for p in prepared if id(p) not in new_ids]
        if old:
            conn.execute(text(
                "UPDATE message_store SET status = :status, error = :error, flags = :flags, facility_code = :fac, "
                "sending_facility = :sf, sending_application = :sa, control_id = :cid, message_type = :mt, "
                "trigger_event = :te, version = :v, message_datetime = :mdt, charset = :cs, "
                # updated_at says when the row's outcome last changed (routing reads by it): a
                # replay that finds the same outcome leaves it.
                "updated_at = CASE WHEN status = :status AND COALESCE(error, '') = COALESCE(:error, '') "
                "AND COALESCE(flags, '') = COALESCE(:flags, '') THEN updated_at ELSE :now END, "
                "content_sha256 = :csha WHERE id = :id"),
                [{"status": outcomes[p.item.message_id][0],
                  "error": dq_errors.get(p.item.message_id) or _issue_text(p.rec.get("errors")),
                  "flags": p.rec["_flags"], "fac": p.facility, "sf": p.rec.get("sending_facility"),
                  "sa": p.rec.get("sending_application"), "cid": p.rec.get("control_id"),
                  "mt": p.rec.get("message_type"), "te": p.rec.get("trigger_event"), "v": p.rec.get("version"),
                  "mdt": _utc(p.rec.get("message_datetime"), p.tz), "cs": p.rec.get("charset"), "now": now,
                  "csha": p.rec["content_sha256"],
                  "id": p.item.message_id} for p in old])
        # A reason that applies again re-opens its row: replay resolved it while the message was
        # out of quarantine or held for another reason, and a quarantined message needs an open
        # row for the next replay to find it.
        w.upsert("quarantine", ("message_id", "stage", "reason", "detail", "created_at", "resolved_at"),
                 [q + (None,) for q in _one_per_reason(quarantine_rows)], key=("message_id", "stage", "reason"),
                 update=("detail", "resolved_at"))
        self._write_facts(conn, w, facts_by_table, now)
        if dq_counted and self.count_quality:
            self._write_dq(conn, dq_counted, checks, now)
        return self.counts_of(prepared)

    def counts_of(self, prepared: list[Prepared]) -> Counts:
        """Counts for some of the messages of the last ``write`` (e.g. one file of a chunk)."""
        counts = Counts(messages=len(prepared))
        for p in prepared:
            status = self.outcomes[p.item.message_id][0]
            if status == "loaded":
                counts.loaded += 1
            elif status == "duplicate":
                counts.duplicates += 1
            else:
                counts.quarantined += 1
        return counts

    @staticmethod
    def _dq_quarantine(dq: Verdict, checks: dict, mid: int, now: str, out: list) -> str:
        """Quarantine rows for one message's failed ``error`` expectations; returns its error text."""
        names = dq.errors(checks)
        for n in names:
            c = checks[n]
            out.append((mid, DQ_STAGE, n, f"{c.table}: {dq.failed[n]} row(s) failed: {c.description}"[:500], now))
        if dq.held:
            out.append((mid, DQ_STAGE, THRESHOLD_REASON,
                        "batch held: its share of messages failing data-quality errors passed the threshold", now))
            names = names + [THRESHOLD_REASON]
        return ("dq: " + ", ".join(names))[:1000]

    def _write_dq(self, conn: Connection, counted: list[Prepared], checks: dict, now: str) -> None:
        """Add this batch's rows checked and failed to ``dq_result`` (same transaction as the load)."""
        # Per facility, then per table or expectation: keyed by plain strings, a chunk's messages
        # (nearly all of one facility) add up without a key tuple per message and table.
        rows: dict[str, dict[str, int]] = {}
        failed: dict[str, dict[str, int]] = {}
        unknown: set[str] = set()
        for p in counted:
            dq = p.dq
            if dq is None:  # counted messages were all validated
                continue
            fr = rows.get(p.facility)
            if fr is None:
                fr = rows[p.facility] = {}
            for t, n in dq.rows.items():
                fr[t] = fr.get(t, 0) + n
            if dq.failed:
                ff = failed.get(p.facility)
                if ff is None:
                    ff = failed[p.facility] = {}
                for name, n in dq.failed.items():
                    ff[name] = ff.get(name, 0) + n
                if dq.failed.get(UNKNOWN_FACILITY_CHECK):
                    unknown.add(_SAFE_CODE.sub("?", p.rec.get("sending_facility") or "")[:64] or UNKNOWN_FACILITY)
        by_table: dict[str, list] = {}
        for c in checks.values():
            by_table.setdefault(c.table, []).append(c)
        agg = {(f, t, c.name): (c.severity, n, failed.get(f, {}).get(c.name, 0))
               for f, fr in rows.items() for t, n in fr.items() for c in by_table.get(t, ())}
        if not agg:
            return
        conn.execute(text(
            "INSERT INTO dq_result (run_id, facility_code, table_name, expectation, severity, evaluated, failed, "
            "created_at, updated_at) VALUES (:r, :f, :t, :e, :s, :n, :x, :now, :now) "
            "ON CONFLICT (run_id, facility_code, table_name, expectation) DO UPDATE SET "
            "evaluated = dq_result.evaluated + excluded.evaluated, failed = dq_result.failed + excluded.failed, "
            "updated_at = excluded.updated_at"),
            [{"r": self.run_id, "f": f, "t": t, "e": e, "s": a[0], "n": a[1], "x": a[2], "now": now}
             for (f, t, e), a in sorted(agg.items())])
        for fac in sorted(unknown):
            # Sent after the commit (flush_alerts): the alerter writes through its own connection.
            self.pending_alerts[("unknown_facility", fac)] = {"facility_code": fac}

    def flush_alerts(self, engine) -> None:
        """Send the alerts this loader's committed batches raised (de-duplicated by the alerter),
        and resolve ``dq_threshold:<facility>`` for the facilities written since the last call that
        have no message held by the threshold any more (replayed, or released by a later load),
        and ``unknown_facility:<code>`` once that code is configured.
        The task that raised the hold succeeds on its next run, so its own alert resolves then:
        this one stays open until the messages are out of quarantine."""
        facilities, self.loaded_facilities = self.loaded_facilities, set()
        if not self.pending_alerts and not facilities:
            return
        from .alerting import Alert, Alerter

        # The configuration is read when a message goes out; a broken alerting.yaml then falls
        # back to ops_alert rows (and logs why) instead of failing the load.
        alerter = Alerter(engine, None, self.resolve_connection)
        for (kind, fac), params in self.pending_alerts.items():
            alerter.fire(Alert(key=f"{kind}:{fac}", kind=kind, severity="error" if kind == DQ_ALERT_KIND else "warning",
                               facility_code=fac, params=params))
        held_now = {fac for kind, fac in self.pending_alerts if kind == DQ_ALERT_KIND}
        self.pending_alerts.clear()
        prefix = f"{DQ_ALERT_KIND}:"
        for key in alerter.open_keys(prefix) if facilities - held_now else ():
            fac = key[len(prefix):]
            if fac not in facilities or fac in held_now:
                continue
            with engine.connect() as conn:
                still = conn.execute(text(
                    "SELECT 1 FROM quarantine q JOIN message_store m ON m.id = q.message_id "
                    "WHERE q.reason = :r AND q.resolved_at IS NULL AND m.facility_code = :f LIMIT 1"),
                    {"r": THRESHOLD_REASON, "f": fac}).first()
            if still is None:
                alerter.resolve(key)
        if facilities:
            # A sender that was unknown is now configured: its alert is over.
            for key in alerter.open_keys("unknown_facility:"):
                if key.split(":", 1)[1] in self.facilities:
                    alerter.resolve(key)

    def _existing_keys(self, w: Writer, prepared: list[Prepared]) -> dict[tuple, list[tuple]]:
        """(sending facility, control ID) -> [(id, content hash, status)] of stored, unquarantined rows."""
        cids = sorted({p.rec["control_id"] for p in prepared if p.rec.get("control_id")})
        out: dict[tuple, list] = {}
        for mid, sf, cid, sha, status in w.query_in(
                "SELECT id, sending_facility, control_id, COALESCE(content_sha256, sha256), status "
                "FROM message_store WHERE {match} AND status <> 'quarantined'", "control_id", cids):
            out.setdefault((sf, cid), []).append((mid, sha, status))
        return out

    def _write_facts(self, conn: Connection, w: Writer, facts: dict[str, list], now: str) -> None:
        if "phi_patient" in facts:
            w.upsert("phi_patient", COLUMNS["phi_patient"], dedupe(facts["phi_patient"], (0,)), key=("patient_key",),
                     where="excluded.last_message_id >= phi_patient.last_message_id", binary=True)
            # dim_patient follows phi_patient: updated only where this batch's values are the ones
            # phi_patient now holds (an older message replayed lost there, and must lose here too).
            w.upsert("dim_patient", COLUMNS["dim_patient"], dedupe(facts["dim_patient"], (0,)), key=("patient_key",),
                     update=("sex", "birth_year", "district", "updated_at"), where=_DIM_FOLLOWS_PHI, binary=True)
        if "encounter_event" in facts:
            ev = facts["encounter_event"]
            # The visits' earlier events are read before this batch's are written: folded with the
            # new ones in memory, they are the same events, and only the earlier ones travel back.
            earlier = self._stored_events(w, {(r[1], r[2]) for r in ev})
            w.copy("encounter_event", COLUMNS["encounter_event"], ev, binary=True)
            self._refold(w, earlier + ev, now)
        if "fact_lab_order" in facts:
            w.upsert("fact_lab_order", COLUMNS["fact_lab_order"], dedupe(facts["fact_lab_order"], (0, 1, 2)),
                     key=("facility_code", "placer_order_number", "test_code"),
                     where="excluded.message_id >= fact_lab_order.message_id")
        if "fact_lab_result" in facts:
            w.copy("fact_lab_result", COLUMNS["fact_lab_result"], facts["fact_lab_result"], binary=True)
        if "fact_medication" in facts:
            rows = _merge_medication(facts["fact_medication"])
            cols = COLUMNS["fact_medication"]
            # Orders and dispenses arrive separately; a later message fills in, never blanks out, and
            # an older one (a replay) only fills what is still empty.
            w.upsert("fact_medication", cols, rows, key=("facility_code", "order_number", "drug_code"),
                     update=("patient_key", "drug_name", "quantity", "units", "ordered_at", "dispensed_at",
                             "message_id", "updated_at"), coalesce=True, newer="message_id")
        if "fact_immunization" in facts:
            w.insert("fact_immunization", COLUMNS["fact_immunization"], facts["fact_immunization"],
                     on_conflict_nothing=("facility_code", "patient_key", "vaccine_code", "administered_at"))
        if "fact_charge" in facts:
            w.copy("fact_charge", COLUMNS["fact_charge"], facts["fact_charge"])
        if "fact_coverage" in facts:
            cols = COLUMNS["fact_coverage"]
            rows = dedupe(facts["fact_coverage"], COVERAGE_KEY)
            w.upsert("fact_coverage", cols, rows, key=tuple(cols[i] for i in COVERAGE_KEY),
                     where="excluded.message_id >= fact_coverage.message_id")
            # A coverage sent without dates and later with them was one coverage made precise:
            # the undated row (open-ended) would otherwise cover every date for ever.
            # One read for the chunk; a DELETE only where an older undated row exists (rarely).
            start, mid = cols.index("period_start"), cols.index("message_id")
            dated = {tuple(r[:4]): r[mid] for r in rows if r[start]}
            undated = w.query_in("SELECT patient_key, facility_code, insurer_code, member_id, message_id "
                                 "FROM fact_coverage WHERE period_start = '' AND {match}", "patient_key",
                                 sorted({k[0] for k in dated})) if dated else []
            gone = [{"p": p, "f": f, "i": i, "m": m} for p, f, i, m, at in undated
                    if (p, f, i, m) in dated and at < dated[(p, f, i, m)]]
            if gone:
                conn.execute(text("DELETE FROM fact_coverage WHERE period_start = '' AND patient_key = :p "
                                  "AND facility_code = :f AND insurer_code = :i AND member_id = :m"), gone)
        if "patient_merge" in facts:
            # Last, so facts written in this same batch for the retired key move too.
            merges = dedupe(facts["patient_merge"], (0,))
            w.upsert("patient_merge", COLUMNS["patient_merge"], merges, key=("old_key",))
            for old_key, new_key, _mid, _at in merges:
                merge_patient(conn, old_key, new_key)

    @staticmethod
    def _stored_events(w: Writer, visits: set[tuple[str, str]]) -> list[tuple]:
        """The stored ``encounter_event`` rows of ``visits`` ((facility, visit number) pairs)."""
        by_fac: dict[str, list[str]] = {}
        for f, v in visits:
            by_fac.setdefault(f, []).append(v)
        cols = ", ".join(COLUMNS["encounter_event"])
        out = []
        for fac, vs in by_fac.items():
            for r in w.query_in(f"SELECT {cols} FROM encounter_event WHERE facility_code = ? AND {{match}}",
                                "visit_number", vs, [fac]):
                # PostgreSQL returns datetimes, SQLite strings: fold on one representation.
                out.append(tuple(_ts_text(v) if i in (4, 8, 9) else v for i, v in enumerate(r)))
        return out

    @staticmethod
    def _refold(w: Writer, events: list[tuple], now: str) -> None:
        """``fact_encounter`` rows of the visits of ``events`` (all of each visit's events)."""
        grouped: dict[tuple, list] = {}
        for r in events:
            grouped.setdefault((r[1], r[2]), []).append(r)
        rows = []
        for evs in grouped.values():
            state = fold_encounter(evs)
            if state:
                rows.append(state + (now,))
        w.upsert("fact_encounter", ENCOUNTER_COLUMNS, rows, key=("facility_code", "visit_number"), binary=True)


def _same(a: str, b: str) -> str:
    """Portable null-safe equality (IS NOT DISTINCT FROM needs SQLite 3.39)."""
    return f"({a} = {b} OR ({a} IS NULL AND {b} IS NULL))"


_DIM_FOLLOWS_PHI = (
    "EXISTS (SELECT 1 FROM phi_patient p WHERE p.patient_key = excluded.patient_key AND "
    + " AND ".join((_same("p.sex", "excluded.sex"), _same("p.district", "excluded.district"),
                    _same("CAST(substr(p.birth_date, 1, 4) AS INTEGER)", "excluded.birth_year"))) + ")")

_MERGE_TABLES = ("fact_encounter", "encounter_event", "fact_lab_order", "fact_lab_result", "fact_medication",
                 "fact_charge")
# Tables whose primary key contains patient_key: a row moves unless the survivor already has it.
_MERGE_KEYED = {"fact_immunization": ("facility_code", "vaccine_code", "administered_at"),
                "fact_coverage": ("facility_code", "insurer_code", "member_id", "period_start")}


def claim(conn: Connection, status: str, ids: list[int]) -> set[int]:
    """Those of ``ids`` whose ``message_store`` row still has ``status``, read in the caller's write
    transaction (and locked until its commit on PostgreSQL; SQLite's write lock already excludes
    other writers). Another loop or replay may have processed some since they were read."""
    lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
    return {r[0] for r in Writer(conn).query_in(
        f"SELECT id FROM message_store WHERE status = ? AND {{match}}{lock}", "id", ids, [status])}


def merge_patient(conn: Connection, old_key: str, new_key: str) -> None:
    """Move the retired patient's history to the surviving key (A40/A41/A42)."""
    params = {"o": old_key, "n": new_key}
    for t in _MERGE_TABLES:
        conn.execute(text(f"UPDATE {t} SET patient_key = :n WHERE patient_key = :o"), params)
    for t, cols in _MERGE_KEYED.items():
        same = " AND ".join(f"x.{c} = {t}.{c}" for c in cols)
        conn.execute(text(f"UPDATE {t} SET patient_key = :n WHERE patient_key = :o AND NOT EXISTS "
                          f"(SELECT 1 FROM {t} x WHERE x.patient_key = :n AND {same})"), params)
    conn.execute(text("UPDATE dim_patient SET merged_into = :n WHERE patient_key = :o"), params)


def _one_per_reason(rows: list[tuple]) -> list[tuple]:
    """One quarantine row per (message, stage, reason), as the table keeps them, with the details
    of all of them: a batch whose BTS-1 and FTS-1 both disagree with its content has one
    BATCH_COUNT_MISMATCH row that names both (only the last was kept)."""
    out: dict[tuple, tuple] = {}
    for r in rows:
        key = r[:3]
        prev = out.get(key)
        if prev is None:
            out[key] = r
        elif r[3] not in prev[3]:
            out[key] = prev[:3] + (f"{prev[3]}; {r[3]}"[:500],) + prev[4:]
    return list(out.values())


def _counts_before(row: tuple, mid: int) -> bool:
    """Whether a stored row with the same key is the earlier copy of message ``mid``: anything
    already loaded (whatever its id: a replayed message keeps its old id), or a row the listener
    stored before it that is still waiting (and will be loaded first). A ``duplicate`` row never
    is: it was not loaded, and the copy that was is among the rows too."""
    return row[2] == "loaded" or (row[2] == "received" and row[0] < mid)


def _utc(iso: str | None, tz: str) -> str | None:
    try:
        return to_utc(iso, tz) if iso else None
    except ValueError:
        return None


def _merge_medication(rows: list[tuple]) -> list[tuple]:
    """Combine order and dispense rows for the same (facility, order, drug) within one batch."""
    merged: dict = {}
    for r in rows:
        k = r[:3]
        if k in merged:
            prev = merged[k]
            merged[k] = tuple(new if new is not None else old for old, new in zip(prev, r))
        else:
            merged[k] = r
    return list(merged.values())
