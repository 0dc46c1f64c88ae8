"""Data-quality report: dq_daily rebuilt from dq_result, the terminal summary, the HTML report and
the data_quality_report DAG end to end, on SQLite and the real PostgreSQL.

The HTML is checked through a parser (elements and decoded attributes), not by string matching
alone, so an escaping mistake shows up as a wrong element, not as a test that happens to pass.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from browser_support import Elements
from pathlib import Path

import pytest
from sqlalchemy import text

from transforms import dq_report
from transforms.warehouse import get_engine

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "<script>alert('x')</script>"
NOT_NULL = "expect_column_values_to_not_be_null"
IN_SET = "expect_column_values_to_be_in_set"


def seed(engine, rows) -> None:
    """rows: (run_id, facility, table, expectation, severity, evaluated, failed, created_at)."""
    with engine.begin() as c:
        c.execute(text(
            "INSERT INTO dq_result (run_id, facility_code, table_name, expectation, severity, evaluated, failed, "
            "created_at, updated_at) VALUES (:r, :f, :t, :x, :s, :e, :fa, :at, :at)"),
            [{"r": r, "f": f, "t": t, "x": x, "s": s, "e": e, "fa": fa, "at": at} for r, f, t, x, s, e, fa, at in rows])


def daily(engine) -> list[tuple]:
    """dq_daily without updated_at, days as ISO text whatever the driver returns."""
    with engine.connect() as c:
        rows = c.execute(text("SELECT day, facility_code, table_name, expectation, severity, evaluated, failed, "
                              "failure_rate FROM dq_daily ORDER BY day, facility_code, table_name, expectation")).all()
    return [(str(r[0])[:10], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), round(float(r[7]), 6)) for r in rows]


# --------------------------------------------------------------------------------------------------
# dq_daily


def test_rebuild_daily_sums_per_utc_day_and_is_idempotent(warehouse_url):
    eng = get_engine(warehouse_url)
    seed(eng, [
        ("r1", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 100, 5, "2026-03-01 00:00:00"),
        ("r2", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 300, 15, "2026-03-01 23:59:59"),
        ("r3", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 200, 0, "2026-03-02 00:00:00"),
        ("r1", "CHU-SO", "fact_encounter", IN_SET, "warning", 0, 0, "2026-03-01 08:00:00"),
        ("r4", "CHU-KARA", "fact_encounter", IN_SET, "warning", 50, 10, "2026-03-02 12:00:00"),
        ("r5", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 10, 10, "2026-03-05 09:00:00"),  # outside
        ("r0", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 10, 10, "2026-02-28 23:59:59"),  # outside
    ])
    with eng.begin() as c:  # a stale row inside the range must go, one outside must stay
        c.execute(text("INSERT INTO dq_daily VALUES (:d, 'OLD', 't', 'x', 'error', 1, 1, 1.0, :u)"),
                  [{"d": "2026-03-03", "u": "2026-03-03 00:00:00"}, {"d": "2026-02-20", "u": "2026-02-20 00:00:00"}])

    assert dq_report.rebuild_daily(eng, date(2026, 3, 1), date(2026, 3, 3)) == 4
    expected = [
        ("2026-02-20", "OLD", "t", "x", "error", 1, 1, 1.0),
        ("2026-03-01", "CHU-SO", "fact_encounter", IN_SET, "warning", 0, 0, 0.0),  # nothing evaluated: 0
        ("2026-03-01", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 400, 20, 0.05),
        ("2026-03-02", "CHU-KARA", "fact_encounter", IN_SET, "warning", 50, 10, 0.2),
        ("2026-03-02", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 200, 0, 0.0),
    ]
    assert daily(eng) == expected
    assert dq_report.rebuild_daily(eng, date(2026, 3, 1), date(2026, 3, 3)) == 4
    assert daily(eng) == expected, "a re-run gives the same rows"

    # a late batch of an earlier day is picked up by rebuilding that day again
    seed(eng, [("r6", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 100, 30, "2026-03-01 12:00:00")])
    dq_report.rebuild_daily(eng, date(2026, 3, 1), date(2026, 3, 1))
    assert ("2026-03-01", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 500, 50, 0.1) in daily(eng)
    assert len(daily(eng)) == 5

    with pytest.raises(ValueError):
        dq_report.rebuild_daily(eng, date(2026, 3, 2), date(2026, 3, 1))


def test_rebuild_daily_severity_change_within_a_day_keeps_one_row(warehouse_url):
    """severity is not in dq_daily's key: a day where an expectation was both takes 'error'."""
    eng = get_engine(warehouse_url)
    seed(eng, [("r1", "CHU-SO", "fact_charge", IN_SET, "warning", 10, 1, "2026-04-01 01:00:00"),
               ("r2", "CHU-SO", "fact_charge", IN_SET, "error", 30, 3, "2026-04-01 02:00:00")])
    assert dq_report.rebuild_daily(eng, date(2026, 4, 1), date(2026, 4, 1)) == 1
    assert daily(eng) == [("2026-04-01", "CHU-SO", "fact_charge", IN_SET, "error", 40, 4, 0.1)]


