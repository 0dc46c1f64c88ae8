"""The spine: files -> message_store -> warehouse, on SQLite and the real PostgreSQL.

Checks the contract of issue 3: every message ends in exactly one state, re-runs change nothing
(table checksums), duplicates and control-ID reuse, event-time ordering of ADT, merges, replay,
resume after a crash, and bad inputs 59-66 of the project's bad-input catalogue.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from transforms import generator
from transforms.config import ConfigError, Settings
from transforms.ingest import Ingestor, discover, sanitize_name
from transforms.warehouse import get_engine

FIX = Path(__file__).parent / "fixtures" / "hl7"
TABLES = ["message_store", "quarantine", "ingested_file", "ingest_run", "ingest_run_file", "dim_facility", "phi_patient", "dim_patient",
          "patient_merge", "encounter_event", "fact_encounter", "fact_lab_order", "fact_lab_result", "fact_medication",
          "fact_immunization", "fact_charge", "fact_coverage"]


def checksum(engine) -> dict[str, str]:
    out = {}
    with engine.connect() as c:
        for t in TABLES:
            rows = c.execute(text(f"SELECT * FROM {t}")).all()
            digest = hashlib.sha256()
            for r in sorted(repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)) for r in rows):
                digest.update(r.encode())
            out[t] = f"{len(rows)}:{digest.hexdigest()[:16]}"
    return out


def scalar(engine, sql, **p):
    with engine.connect() as c:
        return c.execute(text(sql), p).scalar()


def rows(engine, sql, **p):
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text(sql), p)]


@pytest.fixture
def ingestor(warehouse_url, hl7ics_home):
    s = Settings.load(warehouse_url=warehouse_url)
    ing = Ingestor(s, run_id="run-1")
    ing.sync_facilities()
    return ing


def write(path: Path, text_: str, encoding="utf-8", terminator="\r") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text_.strip("\n").replace("\n", terminator).encode(encoding) + terminator.encode())
    return path


def adt(control: str, event: str, when: str, visit="V1", pid="P1", extra_pv1="", family="Kodjo") -> str:
    return (f"MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|{when}||ADT^{event}|{control}|P|2.5\n"
            f"EVN|{event}|{when}\n"
            f"PID|1||{pid}^^^CHU-SO^MR||{family}^Afi||19900101|F\n"
            f"PV1|1|I|MED{extra_pv1}||||||||||||||||{visit}\n")


def test_generated_traffic_every_message_one_state_and_rerun_is_a_no_op(ingestor, tmp_path):
    manifest = generator.generate(tmp_path / "gen", [f.as_dict() for f in ingestor.facilities.values()], days=1,
                                  seed=7, per_day=300, broken_share=0.05)
    files = sorted((tmp_path / "gen" / "inbound").rglob("*.hl7"))
    for f in files:
        ingestor.ingest_file(f, f.parent.name)
    eng = ingestor.engine
    total = scalar(eng, "SELECT COUNT(*) FROM message_store")
    by_status = dict(rows(eng, "SELECT status, COUNT(*) FROM message_store GROUP BY status"))
    assert set(by_status) <= {"loaded", "duplicate", "quarantined"}
    assert sum(by_status.values()) == total
    # every generated message is a row of its own (header-less ones start their file)
    assert total == manifest["messages"]
    assert by_status["quarantined"] >= sum(n for r, n in manifest["broken"].items() if r != "TRUNCATED")
    assert scalar(eng, "SELECT COUNT(*) FROM message_store m WHERE status = 'quarantined' AND NOT EXISTS "
                       "(SELECT 1 FROM quarantine q WHERE q.message_id = m.id)") == 0
    assert scalar(eng, "SELECT COUNT(*) FROM fact_lab_result") > 0
    assert scalar(eng, "SELECT COUNT(*) FROM fact_encounter") > 0
    assert scalar(eng, "SELECT COUNT(*) FROM fact_charge WHERE currency = 'XOF'") > 0
    ingestor.record_run(sorted(ingestor.facilities))
    before = checksum(eng)
    # Re-run of the same DAG run: same files, same run id.
    again = Ingestor(ingestor.settings, engine=eng, run_id="run-1")
    for f in files:
        assert again.ingest_file(f, f.parent.name).status == "duplicate_file"
    again.record_run(sorted(ingestor.facilities))
    assert checksum(eng) == before


def _content(engine) -> dict:
    """What a load means, without ids and clock times (which depend on the order of work)."""
    return {
        "messages": rows(engine, "SELECT source_ref, status, sha256, control_id, flags, error FROM message_store "
                                 "ORDER BY source_ref"),
        "quarantine": rows(engine, "SELECT m.source_ref, q.stage, q.reason FROM quarantine q JOIN message_store m "
                                   "ON m.id = q.message_id ORDER BY 1, 2, 3"),
        "files": rows(engine, "SELECT sha256, facility_code, status, messages FROM ingested_file ORDER BY sha256"),
        "encounters": rows(engine, "SELECT facility_code, visit_number, patient_key, admit_at, discharge_at, "
                                   "last_event FROM fact_encounter ORDER BY 1, 2"),
        "results": rows(engine, "SELECT facility_code, placer_order_number, test_code, value, patient_key "
                                "FROM fact_lab_result ORDER BY 1, 2, 3, 4"),
        "patients": rows(engine, "SELECT patient_key, sex, birth_year FROM dim_patient ORDER BY 1"),
        "charges": rows(engine, "SELECT facility_code, patient_key, amount FROM fact_charge ORDER BY 1, 2, 3"),
    }


def test_parallel_ingest_loads_what_one_process_loads(warehouse_url, second_warehouse_url, hl7ics_home,
                                                      tmp_path):
    """``workers=2`` (facilities spread over two processes) ends in the same warehouse content
    as one process, every message in exactly one state."""
    from transforms.ingest import assign_to_workers, partition_by_facility

    s = Settings.load(warehouse_url=warehouse_url)
    facs = [f.as_dict() for f in s.facilities()]
    generator.generate(tmp_path / "gen", facs, days=1, seed=11, per_day=600, broken_share=0.05,
                       messages_per_file=60)
    files = sorted((tmp_path / "gen" / "inbound").rglob("*.hl7"))
    specs = [(f, f.parent.name) for f in files]
    groups = partition_by_facility(specs, 2)
    assert sorted(i for g in groups for i in g) == list(range(len(specs)))
    assert [len({specs[i][1] for i in g}) for g in groups] == [1] * len(groups)  # one facility per group
    assert len(groups) == len({s[1] for s in specs}) > 2
    assert all(g == sorted(g) for g in groups)  # a facility's files in their order
    shares = assign_to_workers(specs, groups, 2)
    assert len(shares) == 2 and sorted(i for s_ in shares for i in s_) == list(range(len(specs)))
    for g in groups:  # each facility whole, in order, in one share
        assert sum(1 for s_ in shares if set(g) <= set(s_)) == 1
        share = next(s_ for s_ in shares if set(g) <= set(s_))
        assert [i for i in share if i in g] == g
    def messages(ix):
        return sum(files[i].read_bytes().count(b"MSH") for i in ix)

    loads = [messages(s_) for s_ in shares]
    assert max(loads) - min(loads) <= max(messages(g) for g in groups)  # largest first to the lighter one
    one = Ingestor(s, run_id="run-1")
    one.sync_facilities()
    first = one.ingest_files(specs)
    expected = _content(one.engine)
    two = Ingestor(Settings.load(warehouse_url=second_warehouse_url), run_id="run-1")
    two.sync_facilities()
    second = two.ingest_files(specs, workers=2)
    assert [(r.sha256, r.status, r.counts.as_dict()) for r in second] == \
        [(r.sha256, r.status, r.counts.as_dict()) for r in first]
    assert _content(two.engine) == expected
    assert len(expected["messages"]) == sum(r.counts.messages for r in first) > 500


def test_ingest_workers_die_on_sigterm_even_if_the_parent_ignores_it(monkeypatch):
    """Airflow's task runner, also run in-process by ``dag.test()``, installs a SIGTERM handler
    that ignores the signal in forked children. Ingest workers must restore the default, or
    ``Pool.terminate()`` (error path, interpreter exit) waits for them forever: CI hung so."""
    import multiprocessing
    import os
    import signal
    import types

    from sqlalchemy import create_engine

    from transforms import ingest

    parent_pid = os.getpid()

    def airflow_like(signum, frame):
        if os.getpid() != parent_pid:
            return

    monkeypatch.setattr(ingest, "_PARALLEL", (types.SimpleNamespace(engine=create_engine("sqlite://")), []))
    previous = signal.signal(signal.SIGTERM, airflow_like)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    worker = ctx.Process(target=_started_worker, args=(ready,))
    try:
        worker.start()
        assert ready.wait(30)
        worker.terminate()  # SIGTERM, what Pool.terminate sends
        worker.join(30)
        assert worker.exitcode == -signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
        if worker.exitcode is None:
            worker.kill()
            worker.join()


def _started_worker(ready) -> None:
    import time

    from transforms import ingest

    ingest._worker_start()
    ready.set()
    time.sleep(60)


def test_binary_copy_of_message_store_keeps_every_byte_and_value(warehouse_url):
    """message_store rows go to PostgreSQL in COPY's binary format: every byte value, text
    timestamps (converted on the way) and NULLs arrive as the text format would have stored them."""
    from transforms.load import MS_COLUMNS
    from transforms.warehouse import Writer

    engine = get_engine(warehouse_url)
    raw = bytes(range(256)) + "Ɖogbé Kɔmlaʋi".encode("utf-8") + b"\x00\\x\t\n"
    row = dict.fromkeys(MS_COLUMNS)
    row.update(id=990001, facility_code="CHU-SO", sending_facility="CHU-SO", control_id="C\t1\\x",
               message_datetime="2026-11-02 08:00:00", received_at="2026-11-02 08:00:05", source="folder",
               source_ref="binary-test#1", sha256=hashlib.sha256(raw).hexdigest(), raw=raw, size_bytes=len(raw),
               status="loaded", updated_at="2026-11-02 08:00:05", flags="É,ŋ")
    with engine.begin() as conn:
        Writer(conn).copy("message_store", MS_COLUMNS, [tuple(row[c] for c in MS_COLUMNS)], binary=True)
    got = rows(engine, "SELECT raw, control_id, message_datetime, received_at, trigger_event, flags, size_bytes "
                       "FROM message_store WHERE id = 990001")
    assert len(got) == 1
    stored, cid, mdt, rat, te, flags, size = got[0]
    assert bytes(stored) == raw and size == len(raw)
    assert (cid, te, flags) == ("C\t1\\x", None, "É,ŋ")
    assert str(mdt).startswith("2026-11-02 08:00:00") and str(rat).startswith("2026-11-02 08:00:05")


def test_allocated_ids_are_ascending_unused_and_never_handed_out_twice(warehouse_url):
    """``Writer.allocate_ids`` gives the loader ids in ascending order (it assigns them in message
    order), ahead of the rows already stored and of every earlier reservation."""
    from transforms.warehouse import Writer

    engine = get_engine(warehouse_url)
    with engine.begin() as conn:
        first = Writer(conn).allocate_ids("message_store", 2500)
        Writer(conn).copy("message_store", ("id", "received_at", "source", "source_ref", "sha256", "raw",
                                            "size_bytes", "status", "updated_at"),
                          [(i, "2026-11-02 08:00:00", "folder", f"ids-test#{i}", "0" * 64, b"MSH|", 4, "received",
                            "2026-11-02 08:00:00") for i in first])
    with engine.begin() as conn:
        second = Writer(conn).allocate_ids("message_store", 3)
        assert Writer(conn).allocate_ids("message_store", 0) == []
    assert len(first) == 2500 and first == sorted(set(first))
    assert len(second) == 3 and second == sorted(second) and second[0] > first[-1]


def test_raw_bytes_are_stored_exactly_and_names_survive(ingestor, tmp_path):
    f = tmp_path / "CHU-SO" / "day.hl7"
    f.parent.mkdir()
    shutil.copyfile(FIX / "togo_adt_oru.hl7", f)
    ingestor.ingest_file(f, "CHU-SO")
    eng = ingestor.engine
    raws = [bytes(r[0]) for r in rows(eng, "SELECT raw FROM message_store ORDER BY id")]
    assert b"".join(raws) == f.read_bytes()
    for raw, sha in zip(raws, [r[0] for r in rows(eng, "SELECT sha256 FROM message_store ORDER BY id")]):
        assert hashlib.sha256(raw).hexdigest() == sha
    assert rows(eng, "SELECT family_name, given_name FROM phi_patient") == [("Ɖogbé", "Améyo")]
    enc = rows(eng, "SELECT visit_number, admit_at, discharge_at, discharge_disposition, diagnosis_codes, last_event "
                    "FROM fact_encounter")
    assert len(enc) == 1 and enc[0][0] == "V0001" and enc[0][3] == "01" and enc[0][5] == "A03"
    assert str(enc[0][1]).startswith("2026-11-02 08:00") and str(enc[0][2]).startswith("2026-11-03 09:55")
    res = rows(eng, "SELECT test_code, value, value_numeric, units, placer_order_number FROM fact_lab_result "
                    "ORDER BY obx_seq")
    assert res[0][:2] == ("70569-9", "260373001") and res[0][4] == "ORD-77"
    assert res[1][2] == pytest.approx(9.5) and res[1][3] == "g/dL"


def test_duplicates_and_control_id_reuse(ingestor, tmp_path):
    a = write(tmp_path / "a.hl7", adt("C-1", "A01", "20261102080000"))
    b = write(tmp_path / "b.hl7", adt("C-1", "A01", "20261102080000") + adt("C-2", "A08", "20261102090000"))
    c = write(tmp_path / "c.hl7", adt("C-1", "A08", "20261102100000", family="Mensah"))
    for f in (a, b, c):
        ingestor.ingest_file(f, "CHU-SO")
    got = rows(ingestor.engine, "SELECT control_id, status, flags FROM message_store ORDER BY id")
    assert [g[:2] for g in got] == [("C-1", "loaded"), ("C-1", "duplicate"), ("C-2", "loaded"), ("C-1", "loaded")]
    assert "CONTROL_ID_REUSE" in (got[3][2] or "")
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM encounter_event") == 3


def test_files_written_in_one_chunk_keep_their_own_counts(ingestor, tmp_path):
    """A chunk is written in one go; each file still gets its own counts, and a duplicate of a
    message in an earlier file of the same chunk is found."""
    a = write(tmp_path / "a.hl7", adt("K-1", "A01", "20261102080000") + "MSH|^~\\&|broken\n")
    b = write(tmp_path / "b.hl7", adt("K-1", "A01", "20261102080000") + adt("K-2", "A08", "20261102090000"))
    c = write(tmp_path / "c.hl7", adt("K-3", "A03", "20261102100000"))
    got = ingestor.ingest_files([(a, "CHU-SO"), (b, "CHU-SO"), (c, "CHU-SO")])
    assert [r.counts.as_dict() for r in got] == [
        {"messages": 2, "loaded": 1, "duplicates": 0, "quarantined": 1},
        {"messages": 2, "loaded": 1, "duplicates": 1, "quarantined": 0},
        {"messages": 1, "loaded": 1, "duplicates": 0, "quarantined": 0}]
    assert rows(ingestor.engine, "SELECT control_id, status FROM message_store WHERE control_id LIKE 'K-%' "
                                 "ORDER BY id") == [("K-1", "loaded"), ("K-1", "duplicate"), ("K-2", "loaded"),
                                                    ("K-3", "loaded")]


def test_first_chunk_commits_early_and_the_next_ones_are_full(ingestor, tmp_path, monkeypatch):
    """``first_chunk`` (parallel SQLite workers stagger their commits with it) only moves the
    first commit; the chunks after it are full, across files, and the content is unchanged."""
    from transforms import ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "BATCH_SIZE", 10)
    monkeypatch.setattr(ingest_mod, "VALIDATION_CHUNK", 50)
    sizes = []
    real_write = ingestor.loader.write

    def counting_write(conn, prepared):
        sizes.append(len(prepared))
        return real_write(conn, prepared)

    monkeypatch.setattr(ingestor.loader, "write", counting_write)
    files = [write(tmp_path / f"f{n}.hl7", "".join(adt(f"S-{n}-{i}", "A08", "20261102080000", visit=f"V{n}-{i}")
                                                   for i in range(40))) for n in range(3)]
    got = ingestor.ingest_files([(f, "CHU-SO") for f in files], first_chunk=20)
    assert [n for n in sizes if n] == [20, 50, 50]
    assert [r.counts.loaded for r in got] == [40, 40, 40]
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store WHERE control_id LIKE 'S-%'") == 120


def test_a_chunk_is_freed_before_the_collector_runs(ingestor, tmp_path, monkeypatch):
    """The collector runs once per committed chunk, and by then nothing holds the chunk's prepared
    messages: anything still alive is scanned object by object (a loop variable once kept the
    last file's 2,000 messages alive through every collection)."""
    import gc as real_gc

    from transforms import ingest as ingest_mod
    from transforms.load import Prepared

    monkeypatch.setattr(ingest_mod, "BATCH_SIZE", 10)
    monkeypatch.setattr(ingest_mod, "VALIDATION_CHUNK", 30)
    alive = []

    class Collector:
        def __getattr__(self, name):
            return getattr(real_gc, name)

        @staticmethod
        def collect(generation=2):
            # type(), not isinstance: isinstance reads __class__, which some lazy objects of
            # Airflow's answer by importing (and failing on) an optional module.
            alive.append(sum(type(o) is Prepared for o in real_gc.get_objects()))
            return real_gc.collect(generation)

    monkeypatch.setattr(ingest_mod, "gc", Collector())
    files = [write(tmp_path / f"g{n}.hl7", "".join(adt(f"G-{n}-{i}", "A08", "20261102080000", visit=f"V{n}-{i}")
                                                   for i in range(25))) for n in range(3)]
    got = ingestor.ingest_files([(f, "CHU-SO") for f in files])
    assert [r.counts.loaded for r in got] == [25, 25, 25]
    assert len(alive) == 3 and alive == [0, 0, 0]


def test_same_file_twice_in_one_run(ingestor, tmp_path):
    a = write(tmp_path / "x" / "one.hl7", adt("D-2", "A01", "20261102080000") + adt("D-3", "A08", "20261102090000"))
    b = tmp_path / "y" / "again.hl7"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    got = ingestor.ingest_files([(a, "CHU-SO"), (b, "CHU-SO")])
    assert [(r.name, r.status, r.counts.messages) for r in got] == [("one.hl7", "done", 2),
                                                                   ("again.hl7", "duplicate_file", 0)]
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store") == 2


def test_same_file_twice_under_another_name(ingestor, tmp_path):
    a = write(tmp_path / "x" / "one.hl7", adt("D-1", "A01", "20261102080000"))
    b = tmp_path / "y" / "renamed.hl7"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    assert ingestor.ingest_file(a, "CHU-SO").status == "done"
    before = checksum(ingestor.engine)
    assert ingestor.ingest_file(b, "CHU-SO").status == "duplicate_file"
    assert checksum(ingestor.engine) == before


def test_adt_events_apply_in_event_time_order(ingestor, tmp_path):
    """Bad input 52: A03 arrives before A01; the visit still ends discharged."""
    pv1 = ["PV1", "1", "I", "MED"] + [""] * 42
    pv1[19], pv1[36], pv1[44], pv1[45] = "V1", "01", "20261104080000", "20261105100000"
    dis = adt("E-2", "A03", "20261105100000").split("PV1|")[0] + "|".join(pv1) + "\n"
    write(tmp_path / "1.hl7", dis)
    write(tmp_path / "2.hl7", adt("E-1", "A01", "20261104080000"))
    for f in sorted(tmp_path.glob("*.hl7")):
        ingestor.ingest_file(f, "CHU-SO")
    (row,) = rows(ingestor.engine, "SELECT last_event, discharge_at, discharge_disposition, admit_at FROM fact_encounter")
    assert row[0] == "A03" and row[1] is not None and row[2] == "01"
    # A11 cancels the admission
    write(tmp_path / "3.hl7", adt("E-3", "A11", "20261105110000"))
    ingestor.ingest_file(tmp_path / "3.hl7", "CHU-SO")
    assert scalar(ingestor.engine, "SELECT cancelled FROM fact_encounter") == 1


def test_a40_merge_moves_history_to_the_surviving_patient(ingestor, tmp_path):
    write(tmp_path / "1.hl7", adt("M-1", "A01", "20261102080000", pid="OLD1"))
    merge = ("MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261103080000||ADT^A40^ADT_A39|M-2|P|2.5\n"
             "EVN|A40|20261103080000\nPID|1||NEW1^^^CHU-SO^MR||Kodjo^Afi||19900101|F\nMRG|OLD1^^^CHU-SO^MR\n")
    write(tmp_path / "2.hl7", merge)
    for f in sorted(tmp_path.glob("*.hl7")):
        ingestor.ingest_file(f, "CHU-SO")
    eng = ingestor.engine
    new_key = scalar(eng, "SELECT patient_key FROM phi_patient WHERE patient_id = 'NEW1'")
    old_key = scalar(eng, "SELECT patient_key FROM phi_patient WHERE patient_id = 'OLD1'")
    assert scalar(eng, "SELECT patient_key FROM fact_encounter") == new_key
    assert scalar(eng, "SELECT merged_into FROM dim_patient WHERE patient_key = :k", k=old_key) == new_key


def test_patient_key_is_a_keyed_hash(ingestor, tmp_path):
    write(tmp_path / "1.hl7", adt("K-1", "A01", "20261102080000", pid="123456"))
    ingestor.ingest_file(tmp_path / "1.hl7", "CHU-SO")
    key = scalar(ingestor.engine, "SELECT patient_key FROM dim_patient")
    assert "123456" not in key and len(key) == 32
    unkeyed = hashlib.sha256("CHU-SO\x1fCHU-SO\x1f123456".encode()).hexdigest()[:32]
    assert key != unkeyed
    cols = rows(ingestor.engine, "SELECT * FROM dim_patient")[0]
    assert "123456" not in repr(cols)


def test_sql_injection_payloads_are_stored_as_data(ingestor, tmp_path):
    """Bad input 59."""
    evil = "Robert'); DROP TABLE message_store;--"
    write(tmp_path / "1.hl7", adt("S-1", "A01", "20261102080000", family=evil, pid="=HYPERLINK(\"x\")"))
    ingestor.ingest_file(tmp_path / "1.hl7", "CHU-SO")
    assert scalar(ingestor.engine, "SELECT family_name FROM phi_patient") == evil
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store") == 1


def test_path_tricks_in_file_names_never_become_paths(ingestor, tmp_path, hl7ics_home):
    """Bad input 62: a sender's name is metadata only; the archive name is the content hash."""
    assert sanitize_name("../../etc/passwd") == "passwd"
    assert sanitize_name("C:\\\\windows\\\\CON") == "CON"
    assert "/" not in sanitize_name("a/../../b\x00c.hl7") and "\x00" not in sanitize_name("b\x00c.hl7")
    assert len(sanitize_name("x" * 5000)) <= 200
    f = write(tmp_path / "in" / "file.hl7", adt("P-1", "A01", "20261102080000"))
    r = ingestor.ingest_file(f, "CHU-SO", original_name="../../../etc/cron.d/evil")
    assert scalar(ingestor.engine, "SELECT original_name FROM ingested_file") == "evil"
    dest = Path(ingestor.archive(f, "CHU-SO"))
    assert dest.name == f"{r.sha256}.hl7" and dest.parent == hl7ics_home / "archive" / "CHU-SO"
    assert "source_ref" and scalar(ingestor.engine, "SELECT source_ref FROM message_store").startswith(r.sha256)


def test_partial_uploads_are_not_picked_up(hl7ics_home):
    """Bad input 63: *.tmp is ignored (tmp_rename); stable_size waits until the file stops changing."""
    s = Settings.load()
    facs = {f.code: f for f in s.facilities()}
    so = s.data_dir / "inbound" / "CHU-SO"
    write(so / "upload.hl7.tmp", adt("T-1", "A01", "20261102080000"))
    write(so / "ready.hl7", adt("T-2", "A01", "20261102080000"))
    (so / "link.hl7").symlink_to(so / "ready.hl7")
    assert [Path(p).name for p in discover(s, facs["CHU-SO"])] == ["ready.hl7"]
    sok = s.data_dir / "inbound" / "CHR-SOKODE"
    f = write(sok / "growing.hl7", adt("T-3", "A01", "20261102080000"))
    assert discover(s, facs["CHR-SOKODE"], now=f.stat().st_mtime + 1) == []
    assert discover(s, facs["CHR-SOKODE"], now=f.stat().st_mtime + 60) == [str(f)]


@pytest.mark.parametrize("content,reason", [
    (b"", "EMPTY_FILE"),
    (b"   \r\n\t ", "EMPTY_FILE"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "NOT_HL7_CONTENT"),
    ("MSH|^~\\&|A|CHU-SO|B|C|20261102||ADT^A01|U-1|P|2.5\r".encode("utf-16"), "UNSUPPORTED_FILE_ENCODING"),
], ids=["empty", "whitespace", "pdf", "utf16"])
def test_empty_binary_and_utf16_files_are_quarantined(ingestor, tmp_path, content, reason):
    """Bad input 66."""
    f = tmp_path / "bad.hl7"
    f.write_bytes(content)
    r = ingestor.ingest_file(f, "CHU-SO")
    assert r.status == "quarantined" and r.error == reason
    msgs = rows(ingestor.engine, "SELECT m.status, q.reason FROM message_store m JOIN quarantine q ON q.message_id = m.id")
    if content.strip():
        assert msgs and all(m[0] == "quarantined" for m in msgs) and reason in {m[1] for m in msgs}
        assert b"".join(bytes(x[0]) for x in rows(ingestor.engine, "SELECT raw FROM message_store")) in (content, content.lstrip())
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM fact_encounter") == 0


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_utf16_messages_stay_quarantined_through_a_replay(ingestor, tmp_path, codec):
    """Bad inputs 40 and 66: a UTF-16/32 file without a BOM was held only by the file's sniff, so a
    replay with nothing fixed parsed its stored messages with the NUL bytes removed and loaded
    Ewe names as other letters (Ʋaʋa as ²\x01a‹\x02a). Each message is now refused on its own."""
    from transforms.replay import replay

    f = tmp_path / "u16.hl7"
    f.write_bytes(adt("U-1", "A01", "20261102080000", family="Ʋaʋa").replace("\n", "\r").encode(codec))
    assert ingestor.ingest_file(f, "CHU-SO").status == "quarantined"
    assert replay(ingestor.engine, ingestor.loader).loaded == 0
    assert {s for (s,) in rows(ingestor.engine, "SELECT status FROM message_store")} == {"quarantined"}
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM phi_patient") == 0


def test_zero_padding_after_a_message_is_not_utf16(ingestor, tmp_path):
    """A file written in fixed-size blocks ends in NUL bytes: stray bytes, removed and flagged,
    never the sign of UTF-16 that a NUL between characters is."""
    f = tmp_path / "padded.hl7"
    f.write_bytes(adt("Z-1", "A01", "20261102080000").replace("\n", "\r").encode() + b"\x00" * 300)
    assert ingestor.ingest_file(f, "CHU-SO").counts.loaded == 1
    assert "NUL_BYTES_REMOVED" in scalar(ingestor.engine, "SELECT flags FROM message_store WHERE status = 'loaded'")


def test_batch_count_mismatch_quarantines_the_whole_file(ingestor, tmp_path):
    """Bad input 60: BTS-1 says 3, the batch holds 2: nothing is loaded, nothing is lost."""
    body = ("FHS|^~\\&|SIH|CHU-SO\nBHS|^~\\&|SIH|CHU-SO\n" + adt("B-1", "A01", "20261102080000")
            + adt("B-2", "A01", "20261102090000", visit="V2") + "BTS|3\nFTS|1\n")
    f = write(tmp_path / "batch.hl7", body)
    r = ingestor.ingest_file(f, "CHU-SO")
    assert r.status == "quarantined"
    assert rows(ingestor.engine, "SELECT status FROM message_store") == [("quarantined",), ("quarantined",)]
    assert {x[0] for x in rows(ingestor.engine, "SELECT reason FROM quarantine")} == {"BATCH_COUNT_MISMATCH"}
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM encounter_event") == 0


def test_a_batch_whose_bts_and_fts_both_disagree_names_both_in_quarantine(ingestor, tmp_path):
    """BTS-1 says 3 messages and FTS-1 says 2 batches for a file of one batch of 2: one
    BATCH_COUNT_MISMATCH row per message (the table's key), whose detail names both counts."""
    body = ("FHS|^~\\&|SIH|CHU-SO\nBHS|^~\\&|SIH|CHU-SO\n" + adt("BF-1", "A01", "20261102080000")
            + adt("BF-2", "A01", "20261102090000", visit="V2") + "BTS|3\nFTS|2\n")
    assert ingestor.ingest_file(write(tmp_path / "both.hl7", body), "CHU-SO").status == "quarantined"
    got = rows(ingestor.engine, "SELECT reason, detail FROM quarantine ORDER BY message_id")
    assert [r[0] for r in got] == ["BATCH_COUNT_MISMATCH"] * 2
    assert all("BTS-1 declares 3 messages" in d and "FTS-1 declares 2 batches" in d for _, d in got)


@pytest.mark.parametrize("layout", ["after", "before"])
def test_a_message_outside_the_batches_holds_the_file(ingestor, tmp_path, layout):
    """Bad input 60, "MSH outside a batch": a file with batches and a message beside them (cut, or
    pasted together) is held whole; its counts reconciled, so both messages used to load."""
    inside = "BHS|^~\\&|SIH|CHU-SO\n" + adt("O-1", "A01", "20261102080000") + "BTS|1\n"
    stray = adt("O-2", "A01", "20261102090000", visit="V2")
    body = "FHS|^~\\&|SIH|CHU-SO\n" + (inside + stray if layout == "after" else stray + inside) + "FTS|1\n"
    r = ingestor.ingest_file(write(tmp_path / "mixed.hl7", body), "CHU-SO")
    assert r.status == "quarantined"
    assert rows(ingestor.engine, "SELECT status FROM message_store") == [("quarantined",), ("quarantined",)]
    assert {x[0] for x in rows(ingestor.engine, "SELECT reason FROM quarantine")} == {"BATCH_STRUCTURE"}
    # Junk after FTS (a DOS end-of-file Ctrl-Z) is a fragment of its own, not a message outside
    # the batches: the batch loads.
    whole = write(tmp_path / "eof.hl7", "FHS|^~\\&|SIH|CHU-SO\n" + inside.replace("O-1", "O-4") + "FTS|1\n")
    whole.write_bytes(whole.read_bytes() + b"\x1a")
    assert ingestor.ingest_file(whole, "CHU-SO").counts.loaded == 1
    # A file without BHS/BTS at all is a plain HL7 file (the segments are optional): it loads.
    plain = "FHS|^~\\&|SIH|CHU-SO\n" + adt("O-3", "A01", "20261102100000", visit="V3") + "FTS|0\n"
    assert ingestor.ingest_file(write(tmp_path / "plain.hl7", plain), "CHU-SO").counts.loaded == 1


@pytest.mark.parametrize("lead", [b" ", b"\t\r\n", b"\xef\xbb\xbf \xef\xbb\xbf"], ids=["space", "blank-line", "two-boms"])
def test_a_truncated_batch_behind_leading_whitespace_is_held(ingestor, tmp_path, lead):
    """A batch header whose trailer never arrived (a truncated transfer) holds the file back, also
    when whitespace or BOMs come before the header: the pre-scan for batch segments used to look
    for them only at the very first byte, and the file's messages were loaded."""
    body = ("BHS|^~\\&|SIH|CHU-SO\n" + adt("T-1", "A01", "20261102080000")
            + adt("T-2", "A01", "20261102090000", visit="V2")).encode()
    f = tmp_path / "truncated.hl7"
    f.write_bytes(lead + body)
    r = ingestor.ingest_file(f, "CHU-SO")
    assert r.status == "quarantined"
    assert rows(ingestor.engine, "SELECT status FROM message_store") == [("quarantined",), ("quarantined",)]
    assert {x[0] for x in rows(ingestor.engine, "SELECT reason FROM quarantine")} == {"BATCH_STRUCTURE"}
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM encounter_event") == 0


def test_one_bad_message_in_a_good_batch(ingestor, tmp_path):
    """Bad input 61: the good messages load, the bad one is quarantined with its reason."""
    msgs = [adt(f"G-{i}", "A01", "20261102080000", visit=f"V{i}") for i in range(50)]
    msgs[17] = msgs[17].replace("|G-17|", "||")
    body = "BHS|^~\\&|SIH|CHU-SO\n" + "".join(msgs) + "BTS|50\n"
    ingestor.ingest_file(write(tmp_path / "b.hl7", body), "CHU-SO")
    st = dict(rows(ingestor.engine, "SELECT status, COUNT(*) FROM message_store GROUP BY status"))
    assert st == {"loaded": 49, "quarantined": 1}
    assert rows(ingestor.engine, "SELECT reason FROM quarantine") == [("MISSING_CONTROL_ID",)]


def test_replay_after_a_fix_is_idempotent(ingestor, tmp_path, monkeypatch):
    from transforms import extract
    from transforms.replay import replay

    no_pv1 = adt("R-1", "A04", "20261102080000").split("PV1|")[0]
    write(tmp_path / "1.hl7", no_pv1)
    ingestor.ingest_file(tmp_path / "1.hl7", "CHU-SO")
    eng = ingestor.engine
    assert scalar(eng, "SELECT status FROM message_store") == "quarantined"
    assert replay(eng, ingestor.loader, reason="MISSING_SEGMENT").loaded == 0  # nothing fixed yet
    assert scalar(eng, "SELECT COUNT(*) FROM quarantine WHERE resolved_at IS NULL") == 1
    monkeypatch.setattr(extract, "_ADT_NEEDS_PV1", set())  # "the fix"
    counts = replay(eng, ingestor.loader, reason="MISSING_SEGMENT")
    assert counts.loaded == 1
    assert scalar(eng, "SELECT status FROM message_store") == "loaded"
    assert scalar(eng, "SELECT COUNT(*) FROM quarantine WHERE resolved_at IS NULL") == 0
    before = checksum(eng)
    assert replay(eng, ingestor.loader).messages == 0
    assert checksum(eng) == before


def test_replay_for_a_facility_finds_its_messages_stored_before_it_was_configured(ingestor, tmp_path, monkeypatch):
    """A sender not yet in facilities.yaml has its messages stored under UNKNOWN (MSH-4 kept in
    sending_facility); `hl7ics replay --facility` with its code found none of them."""
    from transforms import extract
    from transforms.replay import replay

    for n, sender in (("1", "NEWFAC"), ("2", "OTHERFAC")):
        no_pv1 = adt(f"U-{n}", "A04", "20261102080000").split("PV1|")[0].replace("CHU-SO", sender)
        ingestor.ingest_file(write(tmp_path / f"{n}.hl7", no_pv1), None)
    eng = ingestor.engine
    assert rows(eng, "SELECT facility_code, sending_facility, status FROM message_store ORDER BY id") == [
        ("UNKNOWN", "NEWFAC", "quarantined"), ("UNKNOWN", "OTHERFAC", "quarantined")]
    monkeypatch.setattr(extract, "_ADT_NEEDS_PV1", set())  # "the fix"
    assert replay(eng, ingestor.loader, facility="CHU-SO").messages == 0
    assert replay(eng, ingestor.loader, facility="NEWFAC").loaded == 1
    assert rows(eng, "SELECT sending_facility, status FROM message_store ORDER BY id") == [
        ("NEWFAC", "loaded"), ("OTHERFAC", "quarantined")]


def test_two_replays_at_once_load_each_message_once(ingestor, tmp_path, monkeypatch):
    """A replay that runs while another is still preparing the same messages: the second one to
    write finds them loaded (it claims in its write transaction) and writes nothing."""
    from transforms import extract
    from transforms.facts import PatientKeyer
    from transforms.load import Loader
    from transforms.replay import replay

    write(tmp_path / "1.hl7", adt("R-1", "A04", "20261102080000").split("PV1|")[0])
    ingestor.ingest_file(tmp_path / "1.hl7", "CHU-SO")
    eng = ingestor.engine
    monkeypatch.setattr(extract, "_ADT_NEEDS_PV1", set())  # "the fix"
    settings = ingestor.settings
    first, other = (Loader(settings.facilities(), PatientKeyer.from_env(settings.home), run_id=r)
                    for r in ("replay-1", "replay-2"))
    real = first.prepare
    seen = {}

    def prepare_while_the_other_replay_runs(items):
        out = real(items)
        first.prepare = real
        seen["other"] = replay(eng, other)
        return out

    monkeypatch.setattr(first, "prepare", prepare_while_the_other_replay_runs)
    assert replay(eng, first).messages == 0
    assert seen["other"].loaded == 1
    assert rows(eng, "SELECT status FROM message_store") == [("loaded",)]
    assert scalar(eng, "SELECT COUNT(*) FROM quarantine WHERE resolved_at IS NULL") == 0


def _hold(engine, control_id: str) -> None:
    """Put a loaded message back in quarantine as the data-quality threshold would have held it."""
    with engine.begin() as c:
        c.execute(text("UPDATE message_store SET status = 'quarantined' WHERE control_id = :c"), {"c": control_id})
        c.execute(text("INSERT INTO quarantine (message_id, stage, reason, detail, created_at) SELECT id, 'dq', "
                       "'DQ_THRESHOLD', 'held', '2026-11-02 08:00:00' FROM message_store WHERE control_id = :c"),
                  {"c": control_id})


def test_replaying_an_older_message_leaves_newer_patient_and_medication_data(ingestor, tmp_path):
    """A message held, then released by a replay after a newer one for the same patient and order
    was loaded: phi_patient kept the newer demographics but dim_patient took the older ones, and
    fact_medication the older quantity."""
    from transforms.replay import replay

    def rde(control, when, qty, sex, dob):
        return (f"MSH|^~\\&|PHA|CHU-SO|HL7ICS|MOH|{when}||RDE^O11|{control}|P|2.5\n"
                f"PID|1||P7^^^CHU-SO^MR||Kodjo^Afi||{dob}|{sex}\n"
                f"ORC|NW|ORD-1|||||||{when}\n"
                f"RXE|^^^20261102|AMOX500^Amoxicillin 500mg^L|{qty}||TAB\n")

    ingestor.ingest_file(write(tmp_path / "1.hl7", rde("M-1", "20261102080000", "10", "F", "19900101")), "CHU-SO")
    ingestor.ingest_file(write(tmp_path / "2.hl7", rde("M-2", "20261102100000", "20", "M", "19850101")), "CHU-SO")
    eng = ingestor.engine
    _hold(eng, "M-1")
    assert replay(eng, ingestor.loader, reason="DQ_THRESHOLD").loaded == 1
    assert rows(eng, "SELECT sex, birth_date FROM phi_patient") == [("M", "1985-01-01")]
    assert rows(eng, "SELECT sex, birth_year FROM dim_patient") == [("M", 1985)]
    assert rows(eng, "SELECT quantity, message_id FROM fact_medication") == [(20.0, 2)]


def test_an_older_medication_message_fills_only_what_is_empty():
    """Writer.upsert(coalesce, newer): the newer row's values stay; an older one fills NULLs."""
    from transforms.warehouse import Writer, get_engine

    import tempfile

    eng = get_engine(f"sqlite:///{tempfile.mkdtemp()}/w.db")
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY, a TEXT, b TEXT, m INTEGER)")
        w = Writer(c)
        up = dict(key=("k",), update=("a", "b", "m"), coalesce=True, newer="m")
        w.upsert("t", ("k", "a", "b", "m"), [("x", "new-a", None, 5)], **up)
        w.upsert("t", ("k", "a", "b", "m"), [("x", "old-a", "old-b", 3)], **up)
        assert c.exec_driver_sql("SELECT a, b, m FROM t").all() == [("new-a", "old-b", 5)]
        w.upsert("t", ("k", "a", "b", "m"), [("x", None, "newer-b", 8)], **up)
        assert c.exec_driver_sql("SELECT a, b, m FROM t").all() == [("new-a", "newer-b", 8)]


