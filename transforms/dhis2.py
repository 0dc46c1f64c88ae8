"""DHIS2 export of weekly IDSR surveillance for the MoH's statisticians (DSNISI).

Inputs: ``rpt_idsr_weekly`` (facility x ISO week x disease x age band x sex: suspected, confirmed,
deaths; migration 008) joined to ``dim_facility.dhis2_org_unit``; ``config/dhis2.yaml``
(``Dhis2Mapping``: data set, disease x measure -> data element code, age band x sex -> category
option combo code, attribute option combo, whether zeros are sent), checked against the disease
codes of ``config/idsr.yaml``; for a push, the DHIS2 base URL and the credentials of the Airflow
connection ``hl7ics_dhis2`` (``AIRFLOW_CONN_HL7ICS_DHIS2`` outside Airflow: basic auth login and
password, or a personal access token sent as ``Authorization: ApiToken ...``).

Outputs: a ``dataValueSets`` JSON payload in DHIS2's documented Web API format (``dataSet``,
``period``, ``dataValues`` of ``dataElement``, ``period``, ``orgUnit``, ``categoryOptionCombo``,
``attributeOptionCombo`` and ``value`` as a string; identifiers are codes, sent with
``idScheme=code``), in a fixed order so the same week always gives the same bytes; a file
(``write_export``) and/or a POST to ``<url>/api/dataValueSets`` (``push``: a server dry run
first, the real import only when the dry run had no conflict and no ERROR); one ``dhis2_export``
row per file, dry run and push with DHIS2's import summary; a result with ``needs_alert`` that
``alert_for`` turns into the params of a ``dhis2_import`` alert. No ``completeDate``: DHIS2 records
completeness per org unit while one payload spans many, and a date would change the bytes daily.

Not suppressed by default, on purpose: DHIS2 is the MoH's own access-controlled system of record
and IDSR needs exact counts (one cholera case must be reported). ``suppress=K`` leaves out counts
of 1..K-1 for a public instance. *Non masqué par défaut : DHIS2 est le système de référence du
Ministère, à accès contrôlé, et l'IDSR exige des comptes exacts.*

Counts per facility only: no patient data is read. Credentials never reach logs, exceptions, the
``dhis2_export`` table or the output: the URL may not carry them, the Authorization header is not
forwarded on a redirect (redirects are refused), and anything stored from DHIS2's answer is
scrubbed of the secret. No Airflow import here.
"""
from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .alerting import NoRedirect
from .config import ConfigError, Settings, read_yaml
from .reporting import AGE_GROUPS, SEXES, IdsrConfig
from .warehouse import named_queries, utcnow

log = logging.getLogger(__name__)

SQL_FILE = "dhis2.sql"
MEASURES = ("suspected", "confirmed", "deaths")
MODES = ("file", "dry_run", "push")
DEFAULT_CONNECTION_ID = "hl7ics_dhis2"
ALERT_KIND = "dhis2_import"
# Every identifier in the payload is a code: the mapping is readable and survives a DHIS2 metadata
# re-import, where UIDs would not.
ID_SCHEMES = (("dataElementIdScheme", "code"), ("orgUnitIdScheme", "code"),
              ("categoryOptionComboIdScheme", "code"), ("idScheme", "code"))
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,49}$")  # DHIS2 codes are at most 50 characters
_PERIOD = re.compile(r"^(\d{4})-?W(\d{1,2})$")
_MAX_BODY = 2_000_000      # bytes read from a DHIS2 answer: a summary with every conflict fits
_MAX_CONFLICTS_SHOWN = 20  # in the result and the terminal; the table keeps the whole summary


class PeriodError(ValueError):
    """A period that is not a DHIS2 weekly period (``2026W45``) of an existing ISO week."""


class Dhis2Error(RuntimeError):
    """A DHIS2 exchange failed. The message names the URL without credentials, never a secret."""


class Dhis2HttpError(Dhis2Error):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------------
# Periods


def _split_period(value) -> tuple[int, int]:
    m = _PERIOD.match(value.strip()) if isinstance(value, str) else None
    if not m:
        shown = repr(value)[:40]
        raise PeriodError(f"period must be a DHIS2 weekly period like 2026W45 (or the ISO week 2026-W45), "
                          f"not {shown}")
    year, week = int(m.group(1)), int(m.group(2))
    try:
        date.fromisocalendar(year, week, 1)
    except ValueError:
        raise PeriodError(f"{year} has no ISO week {week} (weeks run from 1 to 52, or 53 in long years)") from None
    return year, week


def dhis2_period(value: str) -> str:
    """``2026W45``, ``2026W05``, ``2026W5`` or ``2026-W45`` -> DHIS2's weekly period ``2026W45``
    (``yyyyWn``: DHIS2 writes the week without a leading zero, ``2026W5``)."""
    year, week = _split_period(value)
    return f"{year}W{week}"