# --------------------------------------------------------------------------------------------------
# terminal summary


def test_summary_orders_filters_and_formats(warehouse_url, capsys):
    eng = get_engine(warehouse_url)
    seed(eng, [
        ("r1", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 100, 5, "2026-03-01 10:00:00"),
        ("r2", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 100, 7, "2026-03-03 10:00:00"),
        ("r1", "CHU-SO", "fact_encounter", IN_SET, "warning", 50, 40, "2026-03-01 10:00:00"),
        ("r3", "CHU-KARA", "fact_encounter", IN_SET, "warning", 0, 0, "2026-03-02 10:00:00"),
    ])
    rows = dq_report.summary(eng)
    assert [(r["facility_code"], r["expectation"], r["failed"]) for r in rows] == [
        ("CHU-KARA", IN_SET, 0), ("CHU-SO", IN_SET, 40), ("CHU-SO", NOT_NULL, 12)]
    assert rows[2] == {"facility_code": "CHU-SO", "table_name": "fact_lab_result", "expectation": NOT_NULL,
                       "severity": "error", "evaluated": 200, "failed": 12, "failure_rate": 0.06}
    assert rows[0]["failure_rate"] == 0.0
    assert [r["facility_code"] for r in dq_report.summary(eng, facility="CHU-KARA")] == ["CHU-KARA"]
    since = dq_report.summary(eng, facility="CHU-SO", since=date(2026, 3, 2))
    assert [(r["expectation"], r["evaluated"], r["failed"]) for r in since] == [(NOT_NULL, 100, 7)]
    assert dq_report.summary(eng, since="2026-03-02") == dq_report.summary(eng, since=date(2026, 3, 2))
    assert dq_report.summary(eng, facility="NOPE") == []
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        dq_report.summary(eng, since="03/02/2026")

    assert dq_report.cli_report(eng, "CHU-SO", date(2026, 3, 1)) == 0
    out = capsys.readouterr().out
    assert "CHU-SO" in out and NOT_NULL in out and "CHU-KARA" not in out and "6.00%" in out


def test_format_summary_aligns_columns_and_handles_empty_and_french():
    rows = [
        {"facility_code": "CHU-SO", "table_name": "fact_lab_result", "expectation": NOT_NULL, "severity": "error",
         "evaluated": 123456, "failed": 7, "failure_rate": 7 / 123456},
        {"facility_code": "LNR", "table_name": "t", "expectation": "x\x1b[2J\ny", "severity": "warning",
         "evaluated": 4, "failed": 3, "failure_rate": 0.75},
    ]
    out = dq_report.format_summary(rows)
    lines = out.splitlines()
    assert len(lines) == 4, "control characters in a name must not add lines"
    assert "\x1b" not in out and "x?[2J?y" in out
    assert lines[0].split()[:2] == ["facility", "table"]
    # every column starts at the same place on every line, numbers end at the same place
    starts = [m.start() for m in re.finditer(r"(?<=  )\S", lines[0])]
    for line in lines[1:]:
        assert all(line[s - 1] == " " for s in starts), line
    ends = {len(line) for line in lines}
    assert len(ends) == 1, "right-aligned rate column ends every line at the same width"
    assert lines[2].endswith("0.01%") and lines[3].endswith("75.00%")

    fr = dq_report.format_summary(rows, lang="fr")
    assert "formation" in fr and "erreur" in fr and "75,00 %" in fr
    assert dq_report.format_summary([]) == "no data quality results"
    assert dq_report.format_summary([], lang="fr") == "aucun résultat de qualité des données"
    with pytest.raises(ValueError):
        dq_report.format_summary(rows, lang="de")