def _crash_at_third_chunk(ingestor, tmp_path, monkeypatch, prefix: str) -> Path:
    """A file of 35 messages, committed 10 at a time, whose load dies at its third chunk (20
    committed); the loader works again afterwards. Returns the file."""
    import transforms.ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "BATCH_SIZE", 10)
    monkeypatch.setattr(ingest_mod, "VALIDATION_CHUNK", 10)  # one transaction per batch of 10
    body = "".join(adt(f"{prefix}-{i}", "A01", "20261102080000", visit=f"V{prefix}{i}") for i in range(35))
    f = write(tmp_path / f"{prefix}.hl7", body)
    real = ingestor.loader.write
    calls = {"n": 0}

    def flaky(conn, prepared):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk went away")
        return real(conn, prepared)

    monkeypatch.setattr(ingestor.loader, "write", flaky)
    with pytest.raises(OSError):
        ingestor.ingest_file(f, "CHU-SO")
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store") == 20
    monkeypatch.setattr(ingestor.loader, "write", real)
    return f


def test_crash_mid_file_resumes_without_duplicates(ingestor, tmp_path, monkeypatch):
    f = _crash_at_third_chunk(ingestor, tmp_path, monkeypatch, "X")
    assert ingestor.ingest_file(f, "CHU-SO").status == "done"
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store") == 35
    assert scalar(ingestor.engine, "SELECT COUNT(DISTINCT source_ref) FROM message_store") == 35