def iso_week(value: str) -> str:
    """A DHIS2 weekly period (or ISO week) -> the warehouse's ``iso_week``: ``2026W5`` -> ``2026-W05``."""
    year, week = _split_period(value)
    return f"{year}-W{week:02d}"


# --------------------------------------------------------------------------------------------------
# Mapping (config/dhis2.yaml)


@dataclass(frozen=True)
class Dhis2Mapping:
    """What goes where in DHIS2. ``data_elements`` maps (disease, measure) to a data element code;
    ``category_option_combos`` maps (age band, sex) to a category option combo code. Several age
    bands or sexes may share one combo (a coarser DHIS2 category): their counts are added."""
    data_set: str
    data_elements: dict
    category_option_combos: dict
    attribute_option_combo: str = "default"
    include_zeros: bool = False
    connection_id: str = DEFAULT_CONNECTION_ID

    @property
    def diseases(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for d, _ in self.data_elements))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, idsr_path: str | os.PathLike | None = None) -> "Dhis2Mapping":
        """Read and validate ``config/dhis2.yaml`` against the diseases of ``config/idsr.yaml``
        (both default to the configuration directory, ``--config`` / ``HL7ICS_CONFIG``)."""
        cdir = Settings.load().config_dir
        p = Path(path) if path else cdir / "dhis2.yaml"
        idsr = Path(idsr_path) if idsr_path else p.parent / "idsr.yaml"
        if not p.is_file():
            raise ConfigError(f"{p}: DHIS2 mapping not found (set --config or HL7ICS_CONFIG)")
        doc = read_yaml(p)
        known = tuple(d.code for d in IdsrConfig.load(idsr).diseases)
        return cls.from_dict(doc, known, p.name, idsr.name)

    @classmethod
    def from_dict(cls, doc, known_diseases, origin: str = "dhis2.yaml", idsr_name: str = "idsr.yaml") -> "Dhis2Mapping":
        if not isinstance(doc, dict) or not isinstance(doc.get("dhis2"), dict):
            raise ConfigError(f"{origin}: expected a top-level 'dhis2:' mapping")
        d = doc["dhis2"]
        allowed = {"data_set", "attribute_option_combo", "include_zeros", "connection_id", "diseases",
                   "category_option_combos"}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"{origin}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                              f"(expected {', '.join(sorted(allowed))})")

        def code(value, where: str) -> str:
            if not isinstance(value, str) or not _CODE.match(value):
                raise ConfigError(f"{origin}: {where} must be a DHIS2 code (1-50 letters, digits, '_', '-', '.'), "
                                  f"not {str(value)[:60]!r}")
            return value

        data_set = code(d.get("data_set"), "data_set")
        aoc = code(d.get("attribute_option_combo", "default"), "attribute_option_combo")
        zeros = d.get("include_zeros", False)
        if not isinstance(zeros, bool):
            raise ConfigError(f"{origin}: include_zeros must be true or false")
        conn_id = d.get("connection_id", DEFAULT_CONNECTION_ID)
        if not isinstance(conn_id, str) or not re.match(r"^[A-Za-z0-9_]+$", conn_id):
            raise ConfigError(f"{origin}: connection_id must be an Airflow connection id (letters, digits, '_')")

        diseases = d.get("diseases")
        if not isinstance(diseases, dict) or not diseases:
            raise ConfigError(f"{origin}: 'diseases' must map IDSR disease codes to their data elements")
        known = set(known_diseases)
        elements: dict[tuple[str, str], str] = {}
        used: dict[str, str] = {}
        for disease, measures in diseases.items():
            if disease not in known:
                raise ConfigError(f"{origin}: diseases: {disease!s} is not a disease code of {idsr_name} "
                                  f"(known: {', '.join(sorted(known))})")
            if not isinstance(measures, dict) or not measures:
                raise ConfigError(f"{origin}: diseases: {disease}: map measures ({', '.join(MEASURES)}) to data "
                                  "element codes")
            for measure, de in measures.items():
                if measure not in MEASURES:
                    raise ConfigError(f"{origin}: diseases: {disease}: measure {measure!s} is not one of "
                                      f"{', '.join(MEASURES)}")
                de = code(de, f"diseases: {disease}: {measure}")
                if de in used:
                    # Two diseases or measures in one data element would add unrelated counts, or
                    # the second value would overwrite the first in DHIS2: almost surely a typo.
                    raise ConfigError(f"{origin}: data element code {de} is used twice ({used[de]} and "
                                      f"{disease} {measure})")
                used[de] = f"{disease} {measure}"
                elements[(disease, measure)] = de

        combos_raw = d.get("category_option_combos")
        if not isinstance(combos_raw, dict):
            raise ConfigError(f"{origin}: 'category_option_combos' must map each age group to F, M and U combo codes")
        for group in combos_raw:
            if group not in AGE_GROUPS:
                raise ConfigError(f"{origin}: category_option_combos: {group!s} is not an age group of "
                                  f"rpt_idsr_weekly ({', '.join(AGE_GROUPS)})")
        combos: dict[tuple[str, str], str] = {}
        for group in AGE_GROUPS:
            by_sex = combos_raw.get(group)
            if not isinstance(by_sex, dict):
                raise ConfigError(f"{origin}: category_option_combos: missing age group {group!r} "
                                  f"(each of {', '.join(AGE_GROUPS)} needs F, M and U)")
            for sex in by_sex:
                if sex not in SEXES:
                    raise ConfigError(f"{origin}: category_option_combos: {group}: {sex!s} is not a sex of "
                                      f"rpt_idsr_weekly ({', '.join(SEXES)})")
            for sex in SEXES:
                if by_sex.get(sex) in (None, ""):
                    raise ConfigError(f"{origin}: category_option_combos: no combo for age group {group!r} "
                                      f"and sex {sex!r}")
                combos[(group, sex)] = code(by_sex[sex], f"category_option_combos: {group}: {sex}")
        return cls(data_set, elements, combos, aoc, zeros, conn_id)