# --------------------------------------------------------------------------------------------------
# HTML


def test_facility_page_names_are_safe_and_distinct():
    assert dq_report.facility_page_name("CHU-SO") == "CHU-SO.html"
    names = {dq_report.facility_page_name(c) for c in ("A/B", "A_B", "A B", "../x", "index", "", HOSTILE)}
    assert len(names) == 7
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+\.html", n) for n in names)
    assert "index.html" not in names


def seed_month(eng) -> None:
    """Five days with data in a ten-day window (a gap on the 4th), rising error rates, a hostile
    facility code and expectation name."""
    rows = []
    for i, d in enumerate([1, 2, 3, 5, 6]):
        at = f"2026-03-{d:02d} 10:00:00"
        rows += [(f"r{d}", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 1000, 10 * (i + 1), at),
                 (f"r{d}", "CHU-SO", "fact_encounter", HOSTILE, "warning", 400, 4 * (i + 1), at),
                 (f"r{d}", "CHU-SO", "fact_charge", IN_SET, "error", 100, 1, at)]
    rows.append(("r9", "<b>EVIL</b>", "fact_lab_result", NOT_NULL, "error", 10, 1, "2026-03-06 11:00:00"))
    seed(eng, rows)
    dq_report.rebuild_daily(eng, date(2026, 3, 1), date(2026, 3, 10))


