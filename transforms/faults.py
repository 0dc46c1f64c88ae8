"""Known data-quality faults planted in well-formed messages, so tests, the benchmark and the demo
can check that exactly the damaged messages are quarantined, each with the expectation it breaks.

Input: raw HL7 messages (bytes, any segment terminator, ASCII-compatible charset) and a share.
Output: the messages with that share damaged in one field each, and ``{position: expectation}``.
A fault edits one field and never the MSH, so the message still parses: it is the data-quality
step, not the parser, that must catch it.
"""
from __future__ import annotations

import random
import re

_TERM = re.compile(rb"(\r\n|\r|\n)")


def _segments(raw: bytes) -> tuple[list[list[bytes]], list[bytes], bytes]:
    sep = raw[3:4]
    parts = _TERM.split(raw)
    segs = [p.split(sep) for p in parts[0::2]]
    terms = parts[1::2]
    return segs, terms, sep


def _join(segs: list[list[bytes]], terms: list[bytes], sep: bytes) -> bytes:
    out = []
    for i, s in enumerate(segs):
        out.append(sep.join(s))
        if i < len(terms):
            out.append(terms[i])
    return b"".join(out)


def _set(seg: list[bytes], n: int, value: bytes) -> None:
    while len(seg) <= n:
        seg.append(b"")
    seg[n] = value


def _msh9(segs) -> tuple[bytes, bytes]:
    msh = segs[0]
    if len(msh) < 9:
        return b"", b""
    parts = msh[8].split(msh[1][:1] if len(msh) > 1 and msh[1] else b"^")
    return parts[0], (parts[1] if len(parts) > 1 else b"")


def _first(segs, sid: bytes):
    return next((s for s in segs if s and s[0] == sid), None)


def _result_obx(segs):
    """The first OBX of a lab result (ORU): other messages' OBX are not lab results."""
    return _first(segs, b"OBX") if _msh9(segs)[0] == b"ORU" else None


def _obx3(segs, comp):
    obx = _result_obx(segs)
    if obx is None:
        return False
    _set(obx, 3, b"")
    return True


def _obx_nm(segs, comp):
    if _msh9(segs)[0] != b"ORU":
        return False
    for s in segs:
        if s and s[0] == b"OBX" and len(s) > 5 and s[2] == b"NM" and s[5]:
            s[5] = b"NONMESURABLE"
            return True
    return False


def _obx11(segs, comp):
    obx = _result_obx(segs)
    if obx is None:
        return False
    _set(obx, 11, b"Z")
    return True


def _sex(segs, comp):
    pid = _first(segs, b"PID")
    if pid is None or len(pid) < 4 or not pid[3]:
        return False
    _set(pid, 8, b"Q")
    return True


def _adt_visit(segs, comp):
    mtype, event = _msh9(segs)
    pv1 = _first(segs, b"PV1")
    if mtype != b"ADT" or event not in (b"A01", b"A02", b"A03") or pv1 is None or len(pv1) < 20 or not pv1[19]:
        return False
    pv1[19] = b""
    return True


def _patient_class(segs, comp):
    mtype, _ = _msh9(segs)
    pv1 = _first(segs, b"PV1")
    if mtype != b"ADT" or pv1 is None or len(pv1) < 20 or not pv1[19]:
        return False
    _set(pv1, 2, b"Z")
    return True


def _member_id(segs, comp):
    in1 = _first(segs, b"IN1")
    if in1 is None or len(in1) < 4 or not in1[3].startswith(b"INAM"):
        return False
    bad = b"INAM-X12"
    if len(in1) > 49 and in1[49]:
        in1[49] = bad + in1[49][in1[49].find(comp):] if comp in in1[49] else bad
    if len(in1) > 36 and in1[36]:
        in1[36] = bad
    return True


# Expectation name (expectations/*.json) -> how to break a message so that it fails only that one.
FAULTS = {
    "obx3_present": _obx3,
    "nm_value_numeric": _obx_nm,
    "obx11_in_hl7_table_0085": _obx11,
    "sex_in_hl7_table_0001": _sex,
    "visit_number_present": _adt_visit,
    "patient_class_in_hl7_table_0004": _patient_class,
    "inam_member_id_format": _member_id,
}


def break_message(raw: bytes, fault: str) -> bytes | None:
    """``raw`` with ``fault`` applied, or None when the message has nothing that fault can break."""
    if not raw.startswith(b"MSH") or len(raw) < 8:
        return None
    segs, terms, sep = _segments(raw)
    comp = segs[0][1][:1] if len(segs[0]) > 1 and segs[0][1] else b"^"
    if not FAULTS[fault](segs, comp):
        return None
    return _join(segs, terms, sep)


def inject(messages: list[bytes], share: float, seed: int = 7) -> tuple[list[bytes], dict[int, str]]:
    """Damage about ``share`` of ``messages``, each with one of the faults that applies to it."""
    rnd = random.Random(seed)
    out: list[bytes] = []
    planted: dict[int, str] = {}
    for i, raw in enumerate(messages):
        if rnd.random() < share:
            options = [(name, b) for name in FAULTS if (b := break_message(raw, name)) is not None]
            if options:
                name, broken = options[int(rnd.random() * len(options))]
                out.append(broken)
                planted[i] = name
                continue
        out.append(raw)
    return out, planted
