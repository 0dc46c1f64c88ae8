"""Task bodies of the ``insurer_claims_extract_<code>`` DAGs (see dags/insurer_claims_extract.py).

Inputs: the insurer's code, the run's ``run_after`` (the scheduled time; the clock for claim
readiness and the period that just ended, so a re-run of the same DAG run computes the same
thing), the settings (warehouse URL from the Airflow connection ``hl7ics_warehouse`` first, see
runtime.py; config directory; data directory) and ``config/insurers.yaml``. Outputs: the insurer's
claims rebuilt, the extract of the period that just ended under ``<data_dir>/claims/``, its
delivery (outbox folder or SFTP via the Airflow connection named in the configuration). Each
function returns a small JSON-able dict for XCom: codes, counts and amounts, no patient data.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from hl7ics_airflow.runtime import settings

log = logging.getLogger(__name__)


def insurers_for_dags():
    """The configured insurers, read when the DAG file is parsed: PyYAML and the validator only
    (no database, no pandas or pyarrow), so parsing stays cheap and a bad file is an import error
    that names the insurer and the key."""
    from transforms.claims import load_insurers
    from transforms.config import Settings

    s = Settings.load()
    return load_insurers(s.config_dir / "insurers.yaml", [f.code for f in s.facilities()]).insurers


def _config(s):
    from transforms.claims import load_insurers

    return load_insurers(s.config_dir / "insurers.yaml", [f.code for f in s.facilities()])


def _when(run_after) -> datetime:
    if run_after is None:
        return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    if run_after.tzinfo is not None:
        run_after = run_after.astimezone(timezone.utc).replace(tzinfo=None)
    return run_after.replace(microsecond=0)


def build(insurer_code: str, run_after: datetime | None = None) -> dict:
    """Rebuild this insurer's claims as of the run time."""
    from transforms.claims import build_claims
    from transforms.warehouse import get_engine

    s = settings()
    r = build_claims(get_engine(s.warehouse_url), _config(s), _when(run_after), insurers=[insurer_code])
    mine = r["insurers"][insurer_code]
    return {"now": r["now"], "charges": r["charges"], "skipped": {k: v for k, v in r["skipped"].items() if v},
            **{k: mine[k] for k in ("claims", "open", "ready", "sent", "corrected", "written", "deleted")}}


def extract(insurer_code: str, run_after: datetime | None = None) -> dict:
    """Extract the period that just ended (ready claims of the period, and earlier ready claims no
    extract carried yet). A retry or re-run rewrites the same files. Corrections are left to a
    person with a reason (``hl7ics claims extract --reason``) and counted here: if claims of this
    period changed since it was extracted, its recorded version is passed on unchanged (so a
    delivery that failed still goes out) and the run logs a warning."""
    from transforms.claims import CorrectionNeeded, previous_period, recorded_extract, status
    from transforms.claims import extract as run_extract
    from transforms.warehouse import get_engine

    s = settings()
    cfg = _config(s)
    ins = cfg.get(insurer_code)
    when = _when(run_after)
    engine = get_engine(s.warehouse_url)
    period = previous_period(ins.period, when)
    try:
        res = run_extract(engine, cfg, insurer_code, period.label, s.data_dir / "claims", when).as_dict()
    except CorrectionNeeded as exc:
        log.warning("%s; delivering the recorded version as it is", exc)
        res = recorded_extract(engine, insurer_code, period.label)
    due = sum(r["corrections_pending"] for r in status(engine, insurer_code))
    if due:
        log.warning("%s: %d sent claims changed and need a correction version (hl7ics claims extract --reason)",
                    insurer_code, due)
    return {**res, "corrections_pending": due}


def deliver(insurer_code: str, extracted: dict) -> dict:
    """Deliver the extract, and every earlier version of the insurer not delivered yet (a
    correction issued by hand, a delivery that failed), to the insurer's configured target; an
    extract already delivered is not sent twice (a retried or re-run DAG is harmless)."""
    from transforms.claims import deliver_extract, deliver_pending
    from transforms.warehouse import get_engine

    from hl7ics_airflow.alerts import resolve_connection

    s = settings()
    ins = _config(s).get(insurer_code)
    from transforms.claims import ClaimsError

    engine, spec = get_engine(s.warehouse_url), ins.delivery_spec(s.data_dir)
    # This run's extract first: an older version that cannot go out must not hold it back.
    this = deliver_extract(engine, int(extracted["extract_id"]), spec, resolve_connection=resolve_connection)
    pending = deliver_pending(engine, insurer_code, spec, resolve_connection)
    failed = [r for r in pending if r["status"] == "failed"]
    if failed:
        raise ClaimsError(f"{insurer_code}: {len(failed)} earlier extract version(s) could not be delivered "
                          f"({'; '.join(r['error'] for r in failed)[:500]}); see hl7ics claims status")
    return {**this, "versions_delivered": len(pending)}
