"""Timing helpers shared by the benchmark sections."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [f"\n{title}", line]
    for i, r in enumerate(cells):
        out.append("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            out.append(line)
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def child_peak_rss_mb(code: str, env: dict | None = None) -> float:
    """Run ``code`` in a fresh interpreter; return its peak RSS in MB (printed by the child)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent, so a child
    # of a big benchmark process would report the parent's size.
    wrapped = code + ("\nhwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]"
                      "\nprint('PEAK', int(hwm.split()[1]) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, env=env, check=True).stdout
    return float([l for l in out.splitlines() if l.startswith("PEAK")][-1].split()[1])