def test_render_html_charts_numbers_and_escaping(warehouse_url, tmp_path):
    eng = get_engine(warehouse_url)
    seed_month(eng)
    names = {"CHU-SO": "CHU Sylvanus Olympio", "<b>EVIL</b>": HOSTILE + " & Co", "CHR-SOK": "CHR de Sokodé"}
    paths = dq_report.render_html(eng, tmp_path / "out", date(2026, 3, 10), days=10, facilities=names)

    assert paths[0].name == "index.html"
    evil = dq_report.facility_page_name("<b>EVIL</b>")
    assert {p.name for p in paths} == {"index.html", "CHU-SO.html", evil}, "no page for a facility without data"
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+\.html", p.name) for p in paths)

    for p in paths:
        page = p.read_text(encoding="utf-8")
        assert "<script" not in page.lower() and "<b>" not in page, f"{p.name}: unescaped text"
        assert "Qualité des données / Data quality" in page
        assert "Content-Security-Policy" in page
        # self-contained: nothing is fetched (the only URL is the SVG namespace)
        assert not re.search(r"\b(src|href)\s*=\s*\"(https?:|//)", page)
        assert "<link" not in page and "@import" not in page and "url(" not in page

    so = Elements((tmp_path / "out" / "CHU-SO.html").read_text(encoding="utf-8"))
    assert "CHU Sylvanus Olympio (CHU-SO)" in "".join(so.text)
    [rate] = so.find("svg", "chart-rate")
    assert rate["data-points"] == "5", "one point per day with data"
    [err_line] = so.find("polyline", "series-error")
    assert len(err_line["points"].split()) == 5
    assert len(so.find("polyline", "series-warning")[0]["points"].split()) == 5
    err_points = so.find("circle", "point-error")
    assert [p["data-day"] for p in err_points] == ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-05",
                                                   "2026-03-06"]
    # errors per day: (10k + 1) / 1100 with k = 1..5: rising, and drawn higher (smaller y) each day
    rates = [float(p["data-rate"]) for p in err_points]
    assert rates == pytest.approx([(10 * k + 1) / 1100 for k in range(1, 6)], abs=1e-6)
    ys = [float(p["cy"]) for p in err_points]
    assert ys == sorted(ys, reverse=True) and ys[0] > ys[-1]
    xs = [float(p["cx"]) for p in err_points]
    assert xs[3] - xs[2] == pytest.approx(2 * (xs[2] - xs[1]), abs=0.2), "the missing day leaves a gap"
    assert err_line["stroke"] == dq_report.COLORS["error"]

    [bars_svg] = so.find("svg", "chart-bars")
    bars = so.find("rect", "bar")
    assert bars_svg["data-bars"] == "3" and len(bars) == 3
    assert [(b["data-expectation"], int(b["data-failed"])) for b in bars] == [
        (NOT_NULL, 150), (HOSTILE, 60), (IN_SET, 5)], "the hostile name round-trips through escaping"
    widths = [float(b["width"]) for b in bars]
    assert widths == sorted(widths, reverse=True) and widths[-1] > 0
    assert all(b["fill"] == dq_report.COLORS["bar"] for b in bars)
    table = [a["data-expectation"] for a in so.find("tr") if "data-expectation" in a]
    assert table == [NOT_NULL, HOSTILE, IN_SET]

    index_html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    index = Elements(index_html)
    links = {a["href"] for a in index.find("a")}
    assert {"CHU-SO.html", evil} <= links
    facilities = [a["data-facility"] for a in index.find("tr") if "data-facility" in a]
    assert facilities == ["<b>EVIL</b>", "CHU-SO", "CHR-SOK"], "worst error rate first, no-data last"
    assert HOSTILE + " & Co" in "".join(index.text)
    assert "no data / aucune donnée" in "".join(index.text)
    assert len(index.find("svg", "chart-spark")) == 2
    assert index.find("svg", "chart-rate")[0]["data-points"] == "5"

    evil_page = Elements((tmp_path / "out" / evil).read_text(encoding="utf-8"))
    assert evil_page.find("svg", "chart-rate")[0]["data-points"] == "1"
    assert len(evil_page.find("circle", "point-error")) == 1  # a single day still shows as a point

    # re-rendering rewrites the same files and leaves no temporary files behind
    again = dq_report.render_html(eng, tmp_path / "out", date(2026, 3, 10), days=10, facilities=names)
    assert again == paths
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)

    # only expectations with failures get a bar; a facility without failures says so
    seed(eng, [("r9", "CLEAN", "fact_lab_result", NOT_NULL, "error", 10, 0, "2026-03-06 11:00:00"),
               ("r9", "CHU-SO", "fact_lab_result", "never_fails", "error", 10, 0, "2026-03-06 11:00:00")])
    dq_report.rebuild_daily(eng, date(2026, 3, 6), date(2026, 3, 6))
    dq_report.render_html(eng, tmp_path / "out", date(2026, 3, 10), days=10, facilities=names)
    so = Elements((tmp_path / "out" / "CHU-SO.html").read_text(encoding="utf-8"))
    assert len(so.find("rect", "bar")) == 3
    assert "never_fails" in [a.get("data-expectation") for a in so.find("tr")]
    clean = Elements((tmp_path / "out" / "CLEAN.html").read_text(encoding="utf-8"))
    assert not clean.find("svg", "chart-bars") and clean.find("p", "no-failures")
    assert clean.find("svg", "chart-rate")[0]["data-points"] == "1"


def test_render_html_without_data_writes_an_index_that_says_so(sqlite_url, tmp_path):
    eng = get_engine(sqlite_url)
    paths = dq_report.render_html(eng, tmp_path, date(2026, 3, 10), facilities={"CHU-SO": "CHU Sylvanus Olympio"})
    assert [p.name for p in paths] == ["index.html"]
    page = Elements(paths[0].read_text(encoding="utf-8"))
    assert "No data quality results in this period" in "".join(page.text)
    assert not page.find("svg") and not page.find("rect", "bar")
    with pytest.raises(ValueError):
        dq_report.render_html(eng, tmp_path, date(2026, 3, 10), days=0)


