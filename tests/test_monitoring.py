"""Interface monitoring and the SLA report (issue 6, points 2 and 4) on generated histories, on
SQLite and the real PostgreSQL: silence within one interval of the expected gap and never off
hours, quarantine spikes against the usual rate, ACK p95 above the SLA, backlog age, TLS
certificates close to expiry, disk usage; the listener's heartbeat and latency buckets; uptime,
scheduled and unscheduled downtime and ACK shares as the SLA defines them.
"""
from __future__ import annotations

import dataclasses
import itertools
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from transforms.config import Settings
from transforms.monitoring import MonitoringConfig, evaluate, in_working_hours, refresh_rollup, store
from transforms.sla import FacilitySla, SlaConfig, compute, month_bounds, to_csv, to_html
from transforms.warehouse import Writer, get_engine

_ids = itertools.count(1)


@pytest.fixture
def engine(warehouse_url, hl7ics_home):
    return get_engine(warehouse_url)


@pytest.fixture
def facility():
    base = {f.code: f for f in Settings.load().facilities()}["CHU-SO"]
    # Working day 07:00-18:00 in Lomé (UTC+0); silent for more than 30 minutes is an outage.
    return dataclasses.replace(base, working_hours=(7, 18), expected_interval_minutes=30)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def add_messages(engine, facility: str, times: list[datetime], source="folder", mtype="ADT", status="loaded"):
    """A generated arrival history: one message_store row per arrival (no content needed)."""
    rows = []
    for t in times:
        i = next(_ids)
        rows.append((facility, facility, "APP", f"C{i}", mtype, "A01", "2.5", _ts(t), _ts(t), source, f"t:{i}",
                     f"{i:064x}", b"MSH|", 4, status, _ts(t)))
    with engine.begin() as c:
        Writer(c).copy("message_store", ("facility_code", "sending_facility", "sending_application", "control_id",
                                         "message_type", "trigger_event", "version", "message_datetime", "received_at",
                                         "source", "source_ref", "sha256", "raw", "size_bytes", "status",
                                         "updated_at"), rows)


def working_day_arrivals(day: datetime, every_minutes: int, until_hour: float = 18) -> list[datetime]:
    t = day.replace(hour=7, minute=0, second=0)
    out = []
    while t.hour + t.minute / 60 < until_hour:
        out.append(t)
        t += timedelta(minutes=every_minutes)
    return out


def check(engine, facility, now, cfg=MonitoringConfig()):
    refresh_rollup(engine, [facility.code], now, cfg)
    return evaluate(engine, [facility], now, cfg)


def test_working_hours_use_local_time(facility):
    kara = dataclasses.replace(facility, timezone="Africa/Abidjan", working_hours=(22, 6))  # a night shift
    assert in_working_hours(facility, datetime(2026, 11, 24, 7, 0)) and not in_working_hours(facility, datetime(2026, 11, 24, 18, 0))
    assert in_working_hours(kara, datetime(2026, 11, 24, 23, 0)) and in_working_hours(kara, datetime(2026, 11, 25, 5, 0))
    assert not in_working_hours(kara, datetime(2026, 11, 24, 12, 0))