def test_a_file_resumed_by_another_run_counts_in_both_runs_summaries(ingestor, tmp_path, monkeypatch):
    """Run 1 commits two chunks of a file and dies; after the lease, run 2 resumes it. Each run's
    summary counts the messages it committed (run 2's were counted in neither), together the
    whole file, and both count the file. Recording a summary again changes nothing."""
    f = _crash_at_third_chunk(ingestor, tmp_path, monkeypatch, "R")
    first = {r["facility"]: r for r in ingestor.record_run(["CHU-SO"])}["CHU-SO"]
    with ingestor.engine.begin() as c:  # the dead worker's lease runs out
        c.execute(text("UPDATE ingested_file SET lease_until = '2000-01-01 00:00:00'"))
    later = Ingestor(ingestor.settings, engine=ingestor.engine, run_id="run-2")
    assert later.ingest_file(f, "CHU-SO").status == "done"
    second = {r["facility"]: r for r in later.record_run(["CHU-SO"])}["CHU-SO"]
    assert (first["files"], first["messages"], first["loaded"]) == (1, 20, 20)
    assert (second["files"], second["messages"], second["loaded"]) == (1, 15, 15)
    assert rows(ingestor.engine, "SELECT run_id, files, messages FROM ingest_run ORDER BY run_id") == [
        (ingestor.run_id, 1, 20), ("run-2", 1, 15)]
    assert later.record_run(["CHU-SO"]) == [{**second, "facility": "CHU-SO"}]


