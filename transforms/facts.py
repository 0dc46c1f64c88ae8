"""Warehouse rows from one parsed message: patients, encounter events, orders, results,
medications, immunisations, charges and coverage.

Input: a ``parser.Message``, its canonical record (``extract.to_record``), the facility code the
message is attributed to, its ``message_store`` id and a ``PatientKeyer``. Output: ``Facts``, a
dict of table name -> list of row tuples in the column order of ``COLUMNS``. No database access:
the loader (``load.py``) decides how rows are written, which keeps this module a pure function that
is unit-tested without a warehouse. ``message_row`` gives the message's own row as the
data-quality suite of ``message_store`` sees it (``MESSAGE_COLUMNS``).

Field choices per message type are documented in docs/warehouse.md (e.g. member ID from IN1-49,
falling back to IN1-36). Timestamps are converted to naive UTC with the facility's time zone.
"""
from __future__ import annotations

import hashlib
import re
import os
import secrets
from operator import itemgetter
from typing import Any
from pathlib import Path

from .datetimes import InvalidDate, parse_dtm, to_utc
from .parser import Delimiters, Message, components, field, unescape

COLUMNS = {
    "phi_patient": ("patient_key", "facility_code", "patient_id", "id_authority", "family_name", "given_name",
                    "birth_date", "sex", "address", "district", "phone", "last_message_id", "updated_at"),
    "dim_patient": ("patient_key", "facility_code", "sex", "birth_year", "district", "updated_at"),
    "encounter_event": ("message_id", "facility_code", "visit_number", "trigger_event", "event_at", "patient_key",
                        "patient_class", "location", "admit_at", "discharge_at", "discharge_disposition",
                        "diagnosis_codes"),
    "fact_lab_order": ("facility_code", "placer_order_number", "test_code", "patient_key", "visit_number",
                       "filler_order_number", "test_code_system", "test_name", "ordered_at", "order_status",
                       "message_id", "updated_at"),
    "fact_lab_result": ("message_id", "obx_seq", "facility_code", "patient_key", "visit_number",
                        "placer_order_number", "test_code", "test_code_system", "test_name", "value_type", "value",
                        "value_numeric", "units", "reference_range", "abnormal_flag", "result_status",
                        "observed_at"),
    "fact_medication": ("facility_code", "order_number", "drug_code", "patient_key", "drug_name", "quantity",
                        "units", "ordered_at", "dispensed_at", "message_id", "updated_at"),
    "fact_immunization": ("facility_code", "patient_key", "vaccine_code", "administered_at", "vaccine_code_system",
                          "vaccine_name", "dose_number", "lot_number", "message_id"),
    "fact_charge": ("message_id", "ft1_seq", "facility_code", "patient_key", "visit_number", "transaction_id",
                    "charge_code", "description", "quantity", "unit_amount", "amount", "currency", "charged_at",
                    "diagnosis_codes", "transaction_type"),
    "fact_coverage": ("patient_key", "facility_code", "insurer_code", "member_id", "period_start", "insurer_name",
                      "plan_code", "valid_from", "valid_to", "message_id", "updated_at"),
    "patient_merge": ("old_key", "new_key", "message_id", "merged_at"),
}

Facts = dict  # table -> list[tuple]
# The message_store row the data-quality suite of that table checks (quality.TABLES), one per message.
MESSAGE_COLUMNS = ("facility_code", "sending_facility", "message_type", "trigger_event", "version",
                   "visit_number", "patient_class", "has_pid")
COVERAGE_KEY = (0, 1, 2, 3, 4)  # patient, facility, insurer, member ID, period start


