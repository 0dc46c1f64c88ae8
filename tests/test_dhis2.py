"""DHIS2 export of weekly IDSR counts (transforms/dhis2.py): the exact payload on SQLite and
PostgreSQL, its DHIS2 format (JSON Schema written from the Web API documentation), the mapping's
validation, and pushes to a local HTTP server that checks payloads the way DHIS2 does and answers
import summaries (success, conflicts, HTTP errors). Credentials must never reach the export table,
the output, the logs or an exception."""
from __future__ import annotations

import base64
import copy
import json
import logging
import re
import socket
import threading
from argparse import Namespace
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import jsonschema
import pytest
import yaml
from sqlalchemy import text

from transforms.config import PROJECT_ROOT, ConfigError
from transforms.dhis2 import (Dhis2Auth, Dhis2Error, Dhis2HttpError, Dhis2Mapping, PeriodError, alert_for,
                              base_url, build_data_value_set, cli_main, dhis2_connection, dhis2_period, dumps,
                              exports_for_period, iso_week, parse_import_summary, prepare, push, record_sent,
                              write_export)
from transforms.reporting import IdsrConfig
from transforms.warehouse import get_engine

USER = "dsnisi_sync"
PASSWORD = "S3cr3t-Pa55!kpalime"
TOKEN = "d2pat_Zq8xTestTokenValue0123456789abcdef"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, TOKEN, BASIC.split(" ", 1)[1])

WEEK = "2026-W45"
PERIOD = "2026W45"
FACILITIES = [
    ("CHU-SO", "CHU Sylvanus Olympio", "chu", "Lomé-Commune", "Golfe", "TG-LC-GOL-CHUSO"),
    ("USP-NANERGOU", "Unité de Soins Périphérique de Nanergou", "peripheral_unit", "Savanes", "Tône",
     "TG-SA-TON-USPN"),
]
# facility, disease, age group, sex, suspected, confirmed, deaths
ROWS = [
    ("CHU-SO", "MALARIA", "1-4y", "F", 7, 5, 0),
    ("CHU-SO", "MALARIA", "15y+", "M", 12, 9, 1),
    ("CHU-SO", "CHOLERA", "15y+", "F", 1, 1, 0),        # one cholera case: must reach DHIS2
    ("CHU-SO", "HIV", "15y+", "F", 4, 4, 0),            # not in the weekly IDSR data set
    ("USP-NANERGOU", "MALARIA", "0-11m", "U", 3, 0, 0),
    ("USP-NANERGOU", "MEASLES", "5-14y", "M", 2, 1, 0),
    ("USP-NANERGOU", "AFP", "1-4y", "M", 1, 1, 0),      # AFP has no 'confirmed' data element
]
OTHER_WEEK = [("CHU-SO", "MALARIA", "15y+", "M", 99, 0, 0)]
UNMAPPED = [("CLINIC-X", "MALARIA", "15y+", "F", 2, 0, 0)]  # not in dim_facility


def dv(ou, de, coc, value):
    return {"dataElement": de, "period": PERIOD, "orgUnit": ou, "categoryOptionCombo": coc,
            "attributeOptionCombo": "default", "value": value}


EXPECTED_VALUES = [
    dv("TG-LC-GOL-CHUSO", "IDSR_CHOLERA_CONF", "AGE_15Y_PLUS_F", "1"),
    dv("TG-LC-GOL-CHUSO", "IDSR_CHOLERA_SUSP", "AGE_15Y_PLUS_F", "1"),
    dv("TG-LC-GOL-CHUSO", "IDSR_MALARIA_CONF", "AGE_15Y_PLUS_M", "9"),
    dv("TG-LC-GOL-CHUSO", "IDSR_MALARIA_CONF", "AGE_1_4Y_F", "5"),
    dv("TG-LC-GOL-CHUSO", "IDSR_MALARIA_DEATHS", "AGE_15Y_PLUS_M", "1"),
    dv("TG-LC-GOL-CHUSO", "IDSR_MALARIA_SUSP", "AGE_15Y_PLUS_M", "12"),
    dv("TG-LC-GOL-CHUSO", "IDSR_MALARIA_SUSP", "AGE_1_4Y_F", "7"),
    dv("TG-SA-TON-USPN", "IDSR_AFP_SUSP", "AGE_1_4Y_M", "1"),
    dv("TG-SA-TON-USPN", "IDSR_MALARIA_SUSP", "AGE_0_11M_U", "3"),
    dv("TG-SA-TON-USPN", "IDSR_MEASLES_CONF", "AGE_5_14Y_M", "1"),
    dv("TG-SA-TON-USPN", "IDSR_MEASLES_SUSP", "AGE_5_14Y_M", "2"),
]
EXPECTED = {"dataSet": "IDSR_WEEKLY", "period": PERIOD, "dataValues": EXPECTED_VALUES}


def _insert_rows(conn, week: str, rows) -> None:
    if not rows:
        return
    ws = date.fromisocalendar(int(week[:4]), int(week[6:]), 1)
    regions = {f[0]: (f[3], f[4]) for f in FACILITIES}
    conn.execute(text(
        "INSERT INTO rpt_idsr_weekly (iso_week, week_start, region, district, facility_code, disease, age_group, sex, "
        "suspected, confirmed, deaths, updated_at) VALUES (:w, :ws, :r, :d, :f, :dis, :a, :s, :su, :co, :de, :u)"),
        [{"w": week, "ws": ws, "r": regions.get(f, ("Maritime", "Zio"))[0], "d": regions.get(f, ("Maritime", "Zio"))[1],
          "f": f, "dis": dis, "a": a, "s": s, "su": su, "co": co, "de": de, "u": "2026-11-10 06:00:00"}
         for f, dis, a, s, su, co, de in rows])


