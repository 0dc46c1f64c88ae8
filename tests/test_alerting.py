"""Alerting (transforms/alerting.py, plugins/hl7ics_airflow/alerts.py, config/alerting.yaml).

A real SMTP server (aiosmtpd, on loopback) and a local HTTP receiver stand for the e-mail and
webhook channels, configured the production way: Airflow connections in AIRFLOW_CONN_HL7ICS_SMTP
and AIRFLOW_CONN_HL7ICS_WEBHOOK. Time is injected (``now``), never waited for. The lifecycle tests
run on SQLite and on the real PostgreSQL; the last tests go through real Airflow callbacks
(``dag.test()`` of facility_batch_ingest).
"""
from __future__ import annotations

import email
import email.policy
import json
import logging
import shutil
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from transforms.alerting import (TEMPLATES, Alert, Alerter, AlertingConfig, Channel, connection_from_env,
                                 render_message, webhook_url)
from transforms.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 2, 8, 0, 0)
KEY = "task:facility_batch_ingest.load:CHU-SO"
# What a patient's data looks like in this project's fixtures: a name, a birth date, a phone, an ID.
PHI = ("Ɖogbé", "Améyo", "19870412", "90123456", "TG-778812")
CHANNELS = (Channel("ops_alert"), Channel("email", "hl7ics_smtp"), Channel("webhook", "hl7ics_webhook"))


# --- receivers ---------------------------------------------------------------------------------