def test_a_facility_that_stops_is_flagged_within_one_interval_and_not_off_hours(engine, facility):
    day = datetime(2026, 11, 23)
    history = [a for d in range(7) for a in working_day_arrivals(day + timedelta(days=d), 10)]
    last_day = day + timedelta(days=7)
    history += working_day_arrivals(last_day, 10, until_hour=11)  # stops sending at 11:00 on the 8th day
    add_messages(engine, facility.code, history)
    stop = max(history)
    # Each 5-minute check: quiet until the gap exceeds 30 minutes, then flagged at the next check.
    results = {}
    for minutes in range(5, 50, 5):
        now = stop + timedelta(minutes=minutes)
        results[minutes] = {p.key for p in check(engine, facility, now).problems}
    assert all("silence:CHU-SO" not in results[m] for m in (5, 10, 15, 20, 25, 30))
    assert "silence:CHU-SO" in results[35]  # the first check after the expected 30-minute gap
    r = check(engine, facility, stop + timedelta(minutes=35))
    assert {row["status"] for row in r.rows} == {"critical"}
    assert [p.params for p in r.problems if p.kind == "silence"] == [
        {"facility_code": "CHU-SO", "minutes": 35, "expected_minutes": 30}]
    # The evening of a normal day: silent, but outside working hours -> no alert, shown off_hours.
    evening = last_day.replace(hour=19, minute=30) - timedelta(days=1)
    engine2_rows = check(engine, facility, evening)
    assert not engine2_rows.problems
    # the 8th day at 19:30 the facility is still silent since 11:00, but off hours: no alert
    r = check(engine, facility, last_day.replace(hour=19, minute=30))
    assert not [p for p in r.problems if p.kind == "silence"]
    assert {row["status"] for row in r.rows} == {"off_hours"}


def test_duplicates_and_resends_are_no_sign_of_life(engine, facility):
    """A sender stuck resending one message is silent, whether its copies are duplicates (the
    message loaded) or were each quarantined in turn (a resend of a quarantined message is judged
    anew): only other messages count as its last, in the last day and in the hourly rollup."""
    day = datetime(2026, 11, 23, 9, 0)
    add_messages(engine, facility.code, [day])
    add_messages(engine, facility.code, [day + timedelta(minutes=m) for m in range(5, 60, 5)], source="mllp",
                 status="duplicate")
    add_messages(engine, facility.code, [day + timedelta(minutes=m) for m in range(7, 60, 5)], source="mllp",
                 status="quarantined")
    with engine.begin() as c:  # the quarantined ones are resends of one refused message
        c.execute(text("UPDATE message_store SET resend_of = (SELECT MIN(id) FROM message_store) "
                       "WHERE status = 'quarantined'"))
    r = check(engine, facility, day + timedelta(minutes=61))
    assert [p.params["minutes"] for p in r.problems if p.kind == "silence"] == [61]
    assert {row["last_message_at"] for row in r.rows if row["source"] == "mllp"} == {None}
    # Two days on, from the rollup alone: the hour of duplicates is not the last message either.
    later = check(engine, facility, day + timedelta(days=2))
    assert max(row["last_message_at"] or "" for row in later.rows) == "2026-11-23 09:59:00"
    # A resend that loaded (its refused original was fixed on our side) is new data: alive again.
    add_messages(engine, facility.code, [day + timedelta(days=2, minutes=1)], source="mllp")
    with engine.begin() as c:
        c.execute(text("UPDATE message_store SET resend_of = (SELECT MIN(id) FROM message_store) "
                       "WHERE id = (SELECT MAX(id) FROM message_store)"))
    assert not [p for p in check(engine, facility, day + timedelta(days=2, minutes=2)).problems
                if p.kind == "silence"]


def test_resends_for_more_than_a_day_are_no_sign_of_life_in_the_rollup(engine, facility):
    """A sender resending one refused message every hour for more than a day: past the last day,
    read from the rollup, its hours of quarantined resends are not its last message either (the
    rollup counted them as messages)."""
    day = datetime(2026, 11, 23, 9, 0)
    add_messages(engine, facility.code, [day])
    add_messages(engine, facility.code, [day + timedelta(hours=h, minutes=30) for h in range(1, 27)],
                 status="quarantined")
    with engine.begin() as c:
        c.execute(text("UPDATE message_store SET resend_of = (SELECT MIN(id) FROM message_store) "
                       "WHERE status = 'quarantined'"))
    now = day + timedelta(days=2, hours=3)
    r = check(engine, facility, now)
    assert {row["last_message_at"] for row in r.rows} == {"2026-11-23 09:59:00"}
    with engine.connect() as c:
        assert c.execute(text("SELECT SUM(messages), SUM(resends), SUM(duplicates) FROM interface_volume_hourly")
                         ).one() == (27, 26, 0)