def seed(url: str, rows=ROWS, unmapped: bool = False, facilities=FACILITIES):
    eng = get_engine(url)
    with eng.begin() as conn:
        conn.execute(text(
            "INSERT INTO dim_facility (facility_code, name, type, region, district, dhis2_org_unit, timezone, charset, "
            "updated_at) VALUES (:c, :n, :t, :r, :d, :o, 'Africa/Lome', 'utf-8', '2026-11-01 00:00:00')"),
            [dict(zip("cntrdo", f)) for f in facilities])
        _insert_rows(conn, WEEK, list(rows) + (UNMAPPED if unmapped else []))
        _insert_rows(conn, "2026-W44", OTHER_WEEK)
    return eng


@pytest.fixture(scope="module")
def mapping():
    return Dhis2Mapping.load(PROJECT_ROOT / "config" / "dhis2.yaml", PROJECT_ROOT / "config" / "idsr.yaml")


def _rows_text(eng) -> str:
    with eng.connect() as conn:
        return repr(conn.execute(text("SELECT * FROM dhis2_export ORDER BY id")).all())


def _assert_no_secret(*texts):
    for t in texts:
        for s in SECRETS:
            assert s not in t


# --------------------------------------------------------------------------------------------------
# JSON Schema of a dataValueSets payload, from the DHIS2 Web API documentation ("Data values",
# "Sending data values" / "Sending bulks of data values"): optional dataSet, completeDate, period,
# orgUnit, attributeOptionCombo at the top; dataValues of dataElement, period, orgUnit,
# categoryOptionCombo, attributeOptionCombo, value (a string), comment. Ours always sets dataSet and
# period, and every value carries its own period, org unit and combos.

_ID = {"type": "string", "minLength": 1, "maxLength": 50}
DATA_VALUE_SET_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["dataSet", "period", "dataValues"],
    "additionalProperties": False,
    "properties": {
        "dataSet": _ID,
        "completeDate": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "period": {"type": "string", "pattern": r"^\d{4}W([1-9]|[1-4]\d|5[0-3])$"},
        "orgUnit": _ID,
        "attributeOptionCombo": _ID,
        "dataValues": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["dataElement", "period", "orgUnit", "categoryOptionCombo", "attributeOptionCombo",
                             "value"],
                "additionalProperties": False,
                "properties": {
                    "dataElement": _ID, "orgUnit": _ID, "categoryOptionCombo": _ID, "attributeOptionCombo": _ID,
                    "period": {"type": "string", "pattern": r"^\d{4}W([1-9]|[1-4]\d|5[0-3])$"},
                    "value": {"type": "string", "pattern": r"^(0|[1-9]\d*)$"},
                    "comment": {"type": "string"},
                },
            },
        },
    },
}


# --------------------------------------------------------------------------------------------------
# Periods and mapping


def test_period_conversions():
    assert dhis2_period("2026W45") == "2026W45"
    assert dhis2_period("2026-W45") == "2026W45"
    assert dhis2_period("2026W05") == dhis2_period("2026W5") == "2026W5"  # DHIS2 writes no leading zero
    assert iso_week("2026W5") == "2026-W05"
    assert iso_week("2026W45") == "2026-W45"
    assert iso_week("2026W53") == "2026-W53"  # 2026 is a long ISO year


@pytest.mark.parametrize("bad", ["W45", "2026-45", "2026W", "2026W100", "202645", "2026M11", "", None, "2026W0"])
def test_bad_periods_are_refused_clearly(bad):
    with pytest.raises(PeriodError, match="2026W45|ISO week"):
        dhis2_period(bad)


def test_week_53_only_in_long_years():
    with pytest.raises(PeriodError, match="2025 has no ISO week 53"):
        iso_week("2025W53")


def test_shipped_mapping(mapping):
    assert mapping.data_set == "IDSR_WEEKLY"
    assert mapping.attribute_option_combo == "default"
    assert mapping.include_zeros is False
    assert mapping.data_elements[("CHOLERA", "suspected")] == "IDSR_CHOLERA_SUSP"
    assert mapping.category_option_combos[("15y+", "U")] == "AGE_15Y_PLUS_U"
    assert len(mapping.category_option_combos) == 15
    idsr = {d.code for d in IdsrConfig.load(PROJECT_ROOT / "config" / "idsr.yaml").diseases}
    assert set(mapping.diseases) == idsr - {"HIV"}


def _doc():
    return yaml.safe_load((PROJECT_ROOT / "config" / "dhis2.yaml").read_text(encoding="utf-8"))


def _known():
    return [d.code for d in IdsrConfig.load(PROJECT_ROOT / "config" / "idsr.yaml").diseases]


def _set(path, value):
    def edit(doc):
        node = doc["dhis2"]
        for k in path[:-1]:
            node = node[k]
        if value is _DEL:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


