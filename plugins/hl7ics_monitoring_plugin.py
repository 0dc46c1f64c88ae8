"""Airflow plugin: the interface monitoring page inside the Airflow UI.

Registers the FastAPI app of ``hl7ics_airflow.monitoring_ui`` under ``/hl7ics-monitoring`` in the
API server (``fastapi_apps``) and a navigation entry, "Interface monitoring", that shows it inside
the Airflow UI (``external_views`` with a ``url_route``: rendered in an iframe). The page requires
Airflow's login (see monitoring_ui.py). Input: the warehouse tables the ``interface_monitoring``
DAG fills. Output: the page; nothing is written.

Cheap to import (every Airflow process that loads plugins imports this file): the app is built on
its first request.
"""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from hl7ics_airflow.monitoring_ui import URL_PREFIX, app


class Hl7icsMonitoringPlugin(AirflowPlugin):
    name = "hl7ics_monitoring"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "hl7ics interface monitoring"}]
    external_views = [{
        "name": "Interface monitoring",
        # Relative, without a leading slash: the UI resolves it against its <base href>, so the
        # link still works when Airflow is served under a sub-path ([api] base_url).
        "href": f"{URL_PREFIX.lstrip('/')}/",
        "url_route": URL_PREFIX.lstrip("/"),
        "destination": "nav",
        "category": "browse",
    }]
