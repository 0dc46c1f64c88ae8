"""Parser throughput on a generated mix, with hl7apy and python-hl7 on the same messages."""
from __future__ import annotations

import os
import tempfile
from multiprocessing import get_context

from transforms import generator
from transforms.extract import to_record
from transforms.parser import parse

from .common import child_peak_rss_mb, median_time, table


def _ours(msgs):
    for m in msgs:
        to_record(parse(m))


def _python_hl7(texts):
    import hl7

    for t in texts:
        hl7.parse(t)


def _hl7apy(texts):
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    for t in texts:
        try:
            parse_message(t, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
        except Exception:
            pass


def _peer_text(raw: bytes) -> str:
    # Both peers want str with CR terminators; decoding is part of their work, as it is of ours.
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")


_SHARED: list[bytes] = []


def _chunk(bounds):
    # Workers are forked after _SHARED is filled, so the messages are not pickled across.
    a, b = bounds
    _ours(_SHARED[a:b])
    return b - a


def run(quick: bool = False) -> dict:
    n = 20_000 if quick else 100_000
    runs = 3 if quick else 5
    msgs = generator.generate_mix(n, seed=11)
    mb = sum(map(len, msgs)) / 1e6
    t_ours = median_time(lambda: _ours(msgs), runs)
    sample = msgs[:2000]
    texts = [_peer_text(m) for m in sample]
    t_s_ours = median_time(lambda: _ours(sample), runs)
    t_s_phl7 = median_time(lambda: _python_hl7(texts), runs)
    # hl7apy parses about 50 messages a second here: the full run gives it the same 2,000 (about
    # 40 s a run); the quick one a 300-message slice, compared with ours on the same slice.
    apy_n = 300 if quick else len(sample)
    t_x_ours = t_s_ours if apy_n == len(sample) else median_time(lambda: _ours(sample[:apy_n]), runs)
    t_x_apy = median_time(lambda: _hl7apy(texts[:apy_n]), 3)
    # Two processes on the two cores: the whole mix split in halves.
    half = len(msgs) // 2
    _SHARED[:] = msgs
    with get_context("fork").Pool(2) as pool:
        pool.map(_chunk, [(0, 10), (10, 20)])  # warm up
        t_par = median_time(lambda: pool.map(_chunk, [(0, half), (half, len(msgs))]), runs)
    _SHARED.clear()
    rows = [
        [f"hl7ics (1 process, {n:,} msgs)", n / t_ours, mb / t_ours, "", ""],
        [f"hl7ics (2 processes, {n:,} msgs)", n / t_par, mb / t_par, "", ""],
        ["hl7ics (2,000-msg sample)", 2000 / t_s_ours, "", "1.0"],
        ["python-hl7 0.4.5 (same 2,000)", 2000 / t_s_phl7, "", f"{t_s_phl7 / t_s_ours:.1f}x slower"],
    ]
    if apy_n != len(sample):
        rows.append([f"hl7ics ({apy_n}-msg sample)", apy_n / t_x_ours, "", "1.0"])
    rows.append([f"hl7apy 1.3.5 (same {apy_n:,})", apy_n / t_x_apy, "", f"{t_x_apy / t_x_ours:.0f}x slower"])
    print(table(f"Parser: full record extraction, median of {runs} runs (hl7apy: 3)",
                ["parser", "msgs/s", "MB/s", "vs hl7ics on the same sample"], rows))
    mem = _memory(quick)
    print(table("Parser peak memory, streaming files (separate process each)", ["messages in file", "peak RSS MB"],
                [[k, v] for k, v in mem.items()]))
    return {"msgs_per_s": n / t_ours, "mb_per_s": mb / t_ours, "msgs_per_s_2proc": n / t_par,
            "python_hl7_ratio": t_s_phl7 / t_s_ours, "hl7apy_ratio": t_x_apy / t_x_ours, "memory": mem}


_STREAM = """
import sys
from transforms.extract import iter_file_records
n = 0
for r in iter_file_records(sys.argv[1] if len(sys.argv) > 1 else {path!r}):
    n += 1
"""


def _memory(quick: bool) -> dict:
    sizes = [10_000, 50_000] if quick else [20_000, 100_000, 200_000]
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for size in sizes:
            path = os.path.join(d, f"mix{size}.hl7")
            with open(path, "wb") as fh:
                for m in generator.generate_mix(size, seed=5):
                    fh.write(m)
            out[size] = child_peak_rss_mb(_STREAM.format(path=path))
    return out