def test_the_night_is_not_silence_and_closing_time_does_not_end_one(engine, facility):
    """Gaps count working minutes only: the night adds nothing, so the morning after a normal day
    goes on from the last message's 10 minutes before closing. A silence still open at closing
    time stays open (not resolved) until a message comes."""
    from transforms.alerting import Alerter, AlertingConfig
    from transforms.monitoring import apply_alerts

    day = datetime(2026, 11, 23)
    add_messages(engine, facility.code, working_day_arrivals(day, 10))  # last message 17:50
    alerter = Alerter(engine, AlertingConfig())
    for hour, minute, silent in ((7, 0, False), (7, 15, False), (7, 25, True)):
        now = (day + timedelta(days=1)).replace(hour=hour, minute=minute)
        r = check(engine, facility, now)
        got = [p.params for p in r.problems if p.kind == "silence"]
        assert got == ([{"facility_code": "CHU-SO", "minutes": 35, "expected_minutes": 30}] if silent else []), now
        apply_alerts(alerter, r.problems, now, r.keep_open)
    assert alerter.open_keys("silence:") == ["silence:CHU-SO"]
    closing = (day + timedelta(days=1)).replace(hour=18, minute=5)
    r = check(engine, facility, closing)
    assert "silence:CHU-SO" in r.keep_open
    assert apply_alerts(alerter, r.problems, closing, r.keep_open)["resolved"] == []
    assert alerter.open_keys("silence:") == ["silence:CHU-SO"]
    # The next morning, nothing has come yet: the silence is not over because the day began.
    morning = (day + timedelta(days=2)).replace(hour=7, minute=5)
    r = check(engine, facility, morning)
    assert apply_alerts(alerter, r.problems, morning, r.keep_open)["resolved"] == []
    # Its first message resolves it.
    add_messages(engine, facility.code, [morning])
    r = check(engine, facility, morning + timedelta(minutes=5))
    assert apply_alerts(alerter, r.problems, morning, r.keep_open)["resolved"] == ["silence:CHU-SO"]


def test_a_facility_expected_less_often_than_its_working_day_can_still_be_silent(engine, facility):
    """USP-NANERGOU: open 8-16 and expected every 720 minutes. Counted from each opening, its
    gap could never pass 480 minutes, so a facility that stopped for good was never reported."""
    from transforms.monitoring import working_minutes

    usp = dataclasses.replace(facility, working_hours=(8, 16), expected_interval_minutes=720)
    last = datetime(2026, 11, 23, 15, 0)
    add_messages(engine, usp.code, [last])
    assert working_minutes(usp, last, datetime(2026, 11, 24, 9, 0)) == 120  # 15-16, then 8-9
    assert working_minutes(usp, last, datetime(2026, 11, 24, 2, 0)) == 60  # the night adds nothing
    night = dataclasses.replace(facility, working_hours=(22, 6))
    assert working_minutes(night, datetime(2026, 11, 23, 5, 0), datetime(2026, 11, 23, 23, 0)) == 120
    found = {}
    for day in range(1, 4):
        now = datetime(2026, 11, 23 + day, 15, 30)
        found[day] = [p.params for p in check(engine, usp, now).problems if p.kind == "silence"]
    # After a day the last message is known by its hour from the rollup (taken as 15:59).
    assert found[1] == []  # 1 + 450 working minutes
    assert found[2] == [{"facility_code": usp.code, "minutes": 1 + 480 + 450, "expected_minutes": 720}]
    assert found[3][0]["minutes"] == 1 + 2 * 480 + 450


