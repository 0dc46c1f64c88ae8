"""Bad-input catalogue, cases 21-41 and 51-58: what the parser and the canonical record must do.

Every input is built inline as bytes. The listener / ACK parts of the catalogue (AA/AE/AR, MSA-2,
quarantine) belong to the listener's own tests; here we check the parser's side of the contract:
the record's status, error/warning codes (HL7 table 0357 condition codes), flags and values.
"""
from __future__ import annotations

import hashlib
import io

import pytest

from transforms.datetimes import to_utc
from transforms.extract import to_record
from transforms.parser import (
    DEFAULT_DELIMITERS,
    Delimiters,
    iter_units,
    parse,
    read_delimiters,
    unescape,
)

# ---------------------------------------------------------------------------------------------
# Builders


def msh(*, fs: str = "|", enc: str = "^~\\&", msg_type: str = "ORU^R01", control: str = "MSG00001",
        dt: str = "20240315083000", version: str = "2.5.1", charset: str | None = None) -> str:
    """An MSH segment. Element n of the list is MSH-(n+1) (MSH-1 is the separator itself)."""
    fields = ["MSH", enc, "LABSYS", "CHU-LOME", "HIS", "MOH-TG", dt, "", msg_type, control, "P", version]
    if charset is not None:
        fields += ["", "", "", "", "", charset]  # MSH-13 .. MSH-17, then MSH-18
    return fs.join(fields)


def build(*segments: str | bytes, term: bytes = b"\r", encoding: str = "utf-8", final: bool = True) -> bytes:
    parts = [s if isinstance(s, bytes) else s.encode(encoding) for s in segments]
    return term.join(parts) + (term if final else b"")


PID = "PID|1||TG-0042^^^CHU&1.2.3&ISO^MR||Agbo^Kodjo||19800101|F"
OBR = "OBR|1|ORD1|FIL1|8310-5^Temp^LN"


def obx(value: str, vt: str = "NM", observed: str = "20240315083000", units: str = "Cel") -> str:
    return f"OBX|1|{vt}|8310-5^Body temperature^LN||{value}|{units}|||||F|||{observed}"


def oru(*extra: str, pid: str = PID, **msh_kw) -> bytes:
    return build(msh(**msh_kw), pid, OBR, *extra)


def adt(*segments: str, event: str = "A01", **msh_kw) -> bytes:
    return build(msh(msg_type=f"ADT^{event}", **msh_kw), *segments)


def record(raw: bytes, facility_charset: str | None = None) -> dict:
    return to_record(parse(raw, facility_charset))


def codes(rec: dict, kind: str = "errors") -> list[str]:
    return [i["code"] for i in rec[kind]]


def issue(rec: dict, code: str) -> dict:
    found = [i for i in rec["errors"] + rec["warnings"] if i["code"] == code]
    assert found, f"{code} not in errors {codes(rec)} / warnings {codes(rec, 'warnings')}"
    return found[0]


def pid_with(**fields: str) -> str:
    """A PID segment with PID-n overridden (keys like f3='...')."""
    base = {1: "1", 3: "TG-0042^^^CHU^MR", 5: "Agbo^Kodjo", 7: "19800101", 8: "F"}
    for k, v in fields.items():
        base[int(k[1:])] = v
    return "PID|" + "|".join(base.get(i, "") for i in range(1, max(base) + 1))


def assert_ok(rec: dict) -> None:
    assert rec["status"] == "ok", rec["errors"]
    assert rec["errors"] == []


# ---------------------------------------------------------------------------------------------
# B. HL7 encoding and structure

@pytest.mark.parametrize("raw", [
    b"PID|1||TG-0042||Agbo^Kodjo\rOBR|1\r",
    b"EVN|A01|20240315083000\rPID|1||TG-0042\r",
    b"   PID|1||TG-0042\r",
    b"   ",
    b"",
    b"\r\n\r\n",
], ids=["starts-with-PID", "starts-with-EVN", "spaces-then-PID", "spaces-only", "empty", "blank-lines"])
def test_case_21_no_msh(raw):
    """21: No MSH (message starts with PID, EVN or spaces) -> AR, 0357:100, MSA-2 empty, Q."""
    msg = parse(raw)
    rec = to_record(msg)
    assert rec["status"] == "error"
    err = issue(rec, "MISSING_MSH")
    assert err["hl7_code"] == 100 and err["severity"] == "error"
    assert rec["control_id"] is None  # what MSA-2 will echo: nothing
    assert rec["sha256"] == hashlib.sha256(raw).hexdigest()
    assert msg.raw == raw


@pytest.mark.parametrize("prefix,flag", [
    (b"\xef\xbb\xbf", "BOM_STRIPPED"),
    (b"   ", "LEADING_WHITESPACE_STRIPPED"),
    (b"\r\n", "LEADING_WHITESPACE_STRIPPED"),
    (b"\n\n\t ", "LEADING_WHITESPACE_STRIPPED"),
    (b"\r", "LEADING_WHITESPACE_STRIPPED"),
    (b"\xef\xbb\xbf\r\n", "LEADING_WHITESPACE_STRIPPED"),
    (b"\r\n\xef\xbb\xbf", "LEADING_WHITESPACE_STRIPPED"),
])
def test_case_22_bom_and_leading_whitespace(prefix, flag):
    """22: UTF-8 BOM (EF BB BF) or leading whitespace/CR/LF before MSH -> Strip and flag; process normally (AA)."""
    clean = oru(obx("37.5"))
    raw = prefix + clean
    msg = parse(raw)
    rec = to_record(msg)
    assert_ok(rec)
    assert flag in msg.flags
    assert msg.segments[0][:2] == ["MSH", "^~\\&"]
    assert [s[0] for s in msg.segments] == ["MSH", "PID", "OBR", "OBX"]
    assert rec["control_id"] == "MSG00001"
    assert rec["patient"]["family_name"] == "Agbo"
    # The hash is of the exact bytes handed to parse(), BOM and whitespace included.
    assert msg.raw == raw
    assert rec["sha256"] == hashlib.sha256(raw).hexdigest()
    assert rec["sha256"] != hashlib.sha256(clean).hexdigest()


def test_case_22_bom_before_second_message_in_a_file():
    """22: UTF-8 BOM (EF BB BF) ... before MSH -> Strip and flag; process normally (AA)."""
    first = adt("EVN|A01|20240315083000", pid_with(f3="TG-1"), "PV1|1|I", control="C1")
    second = adt("EVN|A01|20240315083000", pid_with(f3="TG-2"), "PV1|1|I", control="C2")
    units = list(iter_units(io.BytesIO(b"\xef\xbb\xbf" + first + b"\xef\xbb\xbf" + second)))
    recs = [record(u.raw) for u in units]
    assert [r["control_id"] for r in recs] == ["C1", "C2"]
    assert [r["patient"]["id"] for r in recs] == ["TG-1", "TG-2"]


