"""Turn a tokenized ``Message`` into the canonical JSON record (``hl7ics parse`` output).

Input: ``parser.Message`` (plus where it came from). Output: a plain dict with the header fields,
``patient``, ``observations``, ``status`` ("ok" | "error"), ``errors`` and ``warnings``. The record
schema is documented in docs/parser.md and is the contract for the warehouse loader.

Lenient by design: the record is always produced. What makes a message unusable (no MSH, no
MSH-9/MSH-10, unsupported version or charset, an invalid required date, a missing required segment)
is an *error*; what is odd but loadable is a *warning*. Issue texts never contain field values.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from .datetimes import InvalidDate, parse_dtm
from .parser import Delimiters, Issue, Message, ParseIssue, components, leading_junk, unescape

_DECIMAL_COMMA = re.compile(r"[+-]?[0-9]+,[0-9]+")
SUPPORTED_VERSION = re.compile(r"^2\.[1-8](?:\.\d+)?")

# MSH-9.3 is absent before 2.3.1; these events share another event's structure.
_STRUCTURE_BY_EVENT = {
    "ADT": {**{e: "ADT_A01" for e in ("A01", "A04", "A08", "A13")}, "A02": "ADT_A02", "A03": "ADT_A03",
            **{e: "ADT_A05" for e in ("A05", "A14", "A28", "A31")}, **{e: "ADT_A06" for e in ("A06", "A07")},
            **{e: "ADT_A09" for e in ("A09", "A10", "A11", "A12")}, "A17": "ADT_A17",
            **{e: "ADT_A39" for e in ("A39", "A40", "A41", "A42")}},
    "SIU": {f"S{n}": "SIU_S12" for n in range(12, 27)},
    "MDM": {"T01": "MDM_T01", "T02": "MDM_T02", "T03": "MDM_T01", "T04": "MDM_T02", "T05": "MDM_T01",
            "T06": "MDM_T02", "T07": "MDM_T01", "T08": "MDM_T02", "T09": "MDM_T01", "T10": "MDM_T02",
            "T11": "MDM_T01"},
}

# Segments without which a message of this type cannot be loaded (HL7 table 0357 code 100).
_REQUIRED_SEGMENTS = {
    "ADT": ("PID",), "ORU": ("OBR",), "ORM": ("ORC",), "OML": ("ORC",), "RDE": ("ORC", "RXE"),
    "RDS": ("ORC", "RXD"), "DFT": ("PID",), "VXU": ("PID",), "SIU": ("SCH",), "MDM": ("TXA",),
}
_ADT_NEEDS_PV1 = {"A01", "A02", "A03", "A04", "A06", "A07", "A08", "A11", "A12", "A13"}


def message_structure(msg_type: str, event: str, msh9_3: str) -> str:
    if msh9_3:
        return msh9_3
    if not msg_type:
        return ""
    if msg_type == "ACK":
        return "ACK"
    return _STRUCTURE_BY_EVENT.get(msg_type, {}).get(event, f"{msg_type}_{event}" if event else msg_type)


def _date(value: str, location: str, issues: list[Issue], required: bool) -> str | None:
    if not value or value == '""':  # '""' is HL7's explicit null ("clear the value"), not a bad date
        return None
    try:
        return parse_dtm(value)
    except InvalidDate as exc:
        issues.append(ParseIssue("INVALID_DATE", location, f"invalid date/time ({exc})", 102,
                                 "error" if required else "warning"))
        return None


def _number(value: str, location: str, issues: list[Issue]) -> float | None:
    v = value.strip()
    if not v:
        return None
    try:
        f = float(v)
        if f == f and f not in (_INF, -_INF) and "_" not in v:
            return f
    except ValueError:
        pass
    if _DECIMAL_COMMA.fullmatch(v):
        issues.append(ParseIssue("DECIMAL_COMMA", location, "decimal comma normalised to a point", 102, "warning"))
        return float(v.replace(",", "."))
    issues.append(ParseIssue("NOT_NUMERIC", location, "NM value is not a number; kept as text", 102, "warning"))
    return None


def _f(seg: list[str], n: int) -> str:
    return seg[n] if n < len(seg) else ""


def patient_of(msg: Message, issues: list[Issue]) -> dict | None:
    pid = msg.first("PID")
    if pid is None:
        return None
    d = msg.delims
    codec = msg.codec
    comp, sub = d.component, d.subcomponent
    ident = _f(pid, 3)
    if not ident.strip(comp + d.repetition + " "):
        # v2.1/2.2 senders often put the only identifier in PID-2 (external) or PID-4 (alternate).
        for alt in (2, 4):
            if _f(pid, alt).strip(comp + " "):
                ident = _f(pid, alt)
                issues.append(ParseIssue("ID_FROM_OLD_FIELD", f"PID-{alt}", "patient identifier taken from a pre-2.3 field", 0, "warning"))
                break
        else:
            issues.append(ParseIssue("MISSING_PATIENT_ID", "PID-3", "patient identifier list is empty", 101))
    if ident.startswith(d.repetition) or (d.repetition in ident and not ident.split(comp, 1)[0]):
        # Take the first repetition that actually carries an identifier.
        ident = next((r for r in ident.split(d.repetition) if r.split(comp, 1)[0].strip()), "")
        if not ident:
            issues.append(ParseIssue("MISSING_PATIENT_ID", "PID-3", "patient identifier list is empty", 101))
    cx = components(ident, d)
    pid_value = unescape(cx[0], d, codec, msg.flags).strip()
    if not pid_value and ident.strip(comp + d.repetition + " ") and not any(i.code == "MISSING_PATIENT_ID" for i in issues):
        issues.append(ParseIssue("MISSING_PATIENT_ID", "PID-3", "identifier (CX.1) is empty", 101))
    if "\ufffd" in pid_value:
        # Bytes invalid in the declared charset were replaced: the ID no longer says which patient
        # (bad input 37). Held, and the sender gets an AE, rather than a patient made up.
        issues.append(ParseIssue("DAMAGED_PATIENT_ID", "PID-3", "identifier holds bytes that are invalid in the "
                                 "message's character set", 102))
    authority = unescape(cx[3].split(sub, 1)[0], d, codec, msg.flags) if len(cx) > 3 and cx[3] else ""
    xpn = components(_f(pid, 5), d)
    family = unescape(xpn[0].split(sub, 1)[0], d, codec, msg.flags) if xpn[0] else ""
    given = unescape(xpn[1], d, codec, msg.flags) if len(xpn) > 1 else ""
    if not family and not given:
        issues.append(ParseIssue("MISSING_PATIENT_NAME", "PID-5", "patient name is empty", 101, "warning"))
    dob_raw = _f(pid, 7)
    sex = _f(pid, 8)
    for name, v in (("PID-7", dob_raw), ("PID-8", sex)):
        if d.repetition in v:
            issues.append(ParseIssue("REPETITION_IGNORED", name, "repetitions in a non-repeating field; first kept", 0, "warning"))
    dob_raw = _first(dob_raw, d)
    birth = _date(dob_raw, "PID-7", issues, required=True) if dob_raw else None
    sex = _first(sex, d)
    return {
        "id": pid_value or None,
        "id_authority": authority or None,
        "family_name": family or None,
        "given_name": given or None,
        "birth_date": birth[:10] if birth else None,
        "sex": sex or None,
    }


_INF = float("inf")
_CODED = frozenset(("CE", "CWE", "CNE", "CF", "CD", "CX"))


def observations_of(msg: Message, issues: list[Issue]) -> list[dict]:
    obxs = msg.index.get("OBX")
    if not obxs:
        return []
    d = msg.delims
    codec = msg.codec
    comp, rep, sub, esc = d.component, d.repetition, d.subcomponent, d.escape
    out = []
    for n, obx in enumerate(obxs, 1):
        ln = len(obx)
        vt = obx[2] if ln > 2 else ""
        if comp in vt:
            vt = vt.split(comp, 1)[0]
        vt = vt.strip()
        code = obx[3] if ln > 3 else ""
        cc = code.split(comp)
        raw_value = obx[5] if ln > 5 else ""
        if vt in _CODED:
            parts = raw_value.split(rep, 1)[0].split(comp)
            value = parts[0] or (parts[1] if len(parts) > 1 else "")
            if esc in value:
                value = unescape(value, d, codec, msg.flags)
        elif vt == "SN":
            value = unescape("".join(raw_value.split(rep, 1)[0].split(comp)), d, codec, msg.flags)
        elif vt == "ED":
            # Encapsulated data: component 5 holds the (base64) payload.
            parts = raw_value.split(comp)
            value = parts[4] if len(parts) > 4 else raw_value
        elif rep in raw_value:
            value = "\n".join(unescape(r, d, codec, msg.flags) for r in raw_value.split(rep))
        elif esc in raw_value:
            value = unescape(raw_value, d, codec, msg.flags)
        else:
            value = raw_value
        numeric = None
        if vt == "NM":
            try:
                numeric = float(value) if value else None
                if numeric is not None and (numeric != numeric or numeric in (_INF, -_INF) or "_" in value):
                    raise ValueError  # "nan", "inf" and "1_000" are Python literals, not HL7 numbers
            except ValueError:
                numeric = _number(value, f"OBX[{n}]-5", issues)
        elif vt == "SN":
            parts = raw_value.split(comp)
            if (not parts[0] or parts[0] == "=") and 1 < len(parts) < 3:
                numeric = _number(parts[1], f"OBX[{n}]-5", issues)
        units = obx[6] if ln > 6 else ""
        if units:
            uc = units.split(comp)
            units = (uc[0] or (uc[1] if len(uc) > 1 else "")).split(sub, 1)[0]
            if esc in units:
                units = unescape(units, d, codec)
        ts = _first(obx[14], d) if ln > 14 else ""
        rr = obx[7] if ln > 7 else ""
        flag = obx[8] if ln > 8 else ""
        c0 = cc[0]
        text_ = cc[1] if len(cc) > 1 else ""
        out.append({
            "set_id": obx[1] if ln > 1 and obx[1] else str(n),
            "value_type": vt or None,
            "code": (unescape(c0, d, codec) if esc in c0 else c0) or None,
            "code_system": (cc[2] if len(cc) > 2 else "") or None,
            "text": (unescape(text_, d, codec) if esc in text_ else text_) or None,
            "value": value if value != "" else None,
            "value_numeric": numeric,
            "units": units or None,
            "reference_range": (unescape(rr, d, codec) if esc in rr else rr) or None,
            "abnormal_flag": _first(flag, d) or None,
            "status": _first(obx[11], d) if ln > 11 and obx[11] else None,
            "observed_at": _date(ts, f"OBX[{n}]-14", issues, required=True) if ts else None,
        })
    return out


_EMPTY_HEADER = ("control_id", "message_type", "trigger_event", "message_structure", "version",
                 "sending_application", "sending_facility", "receiving_application", "receiving_facility",
                 "message_datetime", "processing_id", "accept_ack", "application_ack", "charset_declared")


def _first(value: str, d: Delimiters) -> str:
    if d.repetition in value:
        value = value.split(d.repetition, 1)[0]
    if d.component in value:
        value = value.split(d.component, 1)[0]
    return value


def header_of(msg: Message, issues: list[Issue]) -> dict:
    msh = msg.segments[0] if msg.segments and msg.segments[0][0] == "MSH" else None
    if msh is None:
        return dict.fromkeys(_EMPTY_HEADER)
    d = msg.delims
    # MSH-i is msh[i - 1]: MSH-1 is the field separator itself.
    m9 = _f(msh, 8).split(d.component)
    mtype = m9[0].strip()
    event = m9[1].strip() if len(m9) > 1 else ""
    if not mtype:
        issues.append(ParseIssue("MISSING_MESSAGE_TYPE", "MSH-9", "message type is empty", 101))
    elif not event and mtype != "ACK":
        issues.append(ParseIssue("MISSING_TRIGGER_EVENT", "MSH-9", "trigger event is empty", 101, "warning"))
    control = _f(msh, 9).strip()
    if not control:
        issues.append(ParseIssue("MISSING_CONTROL_ID", "MSH-10", "message control ID is empty", 101))
    vraw = _first(_f(msh, 11), d).strip()
    if not vraw:
        issues.append(ParseIssue("MISSING_VERSION", "MSH-12", "version ID is empty", 101))
        version = None
    elif vraw in _KNOWN_VERSIONS:
        version = vraw
    else:
        vm = SUPPORTED_VERSION.match(vraw)
        if not vm:
            issues.append(ParseIssue("UNSUPPORTED_VERSION", "MSH-12", "version is not 2.1 to 2.8", 203))
            version = vraw
        else:
            version = vm.group(0)
            if version != vraw:
                issues.append(ParseIssue("NONSTANDARD_VERSION", "MSH-12", "version has a non-standard suffix", 0, "warning"))
    dt = _first(_f(msh, 6), d)
    if not dt:
        issues.append(ParseIssue("MISSING_DATETIME", "MSH-7", "message date/time is empty", 101, "warning"))
    return {
        "control_id": control or None,
        "message_type": mtype or None,
        "trigger_event": event or None,
        "message_structure": message_structure(mtype, event, m9[2].strip() if len(m9) > 2 else "") or None,
        "version": version,
        "sending_application": _first(_f(msh, 2), d) or None,
        "sending_facility": _first(_f(msh, 3), d) or None,
        "receiving_application": _first(_f(msh, 4), d) or None,
        "receiving_facility": _first(_f(msh, 5), d) or None,
        # MSH-7 only labels the message; our own received-at time is authoritative (bad input 51).
        "message_datetime": _date(dt, "MSH-7", issues, required=False) if dt else None,
        "processing_id": _first(_f(msh, 10), d) or None,
        "accept_ack": _f(msh, 14) or None,
        "application_ack": _f(msh, 15) or None,
        "charset_declared": _first(_f(msh, 17), d) or None,
    }


_KNOWN_VERSIONS = frozenset(("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8",
                             "2.8.1", "2.8.2"))


def check_structure(msg: Message, header: dict, issues: list[Issue]) -> None:
    mtype = header.get("message_type")
    if not mtype:
        return
    required = _REQUIRED_SEGMENTS.get(mtype, ())
    if mtype == "ADT":
        event = header.get("trigger_event") or ""
        if event in _ADT_NEEDS_PV1:
            required = required + ("PV1",)
        elif event in ("A40", "A41", "A42", "A39"):
            required = required + ("MRG",)
    index = msg.index
    for sid in required:
        if sid not in index:
            issues.append(ParseIssue("MISSING_SEGMENT", sid, f"required segment {sid} is missing", 100))
    for sid in index:  # distinct segment IDs only: a handful per message
        if not (len(sid) == 3 and sid.isalnum() and sid.isupper() and sid.isascii()):
            issues.append(ParseIssue("MALFORMED_SEGMENT_ID", "segment", "segment ID is not three upper-case letters/digits", 100, "warning"))
            break


def to_record(msg: Message, source: dict | None = None, extra_issues: Sequence[Issue] = (),
              sha256: str | None = None) -> dict:
    """The canonical record for one message. ``sha256``: the hash of its bytes, when the caller
    already has it (the loader hashes the exact bytes and the content in one pass)."""
    issues: list[Issue] = list(msg.issues)
    header = header_of(msg, issues)
    has_msh = header["control_id"] is not None or (msg.segments and msg.segments[0][0] == "MSH")
    if has_msh:
        check_structure(msg, header, issues)
    patient = patient_of(msg, issues)
    obs = observations_of(msg, issues)
    issues.extend(extra_issues)
    errors = [i.as_dict() for i in issues if i.severity == "error"]
    warnings = [i.as_dict() for i in issues if i.severity != "error"]
    rec = dict(header)
    rec.update({
        "charset": msg.codec,
        "source": source,
        "sha256": sha256 or msg.sha256,
        "patient": patient,
        "observations": obs,
        "status": "error" if errors else "ok",
        "errors": errors,
        "warnings": warnings,
        "flags": list(dict.fromkeys(msg.flags)),
        "segment_count": len(msg.segments),
    })
    return rec


# ---------------------------------------------------------------------------------------------
# Files -> records
# The same line starts as parser._starts finds (a BOM may precede the segment name). One pattern
# per line ending: a pattern that starts with a literal byte is searched for at memory speed,
# where ``[\r\n]`` or ``^|`` in front made the regex engine try every position.
_BATCH_NAME = rb"(?:\xef\xbb\xbf)?(?:FHS|BHS|BTS|FTS)[^A-Za-z0-9\r\n]"
_BATCH_AFTER = (re.compile(b"\r" + _BATCH_NAME), re.compile(b"\n" + _BATCH_NAME))
_BATCH_LONGEST = 8  # a line end, a BOM, the name and the byte after it


def has_batch_segments(stream, read_size: int = 1 << 20) -> bool:
    """Whether any line starts with FHS/BHS/BTS/FTS (a streaming byte scan; no decoding)."""
    try:
        # The splitter's first unit starts after any leading whitespace and BOMs: so does the
        # first line here, decided once a read goes past them (or the stream ends).
        buf = stream.read(read_size)
        lead = leading_junk(buf, not buf)
        while lead is None:
            more = stream.read(read_size)
            buf += more
            lead = leading_junk(buf, not more)
        buf = buf[lead:]
        tail = b"\n"  # the first line starts at the start
        while buf:
            window = tail + buf
            if any(p.search(window) for p in _BATCH_AFTER):
                return True
            tail = window[1 - _BATCH_LONGEST:]  # where a match straddling two reads starts
            buf = stream.read(read_size)
        return False
    finally:
        stream.seek(0)


def envelope_issues(stream) -> dict:
    """Pre-pass over a batch file: {batch number or None (whole file): [ParseIssue]}."""
    from .parser import Envelope, iter_file

    env = Envelope()
    for _ in iter_file(stream, env):
        pass
    stream.seek(0)
    out: dict = {}
    for batch, issue in env.issues:
        out.setdefault(batch, []).append(issue)
    return out


def iter_parsed(stream, facility_charset: str | None = None, parse_messages: bool = True):
    """Yield (RawMessage, Message | None, batch_issues) for every message of a seekable binary stream.

    ``parse_messages=False`` skips tokenizing (the loader parses later, once).

    Batch files get a streaming pre-pass so that a count mismatch is known before any message is
    used (a mismatch usually means a truncated transfer: the whole file is held back, bad input 60).
    """
    from .parser import iter_file, parse

    by_batch: dict = {}
    batch = has_batch_segments(stream)
    if batch:
        by_batch = envelope_issues(stream)
    file_level = by_batch.get(None, [])
    for rm in iter_file(stream, batch_segments=batch):
        extra = list(file_level)
        # Any batch problem holds back the whole file, not only the batch concerned.
        for b, lst in by_batch.items():
            if b is not None:
                extra.extend(lst)
        yield rm, parse(rm.raw, facility_charset) if parse_messages else None, extra


def iter_file_records(path: str, facility_charset: str | None = None):
    """Canonical records for every message in a file; never raises for content problems."""
    with open(path, "rb") as fh:
        for rm, msg, extra in iter_parsed(fh, facility_charset):
            source = {"file": path, "index": rm.index, "offset": rm.offset}
            if rm.batch is not None:
                source["batch"] = rm.batch
            try:
                yield to_record(msg, source, extra)
            except Exception as exc:  # a parser bug must not hide the message: report it as an error
                yield internal_error_record(msg, source, exc)


def internal_error_record(msg: Message, source: dict, exc: Exception) -> dict:
    return {
        "control_id": None, "message_type": None, "trigger_event": None, "message_structure": None,
        "version": None, "sending_application": None, "sending_facility": None,
        "receiving_application": None, "receiving_facility": None, "message_datetime": None,
        "charset": msg.codec, "source": source, "sha256": msg.sha256, "patient": None, "observations": [],
        "status": "error",
        "errors": [ParseIssue("INTERNAL_ERROR", "", f"parser failure ({type(exc).__name__})", 207).as_dict()],
        "warnings": [], "flags": msg.flags, "segment_count": len(msg.segments),
    }