# --------------------------------------------------------------------------------------------------
# Building the payload


def _queries() -> dict[str, str]:
    """The named queries of ``sql/dhis2.sql`` (``-- name: key`` starts each one)."""
    return named_queries(SQL_FILE)


def _check_suppress(suppress) -> int | None:
    if suppress is None:
        return None
    if isinstance(suppress, bool) or not isinstance(suppress, int) or suppress < 2:
        raise ConfigError(f"--suppress K needs an integer K of at least 2 (counts 1..K-1 are left out), "
                          f"not {str(suppress)[:20]!r}")
    return suppress


@dataclass
class Export:
    """A built payload and what it left out, for the summary and the checks."""
    payload: dict
    iso_week: str
    org_units: list[str]
    totals: dict                      # measure -> sum of the values sent
    zeros_omitted: int = 0
    suppressed: int = 0               # values of 1..K-1 left out by --suppress K
    not_exported: dict = field(default_factory=dict)          # (disease, measure) -> count with no data element
    unmapped_facilities: dict = field(default_factory=dict)   # facility -> {measure: count}, no org unit
    zeroed: int = 0                   # cells sent before with a count, now absent: sent as "0"

    @property
    def values(self) -> int:
        return len(self.payload["dataValues"])


FILE_TARGET = "file"  # dhis2_sent_value's target for a file written to be imported elsewhere


def prepare(engine: Engine, period: str, mapping: Dhis2Mapping, suppress: int | None = None,
            target: str = FILE_TARGET) -> Export:
    """Read one ISO week from ``rpt_idsr_weekly`` and build its DHIS2 payload (see
    ``build_data_value_set``) for ``target``: an instance's base URL, or ``FILE_TARGET``."""
    pe, week = dhis2_period(period), iso_week(period)
    k = _check_suppress(suppress)
    q = _queries()
    with engine.connect() as conn:
        rows = conn.execute(text(q["weekly_cells"]), {"iso_week": week}).all()
        unmapped_rows = conn.execute(text(q["unmapped_facilities"]), {"iso_week": week}).all()
        sent_rows = conn.execute(text(q["sent_values"]), {"data_set": mapping.data_set, "period": pe,
                                                          "target": target}).all()
        mapped = set(conn.execute(text(q["mapped_org_units"])).scalars())

    cells: dict[tuple[str, str, str], int] = {}
    measure_of = {de: m for (_, m), de in mapping.data_elements.items()}
    not_exported: dict[tuple[str, str], int] = {}
    for r in rows:
        coc = mapping.category_option_combos.get((r.age_group, r.sex))
        if coc is None:
            # The config covers every band and sex of the warehouse contract; a row outside it is
            # a broken contract, and dropping its cases silently would under-report.
            raise Dhis2Error(f"rpt_idsr_weekly has age group {str(r.age_group)[:20]!r} / sex {str(r.sex)[:5]!r} "
                             "with no category option combo in dhis2.yaml")
        for measure in MEASURES:
            n = int(getattr(r, measure))
            if n < 0:
                raise Dhis2Error(f"rpt_idsr_weekly has a negative {measure} count for {r.disease} in {week}")
            de = mapping.data_elements.get((r.disease, measure))
            if de is None:
                if n:
                    not_exported[(r.disease, measure)] = not_exported.get((r.disease, measure), 0) + n
                continue
            key = (r.org_unit, de, coc)
            cells[key] = cells.get(key, 0) + n

    values, zeros, suppressed = [], 0, 0
    totals = dict.fromkeys(MEASURES, 0)
    aoc = mapping.attribute_option_combo
    held = set()  # cells with a count this week, sent or suppressed
    for (ou, de, coc), n in cells.items():
        if n == 0 and not mapping.include_zeros:
            zeros += 1
            continue
        held.add((ou, de, coc, aoc))
        if k and 0 < n < k:
            suppressed += 1
            continue
        totals[measure_of[de]] += n
        values.append({"dataElement": de, "period": pe, "orgUnit": ou, "categoryOptionCombo": coc,
                       "attributeOptionCombo": aoc, "value": str(n)})
    # A cell handed over before with a count, and now absent (its count fell to zero, or the row
    # went away), gets an explicit zero: DHIS2 keeps a value until it is told otherwise.
    # What this target was handed; a row from before targets were recorded only where it has none.
    sent: dict[tuple, str] = {}
    for r in sorted(sent_rows, key=lambda r: r.target != ""):
        sent[(r.org_unit, r.data_element, r.category_option_combo, r.attribute_option_combo)] = r.value
    zeroed = 0
    for cell, value in sent.items():
        # Only org units still mapped to a facility: one whose code was emptied or changed in the
        # configuration has counts this export cannot see, and zeros would erase them in DHIS2.
        if value != "0" and cell not in held and cell[0] in mapped:
            zeroed += 1
            values.append({"dataElement": cell[1], "period": pe, "orgUnit": cell[0], "categoryOptionCombo": cell[2],
                           "attributeOptionCombo": cell[3], "value": "0"})
    # Sorted here, not in SQL: PostgreSQL orders text by collation and SQLite by bytes.
    values.sort(key=lambda v: (v["orgUnit"], v["dataElement"], v["categoryOptionCombo"]))
    payload = {"dataSet": mapping.data_set, "period": pe, "dataValues": values}
    unmapped = {r.facility_code: {m: int(getattr(r, m)) for m in MEASURES} for r in unmapped_rows}
    return Export(payload, week, sorted({v["orgUnit"] for v in values}), totals, zeros, suppressed,
                  dict(sorted(not_exported.items())), dict(sorted(unmapped.items())), zeroed)


