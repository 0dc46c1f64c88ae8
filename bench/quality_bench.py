"""Data-quality validation cost: the GX suites on 100,000 generated messages (the rows they add to
every checked table), prepared once and validated several times; median of runs."""
from __future__ import annotations

import os

from .common import median_time, table


def run(quick: bool = False) -> dict:
    from transforms import generator
    from transforms.config import Settings
    from transforms.facts import PatientKeyer
    from transforms.load import Incoming, Loader
    from transforms.quality import VALIDATION_CHUNK, QualityOptions

    n = 20_000 if quick else 100_000
    runs = 1 if quick else 5
    os.environ.setdefault("HL7ICS_PATIENT_KEY", "bench" * 8)
    settings = Settings.load()
    loader = Loader(settings.facilities(), PatientKeyer(b"bench-key-0123456789"), QualityOptions(True))
    prepared = loader.prepare([Incoming(m, "folder", str(i)) for i, m in enumerate(generator.generate_mix(n, seed=5))])
    loader.validate(prepared[:50])  # GX import and suite build: once per process, not per batch
    rows = sum(1 + sum(len(v) for t, v in (p.facts or {}).items() if t in loader.validator.suites)
               for p in prepared if p.facts is not None)

    def validate_all():
        for p in prepared:
            p.dq = None
        for i in range(0, len(prepared), VALIDATION_CHUNK):
            loader.validate(prepared[i:i + VALIDATION_CHUNK])

    t = median_time(validate_all, runs)
    checks = len(loader.validator.checks)
    out = {"messages": n, "rows": rows, "seconds": t, "seconds_per_100k_rows": t * 100_000 / rows,
           "us_per_message": t / n * 1e6, "expectations": checks}
    print(table(f"Data-quality validation (GX 1.x, {checks} expectations, chunks of {VALIDATION_CHUNK:,} messages), "
                f"median of {runs} runs",
                ["messages", "rows checked", "seconds", "s per 100k rows", "µs per message"],
                [[n, rows, t, out["seconds_per_100k_rows"], out["us_per_message"]]]))
    return out
