"""HL7 acknowledgements (original and enhanced mode) built with the sender's own delimiters.

Input: the received message's MSH fields (or nothing, when no MSH could be read) and an outcome.
Output: the ACK bytes: MSH with sending/receiving application and facility swapped, MSH-9
``ACK^<event>^ACK``, MSH-11/MSH-12 echoed, MSA-1 the code and MSA-2 the received MSH-10, and an
ERR segment with an HL7 table 0357 code when the outcome is an error. Texts never quote message
content (patient data). Also the reading side, for replies to what we send: ``control_id_of`` (the
MSH-10 a reply must echo) and ``parse_ack`` (MSA-1, MSA-2 and the error code).
"""
from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass

from . import charset as _charset
from .parser import DEFAULT_DELIMITERS, Delimiters, Message

ERROR_TEXT = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    104: "Value too long",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
_seq = itertools.count(1)
_ERR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,20}$")


@dataclass
class AckPlan:
    """What to answer: ``code`` (AA/AE/AR/CA/CE/CR) or None for "send nothing"."""

    code: str | None
    hl7_error: int = 0
    location: str = ""
    text: str = ""


def ack_mode(msg: Message | None) -> str:
    """'original' or 'enhanced' (MSH-15 or MSH-16 present, HL7 2.x chapter 2)."""
    if msg is None or not msg.segments or msg.segments[0][0] != "MSH":
        return "original"
    msh = msg.segments[0]
    accept = msh[14] if len(msh) > 14 else ""
    app = msh[15] if len(msh) > 15 else ""
    return "enhanced" if (accept or app) else "original"


def accept_ack_wanted(msg: Message | None, success: bool) -> bool:
    """MSH-15 in enhanced mode: AL always, NE never, ER only on error, SU only on success."""
    if ack_mode(msg) != "enhanced":
        return True
    msh = msg.segments[0]
    accept = (msh[14] if len(msh) > 14 else "").strip().upper() or "AL"
    return accept == "AL" or (accept == "ER" and not success) or (accept == "SU" and success)


def to_enhanced(code: str) -> str:
    return {"AA": "CA", "AE": "CE", "AR": "CR"}.get(code, code)


_LOCATION = re.compile(r"^([A-Z0-9]{3})(?:\[(\d+)\])?(?:-(\d+))?$")
_PROC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[os.getpid() % 36]  # two listener processes, two series


def _location(location: str | None) -> tuple[str, str, str]:
    """Our issue locations ("PID-7", "OBX[2]-14", "MSH-10", "PID") as (segment, sequence, field)."""
    m = _LOCATION.match(location or "")
    if not m:
        return "", "", ""
    return m.group(1), m.group(2) or "1", m.group(3) or ""


def _ack_type(version: str, event: str, cs: str) -> str:
    """MSH-9 of the ACK in the sender's version: one component in 2.1, message type and event up
    to 2.3, the message structure (third component) from 2.3.1 on."""
    if not event or version.startswith("2.1"):
        return "ACK"
    return f"ACK{cs}{event}" if version < "2.3.1" else f"ACK{cs}{event}{cs}ACK"