def test_case_22_bom_before_latin1_text():
    """22: UTF-8 BOM (EF BB BF) ... before MSH -> Strip and flag; process normally (AA)."""
    raw = b"\xef\xbb\xbf" + build(msh(), "PID|1||TG-0042||Améyo^Kodjo", OBR, encoding="latin-1")
    rec = record(raw)
    assert_ok(rec)
    assert "BOM_STRIPPED" in rec["flags"]
    assert rec["patient"]["family_name"] == "Améyo"


@pytest.mark.parametrize("fs", ["#", "!", ";"])
def test_case_23_non_default_field_separator(fs):
    """23: Non-default field separator (MSH-1 = #, ! or ;) -> Valid HL7: parse using MSH-1/MSH-2."""
    raw = build(
        msh(fs=fs),
        fs.join(["PID", "1", "", "TG-0042^^^CHU^MR", "", "Agbo^Kodjo", "", "19800101", "F"]),
        fs.join(["OBR", "1"]),
        fs.join(["OBX", "1", "ST", "8310-5^Temp^LN", "", "a\\F\\b", "Cel", "", "", "", "", "F"]),
    )
    msg = parse(raw)
    rec = to_record(msg)
    assert_ok(rec)
    assert msg.delims == Delimiters(fs, "^", "~", "\\", "&", "")
    assert rec["message_type"] == "ORU" and rec["trigger_event"] == "R01"
    assert rec["control_id"] == "MSG00001"
    assert rec["version"] == "2.5.1"
    assert rec["patient"]["id"] == "TG-0042"
    assert rec["patient"]["id_authority"] == "CHU"
    assert rec["patient"]["family_name"] == "Agbo"
    assert rec["patient"]["given_name"] == "Kodjo"
    assert rec["patient"]["birth_date"] == "1980-01-01"
    obs = rec["observations"][0]
    assert obs["code"] == "8310-5" and obs["units"] == "Cel"
    assert obs["value"] == f"a{fs}b"  # \F\ means *this message's* field separator
    assert "|" not in "".join("".join(s) for s in msg.segments)


def test_case_23_non_default_component_separator():
    """23: Non-default ... delimiters -> Valid HL7: parse using MSH-1/MSH-2."""
    raw = build(msh(enc="$*/%"), "PID|1||TG-0042$$$CHU||Agbo$Kodjo", "OBR|1")
    rec = record(raw)
    assert_ok(rec)
    assert rec["patient"]["family_name"] == "Agbo"
    assert rec["patient"]["given_name"] == "Kodjo"
    assert rec["patient"]["id_authority"] == "CHU"


@pytest.mark.parametrize("enc,expected", [
    ("^~\\&", Delimiters("|", "^", "~", "\\", "&", "")),
    ("^~\\&#", Delimiters("|", "^", "~", "\\", "&", "#")),
    ("$*/%", Delimiters("|", "$", "*", "/", "%", "")),
])
def test_case_24_valid_encoding_characters(enc, expected):
    """24: 4 distinct non-alphanumeric characters, or 5 with # -> accept."""
    delims, issues = read_delimiters(msh(enc=enc))
    assert delims == expected
    assert issues == []
    rec = record(build(msh(enc=enc, msg_type=f"ORU{expected.component}R01"), "OBR|1"))
    assert_ok(rec)
    assert rec["warnings"] == []
    assert (rec["message_type"], rec["trigger_event"]) == ("ORU", "R01")


@pytest.mark.parametrize("enc", [
    "^^\\&",     # component = repetition
    "^~~&",      # duplicate
    "^~\\^",     # duplicate
    "^~A&",      # alphanumeric
    "^1\\&",     # digit
    "^",         # one character
    "",          # none
    "^~\\&#!",   # six characters
    "^ \\&",     # space
], ids=["dup-comp-rep", "dup-rep", "dup-comp-sub", "alpha", "digit", "one", "empty", "six", "space"])
def test_case_24_bad_encoding_characters(enc):
    """24: Duplicates, alphanumerics or fewer than 2 -> AR 0357:102 (MSH-2), Q."""
    delims, issues = read_delimiters(msh(enc=enc))
    assert [i.code for i in issues] == ["BAD_DELIMITERS"]
    assert issues[0].location == "MSH-2" and issues[0].hl7_code == 102 and issues[0].severity == "error"
    assert delims.field == "|"
    rec = record(build(msh(enc=enc), PID, OBR))  # never raises
    assert rec["status"] == "error"
    err = issue(rec, "BAD_DELIMITERS")
    assert err["location"] == "MSH-2" and err["hl7_code"] == 102


@pytest.mark.parametrize("fs", ["A", "1", " "])
def test_case_24_bad_field_separator(fs):
    """24: ... alphanumeric delimiters -> AR 0357:102, Q."""
    raw = ("MSH" + fs + "^~\\&" + fs + "LAB").encode() + b"\rPID|1||X\r"
    rec = record(raw)
    assert rec["status"] == "error"
    err = issue(rec, "BAD_DELIMITERS")
    assert err["location"] == "MSH-1" and err["hl7_code"] == 102


@pytest.mark.parametrize("enc,expected", [
    ("^~", Delimiters("|", "^", "~", "\\", "&", "")),
    ("^~\\", Delimiters("|", "^", "~", "\\", "&", "")),
])
def test_case_24_short_encoding_characters(enc, expected):
    """24: Odd MSH-2: fewer than 4 characters (2-3) -> accepted with defaults, warning SHORT_ENCODING_CHARACTERS."""
    delims, issues = read_delimiters(msh(enc=enc))
    assert delims == expected
    assert [(i.code, i.location, i.severity) for i in issues] == [("SHORT_ENCODING_CHARACTERS", "MSH-2", "warning")]
    rec = record(build(msh(enc=enc), OBR))
    assert_ok(rec)
    assert "SHORT_ENCODING_CHARACTERS" in codes(rec, "warnings")


@pytest.mark.parametrize("enc", ["&^", "~\\&", "^\\"])
def test_case_24_short_encoding_characters_not_a_prefix(enc):
    """24: 2-3 characters that are not a prefix of ^~\\& are ambiguous (positions define meaning) -> 0357:102 (MSH-2)."""
    delims, issues = read_delimiters(msh(enc=enc))
    assert [(i.code, i.location, i.hl7_code) for i in issues] == [("BAD_DELIMITERS", "MSH-2", 102)]
    assert delims == DEFAULT_DELIMITERS


SEGS_25 = [msh(), PID, OBR, obx("37.5"), "NTE|1||done"]


