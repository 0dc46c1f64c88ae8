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

from .datetimes import InvalidDate, parse_dtm
from .parser import Message, ParseIssue, components, field, unescape

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


def _date(value: str, location: str, issues: list[ParseIssue], required: bool) -> str | None:
    if not value:
        return None
    try:
        return parse_dtm(value)
    except InvalidDate as exc:
        issues.append(ParseIssue("INVALID_DATE", location, f"invalid date/time ({exc})", 102,
                                 "error" if required else "warning"))
        return None


def _number(value: str, location: str, issues: list[ParseIssue]) -> float | None:
    v = value.strip()
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        pass
    if "," in v and v.replace(",", "", 1).replace("-", "", 1).isdigit():
        issues.append(ParseIssue("DECIMAL_COMMA", location, "decimal comma normalised to a point", 102, "warning"))
        return float(v.replace(",", "."))
    issues.append(ParseIssue("NOT_NUMERIC", location, "NM value is not a number; kept as text", 102, "warning"))
    return None


def patient_of(msg: Message, issues: list[ParseIssue]) -> dict | None:
    pid = msg.first("PID")
    if pid is None:
        return None
    d = msg.delims
    codec = msg.codec
    ident = field(pid, 3)
    loc = "PID-3"
    if not ident.strip(d.component + d.repetition + " "):
        # v2.1/2.2 senders often put the only identifier in PID-2 (external) or PID-4 (alternate).
        for alt in (2, 4):
            if field(pid, alt).strip(d.component + " "):
                ident, loc = field(pid, alt), f"PID-{alt}"
                issues.append(ParseIssue("ID_FROM_OLD_FIELD", loc, "patient identifier taken from a pre-2.3 field", 0, "warning"))
                break
        else:
            issues.append(ParseIssue("MISSING_PATIENT_ID", "PID-3", "patient identifier list is empty", 101))
    cx = components(ident, d)
    pid_value = unescape(cx[0], d, codec).strip() if cx else ""
    authority = ""
    if len(cx) > 3 and cx[3]:
        authority = unescape(cx[3].split(d.subcomponent, 1)[0], d, codec)
    xpn = components(field(pid, 5), d)
    family = unescape(xpn[0].split(d.subcomponent, 1)[0], d, codec) if xpn and xpn[0] else ""
    given = unescape(xpn[1], d, codec) if len(xpn) > 1 else ""
    if not family and not given:
        issues.append(ParseIssue("MISSING_PATIENT_NAME", "PID-5", "patient name is empty", 101, "warning"))
    dob_raw = components(field(pid, 7), d)[0]
    birth = _date(dob_raw, "PID-7", issues, required=True)
    return {
        "id": pid_value or None,
        "id_authority": authority or None,
        "family_name": family or None,
        "given_name": given or None,
        "birth_date": birth[:10] if birth else None,
        "sex": components(field(pid, 8), d)[0] or None,
    }


def observations_of(msg: Message, issues: list[ParseIssue]) -> list[dict]:
    d = msg.delims
    codec = msg.codec
    comp, rep, sub = d.component, d.repetition, d.subcomponent
    out = []
    for n, obx in enumerate(msg.all("OBX"), 1):
        where = f"OBX[{n}]"
        vt = field(obx, 2).split(comp, 1)[0].strip()
        code = field(obx, 3)
        cc = code.split(comp) if code else [""]
        raw_value = field(obx, 5)
        if vt in ("CE", "CWE", "CNE", "CF", "CD", "CX"):
            parts = raw_value.split(rep, 1)[0].split(comp)
            value = unescape(parts[0], d, codec) if parts[0] else (unescape(parts[1], d, codec) if len(parts) > 1 else "")
        elif vt == "SN":
            value = unescape("".join(raw_value.split(rep, 1)[0].split(comp)), d, codec)
        elif vt == "ED":
            # Encapsulated data: component 5 holds the (base64) payload.
            parts = raw_value.split(comp)
            value = parts[4] if len(parts) > 4 else raw_value
        elif rep in raw_value:
            value = "\n".join(unescape(r, d, codec) for r in raw_value.split(rep))
        else:
            value = unescape(raw_value, d, codec)
        numeric = None
        if vt == "NM":
            numeric = _number(value, f"{where}-5", issues)
        elif vt == "SN":
            parts = raw_value.split(comp)
            if (not parts[0] or parts[0] == "=") and len(parts) > 1 and len(parts) < 3:
                numeric = _number(parts[1], f"{where}-5", issues)
        units = field(obx, 6)
        uc = units.split(comp) if units else [""]
        observed = _date(field(obx, 14).split(comp, 1)[0], f"{where}-14", issues, required=True)
        out.append({
            "set_id": field(obx, 1) or str(n),
            "value_type": vt or None,
            "code": unescape(cc[0], d, codec) or None,
            "code_system": (cc[2] if len(cc) > 2 else "") or None,
            "text": unescape(cc[1], d, codec) if len(cc) > 1 and cc[1] else None,
            "value": value if value != "" else None,
            "value_numeric": numeric,
            "units": unescape(uc[0] or (uc[1] if len(uc) > 1 else ""), d, codec).split(sub, 1)[0] or None,
            "reference_range": unescape(field(obx, 7), d, codec) or None,
            "abnormal_flag": field(obx, 8).split(rep, 1)[0] or None,
            "status": field(obx, 11) or None,
            "observed_at": observed,
        })
    return out


