"""Headless Chromium for the page tests (reports, bulletin): one call, a private profile each time."""
from __future__ import annotations

import subprocess
from pathlib import Path


def run_chromium(chromium: str, profile: Path, *args: str, window: str = "1280,1600") -> subprocess.CompletedProcess:
    # A private profile per call: a shared one can be locked by a previous, still-exiting browser.
    return subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-device-scale-factor=1", f"--user-data-dir={profile}", "--no-first-run",
         "--disable-extensions", f"--window-size={window}", *args],
        capture_output=True, text=True, timeout=120, check=False)