@pytest.mark.parametrize("raw", [
    build(*SEGS_25, term=b"\n"),
    build(*SEGS_25, term=b"\r\n"),
    b"\r".join(s.encode() for s in SEGS_25[:2]) + b"\n" + SEGS_25[2].encode() + b"\r\n"
    + SEGS_25[3].encode() + b"\n\r" + SEGS_25[4].encode() + b"\r",
], ids=["LF", "CRLF", "mixed"])
def test_case_25_segment_terminators(raw):
    """25: Segment terminator \\n or \\r\\n, or mixed -> Normalise to \\r; never let a message collapse into one segment."""
    reference = parse(build(*SEGS_25))
    msg = parse(raw)
    assert len(msg.segments) == 5
    assert msg.segments == reference.segments
    ref_rec, rec = to_record(reference), to_record(msg)
    assert_ok(rec)
    for key in ("control_id", "message_type", "patient", "observations", "segment_count"):
        assert rec[key] == ref_rec[key]
    assert any(f.endswith("_TERMINATORS") for f in msg.flags)  # the facility profile gets flagged


@pytest.mark.parametrize("raw", [
    build(msh(), "PID|1||TG-0042||Agbo^Kodjo|||", OBR + "|||", obx("37.5") + "||||"),
    build(msh(), PID, OBR, obx("37.5"), final=False),
    build(msh(), "", PID, "", "", OBR, obx("37.5"), ""),
    build(msh(), "", PID, "", OBR, obx("37.5"), term=b"\r\n"),
    build(msh(), PID, OBR, obx("37.5"), term=b"\n") + b"\n\n\n",
], ids=["trailing-separators", "no-final-terminator", "empty-lines-CR", "empty-lines-CRLF", "trailing-LF"])
def test_case_26_trailing_and_empty(raw):
    """26: Trailing empty fields or separators, missing final \\r, empty lines \\r\\r -> Accept. Skip empty segments."""
    msg = parse(raw)
    rec = to_record(msg)
    assert_ok(rec)
    assert [s[0] for s in msg.segments] == ["MSH", "PID", "OBR", "OBX"]
    assert all(s[0] for s in msg.segments)
    assert rec["patient"]["id"] == "TG-0042"
    assert rec["patient"]["family_name"] == "Agbo"
    assert rec["observations"][0]["value_numeric"] == 37.5
    assert rec["segment_count"] == 4


@pytest.mark.parametrize("escaped,expected", [
    ("a\\F\\b", "a|b"),
    ("a\\S\\b", "a^b"),
    ("a\\T\\b", "a&b"),
    ("a\\R\\b", "a~b"),
    ("a\\E\\b", "a\\b"),
    ("line1\\X0D0A\\line2", "line1\r\nline2"),
    ("line1\\.br\\line2", "line1\nline2"),
    ("\\H\\urgent\\N\\ result", "urgent result"),
    ("\\E\\F\\E\\", "\\F\\"),          # decoded once: not a field separator
    ("\\E\\E\\E\\", "\\E\\"),
], ids=["F", "S", "T", "R", "E", "X0D0A", "br", "H-N", "once-F", "once-E"])
def test_case_27_escape_sequences(escaped, expected):
    """27: Escape sequences \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\X0D0A\\, \\H\\ \\N\\, \\.br\\ -> Unescape into typed values once."""
    raw = oru(obx(escaped, vt="TX"), pid=pid_with(f5=f"Mensah{escaped}^Ama"))
    msg = parse(raw)
    rec = to_record(msg)
    assert_ok(rec)
    assert rec["observations"][0]["value"] == expected
    assert rec["patient"]["family_name"] == "Mensah" + expected
    # Raw bytes and tokens stay escaped.
    assert msg.raw == raw
    assert escaped.encode() in msg.raw
    assert msg.all("OBX")[0][5] == escaped


def test_case_27_escaped_delimiters_do_not_split_name():
    """27: Escape sequences ... -> Unescape into typed values once (an escaped ^ or & is not a separator)."""
    rec = record(oru(pid=pid_with(f5="Agbo\\S\\Zegue\\T\\Co^Kodjo\\R\\Ama")))
    assert rec["patient"]["family_name"] == "Agbo^Zegue&Co"
    assert rec["patient"]["given_name"] == "Kodjo~Ama"


@pytest.mark.parametrize("escaped,expected,flag", [
    ("a\\C2842\\b", "ab", "CHARSET_ESCAPE_IGNORED"),
    ("a\\M2442\\b", "ab", "CHARSET_ESCAPE_IGNORED"),
    ("a\\Zlocal\\b", "a\\Zlocal\\b", "UNKNOWN_ESCAPE"),
    ("a\\Q\\b", "a\\Q\\b", "UNKNOWN_ESCAPE"),
    ("a\\Fb", "a\\Fb", "UNTERMINATED_ESCAPE"),
    ("trailing\\", "trailing\\", "UNTERMINATED_ESCAPE"),
])
def test_case_27_charset_unknown_and_unterminated_escapes(escaped, expected, flag):
    """27: \\Cxxyy\\ ignored; unknown or unterminated escapes: keep them literally and flag (AA)."""
    flags: list[str] = []
    assert unescape(escaped, DEFAULT_DELIMITERS, "utf-8", flags) == expected
    assert flags == [flag]
    rec = record(oru(obx(escaped, vt="TX")))
    assert_ok(rec)
    assert rec["observations"][0]["value"] == expected


@pytest.mark.parametrize("escaped", ["a\\X+1\\b", "a\\X 1\\b", "a\\X0x1F\\b", "a\\X-1\\b"])
def test_case_27_malformed_hex_escape_does_not_crash(escaped):
    """27: Unknown or unterminated escapes: keep them literally and flag (AA)."""
    rec = record(oru(obx(escaped, vt="TX"), pid=pid_with(f5=f"Agbo{escaped}^Kodjo")))
    assert rec["observations"][0]["value"] == escaped
    assert rec["patient"]["family_name"] == f"Agbo{escaped}"


@pytest.mark.parametrize("escaped,flag", [
    ("a\\C2842\\b", "CHARSET_ESCAPE_IGNORED"),
    ("a\\Zlocal\\b", "UNKNOWN_ESCAPE"),
    ("a\\Fb", "UNTERMINATED_ESCAPE"),
])
def test_case_27_escape_flags_reach_the_record(escaped, flag):
    """27: Unknown or unterminated escapes: keep them literally and flag (AA)."""
    rec = record(oru(obx(escaped, vt="TX")))
    assert flag in rec["flags"] + codes(rec, "warnings")


def test_case_28_null_vs_empty():
    """28: "" (present but null) versus an empty field -> Preserve the difference."""
    null = record(oru(obx('""', vt="ST"), pid=pid_with(f8='""')))
    empty = record(oru(obx("", vt="ST"), pid=pid_with(f8="")))
    assert null["patient"]["sex"] == '""'
    assert empty["patient"]["sex"] is None
    assert null["observations"][0]["value"] == '""'
    assert empty["observations"][0]["value"] is None
    null_name = record(oru(pid=pid_with(f5='""^Kodjo')))
    assert null_name["patient"]["family_name"] == '""'
    assert record(oru(pid=pid_with(f5="^Kodjo")))["patient"]["family_name"] is None


