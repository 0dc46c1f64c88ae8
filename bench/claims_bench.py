"""Insurer claims: time to build the claims of a month of generated national traffic and extract
that month for every insurer of config/insurers.yaml (INAM's ISO weeks, CNSS's and the private
insurer's month), on SQLite and PostgreSQL (when reachable). The facilities that bill are made
DFT-heavy (admissions, discharges and charges only; the pharmacy sends charges only). The traffic is
ingested once (not timed); each timed run starts from empty claim tables. Also timed: a second
build with nothing new (the idempotent path the DAGs take most days). Target: build + extracts of a
month in under 30 s."""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from datetime import date, datetime
from pathlib import Path

from .common import median_time, table
from .ingest_bench import loaded_warehouses

MONTH = date(2026, 10, 1)
NOW = datetime(2026, 11, 15, 6)  # every period of October is over and its claims have settled
_DFT_HEAVY = ["ADT^A01", "ADT^A03", "ADT^A04", "DFT^P03"]
_CLAIM_TABLES = ("claim_line", "claim", "claim_extract_item", "claim_delivery", "claim_extract")


def _facilities(settings) -> list[dict]:
    out = []
    for f in settings.facilities():
        d = f.as_dict()
        if "DFT^P03" in d["message_types"]:
            d["message_types"] = ["DFT^P03"] if d["type"] == "pharmacy" else list(_DFT_HEAVY)
        out.append(d)
    return out


def _periods(cfg) -> list[tuple[str, str]]:
    from transforms.claims import period_of

    out = []
    for ins in cfg.insurers:
        seen, day = [], MONTH
        while day.month == MONTH.month:
            p = period_of(ins.period, day)
            if p.label not in seen:
                seen.append(p.label)
            day = p.end
        out += [(ins.code, label) for label in seen]
    return out


def run(quick: bool = False) -> dict:
    from sqlalchemy import text

    from transforms import generator
    from transforms.claims import build_claims, extract, load_insurers
    from transforms.config import Settings

    per_day = 800 if quick else 3000
    runs = 1 if quick else 3
    os.environ.setdefault("HL7ICS_PATIENT_KEY", "bench" * 8)
    settings = Settings.load()
    cfg = load_insurers(settings.config_dir / "insurers.yaml", [f.code for f in settings.facilities()])
    periods = _periods(cfg)
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as d:
        manifest = generator.generate(Path(d) / "gen", _facilities(settings), days=31, seed=23, per_day=per_day,
                                      start=MONTH, broken_share=0.0, messages_per_file=5000)
        files = sorted((Path(d) / "gen" / "inbound").rglob("*.hl7"))
        for label, kind, ing in loaded_warehouses(files, d, "bench-claims"):
            eng = ing.engine
            with eng.connect() as c:
                charges = c.execute(text("SELECT COUNT(*) FROM fact_charge")).scalar()
            out_dir = Path(d) / "claims"
            times = {"build": [], "extract": [], "rebuild": []}
            last: dict = {}
            for _ in range(runs):
                with eng.begin() as c:
                    for t in _CLAIM_TABLES:
                        c.execute(text(f"DELETE FROM {t}"))
                shutil.rmtree(out_dir, ignore_errors=True)

                def build():
                    last["build"] = build_claims(eng, cfg, NOW)

                def extracts():
                    last["extracts"] = [extract(eng, cfg, code, p, out_dir, NOW) for code, p in periods]

                times["build"].append(median_time(build, 1))
                times["extract"].append(median_time(extracts, 1))
                times["rebuild"].append(median_time(build, 1))
            med = {k: statistics.median(v) for k, v in times.items()}
            claims = {code: sum(e.claims for e in last["extracts"] if e.insurer == code) for code in cfg.codes}
            total = med["build"] + med["extract"]
            results[kind] = {"seconds_build": med["build"], "seconds_extract": med["extract"],
                             "seconds_rebuild_unchanged": med["rebuild"], "seconds_total": total,
                             "messages": manifest["messages"], "charges": charges, "claims": claims,
                             "extracts": len(periods)}
            rows.append([label, manifest["messages"], charges, " / ".join(str(claims[c]) for c in cfg.codes),
                         len(periods), med["build"], med["extract"], med["rebuild"], total])
    print(table(f"Insurer claims: build + extract a month of national traffic ({per_day} messages/day, DFT-heavy), "
                f"median of {runs} runs (target: under 30 s)",
                ["warehouse", "messages", "charges", f"claims {' / '.join(cfg.codes)}", "extracts", "build s",
                 "extracts s", "rebuild (unchanged) s", "total s"], rows))
    return results