def header_of(msg: Message, issues: list[ParseIssue]) -> dict:
    msh = msg.first("MSH") if msg.segments and msg.segments[0][0] == "MSH" else None
    d = msg.delims
    if msh is None:
        return {k: None for k in ("control_id", "message_type", "trigger_event", "message_structure", "version",
                                   "sending_application", "sending_facility", "receiving_application",
                                   "receiving_facility", "message_datetime", "processing_id", "accept_ack",
                                   "application_ack", "charset_declared")}
    m9 = components(field(msh, 9), d)
    mtype = m9[0].strip()
    event = m9[1].strip() if len(m9) > 1 else ""
    if not mtype:
        issues.append(ParseIssue("MISSING_MESSAGE_TYPE", "MSH-9", "message type is empty", 101))
    elif not event and mtype != "ACK":
        issues.append(ParseIssue("MISSING_TRIGGER_EVENT", "MSH-9", "trigger event is empty", 101, "warning"))
    control = field(msh, 10).strip()
    if not control:
        issues.append(ParseIssue("MISSING_CONTROL_ID", "MSH-10", "message control ID is empty", 101))
    vraw = components(field(msh, 12), d)[0].strip()
    vm = SUPPORTED_VERSION.match(vraw)
    if not vraw:
        issues.append(ParseIssue("MISSING_VERSION", "MSH-12", "version ID is empty", 101))
        version = None
    elif not vm:
        issues.append(ParseIssue("UNSUPPORTED_VERSION", "MSH-12", "version is not 2.1 to 2.8", 203))
        version = vraw
    else:
        version = vm.group(0)
        if version != vraw:
            issues.append(ParseIssue("NONSTANDARD_VERSION", "MSH-12", "version has a non-standard suffix", 0, "warning"))
    dt = components(field(msh, 7), d)[0]
    if not dt:
        issues.append(ParseIssue("MISSING_DATETIME", "MSH-7", "message date/time is empty", 101, "warning"))
    return {
        "control_id": control or None,
        "message_type": mtype or None,
        "trigger_event": event or None,
        "message_structure": message_structure(mtype, event, m9[2].strip() if len(m9) > 2 else "") or None,
        "version": version,
        "sending_application": components(field(msh, 3), d)[0] or None,
        "sending_facility": components(field(msh, 4), d)[0] or None,
        "receiving_application": components(field(msh, 5), d)[0] or None,
        "receiving_facility": components(field(msh, 6), d)[0] or None,
        # MSH-7 only labels the message; our own received-at time is authoritative (bad input 51).
        "message_datetime": _date(dt, "MSH-7", issues, required=False),
        "processing_id": components(field(msh, 11), d)[0] or None,
        "accept_ack": field(msh, 15) or None,
        "application_ack": field(msh, 16) or None,
        "charset_declared": components(field(msh, 18), d)[0] or None,
    }


def check_structure(msg: Message, header: dict, issues: list[ParseIssue]) -> None:
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
    for sid in required:
        if sid not in msg.index:
            issues.append(ParseIssue("MISSING_SEGMENT", sid, f"required segment {sid} is missing", 100))
    for s in msg.segments:
        sid = s[0]
        if not (len(sid) == 3 and sid.isalnum() and sid.isupper() and sid.isascii()):
            issues.append(ParseIssue("MALFORMED_SEGMENT_ID", "segment", "segment ID is not three upper-case letters/digits", 100, "warning"))
            break


def to_record(msg: Message, source: dict | None = None, extra_issues: list[ParseIssue] = ()) -> dict:
    """The canonical record for one message."""
    issues: list[ParseIssue] = list(msg.issues)
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
        "sha256": msg.sha256,
        "patient": patient,
        "observations": obs,
        "status": "error" if errors else "ok",
        "errors": errors,
        "warnings": warnings,
        "flags": msg.flags,
        "segment_count": len(msg.segments),
    })
    return rec


# ---------------------------------------------------------------------------------------------
# Files -> records
def _starts_with_envelope(stream) -> bool:
    head = stream.read(64)
    stream.seek(0)
    head = head.lstrip(b" \t\r\n")
    if head[:3] == b"\xef\xbb\xbf":
        head = head[3:].lstrip(b" \t\r\n")
    return head[:3] in (b"FHS", b"BHS")


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


def iter_parsed(stream, name: str, facility_charset: str | None = None):
    """Yield (RawMessage, Message, batch_issues) for every message of a seekable binary stream.

    Batch files get a streaming pre-pass so that a count mismatch is known before any message is
    used (a mismatch usually means a truncated transfer: the whole file is held back, bad input 60).
    """
    from .parser import iter_file, parse

    by_batch: dict = {}
    if _starts_with_envelope(stream):
        by_batch = envelope_issues(stream)
    file_level = by_batch.get(None, [])
    for rm in iter_file(stream):
        extra = list(file_level)
        # Any batch problem holds back the whole file, not only the batch concerned.
        for b, lst in by_batch.items():
            if b is not None:
                extra.extend(lst)
        yield rm, parse(rm.raw, facility_charset), extra


def iter_file_records(path: str, facility_charset: str | None = None):
    """Canonical records for every message in a file; never raises for content problems."""
    with open(path, "rb") as fh:
        for rm, msg, extra in iter_parsed(fh, path, facility_charset):
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
