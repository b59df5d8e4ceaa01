"""Airflow plugin: the LLMOps page and the Prometheus metrics, mounted on the api-server at ``/llmops``.

* ``/llmops/``            the LLMOps page (HTML; behind Airflow's login, the UI's ``_token`` cookie works)
* ``/llmops/api/summary`` the same numbers as JSON (Airflow login)
* ``/llmops/metrics``     Prometheus text computed from the ledger (``LLMOPS_METRICS_TOKEN`` bearer, or a login)

A navigation entry "LLMOps" (Browse menu) shows the page inside the Airflow UI at ``/plugin/llmops``.
Everything is computed by ``llmops`` from the ledger; this file is wiring.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

app = FastAPI(title="LLMOps", docs_url=None, redoc_url=None, openapi_url=None)
_bearer = HTTPBearer(auto_error=False)


async def _login(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Any:  # noqa: B008
    """Airflow's own login check (a Bearer token or the UI's cookie; 401/403 otherwise). Imported on the first
    request: every Airflow process loads plugins, and the API security module costs about a second to import."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, creds)


LoginDep = Annotated[Any, Depends(_login)]


@lru_cache(maxsize=1)
def _ledger() -> Any:
    from llmops.ledger import Ledger

    return Ledger(_settings().ledger_database_url)


@lru_cache(maxsize=1)
def _settings() -> Any:
    from llmops.settings import load_settings

    return load_settings()


def _policy() -> Any:
    from llmops.policy import load_policy

    return load_policy(_settings().policy_path)  # re-read per request: policy edits show without a restart


def _board() -> Any:
    from llmops import dashboard

    s = _settings()
    return dashboard.build(_ledger(), _policy(), s.timezone, mlflow_ui=s.mlflow_ui, quality_min=s.alert_quality_min)


@app.get("/", response_class=HTMLResponse)
def page(user: LoginDep) -> HTMLResponse:
    from llmops.dashboard import render_html

    return HTMLResponse(render_html(_board(), user=user.get_name()), headers={"Cache-Control": "no-store"})


@app.get("/api/summary")
def summary(user: LoginDep) -> JSONResponse:
    return JSONResponse(_board().to_dict(), headers={"Cache-Control": "no-store"})


@app.get("/metrics")
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.concurrency import run_in_threadpool

    from llmops import metrics as m

    token = _settings().metrics_token
    expected = token.get_secret_value() if token is not None else ""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not (expected and scheme.lower() == "bearer" and secrets.compare_digest(presented.encode(), expected.encode())):
        creds = HTTPAuthorizationCredentials(scheme=scheme, credentials=presented) if presented else None
        await _login(request, creds)  # raises 401/403 without a valid Airflow login; an empty token is no token
    s = _settings()
    try:  # the ledger queries block: off the api-server's event loop, which also serves the task API
        body = await run_in_threadpool(m.render, _ledger(), _policy(), s.timezone)
    except Exception as exc:  # a scrape must not leak a traceback; Prometheus records the failure
        raise HTTPException(status_code=503, detail=f"ledger unavailable: {type(exc).__name__}") from None
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class LlmopsPlugin(AirflowPlugin):
    name = "llmops"
    fastapi_apps = [{"app": app, "url_prefix": "/llmops", "name": "LLMOps"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {
            "name": "LLMOps",
            "href": "/llmops/",
            "url_route": "llmops",
            "destination": "nav",
            "category": "browse",
        }
    ]