def build_data_value_set(engine: Engine, period: str, mapping: Dhis2Mapping, suppress: int | None = None,
                         target: str = FILE_TARGET) -> dict:
    """The DHIS2 ``dataValueSets`` payload of one week at facility org-unit level.

    ``period`` is a DHIS2 weekly period (``2026W45``; ``2026-W45`` is accepted too). One data value
    per org unit x data element x category option combo, values as strings, ordered by org unit,
    data element and combo. Zero counts are left out unless ``mapping.include_zeros``, except for
    a cell handed over before with a count (``dhis2_sent_value``): it is sent as "0". With
    ``suppress`` K, counts of 1..K-1 are left out (public instance only).
    """
    return prepare(engine, period, mapping, suppress, target).payload


def dumps(payload: dict) -> bytes:
    """The payload as UTF-8 JSON bytes, the same for the same payload (keys in construction order)."""
    return (json.dumps(payload, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------------
# Recording


def record_export(engine: Engine, *, period: str, data_set: str, mode: str, target: str | None, values_sent: int,
                  status: str, counts: dict | None = None, conflicts: int | None = None,
                  summary: str | None = None) -> int:
    """One ``dhis2_export`` row; returns its id. ``summary`` must already be free of credentials."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    counts = counts or {}
    with engine.begin() as conn:
        return conn.execute(text(_queries()["insert_export"]), {
            "created_at": utcnow(), "period": period, "data_set": data_set, "mode": mode, "target": target,
            "values_sent": values_sent, "status": status, "imported": counts.get("imported"),
            "updated": counts.get("updated"), "ignored": counts.get("ignored"), "deleted": counts.get("deleted"),
            "conflicts": conflicts, "summary": summary}).scalar_one()


def record_sent(engine: Engine, payload: dict, target: str) -> None:
    """Remember the values of a payload handed over to ``target`` (a file written, or an import
    DHIS2 accepted), so a later payload of the same period to it can zero a cell that is gone."""
    from .warehouse import Writer

    now = utcnow()
    rows = [(target, payload["dataSet"], payload["period"], v["orgUnit"], v["dataElement"],
             v["categoryOptionCombo"], v["attributeOptionCombo"], v["value"], now) for v in payload["dataValues"]]
    cols = ("target", "data_set", "period", "org_unit", "data_element", "category_option_combo",
            "attribute_option_combo", "value", "sent_at")
    with engine.begin() as conn:
        Writer(conn).upsert("dhis2_sent_value", cols, rows, key=cols[:7], update=("value", "sent_at"))


def exports_for_period(engine: Engine, period: str) -> list[dict]:
    """The ``dhis2_export`` rows of a DHIS2 period, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(text(_queries()["exports_for_period"]), {"period": dhis2_period(period)}).mappings().all()
    return [dict(r) for r in rows]


def write_export(payload: dict, out: Path, *, engine: Engine | None = None, handed_over: bool = True) -> Path:
    """Write the payload to ``out`` (replaced atomically: a reader never sees half a file); with
    ``engine``, record it in ``dhis2_export`` (mode ``file``) and, when the file is what goes to
    DHIS2 (``handed_over``; not a copy kept beside a push), its values in ``dhis2_sent_value``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(dumps(payload))
    os.replace(tmp, out)
    if engine is not None:
        record_export(engine, period=payload["period"], data_set=payload["dataSet"], mode="file", target=str(out),
                      values_sent=len(payload["dataValues"]), status="written")
        if handed_over:
            record_sent(engine, payload, FILE_TARGET)
    return out


# --------------------------------------------------------------------------------------------------
# Credentials


@dataclass(frozen=True)
class Dhis2Auth:
    """DHIS2 credentials: ``basic`` (user and password) or ``token`` (a personal access token, sent
    as ``Authorization: ApiToken <token>``). The secret never shows in ``repr``."""
    kind: str
    secret: str = field(repr=False)
    user: str | None = None

    def __post_init__(self):
        if self.kind not in ("basic", "token"):
            raise ValueError("kind must be 'basic' or 'token'")
        if not self.secret or (self.kind == "basic" and not self.user):
            raise ValueError("basic auth needs a user and a password; token auth needs a token")

    def header(self) -> str:
        if self.kind == "token":
            return f"ApiToken {self.secret}"
        return "Basic " + base64.b64encode(f"{self.user}:{self.secret}".encode("utf-8")).decode("ascii")

    def scrub(self, value: str) -> str:
        """``value`` with the secret (and the encoded header) replaced by ``***``."""
        for s in (self.header().split(" ", 1)[1], self.secret):
            value = value.replace(s, "***")
        return value


def _as_auth(auth) -> Dhis2Auth | None:
    if auth is None or isinstance(auth, Dhis2Auth):
        return auth
    if isinstance(auth, tuple) and len(auth) == 2:
        return Dhis2Auth("basic", auth[1], auth[0])
    raise TypeError("auth must be a Dhis2Auth, a (user, password) tuple or None")


def auth_from_connection(conn: dict | None) -> Dhis2Auth | None:
    """Credentials from an Airflow-style connection dict (login, password, extra): a token in extra
    ``token`` (or ``api_token``), or a password without login starting with ``d2pat_``, is a
    personal access token; otherwise login and password are basic auth."""
    if not conn:
        return None
    extra = conn.get("extra") or {}
    token = extra.get("token") or extra.get("api_token")
    if token:
        return Dhis2Auth("token", str(token))
    login, password = conn.get("login"), conn.get("password")
    if password and not login and str(password).startswith("d2pat_"):
        return Dhis2Auth("token", str(password))
    if login and password:
        return Dhis2Auth("basic", str(password), str(login))
    return None


def url_from_connection(conn: dict | None) -> str | None:
    """The DHIS2 base URL of a connection: extra ``url``, else a host holding a full URL, else
    protocol (an http/https schema or connection type; https by default), host, port and the
    path (the connection's schema, e.g. ``dhis`` for ``https://host/dhis``)."""
    if not conn:
        return None
    extra = conn.get("extra") or {}
    if extra.get("url") or extra.get("base_url"):
        return str(extra.get("url") or extra.get("base_url"))
    host = conn.get("host")
    if not host:
        return None
    if "://" in host:
        return host.rstrip("/")
    schema = conn.get("schema") or ""
    proto = schema if schema in ("http", "https") else conn.get("conn_type") \
        if conn.get("conn_type") in ("http", "https") else "https"
    path = "" if schema in ("http", "https", "") else "/" + schema.strip("/")
    return f"{proto}://{host}" + (f":{conn['port']}" if conn.get("port") else "") + path


def dhis2_connection(conn_id: str = DEFAULT_CONNECTION_ID) -> tuple[str | None, Dhis2Auth | None]:
    """Base URL and credentials from ``AIRFLOW_CONN_<CONN_ID>`` (URI or JSON, read as Airflow
    would). ``(None, None)`` when it is not set. In a task, pass a dict from Airflow's
    ``Connection.get`` to ``url_from_connection`` / ``auth_from_connection`` instead."""
    from .alerting import connection_from_env

    conn = connection_from_env(conn_id)
    return url_from_connection(conn), auth_from_connection(conn)


# --------------------------------------------------------------------------------------------------
# Pushing


def base_url(url: str) -> str:
    """A DHIS2 base URL checked and normalised (no trailing ``/`` or ``/api``). Credentials in
    the URL are refused: they would end up in shell history, process lists and the export table."""
    parts = urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("the DHIS2 URL must be http(s)://host[:port][/path], e.g. https://dhis2.sante.gouv.tg")
    if parts.username or parts.password or "@" in parts.netloc:
        raise ConfigError("the DHIS2 URL must not hold credentials: put them in the connection "
                          f"{DEFAULT_CONNECTION_ID} (AIRFLOW_CONN_HL7ICS_DHIS2)")
    if parts.query or parts.fragment:
        raise ConfigError("the DHIS2 URL must not have a query or fragment; give the base URL of the instance")
    path = parts.path.rstrip("/")
    if path.endswith("/api"):
        path = path[:-4]
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        log.warning("DHIS2 URL %s is plain http: credentials and counts cross the network unencrypted",
                    parts.hostname)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _endpoint(base: str, dry_run: bool) -> str:
    return f"{base}/api/dataValueSets?" + urlencode(ID_SCHEMES + (("dryRun", "true" if dry_run else "false"),))


def _post(url: str, body: bytes, auth: Dhis2Auth | None, timeout: float, target: str) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json", "User-Agent": "hl7ics-dhis2"})
    if auth is not None:
        req.add_unredirected_header("Authorization", auth.header())
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read(_MAX_BODY), ""
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(_MAX_BODY) or b"", exc.headers.get("Location", "") if exc.headers else ""
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise Dhis2Error(f"cannot reach DHIS2 at {target}: {type(reason).__name__}: {str(reason)[:120]}") from None


def parse_import_summary(body) -> dict | None:
    """DHIS2's import summary, flat (before 2.36) or wrapped in ``response`` (2.36 and later), as
    ``{status, imported, updated, ignored, deleted, conflicts: [...], description}``; None when
    the body is not an import summary (an error page, a login page)."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("importCount"), dict):
        s = body
    elif isinstance(body.get("response"), dict) and isinstance(body["response"].get("importCount"), dict):
        s = body["response"]
    else:
        return None
    count = s["importCount"]
    conflicts = s.get("conflicts") or []
    status = str(s.get("status") or body.get("status") or "").upper()
    if status == "OK":
        status = "SUCCESS"
    out = {"status": status or "UNKNOWN", "conflicts": conflicts if isinstance(conflicts, list) else [],
           "description": str(s.get("description") or "")[:300]}
    for k in ("imported", "updated", "ignored", "deleted"):
        try:
            out[k] = int(count.get(k) or 0)
        except (TypeError, ValueError):
            out[k] = 0
    return out


def _conflict_lines(conflicts: list) -> list[dict]:
    out = []
    for c in conflicts[:_MAX_CONFLICTS_SHOWN]:
        if isinstance(c, dict):
            item = {"object": str(c.get("object", ""))[:100], "value": str(c.get("value", ""))[:200]}
            if c.get("errorCode"):
                item["errorCode"] = str(c["errorCode"])[:20]
            out.append(item)
    return out


_HTTP_HINTS = {
    401: "DHIS2 refused the credentials (HTTP 401): check the login and password or the token of the connection",
    403: "the DHIS2 user may not import data values here (HTTP 403): check its authorities and org units",
    404: "no DHIS2 API at this URL (HTTP 404): check the base URL (without /api)",
}


def _exchange(engine, payload: dict, body: bytes, base: str, auth: Dhis2Auth | None, dry_run: bool,
              timeout: float) -> dict:
    """One POST; records it and returns the parsed summary, or records and raises on an HTTP error."""
    mode = "dry_run" if dry_run else "push"
    code, raw, location = _post(_endpoint(base, dry_run), body, auth, timeout, base)
    try:
        doc = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        doc = None
    summary = parse_import_summary(doc)
    scrub = auth.scrub if auth is not None else (lambda s: s)
    stored = scrub(json.dumps(doc, ensure_ascii=False, sort_keys=True) if doc is not None
                   else raw[:500].decode("utf-8", errors="replace"))
    rec = dict(period=payload["period"], data_set=payload["dataSet"], mode=mode, target=base,
               values_sent=len(payload["dataValues"]))
    if summary is None:
        if 300 <= code < 400:
            msg = f"DHIS2 answered a redirect (HTTP {code}) to {scrub(location)[:200] or '?'}: give the final base URL"
        elif code in _HTTP_HINTS:
            msg = _HTTP_HINTS[code]
        elif code >= 500:
            msg = f"DHIS2 server error (HTTP {code}); retry later"
        elif 200 <= code < 300:
            msg = f"DHIS2 answered HTTP {code} without an import summary: is {base} a DHIS2 instance?"
        else:
            detail = scrub(str((doc or {}).get("message") or ""))[:200] if isinstance(doc, dict) else ""
            msg = f"DHIS2 rejected the {mode.replace('_', ' ')} (HTTP {code})" + (f": {detail}" if detail else "")
        if engine is not None:
            rid = record_export(engine, status=f"HTTP_{code}", summary=stored, **rec)
            msg += f" [dhis2_export id {rid}]"
        log.error("DHIS2 %s of %s to %s failed: HTTP %s", mode, payload["period"], base, code)
        raise Dhis2HttpError(f"{msg}; target {base}", code)
    summary["http_status"] = code
    if engine is not None:
        summary["export_id"] = record_export(engine, status=summary["status"], counts=summary,
                                             conflicts=len(summary["conflicts"]), summary=stored, **rec)
    log.info("DHIS2 %s of %s to %s: %s, imported %d, updated %d, ignored %d, %d conflicts", mode, payload["period"],
             base, summary["status"], summary["imported"], summary["updated"], summary["ignored"],
             len(summary["conflicts"]))
    return summary


def push(payload: dict, url: str, auth, dry_run_first: bool = True, timeout: float = 30, *,
         engine: Engine | None = None, dry_run_only: bool = False) -> dict:
    """POST the payload to ``<url>/api/dataValueSets`` with code id schemes.

    With ``dry_run_first`` (default) DHIS2 checks it first (``dryRun=true``, nothing stored); the
    real import follows only if that dry run has no conflict and no ERROR. ``dry_run_only`` stops
    after the dry run. Each call to DHIS2 is recorded in ``dhis2_export`` when ``engine`` is given.
    ``auth``: ``Dhis2Auth``, a ``(user, password)`` tuple, or None.

    Returns ``{period, data_set, target, values_sent, status, imported, updated, ignored, deleted,
    conflicts (count), conflict_details (first 20), dry_run (the dry run's summary or None),
    pushed, needs_alert, export_ids}``; the counts are the real import's, or the dry run's when
    nothing was imported. ``needs_alert`` is true when values were ignored or conflicted (or the
    status is ERROR). Raises ``Dhis2HttpError`` (recorded) on an HTTP error without an import
    summary (401, 403, 404, 5xx, ...) and ``Dhis2Error`` when DHIS2 cannot be reached.
    """
    auth = _as_auth(auth)
    base = base_url(url)
    body = dumps(payload)
    result = {"period": payload["period"], "data_set": payload["dataSet"], "target": base,
              "values_sent": len(payload["dataValues"]), "dry_run": None, "pushed": False, "export_ids": []}
    final = None
    if dry_run_first or dry_run_only:
        dry = _exchange(engine, payload, body, base, auth, True, timeout)
        result["dry_run"] = {k: v for k, v in dry.items() if k != "conflicts"} | {"conflicts": len(dry["conflicts"])}
        result["export_ids"].append(dry.get("export_id"))
        final = dry
        if dry["conflicts"] or dry["status"] == "ERROR":
            log.warning("DHIS2 dry run of %s had %d conflicts (status %s): nothing imported", payload["period"],
                        len(dry["conflicts"]), dry["status"])
            dry_run_only = True
    if not dry_run_only:
        final = _exchange(engine, payload, body, base, auth, False, timeout)
        result["export_ids"].append(final.get("export_id"))
        result["pushed"] = True
        if engine is not None and final["status"] != "ERROR":
            record_sent(engine, payload, base)
    result.update({k: final[k] for k in ("status", "imported", "updated", "ignored", "deleted")})
    result["conflicts"] = len(final["conflicts"])
    result["conflict_details"] = _conflict_lines(final["conflicts"])
    result["needs_alert"] = bool(final["ignored"] or final["conflicts"] or final["status"] == "ERROR")
    result["export_ids"] = [i for i in result["export_ids"] if i is not None]
    return result


def alert_for(result: dict) -> dict | None:
    """Params of the ``dhis2_import`` alert (period, ignored, conflicts) when ``result`` needs
    one, else None. Codes and counts only."""
    if not result or not result.get("needs_alert"):
        return None
    return {"period": str(result["period"]), "ignored": int(result.get("ignored") or 0),
            "conflicts": int(result.get("conflicts") or 0)}


# --------------------------------------------------------------------------------------------------
# Command line


def _fmt_counts(counts: dict) -> str:
    return ", ".join(f"{m} {counts.get(m, 0)}" for m in MEASURES)


def _summary_lines(ex: Export, mapping: Dhis2Mapping, suppress: int | None) -> list[str]:
    p = ex.payload
    lines = [f"DHIS2 export {p['dataSet']} {p['period']} (ISO week {ex.iso_week}): {ex.values} values for "
             f"{len(ex.org_units)} org units",
             f"  totals sent: {_fmt_counts(ex.totals)}"]
    left = [f"{ex.zeros_omitted} zero values"] if ex.zeros_omitted else []
    if suppress:
        left.append(f"{ex.suppressed} values below {suppress} (--suppress {suppress})")
    if left:
        lines.append("  left out: " + ", ".join(left))
    if ex.zeroed:
        lines.append(f"  {ex.zeroed} values sent before and now zero: sent as 0")
    if ex.not_exported:
        lines.append("  not in dhis2.yaml (not sent): " + ", ".join(
            f"{d} {m} {n}" for (d, m), n in ex.not_exported.items()))
    return lines


def _dhis2_line(label: str, s: dict) -> str:
    return (f"{label}: {s['status']} imported {s['imported']}, updated {s['updated']}, ignored {s['ignored']}, "
            f"deleted {s['deleted']}, conflicts {s['conflicts']}")


def cli_main(ns, out=None, err=None) -> int:
    """``hl7ics dhis2 export --period 2026W45 [--dry-run] [--out FILE] [--push URL] [--suppress K]
    [--warehouse URL]``. ``ns`` has period, dry_run, out, push, suppress, warehouse_url (optional:
    config, timeout).

    Without ``--push`` nothing is contacted: the JSON goes to ``--out`` or standard output (the
    summary then goes to standard error, so the JSON can be piped). With ``--push`` the payload
    goes to DHIS2 (dry run first); ``--dry-run --push`` runs only DHIS2's dry run. Exit codes: 0
    ok; 1 values ignored or in conflict in DHIS2, or facilities without an org unit whose counts
    could not be sent; 2 configuration, period, warehouse, file or DHIS2 connection error.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    suppress = getattr(ns, "suppress", None)
    try:
        settings = Settings.load(getattr(ns, "config", None),
                                 getattr(ns, "warehouse_url", None) or getattr(ns, "warehouse", None))
        mapping = Dhis2Mapping.load(settings.config_dir / "dhis2.yaml", settings.config_dir / "idsr.yaml")
        from .warehouse import get_engine

        engine = get_engine(settings.warehouse_url)
        target = base_url(ns.push) if getattr(ns, "push", None) else FILE_TARGET
        ex = prepare(engine, ns.period, mapping, suppress, target)
        rc = 0
        if getattr(ns, "push", None):
            _conn_url, auth = dhis2_connection(mapping.connection_id)
            if auth is None:
                raise ConfigError(f"no DHIS2 credentials: define the connection {mapping.connection_id} "
                                  f"(AIRFLOW_CONN_{mapping.connection_id.upper()}) with a login and password or a token")
            if getattr(ns, "out", None):  # a copy of what is pushed: the push records what DHIS2 took
                write_export(ex.payload, Path(ns.out), engine=engine, handed_over=False)
            report = out
        elif getattr(ns, "out", None):
            path = write_export(ex.payload, Path(ns.out), engine=engine)
            report = out
        else:
            out.write(dumps(ex.payload).decode("utf-8"))
            out.flush()
            record_export(engine, period=ex.payload["period"], data_set=ex.payload["dataSet"], mode="file",
                          target="stdout", values_sent=ex.values, status="written")
            report = err
        for line in _summary_lines(ex, mapping, suppress):
            print(line, file=report)
        if ex.unmapped_facilities:
            print("warning: facilities without a DHIS2 org unit in dim_facility, counts NOT sent: " + "; ".join(
                f"{f} ({_fmt_counts(c)})" for f, c in ex.unmapped_facilities.items()), file=err)
            rc = 1
        if getattr(ns, "push", None):
            res = push(ex.payload, target, auth, True, float(getattr(ns, "timeout", None) or 30), engine=engine,
                       dry_run_only=bool(getattr(ns, "dry_run", False)))
            if res["dry_run"]:
                print(_dhis2_line("DHIS2 dry run", res["dry_run"]), file=report)
            if res["pushed"]:
                print(_dhis2_line("DHIS2 import", res), file=report)
            elif not getattr(ns, "dry_run", False):
                print("DHIS2 import NOT done: the dry run had conflicts or an error", file=err)
            for c in res["conflict_details"]:
                print(f"  conflict: {c['object']}: {c['value']}", file=report)
            if res["needs_alert"]:
                rc = 1
        elif getattr(ns, "out", None):
            print(f"wrote {path}", file=report)
        return rc
    except (ConfigError, PeriodError) as exc:
        print(f"hl7ics: dhis2: {exc}", file=err)
        return 2
    except Dhis2Error as exc:
        print(f"hl7ics: dhis2: {exc}", file=err)
        return 2
    except OSError as exc:
        print(f"hl7ics: dhis2: I/O error: {type(exc).__name__}: {exc.strerror or exc}", file=err)
        return 2
    except SQLAlchemyError as exc:
        # Driver messages can quote the connection target; the class name is enough to act on.
        print(f"hl7ics: dhis2: warehouse error: {type(exc).__name__}", file=err)
        return 2
