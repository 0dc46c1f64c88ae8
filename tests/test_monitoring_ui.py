"""The interface monitoring page (Airflow plugin) on SQLite and the real PostgreSQL.

A month of hourly volume for seven facilities x three message types, a latest interface_health
snapshot holding every status (and an older one that must not show), open and resolved alerts,
open and resolved quarantine rows. Through FastAPI's TestClient: no credentials -> 401, a forged
token -> 403, a JWT minted by Airflow's auth manager (header or the UI's ``_token`` cookie) -> the
page and the JSON API with the seeded facilities, statuses, alerts and reasons; the region and
facility filters; hostile text escaped; the plugin mounted by Airflow's own API app.

The HTML is read through a parser (elements, decoded attributes, text), so an escaping mistake
shows up as a wrong element rather than as a string that happens to match.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta
from browser_support import Elements
from pathlib import Path

import pytest
from sqlalchemy import text

from transforms import monitoring_page as mp
from transforms.warehouse import Writer, get_engine

ROOT = Path(__file__).resolve().parent.parent
CHECK = datetime(2026, 3, 15, 12, 0, 0)
FACILITIES = [  # code, name, region, district
    ("CHU-SO", "CHU Sylvanus Olympio", "Lomé-Commune", "Golfe"),
    ("CHU-KARA", "CHU de Kara", "Kara", "Kozah"),
    ("CHR-SOKODE", "Centre Hospitalier Régional de Sokodé", "Centrale", "Tchaoudjo"),
    ("HD-TSEVIE", "Hôpital de district de Tsévié", "Maritime", "Zio"),
    ("INH-LOME", "Institut National d'Hygiène", "Lomé-Commune", "Golfe"),
    ("PHARM-ATAKPAME", "Pharmacie de l'Hôpital d'Atakpamé", "Plateaux", "Ogou"),
    ("USP-NANERGOU", "Unité de Soins Périphérique de Nanergou", "Savanes", "Tône"),
]
TYPES = ("ADT", "ORU", "DFT")
DAYS = 30
# Interfaces not "ok" in the latest snapshot: (facility, type) -> (status, problems).
NOT_OK = {("CHU-SO", "ADT"): ("critical", "backlog_age"), ("CHR-SOKODE", "DFT"): ("critical", "silence"),
          ("CHU-KARA", "ORU"): ("warning", "quarantine_spike"), ("CHU-KARA", "ADT"): ("warning", "ack_latency"),
          **{("USP-NANERGOU", t): ("off_hours", None) for t in TYPES}}
OPEN_ALERTS = [  # created_at, dag_id, task_id, facility, severity, message
    ("2026-03-15 11:55:00", "interface_monitoring", "check_interfaces", "CHU-SO", "error",
     "Formation silencieuse depuis 45 min / Facility silent for 45 min"),
    ("2026-03-15 11:50:00", "facility_batch_ingest", "load", "CHU-KARA", "error", "Chargement échoué / Load failed"),
    ("2026-03-15 11:40:00", "interface_monitoring", "check_interfaces", None, "error",
     "File d'attente : 12 messages depuis 40 min / Backlog: 12 messages for 40 min"),
    ("2026-03-15 11:30:00", "interface_monitoring", "check_interfaces", "HD-TSEVIE", "warning",
     "Pic de quarantaine à Tsévié / Quarantine spike at Tsévié"),
]
RESOLVED_ALERT = "Alerte close / Resolved alert"
QUARANTINE = [("CHU-SO", "parse", "MISSING_CONTROL_ID", 5), ("CHU-KARA", "dq", "obx3_present", 4),
              ("HD-TSEVIE", "parse", "BATCH_COUNT_MISMATCH", 3)]
PATIENT = "KOFFI^AMA"  # in the raw messages only: must never reach the page


def ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def flat(s: str) -> str:
    """Whitespace runs (the thousands separator is a narrow no-break space) as one space."""
    return " ".join(s.split())


def volume_rows() -> list[tuple]:
    """30 days x 24 hours ending with the check's hour, per facility and type."""
    hour0 = CHECK.replace(minute=0, second=0)
    rows = []
    for k in range(DAYS * 24):
        hour = hour0 - timedelta(hours=k)
        for i, (code, *_rest) in enumerate(FACILITIES):
            source = "mllp" if code == "CHU-SO" else "folder"
            for j, t in enumerate(TYPES):
                n = 5 + (k * 7 + i * 3 + j) % 11
                q = (1 + i % 2) if (k + i + j) % 4 == 0 else 0
                d = 1 if k % 24 == 3 else 0
                rows.append((ts(hour), code, source, t, n, q, d, ts(CHECK)))
    return rows


