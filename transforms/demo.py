"""``hl7ics demo``: the main job end to end on the embedded default.

Generates a few days of deterministic traffic for the configured facilities into their drop
folders, runs the ``facility_batch_ingest`` DAG once with Airflow 3 (``dag.test()``, SQLite for the
metadata and the warehouse), and prints what happened. Running it again changes nothing: the same
seed writes the same files, which the file ledger recognises.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy import text

from .config import PROJECT_ROOT, Settings

DQ_FAULT_SHARE = 0.01  # a few planted data-quality faults, so the report has something to show

EXAMPLE_QUERIES = [
    ("Admissions per region and week / Admissions par région et semaine",
     "SELECT f.region, date(e.admit_at, 'weekday 0', '-6 days') AS week_starting, COUNT(*) AS admissions\n"
     "  FROM fact_encounter e JOIN dim_facility f USING (facility_code)\n"
     " WHERE e.cancelled = 0 GROUP BY 1, 2 ORDER BY 1, 2;"),
    ("Malaria rapid tests and positives per facility / TDR paludisme et positifs par formation",
     "SELECT facility_code, COUNT(*) AS tests,\n"
     "       SUM(CASE WHEN value IN ('10828004', '260373001', 'Positive', 'Positif') THEN 1 ELSE 0 END) AS positives\n"
     "  FROM fact_lab_result WHERE test_code = '70569-9' GROUP BY facility_code ORDER BY facility_code;"),
]


def _airflow_env(home: Path) -> None:
    af = home / "airflow"
    af.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(af))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT_ROOT / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(PROJECT_ROOT / "plugins"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{af / 'airflow.db'}")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def run_demo(days: int = 3, seed: int = 2026, per_day: int = 400, out=None) -> int:
    out = out or sys.stdout
    settings = Settings.load()
    os.environ.setdefault("HL7ICS_HOME", str(settings.home))
    _airflow_env(settings.home)
    from . import generator

    facilities = settings.facilities()
    manifest = generator.generate(settings.data_dir, [f.as_dict() for f in facilities], days=days, seed=seed,
                                  per_day=per_day, dq_fault_share=DQ_FAULT_SHARE)
    print(f"Generated {manifest['messages']} messages in {manifest['files']} files for {len(facilities)} "
          f"facilities into {settings.data_dir / 'inbound'} ({sum(manifest['broken'].values())} deliberately "
          f"damaged, of which a message cut after a complete segment may still load; "
          f"{sum(manifest['dq_faults'].values())} with a data-quality fault)", file=out)
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # library noise, not the user's concern
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.initdb()
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        print(f"DAG import errors: {list(bag.import_errors)}", file=out)
        return 1
    dag = bag.get_dag("facility_batch_ingest")
    dr = dag.test()
    state = str(getattr(dr, "state", "unknown"))
    print(f"\nfacility_batch_ingest run {getattr(dr, 'run_id', '?')}: {state}", file=out)
    print_summary(settings, out, getattr(dr, "run_id", None))
    report = bag.get_dag("data_quality_report").test()
    report_state = str(getattr(report, "state", "unknown"))
    print_quality(settings, report_state, out)
    return 0 if state.endswith("success") and report_state.endswith("success") else 1


def print_quality(settings: Settings, report_state: str, out=None) -> None:
    out = out or sys.stdout
    from .dq_report import summary
    from .warehouse import get_engine

    rows = [r for r in summary(get_engine(settings.warehouse_url)) if r["failed"]]
    totals: dict[tuple, int] = {}
    for r in rows:
        totals[(r["expectation"], r["severity"])] = totals.get((r["expectation"], r["severity"]), 0) + r["failed"]
    print("\nData quality / Qualité des données (failed rows per expectation):", file=out)
    for (name, sev), n in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<36}{sev:<9}{n:>6}", file=out)
    reports = sorted((settings.data_dir / "reports" / "dq").glob("*/index.html"))
    print(f"  data_quality_report: {report_state}"
          + (f"; open {reports[-1]}" if reports else ""), file=out)
    print("  details: hl7ics dq report [--facility CODE]", file=out)


def print_summary(settings: Settings, out=None, run_id: str | None = None) -> None:
    """What ``run_id`` did (``ingest_run``), then what the warehouse holds from every run."""
    out = out or sys.stdout
    from .warehouse import get_engine, printable_url

    eng = get_engine(settings.warehouse_url)
    header = f"{'facility':<16}{'files':>7}{'messages':>10}{'loaded':>9}{'duplicates':>12}{'quarantined':>13}"

    def table(rows) -> None:
        print(header, file=out)
        tot = [0] * 5
        for code, *vals in rows:
            vals = [v or 0 for v in vals]
            tot = [a + b for a, b in zip(tot, vals)]
            print(f"{code:<16}{vals[0]:>7}{vals[1]:>10}{vals[2]:>9}{vals[3]:>12}{vals[4]:>13}", file=out)
        print(f"{'TOTAL':<16}{tot[0]:>7}{tot[1]:>10}{tot[2]:>9}{tot[3]:>12}{tot[4]:>13}", file=out)

    if run_id:
        with eng.connect() as c:
            this_run = c.execute(text(
                "SELECT facility_code, files, messages, loaded, duplicates, quarantined FROM ingest_run "
                "WHERE run_id = :r ORDER BY facility_code"), {"r": run_id}).all()
        print("\nThis run / Cette exécution", file=out)
        if any(r[1] for r in this_run):
            table(this_run)
        else:
            print("  no new file: everything here was ingested before (nothing is loaded twice)\n"
                  "  aucun nouveau fichier : tout a déjà été intégré (rien n'est chargé deux fois)", file=out)
    with eng.connect() as c:
        rows = c.execute(text(
            "SELECT f.facility_code, COUNT(DISTINCT f.sha256), COUNT(m.id), "
            "SUM(CASE WHEN m.status='loaded' THEN 1 ELSE 0 END), SUM(CASE WHEN m.status='duplicate' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN m.status='quarantined' THEN 1 ELSE 0 END) FROM ingested_file f "
            "LEFT JOIN message_store m ON m.file_sha256 = f.sha256 GROUP BY f.facility_code ORDER BY 1")).all()
        tables = ["message_store", "quarantine", "ingested_file", "dim_facility", "phi_patient", "dim_patient",
                  "fact_encounter", "fact_lab_order", "fact_lab_result", "fact_medication", "fact_immunization",
                  "fact_charge", "fact_coverage"]
        counts = {t: c.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in tables}
        reasons = c.execute(text("SELECT reason, COUNT(*) FROM quarantine WHERE resolved_at IS NULL "
                                 "GROUP BY reason ORDER BY 2 DESC")).all()
    print("\nIn the warehouse, all runs, per facility / Dans l'entrepôt, toutes exécutions, par formation",
          file=out)
    table(rows)
    if reasons:
        print("\nQuarantine reasons / Motifs de quarantaine: " + ", ".join(f"{r} {n}" for r, n in reasons), file=out)
    print("\nRows per warehouse table / Lignes par table", file=out)
    for t, n in counts.items():
        print(f"  {t:<20}{n:>9}", file=out)
    print(f"\nWarehouse / Entrepôt: {printable_url(settings.warehouse_url)}", file=out)
    if settings.warehouse_url.startswith("sqlite"):
        print(f"  open it with: sqlite3 {settings.warehouse_url.split('///', 1)[1]}", file=out)
    print("\nTwo queries to paste / Deux requêtes à coller:", file=out)
    for title, sql in EXAMPLE_QUERIES:
        print(f"\n-- {title}\n{sql}", file=out)
