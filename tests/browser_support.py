"""Helpers of the page tests: headless Chromium (one call, a private profile each time) and a
parser of the HTML the service renders."""
from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path


def run_chromium(chromium: str, profile: Path, *args: str, window: str = "1280,1600") -> subprocess.CompletedProcess:
    # A private profile per call: a shared one can be locked by a previous, still-exiting browser.
    return subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-device-scale-factor=1", f"--user-data-dir={profile}", "--no-first-run",
         "--disable-extensions", f"--window-size={window}", *args],
        capture_output=True, text=True, timeout=120, check=False)


class Elements(HTMLParser):
    """Every start tag of a page with its decoded attributes, and the page's text."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict]:
        return [a for t, a in self.elements if t == tag and (cls is None or cls in (a.get("class") or "").split())]