# --------------------------------------------------------------------------------------------------
# DAG


def test_report_window_covers_the_interval_and_the_week_before():
    from hl7ics_airflow.dq_tasks import report_window

    utc = timezone.utc
    midnight = datetime(2026, 3, 10, tzinfo=utc)
    # @daily with Airflow 3's trigger timetable: a point at midnight reports the day that ended
    assert report_window(midnight, midnight) == (date(2026, 3, 2), date(2026, 3, 9))
    # a data interval [D-1, D)
    assert report_window(midnight - timedelta(days=1), midnight) == (date(2026, 3, 2), date(2026, 3, 9))
    # a manual run in the afternoon includes today so far
    afternoon = datetime(2026, 3, 10, 14, 30, tzinfo=utc)
    assert report_window(afternoon, afternoon) == (date(2026, 3, 3), date(2026, 3, 10))
    # no logical date: run_after stands for the interval
    assert report_window(None, None, afternoon) == (date(2026, 3, 3), date(2026, 3, 10))
    assert report_window(None, None, afternoon, lookback_days=0) == (date(2026, 3, 10), date(2026, 3, 10))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.initdb()
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_data_quality_report_dag_guards(dagbag):
    assert not dagbag.import_errors
    dag = dagbag.get_dag("data_quality_report")
    assert dag.catchup is False and dag.max_active_runs == 1
    assert "data-quality" in dag.tags and "hl7ics" in dag.tags
    assert dag.doc_md and "dq_daily" in dag.doc_md and "formation" in dag.doc_md
    assert dag.on_failure_callback
    assert {t.task_id for t in dag.tasks} == {"rebuild_daily", "render_report"}
    for t in dag.tasks:
        assert t.owner == "data-engineering" and t.retries >= 1 and t.on_failure_callback, t.task_id


def test_data_quality_report_end_to_end(dagbag, hl7ics_home, warehouse_url, monkeypatch):
    from transforms.config import Settings
    from transforms.warehouse import utcnow

    monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", warehouse_url)
    eng = get_engine(warehouse_url)
    now = datetime.now(timezone.utc)
    today = now.date()
    old = (now - timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S")
    too_old = (now - timedelta(days=20)).strftime("%Y-%m-%d %H:%M:%S")
    seed(eng, [("a", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 100, 4, utcnow()),
               ("b", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 100, 2, old),
               ("c", "CHU-KARA", "fact_encounter", IN_SET, "warning", 10, 1, old),
               ("d", "CHU-SO", "fact_lab_result", NOT_NULL, "error", 100, 9, too_old)])

    dr = dagbag.get_dag("data_quality_report").test()
    assert str(dr.state).endswith("success")

    days = {r[0] for r in daily(eng)}
    assert today.isoformat() in days and (today - timedelta(days=3)).isoformat() in days
    assert (today - timedelta(days=20)).isoformat() not in days, "only the last week is rebuilt"
    [out_dir] = (Settings.load().data_dir / "reports" / "dq").iterdir()
    # Named after the day reported on (for a run at midnight, the day that just ended), not ds.
    assert out_dir.name == max(days)
    assert {p.name for p in out_dir.iterdir()} == {"index.html", "CHU-SO.html", "CHU-KARA.html"}
    so = Elements((out_dir / "CHU-SO.html").read_text(encoding="utf-8"))
    assert so.find("svg", "chart-rate")[0]["data-points"] == "2"
    assert "CHU Sylvanus Olympio" in "".join(so.text), "names come from config/facilities.yaml"


def test_a_rate_with_nothing_evaluated_is_not_shown_as_zero():
    """0% would read as "everything passed" for a facility where no error check ran."""
    from transforms.dq_report import _share

    assert _share(0, 0) == "—" and _share(200, 3) == "1.5%" and _share(10, 0) == "0%"
