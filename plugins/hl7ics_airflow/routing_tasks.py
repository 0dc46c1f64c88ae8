"""Task bodies of the ``route_and_deliver`` DAG: route newly loaded messages into the outbound
queue, then deliver what is due.

Inputs: ``config/routes.yaml`` read through ``transforms.routing.RouteConfig`` (destinations and
ordered rules), the warehouse, ``config/alerting.yaml``, Airflow connections for SFTP and RabbitMQ
destinations and alert channels. Outputs: small JSON-able counts (no patient data travels through
XCom); the work and its guarantees are in ``transforms.outbound``. Without ``routes.yaml`` both
tasks do nothing (routing is not configured on this deployment).
"""
from __future__ import annotations

import dataclasses
import os

from hl7ics_airflow.runtime import settings

ROUTES_FILE = "routes.yaml"
# A run ends its deliveries in time for the next minute's run; what is left waits for it.
MAX_SECONDS = float(os.environ.get("HL7ICS_DELIVERY_MAX_SECONDS", "50"))


def _as_dict(obj) -> dict:
    if isinstance(obj, dict):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if callable(getattr(obj, "as_dict", None)):
        return dict(obj.as_dict())
    return dict(vars(obj))


def destination_specs(config) -> dict[str, dict]:
    """``{name: parameters}`` from a RouteConfig's destinations, as the plain dicts ``deliver_due``
    takes: ``Destination.spec()`` where there is one; else a mapping by name or a list of objects
    or mappings with a ``name``, parameters nested under ``params``/``options``/``parameters``
    lifted to the top level."""
    raw = config.get("destinations") if isinstance(config, dict) else getattr(config, "destinations", None)
    if isinstance(raw, dict):
        items = list(raw.items())
    else:
        items = [(_as_dict(d).get("name"), d) for d in raw or ()]
    out: dict[str, dict] = {}
    for name, d in items:
        if callable(getattr(d, "spec", None)):  # transforms.routing.Destination
            out[str(name)] = dict(d.spec())
            continue
        spec = _as_dict(d)
        for nested in ("params", "options", "parameters"):
            if isinstance(spec.get(nested), dict):
                spec = {**{k: v for k, v in spec.items() if k != nested}, **spec[nested]}
        spec.pop("name", None)
        out[str(name)] = spec
    return out


def _config(s):
    path = s.config_dir / ROUTES_FILE
    if not path.is_file():
        return None
    from transforms.routing import RouteConfig

    return RouteConfig.load(path)


def route_messages() -> dict:
    """Route the loaded messages not routed yet (idempotent); copies held for review or that
    failed to build alert (``routing_held``)."""
    from transforms.alerting import Alerter
    from transforms.facts import PatientKeyer
    from transforms.outbound import route_pending
    from transforms.warehouse import get_engine

    from hl7ics_airflow.alerts import resolve_connection

    s = settings()
    cfg = _config(s)
    if cfg is None:
        return {"skipped": "no routes.yaml"}
    from transforms.routing import Router

    engine = get_engine(s.warehouse_url)
    alerter = Alerter(engine, None, resolve_connection)
    return route_pending(engine, Router(cfg), keyer=PatientKeyer.from_env(s.home), alerter=alerter)


def deliver_messages() -> dict:
    """Deliver what is due to every configured destination; dead letters alert."""
    from transforms.alerting import Alerter
    from transforms.outbound import deliver_due
    from transforms.warehouse import get_engine

    from hl7ics_airflow.alerts import resolve_connection

    s = settings()
    cfg = _config(s)
    if cfg is None:
        return {"skipped": "no routes.yaml"}
    engine = get_engine(s.warehouse_url)
    alerter = Alerter(engine, None, resolve_connection)
    return deliver_due(engine, destination_specs(cfg), alerter=alerter, resolve_connection=resolve_connection,
                       max_seconds=MAX_SECONDS)
