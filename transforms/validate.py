"""Structural validation with hl7apy: where its knowledge of HL7 message structures pays.

hl7apy builds a full object tree (about 6 ms a message), so it is *not* on the ingest hot path.
It is used (docs/parser.md, "Where hl7apy is used") to:
- check a facility's interface during onboarding (``hl7ics validate FILE...``): are the segments in
  the order and groups the declared version requires, are required children present, are data
  types valid? A facility whose sample fails is fixed before it goes live;
- validate messages the service itself builds in a target version (routing, a later issue), since
  a message we send must be right, and there are few of them.

Input: raw bytes (one message) and the codec to decode them. Output: a list of issues, each with an
hl7apy exception class and the structure names it mentions; never the values (patient data).
"""
from __future__ import annotations

import re

# Structure names only (ADT_A01, DG1.DG1_6, PID_5): a bare three-letter word could be a name.
_NAMES = re.compile(r"\b[A-Z][A-Z0-9]{2}(?:_[A-Z0-9]+|\.[A-Z0-9_]+)+\b")


def _safe(exc: Exception) -> str:
    names = sorted(set(_NAMES.findall(str(exc))))[:8]
    return type(exc).__name__ + (f" ({', '.join(names)})" if names else "")


def validate_structure(raw: bytes, codec: str = "utf-8") -> list[dict]:
    """Strict hl7apy parse with group detection, then ``validate()``; [] means valid."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    text = raw.decode(codec, errors="replace").replace("\r\n", "\r").replace("\n", "\r").lstrip("\ufeff")
    try:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    except Exception as exc:  # hl7apy raises many unrelated types; all mean "not valid"
        return [{"code": "STRUCTURE_PARSE", "detail": _safe(exc)}]
    try:
        msg.validate()
    except Exception as exc:
        return [{"code": "STRUCTURE_INVALID", "detail": _safe(exc), "structure": msg.name}]
    return []
