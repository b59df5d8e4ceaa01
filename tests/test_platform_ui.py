"""Acceptance: the README's platform (``llmops up``) comes up, and triggering llm_batch from its form in a
real browser (headless Chromium) with the defaults succeeds; outputs and ledger rows exist."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmops.platform import free_port, port_open
from tests.conftest import ROOT, add_eval_result

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: run `make test` (it installs it) or `apt-get install chromium`")
    data = tmp_path_factory.mktemp("platform") / "data"
    ports = {"airflow": free_port(), "mlflow": free_port(), "sim": free_port(), "smtp": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LLMOPS_"))}
    env.update(
        LLMOPS_HOME=str(ROOT),
        LLMOPS_DATA_DIR=str(data),
        LLMOPS_SIMULATOR_PORT=str(ports["sim"]),
        LLMOPS_SMTP_PORT=str(ports["smtp"]),
    )
    log = open(tmp_path_factory.mktemp("logs") / "up.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmops",
            "up",
            "--no-trigger",
            "--airflow-port",
            str(ports["airflow"]),
            "--mlflow-port",
            str(ports["mlflow"]),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 420
    text = ""
    while time.monotonic() < deadline:
        log.seek(0)
        text = log.read()
        if "The platform is up" in text or proc.poll() is not None:
            break
        time.sleep(1)
    assert "The platform is up" in text, text[-3000:]
    password = re.search(r"login: admin / (\S+)", text).group(1)
    yield {"ports": ports, "password": password, "data": data, "log": text}
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    proc.wait(90)
    for port in ports.values():  # everything stopped (a loaded machine may need a few seconds to close sockets)
        deadline = time.monotonic() + 30
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(1)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_up_serves_airflow_mlflow_simulator_and_mail(platform):
    p = platform["ports"]
    assert httpx.get(f"http://127.0.0.1:{p['mlflow']}/health", timeout=10).is_success
    assert httpx.get(f"http://127.0.0.1:{p['sim']}/v1/models", timeout=10).is_success
    health = httpx.get(f"http://127.0.0.1:{p['airflow']}/api/v2/monitor/health", timeout=10).json()
    assert health["scheduler"]["status"] == "healthy"
    base = f"http://127.0.0.1:{p['airflow']}"
    token = httpx.post(
        f"{base}/auth/token", json={"username": "admin", "password": platform["password"]}, timeout=10
    ).json()["access_token"]
    dags = httpx.get(f"{base}/api/v2/dags", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["dags"]
    assert {d["dag_id"]: d["is_paused"] for d in dags} == {
        "llm_batch": False,
        "monthly_cost_report": False,
        "nightly_regression": False,
        "llmops_health": False,
    }
    import smtplib
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.com", "sink check"
    msg.set_content("hello")
    with smtplib.SMTP("127.0.0.1", p["smtp"], timeout=10) as smtp:
        smtp.send_message(msg)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list((platform["data"] / "mail").glob("*.eml")):
        time.sleep(0.2)
    assert "Subject: sink check" in next((platform["data"] / "mail").glob("*.eml")).read_text()


def test_trigger_llm_batch_from_the_form(platform, record_property):
    from playwright.sync_api import sync_playwright

    from llmops.ledger import Ledger

    base = f"http://localhost:{platform['ports']['airflow']}"
    ARTIFACTS.mkdir(exist_ok=True)
    token = httpx.post(
        f"{base}/auth/token", json={"username": "admin", "password": platform["password"]}, timeout=10
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    before = {
        r["dag_run_id"]
        for r in httpx.get(f"{base}/api/v2/dags/llm_batch/dagRuns", headers=headers, timeout=10).json()["dag_runs"]
    }
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/")
        page.locator("input[name=username]").fill("admin")
        page.locator("input[name=password]").fill(platform["password"])
        page.locator("button[type=submit]").click()
        page.wait_for_url(re.compile(r"^(?!.*/auth/).*$"), timeout=60_000)
        page.goto(f"{base}/dags/llm_batch")
        page.get_by_role("button", name="Trigger").first.click()
        dialog = page.get_by_role("dialog")
        dialog.wait_for(timeout=30_000)
        dialog.get_by_role("button", name="What to run").click()
        page.wait_for_timeout(500)
        form_shot = ARTIFACTS / "llm_batch_trigger_form.png"
        page.screenshot(path=str(form_shot))
        dialog.get_by_role("button", name="Trigger").last.click()  # submit with the form's defaults

        run_id = None
        deadline = time.monotonic() + 300
        state = None
        while time.monotonic() < deadline:
            try:
                runs = httpx.get(f"{base}/api/v2/dags/llm_batch/dagRuns", headers=headers, timeout=30).json()[
                    "dag_runs"
                ]
            except httpx.TransportError:  # a busy api-server (shared CI machine): ask again
                time.sleep(2)
                continue
            new = [r for r in runs if r["dag_run_id"] not in before]
            if new:
                run_id, state = new[0]["dag_run_id"], new[0]["state"]
                if state in ("success", "failed"):
                    break
            time.sleep(2)
        assert run_id is not None, "the form did not create a run"
        page.goto(f"{base}/dags/llm_batch/runs/{run_id}")
        page.wait_for_timeout(3000)
        run_shot = ARTIFACTS / "llm_batch_run.png"
        page.screenshot(path=str(run_shot))
        browser.close()
    record_property("screenshots", f"{form_shot} {run_shot}")
    print(f"screenshots: {form_shot} {run_shot}")
    assert state == "success"
    run = httpx.get(f"{base}/api/v2/dags/llm_batch/dagRuns/{run_id}", headers=headers, timeout=10).json()
    assert run["conf"] in ({}, None) or run["conf"].get("prompt") == "support_ticket_classify@production"

    ledger = Ledger(f"sqlite:///{platform['data'] / 'ledger.db'}")
    rows = ledger.run_rows(run_id)
    assert len(rows) == 25 and {r.status for r in rows} == {"ok", "blocked"}
    batch = ledger.batch_run(run_id)
    assert batch is not None and batch.status == "reconciled" and Path(batch.output_path).exists()


def test_llmops_page_and_metrics(platform, record_property):
    """The plugin's page and API need an Airflow login (401 without); logged in through the UI in headless
    Chromium, the LLMOps page shows the ledger's numbers; /llmops/metrics parses and matches the ledger."""
    from playwright.sync_api import sync_playwright
    from prometheus_client.parser import text_string_to_metric_families
    from sqlalchemy import func, select

    from llmops.dashboard import money
    from llmops.ledger import EvalResult, Ledger, LlmCall, Quarantine
    from llmops.pricing import usd

    base = f"http://localhost:{platform['ports']['airflow']}"
    for path in ("/llmops/", "/llmops/api/summary", "/llmops/metrics"):
        assert httpx.get(base + path, timeout=10).status_code == 401, path
    assert httpx.get(
        base + "/llmops/api/summary", headers={"Authorization": "Bearer forged"}, timeout=10
    ).status_code in (
        401,
        403,
    )

    token = httpx.post(
        f"{base}/auth/token", json={"username": "admin", "password": platform["password"]}, timeout=10
    ).json()["access_token"]
    _quiesce(base, {"Authorization": f"Bearer {token}"})  # no run may bill the ledger while it is compared

    ledger = Ledger(f"sqlite:///{platform['data'] / 'ledger.db'}")
    # a nightly result to show (the nightly DAG itself runs in the stack test)
    add_eval_result(
        ledger, night="2026-01-02", overall=0.81, cases=12, pass_rate=0.75, mlflow_run_id="0123456789abcdef"
    )
    with ledger.transaction() as s:
        n_rows = s.scalar(select(func.count()).select_from(LlmCall))
        total = int(s.scalar(select(func.coalesce(func.sum(LlmCall.cost_nanousd), 0))))
        spend = select(LlmCall.department, func.sum(LlmCall.cost_nanousd)).group_by(LlmCall.department)
        by_dept = {d: int(c) for d, c in s.execute(spend)}
        n_quarantine = s.scalar(select(func.count()).select_from(Quarantine).where(Quarantine.released_at.is_(None)))
        # the latest night of every (prompt, version, model), with its MLflow run: what the page must list
        latest: dict[tuple[str, str, str], tuple[str, str | None]] = {}
        for e in s.scalars(select(EvalResult)):
            key = (e.prompt_name, e.prompt_version, e.model)
            if key not in latest or e.night > latest[key][0]:
                latest[key] = (e.night, e.mlflow_run_id)
    assert n_rows > 0 and n_quarantine > 0, "the llm_batch test leaves calls and quarantined records"

    r = httpx.get(f"{base}/llmops/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert sum(s.value for s in fams["llmops_requests"].samples if s.name == "llmops_requests_total") == n_rows
    assert sum(s.value for s in fams["llmops_cost_usd"].samples if s.name == "llmops_cost_usd_total") == pytest.approx(
        float(usd(total))
    )

    shot = ARTIFACTS / "llmops_page.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(f"{base}/")
        page.locator("input[name=username]").fill("admin")
        page.locator("input[name=password]").fill(platform["password"])
        page.locator("button[type=submit]").click()
        page.wait_for_url(re.compile(r"^(?!.*/auth/).*$"), timeout=60_000)
        page.goto(f"{base}/plugin/llmops")  # the navigation entry's route: the page inside Airflow's UI
        frame = page.frame_locator("iframe").first
        frame.locator("#budgets").wait_for(timeout=60_000)
        assert frame.locator("#total-requests").inner_text() == str(n_rows)
        assert frame.locator("#total-cost").inner_text() == money(usd(total))
        for dept, nano in by_dept.items():
            cell = frame.locator(f'#budgets tr[data-department="{dept}"] .spent')
            assert cell.inner_text() == money(usd(int(nano))), dept
        assert frame.locator("#quarantine-total").inner_text() == str(n_quarantine)
        assert frame.locator("#evaluations tr[data-prompt]").count() == len(latest)
        mlflow_ui = f"http://localhost:{platform['ports']['mlflow']}"
        for (prompt, version, model), (night, run_id) in latest.items():
            row = frame.locator(
                f'#evaluations tr[data-prompt="{prompt}"][data-version="{version}"][data-model="{model}"]'
            )
            assert night in row.inner_text(), (prompt, version, model)
            if run_id:
                assert row.locator("a").get_attribute("href") == f"{mlflow_ui}/#/runs/{run_id}"
        assert ("support_ticket_classify", "1.1.0", "sim-small") in latest
        page.wait_for_timeout(500)
        page.screenshot(path=str(shot), full_page=True)
        # the page itself, full size, for the record
        page.goto(f"{base}/llmops/")
        page.locator("#budgets").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "llmops_page_direct.png"), full_page=True)
        browser.close()
    record_property("screenshots", str(shot))
    print(f"screenshot: {shot}")


def _quiesce(base: str, headers: dict[str, str], timeout: float = 600) -> None:
    """Wait until no run that bills the ledger is queued or running: unpausing the DAGs at start-up makes the
    scheduler run the latest interval of the scheduled ones (nightly_regression bills the ledger), and the
    page's numbers are compared with the ledger's only once nothing writes to it any more. (llmops_health
    only reads the ledger; its runs every 10 minutes are not waited for.)"""
    deadline = time.monotonic() + timeout
    active: list[str] = []
    while time.monotonic() < deadline:
        try:
            runs = httpx.get(
                f"{base}/api/v2/dags/~/dagRuns",
                params=[("state", "queued"), ("state", "running")],
                headers=headers,
                timeout=30,
            ).json()["dag_runs"]
        except httpx.TransportError:  # a busy api-server: ask again
            time.sleep(2)
            continue
        active = [f"{r['dag_id']}/{r['dag_run_id']}" for r in runs if r["dag_id"] != "llmops_health"]
        if not active:
            return
        time.sleep(3)
    pytest.fail(f"DAG runs still active after {timeout:.0f} s: {active}")