def test_usual_volume_and_quarantine_spike(engine, facility):
    now = datetime(2026, 11, 30, 10, 30)
    # Four weeks of history: 30 messages an hour on working hours, 1 in 30 quarantined.
    hist = []
    for d in range(1, 29):
        for a in working_day_arrivals(now.replace(hour=0, minute=0) - timedelta(days=d), 2):
            hist.append(a)
    add_messages(engine, facility.code, hist[::30], status="quarantined")
    add_messages(engine, facility.code, [h for i, h in enumerate(hist) if i % 30])
    # The last hour: 30 messages, 12 quarantined (40% against ~3%).
    recent = [now - timedelta(minutes=2 * i + 1) for i in range(30)]
    add_messages(engine, facility.code, recent[:12], status="quarantined")
    add_messages(engine, facility.code, recent[12:])
    r = check(engine, facility, now)
    row = next(x for x in r.rows if x["source"] == "folder")
    assert row["expected_1h"] == pytest.approx(30, abs=1)
    assert row["messages_1h"] == 30 and row["status"] == "warning" and row["problems"] == "quarantine_spike"
    spike = [p for p in r.problems if p.kind == "quarantine_spike"]
    assert len(spike) == 1 and spike[0].params["rate_pct"] == 40.0 and spike[0].params["baseline_pct"] < 5


def test_no_spike_at_the_usual_rate(engine, facility):
    now = datetime(2026, 11, 30, 10, 30)
    hist = [a for d in range(1, 10) for a in working_day_arrivals(now.replace(hour=0, minute=0) - timedelta(days=d), 2)]
    add_messages(engine, facility.code, hist[::3], status="quarantined")
    add_messages(engine, facility.code, [h for i, h in enumerate(hist) if i % 3])
    recent = [now - timedelta(minutes=2 * i + 1) for i in range(30)]
    add_messages(engine, facility.code, recent[:10], status="quarantined")  # 33%, the usual share here
    add_messages(engine, facility.code, recent[10:])
    assert not [p for p in check(engine, facility, now).problems if p.kind == "quarantine_spike"]


def _latency(engine, now, facility, mtype, buckets: dict[int, int]):
    with engine.begin() as c:
        Writer(c).copy("ack_latency", ("minute", "facility_code", "message_type", "bucket_ms", "n"),
                       [(_ts(now - timedelta(minutes=10)), facility, mtype, b, n) for b, n in buckets.items()])


def test_ack_p95_above_the_sla(engine, facility):
    now = datetime(2026, 11, 30, 10, 30)
    add_messages(engine, facility.code, [now - timedelta(minutes=i) for i in range(1, 40)], source="mllp")
    add_messages(engine, facility.code, [now - timedelta(minutes=i) for i in range(1, 40)], source="mllp", mtype="ORU")
    _latency(engine, now, facility.code, "ADT", {10: 80, 1000: 10, 5000: 10})     # p95 = 5 s > 2 s (critical)
    _latency(engine, now, facility.code, "ORU", {10: 80, 1000: 15, 2000: 5})      # p95 = 1 s < 5 s
    r = check(engine, facility, now)
    adt = next(x for x in r.rows if x["message_type"] == "ADT")
    oru = next(x for x in r.rows if x["message_type"] == "ORU")
    assert (adt["ack_p50_ms"], adt["ack_p95_ms"]) == (10.0, 5000.0) and oru["ack_p95_ms"] == 1000.0
    assert [p.key for p in r.problems] == ["ack_latency:CHU-SO:ADT"]
    assert adt["status"] == "warning" and oru["status"] == "ok"


