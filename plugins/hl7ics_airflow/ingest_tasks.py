"""Task bodies of the ``facility_batch_ingest`` DAG (see dags/facility_batch_ingest.py).

Each function takes and returns small JSON-able values (facility codes, content hashes, counts), so
neither patient data nor senders' file names travel through XCom; the messages go straight from
the staged file to the warehouse inside ``transforms.ingest``.
"""
from __future__ import annotations

from transforms.ingest import Ingestor

from hl7ics_airflow.runtime import settings


def facility_codes() -> list[str]:
    s = settings()
    ing = Ingestor(s, run_id="sync")
    ing.sync_facilities()
    return [f.code for f in s.facilities() if any(src.type == "folder" for src in f.sources)]


def pull(facility: str, run_id: str) -> dict:
    return {"facility": facility, "files": Ingestor(settings(), run_id=run_id).stage(facility)}


def load(pulled: dict, run_id: str) -> dict:
    ing = Ingestor(settings(), run_id=run_id)
    facility = pulled["facility"]
    results = []
    for sha in pulled["files"]:
        r = ing.ingest_staged(facility, sha)
        results.append({"sha256": sha, "status": r.status, **r.counts.as_dict()})
    return {"facility": facility, "files": results}


def archive(loaded: dict, run_id: str) -> dict:
    ing = Ingestor(settings(), run_id=run_id)
    moved = sum(1 for f in loaded["files"] if ing.archive_staged(loaded["facility"], f["sha256"]))
    return {"facility": loaded["facility"], "archived": moved}


def summarize(run_id: str, facilities: list[str]) -> list[dict]:
    return Ingestor(settings(), run_id=run_id).record_run(facilities)


def process_received() -> dict:
    """Load what the MLLP listener stored (the ``mllp_realtime`` DAG's work step)."""
    from transforms.facts import PatientKeyer
    from transforms.load import Loader
    from transforms.realtime import process_received as run
    from transforms.warehouse import get_engine

    s = settings()
    loader = Loader(s.facilities(), PatientKeyer.from_env(s.home))
    return run(get_engine(s.warehouse_url), loader).as_dict()