def test_migrations_are_versioned_and_idempotent(warehouse_url):
    from transforms.warehouse import current_version, migrations, upgrade

    eng = get_engine(warehouse_url)
    assert current_version(eng) == max(v for v, _, _ in migrations())
    assert upgrade(eng) == []
    with eng.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM schema_migrations")).scalar() == len(migrations())


def test_text_compares_and_sorts_in_byte_order_on_both_databases(warehouse_url):
    """The warehouse's PostgreSQL databases are created with LC_COLLATE 'C' (PG_DATABASE_OPTIONS):
    text orders as on SQLite, where a linguistic collation would put 'b' before 'C' and 'é' before 'f'."""
    from transforms.warehouse import collation_advice

    eng = get_engine(warehouse_url)
    words = ["facture", "CHU-SO", "Évé", "b", "ɖevi", "éa", "Z", "a-2", "a10"]
    values = " UNION ALL ".join(f"SELECT '{w}' AS w" for w in words)
    with eng.connect() as c:
        got = [r[0] for r in c.execute(text(f"SELECT w FROM ({values}) v ORDER BY w"))]
    assert got == sorted(words, key=lambda w: w.encode("utf-8"))
    assert collation_advice(eng) is None


def test_db_upgrade_says_when_a_postgresql_warehouse_sorts_text_otherwise(pg_server, capsys, monkeypatch):
    """A database created without PG_DATABASE_OPTIONS works; `hl7ics db upgrade` says how to
    move it (a collation is fixed when a database is created)."""
    from tests.conftest import _throwaway_pg
    from transforms.cli import main
    from transforms.warehouse import PG_DATABASE_OPTIONS

    with _throwaway_pg("TEMPLATE template0 LC_COLLATE 'C.UTF-8'") as url:
        monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", url)
        assert main(["db", "upgrade"]) == 0
        out, err = capsys.readouterr()
        assert "schema version" in out
        assert "'C.UTF-8'" in err and PG_DATABASE_OPTIONS in err