def test_too_few_acks_to_judge_leave_a_latency_alert_as_it_is(engine, facility):
    """Below min_messages the check cannot tell: it used to count as passing, so an interface
    near the threshold with slow ACKs all day opened and resolved its alert again and again."""
    from transforms.alerting import Alerter, AlertingConfig
    from transforms.monitoring import apply_alerts

    alerter = Alerter(engine, AlertingConfig())
    now = datetime(2026, 11, 30, 10, 30)
    add_messages(engine, facility.code, [now - timedelta(minutes=i) for i in range(1, 40)], source="mllp")
    _latency(engine, now, facility.code, "ADT", {5000: 30})  # every ACK slow
    r = check(engine, facility, now)
    apply_alerts(alerter, r.problems, now, r.keep_open)
    assert alerter.open_keys("ack_latency:") == ["ack_latency:CHU-SO:ADT"]
    later = now + timedelta(hours=2)
    add_messages(engine, facility.code, [later - timedelta(minutes=i) for i in range(1, 6)], source="mllp")
    _latency(engine, later, facility.code, "ADT", {5000: 5})  # still slow, too few to judge
    r = check(engine, facility, later)
    assert "ack_latency:CHU-SO:ADT" in r.keep_open
    assert apply_alerts(alerter, r.problems, later, r.keep_open)["resolved"] == []
    fast = later + timedelta(hours=2)
    add_messages(engine, facility.code, [fast - timedelta(minutes=i) for i in range(1, 40)], source="mllp")
    _latency(engine, fast, facility.code, "ADT", {10: 40})  # enough, and fast: over
    r = check(engine, facility, fast)
    assert apply_alerts(alerter, r.problems, fast, r.keep_open)["resolved"] == ["ack_latency:CHU-SO:ADT"]


def test_backlog_age(engine, facility):
    now = datetime(2026, 11, 30, 10, 30)
    add_messages(engine, facility.code, [now - timedelta(minutes=m) for m in (1, 2)], source="mllp")
    add_messages(engine, facility.code, [now - timedelta(minutes=m) for m in (3, 20)], source="mllp", status="received")
    r = check(engine, facility, now)
    assert [(p.key, p.params["count"], p.params["oldest_minutes"]) for p in r.problems] == [("backlog:received", 2, 20)]
    assert {x["backlog"] for x in r.rows} == {2}
    r = check(engine, facility, now, MonitoringConfig(backlog_max_minutes=30))
    assert not r.problems


def test_tls_certificate_expiry_and_disk(tmp_path, engine, facility):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(path: Path, days: int) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hl7.sante.tg")])
        now = datetime.utcnow()
        c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
             .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
             .sign(key, hashes.SHA256()))
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return str(path)

    soon, later = cert(tmp_path / "soon.pem", 10), cert(tmp_path / "later.pem", 200)
    cfg = MonitoringConfig(tls_certificates=(soon, later, str(tmp_path / "missing.pem")), disk_paths=(str(tmp_path),),
                           disk_max_percent=0.0)
    now = datetime.utcnow().replace(microsecond=0)
    add_messages(engine, facility.code, [now - timedelta(minutes=1)])
    probs = {p.key: p for p in check(engine, facility, now, cfg).problems}
    # Keyed and named by the whole path: another soon.pem elsewhere is another alert.
    assert probs[f"tls:{soon}"].params["days_left"] in (9, 10) and probs[f"tls:{soon}"].params["subject"] == "hl7.sante.tg"
    assert probs[f"tls:{soon}"].params["file"] == soon
    assert f"tls:{later}" not in probs
    assert probs[f"tls:{tmp_path / 'missing.pem'}"].severity == "error"
    assert probs[f"disk:{tmp_path}"].params["threshold"] == 0.0
    assert not [k for k in check(engine, facility, now, MonitoringConfig(disk_paths=(str(tmp_path),))).problems]


def test_health_rows_are_stored_idempotently(engine, facility):
    now = datetime(2026, 11, 30, 10, 30)
    add_messages(engine, facility.code, [now - timedelta(minutes=m) for m in range(1, 20)])
    cfg = MonitoringConfig()
    for _ in range(2):
        r = check(engine, facility, now, cfg)
        store(engine, r, cfg, now)
    with engine.connect() as c:
        rows = c.execute(text("SELECT facility_code, source, message_type, status, messages_1h FROM interface_health")).all()
        hourly = c.execute(text("SELECT SUM(messages) FROM interface_volume_hourly")).scalar()
    assert [tuple(x) for x in rows] == [("CHU-SO", "folder", "ADT", "ok", 19)]
    assert hourly == 19