class PatientKeyer:
    """Keyed HMAC pseudonyms. The key comes from ``HL7ICS_PATIENT_KEY`` (hex or text) or a secret
    file outside the warehouse (``$HL7ICS_HOME/secrets/patient_key``, created 0600 on first use), so
    someone holding only the warehouse cannot recompute a patient's key from their ID.
    """

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("patient key secret must be at least 16 bytes")
        self._cache: dict[tuple, str] = {}
        # HMAC-SHA256 with its two padded key blocks hashed once: each key then costs two copies
        # of a hash state, where hmac.new set up the whole construction again (3 times slower).
        block = hashlib.sha256(key).digest() if len(key) > 64 else key
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes([b ^ 0x36 for b in block]))
        self._outer = hashlib.sha256(bytes([b ^ 0x5C for b in block]))

    @classmethod
    def from_env(cls, home: str | os.PathLike) -> "PatientKeyer":
        env = os.environ.get("HL7ICS_PATIENT_KEY")
        if env:
            try:
                return cls(bytes.fromhex(env))
            except ValueError:
                return cls(env.encode("utf-8"))
        path = Path(home) / "secrets" / "patient_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return cls(bytes.fromhex(path.read_text().strip()))

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it: the warehouse keeps it to refuse a loader started
        with another key (see ``load.Loader.check_key``)."""
        return self._mac(b"hl7ics patient key check")

    def _mac(self, msg: bytes) -> str:
        """HMAC-SHA256 of ``msg`` under the key, its first 32 hex digits."""
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:32]

    def key(self, facility: str, authority: str | None, patient_id: str) -> str:
        k = (facility, authority or "", patient_id)
        v = self._cache.get(k)
        if v is None:
            v = self._mac("\x1f".join(k).encode("utf-8"))
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[k] = v
        return v


def _ts(value: str, tz: str) -> str | None:
    if not value:
        return None
    try:
        return to_utc(parse_dtm(value), tz)
    except (InvalidDate, ValueError):
        return None


def _c(value: str, d: Delimiters, i: int = 0, codec: str = "utf-8") -> str | None:
    """Component i (0-based) of the first repetition, unescaped; None when empty."""
    if not value:  # a sixth of the calls: empty fields are common
        return None
    comps = components(value, d)
    if i < len(comps) and comps[i]:
        c = comps[i]
        if d.subcomponent in c:
            c = c.split(d.subcomponent, 1)[0]
        return (unescape(c, d, codec) if d.escape in c else c) or None
    return None


def _num(value: str | None) -> float | None:
    if not value:
        return None
    try:
        f = float(value.replace(",", ".").replace(" ", ""))
    except ValueError:
        return None
    return f if f == f and abs(f) < 1e15 else None  # no NaN/inf, and within DOUBLE/NUMERIC range


_GROUPED = re.compile(r"[+-]?\d{1,3}(?:[ ,.\u00a0\u202f]\d{3})+")


def _money(value: str | None) -> float | None:
    """Amounts in XOF, which has no minor unit: "12,500", "12 500" and "12.500" are twelve
    thousand five hundred (thousands separators), not twelve and a half."""
    if not value:
        return None
    v = value.strip()
    if _GROUPED.fullmatch(v):
        v = re.sub(r"[ ,.\u00a0\u202f]", "", v)
    f = _num(v)
    return f if f is not None and abs(f) < 1e12 else None  # NUMERIC(14, 2) holds below 10^12


def extract_facts(msg: Message, rec: dict, facility: str, tz: str, message_id: int, keyer: PatientKeyer,
                  now: str) -> Facts:
    d = msg.delims
    cx = msg.codec
    facts: Facts = {}
    rows: list[tuple]  # one list per fact table below
    mtype = rec.get("message_type") or ""
    event = rec.get("trigger_event") or ""
    patient = rec.get("patient") or None
    pkey = None
    authority = facility  # the assigning authority of PID-3 (and of MRG-1 when it names none)
    pid = msg.first("PID")
    if patient and patient.get("id"):
        authority = patient.get("id_authority") or facility
        pkey = keyer.key(facility, authority, patient["id"])
        xad = field(pid, 11)
        street, city, district = _c(xad, d, 0, cx), _c(xad, d, 2, cx), _c(xad, d, 3, cx)
        address = ", ".join(p for p in (street, city) if p) or None
        xtn = field(pid, 13)
        phone = _c(xtn, d, 0, cx) or _c(xtn, d, 11, cx)
        if not phone and _c(xtn, d, 6, cx):
            # XTN.5 country, .6 area, .7 local number (the 2.3+ structured form)
            cc, area, local = _c(xtn, d, 4, cx), _c(xtn, d, 5, cx), _c(xtn, d, 6, cx)
            phone = (f"+{cc}" if cc else "") + (area or "") + (local or "")
        birth = patient.get("birth_date")
        facts["phi_patient"] = [(pkey, facility, patient["id"], patient.get("id_authority"), patient.get("family_name"),
                                 patient.get("given_name"), birth, patient.get("sex"), address, district, phone,
                                 message_id, now)]
        facts["dim_patient"] = [(pkey, facility, patient.get("sex"), int(birth[:4]) if birth else None, district, now)]
    pv1 = msg.first("PV1")
    visit = _c(field(pv1, 19), d, 0, cx) if pv1 else None

    if mtype == "ADT":
        if event in ("A40", "A41", "A42", "A39") and pkey:
            rows = []
            for mrg in msg.all("MRG"):
                old_id = _c(field(mrg, 1), d, 0, cx)
                if old_id:
                    old_auth = _c(field(mrg, 1), d, 3, cx) or authority
                    old_key = keyer.key(facility, old_auth, old_id)
                    if old_key != pkey:
                        rows.append((old_key, pkey, message_id, _ts(components(field(msg.first("EVN"), 2), d)[0], tz)
                                     or now))
            if rows:
                facts["patient_merge"] = rows
        if pv1 is not None and visit:
            evn = msg.first("EVN")
            # TS before 2.6 may carry a precision component (20240301120000^S): the time is the first.
            event_at = _ts(components(field(evn, 2), d)[0], tz) if evn else None
            if event_at is None:
                event_at = _ts(components(field(msg.first("MSH"), 7), d)[0], tz)
            if event_at is None:
                event_at = now  # no event time at all: order by arrival rather than first
            loc = components(field(pv1, 3), d)
            location = "/".join(p for p in loc[:3] if p) or None
            dx = [c for c in (_c(field(s, 3), d, 0, cx) for s in msg.all("DG1")) if c]
            facts["encounter_event"] = [(message_id, facility, visit, event, event_at, pkey,
                                         _c(field(pv1, 2), d, 0, cx), location,
                                         _ts(components(field(pv1, 44), d)[0], tz),
                                         _ts(components(field(pv1, 45), d)[0], tz),
                                         _c(field(pv1, 36), d, 0, cx), ";".join(dx) or None)]
    elif mtype in ("ORM", "OML"):
        rows = []
        for orc, seg in _under_orc(msg, ("OBR",)):
            placer = _c(field(orc, 2), d, 0, cx) or _c(field(seg, 2), d, 0, cx)
            filler = _c(field(orc, 3), d, 0, cx) or _c(field(seg, 3), d, 0, cx)
            code = _c(field(seg, 4), d, 0, cx) or ""
            ordered = _ts(components(field(orc, 9), d)[0], tz) or _ts(components(field(seg, 6), d)[0], tz) \
                or _ts(components(field(seg, 7), d)[0], tz)
            status = _c(field(orc, 5), d, 0, cx) or _c(field(orc, 1), d, 0, cx)
            rows.append((facility, placer or filler or f"{rec.get('control_id')}-{field(seg, 1) or len(rows) + 1}",
                         code, pkey, visit, filler, _c(field(seg, 4), d, 2, cx), _c(field(seg, 4), d, 1, cx),
                         ordered, status, message_id, now))
        if rows:
            facts["fact_lab_order"] = dedupe(rows, (0, 1, 2))
    elif mtype in ("ORU", "OUL"):
        rows = []
        placer = None
        obs = rec.get("observations") or []
        k = 0
        for seg in msg.segments:
            sid = seg[0]
            if sid == "ORC":
                placer = _c(field(seg, 2), d, 0, cx) or placer
            elif sid == "OBR":
                placer = _c(field(seg, 2), d, 0, cx) or placer  # OBR-3 is the filler's number
            elif sid == "OBX" and k < len(obs):
                o = obs[k]
                k += 1
                rows.append((message_id, k, facility, pkey, visit, placer, o["code"], o["code_system"], o["text"],
                             o["value_type"], o["value"], o["value_numeric"], o["units"], o["reference_range"],
                             o["abnormal_flag"], o["status"], to_utc(o["observed_at"], tz) if o["observed_at"] else None))
        if rows:
            facts["fact_lab_result"] = rows
    elif mtype in ("RDE", "RDS"):
        rows = []
        for orc, seg in _under_orc(msg, ("RXE", "RXD")):
            sid = seg[0]
            order = _c(field(orc, 2), d, 0, cx) or _c(field(orc, 3), d, 0, cx) or rec.get("control_id")
            if sid == "RXE":
                code_f, qty, units = field(seg, 2), _c(field(seg, 3), d, 0, cx), _c(field(seg, 5), d, 0, cx)
                ordered = _ts(components(field(orc, 9), d)[0], tz)
                dispensed = None
            else:
                code_f, qty, units = field(seg, 2), _c(field(seg, 4), d, 0, cx), _c(field(seg, 5), d, 0, cx)
                ordered = None
                dispensed = _ts(components(field(seg, 3), d)[0], tz)
            rows.append((facility, order, _c(code_f, d, 0, cx) or "", pkey, _c(code_f, d, 1, cx), _num(qty), units,
                         ordered, dispensed, message_id, now))
        if rows:
            facts["fact_medication"] = dedupe(rows, (0, 1, 2))
    elif mtype == "VXU":
        rows = []
        for rxa in msg.all("RXA"):
            if (_c(field(rxa, 20), d, 0, cx) or "CP") in ("RE", "NA") or _c(field(rxa, 21), d, 0, cx) == "D":
                continue  # refused, not administered, or deleted: not a dose given
            vaccine = _c(field(rxa, 5), d, 0, cx)
            at = _ts(components(field(rxa, 3), d)[0], tz)
            if vaccine and at and pkey:
                rows.append((facility, pkey, vaccine, at, _c(field(rxa, 5), d, 2, cx), _c(field(rxa, 5), d, 1, cx),
                             _c(field(rxa, 2), d, 0, cx), _c(field(rxa, 15), d, 0, cx), message_id))
        if rows:
            facts["fact_immunization"] = dedupe(rows, (0, 1, 2, 3))
    elif mtype in ("DFT", "BAR"):
        rows = []
        for n, ft1 in enumerate(msg.all("FT1"), 1):
            ext = field(ft1, 11)
            unit = field(ft1, 12)
            dx = [c for c in (_c(r, d, 0, cx) for r in field(ft1, 19).split(d.repetition)) if c]
            rows.append((message_id, n, facility, pkey, visit,
                         _c(field(ft1, 2), d, 0, cx), _c(field(ft1, 7), d, 0, cx),
                         _c(field(ft1, 7), d, 1, cx) or _c(field(ft1, 8), d, 0, cx), _num(_c(field(ft1, 10), d, 0, cx)),
                         _money(_c(unit, d, 0, cx)), _money(_c(ext, d, 0, cx)),
                         _money_currency(ext, d) or _money_currency(unit, d) or "XOF",
                         _ts(components(field(ft1, 4), d)[0], tz), ";".join(dx) or None,
                         _c(field(ft1, 6), d, 0, cx)))
        if rows:
            facts["fact_charge"] = rows
    if pkey and mtype in ("DFT", "BAR", "ADT"):
        rows = []
        for in1 in msg.all("IN1"):
            insurer = _c(field(in1, 3), d, 0, cx)
            member = _c(field(in1, 49), d, 0, cx) or _c(field(in1, 36), d, 0, cx)
            if insurer and member:
                # One row per period (key: its start, '' when open-ended): a renewal adds a period
                # instead of moving the dates of the one before it.
                start = _date(_c(field(in1, 12), d))
                rows.append((pkey, facility, insurer, member, start or "", _c(field(in1, 4), d, 0, cx),
                             _c(field(in1, 2), d, 0, cx), start, _date(_c(field(in1, 13), d)), message_id, now))
        if rows:
            facts["fact_coverage"] = dedupe(rows, COVERAGE_KEY)
    return facts


def message_row(msg: Message, rec: dict, facility: str) -> tuple:
    """The ``message_store`` row the data-quality suite sees (MESSAGE_COLUMNS order)."""
    pv1 = msg.first("PV1")
    d = msg.delims
    visit = cls = None
    if pv1 is not None:
        visit = components(field(pv1, 19), d)[0] or None
        cls = components(field(pv1, 2), d)[0] or None
    return (facility, rec.get("sending_facility"), rec.get("message_type"), rec.get("trigger_event"),
            rec.get("version"), visit, cls, msg.first("PID") is not None)


def _under_orc(msg: Message, detail_ids: tuple[str, ...]):
    """(ORC, detail segment) pairs: each order detail (OBR, RXE, RXD) with the ORC before it."""
    orc = None
    for seg in msg.segments:
        if seg[0] == "ORC":
            orc = seg
        elif seg[0] in detail_ids:
            yield orc, seg


def _money_currency(value: str, d: Delimiters) -> str | None:
    """Currency of a CP/MO value: MO is quantity&denomination inside CP's first component."""
    first = components(value, d)[0]
    subs = first.split(d.subcomponent)
    return subs[1] if len(subs) > 1 and subs[1] else None


