"""``hl7ics parse``: NDJSON out, exit 1 when any message has errors, never a traceback."""
from __future__ import annotations

import json
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