_DEL = object()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["dhis2"]["diseases"].update({"MALARA": {"suspected": "IDSR_X_SUSP"}}),
     r"MALARA is not a disease code of idsr\.yaml"),
    (_set(["category_option_combos", "1-4y", "U"], _DEL), r"no combo for age group '1-4y' and sex 'U'"),
    (_set(["category_option_combos", "unknown"], _DEL), r"missing age group 'unknown'"),
    (_set(["category_option_combos", "60y+"], {"F": "A", "M": "B", "U": "C"}), r"60y\+ is not an age group"),
    (_set(["category_option_combos", "0-11m", "X"], "AGE_X"), r"0-11m: X is not a sex"),
    (_set(["diseases", "MALARIA", "cases"], "IDSR_MALARIA_CASES"), r"measure cases is not one of"),
    (_set(["diseases", "CHOLERA", "suspected"], "IDSR_MALARIA_SUSP"), r"IDSR_MALARIA_SUSP is used twice"),
    (_set(["diseases", "CHOLERA", "deaths"], "IDSR CHOLERA"), r"diseases: CHOLERA: deaths must be a DHIS2 code"),
    (_set(["data_set"], _DEL), r"data_set must be a DHIS2 code"),
    (_set(["include_zeros"], "yes"), r"include_zeros must be true or false"),
    (_set(["diseases"], {}), r"'diseases' must map"),
    (_set(["dataset"], "IDSR"), r"unknown key\(s\) dataset"),
])
def test_mapping_errors_name_the_problem(edit, message):
    doc = copy.deepcopy(_doc())
    edit(doc)
    with pytest.raises(ConfigError, match=message):
        Dhis2Mapping.from_dict(doc, _known())


