"""``hl7ics parse``: NDJSON out, exit 1 when any message has errors, never a traceback."""
from __future__ import annotations

import json

import pytest
import subprocess
import sys
from pathlib import Path

FIX = Path(__file__).parent / "fixtures"


def run(*args):
    return subprocess.run([sys.executable, "-m", "transforms.cli", "parse", *args], capture_output=True)


def test_good_file_exit_0_and_one_json_per_message():
    p = run(str(FIX / "hl7" / "togo_adt_oru.hl7"))
    assert p.returncode == 0, p.stderr
    recs = [json.loads(l) for l in p.stdout.decode("utf-8").splitlines()]
    assert [r["message_type"] + "^" + r["trigger_event"] for r in recs] == ["ADT^A01", "ADT^A03", "ORU^R01"]
    assert recs[0]["patient"]["family_name"] == "Ɖogbé" and recs[0]["patient"]["given_name"] == "Améyo"
    assert recs[2]["observations"][1]["value_numeric"] == 9.5
    assert all(r["source"]["file"].endswith("togo_adt_oru.hl7") for r in recs)
    assert [r["source"]["index"] for r in recs] == [0, 1, 2]


def test_errors_exit_1_and_garbage_never_crashes(tmp_path):
    junk = tmp_path / "junk.hl7"
    junk.write_bytes(bytes(range(256)) * 10)
    p = run(str(junk), str(tmp_path / "missing.hl7"))
    assert p.returncode == 1
    assert b"Traceback" not in p.stderr
    recs = [json.loads(l) for l in p.stdout.decode().splitlines()]
    assert recs[0]["errors"][0]["code"] == "MISSING_MSH"
    assert recs[-1]["errors"][0]["code"] == "FILE_NOT_READABLE"


def test_facility_charset_fallback(tmp_path):
    f = tmp_path / "latin1.hl7"
    f.write_bytes("MSH|^~\\&|A|HD-TSEVIE|B|C|20261102||ADT^A04|1|P|2.3\rPID|1||7^^^HD^MR||Sénamé^Kodjo||19900101|M\r"
                  "PV1|1|O\r".encode("latin-1"))
    rec = json.loads(run(str(f), "--facility-charset", "iso-8859-1").stdout)
    assert rec["charset"] == "iso-8859-1" and rec["patient"]["family_name"] == "Sénamé"
    rec = json.loads(run(str(f)).stdout)
    assert rec["charset"] == "cp1252" and "CHARSET_INFERRED" in rec["flags"]


def test_cli_refuses_a_week_never_built_and_names_what_it_cannot_read(tmp_path, hl7ics_home, capsys):
    """Found by review: the bulletin and the DHIS2 export of a week the reporting tables were never
    built for said "no case" with exit 0; a bad warehouse URL and a missing listener config gave a
    traceback or were ignored; an I/O error did not name its file."""
    from transforms.cli import main

    from transforms.config import Settings
    from transforms.ingest import Ingestor

    url = f"sqlite:///{tmp_path / 'w.db'}"
    Ingestor(Settings.load(warehouse_url=url)).sync_facilities()
    assert main(["report", "weekly", "--week", "2026W45", "--no-pdf", "--warehouse", url]) == 2
    assert "never built" in capsys.readouterr().err
    assert main(["dhis2", "export", "--period", "2026W60", "--dry-run", "--warehouse", url]) == 2
    assert "no ISO week 60" in capsys.readouterr().err
    assert main(["dhis2", "export", "--period", "2026W45", "--dry-run", "--warehouse", url]) == 2
    assert "hl7ics report build --from 2026-11-02 --to 2026-11-08" in capsys.readouterr().err
    assert main(["report", "build", "--from", "2026-11-02", "--to", "2026-11-08", "--warehouse", url]) == 0
    assert main(["dhis2", "export", "--period", "2026W45", "--dry-run", "--warehouse", url]) == 0
    capsys.readouterr()
    assert main(["report", "build", "--warehouse", "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"]) == 2
    assert capsys.readouterr().err.startswith("hl7ics: warehouse error: OperationalError")
    # A file that is not a database, a database engine the warehouse is not written for, and a
    # missing driver: one line each, no traceback.
    (tmp_path / "notes.db").write_text("not a database\n")
    assert main(["db", "upgrade", "--warehouse", f"sqlite:///{tmp_path / 'notes.db'}"]) == 2
    assert capsys.readouterr().err == "hl7ics: warehouse error: DatabaseError: file is not a database\n"
    for url in ("mysql://u@localhost/x", "oracle://u@localhost/x"):
        assert main(["db", "upgrade", "--warehouse", url]) == 2
        assert "must be SQLite (sqlite:///PATH) or PostgreSQL" in capsys.readouterr().err
    assert main(["listen", "--listener-config", str(tmp_path / "typo.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    missing = tmp_path / "absent.hl7"
    assert main(["validate", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_parse_prints_a_file_name_that_is_not_utf8(tmp_path, capsys):
    """A file name in Latin-1 bytes (é = 0xE9) crashed the output halfway through a record."""
    import os

    from transforms.cli import main

    name = os.fsdecode(tmp_path.as_posix().encode() + b"/r\xe9sultat.hl7")
    with open(name, "wb") as fh:
        fh.write(b"MSH|^~\\&|LAB|CHU-SO|HL7ICS|MOH|20261102||ADT^A04|N-1|P|2.5\rPID|1||P1||Ama\r")
    main(["parse", name])
    out = capsys.readouterr().out
    assert json.loads(out)["source"]["file"].endswith("r\ufffdsultat.hl7")
    out.encode("utf-8")  # printable as UTF-8


@pytest.mark.parametrize("argv, said", [
    (["listen", "--port", "99999"], "is not a port number"),
    (["send", "m.hl7", "--port", "70000"], "is not a port number"),
    (["generate", "--out", "OUT", "--days", "-1"], "days must be >= 0"),
])
def test_usage_errors_exit_2_with_one_line_not_a_traceback(argv, said, tmp_path, capsys):
    """A port out of range was wrapped (listen --port 99999 listened on 34463) or crashed, and a
    ValueError from a command printed a traceback with exit 1 (dhis2 export's "values ignored")."""
    from transforms import cli

    argv = [a.replace("OUT", str(tmp_path / "gen")) for a in argv]
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own usage error
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and said in err and "Traceback" not in err


def test_read_commands_refuse_a_database_that_is_no_warehouse(tmp_path, hl7ics_home, capsys):
    """`hl7ics dq report --warehouse <another database>` created every warehouse table there and
    reported "no data"; an unknown --facility also said "no data"."""
    import sqlite3

    from transforms import cli

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE mine (x)").connection.close()
    assert cli.main(["dq", "report", "--warehouse", f"sqlite:///{other}"]) == 2
    assert "holds no hl7ics warehouse" in capsys.readouterr().err
    assert [r[0] for r in sqlite3.connect(other).execute("SELECT name FROM sqlite_master")] == ["mine"]
    assert cli.main(["dq", "report", "--facility", "CHU-S0", "--warehouse", f"sqlite:///{tmp_path / 'w.db'}"]) == 2
    assert "no such facility" in capsys.readouterr().err
