"""Task bodies of the ``facility_batch_ingest`` DAG (see dags/facility_batch_ingest.py).

Each function takes and returns small JSON-able values (facility codes, content hashes, counts), so
neither patient data nor senders' file names travel through XCom; the messages go straight from
the staged file to the warehouse inside ``transforms.ingest``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hl7ics_airflow.runtime import settings

if TYPE_CHECKING:
    from transforms.ingest import Ingestor


def _new(run_id: str) -> "Ingestor":
    # Imported here: the DAG processor parses the DAG files every 30 s, and the loader's modules
    # are only needed by the running task.
    from transforms.ingest import Ingestor

    return Ingestor(settings(), run_id=run_id)


def facility_codes() -> list[str]:
    ing = _new("sync")
    ing.sync_facilities()
    return [f.code for f in ing.settings.facilities() if f.sources]


def _ingestor(run_id: str) -> "Ingestor":
    """An ingestor whose sources and alert channels find connections the way Airflow does
    (connections defined in Airflow or a secrets backend, not only AIRFLOW_CONN_* variables)."""
    from hl7ics_airflow.alerts import resolve_connection

    ing = _new(run_id)
    ing.resolve_connection = resolve_connection
    ing.loader.resolve_connection = resolve_connection
    return ing


def pull(facility: str, run_id: str) -> dict:
    return {"facility": facility, "files": _ingestor(run_id).stage(facility)}


def load(pulled: dict, run_id: str) -> dict:
    ing = _ingestor(run_id)
    facility = pulled["facility"]
    results = [{"sha256": sha, "status": r.status, **r.counts.as_dict()}
               for sha, r in zip(pulled["files"], ing.ingest_staged(facility, pulled["files"]))]
    queued = None
    if any(src.type == "queue" for src in ing.facilities[facility].sources):
        # Messages from a queue are stored and committed before they are acked, within this task.
        queued = ing.ingest_queues(facility).as_dict()
    raise_on_breach(ing.loader.dq_breaches)
    return {"facility": facility, "files": results, "queue": queued}


def raise_on_breach(breaches: list[dict]) -> None:
    """Fail the task (no retry: bad data) once every message is stored, when a batch was held."""
    if breaches:
        from transforms.errors import DataQualityError

        held = sum(b["validated"] for b in breaches)
        failed = sum(b["failed"] for b in breaches)
        raise DataQualityError(f"{len(breaches)} batch(es) held in quarantine by the data-quality threshold: "
                               f"{failed} of {held} messages failed error checks (reason DQ_THRESHOLD; "
                               "see dq_result, fix, then hl7ics replay --reason DQ_THRESHOLD)")


def archive(loaded: dict, run_id: str) -> dict:
    ing = _ingestor(run_id)
    moved = ing.archive_all(loaded["facility"], [f["sha256"] for f in loaded["files"]])
    return {"facility": loaded["facility"], "archived": moved}


def fail_run() -> None:
    from transforms.errors import BadDataError

    raise BadDataError("a facility's task failed in this run (see its ops_alert row and task log)")


def summarize(run_id: str, facilities: list[str]) -> list[dict]:
    return _new(run_id).record_run(facilities)


def process_received(run_id: str = "mllp_realtime") -> dict:
    """Load what the MLLP listener stored (the ``mllp_realtime`` DAG's work step)."""
    from transforms.facts import PatientKeyer
    from transforms.load import Loader
    from transforms.realtime import process_received as run
    from transforms.warehouse import get_engine

    s = settings()
    from hl7ics_airflow.alerts import resolve_connection

    loader = Loader(s.facilities(), PatientKeyer.from_env(s.home), run_id=run_id)
    loader.resolve_connection = resolve_connection
    counts = run(get_engine(s.warehouse_url), loader).as_dict()
    raise_on_breach(loader.dq_breaches)
    return counts
