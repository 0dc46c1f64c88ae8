"""Patient data never reaches logs, alerts or error texts (security checklist G13: a PHI canary).

Messages carry canary values in every patient field (names, identifiers, phone, address, birth
date, member number) and are sent down the paths that log and record problems: good and broken
messages in files (bad dates, damaged identifiers, unknown senders, data-quality failures, a batch
whose count is wrong, UTF-16), a replay, the MLLP listener (accepted and refused messages) and its
real-time loop. Everything logged at DEBUG, the listener's own log, and every text the warehouse
keeps about problems (quarantine details, message errors and flags, alerts, run summaries) must be
free of the canaries.
"""
from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from transforms.config import Settings
from transforms.ingest import Ingestor
from transforms.replay import replay
from transforms.warehouse import get_engine

CANARIES = ("CANARYFAM", "CANARYGIV", "CANARYID77", "22899123987", "CANARYSTREET", "CANARYMEMBER", "CANARYMOTHER")


def adt(control: str, *, facility: str = "CHU-SO", dob: str = "19900101", sex: str = "F", pid3: str = "CANARYID77",
        processing: str = "P", event: str = "A01", pv1: bool = True) -> str:
    return (f"MSH|^~\\&|SIH|{facility}|HL7ICS|MOH|20261102080000||ADT^{event}|{control}|{processing}|2.5\r"
            f"EVN|{event}|20261102080000\r"
            f"PID|1||{pid3}^^^{facility}^MR||CANARYFAM^CANARYGIV||{dob}|{sex}|||CANARYSTREET^^Lomé^Golfe^^TG||"
            f"+22899123987|||||||||||||||||CANARYMOTHER\r"
            + ("PV1|1|I|MED||||||||||||||||V-" + control + "\r" if pv1 else "")
            + "IN1|1|AMO|GTA-C2A|GTA||||||||20260101|20261231||||||||||||||||||||||||||||||||||||CANARYMEMBER\r")


def _messages() -> dict[str, bytes]:
    return {
        "good.hl7": adt("G-1").encode(),
        "bad_date.hl7": adt("D-1", dob="19901399").encode(),
        "bad_sex.hl7": adt("S-1", sex="Q").encode(),
        "no_pv1.hl7": adt("P-1", event="A04", pv1=False).encode(),
        "unknown_sender.hl7": adt("U-1", facility="CLINIQUE-X").encode(),
        "damaged_id.hl7": adt("X-1").encode().replace(b"CANARYID77", b"CANARY\xffID77"),
        "no_msh.hl7": adt("M-1").split("\r", 1)[1].encode(),
        "batch.hl7": ("BHS|^~\\&|SIH|CHU-SO\r" + adt("B-1") + "BTS|7\r").encode(),
        "utf16.hl7": adt("W-1").encode("utf-16"),
    }


def _texts(engine) -> list[str]:
    queries = ["SELECT detail FROM quarantine", "SELECT error FROM message_store", "SELECT flags FROM message_store",
               "SELECT message FROM ops_alert", "SELECT original_name FROM ingested_file",
               "SELECT error FROM ingested_file", "SELECT alert_key FROM alert_state"]
    out = []
    with engine.connect() as c:
        for q in queries:
            out += [str(r[0]) for r in c.execute(text(q)) if r[0] is not None]
    return out


def _assert_clean(where: str, texts) -> None:
    for t in texts:
        for canary in CANARIES:
            assert canary not in t, f"{where}: a patient value reached {t[:200]!r}"


def test_files_and_replay_log_no_patient_data(warehouse_url, hl7ics_home, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    settings = Settings.load(warehouse_url=warehouse_url)
    ing = Ingestor(settings, run_id="run-canary")
    ing.sync_facilities()
    folder = tmp_path / "CHU-SO"
    folder.mkdir()
    for name, raw in _messages().items():
        (folder / name).write_bytes(raw)
    results = ing.ingest_files([(p, "CHU-SO") for p in sorted(folder.iterdir())])
    assert sum(r.counts.loaded for r in results) >= 2 and sum(r.counts.quarantined for r in results) >= 5
    ing.record_run(["CHU-SO"])
    replay(ing.engine, ing.loader)
    replay(ing.engine, ing.loader, reason="BATCH_COUNT_MISMATCH")
    captured = capsys.readouterr()
    _assert_clean("the log", [caplog.text, captured.out, captured.err])
    _assert_clean("the warehouse's problem texts", _texts(ing.engine))


def test_listener_and_real_time_loop_log_no_patient_data(tmp_path, sqlite_url, hl7ics_home, caplog):
    from listener_support import ListenerProcess, exchange
    from transforms.facts import PatientKeyer
    from transforms.load import Loader
    from transforms.realtime import process_received

    caplog.set_level(logging.DEBUG)
    lp = ListenerProcess(tmp_path, sqlite_url).start()
    try:
        for raw in (adt("L-1"), adt("L-2", processing="T"), adt("L-3", dob="19901399"), adt("L-4", sex="Q"),
                    adt("L-5", facility="CLINIQUE-X")):
            exchange(lp.port, raw.encode())
    finally:
        lp.kill()
    settings = Settings.load(warehouse_url=sqlite_url)
    Ingestor(settings, run_id="sync").sync_facilities()
    loader = Loader(settings.facilities(), PatientKeyer.from_env(settings.home), run_id="rt")
    assert process_received(get_engine(sqlite_url), loader).messages >= 3
    _assert_clean("the listener's log", [lp.log.read_text(encoding="utf-8", errors="replace")])
    _assert_clean("the log", [caplog.text])
    _assert_clean("the warehouse's problem texts", _texts(get_engine(sqlite_url)))


@pytest.mark.parametrize("command", [["ingest"], ["replay"]])
def test_cli_messages_carry_no_patient_data(command, sqlite_url, hl7ics_home, tmp_path, capsys, caplog):
    from transforms.cli import main

    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, raw in _messages().items():
        (folder / name).write_bytes(raw)
    main(["ingest", str(folder), "--warehouse", sqlite_url, "--facility", "CHU-SO"])
    if command == ["replay"]:
        main(["replay", "--warehouse", sqlite_url])
    captured = capsys.readouterr()
    _assert_clean("the command's output", [captured.out, captured.err, caplog.text])