class Mailbox:
    """aiosmtpd on 127.0.0.1; ``messages`` holds the parsed mails, in arrival order."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        self.raw: list[bytes] = []
        self.port = _free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):
        self.raw.append(envelope.content)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 Message accepted for delivery"

    def for_key(self, key: str) -> list:
        return [m for m in self.messages if m["X-HL7ICS-Alert-Key"] == key]


class Hooks:
    """A local HTTP receiver; ``received`` holds the JSON bodies, ``status`` is what it answers."""

    def __init__(self, status: int = 200):
        self.received: list[dict] = []
        self.raw: list[bytes] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.raw.append(body)
                outer.received.append({"path": self.path, "headers": dict(self.headers), **json.loads(body)})
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def for_key(self, key: str) -> list[dict]:
        return [r for r in self.received if r["alert"]["key"] == key]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mailbox():
    box = Mailbox()
    box.controller.start()
    yield box
    box.controller.stop()


@pytest.fixture
def hooks():
    h = Hooks()
    h.thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


def _smtp_conn(port: int) -> str:
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                       "extra": {"from": "hl7ics@sante.gouv.tg", "to": ["astreinte@sante.gouv.tg", "dsnisi@sante.gouv.tg"]}})


@pytest.fixture
def channels(mailbox, hooks, monkeypatch):
    """Both channels defined as Airflow connections in the environment (JSON for SMTP, a URI for
    the webhook, as operators write them)."""
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_SMTP", _smtp_conn(mailbox.port))
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_WEBHOOK", f"http://127.0.0.1:{hooks.port}/hooks/alerts")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("HL7ICS_ALERT_LANG", raising=False)
    return SimpleNamespace(mail=mailbox, hooks=hooks)


def _alerter(url: str, language: str = "en", reminder: int = 240, chans=CHANNELS) -> Alerter:
    from transforms.warehouse import get_engine

    return Alerter(get_engine(url), AlertingConfig(language=language, reminder_minutes=reminder, channels=chans))


def _failure(severity: str = "error", **kw) -> Alert:
    return Alert(key=KEY, kind="task_failed", severity=severity, facility_code="CHU-SO", dag_id="facility_batch_ingest",
                 task_id="load", run_id="scheduled__2026-11-02T08:00:00+00:00", error_class="transforms.errors.SourceError",
                 log_url="http://airflow.local/dags/facility_batch_ingest/runs/x/tasks/load/mapped/2",
                 params={"detail": "share CHU-SO unavailable"}, **kw)


def _ops_alerts(url: str, key: str = KEY) -> list:
    from transforms.warehouse import get_engine

    with get_engine(url).connect() as c:
        return c.execute(text("SELECT severity, message, resolved_at, facility_code, task_id, error_class "
                              "FROM ops_alert WHERE alert_key = :k ORDER BY id"), {"k": key}).all()


def _state(url: str, key: str = KEY):
    from transforms.warehouse import get_engine

    with get_engine(url).connect() as c:
        return c.execute(text("SELECT state, severity, occurrences, messages FROM alert_state WHERE alert_key = :k"),
                         {"k": key}).one()


# --- lifecycle ---------------------------------------------------------------------------------

def test_failing_task_alerts_once_per_channel_and_then_throttles(warehouse_url, channels):
    a = _alerter(warehouse_url)
    assert a.fire(_failure(), now=T0) == "opened"
    assert len(channels.mail.messages) == 1 and len(channels.hooks.received) == 1
    assert len(_ops_alerts(warehouse_url)) == 1

    mail = channels.mail.messages[0]
    assert mail["Subject"] == "[hl7ics] [ERROR] Task facility_batch_ingest.load failed [CHU-SO]"
    assert mail["From"] == "hl7ics@sante.gouv.tg" and "dsnisi@sante.gouv.tg" in mail["To"]
    assert mail["Auto-Submitted"] == "auto-generated"
    body = mail.get_content()
    assert "Facility: CHU-SO" in body and "transforms.errors.SourceError" in body and "share CHU-SO unavailable" in body
    hook = channels.hooks.received[0]
    assert hook["path"] == "/hooks/alerts"
    assert hook["text"].startswith(mail["Subject"] + "\n") and "share CHU-SO unavailable" in hook["text"]
    assert hook["alert"] == {
        "key": KEY, "kind": "task_failed", "severity": "error", "state": "opened", "facility_code": "CHU-SO",
        "dag_id": "facility_batch_ingest", "task_id": "load", "run_id": "scheduled__2026-11-02T08:00:00+00:00",
        "error_class": "transforms.errors.SourceError",
        "log_url": "http://airflow.local/dags/facility_batch_ingest/runs/x/tasks/load/mapped/2",
        "params": {"detail": "share CHU-SO unavailable"}, "language": "en"}

    # The same failure again, inside the reminder window: counted, nothing sent.
    assert a.fire(_failure(), now=T0 + timedelta(minutes=15)) == "suppressed"
    assert a.fire(_failure(), now=T0 + timedelta(minutes=239)) == "suppressed"
    assert len(channels.mail.messages) == 1 and len(channels.hooks.received) == 1
    assert len(_ops_alerts(warehouse_url)) == 1
    assert tuple(_state(warehouse_url)) == ("open", "error", 3, 1)
    assert a.open_keys("task:") == [KEY] and a.open_keys("silence:") == []
    # prefixes are literal: LIKE wildcards in them match only themselves
    assert a.open_keys("task:facility_batch_ingest.") == [KEY] and a.open_keys("task:facility%") == []
    assert a.open_keys("task:facility_batch?ingest") == [] and a.open_keys("task:facilityXbatch") == []


def test_reminder_once_reminder_minutes_have_passed(warehouse_url, channels):
    a = _alerter(warehouse_url, reminder=240)
    assert a.fire(_failure(), now=T0) == "opened"
    assert a.fire(_failure(), now=T0 + timedelta(minutes=240)) == "reminder"
    assert a.fire(_failure(), now=T0 + timedelta(minutes=300)) == "suppressed"  # 60 min after the reminder
    assert a.fire(_failure(), now=T0 + timedelta(minutes=480)) == "reminder"
    assert [m["X-HL7ICS-Alert-State"] for m in channels.mail.messages] == ["opened", "reminder", "reminder"]
    assert [h["alert"]["state"] for h in channels.hooks.received] == ["opened", "reminder", "reminder"]
    reminder = channels.mail.messages[1]
    assert reminder["Subject"].startswith("[hl7ics] [ERROR] Reminder: Task facility_batch_ingest.load failed")
    assert "Still open since 2026-11-02 08:00 UTC (240 min, seen 2 times)" in reminder.get_content()
    # one thread per problem in mail clients
    assert reminder["References"] == channels.mail.messages[0]["References"]
    assert len(_ops_alerts(warehouse_url)) == 3
    assert tuple(_state(warehouse_url)) == ("open", "error", 4, 3)


def test_a_lower_severity_reminder_keeps_the_problems_severity(sqlite_url, channels):
    """A task that failed (error) is retried hours later (a warning occurrence): the reminder goes
    out as an error, also to the channels that only take errors, and is recorded as one."""
    chans = (Channel("ops_alert"), Channel("email", "hl7ics_smtp", "error"))
    a = _alerter(sqlite_url, reminder=240, chans=chans)
    assert a.fire(_failure(), now=T0) == "opened"
    assert a.fire(_failure("warning"), now=T0 + timedelta(minutes=300)) == "reminder"
    assert [m["X-HL7ICS-Alert-State"] for m in channels.mail.messages] == ["opened", "reminder"]
    assert channels.mail.messages[1]["Subject"].startswith("[hl7ics] [ERROR] Reminder:")
    assert [r[0] for r in _ops_alerts(sqlite_url)] == ["error", "error"]


def test_past_idsr_notices_close_without_a_message(sqlite_url, channels):
    """An IDSR notice is per disease, facility and week; nothing resolves it. Those of weeks
    before last week are closed quietly, so they stop filling the open alerts."""
    from hl7ics_airflow.reporting_tasks import close_past_notices

    a = _alerter(sqlite_url)
    now = datetime(2026, 11, 25, 6)  # ISO week 2026-W48
    for week in ("2026-W40", "2026-W47", "2026-W48"):
        a.fire(Alert(key=f"idsr:CHOLERA:CHU-SO:{week}", kind="idsr_immediate", severity="critical",
                     params={"disease": "Choléra", "facility_code": "CHU-SO", "district": "Golfe", "cases": 1}), now=now)
    sent = len(channels.hooks.received)
    assert close_past_notices(a, now) == 1
    assert a.open_keys("idsr:") == ["idsr:CHOLERA:CHU-SO:2026-W47", "idsr:CHOLERA:CHU-SO:2026-W48"]
    assert len(channels.hooks.received) == sent and len(channels.mail.messages) == sent


def test_no_reminders_when_reminder_minutes_is_zero(sqlite_url, channels):
    a = _alerter(sqlite_url, reminder=0)
    assert a.fire(_failure(), now=T0) == "opened"
    assert a.fire(_failure(), now=T0 + timedelta(days=30)) == "suppressed"
    assert len(channels.hooks.received) == 1


def test_recovery_sends_one_resolve_message_and_a_new_failure_reopens(warehouse_url, channels):
    a = _alerter(warehouse_url)
    a.fire(_failure(), now=T0)
    a.fire(_failure(), now=T0 + timedelta(minutes=5))
    assert a.resolve(KEY, now=T0 + timedelta(minutes=45), run_id="scheduled__2026-11-02T08:45:00+00:00") is True
    assert a.resolve(KEY, now=T0 + timedelta(minutes=60)) is False  # nothing open any more
    assert a.resolve("task:never.fired:-") is False
    assert [m["X-HL7ICS-Alert-State"] for m in channels.mail.messages] == ["opened", "resolved"]
    assert [h["alert"]["state"] for h in channels.hooks.received] == ["opened", "resolved"]
    resolved = channels.mail.messages[1]
    assert resolved["Subject"] == "[hl7ics] [RESOLVED] Resolved: Task facility_batch_ingest.load failed [CHU-SO]"
    assert "Resolved at 2026-11-02 08:45 UTC after 45 min (seen 2 times)" in resolved.get_content()
    assert channels.hooks.received[1]["alert"]["run_id"] == "scheduled__2026-11-02T08:45:00+00:00"
    rows = _ops_alerts(warehouse_url)
    assert len(rows) == 1 and str(rows[0][2]).startswith("2026-11-02 08:45")
    assert a.open_keys() == []

    # The same key failing later is a new problem: a new opening message and ops_alert row.
    assert a.fire(_failure(), now=T0 + timedelta(minutes=90)) == "opened"
    assert [m["X-HL7ICS-Alert-State"] for m in channels.mail.messages] == ["opened", "resolved", "opened"]
    rows = _ops_alerts(warehouse_url)
    assert len(rows) == 2 and rows[0][2] is not None and rows[1][2] is None
    assert tuple(_state(warehouse_url)) == ("open", "error", 1, 1)


def test_escalation_when_severity_rises(warehouse_url, channels):
    a = _alerter(warehouse_url)
    assert a.fire(_failure("warning"), now=T0) == "opened"
    assert a.fire(_failure("warning"), now=T0 + timedelta(minutes=1)) == "suppressed"
    assert a.fire(_failure("error"), now=T0 + timedelta(minutes=2)) == "escalated"
    assert a.fire(_failure("error"), now=T0 + timedelta(minutes=3)) == "suppressed"
    assert a.fire(_failure("warning"), now=T0 + timedelta(minutes=4)) == "suppressed"  # lower: no news
    assert a.fire(_failure("critical"), now=T0 + timedelta(minutes=5)) == "escalated"
    assert [h["alert"]["severity"] for h in channels.hooks.received] == ["warning", "error", "critical"]
    assert channels.mail.messages[1]["Subject"].startswith("[hl7ics] [ERROR] Escalated: ")
    assert "The severity rose to CRITICAL." in channels.mail.messages[2].get_content()
    assert [r[0] for r in _ops_alerts(warehouse_url)] == ["warning", "error", "critical"]
    assert tuple(_state(warehouse_url))[:2] == ("open", "critical")


def test_channel_min_severity_and_first_message_for_that_channel(sqlite_url, channels):
    chans = (Channel("email", "hl7ics_smtp", "error"), Channel("webhook", "hl7ics_webhook", "warning"))
    a = _alerter(sqlite_url, chans=chans)
    a.fire(_failure("warning"), now=T0)
    assert len(channels.mail.messages) == 0 and len(channels.hooks.received) == 1
    a.fire(_failure("error"), now=T0 + timedelta(minutes=1))
    # The mailbox never heard of the warning: for it the error is the opening message.
    assert [m["X-HL7ICS-Alert-State"] for m in channels.mail.messages] == ["opened"]
    assert [h["alert"]["state"] for h in channels.hooks.received] == ["opened", "escalated"]
    a.resolve(KEY, now=T0 + timedelta(minutes=2))
    assert len(channels.mail.messages) == 2 and len(channels.hooks.received) == 3


# --- texts -------------------------------------------------------------------------------------

PARAMS = {
    "task_failed": {}, "task_retry": {"try_number": 2}, "dag_failed": {},
    "silence": {"facility_code": "CHU-SO", "minutes": 95, "expected_minutes": 30},
    "quarantine_spike": {"source": "mllp", "message_type": "ORU", "rate_pct": 34.5, "baseline_pct": 2.1},
    "ack_latency": {"message_type": "ADT", "p95_ms": 2850, "sla_ms": 2000},
    "backlog_age": {"count": 412, "oldest_minutes": 37, "threshold_minutes": 15},
    "tls_expiry": {"subject": "CN=mllp.chu-so.tg", "days_left": 12, "file": "/run/secrets/mllp_tls_cert"},
    "disk_usage": {"path": "/var/lib/postgresql", "percent": 93.4, "threshold": 90},
    "unknown_facility": {}, "dq_threshold": {"failed": 81, "validated": 200},
    "idsr_immediate": {"disease": "CHOLERA", "district": "Tchaoudjo", "cases": 3},
    "dhis2_import": {"period": "2026W45", "ignored": 2, "conflicts": 1},
    "outbound_dead": {"destination": "lab-inh", "message_id": 42, "attempts": 8, "last_error": "AE:207"},
    "routing_held": {"destination": "dhis2-tracker", "review": 3, "failed": 1,
                     "codes": "loinc:MAL-TDR, CHARSET_UNREPRESENTABLE"},
}


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_kind_renders_in_french_and_english(kind):
    assert set(PARAMS) == set(TEMPLATES)
    alert = Alert(key=f"{kind}:CHU-SO", kind=kind, severity="error", facility_code="CHU-SO",
                  dag_id="facility_batch_ingest", task_id="load", run_id="manual__1", params=PARAMS[kind])
    texts = {}
    for lang in ("fr", "en"):
        for state in ("opened", "escalated", "reminder", "resolved"):
            subject, body, summary = render_message(alert, state, lang, opened_at=T0, occurrences=2,
                                                    now=T0 + timedelta(minutes=30))
            assert "?" not in subject + body, (lang, state, subject, body)  # every placeholder was filled
            assert "\n" not in subject and "\n" not in summary
            for v in PARAMS[kind].values():
                assert (str(v) in subject + body) or (str(v).replace(".", ",") in subject + body)
        texts[lang] = render_message(alert, "opened", lang)[:2]
    assert texts["fr"] != texts["en"]
    # Missing params (None or absent) never break a template.
    bare = Alert(key=f"{kind}:x", kind=kind, severity="warning", params={k: None for k in PARAMS[kind]})
    for lang in ("fr", "en"):
        for state in ("opened", "reminder", "resolved"):
            subject, body, _ = render_message(bare, state, lang)
            assert subject.startswith("[hl7ics] [") and f"{kind}:x" in body


def test_french_and_english_messages(sqlite_url, channels, monkeypatch):
    fr = _alerter(sqlite_url, language="fr")
    fr.fire(_failure(), now=T0)
    fr.resolve(KEY, now=T0 + timedelta(minutes=10))
    opened, resolved = channels.mail.messages
    assert opened["Subject"] == "[hl7ics] [ERREUR] Échec de la tâche facility_batch_ingest.load [CHU-SO]"
    assert "La tâche load du DAG facility_batch_ingest a échoué" in opened.get_content()
    assert "Formation : CHU-SO" in opened.get_content()
    assert resolved["Subject"].startswith("[hl7ics] [RÉSOLU] Résolu : Échec de la tâche")
    assert "Résolu le 2026-11-02 08:10 UTC après 10 min" in resolved.get_content()
    assert channels.hooks.received[0]["alert"]["language"] == "fr"

    silence = Alert(key="silence:CHR-KA", kind="silence", severity="warning", facility_code="CHR-KA",
                    params={"minutes": 92.5, "expected_minutes": 30})
    assert render_message(silence, "opened", "fr")[0] == "[hl7ics] [AVERTISSEMENT] Aucun message de CHR-KA depuis 92,5 min"
    assert render_message(silence, "opened", "en")[0] == "[hl7ics] [WARNING] No messages from CHR-KA for 92.5 min"

    # The environment overrides the file's language.
    cfg = Path(sqlite_url.split("///", 1)[1]).parent / "alerting.yaml"
    cfg.write_text("alerting:\n  language: fr\n", encoding="utf-8")
    monkeypatch.setenv("HL7ICS_ALERT_LANG", "en")
    assert AlertingConfig.load(cfg).language == "en"
    monkeypatch.delenv("HL7ICS_ALERT_LANG")
    assert AlertingConfig.load(cfg).language == "fr"


def test_unknown_kind_falls_back_to_a_generic_template():
    alert = Alert(key="listener:down", kind="listener_down", severity="critical",
                  params={"instance": "mllp-1", "minutes": 3, "nested": {"x": 1}})
    subject, body, _ = render_message(alert, "opened", "en")
    assert subject == "[hl7ics] [CRITICAL] Alert listener_down: listener:down"
    assert "instance=mllp-1" in body and "minutes=3" in body and "nested" not in body


# --- patient data ------------------------------------------------------------------------------

def _task_context(exc, task_id="load", facility="CHU-SO", try_number=1):
    ti = SimpleNamespace(dag_id="facility_batch_ingest", task_id=task_id, run_id="scheduled__2026-11-02",
                         map_index=2, rendered_map_index=facility, try_number=try_number,
                         log_url="http://airflow.local/log/1")
    return {"ti": ti, "exception": exc}


def test_no_patient_data_in_any_alert(hl7ics_home, channels, caplog):
    """An exception from outside the project whose text holds a patient's name, birth date, phone
    and ID: the class name reaches the alert, none of the data does, on any channel or table."""
    from hl7ics_airflow.alerts import on_task_failure, on_task_success

    from transforms.config import Settings
    from transforms.warehouse import get_engine

    caplog.set_level(logging.DEBUG)
    on_task_failure(_task_context(KeyError("patient Ɖogbé Améyo né le 19870412, tél. 90123456, ID TG-778812")))
    on_task_failure(_task_context(ValueError("PID|1||TG-778812||Ɖogbé^Améyo||19870412"), task_id="pull"))
    on_task_success(_task_context(None))
    # two failures opened (load, pull), one recovery (load): three messages on each channel
    assert len(channels.mail.messages) == 3 and len(channels.hooks.received) == 3
    with get_engine(Settings.load().warehouse_url).connect() as c:
        tables = [tuple(r) for r in c.execute(text("SELECT * FROM ops_alert")).all()]
        tables += [tuple(r) for r in c.execute(text("SELECT * FROM alert_state")).all()]
    everything = "\n".join([m.as_string() for m in channels.mail.messages]
                           + [m.get_content() for m in channels.mail.messages]
                           + [r.decode("utf-8") for r in channels.hooks.raw]
                           + [json.dumps(h, ensure_ascii=False) for h in channels.hooks.received]
                           + [repr(t) for t in tables] + [caplog.text])
    for token in PHI:
        assert token not in everything, token
    assert "builtins.KeyError" in everything and "builtins.ValueError" in everything


def test_params_and_fields_are_cut_to_codes(sqlite_url, channels):
    a = _alerter(sqlite_url)
    alert = _failure()
    alert.facility_code = "CHU-SO\r\nBcc: someone@example.org"
    alert.params = {"detail": "x" * 5000, "note": {"patient": "Améyo"}, "bad key": "Améyo", "count": 3}
    a.fire(alert, now=T0)
    mail = channels.mail.messages[0]
    assert mail["Bcc"] is None and "\n" not in mail["Subject"]
    params = channels.hooks.received[0]["alert"]["params"]
    assert params["count"] == 3 and len(params["detail"]) == 500 and "note" not in params and "bad key" not in params


# --- concurrency -------------------------------------------------------------------------------

def _race(url: str, n: int, at: datetime) -> list[str]:
    alerters = [_alerter(url) for _ in range(n)]
    barrier = threading.Barrier(n)
    out: list[str] = []
    errors: list[BaseException] = []

    def worker(a):
        try:
            barrier.wait()
            out.append(a.fire(_failure(), now=at))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(a,)) for a in alerters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return sorted(out)


def test_concurrent_workers_firing_the_same_key_send_one_message(warehouse_url, channels):
    assert _race(warehouse_url, 4, T0) == ["opened", "suppressed", "suppressed", "suppressed"]
    assert len(channels.mail.messages) == 1 and len(channels.hooks.received) == 1
    assert len(_ops_alerts(warehouse_url)) == 1
    # ... and a reminder that falls due for all of them at once is sent once.
    assert _race(warehouse_url, 4, T0 + timedelta(hours=5)) == ["reminder", "suppressed", "suppressed", "suppressed"]
    assert len(channels.mail.messages) == 2 and len(channels.hooks.received) == 2
    assert tuple(_state(warehouse_url)) == ("open", "error", 8, 2)


# --- failing channels --------------------------------------------------------------------------

def test_webhook_down_does_not_stop_email_nor_raise(sqlite_url, channels, caplog):
    channels.hooks.status = 500
    a = _alerter(sqlite_url)
    assert a.fire(_failure(), now=T0) == "opened"
    assert len(channels.mail.messages) == 1 and len(channels.hooks.received) == 1
    assert len(_ops_alerts(sqlite_url)) == 1
    assert "could not be sent to webhook:hl7ics_webhook: HTTPError (HTTP 500)" in caplog.text
    assert str(channels.hooks.port) not in caplog.text  # no URL (webhook URLs carry tokens)


def test_smtp_down_does_not_stop_the_webhook(sqlite_url, channels, monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_SMTP", _smtp_conn(_free_port()))  # nothing listens there
    a = _alerter(sqlite_url)
    assert a.fire(_failure(), now=T0) == "opened"
    assert len(channels.hooks.received) == 1 and len(channels.mail.messages) == 0
    assert "could not be sent to email:hl7ics_smtp: ConnectionRefusedError" in caplog.text


def test_broken_connection_lookup_and_bad_extra_are_skipped(sqlite_url, channels, caplog):
    def lookup(conn_id):
        if conn_id == "hl7ics_smtp":
            raise RuntimeError("secrets backend unreachable")
        return {"host": "127.0.0.1", "port": channels.hooks.port, "extra": {"path": "/hooks/alerts"}}

    from transforms.warehouse import get_engine

    a = Alerter(get_engine(sqlite_url), AlertingConfig(channels=CHANNELS), lookup)
    assert a.fire(_failure(), now=T0) == "opened"
    assert len(channels.hooks.received) == 1 and channels.hooks.received[0]["path"] == "/hooks/alerts"
    assert "connection hl7ics_smtp could not be read (RuntimeError)" in caplog.text

    missing_to = {"host": "127.0.0.1", "port": channels.mail.port, "extra": {"from": "a@b.tg"}}
    b = Alerter(get_engine(sqlite_url), AlertingConfig(channels=CHANNELS), lambda cid: missing_to)
    b.fire(Alert(key="dag:x", kind="dag_failed", severity="error"), now=T0)
    assert "could not be sent to email:hl7ics_smtp: ChannelError" in caplog.text


def test_undefined_connections_are_skipped_with_one_log_line(sqlite_url, monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_SMTP", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_WEBHOOK", raising=False)
    caplog.set_level(logging.INFO, logger="transforms.alerting")
    a = _alerter(sqlite_url)
    assert a.fire(_failure(), now=T0) == "opened"
    assert a.fire(Alert(key="dag:facility_batch_ingest", kind="dag_failed", severity="error"), now=T0) == "opened"
    assert a.resolve(KEY, now=T0 + timedelta(minutes=1))
    skipped = [r.getMessage() for r in caplog.records if "is not defined" in r.getMessage()]
    assert skipped == ["alert channel connection hl7ics_smtp is not defined; channel skipped",
                       "alert channel connection hl7ics_webhook is not defined; channel skipped"]
    assert len(_ops_alerts(sqlite_url)) == 1 and len(_ops_alerts(sqlite_url, "dag:facility_batch_ingest")) == 1


def test_warehouse_down_still_alerts_unthrottled(channels, caplog):
    from sqlalchemy import create_engine

    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/none",
                           connect_args={"connect_timeout": 2})
    a = Alerter(engine, AlertingConfig(language="en", channels=CHANNELS))
    assert a.fire(Alert(key="dag:facility_batch_ingest", kind="dag_failed", severity="critical",
                        dag_id="facility_batch_ingest"), now=T0) == "opened"
    assert len(channels.hooks.received) == 1 and len(channels.mail.messages) == 1
    assert "alert state unavailable (OperationalError)" in caplog.text


def test_callback_alerts_while_the_warehouse_is_down(channels, monkeypatch, caplog):
    """The Airflow failure callback, not just the Alerter: it built its engine with migrations,
    which need the database, so with the warehouse down it failed before anything was sent."""
    from types import SimpleNamespace

    from hl7ics_airflow import alerts
    from transforms.warehouse import dispose_all

    dispose_all()
    monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/none")
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_WAREHOUSE", raising=False)
    ti = SimpleNamespace(dag_id="facility_batch_ingest", task_id="load", run_id="r1", map_index=-1,
                         rendered_map_index="CHU-SO", try_number=4, log_url=None)
    try:
        assert alerts.record_alert({"ti": ti, "run_id": "r1", "exception": OSError("refused")},
                                   "error", "task_failed") == "opened"
    finally:
        dispose_all()
    assert len(channels.hooks.received) == 1 and len(channels.mail.messages) == 1
    assert "alert state unavailable (OperationalError)" in caplog.text


def test_a_typo_in_alerting_yaml_does_not_silence_monitoring_alerts(tmp_path, sqlite_url, hl7ics_home, monkeypatch):
    """The monitoring, reporting and routing tasks read alerting.yaml themselves, so a
    misspelt key failed them before any problem was recorded; they now leave it to the Alerter,
    which falls back to ops_alert rows."""
    from hl7ics_airflow import monitoring_tasks
    from transforms.warehouse import get_engine

    conf = tmp_path / "config"
    shutil.copytree(ROOT / "config", conf)
    with open(conf / "alerting.yaml", "a") as fh:
        fh.write("  reminder_minutes_: 60\n")
    monkeypatch.setenv("HL7ICS_CONFIG", str(conf))
    monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", sqlite_url)
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_WAREHOUSE", raising=False)
    out = monitoring_tasks.check_interfaces()
    assert any(k.startswith("silence:") for k in out["problems"])  # nothing received yet
    with get_engine(sqlite_url).connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM ops_alert WHERE alert_key LIKE 'silence:%'")).scalar() > 0


@pytest.mark.parametrize("code", [301, 302, 303, 307])
def test_a_redirected_webhook_is_a_failure_and_its_token_stays_home(code):
    """urllib followed redirects: a 302 turned the POST into a GET without its body (logged as
    sent) and sent the Authorization header on to the new address."""
    import urllib.error

    from transforms.alerting import post_webhook

    seen: list[tuple] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self):
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            if self.path == "/hook":
                self.send_response(code)
                self.send_header("Location", "/elsewhere")
            else:
                self.send_response(200)
            self.end_headers()

        do_GET = do_POST = _any

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        conn = {"conn_type": "http", "host": f"http://127.0.0.1:{srv.server_address[1]}/hook",
                "extra": {"headers": {"Authorization": "Token s3cr3t"}}}
        with pytest.raises(urllib.error.HTTPError) as err:
            post_webhook(conn, {"alert": {"key": "k"}})
        assert err.value.code == code
    finally:
        srv.shutdown()
        srv.server_close()
    assert seen == [("POST", "/hook", "Token s3cr3t")]


# --- configuration and connections -------------------------------------------------------------

def test_shipped_configuration():
    cfg = AlertingConfig.load(ROOT / "config" / "alerting.yaml")
    assert cfg.language == "fr" and cfg.reminder_minutes == 240
    assert [(c.type, c.conn_id) for c in cfg.channels] == [
        ("ops_alert", None), ("email", "hl7ics_smtp"), ("webhook", "hl7ics_webhook")]
    assert AlertingConfig.load(ROOT / "config" / "no-such-file.yaml") == AlertingConfig()


@pytest.mark.parametrize("body, expected", [
    ("alerting:\n  langage: fr\n", "unknown key(s) langage"),
    ("alerting:\n  language: de\n", "'language' must be one of fr, en"),
    ("alerting:\n  reminder_minutes: -5\n", "'reminder_minutes' must be a non-negative integer"),
    ("alerting:\n  reminder_minutes: soon\n", "'reminder_minutes' must be a non-negative integer"),
    ("alerting:\n  channels: {type: email}\n", "'channels' must be a list"),
    ("alerting:\n  channels:\n    - type: sms\n", "channels[0]: 'type' must be one of ops_alert, email, webhook"),
    ("alerting:\n  channels:\n    - type: ops_alert\n    - type: email\n", "channels[1]: a email channel needs 'conn_id'"),
    ("alerting:\n  channels:\n    - {type: webhook, conn_id: w, min_severity: high}\n",
     "channels[0]: 'min_severity' must be one of warning, error, critical"),
    ("alerting:\n  channels:\n    - {type: webhook, conn_id: w, url: 'http://x'}\n", "channels[0]: unknown key(s) url"),
    ("- just a list\n", "expected a top-level 'alerting:' mapping"),
    ("alerting:\n  language: [fr\n", "line 3 is not valid YAML"),
])
def test_configuration_errors_name_the_file_and_key(tmp_path, body, expected):
    path = tmp_path / "alerting.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        AlertingConfig.load(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_a_broken_alerting_file_keeps_ops_alert_rows(sqlite_url, tmp_path, monkeypatch, channels, caplog):
    (tmp_path / "alerting.yaml").write_text("alerting:\n  reminder_minutes: often\n", encoding="utf-8")
    monkeypatch.setenv("HL7ICS_CONFIG", str(tmp_path))
    from transforms.warehouse import get_engine

    a = Alerter(get_engine(sqlite_url))  # config read from <HL7ICS_CONFIG>/alerting.yaml
    assert a.fire(_failure(), now=T0) == "opened"
    assert len(_ops_alerts(sqlite_url)) == 1 and channels.hooks.received == []
    assert "'reminder_minutes' must be a non-negative integer" in caplog.text


def test_bad_language_in_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HL7ICS_ALERT_LANG", "ewe")
    with pytest.raises(ConfigError, match="HL7ICS_ALERT_LANG: must be one of fr, en"):
        AlertingConfig.load(tmp_path / "alerting.yaml")


def test_connection_from_env(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_SMTP", "smtp://alerts%40sante.tg:p%2Fss%40w0rd@smtp.sante.tg:587"
                                                   "?from=a%40b.tg&to=c%40d.tg,e%40f.tg&starttls=true")
    c = connection_from_env("hl7ics_smtp")
    assert c == {"conn_type": "smtp", "host": "smtp.sante.tg", "port": 587, "login": "alerts@sante.tg",
                 "password": "p/ss@w0rd", "schema": None,
                 "extra": {"from": "a@b.tg", "to": "c@d.tg,e@f.tg", "starttls": "true"}}
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_WEBHOOK", json.dumps(
        {"conn_type": "http", "host": "hooks.slack.com", "schema": "https", "extra": {"path": "/services/T/B/X"}}))
    w = connection_from_env("hl7ics_webhook")
    assert webhook_url(w) == "https://hooks.slack.com/services/T/B/X"
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_WEBHOOK", "http://rapidpro.sante.tg/?__extra__="
                                                      "%7B%22url%22%3A+%22https%3A%2F%2Frp.tg%2Fc%2Fex%2Fhook%22%7D")
    assert webhook_url(connection_from_env("hl7ics_webhook")) == "https://rp.tg/c/ex/hook"
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_WEBHOOK", "{not json")
    assert connection_from_env("hl7ics_webhook") is None
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_WEBHOOK")
    assert connection_from_env("hl7ics_webhook") is None


def test_connection_from_env_reads_what_airflow_reads(monkeypatch):
    from airflow.sdk import Connection

    for uri in ("smtp://u%40x:p%2Fw@127.0.0.1:2525/?from=a%40b&to=c%40d",
                "http://https%3A%2F%2Fhooks.example.org:8443/alerts",
                "http://127.0.0.1:8080/hooks/alerts?__extra__=%7B%22headers%22%3A+%7B%22X-Token%22%3A+%22t%22%7D%7D"):
        monkeypatch.setenv("AIRFLOW_CONN_PROBE", uri)
        ours, theirs = connection_from_env("probe"), Connection.from_uri(uri, conn_id="probe")
        assert ours == {"conn_type": theirs.conn_type, "host": theirs.host, "port": theirs.port,
                        "login": theirs.login, "password": theirs.password, "schema": theirs.schema or None,
                        "extra": theirs.extra_dejson}


def test_webhook_url_forms():
    from transforms.alerting import ChannelError

    assert webhook_url({"host": "127.0.0.1", "port": 9000, "extra": {"path": "hook"}}) == "http://127.0.0.1:9000/hook"
    assert webhook_url({"host": "127.0.0.1", "port": 9000, "schema": "hooks/alerts"}) == "http://127.0.0.1:9000/hooks/alerts"
    assert webhook_url({"host": "chat.sante.tg", "conn_type": "https", "extra": {}}) == "https://chat.sante.tg"
    for bad in ({"extra": {"url": "file:///etc/passwd"}}, {"extra": {}}):
        with pytest.raises(ChannelError):
            webhook_url(bad)


# --- Airflow -----------------------------------------------------------------------------------



ALERTING_DAGS = {"facility_batch_ingest", "mllp_realtime", "data_quality_report", "interface_monitoring",
                 "sla_monthly_report"}


def test_every_dag_and_task_has_the_alerting_callbacks(dagbag):
    from hl7ics_airflow import alerts

    assert ALERTING_DAGS <= set(dagbag.dag_ids)
    for dag_id in sorted(ALERTING_DAGS):
        dag = dagbag.get_dag(dag_id)
        assert alerts.on_dag_failure in _callbacks(dag.on_failure_callback), dag_id
        assert alerts.on_dag_success in _callbacks(dag.on_success_callback), dag_id
    for dag_id in dagbag.dag_ids:  # task callbacks come with policies.default_args(), which every DAG uses
        for t in dagbag.get_dag(dag_id).tasks:
            assert alerts.on_task_failure in _callbacks(t.on_failure_callback), (dag_id, t.task_id)
            assert alerts.on_task_retry in _callbacks(t.on_retry_callback), (dag_id, t.task_id)
            assert alerts.on_task_success in _callbacks(t.on_success_callback), (dag_id, t.task_id)


def _callbacks(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def test_retry_warns_then_failure_escalates_then_success_resolves(hl7ics_home, channels):
    """The shipped config/alerting.yaml: the webhook hears about retries, the mailbox only about
    failures (min_severity error), and both hear the recovery of a failure."""
    from hl7ics_airflow.alerts import on_task_failure, on_task_retry, on_task_success

    from transforms.errors import SourceError

    on_task_retry(_task_context(SourceError("share CHU-SO unavailable"), try_number=1))
    on_task_retry(_task_context(SourceError("share CHU-SO unavailable"), try_number=2))
    assert len(channels.hooks.received) == 1 and len(channels.mail.messages) == 0
    assert channels.hooks.received[0]["alert"]["kind"] == "task_retry"
    assert channels.hooks.received[0]["alert"]["key"] == "task:facility_batch_ingest.load:CHU-SO"
    assert "tentative 1" in channels.hooks.received[0]["text"]  # shipped language: French
    on_task_failure(_task_context(SourceError("share CHU-SO unavailable"), try_number=3))
    assert [h["alert"]["state"] for h in channels.hooks.received] == ["opened", "escalated"]
    assert [m["X-HL7ICS-Alert-State"] for m in channels.mail.messages] == ["opened"]
    assert channels.mail.messages[0]["Subject"].startswith("[hl7ics] [ERREUR] Échec de la tâche")
    on_task_success(_task_context(None))
    on_task_success(_task_context(None))
    assert [h["alert"]["state"] for h in channels.hooks.received] == ["opened", "escalated", "resolved"]
    assert [m["X-HL7ICS-Alert-State"] for m in channels.mail.messages] == ["opened", "resolved"]


def test_notifier_object(dagbag, hl7ics_home, channels):
    from hl7ics_airflow.notifiers import HL7ICSNotifier

    HL7ICSNotifier()(_task_context(KeyError("Améyo")))
    HL7ICSNotifier(level="dag")({"dag": dagbag.get_dag("mllp_realtime"), "run_id": "r1", "reason": "task_failure"})
    assert sorted(h["alert"]["key"] for h in channels.hooks.received) == [
        "dag:mllp_realtime", "task:facility_batch_ingest.load:CHU-SO"]
    dag_hook = next(h for h in channels.hooks.received if h["alert"]["key"] == "dag:mllp_realtime")
    assert dag_hook["alert"]["params"] == {"reason": "task_failure"}
    HL7ICSNotifier(action="resolve")(_task_context(None))
    assert channels.hooks.received[-1]["alert"]["state"] == "resolved"
    with pytest.raises(ValueError):
        HL7ICSNotifier(action="page")


def _faulty_drop(hl7ics_home: Path, n: int, share: float, seed: int) -> dict[int, str]:
    from transforms import faults, generator

    msgs, planted = faults.inject(generator.generate_mix(n, seed=seed), share, seed=seed)
    inbox = hl7ics_home / "data" / "inbound" / "CHU-SO"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "day.hl7").write_bytes(b"".join(m if m.endswith((b"\r", b"\n")) else m + b"\r" for m in msgs))
    return planted


def test_failed_load_alerts_once_through_airflow_callbacks_then_recovers(dagbag, hl7ics_home, channels, monkeypatch):
    """facility_batch_ingest with a drop file past the data-quality threshold: the CHU-SO ``load``
    task fails; its callback sends one e-mail and one webhook call. A second faulty run sends
    nothing new for that key; a clean run resolves it with one message per channel."""
    from transforms.config import Settings
    from transforms.warehouse import get_engine

    monkeypatch.setenv("HL7ICS_DQ_MAX_FAILURE_RATE", "0.1")
    dag = dagbag.get_dag("facility_batch_ingest")

    _faulty_drop(hl7ics_home, 200, 0.4, seed=22)
    assert str(dag.test().state).endswith("failed")
    mails, hooks = channels.mail.for_key(KEY), channels.hooks.for_key(KEY)
    assert len(mails) == 1 and len(hooks) == 1
    assert hooks[0]["alert"]["state"] == "opened" and hooks[0]["alert"]["facility_code"] == "CHU-SO"
    assert hooks[0]["alert"]["error_class"] == "transforms.errors.DataQualityError"
    assert "DQ_THRESHOLD" in hooks[0]["alert"]["params"]["detail"]
    assert mails[0]["Subject"] == "[hl7ics] [ERREUR] Échec de la tâche facility_batch_ingest.load [CHU-SO]"
    assert len(channels.hooks.for_key("dag:facility_batch_ingest")) == 1
    with get_engine(Settings.load().warehouse_url).connect() as c:
        rows = c.execute(text("SELECT facility_code, error_class FROM ops_alert WHERE alert_key = :k"), {"k": KEY}).all()
    assert rows == [("CHU-SO", "transforms.errors.DataQualityError")]

    _faulty_drop(hl7ics_home, 200, 0.4, seed=23)  # other content: a new file, failing again
    assert str(dag.test().state).endswith("failed")
    assert len(channels.mail.for_key(KEY)) == 1 and len(channels.hooks.for_key(KEY)) == 1
    assert len(channels.hooks.for_key("dag:facility_batch_ingest")) == 1

    monkeypatch.delenv("HL7ICS_DQ_MAX_FAILURE_RATE")
    shutil.copyfile(ROOT / "tests" / "fixtures" / "hl7" / "togo_adt_oru.hl7",
                    hl7ics_home / "data" / "inbound" / "CHU-SO" / "clean.hl7")
    assert str(dag.test().state).endswith("success")
    assert [m["X-HL7ICS-Alert-State"] for m in channels.mail.for_key(KEY)] == ["opened", "resolved"]
    assert [h["alert"]["state"] for h in channels.hooks.for_key(KEY)] == ["opened", "resolved"]
    assert [h["alert"]["state"] for h in channels.hooks.for_key("dag:facility_batch_ingest")] == ["opened", "resolved"]
    # run_outcome (which fails on purpose when a facility failed) is skipped in a good run, so it
    # never runs a success callback: the DAG's success resolves it.
    # The held messages are still held: their own alert stays open until a replay releases them.
    assert sorted((h["alert"]["key"], h["alert"]["state"]) for h in channels.hooks.received) == sorted(
        [(k, s) for k in (KEY, "dag:facility_batch_ingest", "task:facility_batch_ingest.run_outcome:-")
         for s in ("opened", "resolved")] + [("dq_threshold:CHU-SO", "opened")])
    assert len(channels.mail.messages) == len(channels.hooks.received)

    def still_open():
        with get_engine(Settings.load().warehouse_url).connect() as c:
            return (c.execute(text("SELECT alert_key FROM alert_state WHERE state = 'open'")).scalars().all(),
                    c.execute(text("SELECT COUNT(*) FROM ops_alert WHERE resolved_at IS NULL")).scalar())

    assert still_open() == (["dq_threshold:CHU-SO"], 1)
    from transforms.cli import main

    assert main(["replay", "--reason", "DQ_THRESHOLD"]) == 0  # 40% failing passes the default 50%
    assert [h["alert"]["state"] for h in channels.hooks.for_key("dq_threshold:CHU-SO")] == ["opened", "resolved"]
    assert still_open() == ([], 0)