def test_rollup_fills_a_pause_and_recounts_a_replayed_hour(engine, facility):
    """The hourly rollup recounts every hour since its last refresh (the DAG was paused for 7
    hours) and the hours of messages whose status changed since (a replay of old messages)."""
    day = datetime(2026, 11, 30)
    cfg = MonitoringConfig()
    add_messages(engine, facility.code, [day.replace(hour=7, minute=50)], status="quarantined")
    refresh_rollup(engine, [facility.code], day.replace(hour=8, minute=5), cfg)
    add_messages(engine, facility.code, [day.replace(hour=h, minute=10) for h in range(8, 15)])
    later = day.replace(hour=15, minute=5)
    with engine.begin() as c:  # the 07:50 message is replayed and loads
        c.execute(text("UPDATE message_store SET status = 'loaded', updated_at = :t WHERE received_at < :h"),
                  {"t": _ts(later - timedelta(minutes=1)), "h": _ts(day.replace(hour=8))})
    refresh_rollup(engine, [facility.code], later, cfg)
    with engine.connect() as c:
        got = [(str(h)[11:13], n, q) for h, n, q in c.execute(text(
            "SELECT hour, SUM(messages), SUM(quarantined) FROM interface_volume_hourly GROUP BY hour ORDER BY hour"))]
    assert got == [(f"{h:02d}", 1, 0) for h in range(7, 15)]


def test_two_rollup_refreshes_at_once_on_postgresql(pg_url, hl7ics_home, facility, monkeypatch):
    """The DAG and `hl7ics monitor check` refreshing at the same time: the second waits for the
    first instead of failing on the primary key (read committed hid the first one's rows)."""
    import threading

    from transforms import monitoring

    engine = get_engine(pg_url)
    now = datetime(2026, 11, 30, 10, 30)
    add_messages(engine, facility.code, [now - timedelta(minutes=m) for m in range(1, 20)])
    refresh_rollup(engine, [facility.code], now, MonitoringConfig())
    real_copy, in_copy = monitoring.Writer.copy, threading.Event()

    def slow_copy(self, *a, **kw):
        if threading.current_thread().name == "first":
            in_copy.set()
            threading.Event().wait(1.0)  # the other refresh runs meanwhile
        return real_copy(self, *a, **kw)

    monkeypatch.setattr(monitoring.Writer, "copy", slow_copy)
    errors = []

    def refresh():
        try:
            refresh_rollup(engine, [facility.code], now + timedelta(minutes=5), MonitoringConfig())
        except Exception as exc:
            errors.append(type(exc).__name__)

    first = threading.Thread(target=refresh, name="first")
    first.start()
    assert in_copy.wait(10)
    refresh()
    first.join()
    assert errors == []
    with engine.connect() as c:
        assert c.execute(text("SELECT SUM(messages) FROM interface_volume_hourly")).scalar() == 19


def test_monitoring_config_is_checked(tmp_path):
    from transforms.config import ConfigError

    p = tmp_path / "monitoring.yaml"
    p.write_text("monitoring:\n  spike_factor: -1\n")
    with pytest.raises(ConfigError, match="spike_factor"):
        MonitoringConfig.load(p)
    p.write_text("monitoring:\n  silence: 5\n")
    with pytest.raises(ConfigError, match="unknown key"):
        MonitoringConfig.load(p)
    assert MonitoringConfig.load(Path(__file__).parent.parent / "config" / "monitoring.yaml") == MonitoringConfig()


# -- SLA -----------------------------------------------------------------------------------------

def _beats(engine, spans: list[tuple[datetime, datetime, bool]], step=timedelta(seconds=15)):
    """Heartbeat rows as a listener leaves them: one per run, last beat (and stop if clean)."""
    with engine.begin() as c:
        for i, (start, end, clean) in enumerate(spans):
            c.execute(text("INSERT INTO listener_heartbeat (instance, started_at, beat_at, stopped_at) "
                           "VALUES (:i, :s, :b, :x)"),
                      {"i": f"host:{i}", "s": _ts(start), "b": _ts(end), "x": _ts(end) if clean else None})