def test_an_engine_first_made_without_migrations_is_migrated_when_asked(tmp_path):
    """An alert callback makes its engine without migrations (the database may be down); a
    later get_engine in the same process must still apply them."""
    from transforms.warehouse import current_version, dispose_all, migrations

    url = f"sqlite:///{tmp_path / 'later.db'}"
    dispose_all()
    try:
        bare = get_engine(url, migrate=False)
        with bare.connect() as c:
            assert c.exec_driver_sql("SELECT COUNT(*) FROM sqlite_master WHERE name = 'message_store'").scalar() == 0
        assert get_engine(url) is bare and current_version(bare) == max(v for v, _, _ in migrations())
    finally:
        dispose_all()


def test_two_writers_of_one_message_at_once_load_it_once_on_postgresql(pg_url, hl7ics_home):
    """A file chunk still being written while the real-time loop (or a replay, or another file)
    writes the same message: the second writer waits for the first one's commit and finds its copy
    a duplicate, instead of both reading 'absent' and both loading it."""
    import threading
    import time

    from transforms.facts import PatientKeyer
    from transforms.load import Incoming, Loader

    settings = Settings.load(warehouse_url=pg_url)
    Ingestor(settings, run_id="sync").sync_facilities()
    eng = get_engine(pg_url)
    raw = (b"MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261102080000||ADT^A01|K-1|P|2.5\rEVN|A01|20261102080000\r"
           b"PID|1||P1^^^CHU-SO^MR||Kodjo^Afi||19900101|F\rPV1|1|I|MED||||||||||||||||VK\r")
    loaders = [Loader(settings.facilities(), PatientKeyer.from_env(settings.home), run_id=f"w{i}") for i in (1, 2)]
    prepared = [ld.prepare([Incoming(raw, "folder", f"f{i}:0", "CHU-SO")]) for i, ld in enumerate(loaders)]
    first_written = threading.Event()
    statuses = {}

    def first():
        with eng.begin() as c:
            loaders[0].write(c, prepared[0])
            first_written.set()
            time.sleep(1.5)  # the second writer runs meanwhile

    def second():
        first_written.wait()
        with eng.begin() as c:
            statuses["second"] = loaders[1].write(c, prepared[1])

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rows(eng, "SELECT source_ref, status FROM message_store ORDER BY id") == [("f0:0", "loaded"),
                                                                                     ("f1:0", "duplicate")]
    assert scalar(eng, "SELECT COUNT(*) FROM encounter_event") == 1


def test_query_in_matches_any_text_exactly_and_ids_on_both_databases(warehouse_url):
    """Writer.query_in sends text values to PostgreSQL as one JSON array and other values as an
    array parameter: values that mean something in JSON, in array literals or in SQL, and Ewe
    letters, must match exactly themselves, across chunks."""
    from transforms.warehouse import Writer

    tricky = ['a"b', "a'b", "a\\b", "{x,y}", "NULL", "", "Ɖogbé Ŋɔ", "a\tb", "[1]", "é" * 60, '\\"']
    values = tricky + [f"K-{i}" for i in range(60_000)]
    eng = get_engine(warehouse_url)
    with eng.begin() as c:
        w = Writer(c)
        w.insert("warehouse_setting", ("name", "value", "updated_at"),
                 [(v, "t", "2026-11-02 00:00:00") for v in values[:20]] + [("K-ZZ", "u", "2026-11-02 00:00:00")])
        got = w.query_in("SELECT name FROM warehouse_setting WHERE value = ? AND {match}", "name", values, ["t"])
        assert sorted(r[0] for r in got) == sorted(values[:20])
        assert w.query_in("SELECT name FROM warehouse_setting WHERE {match}", "name", ["K-ZZZ", "Ɖogbe"]) == []
        w.copy("dq_result", ("run_id", "facility_code", "table_name", "expectation", "severity", "evaluated", "failed",
                             "created_at", "updated_at"),
               [("r", "CHU-SO", "t", f"e{i}", "error", i, 0, "2026-11-02 00:00:00", "2026-11-02 00:00:00")
                for i in range(5)])
        assert sorted(r[0] for r in w.query_in("SELECT evaluated FROM dq_result WHERE {match}", "evaluated",
                                                [1, 3, 99])) == [1, 3]


def test_database_errors_do_not_carry_the_values_they_were_given(warehouse_url):
    """A failed statement's exception (what a task log or a failure alert shows) names the SQL but
    not its parameters, which may be a patient's name or ID."""
    from sqlalchemy.exc import IntegrityError

    eng = get_engine(warehouse_url)
    with pytest.raises(IntegrityError) as err:
        with eng.begin() as c:
            for _ in range(2):
                c.execute(text("INSERT INTO phi_patient (patient_key, facility_code, patient_id, family_name) "
                               "VALUES (:k, 'CHU-SO', :p, :n)"), {"k": "k-1", "p": "TG-778899", "n": "Ɖogbé"})
    assert "TG-778899" not in str(err.value) and "Ɖogbé" not in str(err.value)
    assert "hidden due to hide_parameters" in str(err.value)
    # The bulk writers (COPY, staged upserts) talk to the driver directly: the same holds there.
    from transforms.warehouse import Writer

    with pytest.raises(Exception) as err:
        with eng.begin() as c:
            Writer(c).upsert("phi_patient", ("patient_key", "facility_code", "patient_id", "family_name"),
                             [("k-2", "CHU-SO", "TG-778899", "Ɖogbé"), ("k-2", "CHU-SO", "TG-778899", "Ɖogbé")],
                             key=("patient_key",))
    assert type(err.value).__module__.split(".")[0] in ("psycopg", "sqlite3", "sqlalchemy")
    assert "TG-778899" not in str(err.value) and "Ɖogbé" not in str(err.value)
    from transforms.warehouse import safe_db_message

    assert safe_db_message('invalid input syntax for type date: "Kɔfi 1990"') == \
        'invalid input syntax for type date: "…"'
    assert safe_db_message('duplicate key value violates unique constraint "phi_patient_pkey"\n'
                           'DETAIL:  Key (patient_key)=(TG-1) already exists.') == \
        'duplicate key value violates unique constraint "phi_patient_pkey"'


def test_coverage_periods_migration_keeps_the_stored_coverage(warehouse_url, monkeypatch):
    """013 rebuilds fact_coverage with a period key; rows stored before it survive with their
    period (IN1-12, or '' when open-ended), and a renewal then adds a period beside them."""
    from transforms import warehouse

    every = warehouse.migrations()
    monkeypatch.setattr(warehouse, "migrations", lambda: [m for m in every if m[0] < 13])
    eng = get_engine(warehouse_url)
    with eng.begin() as c:
        c.execute(text("INSERT INTO fact_coverage (patient_key, facility_code, insurer_code, member_id, plan_code, "
                       "valid_from, valid_to, message_id, updated_at) VALUES "
                       "('k1', 'CHU-SO', 'INAM', 'M1', 'INAM-AMO', '2026-01-01', '2026-12-31', 7, '2026-11-01 00:00:00'), "
                       "('k2', 'CHU-SO', 'CNSS', 'M2', NULL, NULL, NULL, 8, '2026-11-01 00:00:00')"))
    monkeypatch.setattr(warehouse, "migrations", lambda: every)
    assert warehouse.upgrade(eng) == [v for v, _, _ in every if v >= 13]
    assert rows(eng, "SELECT patient_key, period_start, valid_from, valid_to, plan_code, message_id "
                     "FROM fact_coverage ORDER BY 1") == [
        ("k1", "2026-01-01", "2026-01-01", "2026-12-31", "INAM-AMO", 7), ("k2", "", None, None, None, 8)]
    with eng.begin() as c:
        c.execute(text("INSERT INTO fact_coverage (patient_key, facility_code, insurer_code, member_id, period_start, "
                       "valid_from, message_id, updated_at) VALUES "
                       "('k1', 'CHU-SO', 'INAM', 'M1', '2027-01-01', '2027-01-01', 9, '2027-01-02 00:00:00')"))
    assert scalar(eng, "SELECT COUNT(*) FROM fact_coverage WHERE patient_key = 'k1'") == 2


