"""The interface monitoring page as a person sees it: served by uvicorn, driven in headless Chromium.

The plugin's app is served on a free local port (uvicorn, in a thread of this process, so it shares
Airflow's auth manager and signing key with the test). Chromium is driven through the Chrome
DevTools Protocol: without credentials the page is a 401; with the JWT in the ``_token`` cookie (as
the Airflow UI sets it) the rendered DOM holds the seeded facilities, the status colours as
computed by the browser, sparklines with 24 points each and the daily charts; the plain GET form
filters by region; screenshots of the charts and of the table must show the series' and statuses'
colours on a real number of pixels, and a filter with no data must show none of the chart colours,
so the pixel check can fail.

Needs Debian's ``chromium`` (``scripts/ensure-chromium``). Under CI=true a missing browser fails
the run; elsewhere these tests skip with the command to install it.
"""
from __future__ import annotations

import base64
import io
import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from test_monitoring_ui import FACILITIES, QUARANTINE, TYPES, airflow_jwt, seed
from transforms import monitoring_page as mp
from transforms.warehouse import get_engine

WINDOW = (1400, 1800)




@pytest.fixture(scope="module")
def token():
    with airflow_jwt() as t:
        yield t


@pytest.fixture
def server(sqlite_url, monkeypatch):
    """The plugin's app on 127.0.0.1:<free port>, reading a seeded SQLite warehouse."""
    import uvicorn

    from hl7ics_airflow.monitoring_ui import app

    seed(get_engine(sqlite_url))
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_WAREHOUSE", raising=False)
    monkeypatch.delenv("HL7ICS_USE_SECRETS_BACKEND", raising=False)
    monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", sqlite_url)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, name="monitoring-ui-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        port = srv.servers[0].sockets[0].getsockname()[1]  # port 0: the OS chose a free one, no race
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not stop"


class Browser:
    """Headless Chromium with one page, driven over the DevTools Protocol (websocket, JSON)."""

    def __init__(self, chromium: str, profile: Path):
        from websockets.sync.client import connect

        profile.mkdir(parents=True)
        self.log = open(profile.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--force-device-scale-factor=1", f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions",
             "--no-proxy-server", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            port_file = profile / "DevToolsActivePort"  # written once the debugging port is open
            deadline = time.monotonic() + 60
            while not (port_file.is_file() and port_file.read_text().strip()):
                assert self.proc.poll() is None, f"chromium exited with {self.proc.returncode}"
                assert time.monotonic() < deadline, "chromium did not open its debugging port"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                [target] = [t for t in json.load(r) if t["type"] == "page"][:1]
            self.ws = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        except BaseException:
            self.close()
            raise
        self._id = 0
        self.events: list[dict] = []
        self.call("Page.enable")
        self.call("Network.enable")

    def _recv(self, timeout: float) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def call(self, method: str, **params) -> dict:
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = self._recv(30)
            if msg.get("id") == my:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            assert left > 0, f"no {method} event"
            self.events.append(self._recv(left))

    def document_status(self) -> int:
        for e in self.events:
            if e.get("method") == "Network.responseReceived" and e["params"].get("type") == "Document":
                return e["params"]["response"]["status"]
        raise AssertionError("no document response")

    def open(self, url: str) -> int:
        """Navigate and wait for the load event; returns the document's HTTP status."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        return self.document_status()

    def after_load(self) -> int:
        self.wait_for("Page.loadEventFired")
        return self.document_status()

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def rect(self, selector: str) -> dict:
        box = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                      f" return {{x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}}; }})()")
        assert box["width"] > 0 and box["height"] > 0, selector
        return box

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        params = {"format": "png", "captureBeyondViewport": True}
        if selector:
            params["clip"] = {**self.rect(selector), "scale": 1}
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def browser(chromium, tmp_path):
    b = Browser(chromium, tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def pixels_of(png: Path, hex_color: str, tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` per channel of the colour."""
    from PIL import Image, ImageChops

    target = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    bands = Image.open(io.BytesIO(png.read_bytes())).convert("RGB").split()
    masks = [b.point(lambda v, t=t: 255 if abs(v - t) <= tolerance else 0) for b, t in zip(bands, target)]
    hit = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2])
    return hit.histogram()[255]


def rgb(hex_color: str) -> str:
    return "rgb({}, {}, {})".format(*(int(hex_color[i:i + 2], 16) for i in (1, 3, 5)))