@pytest.mark.parametrize("where", ["PID-7", "OBX-14"])
def test_case_28_null_date_is_not_an_invalid_date(where):
    """28: "" means "delete or clear the value" -> it is not an invalid date."""
    if where == "PID-7":
        rec = record(oru(obx("37.5"), pid=pid_with(f7='""')))
    else:
        rec = record(oru(obx("37.5", observed='""')))
    assert "INVALID_DATE" not in codes(rec)
    assert rec["status"] == "ok"


def test_case_29_repetitions_in_non_repeating_field():
    """29: Repetitions ~ in a non-repeating field -> Take the first, AA."""
    rec = record(oru(obx("37.5", vt="ST"), pid=pid_with(f3="TG-1^^^CHU~TG-2^^^CHR", f5="Agbo^Kodjo~Mensah^Ama",
                                                        f8="F~M")))
    assert_ok(rec)
    p = rec["patient"]
    assert (p["id"], p["id_authority"]) == ("TG-1", "CHU")
    assert (p["family_name"], p["given_name"]) == ("Agbo", "Kodjo")
    assert p["sex"] == "F"


@pytest.mark.parametrize("where", ["PID-7", "OBX-14"])
def test_case_29_repeated_date_takes_first(where):
    """29: Repetitions ~ in a non-repeating field -> Take the first, AA."""
    if where == "PID-7":
        rec = record(oru(obx("37.5"), pid=pid_with(f7="19800101~19900101")))
        assert rec["patient"]["birth_date"] == "1980-01-01"
    else:
        rec = record(oru(obx("37.5", observed="20240315083000~20240316083000")))
        assert rec["observations"][0]["observed_at"] == "2024-03-15T08:30:00"
    assert_ok(rec)


def test_case_29_many_repetitions_do_not_crash():
    """29: ... or too many repetitions -> Take the first, AA."""
    rec = record(oru(pid=pid_with(f8="~".join(["F", "M"] * 500))))
    assert_ok(rec)
    assert rec["patient"]["sex"] == "F"


def test_case_29_repetitions_are_flagged():
    """29: Repetitions ~ in a non-repeating field -> Take the first, flag, AA."""
    rec = record(oru(pid=pid_with(f8="F~M")))
    assert rec["flags"] or rec["warnings"]


def test_case_30_z_and_unknown_segments():
    """30: Z-segments (ZPI, ZTG ...) and unknown segments -> Ignore for the standard mapping, preserve raw. AA."""
    raw = oru(obx("37.5"), "ZPI|1|Kabiyè|CANTON-7", "ZTG|x^y~z", "QQQ|1")
    msg = parse(raw)
    rec = to_record(msg)
    assert_ok(rec)
    assert rec["warnings"] == []
    assert [s[0] for s in msg.segments] == ["MSH", "PID", "OBR", "OBX", "ZPI", "ZTG", "QQQ"]
    assert msg.first("ZPI") == ["ZPI", "1", "Kabiyè", "CANTON-7"]
    assert msg.first("ZTG") == ["ZTG", "x^y~z"]
    assert rec["segment_count"] == 7
    assert len(rec["observations"]) == 1


@pytest.mark.parametrize("raw,missing", [
    (adt("EVN|A01|20240315083000", PID), "PV1"),
    (adt("EVN|A01|20240315083000", "PV1|1|I"), "PID"),
    (build(msh(), PID, obx("37.5")), "OBR"),
], ids=["ADT_A01-no-PV1", "ADT_A01-no-PID", "ORU-no-OBR"])
def test_case_31_required_segment_missing(raw, missing):
    """31: Required segment missing (e.g. ADT^A01 without PID or PV1) -> AE, 0357:100, with ERR-2 location."""
    rec = record(raw)
    assert rec["status"] == "error"
    errs = [e for e in rec["errors"] if e["code"] == "MISSING_SEGMENT"]
    assert [(e["location"], e["hl7_code"]) for e in errs] == [(missing, 100)]


def test_case_31_complete_messages_are_ok():
    """31: (control) a complete ADT^A01 / ORU^R01 is not reported."""
    assert_ok(record(adt("EVN|A01|20240315083000", PID, "PV1|1|I")))
    assert_ok(record(oru(obx("37.5"))))


@pytest.mark.parametrize("pid3", ["", "^^^", "~", "  "], ids=["empty", "components-only", "rep-only", "spaces"])
def test_case_32_missing_patient_id(pid3):
    """32: Required field missing (PID-3 empty) -> AE, 0357:101, Q."""
    rec = record(oru(pid=pid_with(f3=pid3)))
    assert rec["status"] == "error"
    err = issue(rec, "MISSING_PATIENT_ID")
    assert (err["location"], err["hl7_code"], err["severity"]) == ("PID-3", 101, "error")
    assert rec["patient"]["id"] is None


def test_case_32_patient_id_with_only_authority():
    """32: Required field missing (PID-3 empty) -> AE, 0357:101, Q."""
    rec = record(oru(pid=pid_with(f3="^^^CHU^MR")))
    assert rec["patient"]["id"] is None
    assert "MISSING_PATIENT_ID" in codes(rec)


@pytest.mark.parametrize("pid5", ["", "^", '^^^^'])
def test_case_32_missing_patient_name(pid5):
    """32: Required field missing (PID-5 empty) -> recorded as a warning (101), message still loaded."""
    rec = record(oru(pid=pid_with(f5=pid5)))
    assert_ok(rec)
    w = issue(rec, "MISSING_PATIENT_NAME")
    assert (w["location"], w["hl7_code"], w["severity"]) == ("PID-5", 101, "warning")


@pytest.mark.parametrize("seg", ["pid|1||TG-0042||Agbo^Kodjo", "PÏD|1||TG-0042", "pId|1"])
def test_case_33_malformed_segment_id_flagged(seg):
    """33: Malformed segment IDs (pid, non-ASCII) -> treat as unknown and ignore (AA plus flag)."""
    msg = parse(build(msh(), seg, OBR))
    rec = to_record(msg)
    assert_ok(rec)
    assert seg.split("|")[0] in [s[0] for s in msg.segments]
    w = issue(rec, "MALFORMED_SEGMENT_ID")
    assert w["severity"] == "warning"
    assert rec["patient"] is None  # a lower-case "pid" is not mapped as PID


def test_case_33_malformed_pid_when_profile_requires_pid():
    """33: Malformed segment IDs -> AE 0357:100 if the profile requires it."""
    rec = record(adt("EVN|A01|20240315083000", "pid|1||TG-0042||Agbo^Kodjo", "PV1|1|I"))
    assert rec["status"] == "error"
    assert ("MISSING_SEGMENT", "PID", 100) in [(e["code"], e["location"], e["hl7_code"]) for e in rec["errors"]]