def build_ack(msg: Message | None, plan: AckPlan, now: float | None = None) -> bytes:
    d: Delimiters = msg.delims if msg is not None else DEFAULT_DELIMITERS
    fs, cs = d.field, d.component
    msh = msg.segments[0] if msg is not None and msg.segments and msg.segments[0][0] == "MSH" else None

    def f(n: int) -> str:  # MSH-n of the received message
        if msh is None:
            return ""
        return msh[n - 1] if n - 1 < len(msh) else ""

    ts = time.strftime("%Y%m%d%H%M%S", time.gmtime(now or time.time()))
    event = f(9).split(cs)[1] if cs in f(9) else ""
    version = f(12) or "2.5"
    # MSH-10 holds 20 characters up to 2.6: A + YYMMDDhhmmss + a process digit + a counter.
    control = f"A{ts[2:]}{_PROC}{next(_seq) % 1_000_000:06d}"
    header = [
        "MSH", d.encoding_characters, f(5), f(6), f(3), f(4), ts, "", _ack_type(version, event, cs),
        control, f(11) or "P", version,
    ]
    codec = msg.codec if msg is not None and msg.codec else "utf-8"
    charset = f(18)
    if charset:
        header += ["", "", "", "", "", charset]
    segs = [fs.join(header)]
    msa = ["MSA", plan.code or "AR", f(10)]
    if plan.hl7_error and plan.text and version < "2.5":
        msa.append(plan.text)  # MSA-3 text: withdrawn from 2.5 on, expected by older senders
    segs.append(fs.join(msa))
    if plan.hl7_error:
        text = plan.text or ERROR_TEXT.get(plan.hl7_error, "Error")
        code = f"{plan.hl7_error}{cs}{ERROR_TEXT.get(plan.hl7_error, '')}{cs}HL70357"
        seg, seq, fld = _location(plan.location)
        if version >= "2.5":
            # ERR-2 (ERL): segment ID ^ sequence ^ field position.
            loc = cs.join(p for p in (seg, seq, fld) if p) if seg else ""
            segs.append(fs.join(["ERR", "", loc, code, "E", "", "", "", text]))
        else:
            # ERR-1 (ELD): segment ID ^ sequence ^ field position ^ code (CE, in subcomponents).
            sc = d.subcomponent or "&"
            segs.append(fs.join(["ERR", cs.join((seg, seq if seg else "", fld, code.replace(cs, sc)))]))
    text = "\r".join(segs) + "\r"
    if charset and not text.isascii() and _label_codec(charset, cs) != codec and _charset.msh18_name(codec):
        # The ACK is written in the codec the message was read with (the sender's label was wrong:
        # UTF-8 labelled 8859/1), so its MSH-18 names that codec, not the sender's label.
        segs[0] = fs.join(header[:17] + [_charset.msh18_name(codec)])
        text = "\r".join(segs) + "\r"
    return text.encode(codec, errors="replace")


def _label_codec(label: str, component: str) -> str | None:
    try:
        return _charset.normalize_codec(label.split(component, 1)[0])
    except (LookupError, _charset.UnsupportedCharset):
        return None


# Reading ACKs (the replies to what we send: outbound delivery and ``hl7ics send``)

def control_id_of(payload: bytes) -> str | None:
    """MSH-10 of ``payload`` (what the ACK's MSA-2 must echo), or None."""
    body = payload[3:] if payload[:3] == b"\xef\xbb\xbf" else payload
    if body[:3] != b"MSH" or len(body) < 4:
        return None
    first = re.split(rb"\r\n|\r|\n", body, maxsplit=1)[0]
    fields = first.split(first[3:4])
    if len(fields) <= 9:
        return None
    return fields[9].decode("latin-1").strip() or None


def parse_ack(ack: bytes) -> tuple[str | None, str | None, str | None]:
    """(MSA-1, MSA-2, error code) of an ACK. The error code is ERR-3.1 (2.5 and later) or the code
    inside ERR-1 (earlier versions), kept only if it looks like a code."""
    s = ack.decode("latin-1")
    segs = re.split(r"\r\n|\r|\n", s)
    msh = segs[0] if segs and segs[0].startswith("MSH") and len(segs[0]) > 7 else "MSH|^~\\&"
    fs, cs, ss = msh[3], msh[4], msh[7] if len(msh) > 7 else "&"
    code = ctrl = err = None
    for seg in segs:
        if seg.startswith("MSA" + fs) and code is None:
            f = seg.split(fs)
            code = f[1].strip().upper() or None
            ctrl = f[2].strip() if len(f) > 2 else None
        elif seg.startswith("ERR" + fs) and err is None:
            f = seg.split(fs)
            if len(f) > 3 and f[3]:
                err = f[3].split(cs)[0]
            elif len(f) > 1 and f[1]:
                c = f[1].split(cs)
                err = c[3].split(ss)[0] if len(c) > 3 else None
            err = err.strip() if err else None
            if err and not _ERR_CODE.match(err):
                err = None
    return code, ctrl, err