def test_sla_uptime_downtime_and_ack_shares(engine):
    start, end = month_bounds("2026-10")
    outage = (datetime(2026, 10, 10, 8, 0), datetime(2026, 10, 10, 9, 0))     # crash: 60 minutes down
    maint = (datetime(2026, 10, 20, 2, 0), datetime(2026, 10, 20, 2, 30))     # declared maintenance
    _beats(engine, [(start - timedelta(days=3), outage[0], False),            # crashed (no stop)
                    (outage[1], maint[0], True), (maint[1], end + timedelta(days=1), False)])
    cfg = SlaConfig(heartbeat_tolerance_seconds=0,
                    maintenance=((datetime(2026, 10, 20, 1, 0), datetime(2026, 10, 20, 4, 0), "upgrade"),))
    with engine.begin() as c:
        Writer(c).copy("ack_latency", ("minute", "facility_code", "message_type", "bucket_ms", "n"), [
            ("2026-10-05 10:00:00", "CHU-SO", "ADT", 50, 990), ("2026-10-05 10:00:00", "CHU-SO", "ADT", 2000, 8),
            ("2026-10-05 10:01:00", "CHU-SO", "ADT", 5000, 2), ("2026-10-05 10:00:00", "INH-LOME", "ORU", 5000, 50),
            ("2026-10-05 10:00:00", "INH-LOME", "ORU", -1, 50), ("2026-11-01 00:00:00", "CHU-SO", "ADT", -1, 999)])
    r = compute(engine, "2026-10", cfg, now=datetime(2026, 12, 1))
    month_minutes = (end - start).total_seconds() / 60
    assert r.unscheduled_downtime_minutes == pytest.approx(60) and r.scheduled_downtime_minutes == pytest.approx(30)
    assert r.uptime == pytest.approx(1 - 60 / (month_minutes - 30))
    assert r.outages == [outage]
    chu, inh = r.facilities
    assert (chu.critical_messages, chu.critical_within) == (1000, 998)  # 2 s is within, 5 s is not
    assert (inh.standard_messages, inh.standard_within) == (100, 50)     # 5 s within, slower not
    csv_text = to_csv(r)
    assert "CHU-SO,1000,998,99.80%" in csv_text and "99.86" in csv_text
    page = to_html(r, {"CHU-SO": "CHU Sylvanus Olympio"})
    assert 'id="uptime">99.86' in page and "2026-10-10 08:00:00 → 2026-10-10 09:00:00" in page
    assert "CHU Sylvanus Olympio (CHU-SO)" in page


def test_sla_overlapping_and_adjacent_maintenance_windows(engine):
    """Two windows covering the same outage count it once; two adjacent ones cover it whole."""
    start, end = month_bounds("2026-10")
    down = (datetime(2026, 10, 20, 2, 0), datetime(2026, 10, 20, 4, 0))
    _beats(engine, [(start - timedelta(days=1), down[0], True), (down[1], end + timedelta(days=1), False)])
    at = lambda h, m=0: datetime(2026, 10, 20, h, m)  # noqa: E731
    for windows in (((at(1), at(5), "a"), (at(1, 30), at(5), "b")), ((at(2), at(3), "a"), (at(3), at(4), "b"))):
        r = compute(engine, "2026-10", SlaConfig(heartbeat_tolerance_seconds=0, maintenance=windows),
                    now=datetime(2026, 12, 1))
        assert (r.scheduled_downtime_minutes, r.unscheduled_downtime_minutes) == (120, 0)
        assert r.uptime == 1.0 and r.outages == []