def test_case_33_odd_upper_case_id_is_unknown_segment():
    """33: Malformed segment IDs (P1D) -> treat as unknown and ignore (AA)."""
    msg = parse(build(msh(), PID, "P1D|1|x", OBR))
    rec = to_record(msg)
    assert_ok(rec)
    assert [s[0] for s in msg.segments] == ["MSH", "PID", "P1D", "OBR"]
    assert rec["patient"]["id"] == "TG-0042"


def test_case_33_two_char_segment_id():
    """33: Malformed segment IDs (PI) -> treat as unknown and ignore (AA plus flag); the previous segment is not corrupted."""
    msg = parse(build(msh(), "NTE|1||first line", "PI|second line", OBR))
    rec = to_record(msg)
    assert rec["status"] == "ok"
    assert msg.first("NTE") == ["NTE", "1", "", "first line"]
    assert [s[0] for s in msg.segments] == ["MSH", "NTE", "PI", "OBR"]
    assert "MALFORMED_SEGMENT" in msg.flags or "MALFORMED_SEGMENT_ID" in codes(rec, "warnings")


def test_case_33_free_text_line_continues_previous_segment():
    """33/25: a raw line break inside free text (no segment ID) continues the previous segment."""
    msg = parse(build(msh(), "NTE|1||first line", "second line, no ID", OBR))
    assert [s[0] for s in msg.segments] == ["MSH", "NTE", "OBR"]
    assert msg.first("NTE") == ["NTE", "1", "", "first line\nsecond line, no ID"]
    assert "CONTINUATION_LINE" in msg.flags


def test_case_34_hundred_thousand_obx():
    """34: Pathological sizes: 100,000 OBX segments -> parsing must stay linear-time (completes, no error)."""
    n = 100_000
    raw = build(msh(), PID, OBR, *(f"OBX|{i}|NM|X||{i}||||||F" for i in range(1, n + 1)))
    rec = record(raw)
    assert rec["status"] == "ok"
    assert rec["segment_count"] == n + 3
    assert len(rec["observations"]) == n
    assert rec["observations"][-1]["value_numeric"] == float(n)


def test_case_34_one_megabyte_field():
    """34: Pathological sizes: a 1 MB field -> parses without error."""
    big = "A" * (1 << 20)
    rec = record(oru(obx(big, vt="TX")))
    assert rec["status"] == "ok"
    assert rec["observations"][0]["value"] == big


