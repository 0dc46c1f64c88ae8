"""MoH reporting: time to rebuild a year of weekly reporting (IDSR, lab, hospital, immunisation,
completeness) for the whole country from a year of generated traffic, on PostgreSQL (and SQLite
for reference). The traffic is ingested once (not timed); the rebuild is timed, median of runs."""
from __future__ import annotations

import os
import tempfile
from datetime import date, timedelta
from pathlib import Path

from .common import median_time, table
from .ingest_bench import loaded_warehouses


def run(quick: bool = False) -> dict:
    from transforms import generator
    from transforms.config import Settings
    from transforms.reporting import IdsrConfig, build

    days = 30 if quick else 365
    per_day = 600 if quick else 1500
    runs = 1 if quick else 3
    os.environ.setdefault("HL7ICS_PATIENT_KEY", "bench" * 8)
    settings = Settings.load()
    cfg = IdsrConfig.load(settings.config_dir / "idsr.yaml")
    first = date(2025, 12, 1)
    last = first + timedelta(days=days - 1)
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as d:
        manifest = generator.generate(Path(d) / "gen", [f.as_dict() for f in settings.facilities()], days=days,
                                      seed=17, per_day=per_day, start=first, broken_share=0.0,
                                      messages_per_file=5000)
        files = sorted((Path(d) / "gen" / "inbound").rglob("*.hl7"))
        for label, kind, ing in loaded_warehouses(files, d, "bench-reporting"):
            out = {}

            def rebuild():
                out["r"] = build(ing.engine, cfg, first, last)
            t = median_time(rebuild, runs)
            r = out["r"]
            results[kind] = {"seconds": t, "weeks": len(r.weeks), "cases": r.cases}
            rows.append([label, manifest["messages"], len(r.weeks), r.cases, t])
    print(table(f"MoH reporting rebuild ({days} days of traffic, all facilities), median of {runs} runs "
                f"(target: a year in under 60 s on PostgreSQL)",
                ["warehouse", "messages", "ISO weeks", "IDSR cases", "seconds"], rows))
    return results
