"""Insurer claims under Togo's universal health insurance (AMU): INAM, CNSS and private insurers.

Inputs: the warehouse facts ``fact_charge`` (DFT^P03 FT1 lines, with FT1-6 transaction type),
``fact_coverage`` (IN1: insurer, member ID, plan, validity), ``fact_encounter`` (patient class,
admission, discharge, diagnoses), ``dim_facility`` (names for the summary); ``config/insurers.yaml``
(``InsurersConfig``: per insurer the contracted facilities, plans and their co-payment share, period,
schedule, columns, formats, delivery). Outputs:

- ``build_claims``: the ``claim`` and ``claim_line`` tables (migration 009), one claim per insurer x
  facility x visit, recomputed from the facts (idempotent: a re-run with nothing new writes nothing).
- ``extract``: for one insurer and period, the claims file(s) (Parquet and/or CSV, one row per claim
  line, only the insurer's configured columns), a manifest (JSON: totals per facility, files with
  SHA-256 and row counts) and a French summary (Markdown), in ``<out>/<insurer>/<period>/v<N>/``;
  ``claim_extract`` / ``claim_extract_item`` rows and one ``audit_event`` ('export', counts only).
- ``deliver_extract``: the files handed to ``transforms.delivery.deliver`` (outbox folder or SFTP),
  a ``claim_delivery`` row, and the claims marked sent.
- ``status`` / ``cli_extract`` / ``cli_status``: periods, versions, deliveries, pending corrections.

Rules (docs: the docstrings below and config/insurers.yaml):

- A charge is claimed from an insurer when the patient has a coverage row from that insurer at the
  charge's facility, valid on the charge date (IN1-12/13; empty = open-ended), under a configured
  plan, and the insurer contracts the facility. With several such insurers, the first in
  ``insurers.yaml`` wins: a charge is never claimed twice. Charges of patients without such
  coverage are not claimed; the result counts them per reason.
- FT1-6: ``CG`` (or empty) is a charge; ``CD`` a credit, claimed as a negative line (quantity and
  amount negated whatever sign was sent) so it cancels the charge it credits within the claim;
  ``AJ`` an adjustment, taken with the sign sent; ``PY`` (payment received) and any other type are
  not services and are never claimed (counted). A transaction resent with the same FT1-2 and FT1-6
  replaces the earlier one. A claim whose total is zero or negative is not issued, unless the
  insurer already has it (then it goes out as a correction).
- Amounts are XOF (franc CFA, no minor unit). The co-payment (ticket modérateur) is computed per
  line, rounded half away from zero to the franc, so file rows always add up to the claim totals.
  Charges in another currency are not claimed (counted).
- Status: ``open`` while the visit is (inpatient not discharged) or a charge is dated within the
  insurer's ``ready_after_days``; ``ready`` after that (dates are service dates: a backlog loaded
  late is ready at once); ``sent`` once delivered; ``corrected`` when a sent claim changed for its
  insurer: both ``content_sha256`` (every column an extract may carry, dates to the day) and
  ``visible_sha256`` (the insurer's configured columns only) differ from what was delivered
  (``same_for_insurer``). A change in a column the insurer does not receive is not a correction,
  and neither is a change of the insurer's columns in ``insurers.yaml``.
- Periods: a claim belongs to the period of its discharge date (inpatients) or last charge date
  (others). A period's first extract (version 1) holds its ready claims and any ready claim of an
  earlier period that no extract carried yet (catch-up: a claim not ready in time is never lost, it
  goes into the next first version). Re-running a period rewrites byte-identical files (the
  generation time is the recorded one). When claims of an extracted period changed,
  ``extract(..., reason=...)`` issues version N+1 with those claims only, in full (they replace
  the earlier ones with the same ``numero_demande``); a claim that lost all its lines goes out as
  one row with ``ligne`` 0 and zero amounts (cancellation). Without a reason, such a run is
  refused: version N's files are never overwritten.
- An admission cancelled by A11 does not remove its charges: the billing system sends credits. A
  visit without ADT (a pharmacy, or an ADT feed not connected) is treated as an outpatient visit.
  Every run reads all the charges of the contracted facilities (no time window: a late charge on
  an old visit must be seen), about a second per month of national traffic.

Files: Parquet with a fixed schema (strings, ``date32``, ``decimal128(14, 2)``) and no timestamps in
its metadata; CSV in UTF-8 with a BOM, ``;`` separators, decimal commas and CRLF (what a French-locale
spreadsheet opens correctly), text cells starting with ``= + - @``, tab, CR or LF prefixed with an
apostrophe (formula injection); numbers are ours and written as plain numbers. Rows are sorted by
facility, visit, claim and line. Neither the files, the manifest, the summary, the logs nor the
errors hold a patient name, a patient ID or ``patient_key``; the member ID is the insurer's own
identifier, in its own extract only. No Airflow import here; pyarrow is imported only to write.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine

from .config import ConfigError, Settings, read_yaml
from .warehouse import Writer, named_queries, timestamp_text as _ts_text, utcnow

log = logging.getLogger(__name__)

SQL_FILE = "claims.sql"
SCHEMA_VERSION = 1
PERIODS = ("weekly", "monthly")
FORMATS = ("parquet", "csv")
DELIVERY_TYPES = ("outbox", "sftp")
CURRENCY = "XOF"
CHARGE_TYPES = ("CG", "CD", "AJ")      # HL7 table 0017: charge, credit, adjustment
PAYMENT_TYPES = ("PY",)                 # payment received: not a service, never claimed
SKIP_REASONS = ("payments", "other_types", "no_visit", "undated", "no_amount", "amount_out_of_range",
                "foreign_currency", "uninsured", "coverage_not_valid", "facility_not_contracted", "unknown_plan")
# Amounts are NUMERIC(14, 2): a line from 10^12 XOF up (a typo'd quantity times a price) cannot be
# stored, and failed the whole build on PostgreSQL (or every extract on SQLite).
AMOUNT_LIMIT = Decimal(10) ** 12
STATUSES = ("open", "ready", "sent", "corrected")

# The only columns an extract may carry, in their canonical order, with their type in the files.
CATALOG = (
    ("numero_demande", "str"), ("code_assureur", "str"), ("formation", "str"), ("numero_visite", "str"),
    ("numero_assure", "str"), ("regime", "str"), ("type_patient", "str"), ("date_admission", "date"),
    ("date_sortie", "date"), ("diagnostics", "str"), ("ligne", "int"), ("code_acte", "str"),
    ("libelle_acte", "str"), ("type_transaction", "str"), ("quantite", "float"), ("prix_unitaire", "amount"),
    ("montant", "amount"), ("taux_ticket_moderateur", "float"), ("ticket_moderateur", "amount"),
    ("montant_reclame", "amount"), ("devise", "str"), ("date_acte", "date"),
)
COLUMN_TYPES = dict(CATALOG)
REQUIRED_COLUMNS = ("numero_demande", "montant_reclame")  # corrections are matched on the claim number

CLAIM_COLUMNS = ("claim_id", "insurer_code", "facility_code", "visit_number", "patient_key", "member_id",
                 "plan_code", "patient_class", "admit_at", "discharge_at", "diagnosis_codes", "first_charge_at",
                 "last_charge_at", "lines", "total_amount", "copay_rate", "copay_amount", "claimed_amount",
                 "currency", "status", "content_sha256", "sent_sha256", "sent_period", "updated_at",
                 "visible_sha256")
_NOT_UPDATED = ("claim_id", "sent_sha256", "sent_period")  # written by delivery only
LINE_COLUMNS = ("claim_id", "line_no", "message_id", "ft1_seq", "charge_code", "description", "quantity",
                "unit_amount", "amount", "currency", "charged_at")

_CODE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{1,39}$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?LW#-]+$")
_WEEK = re.compile(r"^(\d{4})-?W(\d{1,2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{1,2})$")
_SECRET_KEYS = ("password", "passphrase", "private_key", "key", "secret", "token", "login", "username", "user", "host")
_Q2 = Decimal("0.01")
_FRANC = Decimal("1")
_ZERO = Decimal("0.00")
_CHUNK = 900
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


class ClaimsError(ValueError):
    """A claims request that cannot be honoured as asked (period, version, reason). The message
    holds codes and counts only, never patient data. Not retried by the DAGs' policy."""


class PeriodError(ClaimsError):
    """A period label that does not fit the insurer's period type, or a period not over yet."""


class CorrectionNeeded(ClaimsError):
    """The period was extracted and some of its claims changed since: a new version needs a reason."""


class NothingToCorrect(ClaimsError):
    """A reason was given but nothing changed since the latest version of the period."""


class DeliveryError(OSError):
    """The delivery reported a failure (recorded in ``claim_delivery``); an OSError, so retried."""


# --------------------------------------------------------------------------------------------------
# Configuration (config/insurers.yaml)


@dataclass(frozen=True)
class Plan:
    """One term of a plan: its co-payment share from ``valid_from`` to ``valid_until`` (days,
    ``YYYY-MM-DD``, both included; None: no bound). A plan whose share changes has one term per
    rate, so charges keep the rate of their own dates."""
    code: str
    name: str
    copay: float  # ticket modérateur: the member's share, 0..1
    valid_from: str | None = None
    valid_until: str | None = None

    def in_force(self, day: str) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and \
            (self.valid_until is None or day <= self.valid_until)