def test_case_34_one_megabyte_field_with_raw_line_breaks():
    """34: Pathological sizes: a 1 MB field (base64 wrapped at 76 characters) -> parses, one segment."""
    line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0"
    lines = [line] * ((1 << 20) // (len(line) + 1))
    raw = build(msh(), PID, OBR, "OBX|1|ED|PDF^Report||^AP^PDF^Base64^" + "\r".join(lines), "NTE|1||end")
    msg = parse(raw)
    assert [s[0] for s in msg.segments] == ["MSH", "PID", "OBR", "OBX", "NTE"]
    rec = to_record(msg)
    assert rec["status"] == "ok"
    assert rec["observations"][0]["value"] == "\n".join(lines)


def test_case_34_ten_thousand_repetitions():
    """34: Pathological sizes: 10,000 repetitions -> parses without error."""
    reps = "~".join(f"ID{i:05d}^^^CHU" for i in range(10_000))
    values = "~".join(f"v{i}" for i in range(10_000))
    rec = record(oru(obx(values, vt="ST"), pid=pid_with(f3=reps)))
    assert rec["status"] == "ok"
    assert rec["patient"]["id"] == "ID00000"
    assert rec["observations"][0]["value"].split("\n") == [f"v{i}" for i in range(10_000)]


# ---------------------------------------------------------------------------------------------
# C. Character sets

LATIN1_PID = "PID|1||TG-0042^^^CHU^MR||Améyo^Kodjo Sénamé||19800101|F"
EWE = "ɖƒɣŋɔɛʋ"


def test_case_35_latin1_without_msh18():
    """35: Latin-1 bytes with no MSH-18 -> Store raw unchanged; try UTF-8, fall back to CP1252, flag "charset inferred"."""
    raw = build(msh(), LATIN1_PID, OBR, encoding="latin-1")
    assert b"Am\xe9yo" in raw
    msg = parse(raw)
    rec = to_record(msg)
    assert_ok(rec)
    assert msg.raw == raw
    assert rec["charset"] == "cp1252"
    assert "CHARSET_INFERRED" in rec["flags"]
    assert rec["patient"]["family_name"] == "Améyo"
    assert rec["patient"]["given_name"] == "Kodjo Sénamé"


@pytest.mark.parametrize("default", ["iso-8859-1", "8859/1", "latin-1"])
def test_case_35_latin1_with_facility_default(default):
    """35: Latin-1 bytes with no MSH-18 -> Decode with the facility's configured default."""
    raw = build(msh(), LATIN1_PID, OBR, encoding="latin-1")
    rec = record(raw, facility_charset=default)
    assert_ok(rec)
    assert rec["patient"]["family_name"] == "Améyo"
    assert rec["patient"]["given_name"] == "Kodjo Sénamé"
    assert "CHARSET_INFERRED" not in rec["flags"]
    assert rec["charset"] == "iso-8859-1"


@pytest.mark.parametrize("default", ["iso-8859-1", "latin-1"])
def test_case_35_facility_default_codec_name_is_canonical(default):
    """35: Decode with the facility's configured default -> codec iso-8859-1 (same name as MSH-18 8859/1)."""
    raw = build(msh(), LATIN1_PID, OBR, encoding="latin-1")
    assert record(raw, facility_charset=default)["charset"] == "iso-8859-1"


@pytest.mark.parametrize("declared", ["8859/1", "8859/15", "ISO IR100"])
def test_case_36_utf8_declared_latin1(declared):
    """36: UTF-8 bytes while MSH-18 declares 8859/1 (mismatch) -> decode as UTF-8, flag the facility, AA."""
    raw = build(msh(charset=declared), LATIN1_PID, OBR)
    assert "Améyo".encode() in raw
    rec = record(raw)
    assert_ok(rec)
    assert rec["charset"] == "utf-8"
    assert rec["charset_declared"] == declared
    assert "CHARSET_MISMATCH" in rec["flags"]
    assert rec["patient"]["family_name"] == "Améyo"
    assert rec["patient"]["given_name"] == "Kodjo Sénamé"
    assert "Ã" not in rec["patient"]["given_name"]


@pytest.mark.parametrize("bad", [b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\xe9"],
                         ids=["invalid-continuation", "overlong", "lone-surrogate", "ff", "latin1-e9"])
def test_case_37_invalid_utf8_declared_utf8(bad):
    """37: Invalid UTF-8 (0xC3 0x28), overlong encodings, lone surrogates -> Raw preserved, decode with replacement, flag."""
    raw = build(msh(charset="UNICODE UTF-8"), b"PID|1||TG-0042||Ag" + bad + b"bo^Kodjo", OBR)
    msg = parse(raw)
    rec = to_record(msg)
    assert rec["status"] == "ok"
    assert msg.raw == raw
    assert rec["sha256"] == hashlib.sha256(raw).hexdigest()
    assert rec["charset"] == "utf-8"
    assert "INVALID_BYTES" in rec["flags"]
    fam = rec["patient"]["family_name"]
    assert "\ufffd" in fam and fam.startswith("Ag") and fam.endswith("bo")
    assert rec["patient"]["given_name"] == "Kodjo"


def test_case_37_a_damaged_patient_identifier_is_an_error():
    """37: "If a required identifier field is damaged -> AE 0357:102"."""
    raw = build(msh(charset="UNICODE UTF-8"), b"PID|1||TG-\xe9042||Agbo^Kodjo", OBR)
    rec = to_record(parse(raw))
    assert rec["status"] == "error"
    assert [(e["code"], e["location"], e["hl7_code"]) for e in rec["errors"]] == [("DAMAGED_PATIENT_ID", "PID-3", 102)]


def test_case_37_nul_bytes_removed():
    """37: NUL bytes -> Raw preserved. Strip NUL before any PostgreSQL text insert, flag."""
    raw = build(msh(), b"PID|1||TG-\x000042||Ag\x00bo^Ko\x00djo", OBR) + b"\x00"
    msg = parse(raw)
    rec = to_record(msg)
    assert rec["status"] == "ok"
    assert "NUL_BYTES_REMOVED" in rec["flags"]
    assert msg.raw == raw
    assert rec["sha256"] == hashlib.sha256(raw).hexdigest()
    assert "\x00" not in msg.text
    assert rec["patient"]["id"] == "TG-0042"
    assert rec["patient"]["family_name"] == "Agbo"
    assert rec["patient"]["given_name"] == "Kodjo"


@pytest.mark.parametrize("declared,facility", [
    ("UNICODE UTF-8", None),
    (None, None),
    ("", None),
    (None, "iso-8859-1"),
    ("8859/1", None),
], ids=["MSH18-utf8", "no-MSH18", "empty-MSH18", "facility-latin1", "MSH18-latin1"])
def test_case_38_ewe_kabiye_letters(declared, facility):
    """38: Ewe/Kabiyè letters ɖ ƒ ɣ ŋ ɔ ɛ ʋ -> UTF-8 end to end."""
    raw = build(msh(charset=declared), f"PID|1||TG-0042||{EWE}-Ɖɔ^Kɔfi Ŋɔ||19800101|F", OBR)
    rec = record(raw, facility_charset=facility)
    assert_ok(rec)
    assert rec["charset"] == "utf-8"
    assert rec["patient"]["family_name"] == f"{EWE}-Ɖɔ"
    assert rec["patient"]["given_name"] == "Kɔfi Ŋɔ"


def test_case_38_question_mark_substitution_is_not_an_error():
    """38: ... or ? substituted by the sender -> a ? inside a name is a data-quality flag, not an error."""
    rec = record(build(msh(charset="8859/1"), "PID|1||TG-0042||Ak?ss?^Ko?i", OBR))
    assert rec["status"] == "ok"
    assert rec["patient"]["family_name"] == "Ak?ss?"


@pytest.mark.parametrize("name", ["S\u00e9nam\u00e9", "Se\u0301name\u0301"], ids=["NFC", "NFD"])
def test_case_39_composed_vs_decomposed(name):
    """39: Composed versus decomposed diacritics -> Keep the raw form (the parser does not normalise)."""
    rec = record(build(msh(charset="UNICODE UTF-8"), f"PID|1||TG-0042||{name}^Kodjo", OBR))
    assert_ok(rec)
    assert rec["patient"]["family_name"] == name
    assert len(rec["patient"]["family_name"]) == len(name)


@pytest.mark.parametrize("declared,codec,first", [
    ("UNICODE UTF-8", "utf-8", "UNICODE UTF-8"),
    ("UTF-8", "utf-8", "UTF-8"),
    ("8859/15", "iso-8859-15", "8859/15"),
    ("8859/1", "iso-8859-1", "8859/1"),
    ("ASCII", "ascii", "ASCII"),
    ("8859/15~UNICODE UTF-8", "iso-8859-15", "8859/15"),
    ("UNICODE UTF-8~8859/1", "utf-8", "UNICODE UTF-8"),
])
def test_case_40_msh18_values(declared, codec, first):
    """40: MSH-18 values UNICODE UTF-8, UTF-8, 8859/15, ASCII, repetitions -> map table 0211 names; use the first repetition."""
    raw = build(msh(charset=declared), PID, OBR)  # ASCII content: the declared codec is reported as is
    rec = record(raw)
    assert_ok(rec)
    assert rec["charset"] == codec
    assert rec["charset_declared"] == first


def test_case_40_first_repetition_decides_decoding():
    """40: several repetitions -> Use the first repetition."""
    raw = build(msh(charset="8859/15~UNICODE UTF-8"), b"PID|1||TG-0042||\xa4uro^Kodjo", OBR)
    rec = record(raw)
    assert rec["charset"] == "iso-8859-15"
    assert rec["patient"]["family_name"] == "€uro"  # 0xA4 is the euro sign in 8859-15, not ¤


@pytest.mark.parametrize("declared", ["UNICODE", "UNICODE UTF-16", "UNICODE UTF-32", "unicode"])
def test_case_40_utf16_rejected(declared):
    """40: UNICODE (UTF-16/UCS-2 carries 0x00 bytes and breaks MLLP) -> AR 0357:203 "unsupported charset"."""
    rec = record(build(msh(charset=declared), PID, OBR))
    assert rec["status"] == "error"
    err = issue(rec, "UNSUPPORTED_CHARSET")
    assert (err["location"], err["hl7_code"], err["severity"]) == ("MSH-18", 203, "error")


@pytest.mark.parametrize("declared", ["base64", "hex", "rot13", "zlib", "undefined", "idna"])
def test_case_40_non_text_codec_in_msh18_does_not_crash(declared):
    """40: MSH-18 values ... -> map table 0211 names; anything else is unknown (parse never raises)."""
    raw = build(msh(charset=declared), LATIN1_PID, OBR)
    rec = record(raw)  # raises today
    assert rec["patient"]["family_name"] == "Améyo"


def test_case_40_ascii_declared_but_utf8_sent():
    """35/40: Never decode as ASCII-strict; UTF-8 mislabelled as ASCII keeps its letters."""
    rec = record(build(msh(charset="ASCII"), LATIN1_PID, OBR))
    assert rec["patient"]["family_name"] == "Améyo"


def test_case_41_cp1252_bytes_declared_latin1():
    """41: CP1252-only bytes (0x92 ', 0x80 €) declared as 8859/1 -> Decode as CP1252, flag, AA."""
    raw = build(msh(charset="8859/1"), b"PID|1||TG-0042||N\x92Guessan^Ama", OBR, obx("@ 12", vt="ST"))
    raw = raw.replace(b"@ 12", b"\x80 12")
    rec = record(raw)
    assert_ok(rec)
    assert rec["charset"] == "cp1252"
    assert "CHARSET_CP1252" in rec["flags"]
    assert rec["patient"]["family_name"] == "N\u2019Guessan"
    assert rec["observations"][0]["value"] == "\u20ac 12"


def test_case_41_cp1252_bytes_with_facility_default_latin1():
    """41: CP1252-only bytes (0x92 ', 0x80 €) declared as 8859/1 -> Decode as CP1252, flag, AA (facility default too)."""
    raw = build(msh(), b"PID|1||TG-0042||N\x92Guessan^Ama", OBR)
    rec = record(raw, facility_charset="iso-8859-1")
    assert_ok(rec)
    assert rec["charset"] == "cp1252"
    assert "CHARSET_CP1252" in rec["flags"]
    assert rec["patient"]["family_name"] == "N\u2019Guessan"


# ---------------------------------------------------------------------------------------------
# D. Header semantics

def test_case_51_msh7_missing():
    """51: MSH-7 missing -> metadata only; flag, AA."""
    rec = record(oru(obx("37.5"), dt=""))
    assert_ok(rec)
    assert rec["message_datetime"] is None
    w = issue(rec, "MISSING_DATETIME")
    assert (w["location"], w["severity"]) == ("MSH-7", "warning")


@pytest.mark.parametrize("dt", ["20241399", "2024-03-15", "yesterday", "20240315083000+2500", "00000101"])
def test_case_51_msh7_invalid(dt):
    """51: MSH-7 invalid -> Invalid -> flag, AA (unless the profile requires it)."""
    rec = record(oru(obx("37.5"), dt=dt))
    assert_ok(rec)
    assert rec["message_datetime"] is None
    w = issue(rec, "INVALID_DATE")
    assert (w["location"], w["severity"], w["hl7_code"]) == ("MSH-7", "warning", 102)


@pytest.mark.parametrize("dt,iso", [
    ("20240315083000+0100", "2024-03-15T08:30:00+01:00"),
    ("20240315083000-0500", "2024-03-15T08:30:00-05:00"),
    ("20240315083000+0000", "2024-03-15T08:30:00+00:00"),
    ("20991231235959", "2099-12-31T23:59:59"),  # in the future: metadata only, not rejected
])
def test_case_51_msh7_with_timezone(dt, iso):
    """51: MSH-7 in the future, or with a timezone -> Used only for metadata; AA."""
    rec = record(oru(obx("37.5"), dt=dt))
    assert_ok(rec)
    assert rec["warnings"] == []
    assert rec["message_datetime"] == iso


def test_case_52_out_of_order_events_parse_independently():
    """52: Out-of-order clinical events (A03 before A01) -> Store everything (ordering is the warehouse's job)."""
    a03 = adt("EVN|A03|20240320100000", PID, "PV1|1|I", event="A03", control="C2", dt="20240320100500")
    a01 = adt("EVN|A01|20240315083000", PID, "PV1|1|I", event="A01", control="C1", dt="20240315083500")
    stream = io.BytesIO(a03 + a01)
    units = list(iter_units(stream))
    assert [u.kind for u in units] == ["MSH", "MSH"]
    msgs = [parse(u.raw) for u in units]
    recs = [to_record(m) for m in msgs]
    for r in recs:
        assert_ok(r)
    assert [r["trigger_event"] for r in recs] == ["A03", "A01"]  # arrival order kept
    assert [r["message_datetime"] for r in recs] == ["2024-03-20T10:05:00", "2024-03-15T08:35:00"]
    assert [m.first("EVN")[2] for m in msgs] == ["20240320100000", "20240315083000"]


@pytest.mark.parametrize("dt,iso,utc", [
    ("2024", "2024", "2024-01-01 00:00:00"),
    ("202403", "2024-03", "2024-03-01 00:00:00"),
    ("20240315", "2024-03-15", "2024-03-15 00:00:00"),
    ("2024031508", "2024-03-15T08", "2024-03-15 08:00:00"),
    ("20240315083000.1234", "2024-03-15T08:30:00.1234", "2024-03-15 08:30:00"),
    ("20240315003000+0100", "2024-03-15T00:30:00+01:00", "2024-03-14 23:30:00"),
    ("20240315083000-0500", "2024-03-15T08:30:00-05:00", "2024-03-15 13:30:00"),
    ("20240315083000.5+0000", "2024-03-15T08:30:00.5+00:00", "2024-03-15 08:30:00"),
])
def test_case_53_partial_precision_and_offsets(dt, iso, utc):
    """53: DTM with partial precision, fractional seconds, offsets -> never invent a day or month; store UTC."""
    rec = record(oru(obx("37.5", observed=dt), dt=dt))
    assert_ok(rec)
    assert rec["message_datetime"] == iso
    assert rec["observations"][0]["observed_at"] == iso
    assert to_utc(iso) == utc


@pytest.mark.parametrize("bad", ["20230230", "20231301", "20230101240000", "20230101235960", "00000101",
                                 "20230229", "19000229", "2023011", "2023-01-01"],
                         ids=["feb-30", "month-13", "hour-24", "second-60", "year-0000", "not-leap",
                              "1900-not-leap", "odd-length", "iso-dashes"])
@pytest.mark.parametrize("where", ["PID-7", "OBX-14"])
def test_case_54_invalid_dates(bad, where):
    """54: Invalid dates (20230230, 20231301, hour 24, second 60, year 0000) -> Required date field -> AE 0357:102."""
    if where == "PID-7":
        rec = record(oru(obx("37.5"), pid=pid_with(f7=bad)))
        loc = "PID-7"
    else:
        rec = record(oru(obx("37.5", observed=bad)))
        loc = "OBX[1]-14"
    assert rec["status"] == "error"
    err = issue(rec, "INVALID_DATE")
    assert (err["location"], err["hl7_code"], err["severity"]) == (loc, 102, "error")
    if where == "PID-7":
        assert rec["patient"]["birth_date"] is None
    else:
        assert rec["observations"][0]["observed_at"] is None


@pytest.mark.parametrize("good,iso", [("20240229", "2024-02-29"), ("20000229", "2000-02-29"),
                                      ("19800101", "1980-01-01"), ("198001", "1980-01")])
def test_case_54_valid_birth_dates(good, iso):
    """54: (control) valid and leap-day birth dates are accepted; partial values stay partial."""
    rec = record(oru(pid=pid_with(f7=good)))
    assert_ok(rec)
    assert rec["patient"]["birth_date"] == iso


@pytest.mark.parametrize("bad", ["198²", "19800101+0²00"])
def test_case_54_non_ascii_digits_do_not_crash(bad):
    """54: Invalid dates -> Required date field -> AE 0357:102 (never an exception)."""
    rec = record(oru(pid=pid_with(f7=bad)))
    assert "INVALID_DATE" in codes(rec)


def test_case_54_fullwidth_digits_are_invalid():
    """54: Invalid dates -> Required date field -> AE 0357:102."""
    rec = record(oru(pid=pid_with(f7="１９８００１０１")))
    assert "INVALID_DATE" in codes(rec)


# ---------------------------------------------------------------------------------------------
# E. Data types and values

@pytest.mark.parametrize("value,numeric,warning", [
    ("37,5", 37.5, "DECIMAL_COMMA"),
    ("-0,5", -0.5, "DECIMAL_COMMA"),
    ("1 234", None, "NOT_NUMERIC"),
    ("<5", None, "NOT_NUMERIC"),
    ("1.5e3", 1500.0, None),
    ("+5", 5.0, None),
    (" 37.5 ", 37.5, None),
])
def test_case_55_numbers(value, numeric, warning):
    """55: Numbers with a decimal comma (37,5), 1 234, +5, 1.5e3, <5 in an NM field -> normalise with a flag; <5 kept as text."""
    rec = record(oru(obx(value)))
    assert_ok(rec)
    obs = rec["observations"][0]
    assert obs["value"] == value  # the text is kept as sent
    assert obs["value_numeric"] == numeric
    if warning:
        w = issue(rec, warning)
        assert (w["location"], w["severity"]) == ("OBX[1]-5", "warning")
    else:
        assert rec["warnings"] == []


@pytest.mark.parametrize("value,text,numeric", [
    ("<^5", "<5", None),
    ("^5", "5", 5.0),
    ("=^5", "=5", 5.0),
    ("^37,5", "37,5", 37.5),
    (">^1000", ">1000", None),
    ("^1^-^5", "1-5", None),
])
def test_case_55_structured_numeric(value, text, numeric):
    """55: Values like <5 belong in SN: flag, keep as text, no crash."""
    rec = record(oru(obx(value, vt="SN")))
    assert rec["status"] == "ok"
    obs = rec["observations"][0]
    assert obs["value"] == text
    assert obs["value_numeric"] == numeric


@pytest.mark.parametrize("value", ["3-7,5", "37,5-", "²,5"])
def test_case_55_malformed_decimal_comma_does_not_crash(value):
    """55: Numbers with a decimal comma ... -> flag, keep as text, no crash."""
    rec = record(oru(obx(value)))
    assert rec["observations"][0]["value"] == value
    assert rec["observations"][0]["value_numeric"] is None


@pytest.mark.parametrize("value", ["NaN", "inf", "-Infinity", "1_234"])
def test_case_55_python_only_float_syntax_is_not_numeric(value):
    """55: NM values that are not HL7 numbers -> flag, keep as text."""
    rec = record(oru(obx(value)))
    assert rec["observations"][0]["value_numeric"] is None
    assert "NOT_NUMERIC" in codes(rec, "warnings")


@pytest.mark.parametrize("sex", ["Féminin", "2", "feminin", "X"])
def test_case_56_coded_values_outside_table(sex):
    """56: Coded values outside the table (PID-8 Féminin, 2) -> kept as sent, no crash."""
    rec = record(oru(pid=pid_with(f8=sex)))
    assert_ok(rec)
    assert rec["patient"]["sex"] == sex


def test_case_56_invalid_code_in_obx():
    """56: invalid ICD-10 / coded values outside the table -> kept as sent."""
    rec = record(oru("OBX|1|CWE|DIAG^Diagnosis^L||Z99.999X^Unknown^I10||||||F"))
    assert_ok(rec)
    assert rec["observations"][0]["value"] == "Z99.999X"


@pytest.mark.parametrize("ident", ["00012", "000", "TG 00012 b", "aBc-0012xY", "0012.50", "1e3"])
def test_case_57_identifiers_kept_as_strings(ident):
    """57: Identifiers with leading zeros, spaces or mixed case -> Keep them as strings (never cast to int)."""
    rec = record(oru(pid=pid_with(f3=f"{ident}^^^CHU-LOME^MR")))
    assert_ok(rec)
    assert rec["patient"]["id"] == ident
    assert isinstance(rec["patient"]["id"], str)
    assert rec["patient"]["id_authority"] == "CHU-LOME"


@pytest.mark.parametrize("pid3", ["00012", "00012^^^", "00012^^^^MR"])
def test_case_57_no_assigning_authority(pid3):
    """57: PID-3 without an assigning authority -> id kept, authority None (derived later from the facility)."""
    rec = record(oru(pid=pid_with(f3=pid3)))
    assert_ok(rec)
    assert rec["patient"]["id"] == "00012"
    assert rec["patient"]["id_authority"] is None


@pytest.mark.parametrize("pid5,family,given", [
    ("N'Guessan^Ama", "N'Guessan", "Ama"),
    ("Agbo-Zégué^Kodjo-Sénamé", "Agbo-Zégué", "Kodjo-Sénamé"),
    ("Kossi", "Kossi", None),
    ("^Kossi", None, "Kossi"),
    ("D'Almeida'; DROP TABLE patient;--^Ama", "D'Almeida'; DROP TABLE patient;--", "Ama"),
])
def test_case_58_names_stored_as_sent(pid5, family, given):
    """58: Names with apostrophes or hyphens (N'Guessan, Agbo-Zégué), single-name persons -> Store as sent."""
    rec = record(oru(pid=pid_with(f5=pid5)))
    assert_ok(rec)
    assert rec["patient"]["family_name"] == family
    assert rec["patient"]["given_name"] == given


# ---------------------------------------------------------------------------------------------
# Issue texts never carry patient data

def test_issue_messages_never_contain_field_values():
    """Issue texts never contain field values (patient data)."""
    secret_dob = "19870231"
    secret_obs = "98,6"
    rec = record(build(
        msh(dt="20241399", enc="^~", control=""),
        f"PID|1||||^||{secret_dob}|Féminin|||HOPITAL-KPALIME",
        "pid|9",
        obx(secret_obs, observed="20991340"),
        obx("Sénamé<7", vt="NM"),
    ))
    issues = rec["errors"] + rec["warnings"]
    got = {i["code"] for i in issues}
    assert {"INVALID_DATE", "MISSING_PATIENT_ID", "MISSING_PATIENT_NAME", "DECIMAL_COMMA", "NOT_NUMERIC",
            "SHORT_ENCODING_CHARACTERS", "MISSING_CONTROL_ID", "MISSING_SEGMENT", "MALFORMED_SEGMENT_ID"} <= got
    texts = " ".join(i["message"] for i in issues)
    for value in (secret_dob, "1987", secret_obs, "98", "Sénamé", "20991340", "20241399", "HOPITAL-KPALIME",
                  "Féminin"):
        assert value not in texts
