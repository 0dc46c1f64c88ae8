"""hl7apy structural validation (onboarding check), off the hot path."""
from __future__ import annotations

from pathlib import Path

from transforms.parser import iter_file
from transforms.validate import validate_structure

FIX = Path(__file__).parent / "fixtures" / "hl7"


def _messages():
    with open(FIX / "togo_adt_oru.hl7", "rb") as fh:
        return [rm.raw for rm in iter_file(fh)]


def test_valid_messages_pass():
    msgs = _messages()
    assert validate_structure(msgs[1]) == []  # ADT^A03
    assert validate_structure(msgs[2]) == []  # ORU^R01


def test_missing_required_field_is_reported_without_values():
    a01 = _messages()[0]  # its DG1 lacks DG1-6 (diagnosis type), required in 2.5.1
    issues = validate_structure(a01)
    assert issues and issues[0]["code"] == "STRUCTURE_INVALID" and "DG1" in issues[0]["detail"]
    assert "Ɖogbé" not in repr(issues) and "CHU000123" not in repr(issues)


def test_garbage_is_a_parse_issue_not_an_exception():
    issues = validate_structure(b"MSH|^~\\&|A|B|C|D|2026||ZZZ^Q99|1|P|2.5\rPID|1||x\r")
    assert issues and issues[0]["code"] in ("STRUCTURE_PARSE", "STRUCTURE_INVALID")