def test_schema_is_identical_on_sqlite_and_postgresql(sqlite_url, pg_url):
    from sqlalchemy import inspect

    shapes = []
    for url in (sqlite_url, pg_url):
        insp = inspect(get_engine(url))
        shapes.append({t: [c["name"] for c in insp.get_columns(t)] for t in insp.get_table_names()})
    assert shapes[0] == shapes[1]
    for t in TABLES:
        assert t in shapes[0]


def test_cli_ingest_counts_and_exit_codes(tmp_path, hl7ics_home, capsys):
    from transforms.cli import main

    url = f"sqlite:///{tmp_path / 'w.db'}"
    d = tmp_path / "CHU-SO"
    write(d / "a.hl7", adt("CLI-1", "A01", "20261102080000") + adt("", "A01", "20261102080000"))
    (d / "manifest.json").write_text('{"messages": 2}')  # not a message file: skipped, and said so
    # Named like a message file (the drop folders' glob): quarantined with a reason, as the DAG
    # does, not skipped (bad input 66).
    (d / "scan.hl7").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n")
    assert main(["ingest", str(d), "--warehouse", url]) == 0
    out = capsys.readouterr().out
    line = [l for l in out.splitlines() if l.startswith("CHU-SO")][0].split()
    assert line[1:] == ["2", "0", "3", "1", "0", "2"]
    assert "skipped 1 file(s)" in out
    assert {r for (r,) in rows(get_engine(url), "SELECT reason FROM quarantine")} == {
        "MISSING_CONTROL_ID", "MISSING_MSH", "NOT_HL7_CONTENT"}
    assert main(["replay", "--reason", "MISSNG_SEGMENT", "--warehouse", url]) == 0
    assert "open reasons (facility: messages): MISSING_CONTROL_ID (CHU-SO: 1)" in capsys.readouterr().out
    assert main(["ingest", str(tmp_path / "missing"), "--warehouse", url]) == 2
    assert main(["ingest", str(d), "--warehouse", url, "--facility", "NOPE"]) == 2
    bad = tmp_path / "cfg"
    bad.mkdir()
    (bad / "facilities.yaml").write_text("facilities:\n  - code: x\n")
    assert main(["--config", str(bad), "ingest", str(d), "--warehouse", url]) == 2
    assert "facility x: code must be" in capsys.readouterr().err


def test_cli_ingest_leaves_uploads_in_progress_as_the_dag_does(sqlite_url, hl7ics_home, capsys):
    """`hl7ics ingest DIR` on a drop folder applies its partial-upload rule, as the DAG does: a file
    of a stable_size folder changed in the last stable_seconds is left (it took a truncated upload
    and quarantined it), and hidden or .tmp names are left too; the summary says how many."""
    import os

    from transforms.cli import main

    s = Settings.load()
    sok = s.data_dir / "inbound" / "CHR-SOKODE"
    fresh = write(sok / "up.hl7", adt("UP-1", "A01", "20261102080000").replace("CHU-SO", "CHR-SOKODE"))
    write(sok / ".hidden.hl7", adt("UP-2", "A01", "20261102080000"))
    write(sok / "next.hl7.tmp", adt("UP-3", "A01", "20261102080000"))
    (sok / "elsewhere.hl7").symlink_to(write(s.home / "private" / "x.hl7", adt("UP-4", "A01", "20261102080000")))
    write(s.data_dir / "inbound" / ".sync" / "part.hl7", adt("UP-5", "A01", "20261102080000"))  # a hidden folder
    assert main(["ingest", str(s.data_dir / "inbound"), "--warehouse", sqlite_url]) == 0
    assert "left 4 file(s) still being uploaded" in capsys.readouterr().out
    assert rows(get_engine(sqlite_url), "SELECT COUNT(*) FROM message_store") == [(0,)]
    old = fresh.stat().st_mtime - 60  # untouched for longer than stable_seconds (5)
    os.utime(fresh, (old, old))
    assert main(["ingest", str(s.data_dir / "inbound"), "--warehouse", sqlite_url]) == 0
    assert "left 3 file(s)" in capsys.readouterr().out  # the symlink is never taken, nor counted
    assert rows(get_engine(sqlite_url), "SELECT control_id, status FROM message_store") == [("UP-1", "loaded")]


def test_a_loader_with_another_patient_key_is_refused(warehouse_url, hl7ics_home, tmp_path, monkeypatch, capsys):
    """Another HL7ICS_HOME (its own secrets/patient_key) or a forgotten HL7ICS_PATIENT_KEY gave the
    same patient a second patient_key in one warehouse, silently. The warehouse keeps a
    fingerprint of its key, and a load with another key is refused as a configuration error."""
    from transforms.cli import main

    first = write(tmp_path / "CHU-SO" / "a.hl7", adt("K-1", "A01", "20261102080000"))
    second = write(tmp_path / "CHU-SO" / "b.hl7", adt("K-2", "A01", "20261103080000", visit="V2"))
    monkeypatch.setenv("HL7ICS_PATIENT_KEY", "aa" * 32)
    assert main(["ingest", str(first), "--warehouse", warehouse_url]) == 0
    monkeypatch.delenv("HL7ICS_PATIENT_KEY")  # the key from HL7ICS_HOME/secrets: another one
    assert main(["ingest", str(second), "--warehouse", warehouse_url]) == 2
    err = capsys.readouterr().err
    assert "patient key is not the one this warehouse was loaded with" in err and "aa" * 8 not in err
    assert rows(get_engine(warehouse_url), "SELECT control_id FROM message_store") == [("K-1",)]
    monkeypatch.setenv("HL7ICS_PATIENT_KEY", "aa" * 32)
    assert main(["ingest", str(second), "--warehouse", warehouse_url]) == 0
    assert rows(get_engine(warehouse_url), "SELECT COUNT(DISTINCT patient_key), COUNT(*) FROM fact_encounter") == [
        (1, 2)]


def test_a_warehouse_loaded_before_the_key_fingerprint_asks_its_patients(ingestor, tmp_path):
    """A warehouse loaded before migration 022 has no fingerprint: the first loader used to make
    its own key the warehouse's, even a new random one (a shell without HL7ICS_PATIENT_KEY). The
    stored patients now decide: every stored key must be what this loader's key gives."""
    from transforms.facts import PatientKeyer
    from transforms.load import Loader

    manifest = generator.generate(tmp_path / "gen", [f.as_dict() for f in ingestor.facilities.values()], days=1,
                                  seed=5, per_day=200, broken_share=0.0)
    for f in sorted((tmp_path / "gen" / "inbound").rglob("*.hl7")):
        ingestor.ingest_file(f, f.parent.name)
    assert manifest["messages"] and scalar(ingestor.engine, "SELECT COUNT(*) FROM phi_patient") > 20
    with ingestor.engine.begin() as c:
        c.execute(text("DELETE FROM warehouse_setting"))  # as before migration 022
    other = Loader(ingestor.facilities.values(), PatientKeyer(b"another key, not the warehouse's"))
    with pytest.raises(ConfigError, match="not the one this warehouse was loaded with"):
        with ingestor.engine.begin() as c:
            other.check_key(c)
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM warehouse_setting") == 0
    same = Loader(ingestor.facilities.values(), PatientKeyer.from_env(ingestor.settings.home))
    with ingestor.engine.begin() as c:
        same.check_key(c)
    assert scalar(ingestor.engine, "SELECT value FROM warehouse_setting") == same.keyer.fingerprint
    assert scalar(ingestor.engine, "SELECT detail FROM audit_event WHERE event_type = 'phi_read'") == \
        "phi_patient: patient key check: 20 rows"  # the IDs were read (never shown): audited
    # A warehouse already split by a load under another key: no key is "the" key; say so.
    with ingestor.engine.begin() as c:
        c.execute(text("DELETE FROM warehouse_setting"))
        c.execute(text("INSERT INTO phi_patient (patient_key, facility_code, patient_id, updated_at) "
                       "VALUES ('00000000000000000000000000000000', 'CHU-SO', 'P-OTHER', '2026-11-02 08:00:00')"))
    again = Loader(ingestor.facilities.values(), PatientKeyer.from_env(ingestor.settings.home))
    with pytest.raises(ConfigError, match="more than one patient key"):
        with ingestor.engine.begin() as c:
            again.check_key(c)


def test_a_replay_for_another_reason_leaves_a_kept_hold_as_it_was(ingestor, tmp_path):
    """A message held for a parse error and refused by the listener (an EXPLICIT_ONLY hold), then
    replayed for the parse error: the listener's row used to be resolved and replaced by a
    parse-stage copy with a generic detail (and a batch hold lost its detail). The hold stays as it
    was, and a second replay changes nothing."""
    from transforms.replay import replay

    msg = adt("KH-1", "A01", "20261102080000").replace("P1^^^CHU-SO^MR", "")
    ingestor.ingest_file(write(tmp_path / "q.hl7", msg), "CHU-SO")
    ((mid, reason),) = rows(ingestor.engine, "SELECT message_id, reason FROM quarantine")
    with ingestor.engine.begin() as c:
        c.execute(text("INSERT INTO quarantine (message_id, stage, reason, detail, created_at) VALUES (:m, "
                       "'listener', 'PROCESSING_ID_REFUSED', 'MSH-11: refused by the listener', "
                       "'2026-11-02 08:00:00')"), {"m": mid})
    held = "SELECT stage, reason, detail, resolved_at IS NULL FROM quarantine WHERE reason <> :r ORDER BY id"
    before = rows(ingestor.engine, held, r=reason)
    assert replay(ingestor.engine, ingestor.loader, reason=reason).quarantined == 1
    assert rows(ingestor.engine, held, r=reason) == before == [
        ("listener", "PROCESSING_ID_REFUSED", "MSH-11: refused by the listener", 1)]
    snapshot = rows(ingestor.engine, "SELECT status, error, flags, updated_at FROM message_store")
    everything = rows(ingestor.engine, "SELECT stage, reason, detail, resolved_at FROM quarantine ORDER BY id")
    replay(ingestor.engine, ingestor.loader, reason=reason)
    assert rows(ingestor.engine, "SELECT status, error, flags, updated_at FROM message_store") == snapshot
    assert rows(ingestor.engine, "SELECT stage, reason, detail, resolved_at FROM quarantine ORDER BY id") == everything


def test_cli_ingest_never_prints_the_warehouse_password(tmp_path, hl7ics_home, pg_url, capsys):
    """The warehouse URL may carry a password (this PostgreSQL trusts any): the summary shows the
    URL with the password masked."""
    from transforms.cli import main

    url = pg_url.replace("postgres@", "postgres:s3cret-Pw@")
    d = tmp_path / "CHU-SO"
    write(d / "a.hl7", adt("PW-1", "A01", "20261102080000"))
    assert main(["ingest", str(d), "--warehouse", url]) == 0
    out = capsys.readouterr()
    assert "s3cret-Pw" not in out.out + out.err
    assert "warehouse: postgresql+psycopg://postgres:***@127.0.0.1:5432/" in out.out