def test_mapping_file_errors(tmp_path):
    bad = tmp_path / "dhis2.yaml"
    bad.write_text("dhis2: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Dhis2Mapping.load(bad, PROJECT_ROOT / "config" / "idsr.yaml")
    with pytest.raises(ConfigError, match="not found"):
        Dhis2Mapping.load(tmp_path / "missing.yaml", PROJECT_ROOT / "config" / "idsr.yaml")


def test_coarser_dhis2_category_adds_bands(sqlite_url):
    doc = _doc()
    combos = doc["dhis2"]["category_option_combos"]
    for group in ("0-11m", "1-4y"):  # a DHIS2 category with one "under 5" band
        combos[group] = {"F": "AGE_LT5_F", "M": "AGE_LT5_M", "U": "AGE_LT5_U"}
    m = Dhis2Mapping.from_dict(doc, _known())
    eng = seed(sqlite_url, rows=[("CHU-SO", "MALARIA", "0-11m", "F", 2, 1, 0), ("CHU-SO", "MALARIA", "1-4y", "F", 3, 0, 0)])
    values = build_data_value_set(eng, PERIOD, m)["dataValues"]
    assert [(v["dataElement"], v["categoryOptionCombo"], v["value"]) for v in values] == [
        ("IDSR_MALARIA_CONF", "AGE_LT5_F", "1"), ("IDSR_MALARIA_SUSP", "AGE_LT5_F", "5")]


# --------------------------------------------------------------------------------------------------
# The payload


def test_payload_exact_and_deterministic(warehouse_url, mapping):
    eng = seed(warehouse_url, unmapped=True)
    ex = prepare(eng, PERIOD, mapping)
    assert ex.payload == EXPECTED
    assert ex.iso_week == WEEK
    assert ex.org_units == ["TG-LC-GOL-CHUSO", "TG-SA-TON-USPN"]
    assert ex.totals == {"suspected": 26, "confirmed": 16, "deaths": 1}
    assert ex.zeros_omitted == 6 and ex.suppressed == 0
    assert ex.not_exported == {("AFP", "confirmed"): 1, ("HIV", "confirmed"): 4, ("HIV", "suspected"): 4}
    assert ex.unmapped_facilities == {"CLINIC-X": {"suspected": 2, "confirmed": 0, "deaths": 0}}
    # the ISO week form selects the same week; the other week's 99 cases never leak in
    assert build_data_value_set(eng, "2026-W45", mapping) == EXPECTED
    first = dumps(build_data_value_set(eng, PERIOD, mapping))
    assert first == (json.dumps(EXPECTED, ensure_ascii=False, indent=2) + "\n").encode()
    # Same rows stored in the opposite order: the same bytes.
    with eng.begin() as conn:
        conn.execute(text("DELETE FROM rpt_idsr_weekly WHERE iso_week = :w"), {"w": WEEK})
        _insert_rows(conn, WEEK, list(reversed(ROWS)))
    assert dumps(build_data_value_set(eng, PERIOD, mapping)) == first


def test_payload_follows_dhis2_format(sqlite_url, mapping):
    payload = build_data_value_set(seed(sqlite_url), PERIOD, mapping)
    validator = jsonschema.Draft202012Validator(DATA_VALUE_SET_SCHEMA)
    validator.validate(payload)
    assert all(isinstance(v["value"], str) for v in payload["dataValues"])
    # the schema is not a rubber stamp: what DHIS2 would refuse, it refuses
    for broken in (
        {**payload, "period": "2026-W45"},
        {**payload, "dataValues": [{**payload["dataValues"][0], "value": 1}]},
        {**payload, "dataValues": [{k: v for k, v in payload["dataValues"][0].items() if k != "dataElement"}]},
        {**payload, "patient": "x"},
    ):
        assert not validator.is_valid(broken)


def test_suppression_for_a_public_instance(sqlite_url, mapping):
    eng = seed(sqlite_url)
    ex = prepare(eng, PERIOD, mapping, suppress=5)
    assert [(v["orgUnit"], v["dataElement"], v["categoryOptionCombo"], v["value"]) for v in ex.payload["dataValues"]] == [
        ("TG-LC-GOL-CHUSO", "IDSR_MALARIA_CONF", "AGE_15Y_PLUS_M", "9"),
        ("TG-LC-GOL-CHUSO", "IDSR_MALARIA_CONF", "AGE_1_4Y_F", "5"),
        ("TG-LC-GOL-CHUSO", "IDSR_MALARIA_SUSP", "AGE_15Y_PLUS_M", "12"),
        ("TG-LC-GOL-CHUSO", "IDSR_MALARIA_SUSP", "AGE_1_4Y_F", "7"),
    ]
    assert ex.suppressed == 7 and ex.totals == {"suspected": 19, "confirmed": 14, "deaths": 0}
    # by default the single cholera case is sent: DHIS2 is the MoH's system of record
    assert any(v["dataElement"] == "IDSR_CHOLERA_SUSP" and v["value"] == "1"
               for v in build_data_value_set(eng, PERIOD, mapping)["dataValues"])
    for bad in (1, 0, -3, "5", True):
        with pytest.raises(ConfigError, match="--suppress"):
            prepare(eng, PERIOD, mapping, suppress=bad)


def test_zeros_sent_when_configured(sqlite_url):
    doc = _doc()
    doc["dhis2"]["include_zeros"] = True
    m = Dhis2Mapping.from_dict(doc, _known())
    ex = prepare(seed(sqlite_url), PERIOD, m)
    zeros = [(v["orgUnit"], v["dataElement"], v["categoryOptionCombo"]) for v in ex.payload["dataValues"]
             if v["value"] == "0"]
    assert len(ex.payload["dataValues"]) == 17 and ex.zeros_omitted == 0
    assert ("TG-LC-GOL-CHUSO", "IDSR_CHOLERA_DEATHS", "AGE_15Y_PLUS_F") in zeros
    assert ("TG-SA-TON-USPN", "IDSR_MALARIA_CONF", "AGE_0_11M_U") in zeros
    assert len(zeros) == 6


def test_facilities_sharing_an_org_unit_are_added(sqlite_url, mapping):
    fac = FACILITIES + [("CHU-SO-ANNEXE", "Annexe", "clinic", "Lomé-Commune", "Golfe", "TG-LC-GOL-CHUSO")]
    eng = seed(sqlite_url, rows=[("CHU-SO", "CHOLERA", "15y+", "F", 1, 0, 0),
                                 ("CHU-SO-ANNEXE", "CHOLERA", "15y+", "F", 2, 0, 0)], facilities=fac)
    assert build_data_value_set(eng, PERIOD, mapping)["dataValues"] == [
        dv("TG-LC-GOL-CHUSO", "IDSR_CHOLERA_SUSP", "AGE_15Y_PLUS_F", "3")]


def test_empty_week_and_broken_contract(sqlite_url, mapping):
    eng = seed(sqlite_url, rows=[])
    assert build_data_value_set(eng, PERIOD, mapping) == {"dataSet": "IDSR_WEEKLY", "period": PERIOD, "dataValues": []}
    with eng.begin() as conn:
        _insert_rows(conn, WEEK, [("CHU-SO", "MALARIA", "60y+", "F", 1, 0, 0)])
    with pytest.raises(Dhis2Error, match="age group '60y\\+'"):
        build_data_value_set(eng, PERIOD, mapping)


def test_write_export_is_recorded(sqlite_url, mapping, tmp_path):
    eng = seed(sqlite_url)
    payload = build_data_value_set(eng, PERIOD, mapping)
    out = write_export(payload, tmp_path / "exports" / "idsr-2026W45.json", engine=eng)
    assert out.read_bytes() == dumps(EXPECTED)
    assert not list(out.parent.glob(".*.tmp"))
    rows = exports_for_period(eng, "2026-W45")
    assert [(r["mode"], r["target"], r["values_sent"], r["status"], r["data_set"], r["period"]) for r in rows] == [
        ("file", str(out), 11, "written", "IDSR_WEEKLY", PERIOD)]


# --------------------------------------------------------------------------------------------------
# A local DHIS2 stand-in


class FakeDhis2:
    """Checks a dataValueSets POST like DHIS2 does and answers an import summary.

    ``style``: "wrapped" (2.36+: the summary under ``response``) or "flat" (older);
    ``conflict_http``: 200 or 409 (2.38+ answers conflicts with 409 and the summary);
    ``fail``: None, 500 or "redirect"; ``unknown``: data element codes the instance lacks."""

    def __init__(self, mapping, auth_header=BASIC):
        self.auth_header = auth_header
        self.data_sets = {"IDSR_WEEKLY"}
        self.org_units = {f[5] for f in FACILITIES}
        self.elements = set(mapping.data_elements.values())
        self.combos = set(mapping.category_option_combos.values())
        self.style, self.conflict_http, self.fail = "wrapped", 200, None
        self.requests: list[dict] = []
        self.store: dict[tuple, str] = {}
        self.problems: list[str] = []   # protocol mistakes the client made (must stay empty)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.handle(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _send(self, h, code, doc=None, raw=None, headers=()):
        data = raw if raw is not None else json.dumps(doc).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json" if raw is None else "text/html")
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def handle(self, h, body: bytes):
        parts = urlsplit(h.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.requests.append({"path": parts.path, "query": q, "auth": h.headers.get("Authorization"),
                              "content_type": h.headers.get("Content-Type"), "body": body})
        if self.fail == "echo":  # a misconfigured proxy quoting the request back in its error
            return self._send(h, 502, {"status": "ERROR", "message": f"bad gateway for {h.headers.get('Authorization')}"})
        if self.fail == 500:
            return self._send(h, 500, raw=b"<html><body>HTTP Status 500 - Internal Server Error</body></html>")
        if self.fail == "redirect":
            return self._send(h, 302, raw=b"", headers=[("Location", f"{self.url}/elsewhere/api/dataValueSets")])
        if h.headers.get("Authorization") != self.auth_header:
            return self._send(h, 401, {"httpStatus": "Unauthorized", "httpStatusCode": 401, "status": "ERROR",
                                       "message": "Unauthorized"})
        if parts.path != "/api/dataValueSets":
            return self._send(h, 404, {"httpStatus": "Not Found", "httpStatusCode": 404, "status": "ERROR"})
        for k in ("dataElementIdScheme", "orgUnitIdScheme", "categoryOptionComboIdScheme", "idScheme"):
            if q.get(k) != "code":
                self.problems.append(f"{k}={q.get(k)}")
        if q.get("dryRun") not in ("true", "false"):
            self.problems.append(f"dryRun={q.get('dryRun')}")
        if not (h.headers.get("Content-Type") or "").startswith("application/json"):
            self.problems.append("content type")
        dry = q.get("dryRun") == "true"
        doc = json.loads(body)
        conflicts, imported, updated, ignored = [], 0, 0, 0
        if doc.get("dataSet") not in self.data_sets:
            conflicts.append({"object": str(doc.get("dataSet")), "value": "Data set not found or not accessible"})
        for v in doc.get("dataValues", []):
            pe = v.get("period") or doc.get("period")
            checks = [
                (v.get("dataElement") in self.elements, v.get("dataElement"), "Data element not found or not accessible"),
                (v.get("orgUnit") in self.org_units, v.get("orgUnit"), "Organisation unit not found or not accessible"),
                (v.get("categoryOptionCombo") in self.combos, v.get("categoryOptionCombo"),
                 "Category option combo not found or not accessible"),
                (v.get("attributeOptionCombo") == "default", v.get("attributeOptionCombo"),
                 "Attribute option combo not found or not accessible"),
                (isinstance(pe, str) and re.fullmatch(r"\d{4}W\d{1,2}", pe) is not None, pe, "Period not valid"),
                (isinstance(v.get("value"), str) and re.fullmatch(r"-?\d+", v["value"]) is not None,
                 v.get("dataElement"), "Data value is not an integer"),
            ]
            bad = next(((obj, msg) for ok, obj, msg in checks if not ok), None)
            if bad:
                conflicts.append({"object": str(bad[0]), "value": bad[1]})
                ignored += 1
                continue
            key = (v["dataElement"], pe, v["orgUnit"], v["categoryOptionCombo"], v["attributeOptionCombo"])
            if key in self.store:
                updated += 1
            else:
                imported += 1
            if not dry:
                self.store[key] = v["value"]
        status = "SUCCESS" if not conflicts else "WARNING" if imported + updated else "ERROR"
        summary = {"responseType": "ImportSummary", "status": status,
                   "importOptions": {"dryRun": dry, "idSchemes": {"idScheme": {"type": "CODE"}}},
                   "description": "Import process completed successfully",
                   "importCount": {"imported": imported, "updated": updated, "ignored": ignored, "deleted": 0},
                   "conflicts": conflicts, "dataSetComplete": "false"}
        if self.style == "flat":
            return self._send(h, 200, summary)
        code = self.conflict_http if conflicts else 200
        return self._send(h, code, {"httpStatus": "OK" if code == 200 else "Conflict", "httpStatusCode": code,
                                    "status": "OK" if status == "SUCCESS" else status,
                                    "message": "Import was successful." if status == "SUCCESS"
                                    else "Import process completed with conflicts", "response": summary})


@pytest.fixture
def dhis2(mapping, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    fake = FakeDhis2(mapping)
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    assert fake.problems == []


def test_push_dry_run_then_import(warehouse_url, mapping, dhis2, caplog):
    caplog.set_level(logging.DEBUG)
    eng = seed(warehouse_url)
    payload = build_data_value_set(eng, PERIOD, mapping)
    res = push(payload, dhis2.url + "/api/", (USER, PASSWORD), engine=eng)
    assert [r["query"]["dryRun"] for r in dhis2.requests] == ["true", "false"]
    assert all(r["auth"] == BASIC and r["path"] == "/api/dataValueSets" for r in dhis2.requests)
    assert json.loads(dhis2.requests[1]["body"]) == EXPECTED
    assert dhis2.store == {(v["dataElement"], PERIOD, v["orgUnit"], v["categoryOptionCombo"], "default"): v["value"]
                           for v in EXPECTED_VALUES}
    assert res["pushed"] is True and res["needs_alert"] is False and alert_for(res) is None
    assert (res["status"], res["imported"], res["updated"], res["ignored"], res["conflicts"]) == ("SUCCESS", 11, 0, 0, 0)
    assert res["dry_run"]["status"] == "SUCCESS" and res["dry_run"]["imported"] == 11
    assert res["target"] == dhis2.url and res["values_sent"] == 11
    again = push(payload, dhis2.url, (USER, PASSWORD), engine=eng)
    assert (again["imported"], again["updated"]) == (0, 11)
    rows = exports_for_period(eng, PERIOD)
    assert [(r["mode"], r["status"], r["values_sent"], r["imported"], r["updated"], r["ignored"], r["conflicts"],
             r["target"]) for r in rows] == [
        ("dry_run", "SUCCESS", 11, 11, 0, 0, 0, dhis2.url), ("push", "SUCCESS", 11, 11, 0, 0, 0, dhis2.url),
        ("dry_run", "SUCCESS", 11, 0, 11, 0, 0, dhis2.url), ("push", "SUCCESS", 11, 0, 11, 0, 0, dhis2.url)]
    assert json.loads(rows[1]["summary"])["response"]["importCount"]["imported"] == 11
    assert res["export_ids"] == [rows[0]["id"], rows[1]["id"]]
    _assert_no_secret(_rows_text(eng), caplog.text, repr(res))


def test_a_cell_that_falls_to_zero_after_its_push_is_sent_as_zero(sqlite_url, mapping, dhis2, tmp_path):
    """Zeros are left out of a payload; the cholera case cancelled after its week was pushed must
    still leave DHIS2, so the cell sent before goes out again as "0"."""
    eng = seed(sqlite_url)
    here = base_url(dhis2.url)
    push(build_data_value_set(eng, PERIOD, mapping, target=here), dhis2.url, (USER, PASSWORD), engine=eng)
    cell = ("IDSR_CHOLERA_SUSP", PERIOD, "TG-LC-GOL-CHUSO", "AGE_15Y_PLUS_F", "default")
    assert dhis2.store[cell] == "1"
    with eng.begin() as conn:  # the admission is cancelled (A11) and the week rebuilt
        conn.execute(text("DELETE FROM rpt_idsr_weekly WHERE iso_week = :w AND disease = 'CHOLERA'"), {"w": WEEK})
    ex = prepare(eng, PERIOD, mapping, target=here)
    assert ex.zeroed == 2 and ex.totals == {"suspected": 25, "confirmed": 15, "deaths": 1}
    assert [v for v in ex.payload["dataValues"] if v["value"] == "0"] == [
        dv("TG-LC-GOL-CHUSO", "IDSR_CHOLERA_CONF", "AGE_15Y_PLUS_F", "0"),
        dv("TG-LC-GOL-CHUSO", "IDSR_CHOLERA_SUSP", "AGE_15Y_PLUS_F", "0")]
    push(ex.payload, dhis2.url, (USER, PASSWORD), engine=eng)
    assert dhis2.store[cell] == "0"
    # Zero is now what DHIS2 holds: the next payload has nothing more to zero.
    assert prepare(eng, PERIOD, mapping, target=here).zeroed == 0
    # A dry run hands nothing over, and neither does another period's export.
    with eng.begin() as conn:
        conn.execute(text("DELETE FROM rpt_idsr_weekly WHERE iso_week = :w AND facility_code = 'USP-NANERGOU'"),
                     {"w": WEEK})
    push(build_data_value_set(eng, PERIOD, mapping, target=here), dhis2.url, (USER, PASSWORD), engine=eng,
         dry_run_only=True)
    assert prepare(eng, PERIOD, mapping, target=here).zeroed == 4
    assert prepare(eng, "2026W44", mapping, target=here).zeroed == 0
    # A facility whose org unit was emptied in the configuration: its counts are not visible to
    # this export, and zeros would erase them in DHIS2.
    with eng.begin() as conn:
        conn.execute(text("UPDATE dim_facility SET dhis2_org_unit = '' WHERE facility_code = 'USP-NANERGOU'"))
    assert prepare(eng, PERIOD, mapping, target=here).zeroed == 0


def test_each_target_is_told_its_own_zeros(sqlite_url, mapping, dhis2):
    """An internal push and a push to another instance shared one record of what was handed
    over: once the internal one was sent a cell's zero, the other was never told."""
    eng = seed(sqlite_url)
    internal, public = base_url(dhis2.url), "https://dhis2-public.sante.gouv.tg"
    for target in (internal, public):
        record_sent(eng, build_data_value_set(eng, PERIOD, mapping, target=target), target)
    with eng.begin() as conn:
        conn.execute(text("DELETE FROM rpt_idsr_weekly WHERE iso_week = :w AND disease = 'CHOLERA'"), {"w": WEEK})
    ex = prepare(eng, PERIOD, mapping, target=internal)
    assert ex.zeroed == 2
    record_sent(eng, ex.payload, internal)  # the internal instance took its zeros
    assert prepare(eng, PERIOD, mapping, target=internal).zeroed == 0
    assert prepare(eng, PERIOD, mapping, target=public).zeroed == 2  # the public one still holds the counts
    assert prepare(eng, PERIOD, mapping).zeroed == 0  # no file was written
    # A cell recorded before targets were (migration 018: target '') counts for every target.
    with eng.begin() as conn:
        conn.execute(text("INSERT INTO dhis2_sent_value VALUES ('', :ds, :pe, 'TG-LC-GOL-CHUSO', 'IDSR_CHOLERA_DEATH', "
                          "'AGE_15Y_PLUS_F', 'default', '1', '2026-11-10 00:00:00')"),
                     {"ds": mapping.data_set, "pe": PERIOD})
    assert prepare(eng, PERIOD, mapping).zeroed == 1
    assert prepare(eng, PERIOD, mapping, target=public).zeroed == 3


def test_a_written_file_counts_as_handed_over(sqlite_url, mapping, tmp_path):
    eng = seed(sqlite_url)
    write_export(build_data_value_set(eng, PERIOD, mapping), tmp_path / "w45.json", engine=eng)
    with eng.begin() as conn:
        conn.execute(text("UPDATE rpt_idsr_weekly SET suspected = 0 WHERE iso_week = :w AND disease = 'MEASLES'"),
                     {"w": WEEK})
    values = build_data_value_set(eng, PERIOD, mapping)["dataValues"]
    assert dv("TG-SA-TON-USPN", "IDSR_MEASLES_SUSP", "AGE_5_14Y_M", "0") in values
    assert dv("TG-SA-TON-USPN", "IDSR_MEASLES_CONF", "AGE_5_14Y_M", "1") in values


@pytest.mark.parametrize("style, http_code", [("wrapped", 200), ("wrapped", 409), ("flat", 200)])
def test_conflicts_stop_after_the_dry_run(sqlite_url, mapping, dhis2, style, http_code):
    dhis2.style, dhis2.conflict_http = style, http_code
    dhis2.elements.discard("IDSR_CHOLERA_CONF")   # the instance lacks one data element
    eng = seed(sqlite_url)
    res = push(build_data_value_set(eng, PERIOD, mapping), dhis2.url, (USER, PASSWORD), engine=eng)
    assert [r["query"]["dryRun"] for r in dhis2.requests] == ["true"]   # no real push
    assert dhis2.store == {}
    assert res["pushed"] is False and res["needs_alert"] is True
    assert (res["status"], res["imported"], res["ignored"], res["conflicts"]) == ("WARNING", 10, 1, 1)
    assert res["conflict_details"] == [{"object": "IDSR_CHOLERA_CONF", "value": "Data element not found or not accessible"}]
    assert alert_for(res) == {"period": PERIOD, "ignored": 1, "conflicts": 1}
    [row] = exports_for_period(eng, PERIOD)
    assert (row["mode"], row["status"], row["ignored"], row["conflicts"]) == ("dry_run", "WARNING", 1, 1)
    assert "IDSR_CHOLERA_CONF" in row["summary"]


def test_without_dry_run_first_the_import_happens_and_alerts(sqlite_url, mapping, dhis2):
    dhis2.elements.discard("IDSR_CHOLERA_CONF")
    eng = seed(sqlite_url)
    res = push(build_data_value_set(eng, PERIOD, mapping), dhis2.url, (USER, PASSWORD), dry_run_first=False,
               engine=eng)
    assert [r["query"]["dryRun"] for r in dhis2.requests] == ["false"]
    assert len(dhis2.store) == 10 and res["pushed"] is True and res["dry_run"] is None
    assert alert_for(res) == {"period": PERIOD, "ignored": 1, "conflicts": 1}
    assert [r["mode"] for r in exports_for_period(eng, PERIOD)] == ["push"]


def test_everything_refused_is_an_error(sqlite_url, mapping, dhis2):
    dhis2.data_sets = set()
    dhis2.org_units = set()
    eng = seed(sqlite_url)
    res = push(build_data_value_set(eng, PERIOD, mapping), dhis2.url, (USER, PASSWORD), engine=eng)
    assert res["status"] == "ERROR" and res["pushed"] is False and res["ignored"] == 11
    assert alert_for(res) == {"period": PERIOD, "ignored": 11, "conflicts": 12}
    assert len(res["conflict_details"]) == 12


@pytest.mark.parametrize("case", ["wrong_password", "server_error", "echoing_proxy"])
def test_http_errors_are_clear_and_recorded(sqlite_url, mapping, dhis2, case, caplog):
    eng = seed(sqlite_url)
    dhis2.fail = {"server_error": 500, "echoing_proxy": "echo"}.get(case)
    auth = (USER, "not-the-password") if case == "wrong_password" else (USER, PASSWORD)
    with pytest.raises(Dhis2HttpError) as info:
        push(build_data_value_set(eng, PERIOD, mapping), dhis2.url, auth, engine=eng)
    code = {"wrong_password": 401, "server_error": 500, "echoing_proxy": 502}[case]
    assert info.value.status == code and f"HTTP {code}" in str(info.value) and dhis2.url in str(info.value)
    if code == 401:
        assert "credentials" in str(info.value)
    assert len(dhis2.requests) == 1 and dhis2.store == {}
    [row] = exports_for_period(eng, PERIOD)
    assert (row["mode"], row["status"], row["values_sent"], row["imported"]) == ("dry_run", f"HTTP_{code}", 11, None)
    assert f"dhis2_export id {row['id']}" in str(info.value)
    _assert_no_secret(_rows_text(eng), str(info.value), caplog.text)
    assert "not-the-password" not in _rows_text(eng) + str(info.value)
    if case == "echoing_proxy":
        assert "bad gateway for Basic ***" in row["summary"]


def test_token_auth(sqlite_url, mapping, dhis2):
    dhis2.auth_header = f"ApiToken {TOKEN}"
    eng = seed(sqlite_url)
    auth = Dhis2Auth("token", TOKEN)
    assert TOKEN not in repr(auth)
    res = push(build_data_value_set(eng, PERIOD, mapping), dhis2.url, auth, engine=eng)
    assert res["pushed"] and res["imported"] == 11
    assert {r["auth"] for r in dhis2.requests} == {f"ApiToken {TOKEN}"}
    _assert_no_secret(_rows_text(eng))


def test_redirects_are_refused(sqlite_url, mapping, dhis2):
    dhis2.fail = "redirect"
    eng = seed(sqlite_url)
    with pytest.raises(Dhis2HttpError, match="redirect"):
        push(build_data_value_set(eng, PERIOD, mapping), dhis2.url, (USER, PASSWORD), engine=eng)
    assert [r["path"] for r in dhis2.requests] == ["/api/dataValueSets"]  # the credentials did not follow


def test_unreachable_dhis2(sqlite_url, mapping):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    eng = seed(sqlite_url)
    with pytest.raises(Dhis2Error, match="cannot reach DHIS2"):
        push(build_data_value_set(eng, PERIOD, mapping), f"http://127.0.0.1:{port}", (USER, PASSWORD), timeout=5,
             engine=eng)


def test_base_url():
    assert base_url("https://dhis2.sante.gouv.tg/dhis/api/") == "https://dhis2.sante.gouv.tg/dhis"
    assert base_url("https://dhis2.sante.gouv.tg") == "https://dhis2.sante.gouv.tg"
    with pytest.raises(ConfigError, match="must not hold credentials") as info:
        base_url(f"https://{USER}:{quote(PASSWORD)}@dhis2.sante.gouv.tg")
    _assert_no_secret(str(info.value))
    for bad in ("ftp://dhis2", "dhis2.sante.gouv.tg", "https://h/dhis?dryRun=false"):
        with pytest.raises(ConfigError):
            base_url(bad)


def test_import_summary_shapes():
    flat = {"responseType": "ImportSummary", "status": "SUCCESS",
            "importCount": {"imported": 2, "updated": 1, "ignored": 0, "deleted": 0}}
    wrapped = {"httpStatus": "OK", "httpStatusCode": 200, "status": "OK", "response": flat}
    assert parse_import_summary(flat) == parse_import_summary(wrapped)
    assert parse_import_summary(flat)["imported"] == 2
    assert parse_import_summary({"httpStatus": "Unauthorized", "status": "ERROR"}) is None
    assert parse_import_summary(["not", "a", "summary"]) is None


def test_connection_from_env(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_DHIS2", f"https://{USER}:{quote(PASSWORD, safe='')}@dhis2.sante.gouv.tg/dhis")
    url, auth = dhis2_connection()
    assert url == "https://dhis2.sante.gouv.tg/dhis"
    assert (auth.kind, auth.user, auth.header()) == ("basic", USER, BASIC)
    _assert_no_secret(repr(auth), str(auth))
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_DHIS2", json.dumps(
        {"conn_type": "http", "extra": {"url": "https://dhis2.sante.gouv.tg", "token": TOKEN}}))
    url, auth = dhis2_connection()
    assert url == "https://dhis2.sante.gouv.tg" and auth.header() == f"ApiToken {TOKEN}"
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_DHIS2", json.dumps(
        {"conn_type": "http", "host": "dhis2.sante.gouv.tg", "schema": "https", "port": 8443, "password": TOKEN}))
    url, auth = dhis2_connection()
    assert url == "https://dhis2.sante.gouv.tg:8443" and auth.kind == "token"
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_DHIS2")
    assert dhis2_connection() == (None, None)


