"""Task bodies of the ``data_quality_report`` DAG (see dags/data_quality_report.py).

Inputs: the run's data interval and ``ds``, the settings (warehouse URL from the Airflow connection
``hl7ics_warehouse`` first, see runtime.py; data directory; facility names from the configuration).
Outputs: ``dq_daily`` rebuilt for the report window, and the HTML report under
``<data_dir>/reports/dq/<the report's last day>/``. Each function returns a small JSON-able dict (days, counts, codes)
for XCom; no patient data exists in this path, only counts.
"""
from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone

from hl7ics_airflow.runtime import settings

# A batch loaded late still writes dq_result rows under its own days; re-computing the last week
# every day picks those up without anybody having to remember to re-run the report.
LOOKBACK_DAYS = int(os.environ.get("HL7ICS_DQ_LOOKBACK_DAYS", "7"))
REPORT_DAYS = int(os.environ.get("HL7ICS_DQ_REPORT_DAYS", "30"))


def _utc(value) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def report_window(interval_start: datetime | None, interval_end: datetime | None,
                  run_after: datetime | None = None, lookback_days: int = LOOKBACK_DAYS) -> tuple[date, date]:
    """The UTC days to rebuild: those the data interval touches, plus ``lookback_days`` before.

    The last day is the day of the instant just before the interval's end: the ``@daily`` run at
    midnight covers the day that just ended, not the one that has barely begun; a manual run at
    14:00 covers today so far. Manual runs without a logical date have no interval: ``run_after``
    (else now) stands for it.
    """
    end = _utc(interval_end) or _utc(run_after) or datetime.now(timezone.utc)
    start = _utc(interval_start) or end
    last = (end - timedelta(microseconds=1)).date()
    first = min(start.date(), last) - timedelta(days=lookback_days)
    return first, last


def rebuild(interval_start: datetime | None, interval_end: datetime | None,
            run_after: datetime | None = None) -> dict:
    from transforms.dq_report import rebuild_daily
    from transforms.warehouse import get_engine

    first, last = report_window(interval_start, interval_end, run_after)
    rows = rebuild_daily(get_engine(settings().warehouse_url), first, last)
    return {"day_from": first.isoformat(), "day_to": last.isoformat(), "rows": rows}


def render(rebuilt: dict) -> dict:
    from transforms.dq_report import render_html
    from transforms.warehouse import get_engine

    s = settings()
    day = date.fromisoformat(rebuilt["day_to"])
    # Named after the report's last day, not ``ds``: the midnight run's ds is the day that begins,
    # and a manual run later that day would overwrite the complete report with a partial one.
    out_dir = s.data_dir / "reports" / "dq" / day.isoformat()
    names = {f.code: f.name for f in s.facilities()}
    paths = render_html(get_engine(s.warehouse_url), out_dir, day, REPORT_DAYS, names)
    # Page names are the facility codes (configured codes are already file-name safe).
    facilities = sorted(p.stem for p in paths if p.name != "index.html")
    return {"out_dir": str(out_dir), "paths": len(paths), "facilities": facilities, "day": day.isoformat()}