def test_archive_files_are_not_extracted(ingestor, tmp_path):
    """Bad input 65: archives are never unpacked; a zip named .hl7 is quarantined whole."""
    import zipfile

    z = tmp_path / "bomb.hl7"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("../../etc/evil.hl7", "MSH|^~\\&|A|CHU-SO|B|C|20261102||ADT^A01|Z-1|P|2.5\r" * 1000)
    r = ingestor.ingest_file(z, "CHU-SO")
    assert r.status == "quarantined"
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store WHERE status = 'loaded'") == 0
    assert not (tmp_path.parent / "etc").exists()


def test_sources_are_pluggable():
    from transforms.sources import SOURCE_TYPES, FolderSource, sources_for

    assert SOURCE_TYPES["folder"] is FolderSource
    s = Settings.load()
    fac = {f.code: f for f in s.facilities()}["CHU-SO"]
    (src,) = sources_for(s, fac)
    assert src.type == "folder" and src.folder == s.data_dir / "inbound" / "CHU-SO"


# ---------------------------------------------------------------------------------------------
# Regressions found in review


def dft(control, amount="5000&XOF", extra_ft1="", pid="D1"):
    ft1 = ["FT1", "1", "T1", "", "20261102090000", "", "CG", "CONS^Consultation^L", "", "", "1", amount, amount]
    return (f"MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261102090000||DFT^P03|{control}|P|2.5\n"
            f"EVN|P03|20261102090000\nPID|1||{pid}^^^CHU-SO^MR||Kodjo^Afi||19900101|F\n"
            f"PV1|1|O|OPD||||||||||||||||VD1\n" + "|".join(ft1) + extra_ft1 + "\n")


def test_same_message_with_other_line_endings_is_a_duplicate(ingestor, tmp_path):
    a = tmp_path / "a.hl7"
    a.write_bytes(dft("DUP-1").strip("\n").replace("\n", "\r").encode())  # no final terminator
    b = write(tmp_path / "b.hl7", dft("DUP-1"), terminator="\r\n")
    ingestor.ingest_file(a, "CHU-SO")
    ingestor.ingest_file(b, "CHU-SO")
    assert [r[0] for r in rows(ingestor.engine, "SELECT status FROM message_store ORDER BY id")] == ["loaded", "duplicate"]
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM fact_charge") == 1


def test_content_hash_ignores_only_the_framing():
    """Leading whitespace and BOMs, the final terminator and CR/LF/CRLF do not change what a
    message is; any other byte does."""
    from transforms.load import content_sha256, message_hashes

    body = dft("H-1").strip("\n").replace("\n", "\r").encode()
    same = [body, body + b"\r", body + b"\r\n\r\n", body.replace(b"\r", b"\n") + b"\n",
            body.replace(b"\r", b"\r\n"), b"\xef\xbb\xbf" + body, b" \r\n\xef\xbb\xbf\xef\xbb\xbf\n" + body + b"\r"]
    assert {content_sha256(v) for v in same} == {hashlib.sha256(body).hexdigest()}
    other = [body.replace(b"Kodjo", b"Kodjo "), b"X" + body, body.replace(b"\r", b"\r\r", 1)]
    assert hashlib.sha256(body).hexdigest() not in {content_sha256(v) for v in other}
    # The loader's one-pass pair is the same two hashes, whichever way the framing goes.
    for v in same + other + [b"", b"\r\n", body + b" \t"]:
        assert message_hashes(v) == (hashlib.sha256(v).hexdigest(), content_sha256(v))


def test_adt_event_without_any_time_loads_and_orders_by_arrival(ingestor, tmp_path):
    write(tmp_path / "1.hl7", adt("NT-1", "A01", "20261102080000"))
    no_time = adt("NT-2", "A11", "").replace("EVN|A11|\n", "EVN|A11\n")
    write(tmp_path / "2.hl7", no_time)
    for f in sorted(tmp_path.glob("*.hl7")):
        ingestor.ingest_file(f, "CHU-SO")
    assert rows(ingestor.engine, "SELECT status FROM message_store ORDER BY id") == [("loaded",), ("loaded",)]
    assert scalar(ingestor.engine, "SELECT cancelled FROM fact_encounter") == 1


def test_nul_escapes_and_absurd_amounts_do_not_block_a_file(ingestor, tmp_path):
    body = adt("NUL-1", "A01", "20261102080000", family="KOFFI\\X00\\") + dft("BIG-1", amount="1E15")
    ingestor.ingest_file(write(tmp_path / "x.hl7", body), "CHU-SO")
    # Two patients: the ADT's (NUL escape dropped) and the DFT's.
    assert sorted(r[0] for r in rows(ingestor.engine, "SELECT family_name FROM phi_patient")) == ["KOFFI", "Kodjo"]
    assert rows(ingestor.engine, "SELECT status FROM message_store") == [("loaded",), ("loaded",)]
    assert scalar(ingestor.engine, "SELECT amount FROM fact_charge") is None


def test_xof_amounts_with_thousands_separators_and_transaction_type(ingestor, tmp_path):
    ingestor.ingest_file(write(tmp_path / "x.hl7", dft("XOF-1", amount="12,500&XOF")), "CHU-SO")
    assert rows(ingestor.engine, "SELECT amount, currency, transaction_type FROM fact_charge") == [(12500, "XOF", "CG")]


def test_replay_of_a_held_batch_does_not_load_a_message_twice(ingestor, tmp_path):
    from transforms.replay import replay

    held = "BHS|^~\\&|SIH|CHU-SO\n" + dft("H-1") + "BTS|2\n"
    ingestor.ingest_file(write(tmp_path / "held.hl7", held), "CHU-SO")
    ingestor.ingest_file(write(tmp_path / "resent.hl7", dft("H-1")), "CHU-SO")
    replay(ingestor.engine, ingestor.loader, reason="BATCH_COUNT_MISMATCH")
    assert sorted(r[0] for r in rows(ingestor.engine, "SELECT status FROM message_store")) == ["duplicate", "loaded"]
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM fact_charge") == 1


def test_replay_for_another_reason_keeps_the_batch_hold(ingestor, tmp_path):
    from transforms.replay import replay

    bad_dob = adt("HB-1", "A01", "20261102080000").replace("19900101", "19901340")
    ingestor.ingest_file(write(tmp_path / "held.hl7", "BHS|^~\\&|SIH|CHU-SO\n" + bad_dob + "BTS|5\n"), "CHU-SO")
    replay(ingestor.engine, ingestor.loader, reason="INVALID_DATE")
    open_reasons = {r[0] for r in rows(ingestor.engine, "SELECT reason FROM quarantine WHERE resolved_at IS NULL")}
    assert "BATCH_COUNT_MISMATCH" in open_reasons
    assert scalar(ingestor.engine, "SELECT status FROM message_store") == "quarantined"


def store_received(engine, raw: bytes, control_id: str, facility: str = "CHU-SO") -> int:
    """A row as the MLLP listener stores it: committed, ``received``, waiting for the real-time loop."""
    from transforms.load import MS_COLUMNS, content_sha256
    from transforms.warehouse import Writer

    row = dict.fromkeys(MS_COLUMNS)
    row.update(received_at="2026-11-02 08:00:01", source="mllp", source_ref=f"mllp:test:{control_id}",
               sha256=hashlib.sha256(raw).hexdigest(), content_sha256=content_sha256(raw), raw=raw,
               size_bytes=len(raw), status="received", updated_at="2026-11-02 08:00:01", facility_code=facility,
               sending_facility=facility, control_id=control_id)
    with engine.begin() as conn:
        w = Writer(conn)
        row["id"] = w.allocate_ids("message_store", 1)[0]
        w.copy("message_store", MS_COLUMNS, [tuple(row[c] for c in MS_COLUMNS)], binary=True)
    return row["id"]


def test_a_message_from_the_listener_and_a_file_is_loaded_once(ingestor, tmp_path):
    """The listener stored a message (``received``, waiting for the real-time loop) and the same
    bytes then came in a file: the file's copy is its duplicate, and the listener's row must still
    load. A ``duplicate`` row used to count as an earlier copy, so both ended ``duplicate`` and the
    message never reached the warehouse."""
    from transforms.realtime import process_received

    raw = adt("L-1", "A01", "20261102080000", visit="VL").strip("\n").replace("\n", "\r").encode() + b"\r"
    store_received(ingestor.engine, raw, "L-1")
    f = tmp_path / "same.hl7"
    f.write_bytes(raw)
    assert ingestor.ingest_file(f, "CHU-SO").counts.duplicates == 1
    assert process_received(ingestor.engine, ingestor.loader).loaded == 1
    assert rows(ingestor.engine, "SELECT source, status FROM message_store ORDER BY id") == [
        ("mllp", "loaded"), ("folder", "duplicate")]
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM encounter_event") == 1


def test_a_real_time_message_from_an_unconfigured_sender_is_unknown_in_every_table(ingestor):
    """The listener stores MSH-4 as it came; a code that is not configured loads as UNKNOWN in
    message_store and in the facts alike (it was NEWFAC in one and UNKNOWN in the other)."""
    from transforms.realtime import process_received

    raw = adt("N-1", "A01", "20261102080000", visit="VN").replace("CHU-SO", "NEWFAC").replace("\n", "\r").encode()
    store_received(ingestor.engine, raw, "N-1", facility="NEWFAC")
    assert process_received(ingestor.engine, ingestor.loader).loaded == 1
    assert rows(ingestor.engine, "SELECT facility_code, sending_facility FROM message_store") == [("UNKNOWN", "NEWFAC")]
    assert rows(ingestor.engine, "SELECT facility_code FROM encounter_event") == [("UNKNOWN",)]
    assert rows(ingestor.engine, "SELECT facility_code FROM fact_encounter") == [("UNKNOWN",)]