@dataclass(frozen=True)
class Insurer:
    code: str
    name: str
    schedule: str
    period: str
    ready_after_days: int
    formats: tuple[str, ...]
    columns: tuple[str, ...]
    delivery: dict
    plans: dict  # plan code -> its terms (Plan), in date order
    contracts: dict  # facility code -> (first day, last day), None: no bound

    @property
    def dag_id(self) -> str:
        return dag_id_for(self.code)

    @property
    def facilities(self) -> tuple[str, ...]:
        """The facilities the insurer has (or had) a contract with."""
        return tuple(self.contracts)

    def contracts_on(self, facility: str, day: str) -> bool:
        """Whether the insurer contracts ``facility`` on ``day`` (``YYYY-MM-DD``)."""
        span = self.contracts.get(facility)
        return span is not None and (span[0] is None or span[0] <= day) and (span[1] is None or day <= span[1])

    def plan_on(self, code: str, day: str) -> "Plan | None":
        """The term of plan ``code`` in force on ``day``, or None."""
        return next((p for p in self.plans.get(code, ()) if p.in_force(day)), None)

    def delivery_spec(self, data_dir: str | os.PathLike) -> dict:
        """The spec for ``transforms.delivery.deliver``; an outbox path is resolved under ``data_dir``."""
        spec = dict(self.delivery)
        if spec["type"] == "outbox":
            p = Path(spec["path"])
            spec["path"] = str(p if p.is_absolute() else Path(data_dir) / p)
        return spec


def dag_id_for(code: str) -> str:
    """``insurer_claims_extract_<code>``: the code in lower case, anything but a letter or digit as '_'."""
    return "insurer_claims_extract_" + re.sub(r"[^a-z0-9]", "_", code.lower())


@dataclass(frozen=True)
class InsurersConfig:
    insurers: tuple[Insurer, ...]

    def get(self, code: str) -> Insurer:
        for ins in self.insurers:
            if ins.code == code:
                return ins
        shown = str(code)[:40]
        raise ConfigError(f"insurers.yaml: no insurer {shown!r} (known: {', '.join(i.code for i in self.insurers)})")

    @property
    def codes(self) -> list[str]:
        return [i.code for i in self.insurers]

    @classmethod
    def load(cls, path: str | os.PathLike, facility_codes=None) -> "InsurersConfig":
        return load_insurers(path, facility_codes)


def load_insurers(path: str | os.PathLike, facility_codes=None) -> InsurersConfig:
    """Read and validate ``insurers.yaml`` (PyYAML only: cheap enough for a DAG file to call).
    ``facility_codes``, when given, are the configured facilities every contracted one must be."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: insurer configuration not found (set --config or HL7ICS_CONFIG)")
    return parse_insurers(read_yaml(p), p.name, facility_codes)


def parse_insurers(doc, origin: str = "insurers.yaml", facility_codes=None) -> InsurersConfig:
    if not isinstance(doc, dict) or not isinstance(doc.get("insurers"), list) or not doc["insurers"]:
        raise ConfigError(f"{origin}: expected a top-level 'insurers:' list with at least one insurer")
    known = set(facility_codes) if facility_codes is not None else None
    out, seen = [], set()
    for i, e in enumerate(doc["insurers"]):
        where = f"{origin}: insurers[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{where}: must be a mapping")
        code = _req(e, "code", where)
        where = f"{origin}: insurer {code}"
        if not _CODE.match(code):
            raise ConfigError(f"{where}: code must be 2-40 upper-case letters, digits, '-' or '_' (as sent in IN1-3)")
        if code in seen:
            raise ConfigError(f"{where}: duplicate insurer code")
        seen.add(code)
        unknown_keys = set(e) - {"code", "name", "schedule", "period", "ready_after_days", "formats", "columns",
                                 "delivery", "facilities", "plans"}
        if unknown_keys:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown_keys)))}")
        name = _req(e, "name", where)
        schedule = _req(e, "schedule", where)
        fields = schedule.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ConfigError(f"{where}: schedule must be a 5-field cron expression like \"0 6 * * 1\", "
                              f"not {schedule!r}")
        period = _req(e, "period", where)
        if period not in PERIODS:
            raise ConfigError(f"{where}: period must be one of {', '.join(PERIODS)}, not {period!r}")
        ready = e.get("ready_after_days")
        if isinstance(ready, bool) or not isinstance(ready, int) or not 0 <= ready <= 365:
            raise ConfigError(f"{where}: ready_after_days must be an integer from 0 to 365")
        formats = e.get("formats")
        if (not isinstance(formats, list) or not formats or any(f not in FORMATS for f in formats)
                or len(set(formats)) != len(formats)):
            raise ConfigError(f"{where}: formats must be a non-empty list of {', '.join(FORMATS)} without repeats")
        cols = e.get("columns")
        if not isinstance(cols, list) or not cols:
            raise ConfigError(f"{where}: columns must be a non-empty list")
        bad = [str(c) for c in cols if c not in COLUMN_TYPES]
        if bad:
            raise ConfigError(f"{where}: unknown column(s) {', '.join(bad)}; an extract may only carry "
                              f"{', '.join(COLUMN_TYPES)} (minimum necessary: no patient names or IDs)")
        if len(set(cols)) != len(cols):
            raise ConfigError(f"{where}: a column is listed twice")
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise ConfigError(f"{where}: columns must include {', '.join(missing)}")
        delivery = _delivery(e.get("delivery"), f"{where}: delivery")
        contracts = _contracts(e.get("facilities"), f"{where}: facilities")
        if known is not None:
            unknown = [f for f in contracts if f not in known]
            if unknown:
                raise ConfigError(f"{where}: facilities {', '.join(unknown)} are not in facilities.yaml")
        plans = _plans(e.get("plans"), f"{where}: plans")
        out.append(Insurer(code, name, schedule, period, ready, tuple(formats), tuple(cols), delivery, plans,
                           contracts))
    ids = [dag_id_for(i.code) for i in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{origin}: two insurer codes give the same DAG id ({', '.join(ids)})")
    return InsurersConfig(tuple(out))


def _req(entry: dict, key: str, where: str):
    val = entry.get(key)
    if val is None or val == "":
        raise ConfigError(f"{where}: missing required key '{key}'")
    if not isinstance(val, str):
        raise ConfigError(f"{where}: '{key}' must be a string")
    return val


def _delivery(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping like {{type: outbox, path: DIR}} or "
                          f"{{type: sftp, conn_id: ID, path: /DIR}}")
    secret = [k for k in raw if str(k).lower() in _SECRET_KEYS]
    if secret:
        # Hosts and credentials live in the Airflow connection: a file in git is no place for them.
        raise ConfigError(f"{where}: {', '.join(map(str, secret))} must not be here; put the host and "
                          f"credentials in the Airflow connection named by conn_id")
    typ = raw.get("type")
    if typ not in DELIVERY_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(DELIVERY_TYPES)}")
    path = raw.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}: missing required key 'path'")
    if typ == "outbox":
        extra = set(raw) - {"type", "path"}
        if extra:
            raise ConfigError(f"{where}: an outbox takes only type and path, not {', '.join(sorted(map(str, extra)))}")
        return {"type": "outbox", "path": path}
    conn_id = raw.get("conn_id")
    if not isinstance(conn_id, str) or not _CONN_ID.match(conn_id):
        raise ConfigError(f"{where}: sftp needs conn_id, the Airflow connection with the host and credentials")
    if not path.startswith("/"):
        raise ConfigError(f"{where}: the sftp path must be absolute on the server (e.g. /claims)")
    extra = set(raw) - {"type", "path", "conn_id"}
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}")
    return {"type": "sftp", "conn_id": conn_id, "path": path}


def _day_bound(v, where: str, key: str) -> str | None:
    """``from`` / ``until`` of a term: a date (YAML reads 2027-01-01 as one) or its ISO text."""
    if v is None:
        return None
    if isinstance(v, datetime):
        v = v.date()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        try:
            return date.fromisoformat(v).isoformat()
        except ValueError:
            pass
    raise ConfigError(f"{where}: '{key}' must be a date written YYYY-MM-DD")


def _span(entry: dict, where: str) -> tuple[str | None, str | None]:
    start, end = _day_bound(entry.get("from"), where, "from"), _day_bound(entry.get("until"), where, "until")
    if start and end and end < start:
        raise ConfigError(f"{where}: 'until' is before 'from'")
    return start, end


def _contracts(raw, where: str) -> dict:
    """Facility codes, each alone (contracted for ever) or as ``{code, from, until}``: ending a
    contract with ``until`` keeps the claims of its time, where removing the facility would
    cancel them."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: must be a non-empty list of facility codes")
    out: dict[str, tuple] = {}
    for k, f in enumerate(raw):
        if isinstance(f, dict) and isinstance(f.get("code"), str) and not set(f) - {"code", "from", "until"}:
            code, span = f["code"], _span(f, f"{where}[{k}]")
        elif isinstance(f, str):
            code, span = f, (None, None)
        else:
            raise ConfigError(f"{where}[{k}]: a facility code, or {{code, from, until}}")
        if code in out:
            raise ConfigError(f"{where}: a facility is listed twice")
        out[code] = span
    return out