def test_sla_outage_list_shows_unscheduled_minutes_and_colours_the_figure_shown(engine):
    """An outage that ran into a maintenance window is listed for its unscheduled part; a share
    printed as the target (99.90%) is not red."""
    start, end = month_bounds("2026-10")
    at = lambda h, m=0: datetime(2026, 10, 20, h, m)  # noqa: E731
    _beats(engine, [(start - timedelta(days=1), at(1, 30), True), (at(3), end + timedelta(days=1), False)])
    r = compute(engine, "2026-10", SlaConfig(heartbeat_tolerance_seconds=0, maintenance=((at(2), at(4), "m"),)),
                now=datetime(2026, 12, 1))
    assert r.outages == [(at(1, 30), at(2))] and r.unscheduled_downtime_minutes == 30
    assert "(30.0 min)" in to_html(r)
    r.uptime = 0.9989996
    r.facilities = [dataclasses.replace(FacilitySla("CHU-SO"), critical_messages=100000, critical_within=99899)]
    page = to_html(r)
    assert "class='bad'" not in page and 'class="big ok" id="uptime">99.900' in page


def test_sla_before_the_listener_ever_ran_has_no_uptime(engine):
    r = compute(engine, "2026-10", SlaConfig(), now=datetime(2026, 12, 1))
    assert r.uptime is None and r.unscheduled_downtime_minutes == 0
    # started mid-month: downtime is counted from the first heartbeat only
    _beats(engine, [(datetime(2026, 10, 15), datetime(2026, 11, 5), False)])
    r = compute(engine, "2026-10", SlaConfig(heartbeat_tolerance_seconds=0), now=datetime(2026, 12, 1))
    assert r.uptime == 1.0 and r.measured_from == datetime(2026, 10, 15)


def test_sla_config_and_cli(tmp_path, engine, hl7ics_home, monkeypatch, capsys, warehouse_url):
    from transforms.cli import main
    from transforms.config import ConfigError

    p = tmp_path / "sla.yaml"
    p.write_text("sla:\n  maintenance:\n    - {start: '2026-10-20 04:00', end: '2026-10-20 02:00'}\n")
    with pytest.raises(ConfigError, match="ends before it starts"):
        SlaConfig.load(p)
    _beats(engine, [(datetime(2026, 9, 1), datetime(2026, 11, 2), False)])
    assert main(["sla", "report", "--month", "2026-10", "--out", str(tmp_path / "out"), "--warehouse", warehouse_url]) == 0
    out = capsys.readouterr().out
    assert "SLA 2026-10: listener uptime 100.000%" in out
    assert (tmp_path / "out" / "sla-2026-10.csv").exists() and (tmp_path / "out" / "sla-2026-10.html").exists()
    assert main(["sla", "report", "--month", "2026-13", "--warehouse", warehouse_url]) == 2


def test_listener_writes_heartbeat_and_latency_buckets(tmp_path, warehouse_url):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from listener_support import ListenerProcess, exchange, msa

    lp = ListenerProcess(tmp_path, warehouse_url, heartbeat_seconds=0.2).start()
    try:
        msgs = [f"MSH|^~\\&|SIH|CHU-SO|HL7ICS|MOH|20261102080000||ADT^A04|HB-{i}|P|2.5\rEVN|A04|20261102080000\r"
                f"PID|1||P{i}^^^CHU-SO^MR||Ɖogbé^Afi||19900101|F\rPV1|1|O|CONS||||||||||||||||V{i}\r".encode()
                for i in range(25)]
        assert all(msa(exchange(lp.port, m))[0] == "AA" for m in msgs)
    finally:
        assert lp.terminate() == 0
    eng = get_engine(warehouse_url)
    with eng.connect() as c:
        beats = c.execute(text("SELECT started_at, beat_at, stopped_at FROM listener_heartbeat")).all()
        lat = c.execute(text("SELECT facility_code, message_type, SUM(n) FROM ack_latency GROUP BY 1, 2")).all()
    assert len(beats) == 1 and beats[0][2] is not None  # a clean stop is recorded
    assert [tuple(x) for x in lat] == [("CHU-SO", "ADT", 25)]
