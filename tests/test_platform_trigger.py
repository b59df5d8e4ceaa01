"""`llmops up` triggers its llm_batch run through Airflow's REST API: a 5xx (the embedded SQLite metadata
database busy while the first scheduled runs start) is retried, and a 5xx that still created the run does not
lead to a second run. Against a real HTTP server on loopback standing in for the API's two endpoints."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from llmops.platform import trigger_run


class _Api:
    """POST /api/v2/dags/llm_batch/dagRuns answers 500 ``fail`` times (creating the run anyway when
    ``created_anyway``); GET lists the runs made."""

    def __init__(self, fail: int, created_anyway: bool) -> None:
        self.fail, self.created_anyway = fail, created_anyway
        self.posts = 0
        self.runs: list[str] = []
        self.queries: list[dict[str, list[str]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                api.posts += 1
                if api.posts <= api.fail:
                    if api.created_anyway:
                        api.runs.append(f"manual__{api.posts}")
                    self._send(500, {"detail": "database is locked"})
                    return
                api.runs.append(f"manual__{api.posts}")
                self._send(200, {"dag_run_id": api.runs[-1]})

            def do_GET(self) -> None:
                api.queries.append(parse_qs(urlparse(self.path).query))
                self._send(200, {"dag_runs": [{"dag_run_id": r} for r in api.runs], "total_entries": len(api.runs)})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("created_anyway", [False, True])
def test_a_5xx_trigger_is_retried_and_never_makes_two_runs(created_anyway: bool):
    api = _Api(fail=1, created_anyway=created_anyway)
    try:
        run_id = trigger_run(api.url, {})
    finally:
        api.server.shutdown()
    assert api.runs == [run_id]  # exactly one run, and the one returned
    assert api.posts == (1 if created_anyway else 2)
    assert api.queries and api.queries[0]["run_type"] == ["manual"] and "run_after_gte" in api.queries[0]


def test_a_trigger_that_keeps_failing_raises_after_its_attempts():
    import httpx

    api = _Api(fail=10, created_anyway=False)
    try:
        with pytest.raises(httpx.HTTPStatusError, match="500"):
            trigger_run(api.url, {}, attempts=2)
    finally:
        api.server.shutdown()
    assert api.posts == 2 and api.runs == []