def _plans(raw, where: str) -> dict:
    """Plan code -> its terms in date order. A plan listed more than once has one term per rate,
    with ``from`` / ``until`` dates that do not overlap."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: must be a non-empty list of {{code, name, copay}}")
    out: dict[str, list] = {}
    for k, p in enumerate(raw):
        if not isinstance(p, dict) or not isinstance(p.get("code"), str) or not p["code"].strip():
            raise ConfigError(f"{where}[{k}]: needs a 'code' (IN1-2 as sent)")
        code = p["code"]
        unknown = set(p) - {"code", "name", "copay", "from", "until"}
        if unknown:
            raise ConfigError(f"{where}: plan {code}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        copay = p.get("copay")
        if isinstance(copay, bool) or not isinstance(copay, (int, float)) or not 0 <= copay <= 1:
            raise ConfigError(f"{where}: plan {code}: copay (ticket modérateur) must be a number from 0 to 1")
        if Decimal(repr(float(copay))).as_tuple().exponent < -4:
            raise ConfigError(f"{where}: plan {code}: copay has more than 4 decimals")
        start, end = _span(p, f"{where}: plan {code}")
        out.setdefault(code, []).append(Plan(code, str(p.get("name") or code), float(copay), start, end))
    for code, terms in out.items():
        terms.sort(key=lambda t: t.valid_from or "")
        for a, b in zip(terms, terms[1:]):
            if a.valid_until is None or b.valid_from is None or b.valid_from <= a.valid_until:
                raise ConfigError(f"{where}: plan {code} is listed twice with dates that overlap; each term "
                                  "needs 'from' / 'until' dates apart from the others")
    return {code: tuple(terms) for code, terms in out.items()}


# --------------------------------------------------------------------------------------------------
# Periods


@dataclass(frozen=True)
class Period:
    label: str   # 2026-W45 or 2026-11
    start: date  # first day
    end: date    # the day after the last one

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)


def parse_period(kind: str, value) -> Period:
    """``weekly``: ``2026-W45`` (or ``2026W45``, ISO week, Monday to Sunday); ``monthly``: ``2026-11``."""
    s = value.strip() if isinstance(value, str) else ""
    try:
        if kind == "weekly":
            m = _WEEK.match(s.upper())
            if m:
                y, w = int(m.group(1)), int(m.group(2))
                start = date.fromisocalendar(y, w, 1)
                return Period(f"{y}-W{w:02d}", start, start + timedelta(days=7))
        elif kind == "monthly":
            m = _MONTH.match(s)
            if m:
                y, mo = int(m.group(1)), int(m.group(2))
                start = date(y, mo, 1)
                return Period(f"{y}-{mo:02d}", start, _next_month(start))
        else:
            raise PeriodError(f"unknown period type {str(kind)[:20]!r}")
    except ValueError as exc:
        if isinstance(exc, PeriodError):
            raise
    shown = repr(value)[:40]
    example = "2026-W45 (ISO week)" if kind == "weekly" else "2026-11"
    raise PeriodError(f"a {kind} period looks like {example}, not {shown}")


def _next_month(d: date) -> date:
    return date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def period_of(kind: str, day: date) -> Period:
    if kind == "weekly":
        y, w, _ = day.isocalendar()
        return parse_period(kind, f"{y}-W{w:02d}")
    return parse_period(kind, f"{day.year}-{day.month:02d}")


def previous_period(kind: str, at: datetime | date | str) -> Period:
    """The period that ended last before ``at`` (a Monday 06:00 run -> the week that ended on Sunday)."""
    day = at if isinstance(at, date) and not isinstance(at, datetime) else _dt(at).date()
    return period_of(kind, period_of(kind, day).start - timedelta(days=1))


# --------------------------------------------------------------------------------------------------
# Small helpers


def _queries() -> dict[str, str]:
    """The named queries of ``sql/claims.sql`` (``-- name: key`` starts each one)."""
    return named_queries(SQL_FILE)


def _q(name: str, *expanding: str):
    stmt = text(_queries()[name])
    if expanding:
        stmt = stmt.bindparams(*(bindparam(n, expanding=True) for n in expanding))
    return stmt


def _lock(conn, insurer: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(_q("lock"), {"insurer": insurer})


def _chunks(seq, n: int = _CHUNK):
    seq = list(seq)
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _dt(v) -> datetime:
    if isinstance(v, datetime):
        return v if v.tzinfo is None else v.astimezone(timezone.utc).replace(tzinfo=None)
    s = _ts_text(v)
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S")


def _now_text(now) -> str:
    return _dt(now).strftime("%Y-%m-%d %H:%M:%S") if now is not None else utcnow()


def _day(v) -> str | None:
    s = _ts_text(v)
    return s[:10] if s else None


def _money(v) -> Decimal | None:
    if v is None:
        return None
    return Decimal(str(v)).quantize(_Q2, ROUND_HALF_UP)


def _qty(v) -> float | None:
    return None if v is None else float(v)


def _charge_key(r) -> tuple:
    """What identifies a charge across resends: facility, FT1-2 and FT1-6 when the sender gives a
    transaction ID, else the FT1 itself."""
    tt = _ttype(r.transaction_type)
    return (r.facility_code, r.transaction_id, tt) if r.transaction_id else (r.message_id, r.ft1_seq)


def _ttype(v) -> str:
    return (str(v).strip().upper() if v is not None else "") or "CG"


def _rate(v) -> Decimal:
    return Decimal(repr(float(v)))


def _copay(amount: Decimal, rate: Decimal) -> Decimal:
    # XOF has no minor unit: the member's share is a whole number of francs.
    return (amount * rate).quantize(_FRANC, ROUND_HALF_UP).quantize(_Q2)


def neutralize(value: str) -> str:
    """A text cell a spreadsheet will not run as a formula (OWASP CSV injection): a leading
    ``= + - @``, tab, CR or LF gets an apostrophe in front."""
    return "'" + value if value and value.startswith(_FORMULA_START) else value


def _clean_reason(reason) -> str | None:
    if reason is None:
        return None
    s = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in str(reason)).strip()
    return s[:500] or None


def _terminal_safe(value) -> str:
    return "".join("?" if unicodedata.category(ch).startswith("C") else ch for ch in str(value))


# --------------------------------------------------------------------------------------------------
# A claim as an extract carries it (shared by build_claims and extract, so the hash is one thing)


@dataclass
class _View:
    rows: list[dict]
    sha256: str
    total: Decimal
    copay: Decimal
    claimed: Decimal
    visible_sha256: str | None = None  # of the insurer's configured columns only


def _hash(rows: list[dict], columns) -> str:
    canon = [[_canon(r[c]) for c in columns] for r in rows]
    return hashlib.sha256(json.dumps(canon, ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


def same_for_insurer(sha: str | None, visible: str | None, carried_sha: str | None,
                     carried_visible: str | None) -> bool:
    """Whether a claim (``sha``, ``visible``) is what the insurer got (``carried_*``): the same
    content, or the same in every column the insurer's extract carries. A hash written before
    migration 015 has no visible part and compares on the content alone."""
    return sha == carried_sha or (carried_visible is not None and visible == carried_visible)


def _claim_view(h: dict, lines: list[dict], columns: tuple[str, ...] | None = None) -> _View:
    """The extract rows of one claim (every catalog column) and the SHA-256 of their canonical form.

    ``h``: claim_id, insurer_code, facility_code, visit_number, member_id, plan_code, patient_class,
    admit_at, discharge_at, diagnosis_codes, copay_rate; ``lines``: line_no, charge_code,
    description, quantity, unit_amount, amount, charged_at, transaction_type. Values may come from
    Python or from either database driver: everything is normalised first.
    """
    rate = _rate(h["copay_rate"])
    head = {
        "numero_demande": h["claim_id"], "code_assureur": h["insurer_code"], "formation": h["facility_code"],
        "numero_visite": h["visit_number"], "numero_assure": h["member_id"], "regime": h["plan_code"],
        "type_patient": h["patient_class"], "date_admission": _day(h["admit_at"]),
        "date_sortie": _day(h["discharge_at"]), "diagnostics": h["diagnosis_codes"],
        "taux_ticket_moderateur": float(rate), "devise": CURRENCY,
    }
    rows = []
    total = copay = _ZERO
    for ln in sorted(lines, key=lambda x: x["line_no"]):
        amount = _money(ln["amount"]) or _ZERO
        share = _copay(amount, rate)
        total += amount
        copay += share
        rows.append({**head, "ligne": int(ln["line_no"]), "code_acte": ln["charge_code"],
                     "libelle_acte": ln["description"], "type_transaction": _ttype(ln["transaction_type"]),
                     "quantite": _qty(ln["quantity"]), "prix_unitaire": _money(ln["unit_amount"]),
                     "montant": amount, "ticket_moderateur": share, "montant_reclame": amount - share,
                     "date_acte": _day(ln["charged_at"])})
    if not rows:
        # No line left (all credited, or coverage withdrawn) after the insurer got it: one row that
        # cancels the claim.
        rows.append({**head, "ligne": 0, "code_acte": None, "libelle_acte": None, "type_transaction": None,
                     "quantite": None, "prix_unitaire": None, "montant": _ZERO, "ticket_moderateur": _ZERO,
                     "montant_reclame": _ZERO, "date_acte": None})
    return _View(rows, _hash(rows, COLUMN_TYPES), total, copay, total - copay,
                 _hash(rows, columns) if columns else None)


def _canon(v):
    if isinstance(v, Decimal):
        return f"{v:.2f}"
    if isinstance(v, float):
        return repr(v + 0.0)  # -0.0 comes back from SQLite as 0.0
    return v


def claim_id_for(insurer: str, facility: str, visit: str) -> str:
    """Stable claim number: the same insurer, facility and visit always give the same one."""
    return hashlib.sha256(f"{insurer}\x1f{facility}\x1f{visit}".encode("utf-8")).hexdigest()[:32]


def _by_patient(engine: Engine, groups: dict[tuple, list]) -> tuple[dict[tuple, list], int]:
    """``groups`` (insurer, facility, visit) -> lines, as (insurer, facility, visit, claim visit)
    -> lines of one patient each, and how many lines were moved to a claim of their own.

    Two patients' charges under one visit number (a ticket number reused, a typo) were one claim,
    billed under the member number of whoever was charged last. The visit's claim stays with the
    patient it was built for (else the patient charged first); each other patient's charges make
    a claim of their own, numbered from the visit and that patient's key."""
    out: dict[tuple, list] = {}
    shared = [k for k, lines in groups.items() if len({ln["patient_key"] for ln in lines}) > 1]
    owners: dict[str, str] = {}
    if shared:
        with engine.connect() as conn:
            for ids in _chunks([claim_id_for(*k) for k in shared]):
                owners.update((r.claim_id, r.patient_key) for r in conn.execute(_q("claim_patients", "ids"),
                                                                                {"ids": ids}))
    moved = 0
    for key, lines in groups.items():
        keys = {ln["patient_key"] for ln in lines}
        if len(keys) == 1:
            out[key + (key[2],)] = lines
            continue
        owner = owners.get(claim_id_for(*key))
        if owner not in keys:
            owner = min(lines, key=lambda x: (x["charged_at"], x["message_id"], x["ft1_seq"]))["patient_key"]
        for pk in sorted(keys, key=str):
            mine = [ln for ln in lines if ln["patient_key"] == pk]
            out[key + (key[2] if pk == owner else f"{key[2]}\x1f{pk}",)] = mine
            moved += 0 if pk == owner else len(mine)
    return out, moved


