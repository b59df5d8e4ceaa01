"""Evaluation: metrics against reference numbers, golden sets, the nightly DAG tracked in MLflow with
the prompt registry mirrored, the ledger as cache, regression alerts, and the router's quality table."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llmops.errors import PromptError
from llmops.evaluation import evaluate_prompt, load_golden, rouge_l, token_f1
from llmops.gateway import Gateway
from llmops.prompts import PromptLibrary
from llmops.settings import load_settings
from llmops.simulator import SimConfig, run_in_thread
from tests.conftest import ROOT, SIM_KEY

EXAMPLES = [
    ("the cat sat on the mat", "the cat was on the mat"),
    ("Pay within 15 days of receipt.", "The Customer shall pay all invoices within fifteen days of receipt"),
    ("a b c d e", "e d c b a"),
    ("Liability is capped at three months of fees.", "total liability shall not exceed the fees paid in three months"),
    ("", "anything"),
]


def test_token_f1_known_values():
    # SQuAD v1.1 definition, worked by hand: articles and punctuation removed, bag-of-tokens overlap
    assert token_f1("the cat sat on the mat", "the cat was on the mat") == pytest.approx(0.75)  # 3/4, 3/4
    assert token_f1("Paris", "paris.") == 1.0
    assert token_f1("New York City", "York") == pytest.approx(0.5)  # p=1/3, r=1 -> 0.5
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("東京都", "東京") == pytest.approx(0.8)  # characters for Japanese: p=2/3, r=1


@pytest.mark.parametrize(("prediction", "reference"), EXAMPLES)
def test_rouge_l_matches_the_reference_implementation(prediction, reference):
    from rouge_score import rouge_scorer

    expected = rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-12)


def test_shipped_golden_sets_load_and_bad_cases_are_named(tmp_path: Path):
    lib = PromptLibrary(ROOT / "prompts")
    for name in lib.names():
        assert len(load_golden(ROOT / "prompts" / name / "eval" / "golden.jsonl")) >= 20
    bad = tmp_path / "golden.jsonl"
    bad.write_text('{"id": "a", "inputs": {}}\n{"id": "b", "input": {}}\n')
    with pytest.raises(PromptError, match=r"golden.jsonl:2: malformed golden case"):
        load_golden(bad)
    bad.write_text('{"id": "a", "inputs": {}}\n{"id": "a", "inputs": {}}\n')
    with pytest.raises(PromptError, match="duplicate case id 'a'"):
        load_golden(bad)


@pytest.fixture(scope="module")
def fast_sim():
    srv = run_in_thread(SimConfig(port=0, latency_scale=0, api_key=SIM_KEY))
    yield srv
    srv.stop()


def test_nightly_dag_tracks_every_version_and_model_in_mlflow(tmp_path: Path, fast_sim, monkeypatch, inbox):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db as airflow_db

    data = tmp_path / "data"
    monkeypatch.setenv("LLMOPS_DATA_DIR", str(data))
    monkeypatch.setenv("LLMOPS_SIMULATOR_PORT", str(fast_sim.port))
    airflow_db.initdb()
    dag = DagBag(str(ROOT / "dags")).dags["nightly_regression"]
    dr = dag.test(run_conf={"night": "2026-11-20"})
    assert str(dr.state) == "success"

    import mlflow

    settings = load_settings()
    mlflow.set_tracking_uri(settings.mlflow_uri)
    lib = PromptLibrary(ROOT / "prompts")
    policy_models = {"sim-small", "sim-medium", "sim-large"}
    client = mlflow.MlflowClient()
    for name in lib.names():
        runs = mlflow.search_runs(
            experiment_names=[f"llmops/{name}"], filter_string="tags.`llmops.night` = '2026-11-20'"
        )
        children = runs[runs["tags.llmops.version"].notna()]
        expected = {(str(v.version), m) for v in lib.versions(name) for m in lib.meta(name).candidate_models}
        assert set(zip(children["tags.llmops.version"], children["tags.llmops.model"], strict=True)) == expected
        assert set(lib.meta(name).candidate_models) <= policy_models
        for col in (
            "metrics.overall/mean",
            "metrics.pass_rate",
            "metrics.cost_usd",
            "metrics.tokens",
            "metrics.latency_p95_ms",
            "metrics.length/mean",
            "metrics.pii_leak/mean",
        ):
            assert children[col].notna().all(), (name, col)
        assert children["params.golden_set_hash"].nunique() == 1
        from llmops.evaluation.tracking import registered_versions

        registered = registered_versions(client, name)
        assert set(registered) == {str(v.version) for v in lib.versions(name)}
        assert len(list(client.search_prompt_versions(name))) == len(registered)  # never registered twice
        for alias, target in lib.meta(name).aliases.items():
            pv = client.get_prompt_version_by_alias(name, alias)
            assert pv.tags["llmops_version"] == str(lib.resolve(f"{name}@{target}").version)

    # the second night with nothing changed makes no model calls: the ledger is the cache
    dr2 = dag.test(run_conf={"night": "2026-11-21"})
    assert str(dr2.state) == "success"
    report = next(ti for ti in dr2.get_task_instances() if ti.task_id == "report")
    assert report.state == "success"
    gw = Gateway(load_settings())
    from sqlalchemy import func, select

    from llmops.ledger import EvalResult, LlmCall

    with gw.ledger.transaction() as s:
        calls = s.scalar(select(func.count()).select_from(LlmCall).where(LlmCall.purpose == "evaluation"))
        nights = s.scalars(select(EvalResult.night).distinct()).all()
    total_cases = sum(
        len(load_golden(ROOT / "prompts" / n / "eval" / "golden.jsonl"))
        * len(lib.versions(n))
        * len(lib.meta(n).candidate_models)
        for n in lib.names()
    )
    assert calls == total_cases  # one ledger row per case × version × model, never two
    assert sorted(nights) == ["2026-11-20", "2026-11-21"]
    # the router reads the quality table
    with gw.ledger.transaction() as s:
        measured = s.scalar(
            select(EvalResult.overall).where(
                EvalResult.prompt_name == "support_ticket_classify",
                EvalResult.prompt_version == "1.1.0",
                EvalResult.model == "sim-medium",
                EvalResult.night == "2026-11-21",
            )
        )
    assert gw.router.quality_of("support_ticket_classify", "sim-medium") == pytest.approx(measured)


def _degraded_library(tmp_path: Path) -> Path:
    root = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts" / "support_ticket_classify", root / "support_ticket_classify")
    shutil.copytree(ROOT / "prompts" / "quality_judge", root / "quality_judge")
    (root / "support_ticket_classify" / "1.2.0.j2").write_text(
        "{% block system %}You help customers. Reply in one friendly sentence.{% endblock %}\n"
        "{% block user %}<record>\nSubject: {{ subject }}\n{{ body }}\n</record>{% endblock %}\n"
    )
    return root


def test_degraded_version_triggers_the_regression_alert(tmp_path: Path, fast_sim, inbox):
    from llmops.airflow_adapter import send_email
    from llmops.evaluation import alert_regressions

    st = load_settings(
        home=ROOT, data_dir=tmp_path / "data", simulator_port=fast_sim.port, prompts_dir=_degraded_library(tmp_path)
    )
    gw = Gateway(st)
    night = evaluate_prompt(gw, "support_ticket_classify", night="2026-11-22", models=["sim-medium"], track=False)
    assert all("llm_judge" in r.metric_means for r in night.runs)  # the judge scored every run
    from sqlalchemy import select

    from llmops.ledger import LlmCall

    with gw.ledger.transaction() as s:
        judged = list(s.scalars(select(LlmCall).where(LlmCall.purpose == "judge")))
    assert judged and all(r.prompt_name == "quality_judge" and r.reasons.startswith("route.quality") for r in judged)
    degraded = [r for r in night.regressions if r.version == "1.2.0"]
    assert degraded and {r.baseline for r in degraded} == {"production 1.1.0"}
    assert {"json_valid", "overall", "pass_rate"} <= {r.metric for r in degraded}
    alert_regressions(gw, night.regressions, night.night, send_email)
    [mail] = inbox.messages
    body = next(p for p in mail.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    assert "regression" in mail["Subject"] and "1.2.0" in body and "sim-medium" in body and "→" in body
    assert "support-ops@example.com" in mail["X-Envelope-To"]
    # rerun with nothing changed: no new model calls, same results
    again = evaluate_prompt(gw, "support_ticket_classify", night="2026-11-22", models=["sim-medium"], track=False)
    assert sum(r.new_calls for r in again.runs) == 0
    assert [round(r.overall, 6) for r in again.runs] == [round(r.overall, 6) for r in night.runs]


def test_cli_eval_run_and_compare(tmp_path: Path, fast_sim):
    import subprocess
    import sys

    env = dict(
        os.environ,
        LLMOPS_DATA_DIR=str(tmp_path / "data"),
        LLMOPS_SIMULATOR_PORT=str(fast_sim.port),
        LLMOPS_HOME=str(ROOT),
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmops",
            "eval",
            "run",
            "--prompt",
            "support_ticket_classify",
            "--all-versions",
            "--model",
            "sim-small",
            "--no-track",
            "--night",
            "2026-11-23",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "1.0.0" in r.stdout and "1.1.0" in r.stdout and "sim-small" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "llmops", "eval", "compare", "support_ticket_classify", "1.0.0", "1.1.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "exact_match" in r.stdout and "overall" in r.stdout and "delta" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "llmops", "eval", "compare", "support_ticket_classify", "1.0.0", "9.9.9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no version 9.9.9" in r.stderr
    json.dumps(r.stdout)


def test_mlflow_compare_view_of_two_versions(tmp_path: Path, fast_sim):
    """Two versions of a prompt side by side in MLflow's compare view (headless Chromium screenshot)."""
    import subprocess
    import sys
    import time
    import urllib.parse

    import httpx
    from playwright.sync_api import sync_playwright

    from llmops.platform import free_port

    st = load_settings(home=ROOT, data_dir=tmp_path / "data", simulator_port=fast_sim.port)
    gw = Gateway(st)
    night = evaluate_prompt(gw, "support_ticket_classify", night="2026-11-24", models=["sim-medium"])
    runs = [night.mlflow_runs[f"{v}|sim-medium"] for v in ("1.0.0", "1.1.0")]
    port = free_port()
    bindir = Path(sys.executable).parent
    server = subprocess.Popen(
        [
            str(bindir / "mlflow"),
            "server",
            "--backend-store-uri",
            st.mlflow_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
        ],
        env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", MLFLOW_DISABLE_TELEMETRY="true"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        import mlflow

        mlflow.set_tracking_uri(st.mlflow_uri)
        exp = mlflow.get_experiment_by_name("llmops/support_ticket_classify").experiment_id
        url = (
            f"http://127.0.0.1:{port}/#/compare-runs?runs={urllib.parse.quote(json.dumps(runs))}"
            f"&experiments={urllib.parse.quote(json.dumps([exp]))}"
        )
        shot = ROOT / "test-artifacts" / "mlflow_compare_support_ticket_classify.png"
        shot.parent.mkdir(exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(url)
            page.get_by_text("Comparing 2 Runs").wait_for(timeout=60_000)
            page.get_by_text("support_ticket_classify@1.1.0 · sim-medium").first.wait_for(timeout=30_000)
            text = page.inner_text("body")
            assert "support_ticket_classify@1.0.0 · sim-medium" in text and "exact_match/mean" in text
            page.screenshot(path=str(shot))
            browser.close()
        print(f"screenshot: {shot}")
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)  # mlflow server and its uvicorn workers
        server.wait(30)