def _date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return parse_dtm(value)[:10]
    except InvalidDate:
        return None


def dedupe(rows: list[tuple], key: tuple[int, ...]) -> list[tuple]:
    """One row per key (positions in the tuple); the last one wins, as later segments or messages do."""
    if len(rows) < 2:
        return list(rows)
    get = itemgetter(*key)
    # A key keeps its first position and its last row, as repeated assignments would.
    return list({get(r): r for r in rows}.values())


# ---------------------------------------------------------------------------------------------
# Encounter state from ADT events
_OPENING = {"A01", "A04", "A05", "A14"}
_CANCEL = {"A11": "admit", "A12": "transfer", "A13": "discharge"}


def fold_encounter(events: list[tuple]) -> tuple | None:
    """Current encounter state from its ADT events (encounter_event rows), applied in event-time
    order with arrival order (message_id) as tie-breaker, so a late A01 never reopens a visit that
    was discharged. Returns a fact_encounter row without ``updated_at`` or None if nothing remains.
    """
    if not events:
        return None
    evs = sorted(events, key=lambda e: (e[4] is None, str(e[4] or ""), e[0]))
    st: dict[str, Any] = {"patient_key": None, "patient_class": None, "location": None, "admit_at": None, "discharge_at": None,
          "disposition": None, "dx": None, "cancelled": 0}
    last_event = last_at = None
    facility, visit = evs[0][1], evs[0][2]
    for (_mid, _f, _v, ev, at, pkey, pclass, loc, admit, discharge, dispo, dx) in evs:
        last_event, last_at = ev, at
        if pkey:
            st["patient_key"] = pkey
        if ev in _CANCEL:
            if ev == "A11":
                st["cancelled"] = 1
            elif ev == "A13":
                st["discharge_at"] = None
                st["disposition"] = None
            continue
        if ev in _OPENING:
            st["cancelled"] = 0
        for k, v in (("patient_class", pclass), ("location", loc), ("admit_at", admit)):
            if v:
                st[k] = v
        if ev == "A03":
            st["discharge_at"] = discharge or at
            st["disposition"] = dispo or st["disposition"]
        elif discharge and ev not in _OPENING:
            st["discharge_at"] = discharge
        if dx:
            st["dx"] = dx
        if ev in _OPENING and st["admit_at"] is None:
            st["admit_at"] = at
    return (facility, visit, st["patient_key"], st["patient_class"], st["location"], st["admit_at"],
            st["discharge_at"], st["disposition"], st["dx"], last_event, last_at, st["cancelled"])


ENCOUNTER_COLUMNS = ("facility_code", "visit_number", "patient_key", "patient_class", "location", "admit_at",
                     "discharge_at", "discharge_disposition", "diagnosis_codes", "last_event", "last_event_at",
                     "cancelled", "updated_at")