def _claim_day(patient_class, discharge_at, last_charge_at) -> str | None:
    """The day that places a claim in a period: discharge for inpatients, else the last charge."""
    if patient_class == "I" and discharge_at:
        return _day(discharge_at)
    return _day(last_charge_at)


# --------------------------------------------------------------------------------------------------
# build_claims


def build_claims(engine: Engine, insurers_cfg: InsurersConfig, now=None, insurers=None) -> dict:
    """(Re)compute ``claim`` and ``claim_line`` from the facts, as of ``now`` (UTC; default: now).

    ``insurers`` limits the write to those codes (each DAG builds its own insurer); which insurer a
    charge goes to is still decided with every configured insurer, so the result is the same either
    way. Only changed claims are rewritten; ``sent_sha256`` / ``sent_period`` are never touched here.
    Returns counts: charges read, lines claimed, charges not claimed per reason (``skipped``),
    resent transactions replaced, claims not issued for a total <= 0, and per insurer the claims by
    status, the amount claimed by the open/ready/sent/corrected claims, rows written and deleted.
    """
    cfg = insurers_cfg
    now_s = _now_text(now)
    now_dt = _dt(now_s)
    todo = sorted({cfg.get(c).code for c in insurers}) if insurers else sorted(cfg.codes)
    by_code = {i.code: i for i in cfg.insurers}
    order = {i.code: k for k, i in enumerate(cfg.insurers)}
    facilities = sorted({f for i in cfg.insurers for f in i.facilities})
    skipped = dict.fromkeys(SKIP_REASONS, 0)

    with engine.connect() as conn:
        charges = conn.execute(_q("charges", "facilities"), {"facilities": facilities}).all()
        coverages = conn.execute(_q("coverages", "facilities", "insurers"),
                                 {"facilities": facilities, "insurers": cfg.codes}).all()
        encounters = {(r.facility_code, r.visit_number): r
                      for r in conn.execute(_q("encounters", "facilities"), {"facilities": facilities})}
        sent_to = {_charge_key(r): r.insurer_code for r in conn.execute(_q("sent_charges"))}

    cov_by: dict[tuple, list] = {}
    for c in coverages:
        cov_by.setdefault((c.patient_key, c.facility_code), []).append(c)

    # A transaction resent (same facility, FT1-2 and FT1-6) replaces the earlier copy: rows come
    # oldest message first, so the last one kept is the latest.
    kept: dict = {}
    replaced = 0
    for r in charges:
        tt = _ttype(r.transaction_type)
        if tt in PAYMENT_TYPES:
            skipped["payments"] += 1
            continue
        if tt not in CHARGE_TYPES:
            skipped["other_types"] += 1
            continue
        key = _charge_key(r)
        if key in kept:
            replaced += 1
        kept[key] = r

    groups: dict[tuple, list] = {}
    for key, r in kept.items():
        fac, visit = r.facility_code, r.visit_number
        if not visit:
            skipped["no_visit"] += 1
            continue
        charged = _ts_text(r.charged_at)
        if not charged:
            skipped["undated"] += 1
            continue
        amount = _money(r.amount)
        unit = _money(r.unit_amount)
        qty = _qty(r.quantity)
        if amount is None and unit is not None and qty is not None:
            amount = (unit * Decimal(repr(qty))).quantize(_Q2, ROUND_HALF_UP)  # FT1-11 missing: unit x quantity
        if amount is None:
            skipped["no_amount"] += 1
            continue
        if abs(amount) >= AMOUNT_LIMIT:
            skipped["amount_out_of_range"] += 1
            continue
        if (r.currency or CURRENCY).upper() != CURRENCY:
            skipped["foreign_currency"] += 1
            continue
        cands = cov_by.get((r.patient_key, fac)) if r.patient_key else None
        if not cands:
            skipped["uninsured"] += 1
            continue
        day = charged[:10]
        # A partial expiry ("2026-12", "2026": IN1-13 as sent) covers its whole month or year.
        valid = [c for c in cands if (not c.valid_from or str(c.valid_from)[:10] <= day)
                 and (not c.valid_to or day[:len(str(c.valid_to)[:10])] <= str(c.valid_to)[:10])]
        if not valid:
            skipped["coverage_not_valid"] += 1
            continue
        # The terms of the charge's day: a contract ended or a rate changed since leaves the
        # claims of earlier days as they were sent.
        contracting = [c for c in valid if by_code[c.insurer_code].contracts_on(fac, day)]
        if not contracting:
            skipped["facility_not_contracted"] += 1
            continue
        known = [c for c in contracting if by_code[c.insurer_code].plan_on(c.plan_code, day) is not None]
        if not known:
            skipped["unknown_plan"] += 1
            continue
        # A charge already claimed from (sent to) an insurer stays with it while it covers the
        # charge: coverage from an earlier insurer in insurers.yaml arriving later must not bill
        # it to a second insurer (each DAG builds its own insurer only). New charges of the
        # visit are placed as usual.
        held = sent_to.get(key)
        known = [c for c in known if c.insurer_code == held] or known
        cov = min(known, key=lambda c: (order[c.insurer_code], -c.message_id, c.member_id))
        tt = _ttype(r.transaction_type)
        if tt == "CD":  # a credit takes away, whatever sign the sender used
            amount = -abs(amount)
            qty = (-abs(qty) or 0.0) if qty is not None else None  # never -0.0
        groups.setdefault((cov.insurer_code, fac, visit), []).append({
            "message_id": r.message_id, "ft1_seq": r.ft1_seq, "charge_code": r.charge_code,
            "description": r.description, "quantity": qty, "unit_amount": unit, "amount": amount,
            "charged_at": charged, "transaction_type": tt, "dx": r.diagnosis_codes, "coverage": cov,
            "patient_key": r.patient_key})

    computed: dict[str, dict] = {}
    claimed_lines = 0
    split, conflicts = _by_patient(engine, {k: v for k, v in groups.items() if k[0] in todo})
    held_back: set[str] = set()  # claims not written this time (a total the columns cannot hold)
    for (code, fac, visit, id_visit), lines in split.items():
        ins = by_code[code]
        lines.sort(key=lambda x: (x["charged_at"], x["charge_code"] or "", x["message_id"], x["ft1_seq"]))
        for n, ln in enumerate(lines, 1):
            ln["line_no"] = n
        last = max(lines, key=lambda x: (x["charged_at"], x["message_id"], x["ft1_seq"]))
        cov = last["coverage"]
        enc = encounters.get((fac, visit))
        dx: list[str] = []
        for src in ([enc.diagnosis_codes] if enc is not None else []) + [ln["dx"] for ln in lines]:
            for c in (src or "").split(";"):
                c = c.strip()
                if c and c not in dx:
                    dx.append(c)
        cid = claim_id_for(code, fac, id_visit)
        h = {"claim_id": cid, "insurer_code": code, "facility_code": fac, "visit_number": visit,
             "patient_key": last["patient_key"], "member_id": cov.member_id, "plan_code": cov.plan_code,
             "patient_class": enc.patient_class if enc is not None else None,
             "admit_at": _ts_text(enc.admit_at) if enc is not None else None,
             "discharge_at": _ts_text(enc.discharge_at) if enc is not None else None,
             "diagnosis_codes": ";".join(dx) or None, "copay_rate": ins.plan_on(cov.plan_code, last["charged_at"][:10]).copay,  # type: ignore[union-attr]
             "currency": CURRENCY, "first_charge_at": lines[0]["charged_at"],
             "last_charge_at": max(ln["charged_at"] for ln in lines)}
        view = _claim_view(h, lines, ins.columns)
        if abs(view.total) >= AMOUNT_LIMIT:
            # Lines each under the limit whose sum is not: the claim keeps what was written before.
            skipped["amount_out_of_range"] += len(lines)
            held_back.add(cid)
            continue
        computed[cid] = {"h": h, "lines": lines, "view": view, "ins": ins}
        claimed_lines += len(lines)

    per = {c: {"claims": 0, **dict.fromkeys(STATUSES, 0), "total_claimed": _ZERO, "written": 0, "deleted": 0}
           for c in todo}
    not_issued = 0
    with engine.begin() as conn:
        for code in todo:
            _lock(conn, code)
        existing = {r.claim_id: r for r in conn.execute(_q("existing_claims", "insurers"), {"insurers": todo})}
        extracted = set(conn.execute(_q("extracted_claim_ids", "insurers"), {"insurers": todo}).scalars())
        claim_rows, line_rows, relined, deleted = [], [], [], []

        def keep(h, lines, view, status, ex):
            row = (h["claim_id"], h["insurer_code"], h["facility_code"], h["visit_number"], h["patient_key"],
                   h["member_id"], h["plan_code"], h["patient_class"], h["admit_at"], h["discharge_at"],
                   h["diagnosis_codes"], h["first_charge_at"], h["last_charge_at"], len(lines),
                   str(view.total), float(h["copay_rate"]), str(view.copay), str(view.claimed), CURRENCY, status,
                   view.sha256, None, None, now_s, view.visible_sha256)
            s = per[h["insurer_code"]]
            s["claims"] += 1
            s[status] += 1
            s["total_claimed"] += view.claimed
            content_changed = ex is None or ex.content_sha256 != view.sha256 \
                or ex.visible_sha256 != view.visible_sha256
            if content_changed or _differs(ex, row):
                claim_rows.append(row)
                s["written"] += 1
            if content_changed or (ex.lines or 0) != len(lines):
                if ex is not None:
                    relined.append(h["claim_id"])
                line_rows.extend((h["claim_id"], ln["line_no"], ln["message_id"], ln["ft1_seq"], ln["charge_code"],
                                  ln["description"], ln["quantity"],
                                  None if ln["unit_amount"] is None else str(ln["unit_amount"]),
                                  str(_money(ln["amount"])), CURRENCY, ln["charged_at"]) for ln in lines)

        for cid, c in computed.items():
            ex = existing.get(cid)
            sent = ex.sent_sha256 if ex is not None else None
            view = c["view"]
            if view.total <= 0 and not sent and cid not in extracted:
                not_issued += 1  # nothing to claim (fully credited): never issued
                if ex is not None:
                    deleted.append(cid)
                continue
            if sent:
                status = "sent" if same_for_insurer(view.sha256, view.visible_sha256, sent,
                                                    ex.sent_visible_sha256) else "corrected"
            else:
                h = c["h"]
                status = "ready" if _settled(h["patient_class"], h["discharge_at"], h["last_charge_at"], now_dt,
                                             c["ins"].ready_after_days) else "open"
            keep(c["h"], c["lines"], view, status, ex)
        for cid, ex in existing.items():
            if cid in computed or cid in held_back:
                continue
            if ex.sent_sha256 or cid in extracted:
                # The insurer has (or will get) this claim: keep it, empty, so a correction cancels it.
                h = {"claim_id": cid, "insurer_code": ex.insurer_code, "facility_code": ex.facility_code,
                     "visit_number": ex.visit_number, "patient_key": ex.patient_key, "member_id": ex.member_id,
                     "plan_code": ex.plan_code, "patient_class": ex.patient_class,
                     "admit_at": _ts_text(ex.admit_at), "discharge_at": _ts_text(ex.discharge_at),
                     "diagnosis_codes": ex.diagnosis_codes, "copay_rate": ex.copay_rate, "currency": CURRENCY,
                     "first_charge_at": _ts_text(ex.first_charge_at), "last_charge_at": _ts_text(ex.last_charge_at)}
                view = _claim_view(h, [], by_code[ex.insurer_code].columns)
                status = ("sent" if same_for_insurer(view.sha256, view.visible_sha256, ex.sent_sha256,
                                                     ex.sent_visible_sha256) else "corrected") \
                    if ex.sent_sha256 else "ready"
                keep(h, [], view, status, ex)
            else:
                deleted.append(cid)
        for cid in deleted:
            per[existing[cid].insurer_code]["deleted"] += 1
        for ids in _chunks(relined + deleted):
            conn.execute(_q("delete_lines", "ids"), {"ids": ids})
        for ids in _chunks(deleted):
            conn.execute(_q("delete_claims", "ids"), {"ids": ids})
        w = Writer(conn)
        w.upsert("claim", CLAIM_COLUMNS, claim_rows, key=("claim_id",),
                 update=[c for c in CLAIM_COLUMNS if c not in _NOT_UPDATED])
        w.copy("claim_line", LINE_COLUMNS, line_rows)
    for s in per.values():
        s["total_claimed"] = str(s["total_claimed"])
    result = {"now": now_s, "charges": len(charges), "claimed_lines": claimed_lines, "skipped": skipped,
              "visit_conflicts": conflicts, "resent_replaced": replaced, "not_issued_non_positive": not_issued, "insurers": per}
    log.info("claims built as of %s: %d charges, %d claimed lines, skipped %s, per insurer %s", now_s,
             len(charges), claimed_lines, {k: v for k, v in skipped.items() if v},
             {c: {k: v for k, v in s.items() if k in ("claims", "open", "ready", "sent", "corrected")}
              for c, s in per.items()})
    return result