DOM_STATE = """(() => {
  const rows = [...document.querySelectorAll('tr.iface')];
  const colour = s => {
    const el = document.querySelector(`tr.iface[data-status="${s}"] .badge`);
    return el ? getComputedStyle(el).backgroundColor : null;
  };
  return {
    url: location.href,
    facilities: [...new Set(rows.map(r => r.dataset.facility))].sort(),
    rows: rows.length,
    statuses: Object.fromEntries(['ok', 'warning', 'critical', 'off_hours'].map(s => [s, colour(s)])),
    sparkPoints: [...document.querySelectorAll('svg.spark polyline.spark-messages')].map(p => p.points.numberOfItems),
    sparkDrawn: [...document.querySelectorAll('svg.spark')].filter(s => s.getBoundingClientRect().width >= 100).length,
    bars: document.querySelectorAll('svg.chart rect.bar').length,
    alerts: document.querySelectorAll('tr.alert').length,
    reasons: [...document.querySelectorAll('tr.reason')].map(r => r.dataset.reason).sort(),
    text: document.body.innerText,
  };
})()"""


def test_page_in_chromium_needs_the_token_then_shows_everything(server, browser, token, tmp_path):
    # 1. No credentials: Airflow's 401, and nothing of the warehouse.
    assert browser.open(server + "/") == 401
    body = browser.js("document.body.innerText")
    assert "Not authenticated" in body and "CHU" not in body

    # 2. The cookie the Airflow UI sets at login.
    browser.call("Network.setCookie", name="_token", value=token, url=server + "/", httpOnly=True, sameSite="Lax")
    assert browser.open(server + "/") == 200
    dom = browser.js(DOM_STATE)
    assert dom["facilities"] == sorted([f[0] for f in FACILITIES] + ["UNKNOWN"])
    assert dom["rows"] == len(FACILITIES) * len(TYPES) + 1
    assert dom["statuses"] == {s: rgb(mp.COLORS[s]) for s in ("ok", "warning", "critical", "off_hours")}
    assert dom["sparkPoints"] == [24] * dom["rows"] and dom["sparkDrawn"] == dom["rows"]
    assert dom["bars"] == 14, "7 days of messages and 7 of quarantined"
    assert dom["alerts"] == 4
    assert dom["reasons"] == sorted(q[2] for q in QUARANTINE)
    for _code, name, _region, _district in FACILITIES:
        assert name in dom["text"]
    assert "Critique / Critical" in dom["text"] and "Hors horaires / Off hours" in dom["text"]
    assert "KOFFI" not in dom["text"]

    browser.screenshot(tmp_path / "page.png")  # kept with the test's files, for a person to look at
    charts = browser.screenshot(tmp_path / "charts.png", "#daily-charts")
    blue, red = pixels_of(charts, mp.COLORS["messages"]), pixels_of(charts, mp.COLORS["quarantined"])
    # Seven bars about 40 px wide and up to 126 px high per chart: several thousand pixels each.
    # A blank or broken chart has none.
    assert blue >= 5000, f"messages bars barely drawn ({blue} px)"
    assert red >= 3000, f"quarantined bars barely drawn ({red} px)"
    for status in ("ok", "warning", "critical", "off_hours"):
        # The first badge of each status: mostly its colour (the label's letters take the rest).
        badge = browser.screenshot(tmp_path / f"badge-{status}.png", f'tr.iface[data-status="{status}"] .badge')
        box = browser.rect(f'tr.iface[data-status="{status}"] .badge')
        share = pixels_of(badge, mp.COLORS[status]) / (round(box["width"]) * round(box["height"]))
        assert share >= 0.6, f"{status} badge: {share:.0%} of its pixels in {mp.COLORS[status]}"
    table = browser.screenshot(tmp_path / "table.png", "#interfaces")
    assert pixels_of(table, mp.COLORS["messages"]) >= 22 * 60, "the sparklines' blue lines"

    # 3. The plain GET form filters (no script on the page: the browser submits it).
    browser.js("document.querySelector('select[name=region]').value = 'Kara';"
               "document.getElementById('filters').submit(); true")
    assert browser.after_load() == 200
    dom = browser.js(DOM_STATE)
    assert "region=Kara" in dom["url"]
    assert dom["facilities"] == ["CHU-KARA"] and dom["rows"] == 3
    assert dom["reasons"] == ["obx3_present"]


def test_page_without_data_draws_no_chart_colours(server, browser, token, tmp_path):
    browser.call("Network.setCookie", name="_token", value=token, url=server + "/", httpOnly=True, sameSite="Lax")
    assert browser.open(server + "/?facility=NOPE") == 200
    dom = browser.js(DOM_STATE)
    assert dom["rows"] == 0 and dom["bars"] == 0
    assert "No interface matches this filter" in dom["text"]
    png = browser.screenshot(tmp_path / "empty.png")
    assert pixels_of(png, mp.COLORS["messages"]) == 0
    assert pixels_of(png, mp.COLORS["quarantined"]) == 0