def expected_days(rows: list[tuple], codes: set[str]) -> dict[str, tuple[int, int, int]]:
    out: dict[str, list[int]] = {}
    for hour, code, _s, _t, n, q, d, _u in rows:
        if code in codes:
            acc = out.setdefault(hour[:10], [0, 0, 0])
            acc[0] += n
            acc[1] += q
            acc[2] += d
    return {k: tuple(v) for k, v in out.items()}


def health_row(checked: str, code: str, source: str, mtype: str, status: str, problems: str | None) -> dict:
    return {"c": checked, "f": code, "s": source, "t": mtype, "st": status, "m1": 12, "m24": 300, "e1": 14.5,
            "qr": 0.02, "lm": ts(CHECK - timedelta(minutes=3)), "sm": 3.0, "p95": 850.0 if source == "mllp" else None,
            "bl": 4 if problems == "backlog_age" else 0, "pr": problems}


def seed(engine) -> list[tuple]:
    """The month of data described in the module docstring; returns the volume rows."""
    rows = volume_rows()
    health = []
    for code, *_rest in FACILITIES:
        source = "mllp" if code == "CHU-SO" else "folder"
        for t in TYPES:
            status, problems = NOT_OK.get((code, t), ("ok", None))
            health.append(health_row(ts(CHECK), code, source, t, status, problems))
            # the previous check: everything ok, and an interface that no longer exists
            health.append(health_row(ts(CHECK - timedelta(minutes=5)), code, source, t, "ok", None))
    health.append(health_row(ts(CHECK), "UNKNOWN", "folder", "-", "ok", None))
    health.append(health_row(ts(CHECK - timedelta(minutes=5)), "CHU-SO", "mllp", "MDM", "critical", "silence"))
    with engine.begin() as c:
        c.execute(text("INSERT INTO dim_facility (facility_code, name, type, region, district, dhis2_org_unit, "
                       "timezone, charset, updated_at) VALUES (:c, :n, 'chu', :r, :d, 'ou', 'Africa/Lome', "
                       "'UTF-8', '2026-01-01 00:00:00')"),
                  [{"c": c_, "n": n, "r": r, "d": d} for c_, n, r, d in FACILITIES])
        Writer(c).copy("interface_volume_hourly", ("hour", "facility_code", "source", "message_type", "messages",
                                                   "quarantined", "duplicates", "updated_at"), rows)
        c.execute(text(
            "INSERT INTO interface_health (checked_at, facility_code, source, message_type, status, messages_1h, "
            "messages_24h, expected_1h, quarantine_rate_24h, last_message_at, silence_minutes, ack_p95_ms, backlog, "
            "problems) VALUES (:c, :f, :s, :t, :st, :m1, :m24, :e1, :qr, :lm, :sm, :p95, :bl, :pr)"), health)
        alerts = [{"at": at, "d": d, "k": k, "f": f, "s": s, "m": m, "r": None} for at, d, k, f, s, m in OPEN_ALERTS]
        alerts.append({"at": "2026-03-15 11:59:00", "d": "interface_monitoring", "k": "check_interfaces",
                       "f": "CHU-SO", "s": "error", "m": RESOLVED_ALERT, "r": "2026-03-15 12:00:00"})
        c.execute(text("INSERT INTO ops_alert (created_at, dag_id, task_id, facility_code, severity, error_class, "
                       "message, log_url, resolved_at) VALUES (:at, :d, :k, :f, :s, 'transforms.Example', :m, "
                       "'http://airflow.example/log', :r)"), alerts)
        n = 0
        for code, stage, reason, count in QUARANTINE + [("CHU-SO", "parse", "RESOLVED_REASON", 2)]:
            for _ in range(count):
                n += 1
                mid = c.execute(text(
                    "INSERT INTO message_store (facility_code, message_type, received_at, source, source_ref, sha256, "
                    "raw, size_bytes, status, updated_at) VALUES (:f, 'ADT', :at, 'folder', :ref, :sha, :raw, 40, "
                    "'quarantined', :at) RETURNING id"),
                    {"f": code, "at": ts(CHECK - timedelta(minutes=n)), "ref": f"seed:{n}", "sha": f"{n:064x}",
                     "raw": f"MSH|^~\\&|||||||ADT^A01|\rPID|||{n}||{PATIENT}".encode()}).scalar_one()
                c.execute(text("INSERT INTO quarantine (message_id, stage, reason, detail, created_at, resolved_at) "
                               "VALUES (:m, :s, :r, 'MSH-10', :at, :res)"),
                          {"m": mid, "s": stage, "r": reason, "at": ts(CHECK - timedelta(minutes=n)),
                           "res": ts(CHECK) if reason == "RESOLVED_REASON" else None})
    return rows


