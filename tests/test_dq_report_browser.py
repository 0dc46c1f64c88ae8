"""The data-quality report as a person sees it: rendered by headless Chromium.

A report is rendered from seeded results (five days of rising failure rates), opened in Chromium,
and checked twice: the DOM Chromium built (names, expectations, the chart's point count), and a
screenshot in which the error series' red and the bars' blue must cover a real number of pixels.
The same count on a report without data must find none, so the pixel check can fail.

Needs Debian's ``chromium`` (``scripts/ensure-chromium``). Under CI=true a missing browser fails
the run; elsewhere these tests skip with the command to install it.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

from sqlalchemy import text

from transforms import dq_report
from transforms.warehouse import get_engine
from browser_support import run_chromium

WINDOW = "1280,1600"
NAME = "CHU Sylvanus Olympio"
EXPECTATIONS = ("expect_column_values_to_not_be_null", "expect_column_values_to_be_in_set",
                "expect_column_values_to_match_regex")






def screenshot(chromium: str, page: Path, tmp_path: Path) -> Path:
    png = tmp_path / f"{page.stem}.png"
    r = run_chromium(chromium, tmp_path / f"profile-shot-{page.stem}", f"--screenshot={png}", page.as_uri())
    assert png.is_file() and png.stat().st_size > 0, f"no screenshot (exit {r.returncode}): {r.stderr[-800:]}"
    return png


def dump_dom(chromium: str, page: Path, tmp_path: Path) -> str:
    r = run_chromium(chromium, tmp_path / f"profile-dom-{page.stem}", "--dump-dom", page.as_uri())
    assert r.returncode == 0 and "<body" in r.stdout, r.stderr[-800:]
    return r.stdout


def pixels_of(png: Path, hex_color: str, tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` per channel of the colour."""
    from PIL import Image, ImageChops

    target = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    bands = Image.open(png).convert("RGB").split()
    masks = [b.point(lambda v, t=t: 255 if abs(v - t) <= tolerance else 0) for b, t in zip(bands, target)]
    hit = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2])
    return hit.histogram()[255]


def seed_rising(engine) -> None:
    rows = []
    for i, d in enumerate(range(1, 6)):
        at = f"2026-03-{d:02d} 09:00:00"
        rows += [(f"r{d}", "CHU-SO", "fact_lab_result", EXPECTATIONS[0], "error", 1000, 20 * (i + 1), at),
                 (f"r{d}", "CHU-SO", "fact_encounter", EXPECTATIONS[1], "warning", 500, 5 * (i + 1), at),
                 (f"r{d}", "CHU-SO", "fact_lab_result", EXPECTATIONS[2], "error", 1000, 3 * (i + 1), at)]
    with engine.begin() as c:
        c.execute(text(
            "INSERT INTO dq_result (run_id, facility_code, table_name, expectation, severity, evaluated, failed, "
            "created_at, updated_at) VALUES (:r, :f, :t, :x, :s, :e, :fa, :at, :at)"),
            [{"r": r, "f": f, "t": t, "x": x, "s": s, "e": e, "fa": fa, "at": at} for r, f, t, x, s, e, fa, at in rows])
    dq_report.rebuild_daily(engine, date(2026, 3, 1), date(2026, 3, 7))


def test_report_in_chromium_shows_names_and_draws_the_charts(chromium, sqlite_url, tmp_path):
    eng = get_engine(sqlite_url)
    seed_rising(eng)
    paths = dq_report.render_html(eng, tmp_path / "report", date(2026, 3, 7), days=14, facilities={"CHU-SO": NAME})
    page = tmp_path / "report" / "CHU-SO.html"
    assert page in paths

    dom = dump_dom(chromium, page, tmp_path)
    assert NAME in dom
    for x in EXPECTATIONS:
        assert x in dom
    assert 'class="chart chart-rate" data-points="5"' in dom
    assert dom.count('class="point point-error"') == 5
    assert dom.count('class="bar"') == 3

    png = screenshot(chromium, page, tmp_path)
    red, blue = pixels_of(png, dq_report.COLORS["error"]), pixels_of(png, dq_report.COLORS["bar"])
    # A 3-pixel line across part of the chart plus five dots, and three bars 20 pixels high: several
    # hundred and several thousand pixels. The legend's swatch alone is under a hundred; a blank or
    # broken chart has none.
    assert red >= 300, f"error series barely drawn ({red} px)"
    assert blue >= 3000, f"bars barely drawn ({blue} px)"

    index = screenshot(chromium, tmp_path / "report" / "index.html", tmp_path)
    assert pixels_of(index, dq_report.COLORS["error"]) >= 300, "index: the charts are drawn too"


def test_report_without_data_has_no_chart_pixels(chromium, sqlite_url, tmp_path):
    eng = get_engine(sqlite_url)
    [index] = dq_report.render_html(eng, tmp_path / "empty", date(2026, 3, 7), facilities={"CHU-SO": NAME})
    dom = dump_dom(chromium, index, tmp_path)
    assert "No data quality results in this period" in dom and NAME in dom
    png = screenshot(chromium, index, tmp_path)
    assert pixels_of(png, dq_report.COLORS["error"]) == 0
    assert pixels_of(png, dq_report.COLORS["bar"]) == 0