def test_two_real_time_loops_at_once_write_each_message_once(ingestor, tmp_path):
    """A stalled real-time task and its retry can run together. The second loop here runs whole
    while the first is between reading its rows and writing them: the first must then write
    nothing, instead of loading the messages a second time (or failing its whole batch on a
    result's primary key)."""
    from transforms.facts import PatientKeyer
    from transforms.load import Loader
    from transforms.realtime import process_received

    oru = ("MSH|^~\\&|LAB|CHU-SO|HL7ICS|MOH|20261102080000||ORU^R01|R-1|P|2.5\r"
           "PID|1||P1^^^CHU-SO^MR||Kodjo^Ama||19900101|F\r"
           "OBR|1|PL-1|FL-1|718-7^Hemoglobin^LN\r"
           "OBX|1|NM|718-7^Hemoglobin^LN||12.5|g/dL|12-16|N|||F|||20261102075000\r").encode()
    store_received(ingestor.engine, oru, "R-1")
    store_received(ingestor.engine, adt("L-2", "A01", "20261102080000", visit="VL2").replace("\n", "\r").encode(),
                   "L-2")
    other = Loader(ingestor.facilities.values(), PatientKeyer.from_env(ingestor.settings.home))
    first = ingestor.loader
    read_and_parsed = first.prepare

    def prepare_while_the_other_loop_runs(items):
        out = read_and_parsed(items)
        first.prepare = read_and_parsed
        assert process_received(ingestor.engine, other).loaded == 2
        return out

    first.prepare = prepare_while_the_other_loop_runs
    assert process_received(ingestor.engine, first).messages == 0
    assert rows(ingestor.engine, "SELECT status FROM message_store ORDER BY id") == [("loaded",), ("loaded",)]
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM fact_lab_result") == 1
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM encounter_event") == 1


def test_leases_are_renewed_file_by_file(ingestor, tmp_path, monkeypatch):
    """A run of small files (none fills a batch) keeps its leases on the files still waiting, so
    another run cannot take them while this one works."""
    import time

    import transforms.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "LEASE_SECONDS", 3)  # renewed after a third: 1 s
    files = [write(tmp_path / f"f{i}.hl7", adt(f"LS-{i}", "A01", "20261102080000", visit=f"VL{i}")) for i in range(3)]
    until = []
    real = ingestor.loader.prepare

    def slow(items):
        time.sleep(1.1)  # each file takes longer than a third of the lease
        until.append(scalar(ingestor.engine, "SELECT MIN(lease_until) FROM ingested_file WHERE status = 'processing'"))
        return real(items)

    monkeypatch.setattr(ingestor.loader, "prepare", slow)
    assert [r.status for r in ingestor.ingest_files([(f, "CHU-SO") for f in files])] == ["done"] * 3
    assert until[-1] > until[0]


def test_manual_runs_started_together_do_not_share_a_lease_owner(warehouse_url, hl7ics_home):
    """Two `hl7ics ingest` runs started in the same second: each must hold its own leases."""
    settings = Settings.load(warehouse_url=warehouse_url)
    first, second = Ingestor(settings), Ingestor(settings)
    assert first.lease_owner != second.lease_owner
    assert first.run_id.startswith("manual__")


def test_a_file_leased_by_another_worker_is_left_alone(ingestor, tmp_path):
    from transforms.ingest import Ingestor

    f = write(tmp_path / "x.hl7", adt("LS-1", "A01", "20261102080000"))
    with ingestor.engine.begin() as c:
        c.execute(text("INSERT INTO ingested_file (sha256, facility_code, source, original_name, size_bytes, status, "
                       "first_seen_at, lease_owner, lease_until) VALUES (:s, 'CHU-SO', 'folder', 'x', 1, 'processing', "
                       "'2026-01-01 00:00:00', 'other-run/CHU-SO', '2999-01-01 00:00:00')"),
                  {"s": hashlib.sha256(f.read_bytes()).hexdigest()})
    assert ingestor.ingest_file(f, "CHU-SO").status == "busy"
    assert scalar(ingestor.engine, "SELECT COUNT(*) FROM message_store") == 0
    # The same run's task for another facility (a file dropped in two facilities' folders) waits
    # too: both loading it failed on the message_store key.
    other = Ingestor(ingestor.settings, engine=ingestor.engine, run_id="other-run")
    assert other.ingest_file(write(tmp_path / "copy" / "x.hl7", f.read_text()), "CHU-KARA").status == "busy"
    assert other.ingest_file(f, "CHU-SO").status == "done"  # a retry of the lease holder resumes
    assert other.ingest_file(tmp_path / "copy" / "x.hl7", "CHU-KARA").status == "duplicate_file"


def test_a_facility_configured_without_a_charset_loads(ingestor, tmp_path):
    """facilities.yaml lets a facility leave out its charset (UTF-8, falling back to CP1252), but
    dim_facility.charset is NOT NULL: every sync, so every ingest, failed on an IntegrityError."""
    import dataclasses

    ingestor.facilities["CHU-SO"] = dataclasses.replace(ingestor.facilities["CHU-SO"], charset=None)
    ingestor.sync_facilities()
    assert rows(ingestor.engine, "SELECT charset FROM dim_facility WHERE facility_code = 'CHU-SO'") == [("utf-8",)]
    f = write(tmp_path / "CHU-SO" / "a.hl7", adt("NC-1", "A01", "20261102080000", family="Ʋaʋa"))
    assert ingestor.ingest_file(f, "CHU-SO").counts.loaded == 1
    assert rows(ingestor.engine, "SELECT family_name FROM phi_patient") == [("Ʋaʋa",)]


def test_latin1_names_at_a_utf8_facility_are_not_mangled(ingestor, tmp_path):
    f = tmp_path / "l.hl7"
    f.write_bytes(adt("L1-1", "A01", "20261102080000", family="HOUÉTO").replace("\n", "\r").encode("latin-1"))
    ingestor.ingest_file(f, "CHU-SO")  # CHU-SO's configured default is UTF-8
    assert scalar(ingestor.engine, "SELECT family_name FROM phi_patient") == "HOUÉTO"
    assert "CHARSET_INFERRED" in scalar(ingestor.engine, "SELECT flags FROM message_store")


def test_event_time_with_a_precision_component():
    """EVN-2 as a 2.3-2.5 TS with its degree of precision (20261102093000^S): the event time is
    the first component; it used to be refused, and MSH-7 taken instead."""
    from transforms.extract import to_record
    from transforms.facts import COLUMNS, PatientKeyer, extract_facts
    from transforms.parser import parse

    raw = adt("EV-1", "A01", "20261102120000").replace("EVN|A01|20261102120000", "EVN|A01|20261102093000^S")
    msg = parse(raw.replace("\n", "\r").encode())
    facts = extract_facts(msg, to_record(msg), "CHU-SO", "Africa/Lome", 1, PatientKeyer(b"k" * 32),
                          "2026-12-01 00:00:00")
    [ev] = facts["encounter_event"]
    assert ev[COLUMNS["encounter_event"].index("event_at")] == "2026-11-02 09:30:00"


def test_results_keep_the_placer_number_of_their_order(ingestor, tmp_path):
    oru = ("MSH|^~\\&|LAB|CHU-SO|HL7ICS|MOH|20261102100000||ORU^R01|PL-1|P|2.5\nPID|1||P1^^^CHU-SO^MR||Kodjo^Afi\n"
           "ORC|RE|PLAC1|FILL1\nOBR|1||FILL1|718-7^Hb^LN\nOBX|1|NM|718-7^Hb^LN||12|g/dL|||||F\n")
    ingestor.ingest_file(write(tmp_path / "o.hl7", oru), "CHU-SO")
    assert scalar(ingestor.engine, "SELECT placer_order_number FROM fact_lab_result") == "PLAC1"


def test_merge_moves_every_fact_of_the_retired_patient(ingestor, tmp_path):
    vxu = ("MSH|^~\\&|EPI|CHU-SO|HL7ICS|MOH|20261102100000||VXU^V04|VX-1|P|2.5\nPID|1||OLD9^^^CHU-SO^MR||Kodjo^Afi\n"
           "ORC|RE\nRXA|0|1|20261102100000||19^BCG^CVX|0.05|mL\n"
           "RXA|0|2|20261102100000||37^Yellow fever^CVX|0.5|mL|||||||||||||RE\n")
    merge = ("MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261103080000||ADT^A40^ADT_A39|MG-1|P|2.5\n"
             "EVN|A40|20261103080000\nPID|1||NEW9^^^CHU-SO^MR||Kodjo^Afi\nMRG|OLD9^^^CHU-SO^MR\n")
    ingestor.ingest_file(write(tmp_path / "m.hl7", vxu + dft("MG-0", pid="OLD9") + merge), "CHU-SO")
    new_key = scalar(ingestor.engine, "SELECT patient_key FROM phi_patient WHERE patient_id = 'NEW9'")
    assert rows(ingestor.engine, "SELECT vaccine_code, patient_key FROM fact_immunization") == [("19", new_key)]
    assert rows(ingestor.engine, "SELECT DISTINCT patient_key FROM fact_charge") == [(new_key,)]


def test_dim_facility_updated_at_moves_only_when_the_configuration_changes(ingestor, monkeypatch):
    """dim_facility.updated_at said when a facility was first recorded: a later change of its name
    or district in facilities.yaml left it, and a statistician could not tell the row had changed."""
    import dataclasses

    from transforms import ingest

    def stamp():
        return rows(ingestor.engine, "SELECT facility_code, updated_at FROM dim_facility ORDER BY 1")

    first = stamp()
    monkeypatch.setattr(ingest, "utcnow", lambda: "2031-01-01 00:00:00")
    ingestor.sync_facilities()
    assert stamp() == first  # nothing changed: nothing moves
    ingestor.facilities["CHU-SO"] = dataclasses.replace(ingestor.facilities["CHU-SO"], district="Tchaoudjo Nord")
    ingestor.sync_facilities()
    after = dict(stamp())
    assert str(after.pop("CHU-SO")).startswith("2031-01-01") and after == {k: v for k, v in first if k != "CHU-SO"}
    assert rows(ingestor.engine, "SELECT district FROM dim_facility WHERE facility_code = 'CHU-SO'") == [
        ("Tchaoudjo Nord",)]


@pytest.mark.parametrize("secret", [b"k" * 16, b"0123456789abcdef" * 2, b"x" * 64, b"y" * 65, bytes(range(100))])
def test_patient_key_is_the_keyed_hmac_sha256_of_facility_authority_and_id(secret):
    """docs/warehouse.md defines patient_key as HMAC-SHA256 (first 32 hex digits) of facility,
    assigning authority and ID joined by U+001F; the keyer's precomputed HMAC must give exactly
    that, for keys shorter and longer than SHA-256's 64-byte block, and non-ASCII IDs."""
    import hashlib
    import hmac

    from transforms.facts import PatientKeyer

    keyer = PatientKeyer(secret)
    for facility, authority, pid in [("CHU-SO", "TGO-MOH", "12345"), ("CHU-KARA", None, "Ɖɔ-ŋ7"), ("X", "", "")]:
        msg = "\x1f".join((facility, authority or "", pid)).encode("utf-8")
        expected = hmac.new(secret, msg, hashlib.sha256).hexdigest()[:32]
        assert keyer.key(facility, authority, pid) == expected
        assert keyer.key(facility, authority, pid) == expected  # from the cache too
    # Warehouses keep the fingerprint (warehouse_setting): it must not change with the code.
    assert keyer.fingerprint == hmac.new(secret, b"hl7ics patient key check", hashlib.sha256).hexdigest()[:32]