_COMPARED = ("patient_key", "member_id", "plan_code", "patient_class", "admit_at", "discharge_at", "diagnosis_codes",
             "first_charge_at", "last_charge_at", "lines", "status")


def _differs(ex, row: tuple) -> bool:
    """Whether a stored claim differs from the computed row in anything but ``updated_at`` (so an
    unchanged claim is not rewritten, and its ``updated_at`` says when it last changed)."""
    new = dict(zip(CLAIM_COLUMNS, row))
    for c in _COMPARED:
        a, b = getattr(ex, c), new[c]
        if c.endswith("_at"):
            a, b = _ts_text(a), _ts_text(b)
        if a != b:
            return True
    return abs(float(ex.copay_rate) - float(new["copay_rate"])) > 1e-12


def _settled(patient_class, discharge_at, last_charge_at, now_dt: datetime, days: int) -> bool:
    """Ready: the visit is over (an inpatient is discharged) and nothing is dated in the last ``days``."""
    if patient_class == "I" and not discharge_at:
        return False
    last = max(x for x in (last_charge_at, discharge_at) if x)
    return _dt(last) + timedelta(days=days) <= now_dt


# --------------------------------------------------------------------------------------------------
# extract


@dataclass
class ExtractResult:
    extract_id: int
    insurer: str
    period: str
    version: int
    reason: str | None
    out_dir: Path
    files: list[Path]
    manifest_path: Path
    manifest: dict
    claims: int
    lines: int
    total_claimed: Decimal
    rerun: bool = False
    new_claims: int = 0
    changed_claims: int = 0
    by_facility: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-able (XCom): paths as text, amounts as decimal strings."""
        return {"extract_id": self.extract_id, "insurer": self.insurer, "period": self.period,
                "version": self.version, "reason": self.reason, "out_dir": str(self.out_dir),
                "files": [p.name for p in self.files], "claims": self.claims, "lines": self.lines,
                "total_claimed": f"{self.total_claimed:.2f}", "rerun": self.rerun, "new_claims": self.new_claims,
                "changed_claims": self.changed_claims}


def version_dir(out_dir: str | os.PathLike, insurer: str, period: str, version: int) -> Path:
    """``<out>/<insurer>/<period>/v<N>``: every version in its own directory, never overwritten."""
    return Path(out_dir) / insurer / period / f"v{version}"


def extract(engine: Engine, insurers_cfg: InsurersConfig, insurer: str, period: str, out_dir, now=None,
            reason: str | None = None) -> ExtractResult:
    """Write the extract of ``insurer`` for ``period`` (see the module docstring for the rules).

    - First extract of the period: version 1, its ready claims (and earlier ones no extract carried).
    - No claim of the period changed since its latest version: that version's files again, byte for
      byte (same recorded generation time); with a reason, ``NothingToCorrect``. Claims of the
      period that became ready since are left to the next period's first version (catch-up).
    - Claims of the period changed since (``content_sha256`` differs from what the latest version
      carrying them held): with ``reason``, version N+1 holding exactly those claims, in full;
      without, ``CorrectionNeeded`` and nothing is written.
    ``now`` is the generation time recorded for a new version; the period must be over at ``now``.
    """
    ins = insurers_cfg.get(insurer)
    per = parse_period(ins.period, period)
    reason = _clean_reason(reason)
    now_s = _now_text(now)
    # Recorded absolute: a relative --out would be read from another directory at delivery.
    out_dir = Path(out_dir).resolve()
    if _dt(now_s).date() < per.end:
        raise PeriodError(f"{ins.code} {per.label} ends on {per.last_day}; extract it once it is over")
    with engine.connect() as conn:
        names = {r.facility_code: r.name for r in conn.execute(_q("facility_names"))}
    with engine.begin() as conn:
        _lock(conn, ins.code)
        versions = conn.execute(_q("period_versions"), {"insurer": ins.code, "period": per.label}).all()
        latest: dict = {}
        for r in conn.execute(_q("items"), {"insurer": ins.code}):
            latest[r.claim_id] = r
        new, changed = [], []
        end = per.end.isoformat()
        for c in conn.execute(_q("insurer_claims"), {"insurer": ins.code}):
            it = latest.get(c.claim_id)
            if it is None:
                day = _claim_day(c.patient_class, c.discharge_at, c.last_charge_at)
                if c.status == "ready" and (c.lines or 0) > 0 and day is not None and day < end:
                    new.append(c.claim_id)
            elif it.period == per.label and not same_for_insurer(c.content_sha256, c.visible_sha256,
                                                                 it.content_sha256, it.visible_sha256):
                changed.append(c.claim_id)
        rerun = keep_disk = False
        if not versions:
            if reason:
                raise ClaimsError(f"{ins.code} {per.label} has no version yet: the first version takes no reason")
            version, members, created, prev, included = 1, sorted(new), now_s, None, (len(new), 0)
        else:
            # Claims that became ready after the period was extracted are not added to it: the next
            # period's first version carries them (catch-up), so only content the insurer already
            # has can make a new version of this one.
            last = versions[-1]
            if changed and not reason:
                raise CorrectionNeeded(
                    f"{ins.code} {per.label} already has version {last.version} and {len(changed)} of its claims "
                    f"changed since: issue version {last.version + 1} with a reason (--reason)")
            if not changed:
                if reason:
                    raise NothingToCorrect(f"{ins.code} {per.label}: no claim changed since version "
                                           f"{last.version}; no correction to issue")
                rerun = True
                version, created, prev, reason, included = last.version, _ts_text(last.created_at), \
                    (versions[-2] if len(versions) > 1 else None), last.reason, (0, 0)
                members = sorted(conn.execute(_q("version_items"), {"extract_id": last.id}).scalars())
            else:
                version, members, created, prev = last.version + 1, sorted(changed), now_s, last
                included = (0, len(changed))
        built = _render(conn, ins, per, version, reason, created, members, names, prev)
        vdir = version_dir(out_dir, ins.code, per.label, version)
        if rerun:
            extract_id = versions[-1].id
            if versions[-1].out_dir != str(vdir):
                # Written again elsewhere (the DAG's folder after a hand-run --out): delivery reads
                # the files where they were last written.
                conn.execute(_q("move_extract"), {"id": extract_id, "out_dir": str(vdir)})
            if built["manifest_sha256"] != versions[-1].manifest_sha256:
                # Same claims, other bytes (configuration, facility names or a library version
                # changed): the recorded files stand if they are there, else the version is lost.
                disk = _recorded_files(vdir, built["manifest_name"], versions[-1].manifest_sha256)
                if disk is None:
                    raise ClaimsError(f"{ins.code} {per.label} version {version} cannot be reproduced byte for "
                                      f"byte (configuration, facility names or library versions changed) and its "
                                      f"files are not in {vdir}; nothing was written")
                keep_disk = True
                built["manifest"] = disk
        else:
            extract_id = Writer(conn).allocate_ids("claim_extract", 1)[0]
            conn.execute(_q("insert_extract"), {
                "id": extract_id, "insurer": ins.code, "period": per.label, "version": version, "reason": reason,
                "claims": len(members), "total_claimed": str(built["totals"]["montant_reclame"]),
                "manifest_sha256": built["manifest_sha256"], "out_dir": str(vdir), "created_at": created})
            if built["items"]:
                conn.execute(_q("insert_item"), [{"extract_id": extract_id, "claim_id": cid, "content_sha256": sha,
                                                  "visible_sha256": vis} for cid, sha, vis in built["items"]])
        kind = "re-run" if rerun else ("correction" if version > 1 else "first version")
        conn.execute(_q("insert_audit"), {
            "created_at": utcnow(), "outcome": "success", "peer": ins.code,
            "detail": (f"claims extract {ins.code} {per.label} v{version} ({kind}): {len(members)} claims, "
                       f"{built['lines']} lines, {built['totals']['montant_reclame']:.2f} {CURRENCY} claimed, "
                       f"{len(built['files'])} files")[:500]})
        # Written inside the transaction: if a file cannot be written nothing is recorded, and a
        # version recorded always has its files.
        if keep_disk:
            paths = [vdir / f["name"] for f in built["manifest"]["files"]] + [vdir / built["manifest_name"]]
        else:
            paths = _write_files(vdir, built["files"])
    manifest_path = vdir / built["manifest_name"]
    log.info("claims extract %s %s v%d%s: %d claims, %s %s claimed", ins.code, per.label, version,
             " (re-run, identical)" if rerun else "", len(members), built["totals"]["montant_reclame"], CURRENCY)
    return ExtractResult(extract_id, ins.code, per.label, version, reason, vdir, paths, manifest_path,
                         built["manifest"], len(members), built["lines"], built["totals"]["montant_reclame"], rerun,
                         included[0], included[1], built["manifest"]["by_facility"])


def _recorded_files(vdir: Path, manifest_name: str, manifest_sha256: str) -> dict | None:
    """The recorded manifest when it and every file it lists are in ``vdir`` unchanged, else None."""
    try:
        mbytes = (vdir / manifest_name).read_bytes()
        if hashlib.sha256(mbytes).hexdigest() != manifest_sha256:
            return None
        manifest = json.loads(mbytes)
        for f in manifest["files"]:
            if hashlib.sha256((vdir / f["name"]).read_bytes()).hexdigest() != f["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def recorded_extract(engine: Engine, insurer: str, period: str) -> dict | None:
    """The latest recorded version of a period (``ExtractResult.as_dict`` keys), or None."""
    with engine.connect() as conn:
        versions = conn.execute(_q("period_versions"), {"insurer": insurer, "period": period}).all()
        if not versions:
            return None
        ex = conn.execute(_q("extract_by_id"), {"extract_id": versions[-1].id}).first()
    return {"extract_id": ex.id, "insurer": ex.insurer_code, "period": ex.period, "version": ex.version,
            "reason": ex.reason, "out_dir": ex.out_dir, "claims": ex.claims,
            "total_claimed": f"{_money(ex.total_claimed):.2f}", "rerun": True}


def _render(conn, ins: Insurer, per: Period, version: int, reason, created: str, members: list[str], names: dict,
            prev) -> dict:
    heads: dict[str, dict] = {}
    lines: dict[str, list] = {cid: [] for cid in members}
    for ids in _chunks(members):
        for r in conn.execute(_q("claims_by_id", "ids"), {"ids": ids}):
            heads[r.claim_id] = dict(r._mapping)
        for r in conn.execute(_q("lines_by_claim", "ids"), {"ids": ids}):
            lines[r.claim_id].append(dict(r._mapping))
    rows, items = [], []
    by_fac: dict[str, dict] = {}
    by_plan: dict[tuple, dict] = {}
    n_lines = cancelled = 0
    for cid in members:
        h = heads.get(cid)
        if h is None:
            raise ClaimsError(f"claim {cid} vanished while extracting; run the extract again")
        v = _claim_view(h, lines[cid], ins.columns)
        if v.sha256 != h["content_sha256"]:
            # claim and claim_line are written together by build_claims: a mismatch means someone
            # edited them by hand, and the hash recorded for the insurer would be wrong.
            raise ClaimsError(f"claim {cid} does not match its recorded content hash; run build_claims again")
        items.append((cid, v.sha256, v.visible_sha256))
        rows.extend(v.rows)
        real = sum(1 for r in v.rows if r["ligne"] > 0)
        n_lines += real
        cancelled += real == 0
        for agg in (by_fac.setdefault(h["facility_code"], _agg()),
                    by_plan.setdefault((h["plan_code"] or "", float(h["copay_rate"])), _agg())):
            agg["claims"] += 1
            agg["lines"] += real
            agg["montant"] += v.total
            agg["ticket_moderateur"] += v.copay
            agg["montant_reclame"] += v.claimed
    rows.sort(key=lambda r: (r["formation"], r["numero_visite"], r["numero_demande"], r["ligne"]))
    totals = {k: sum((a[k] for a in by_fac.values()), _ZERO) for k in ("montant", "ticket_moderateur",
                                                                       "montant_reclame")}
    stem = f"{ins.code}_{per.label}_v{version}"
    files: list[tuple[str, str, bytes, int]] = []  # name, format, bytes, rows
    if "parquet" in ins.formats:
        files.append((f"{stem}_demandes.parquet", "parquet", _parquet(rows, ins.columns), len(rows)))
    if "csv" in ins.formats:
        files.append((f"{stem}_demandes.csv", "csv", _csv(rows, ins.columns), len(rows)))
    generated = created.replace(" ", "T") + "Z"
    summary = _summary(ins, per, version, reason, generated, len(members), n_lines, by_fac, by_plan, totals, names)
    files.append((f"{stem}_resume.md", "markdown", summary, 0))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "insurer": ins.code,
        "insurer_name": ins.name,
        "period": per.label,
        "period_type": ins.period,
        "period_start": per.start.isoformat(),
        "period_end": per.last_day.isoformat(),
        "version": version,
        "reason": reason,
        "previous_version": prev.version if prev is not None else None,
        "previous_manifest_sha256": prev.manifest_sha256 if prev is not None else None,
        "generated_at": generated,
        "currency": CURRENCY,
        "claims": len(members),
        "lines": n_lines,
        "cancelled_claims": cancelled,
        "totals": {k: f"{v:.2f}" for k, v in totals.items()},
        "by_facility": {f: {"claims": a["claims"], "lines": a["lines"],
                            **{k: f"{a[k]:.2f}" for k in ("montant", "ticket_moderateur", "montant_reclame")}}
                        for f, a in sorted(by_fac.items())},
        "columns": list(ins.columns),
        "files": [{"name": n, "format": fmt, "rows": rows_n if fmt != "markdown" else None, "bytes": len(b),
                   "sha256": hashlib.sha256(b).hexdigest()} for n, fmt, b, rows_n in files],
    }
    mbytes = (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    mname = f"{stem}_manifeste.json"
    return {"files": [(n, b) for n, _f, b, _r in files] + [(mname, mbytes)], "manifest": manifest,
            "manifest_name": mname, "manifest_sha256": hashlib.sha256(mbytes).hexdigest(), "items": items,
            "totals": totals, "lines": n_lines}


def _agg() -> dict:
    return {"claims": 0, "lines": 0, "montant": _ZERO, "ticket_moderateur": _ZERO, "montant_reclame": _ZERO}


def _write_files(vdir: Path, files: list[tuple[str, bytes]]) -> list[Path]:
    vdir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in files:
        p = vdir / name
        if p.is_file() and p.read_bytes() == data:
            out.append(p)  # identical already: leave the file (and its mtime) alone
            continue
        # Write then rename: whoever collects the folder never picks up a half-written file.
        tmp = p.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)
        out.append(p)
    return out


def _parquet(rows: list[dict], columns: tuple[str, ...]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"str": pa.string(), "date": pa.date32(), "int": pa.int32(), "float": pa.float64(),
             "amount": pa.decimal128(14, 2)}
    schema = pa.schema([pa.field(c, types[COLUMN_TYPES[c]]) for c in columns],
                       metadata={"hl7ics.claims_schema_version": str(SCHEMA_VERSION)})
    data = {}
    for c in columns:
        if COLUMN_TYPES[c] == "date":
            data[c] = [date.fromisoformat(r[c]) if r[c] else None for r in rows]
        else:
            data[c] = [r[c] for r in rows]
    table = pa.Table.from_pydict(data, schema=schema)
    buf = io.BytesIO()
    # Written to memory: no file times, and the only metadata is the schema and the writer's
    # version string, so the same rows give the same bytes.
    pq.write_table(table, buf, compression="snappy")
    return buf.getvalue()


def _csv(rows: list[dict], columns: tuple[str, ...]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, delimiter=";", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(columns)
    for r in rows:
        w.writerow([_csv_cell(r[c], COLUMN_TYPES[c]) for c in columns])
    # The BOM is how a spreadsheet knows the file is UTF-8 (accents in labels and names).
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def _csv_cell(v, typ: str) -> str:
    if v is None:
        return ""
    if typ == "amount":
        # A credit's co-payment that rounds to no franc is Decimal('-0.00'); a spreadsheet shows
        # "-0,00". The hash keeps the sign (_canon): only the cell is written as zero.
        return f"{(v if v else abs(v)):.2f}".replace(".", ",")
    if typ == "float":
        return _fr_number(v)
    if typ == "int":
        return str(v)
    return neutralize(str(v))


def _fr_number(v: float) -> str:
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v)).replace(".", ",")


def _fr_money(v: Decimal) -> str:
    s = f"{abs(v):,.2f}".replace(",", "\u00a0").replace(".", ",")
    return ("-" if v < 0 else "") + s


def _md(value) -> str:
    s = _terminal_safe(value if value is not None else "")
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_") \
        .replace("<", "&lt;").replace(">", "&gt;")


def _summary(ins: Insurer, per: Period, version: int, reason, generated: str, claims: int, lines: int,
             by_fac: dict, by_plan: dict, totals: dict, names: dict) -> bytes:
    amounts = ("montant", "ticket_moderateur", "montant_reclame")
    out = [f"# Demandes de remboursement — {_md(ins.code)} ({_md(ins.name)})", "",
           f"- Période : {per.label} (du {per.start.isoformat()} au {per.last_day.isoformat()})",
           f"- Version : {version}" + (" (correction)" if version > 1 else "")]
    if reason:
        out.append(f"- Motif de la correction : {_md(reason)}")
    out += [f"- Générée le : {generated.replace('T', ' ').rstrip('Z')} UTC",
            f"- Demandes : {claims} ; lignes d'actes : {lines}",
            "- Montants en francs CFA (XOF) ; ticket modérateur arrondi au franc, par ligne.", "",
            "## Par formation sanitaire", "",
            "| Formation | Nom | Demandes | Lignes | Montant | Ticket modérateur | Montant réclamé |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for fac, a in sorted(by_fac.items()):
        out.append(f"| {_md(fac)} | {_md(names.get(fac, ''))} | {a['claims']} | {a['lines']} | "
                   + " | ".join(_fr_money(a[k]) for k in amounts) + " |")
    out.append(f"| **Total** | | {claims} | {lines} | " + " | ".join(f"**{_fr_money(totals[k])}**" for k in amounts)
               + " |")
    out += ["", "## Par régime", "",
            "| Régime | Taux du ticket modérateur | Demandes | Lignes | Montant | Ticket modérateur "
            "| Montant réclamé |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (plan, rate), a in sorted(by_plan.items()):
        pct = _fr_number(round(rate * 100, 2))
        out.append(f"| {_md(plan)} | {pct} % | {a['claims']} | {a['lines']} | "
                   + " | ".join(_fr_money(a[k]) for k in amounts) + " |")
    if not by_fac:
        out += ["", "Aucune demande pour cette période."]
    return ("\n".join(out) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------------
# Delivery


def deliver_extract(engine: Engine, extract_id: int, delivery_spec: dict, resolve_connection=None, now=None,
                    force: bool = False) -> dict:
    """Hand an extract's files to ``transforms.delivery.deliver`` (data files, summary, then the
    manifest last: a receiver may take the manifest as "complete"), record ``claim_delivery`` and,
    when delivered, mark the extract's claims sent (``sent_sha256`` = the content it carried).

    The files are checked against the recorded manifest first. An extract already delivered is not
    sent again unless ``force``. A failed delivery is recorded, then raised (``DeliveryError`` when
    the delivery reported it, the delivery's own exception otherwise).
    """
    now_s = _now_text(now)
    with engine.connect() as conn:
        ex = conn.execute(_q("extract_by_id"), {"extract_id": extract_id}).first()
        if ex is None:
            raise ClaimsError(f"no claims extract with id {extract_id}")
        done = conn.execute(_q("delivered_of"), {"extract_id": extract_id}).all()
    if done and not force:
        d = done[-1]
        return {"extract_id": extract_id, "status": "already_delivered", "target": d.target, "files": d.files,
                "delivered_at": _ts_text(d.delivered_at)}
    vdir = Path(ex.out_dir)
    stem = f"{ex.insurer_code}_{ex.period}_v{ex.version}"
    mpath = vdir / f"{stem}_manifeste.json"
    try:
        mbytes = mpath.read_bytes()
    except OSError:
        raise ClaimsError(f"the manifest of {ex.insurer_code} {ex.period} v{ex.version} is missing from "
                          f"{vdir}; run the extract again to rewrite its files") from None
    if hashlib.sha256(mbytes).hexdigest() != ex.manifest_sha256:
        raise ClaimsError(f"the manifest of {ex.insurer_code} {ex.period} v{ex.version} changed on disk since "
                          "it was written; run the extract again")
    files = []
    for f in json.loads(mbytes)["files"]:
        p = vdir / f["name"]
        if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != f["sha256"]:
            raise ClaimsError(f"{f['name']} is missing or changed on disk; run the extract again")
        files.append(p)
    files.append(mpath)
    from .delivery import deliver

    kwargs = {"resolve_connection": resolve_connection} if resolve_connection is not None else {}
    try:
        res = deliver(files, delivery_spec, **kwargs)
    except Exception as exc:
        _record_delivery(engine, ex, _spec_target(delivery_spec), "failed", len(files),
                         f"{type(exc).__name__}: {_terminal_safe(exc)}"[:300], now_s)
        raise
    res = res if isinstance(res, dict) else {}
    status = "delivered" if res.get("status") == "delivered" else "failed"
    target = str(res.get("target") or _spec_target(delivery_spec))
    sent = res.get("files")
    n = len(sent) if isinstance(sent, (list, tuple)) else sent if isinstance(sent, int) else len(files)
    detail = None if status == "delivered" else _terminal_safe(res.get("detail") or res.get("status"))[:300]
    _record_delivery(engine, ex, target, status, n, detail, now_s)
    if status != "delivered":
        raise DeliveryError(f"delivery of {ex.insurer_code} {ex.period} v{ex.version} to {target} failed")
    log.info("claims extract %s %s v%d delivered to %s (%d files)", ex.insurer_code, ex.period, ex.version, target, n)
    return {"extract_id": extract_id, "status": status, "target": target, "files": n, "delivered_at": now_s}


def deliver_pending(engine: Engine, insurer: str, delivery_spec: dict, resolve_connection=None,
                    now=None) -> list[dict]:
    """Deliver every extract version of ``insurer`` that has not been delivered, oldest period and
    version first: a correction issued by hand (``hl7ics claims extract --reason``) and a version
    whose delivery failed go out with the next run, instead of waiting for someone to clear the
    run of their period. A version that cannot be delivered (its files gone) does not stop the
    others: it is reported with ``status`` "failed" and an ``error`` (no patient data)."""
    with engine.connect() as conn:
        ids = conn.execute(_q("undelivered_extracts"), {"insurer": insurer}).scalars().all()
    out = []
    for i in ids:
        try:
            out.append(deliver_extract(engine, i, delivery_spec, now=now, resolve_connection=resolve_connection))
        except Exception as exc:  # each version on its own; the caller decides what a failure means
            log.warning("claims extract %s could not be delivered: %s", i, type(exc).__name__)
            out.append({"extract_id": i, "status": "failed", "error": f"{type(exc).__name__}: {_terminal_safe(exc)}"[:300]})
    return out


def _spec_target(spec: dict) -> str:
    if spec.get("type") == "sftp":
        return f"sftp://{spec.get('conn_id')}{spec.get('path') or ''}"
    return str(spec.get("path") or spec.get("type") or "?")


def _record_delivery(engine: Engine, ex, target: str, status: str, files: int, detail, now_s: str) -> None:
    with engine.begin() as conn:
        _lock(conn, ex.insurer_code)
        conn.execute(_q("insert_delivery"), {"extract_id": ex.id, "target": target[:500], "status": status,
                                             "files": files, "detail": detail, "delivered_at": now_s})
        if status == "delivered":
            conn.execute(_q("mark_sent"), {"extract_id": ex.id, "period": ex.period, "now": now_s})


# --------------------------------------------------------------------------------------------------
# Status and command line


def status(engine: Engine, insurer: str) -> list[dict]:
    """One dict per extract version of ``insurer``, by period then version: claims, amount claimed,
    reason, deliveries (delivered / failed counts, last target, last delivery time) and, on the
    latest version of each period, ``corrections_pending``: claims of the period whose content
    changed since the version that last carried them (a correction version is due)."""
    with engine.connect() as conn:
        versions = conn.execute(_q("status_versions"), {"insurer": insurer}).all()
        targets: dict[int, str] = {}
        for r in conn.execute(_q("status_targets"), {"insurer": insurer}):
            targets[r.extract_id] = r.target
        latest: dict = {}
        for r in conn.execute(_q("items"), {"insurer": insurer}):
            latest[r.claim_id] = r
        current = {r.claim_id: r for r in conn.execute(_q("insurer_claims"), {"insurer": insurer})}
    pending: dict[str, int] = {}
    for cid, it in latest.items():
        c = current.get(cid)
        if c is not None and not same_for_insurer(c.content_sha256, c.visible_sha256, it.content_sha256,
                                                  it.visible_sha256):
            pending[it.period] = pending.get(it.period, 0) + 1
    last_of = {}
    for r in versions:
        last_of[r.period] = r.version
    return [{"insurer": insurer, "period": r.period, "version": r.version, "reason": r.reason, "claims": r.claims,
             "total_claimed": f"{_money(r.total_claimed):.2f}", "created_at": _ts_text(r.created_at),
             "out_dir": r.out_dir, "delivered": int(r.delivered), "failed_deliveries": int(r.failed),
             "delivered_at": _ts_text(r.delivered_at), "target": targets.get(r.id),
             "corrections_pending": pending.get(r.period, 0) if last_of[r.period] == r.version else 0}
            for r in versions]


def claim_counts(engine: Engine, insurer: str) -> dict:
    """Claims of ``insurer`` by status, and ``ready_not_extracted`` (ready, in no extract yet)."""
    with engine.connect() as conn:
        by = {r.status: int(r.n) for r in conn.execute(_q("status_counts"), {"insurer": insurer})}
        extracted = set(conn.execute(_q("extracted_claim_ids", "insurers"), {"insurers": [insurer]}).scalars())
        ready_new = sum(1 for r in conn.execute(_q("insurer_claims"), {"insurer": insurer})
                        if r.status == "ready" and r.claim_id not in extracted)
    return {**{s: by.get(s, 0) for s in STATUSES}, "ready_not_extracted": ready_new}


def _table(header: list[str], body: list[list[str]], numeric: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def _load_for_cli(ns):
    settings = Settings.load(getattr(ns, "config", None),
                             getattr(ns, "warehouse_url", None) or getattr(ns, "warehouse", None))
    cfg = load_insurers(settings.config_dir / "insurers.yaml", [f.code for f in settings.facilities()])
    from .warehouse import get_engine

    return settings, cfg, get_engine(settings.warehouse_url)


def cli_extract(ns, out=None, err=None) -> int:
    """``hl7ics claims extract --insurer INAM --period 2026-W45 [--out DIR] [--reason R] [--warehouse URL]``.

    ``ns`` has insurer, period, out (default ``<HL7ICS_DATA_DIR>/claims``), warehouse_url (optional:
    reason, config). Builds the insurer's claims as of now, then extracts the period. Exit codes: 0
    written (or re-run identical); 1 refused (changes since the last version without a reason,
    nothing to correct, version not reproducible); 2 configuration, period or warehouse error.
    """
    from sqlalchemy.exc import SQLAlchemyError

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings, cfg, engine = _load_for_cli(ns)
        ins = cfg.get(ns.insurer)
        parse_period(ins.period, ns.period)
        now = utcnow()
        built = build_claims(engine, cfg, now, insurers=[ins.code])
        res = extract(engine, cfg, ins.code, ns.period, Path(ns.out) if getattr(ns, "out", None)
                      else settings.data_dir / "claims", now, reason=getattr(ns, "reason", None))
    except (ConfigError, PeriodError) as exc:
        print(f"error: {exc}", file=err)
        return 2
    except ClaimsError as exc:
        print(f"refused: {exc}", file=err)
        return 1
    except SQLAlchemyError as exc:
        print(f"error: warehouse: {type(exc).__name__} (details in the log)", file=err)
        log.exception("claims extract: warehouse error")
        return 2
    head = f"{res.insurer} {res.period} version {res.version}"
    if res.rerun:
        head += " (re-run: files identical to the recorded version)"
    elif res.reason:
        head += f" (correction: {_terminal_safe(res.reason)})"
    print(head, file=out)
    body = [[_terminal_safe(f), str(a["claims"]), str(a["lines"]), a["montant"], a["ticket_moderateur"],
             a["montant_reclame"]] for f, a in res.by_facility.items()]
    t = res.manifest["totals"]
    body.append(["TOTAL", str(res.claims), str(res.lines), t["montant"], t["ticket_moderateur"], t["montant_reclame"]])
    print(_table(["facility", "claims", "lines", "amount XOF", "co-payment", "claimed"], body, {1, 2, 3, 4, 5}),
          file=out)
    skipped = {k: v for k, v in built["skipped"].items() if v}
    if skipped:
        print("charges not claimed (all insurers): " + ", ".join(f"{k} {v}" for k, v in skipped.items()), file=out)
    c = built["insurers"][res.insurer]
    print(f"{res.insurer} claims now: open {c['open']}, ready {c['ready']}, sent {c['sent']}, "
          f"corrected {c['corrected']}", file=out)
    for p in res.files:
        print(f"  {p}", file=out)
    return 0


def cli_status(ns, out=None, err=None) -> int:
    """``hl7ics claims status [--insurer CODE] [--warehouse URL]``: per insurer, every period and
    version with its claims, amount, reason and deliveries, pending corrections, and the claims by
    status. Exit codes: 0; 2 configuration or warehouse error."""
    from sqlalchemy.exc import SQLAlchemyError

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        _settings, cfg, engine = _load_for_cli(ns)
        wanted = [cfg.get(ns.insurer)] if getattr(ns, "insurer", None) else list(cfg.insurers)
        blocks = [(ins, status(engine, ins.code), claim_counts(engine, ins.code)) for ins in wanted]
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return 2
    except SQLAlchemyError as exc:
        print(f"error: warehouse: {type(exc).__name__} (details in the log)", file=err)
        log.exception("claims status: warehouse error")
        return 2
    for k, (ins, rows, counts) in enumerate(blocks):
        if k:
            print("", file=out)
        print(f"{ins.code} — {_terminal_safe(ins.name)} ({ins.period}, {ins.delivery['type']})", file=out)
        if rows:
            body = [[r["period"], str(r["version"]), r["created_at"] or "", str(r["claims"]), r["total_claimed"],
                     ("delivered" if r["delivered"] else "failed" if r["failed_deliveries"] else "not delivered"),
                     r["delivered_at"] or "", str(r["corrections_pending"] or ""),
                     _terminal_safe(r["reason"] or "")[:60]] for r in rows]
            print(_table(["period", "version", "created (UTC)", "claims", "claimed XOF", "delivery", "delivered at",
                          "corrections due", "reason"], body, {1, 3, 4, 7}), file=out)
        else:
            print("no extract yet", file=out)
        print(f"claims: open {counts['open']}, ready {counts['ready']} (not yet extracted "
              f"{counts['ready_not_extracted']}), sent {counts['sent']}, corrected {counts['corrected']}", file=out)
    return 0