class Page(Elements):
    """The parsed page, plus the text of all of it and the table rows of one class."""

    @property
    def all_text(self) -> str:
        return " ".join(self.text)

    def rows(self, cls: str) -> list[dict]:
        return [a for t, a in self.elements if t == "tr" and a.get("class") == cls]

    def tags(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


# --------------------------------------------------------------------------------------------------
# Fixtures


@contextmanager
def airflow_jwt(role="ADMIN"):
    """A JWT from Airflow's configured auth manager (SimpleAuthManager by default), as the UI's login
    would issue. Validation looks the token's id up in the revoked-token table: the metadata DB must
    exist. A 64-byte signing secret, as production sets (a generated one is too short for HS512)."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.utils import db

    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "hl7ics-monitoring-test-" + "s" * 48)
        db.initdb()
        yield init_auth_manager().generate_jwt(SimpleAuthManagerUser(username=f"u-{role}", role=role))


@pytest.fixture(scope="session")
def airflow_token():
    with airflow_jwt() as token:
        yield token


@pytest.fixture
def point_at(monkeypatch):
    """Point the page at a warehouse URL the way a deployment does (HL7ICS_WAREHOUSE_URL)."""
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_WAREHOUSE", raising=False)
    monkeypatch.delenv("HL7ICS_USE_SECRETS_BACKEND", raising=False)

    def point(url: str) -> None:
        monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", url)
    return point


@pytest.fixture
def client(point_at):
    from fastapi.testclient import TestClient

    from hl7ics_airflow.monitoring_ui import app

    with TestClient(app) as c:
        yield c


@pytest.fixture
def seeded(warehouse_url, point_at):
    rows = seed(get_engine(warehouse_url))
    point_at(warehouse_url)
    return rows


def get(client, path: str, token: str, **params):
    return client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})


# --------------------------------------------------------------------------------------------------
# Authentication


def test_every_route_needs_credentials(client, sqlite_url, point_at, airflow_token):
    point_at(sqlite_url)
    for path in ("/", "/api/interfaces", "/?region=Kara"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.json() == {"detail": "Not authenticated"}
        assert "CHU" not in r.text
    forged = airflow_token[:-6] + ("AAAAAA" if not airflow_token.endswith("AAAAAA") else "BBBBBB")
    r = client.get("/", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 403
    client.cookies.set("_token", "not-a-jwt")
    assert client.get("/").status_code == 403
    client.cookies.clear()
    assert get(client, "/", airflow_token).status_code == 200


def test_a_logged_in_user_without_access_to_the_monitoring_dag_is_refused(seeded, client):
    """Logging in is not enough: a user the auth manager does not let read interface_monitoring
    (no role here) gets 403 on every route; a viewer reads the page."""
    with airflow_jwt(role=None) as nobody:
        for path in ("/", "/api/interfaces"):
            r = get(client, path, nobody)
            assert r.status_code == 403 and "CHU" not in r.text, path
    with airflow_jwt(role="VIEWER") as viewer:
        assert get(client, "/", viewer).status_code == 200


def test_cookie_from_the_airflow_ui_is_accepted(seeded, client, airflow_token):
    client.cookies.set("_token", airflow_token)
    r = client.get("/")
    assert r.status_code == 200, r.text
    assert "CHU-KARA" in Page(r.text).all_text
    assert client.get("/api/interfaces").json()["count"] == len(FACILITIES) * len(TYPES) + 1


# --------------------------------------------------------------------------------------------------
# The page and the API on both databases


def test_page_shows_the_latest_snapshot_alerts_and_quarantine(seeded, client, airflow_token):
    r = get(client, "/", airflow_token)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'self'" in csp
    assert r.headers["cache-control"] == "no-store"
    page = Page(r.text)
    body = page.all_text
    assert "Surveillance des interfaces / Interface monitoring" in body
    assert page.tags("strong", id="checked-at") and ts(CHECK) in body
    assert not page.tags("script")

    rows = page.rows("iface")
    assert len(rows) == len(FACILITIES) * len(TYPES) + 1, "latest snapshot only (the older one has MDM)"
    assert {(a["data-facility"], a["data-status"]) for a in rows if a["data-status"] != "ok"} == \
        {(code, st) for (code, _t), (st, _p) in NOT_OK.items()}
    rank = {"critical": 0, "warning": 1, "ok": 2, "off_hours": 3}
    order = [rank[a["data-status"]] for a in rows]
    assert order == sorted(order) and order[:2] == [0, 0], "worst first"
    assert {a["data-facility"] for a in rows} == {f[0] for f in FACILITIES} | {"UNKNOWN"}
    for code, name, _region, _district in FACILITIES:
        assert name in body
    badges = {a["data-status"] for a in page.tags("span", **{"class": "badge st-critical"})}
    assert badges == {"critical"}
    assert len(page.tags("span", **{"class": "badge st-off_hours"})) == 3
    assert ">MDM<" not in r.text
    kinds = {a["data-kind"] for t, a in page.elements if "data-kind" in a}
    assert kinds == {"backlog_age", "silence", "quarantine_spike", "ack_latency"}

    sparks = page.tags("svg", **{"class": "spark"})
    assert len(sparks) == len(rows) and all(s["data-points"] == "24" for s in sparks)
    # the lines are drawn from the seeded hours, not flat: 24 points at several heights
    lines = [a for t, a in page.elements if t == "polyline" and a.get("class") == "spark-messages"]
    assert all(len(a["points"].split()) == 24 for a in lines)
    assert max(len({p.split(",")[1] for p in a["points"].split()}) for a in lines) > 3

    for _at, _d, _k, _f, _s, message in OPEN_ALERTS:
        assert message in body
    assert RESOLVED_ALERT not in body
    assert [a["data-severity"] for a in page.rows("alert")] == [a[4] for a in OPEN_ALERTS], "latest first"
    assert "Open alerts (4)" in body

    reasons = {a["data-reason"] for a in page.rows("reason")}
    assert reasons == {q[2] for q in QUARANTINE}
    for _code, stage, reason, count in QUARANTINE:
        assert f"{reason} {stage} {count}" in flat(body)
    assert "RESOLVED_REASON" not in body
    assert "KOFFI" not in r.text and "AMA" not in body.split()

    # the 7-day chart and its table: the same figures as the seeded hours
    exp = expected_days(seeded, {f[0] for f in FACILITIES})
    assert page.tags("svg", **{"class": "chart chart-messages"})[0]["data-bars"] == "7"
    assert page.tags("svg", **{"class": "chart chart-quarantined"})[0]["data-bars"] == "7"
    day = ts(CHECK)[:10]
    n, q, d = exp[day]
    assert flat(f"{day} {mp._fmt_int(n)} {mp._fmt_int(q)} {mp._fmt_int(d)}") in flat(body)


def test_api_returns_the_latest_snapshot_as_json(seeded, client, airflow_token):
    r = get(client, "/api/interfaces", airflow_token)
    assert r.status_code == 200
    data = r.json()
    assert data["checked_at"] == ts(CHECK)
    assert data["count"] == len(data["interfaces"]) == len(FACILITIES) * len(TYPES) + 1
    by_key = {(i["facility_code"], i["message_type"]): i for i in data["interfaces"]}
    assert by_key[("CHU-SO", "ADT")]["status"] == "critical"
    assert by_key[("CHU-SO", "ADT")]["problems"] == "backlog_age"
    assert by_key[("CHU-SO", "ADT")]["ack_p95_ms"] == 850.0 and by_key[("CHU-SO", "ADT")]["backlog"] == 4
    assert by_key[("CHU-KARA", "ORU")]["region"] == "Kara"
    assert by_key[("CHU-KARA", "ORU")]["last_message_at"] == ts(CHECK - timedelta(minutes=3))
    assert by_key[("UNKNOWN", "-")]["name"] is None
    assert all(i["checked_at"] == ts(CHECK) for i in data["interfaces"])


@pytest.mark.parametrize("params, codes, alerts, reasons", [
    ({"region": "Kara"}, {"CHU-KARA"}, {"CHU-KARA", None}, {"obx3_present"}),
    ({"facility": "CHU-SO"}, {"CHU-SO"}, {"CHU-SO", None}, {"MISSING_CONTROL_ID"}),
    ({"region": "Lomé-Commune"}, {"CHU-SO", "INH-LOME"}, {"CHU-SO", None}, {"MISSING_CONTROL_ID"}),
    ({"region": "Lomé-Commune", "facility": "INH-LOME"}, {"INH-LOME"}, {None}, set()),
])
def test_filters(seeded, client, airflow_token, params, codes, alerts, reasons):
    r = get(client, "/", airflow_token, **params)
    assert r.status_code == 200
    page = Page(r.text)
    assert {a["data-facility"] for a in page.rows("iface")} == codes
    assert len(page.rows("iface")) == 3 * len(codes)
    assert {a["data-facility"] or None for a in page.rows("alert")} == alerts
    assert {a["data-reason"] for a in page.rows("reason")} == reasons
    # the daily figures are the filtered facilities' own
    n, q, d = expected_days(seeded, codes)[ts(CHECK)[:10]]
    assert flat(f"{ts(CHECK)[:10]} {mp._fmt_int(n)} {mp._fmt_int(q)} {mp._fmt_int(d)}") in flat(page.all_text)
    # the form keeps the choice
    for name, value in params.items():
        assert any(a.get("value") == value and "selected" in a for t, a in page.elements if t == "option"), name
    api = get(client, "/api/interfaces", airflow_token, **params).json()
    assert {i["facility_code"] for i in api["interfaces"]} == codes


def test_unknown_filter_matches_nothing(seeded, client, airflow_token):
    page = Page(get(client, "/", airflow_token, facility="NOPE").text)
    assert not page.rows("iface")
    assert page.tags("p", id="no-interfaces")
    assert page.tags("p", **{"class": "empty chart-messages"}), "no chart without data"
    assert get(client, "/api/interfaces", airflow_token, region="Atlantis").json()["count"] == 0
    assert get(client, "/", airflow_token, region="x" * 101).status_code == 422


def test_hostile_text_is_escaped(seeded, warehouse_url, client, airflow_token):
    hostile = "<script>alert('x')</script>"
    img = '"><img src=x onerror=alert(1)>'
    with get_engine(warehouse_url).begin() as c:
        c.execute(text("UPDATE dim_facility SET name = :n, region = :r WHERE facility_code = 'HD-TSEVIE'"),
                  {"n": f"Clinique {hostile} & Fils", "r": f"Maritime{img}"})
        c.execute(text("UPDATE ops_alert SET message = :m, log_url = 'javascript:alert(1)' "
                       "WHERE facility_code = 'HD-TSEVIE'"), {"m": f"Échec {hostile}"})
        c.execute(text("UPDATE quarantine SET reason = :r WHERE reason = 'BATCH_COUNT_MISMATCH'"), {"r": img})
        c.execute(text("UPDATE interface_health SET problems = :p WHERE facility_code = 'HD-TSEVIE' "
                       "AND message_type = 'ADT'"), {"p": f"silence,{hostile}"})
    for params in ({}, {"region": img}, {"facility": hostile}, {"region": f"Maritime{img}"}):
        r = get(client, "/", airflow_token, **params)
        assert r.status_code == 200
        page = Page(r.text)
        assert not page.tags("script") and not page.tags("img"), params
        assert "<script>" not in r.text and "<img" not in r.text
        assert not any(a.get("href", "").lower().startswith("javascript") for t, a in page.elements if t == "a")
    page = Page(get(client, "/", airflow_token).text)
    assert f"Clinique {hostile} & Fils" in page.all_text
    assert f"Échec {hostile}" in page.all_text
    assert img in {a["data-reason"] for a in page.rows("reason")}
    assert hostile in {a.get("data-kind") for t, a in page.elements if "data-kind" in a}
    # the hostile region still filters, as a value
    page = Page(get(client, "/", airflow_token, region=f"Maritime{img}").text)
    assert {a["data-facility"] for a in page.rows("iface")} == {"HD-TSEVIE"}


def test_at_most_50_alerts_latest_first(warehouse_url, point_at, client, airflow_token):
    eng = get_engine(warehouse_url)
    with eng.begin() as c:
        c.execute(text("INSERT INTO ops_alert (created_at, dag_id, facility_code, severity, message) "
                       "VALUES (:at, 'interface_monitoring', 'CHU-SO', 'error', :m)"),
                  [{"at": ts(CHECK - timedelta(minutes=i)), "m": f"alert number {i:02d}"} for i in range(60)])
    point_at(warehouse_url)
    page = Page(get(client, "/", airflow_token).text)
    shown = [t for t in page.text if t.startswith("alert number")]
    assert shown == [f"alert number {i:02d}" for i in range(50)]
    assert "latest 50 of 60" in page.all_text and "Open alerts (60)" in page.all_text


def test_an_alert_is_dated_from_when_its_problem_opened(warehouse_url, point_at, client, airflow_token):
    """A silence open since the 12th and reminded on the 15th reads "since the 12th" (the page
    showed the latest reminder's time), and sorts as the older problem it is."""
    from transforms.alerting import Alert, Alerter, AlertingConfig

    eng = get_engine(warehouse_url)
    a = Alerter(eng, AlertingConfig(reminder_minutes=60))
    opened = CHECK - timedelta(days=3)
    for at in (opened, CHECK - timedelta(minutes=5)):
        a.fire(Alert(key="silence:CHU-SO", kind="silence", severity="error", facility_code="CHU-SO",
                     params={"facility_code": "CHU-SO", "minutes": 90, "expected_minutes": 30}), now=at)
    a.fire(Alert(key="disk:/var", kind="disk_usage", severity="error",
                 params={"path": "/var", "percent": 95, "threshold": 90}), now=CHECK - timedelta(hours=1))
    point_at(warehouse_url)
    page = Page(get(client, "/", airflow_token).text)
    assert [r["data-facility"] for r in page.rows("alert")] == ["", "CHU-SO"]
    assert ts(opened) in page.all_text and ts(CHECK - timedelta(minutes=5)) not in page.all_text


def test_no_check_yet_and_no_cached_warehouse(seeded, tmp_path, point_at, client, airflow_token):
    assert len(Page(get(client, "/", airflow_token).text).rows("iface")) == 22
    # Another warehouse in the same process: the URL is read per request, nothing is kept.
    point_at(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        r = get(client, "/", airflow_token)
        page = Page(r.text)
        assert r.status_code == 200 and not page.rows("iface")
        assert page.tags("p", id="stale") and "No check recorded yet" in page.all_text
        assert get(client, "/api/interfaces", airflow_token).json() == {
            "checked_at": None, "region": None, "facility": None, "count": 0, "interfaces": []}
    finally:
        from transforms.warehouse import _ENGINES

        eng = _ENGINES.pop(f"sqlite:///{tmp_path / 'other.db'}", None)
        if eng is not None:
            eng.dispose()


def test_warehouse_failure_is_a_generic_503(tmp_path, point_at, client, airflow_token):
    bad = tmp_path / "not-a-db"
    bad.mkdir()
    point_at(f"sqlite:///{bad}")  # a directory: SQLite cannot open it
    r = get(client, "/", airflow_token)
    assert r.status_code == 503
    assert r.json() == {"detail": "Entrepôt indisponible / Warehouse unavailable"}
    assert str(bad) not in r.text


def test_page_queries_never_scan_the_message_store(warehouse_url):
    """The page runs every few minutes per viewer: it may look messages up by id, never scan them.
    Enough rows (20,000, 1 in 25 held) and fresh statistics that a planner would pick a scan."""
    eng = get_engine(warehouse_url)
    seed(eng)
    with eng.begin() as c:
        Writer(c).copy("message_store", ("facility_code", "message_type", "received_at", "source", "source_ref",
                                         "sha256", "raw", "size_bytes", "status", "updated_at"),
                       [(FACILITIES[m % 7][0], "ORU", ts(CHECK), "folder", f"bulk:{m}", f"{m:064x}", b"MSH|x", 5,
                         "quarantined" if m % 25 == 0 else "loaded", ts(CHECK)) for m in range(20_000)])
        c.execute(text("INSERT INTO quarantine (message_id, stage, reason, created_at) SELECT id, 'parse', "
                       "'MISSING_CONTROL_ID', received_at FROM message_store WHERE source_ref LIKE 'bulk:%' "
                       "AND status = 'quarantined'"))
        c.execute(text("ANALYZE"))
    params = {"checked_at": ts(CHECK), "since_at": ts(CHECK - timedelta(days=7)), "until_at": ts(CHECK),
              "limit": 50}
    pg = eng.dialect.name == "postgresql"
    with eng.connect() as c:
        for name, sql in mp.queries().items():
            for flt in ({"region": None, "facility": None}, {"region": "Kara", "facility": None},
                        {"region": None, "facility": "CHU-SO"}):
                plan = "\n".join(str(r[0] if pg else r[3]) for r in c.execute(
                    text(("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + sql), {**params, **flt}))
                if pg:
                    assert "Seq Scan on message_store" not in plan, f"{name} {flt}:\n{plan}"
                else:
                    assert not re.search(r"^SCAN (m|message_store)\b", plan, re.M), f"{name} {flt}:\n{plan}"
    # and the lookups find the right facility: the seeded holds plus every 25th bulk row of theirs
    def bulk(i: int) -> int:
        return sum(1 for m in range(0, 20_000, 25) if m % 7 == i)
    assert {r["reason"]: r["n"] for r in mp.fetch(eng, region="Kara").reasons} == {
        "obx3_present": 4, "MISSING_CONTROL_ID": bulk(1)}
    assert {r["reason"]: r["n"] for r in mp.fetch(eng, facility="CHU-SO").reasons} == {
        "MISSING_CONTROL_ID": 5 + bulk(0)}


# --------------------------------------------------------------------------------------------------
# Inside Airflow


def test_plugin_is_mounted_by_airflows_api_app(seeded, airflow_token):
    from fastapi.testclient import TestClient

    from airflow import plugins_manager
    from airflow.api_fastapi.app import create_app

    info = {p["name"]: p for p in plugins_manager.get_plugin_info()}
    plugin = info["hl7ics_monitoring"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/hl7ics-monitoring"]
    [view] = plugin["external_views"]
    assert view["name"] == "Interface monitoring" and view["href"] == "hl7ics-monitoring/"
    assert view["url_route"] == "hl7ics-monitoring" and view["destination"] == "nav"

    with TestClient(create_app(apps="core")) as c:
        assert c.get("/hl7ics-monitoring/").status_code == 401
        c.cookies.set("_token", airflow_token)
        r = c.get("/hl7ics-monitoring/", params={"region": "Kara"})
        assert r.status_code == 200, r.text
        assert {a["data-facility"] for a in Page(r.text).rows("iface")} == {"CHU-KARA"}
        assert c.get("/hl7ics-monitoring/api/interfaces").json()["count"] == 22


def test_plugin_file_imports_cheaply():
    """Every Airflow process that loads plugins imports every file under plugins/: building the app,
    Airflow's API security module, the page code, pandas and GX must wait for the first request."""
    code = ("import sys\n"
            "from airflow import plugins_manager\n"
            "names = [p['name'] for p in plugins_manager.get_plugin_info()]\n"
            "assert 'hl7ics_monitoring' in names, names\n"
            "print([m for m in ('pandas', 'great_expectations', 'airflow.api_fastapi.core_api.security',\n"
            "                   'transforms.monitoring_page') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


# --------------------------------------------------------------------------------------------------
# Drawing helpers (no database)


def test_sparkline_scales_both_series_on_one_axis():
    svg = mp.sparkline([0, 10, 5], [0, 5, 0], width=100, height=20)
    assert 'data-points="3"' in svg
    msgs = Page(svg).tags("polyline", **{"class": "spark-messages"})[0]["points"].split()
    quar = Page(svg).tags("polyline", **{"class": "spark-quarantined"})[0]["points"].split()
    assert [p.split(",")[1] for p in msgs] == ["18.0", "2.0", "10.0"]  # 10 at the top, 0 at the bottom
    assert quar[1].split(",")[1] == "10.0"  # 5 of 10: half-way, on the same scale
    assert "15 messages, 5 quarantined" in svg


def test_bar_chart_and_empty_chart():
    svg = mp.bar_chart(["2026-03-14", "2026-03-15"], [10, 5], "#1f77b4", "T <b>", "c")
    page = Page(svg)
    bars = page.tags("rect", **{"class": "bar"})
    assert len(bars) == 2 and float(bars[0]["height"]) == 2 * float(bars[1]["height"])
    assert "T <b>" in page.all_text and "<b>" not in svg
    assert "<svg" not in mp.bar_chart(["a"], [0], "#000", "T", "c")


def test_stale_banner_and_safe_links():
    data = mp.PageData(checked_at=ts(CHECK), now=ts(CHECK + timedelta(minutes=5)))
    assert 'id="stale"' not in mp.render_page(data)
    data.now = ts(CHECK + timedelta(minutes=40))
    assert 'id="stale"' in mp.render_page(data) and "40 min ago" in mp.render_page(data)
    assert mp._safe_link("https://airflow/log?x=1") and mp._safe_link("/dags/x")
    for bad in ("javascript:alert(1)", "JAVASCRIPT:x", "//evil.example/x", "data:text/html,x", None):
        assert mp._safe_link(bad) is None, bad


def test_outbound_delivery_is_shown_per_destination(warehouse_url, hl7ics_home):
    """Issue 9: every hop is visible in the monitoring page (routed copies per destination)."""
    from transforms.monitoring_page import fetch, render_page
    from transforms.warehouse import Writer, get_engine, utcnow

    eng = get_engine(warehouse_url)
    now = utcnow()
    rows = [(i, "r1", dest, f"patient:{i % 2}", b"MSH|", f"C{i}", st, 1, now, now, now)
            for i, (dest, st) in enumerate([("lab-inh", "delivered"), ("lab-inh", "dead"), ("lab-inh", "pending"),
                                            ("ehr-<chu>", "delivered")], start=1)]
    with eng.begin() as c:
        Writer(c).copy("outbound_queue", ("message_id", "route", "destination", "order_key", "payload", "control_id",
                                          "status", "attempts", "next_attempt_at", "created_at", "updated_at"), rows)
    page = render_page(fetch(eng))
    assert 'data-destination="lab-inh"' in page and "ehr-&lt;chu&gt;" in page and "<chu>" not in page
    row = page.split('data-destination="lab-inh"')[1].split("</tr>")[0]
    assert [c.split(">")[-1] for c in row.split("</td>")[1:5]] == ["1", "0", "1", "1"]


def test_the_monitoring_bench_serves_the_page_it_times():
    """``make bench``'s monitoring section, quick, in its own process: the page it times answers
    200 through the plugin's authorization (the bench stopped there once, its auth manager never
    initialised), and no generated password reaches its output."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "bench", "monitoring", "--quick"], cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Interface monitoring page" in out.stdout and " yes" in out.stdout
    assert "Password" not in out.stdout + out.stderr