# --------------------------------------------------------------------------------------------------
# Command line


def ns(url, **kw):
    base = {"period": PERIOD, "dry_run": False, "out": None, "push": None, "suppress": None, "warehouse_url": url}
    return Namespace(**(base | kw))


def test_cli_preview_contacts_nothing(sqlite_url, capsys):
    eng = seed(sqlite_url)
    assert cli_main(ns(sqlite_url, dry_run=True)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == EXPECTED
    assert "11 values for 2 org units" in err and "suspected 26, confirmed 16, deaths 1" in err
    assert "HIV suspected 4" in err
    assert [(r["mode"], r["target"]) for r in exports_for_period(eng, PERIOD)] == [("file", "stdout")]


def test_cli_out_file_and_unmapped_facility(sqlite_url, tmp_path, capsys):
    seed(sqlite_url, unmapped=True)
    dest = tmp_path / "w45.json"
    assert cli_main(ns(sqlite_url, out=str(dest), suppress=5)) == 1  # CLINIC-X's counts could not be sent
    out, err = capsys.readouterr()
    assert json.loads(dest.read_text(encoding="utf-8"))["dataValues"][0]["value"] == "9"
    assert "4 values for 1 org units" in out and "7 values below 5 (--suppress 5)" in out and f"wrote {dest}" in out
    assert "CLINIC-X (suspected 2, confirmed 0, deaths 0)" in err


def test_cli_push(sqlite_url, dhis2, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    eng = seed(sqlite_url)
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_DHIS2", f"https://{USER}:{quote(PASSWORD, safe='')}@dhis2.example.org")
    assert cli_main(ns(sqlite_url, push=dhis2.url)) == 0
    out, err = capsys.readouterr()
    assert "DHIS2 dry run: SUCCESS imported 11" in out and "DHIS2 import: SUCCESS imported 11" in out
    assert len(dhis2.store) == 11
    # --dry-run --push: DHIS2's dry run only
    assert cli_main(ns(sqlite_url, push=dhis2.url, dry_run=True)) == 0
    assert [r["query"]["dryRun"] for r in dhis2.requests] == ["true", "false", "true"]
    # conflicts: exit 1, nothing imported
    dhis2.elements.discard("IDSR_MALARIA_SUSP")
    assert cli_main(ns(sqlite_url, push=dhis2.url)) == 1
    out2, err2 = capsys.readouterr()
    assert "NOT done" in err2 and "conflict: IDSR_MALARIA_SUSP" in out2
    assert len(dhis2.requests) == 4
    # a wrong password: exit 2, clear, recorded
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_DHIS2", f"https://{USER}:wrong@dhis2.example.org")
    assert cli_main(ns(sqlite_url, push=dhis2.url)) == 2
    out3, err3 = capsys.readouterr()
    assert "HTTP 401" in err3
    assert [r["status"] for r in exports_for_period(eng, PERIOD)][-1] == "HTTP_401"
    _assert_no_secret(out, err, out2, err2, out3, err3, caplog.text, _rows_text(eng))


def test_cli_errors(sqlite_url, monkeypatch, capsys):
    seed(sqlite_url)
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_DHIS2", raising=False)
    assert cli_main(ns(sqlite_url, period="2026-45")) == 2
    assert "2026W45" in capsys.readouterr().err
    assert cli_main(ns(sqlite_url, push="https://dhis2.example.org")) == 2
    assert "no DHIS2 credentials" in capsys.readouterr().err
    assert cli_main(ns(sqlite_url, push=f"https://{USER}:{quote(PASSWORD)}@dhis2.example.org")) == 2
    err = capsys.readouterr().err
    assert "must not hold credentials" in err
    _assert_no_secret(err)
    assert cli_main(ns(sqlite_url, suppress=1)) == 2
    assert "--suppress" in capsys.readouterr().err
    assert cli_main(ns(sqlite_url, config=str(Path("/nonexistent-config")))) == 2
    assert "not found" in capsys.readouterr().err
