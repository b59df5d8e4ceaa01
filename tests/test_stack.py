"""Acceptance: the production topology without Docker. Airflow on Postgres with CeleryExecutor and a real
Celery worker, the ledger and MLflow on Postgres, Redis as broker; llm_batch, nightly_regression and
monthly_cost_report triggered through the REST API succeed; the ledger, the MLflow server and the SMTP
sink hold their results; everything is torn down and the databases dropped."""

from __future__ import annotations

import email
import os
from datetime import UTC, datetime
from email.header import decode_header, make_header
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import create_engine, text

from llmops.settings import load_settings
from llmops.stack import DEFAULT_POSTGRES, Stack, new_config
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("stack") / "data"
    # schedules off: only the runs the test triggers execute (not last night's nightly or last month's report)
    cfg = new_config(data, default_ports=False, worker_concurrency=4, schedules=False)
    settings = load_settings(home=ROOT, data_dir=data)
    st = Stack(settings, cfg)
    try:
        st.start()
    except BaseException:
        st.stop(drop=True)
        raise
    yield st
    dropped = st.stop(drop=True)
    assert sorted(dropped) == sorted(cfg.databases)
    engine = create_engine(DEFAULT_POSTGRES)
    with engine.connect() as conn:
        left = set(conn.execute(text("SELECT datname FROM pg_database")).scalars()) & set(cfg.databases)
    engine.dispose()
    assert not left
    for port in (cfg.api_port, cfg.mlflow_port, cfg.simulator_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_three_dags_on_celery_and_postgres(stack: Stack):
    from mlflow import MlflowClient

    from llmops.ledger import Ledger

    cfg = stack.cfg
    month = datetime.now(UTC).astimezone(ZoneInfo(stack.settings.timezone)).strftime("%Y-%m")
    batch = stack.trigger("llm_batch")  # the form defaults: 25 support tickets
    night = stack.trigger("nightly_regression", {"prompts": ["support_ticket_classify"]})
    states = stack.wait_runs({"llm_batch": batch, "nightly_regression": night}, timeout=420)
    assert states == {"llm_batch": "success", "nightly_regression": "success"}, states
    report = stack.trigger("monthly_cost_report", {"month": month, "send": True})  # this month: includes the batch
    assert stack.wait_runs({"monthly_cost_report": report}, timeout=300) == {"monthly_cost_report": "success"}

    # every task instance ran on the stack's own Celery queue, which only its worker consumes
    for dag_id, run_id in (("llm_batch", batch), ("nightly_regression", night), ("monthly_cost_report", report)):
        tis = httpx.get(
            f"{cfg.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", headers=stack.headers(), timeout=60
        ).json()["task_instances"]
        assert tis and all(t["queue"] == cfg.queue and t["state"] == "success" for t in tis), tis
        assert all(t["hostname"] for t in tis)
    worker_log = (stack.sup.log_dir / "celery-worker-0.log").read_text()
    assert "llm_batch" in worker_log and "nightly_regression" in worker_log

    # the ledger is on Postgres
    ledger = Ledger(cfg.db_url("ledger"), migrate=False)
    try:
        assert ledger.engine.dialect.name == "postgresql"
        rows = ledger.run_rows(batch)
        assert len(rows) == 25 and {r.status for r in rows} == {"ok", "blocked"}
        run = ledger.batch_run(batch)
        assert run is not None and run.status == "reconciled"
        with ledger.transaction() as s:
            evals = s.execute(text("SELECT prompt_name, mlflow_run_id FROM eval_results")).all()
            batch_cost = s.execute(
                text("SELECT sum(cost_nanousd) FROM llm_calls WHERE run_id = :r"), {"r": batch}
            ).scalar()
    finally:
        ledger.dispose()
    assert evals and all(p == "support_ticket_classify" and rid for p, rid in evals)
    assert batch_cost > 0

    # the nightly runs are in the MLflow server (on Postgres)
    client = MlflowClient(tracking_uri=cfg.mlflow_url)
    for _prompt, run_id in evals:
        r = client.get_run(run_id)
        assert r.info.status == "FINISHED" and any(k.endswith("overall") or "/" in k for k in r.data.metrics)

    # the monthly report mails reached the SMTP sink
    mails = [email.message_from_bytes(p.read_bytes()) for p in sorted((cfg.data_dir / "mail").glob("*.eml"))]
    subjects = [str(make_header(decode_header(m["Subject"]))) for m in mails]
    assert any(month in s and "support" in s.lower() for s in subjects), subjects
    assert any("finance@example.com" in (m["To"] or "") for m in mails), subjects

    # the plugin's metrics on this api-server: Prometheus' bearer token, numbers from the Postgres ledger
    r = httpx.get(f"{cfg.api}/llmops/metrics", headers={"Authorization": f"Bearer {cfg.metrics_token}"}, timeout=60)
    assert r.status_code == 200 and "llmops_requests_total" in r.text
    assert httpx.get(f"{cfg.api}/llmops/metrics", timeout=60).status_code == 401


def test_stack_up_bad_postgres_is_one_error_line(tmp_path):
    import subprocess
    import sys

    from llmops.platform import free_port

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmops",
            "stack",
            "up",
            "--name",
            "llmops_stack_badpg",
            "--postgres-url",
            f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/postgres",
            "--airflow-port",
            str(free_port()),
            "--mlflow-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "LLMOPS_DATA_DIR": str(tmp_path),
            "LLMOPS_SIMULATOR_PORT": str(free_port()),
            "LLMOPS_SMTP_PORT": str(free_port()),
        },
    )
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: cannot create the stack's databases") and "— fix: " in lines[-1], r.stderr
