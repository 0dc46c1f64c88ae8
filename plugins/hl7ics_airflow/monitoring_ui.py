"""The interface monitoring page, served by Airflow's API server (plugin ``hl7ics_monitoring``).

Routes, mounted under ``/hl7ics-monitoring`` by ``plugins/hl7ics_monitoring_plugin.py``:

- ``GET /``: the server-rendered page (``transforms.monitoring_page.render_page``): interfaces of
  the latest ``interface_health`` snapshot with their status colour, 24-hour sparklines, volume and
  errors per day over 7 days, open alerts and open quarantine per reason. Query parameters
  ``region`` and ``facility`` filter it (a plain GET form, no script).
- ``GET /api/interfaces``: the same snapshot as JSON, same filters.

Every route requires Airflow's authentication (``GetUserDep``: an ``Authorization: Bearer <JWT>``
header, else the ``_token`` cookie the Airflow UI sets at login); plugin routes are public unless
they ask for it. Without credentials: 401; with an invalid token: 403. Being logged in is not
enough: the user must be allowed to read the ``interface_monitoring`` DAG (the auth manager's
``is_authorized_dag``), whose results the page shows; anyone else gets 403 (an insurer's account
limited to its own DAGs, a single-sign-on user without a role). The warehouse URL is
resolved per request (``hl7ics_airflow.runtime.settings``: the ``hl7ics_warehouse`` connection, else
``HL7ICS_WAREHOUSE_URL``, else the embedded SQLite file), so nothing is cached across a change.

Airflow's plugin loader imports every ``.py`` file under ``plugins/`` in every process that loads
plugins (scheduler, DAG processor, triggerer, task runners), while only the API server serves this
page. So FastAPI, Airflow's security module and the routes are built on the first request
(``create_app`` through ``LazyApp``), and importing this module costs nothing noticeable.

No patient data: the page reads counts, codes, facility names and alert texts. Errors are logged
with their class only and answered with a generic 503.
"""
# No ``from __future__ import annotations`` here: FastAPI reads the route signatures' annotations,
# and GetUserDep is imported inside create_app, where postponed annotations could not resolve it.
import logging
import threading

log = logging.getLogger(__name__)

URL_PREFIX = "/hl7ics-monitoring"
MONITORING_DAG = "interface_monitoring"  # who may read this DAG may read its page
MAX_FILTER_LENGTH = 100
SECURITY_HEADERS = {
    # No script at all; inline styles and SVG only; framed by the Airflow UI (same origin) only.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _read(region, facility):
    from transforms.monitoring_page import fetch
    from transforms.warehouse import get_engine

    from hl7ics_airflow.runtime import settings

    return fetch(get_engine(settings().warehouse_url), region=region, facility=facility)


def create_app():
    """Build the FastAPI app (imports FastAPI and Airflow's security module)."""
    from typing import Annotated, Optional

    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, JSONResponse
    from sqlalchemy.exc import SQLAlchemyError

    from fastapi import Depends

    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.api_fastapi.core_api.security import GetUserDep
    from transforms.monitoring_page import render_page

    def may_read(user: GetUserDep):
        if not get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=MONITORING_DAG), user=user):
            raise HTTPException(status_code=403, detail="Forbidden")
        return user

    Reader = Annotated[object, Depends(may_read)]

    app = FastAPI(title="hl7ics interface monitoring", docs_url=None, redoc_url=None, openapi_url=None)
    Filter = Annotated[Optional[str], Query(max_length=MAX_FILTER_LENGTH)]

    def load(region, facility):
        try:
            return _read(region, facility)
        except SQLAlchemyError as exc:
            # The class only: a driver message can carry host names and the bound filter values.
            log.error("monitoring page: warehouse query failed (%s)", type(exc).__name__)
            raise HTTPException(status_code=503, detail="Entrepôt indisponible / Warehouse unavailable") from None

    # Plain ``def`` routes: FastAPI runs them in its thread pool, so the blocking warehouse queries
    # never hold the API server's event loop.
    @app.get("/", response_class=HTMLResponse)
    def page(user: Reader, region: Filter = None, facility: Filter = None) -> HTMLResponse:
        return HTMLResponse(render_page(load(region, facility)), headers=SECURITY_HEADERS)

    @app.get("/api/interfaces")
    def interfaces(user: Reader, region: Filter = None, facility: Filter = None) -> JSONResponse:
        data = load(region, facility)
        return JSONResponse({"checked_at": data.checked_at, "region": data.region, "facility": data.facility,
                             "count": len(data.interfaces), "interfaces": data.interfaces},
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    return app


class LazyApp:
    """An ASGI app that builds the real one (``factory()``) on its first request."""

    def __init__(self, factory):
        self._factory = factory
        self._app = None
        self._lock = threading.Lock()

    def get(self):
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._factory()
        return self._app

    async def __call__(self, scope, receive, send):
        await self.get()(scope, receive, send)


app = LazyApp(create_app)
