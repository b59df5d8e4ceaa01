"""Operational alerts: the llmops_health DAG (dag.test) evaluates the rules over a real ledger and notifies
each breach once — by mail (SmtpNotifier → the real SMTP inbox) and by Slack webhook (SlackWebhookNotifier →
a real HTTP server on loopback) — and budget thresholds through the budget's once-only claim."""

from __future__ import annotations

import json
import threading
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmops.alerts import evaluate_rules, run_health_check
from llmops.gateway import Gateway
from llmops.ledger import AlertState
from llmops.settings import load_settings
from llmops.simulator import SimConfig, run_in_thread
from llmops.types import Request, Status
from tests.conftest import ROOT, SIM_KEY, add_eval_result, write_policy

pytestmark = pytest.mark.slow


def _req(key: str) -> Request:
    return Request(
        user="hana.sato@example.com",
        department="support",
        prompt="support_ticket_classify",
        variables={"subject": "Refund", "body": "I was charged twice."},
        record_key=key,
        run_id="run-health",
        model="sim-small",
    )


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []  # noqa: RUF012

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def slack_hook():
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/XXX", _Hook.received
    server.shutdown()


@pytest.fixture
def troubled_ledger(tmp_path: Path, sim):
    """20 ok calls and 3 provider failures on sim-small, and a nightly score below 0.7."""
    data = tmp_path / "data"
    gw = Gateway(load_settings(home=ROOT, data_dir=data, simulator_port=sim.port))
    ok = [gw.process(_req(f"ok{i}")) for i in range(20)]
    assert {r.status for r in ok} == {Status.OK}
    broken = run_in_thread(SimConfig(port=0, error_rate=1.0, latency_scale=0, api_key=SIM_KEY))
    try:
        st = load_settings(home=ROOT, data_dir=data, simulator_port=broken.port, max_retries=0)
        gw_err = Gateway(st, sleep=lambda _s: None)
        failed = [gw_err.process(_req(f"f{i}")) for i in range(3)]
        assert {r.status for r in failed} == {Status.FAILED}
        gw_err.close()
    finally:
        broken.stop()
    add_eval_result(gw.ledger, night="2026-01-02", overall=0.62, cases=8, pass_rate=0.5)
    yield gw, data
    gw.close()


def test_health_dag_notifies_each_breach_once(troubled_ledger, inbox, slack_hook, monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    gw, data = troubled_ledger
    hook_url, posts = slack_hook
    tiny = write_policy(tmp_path / "tiny.yaml", **{"departments/support/monthly_budget_usd": 0.0002})
    monkeypatch.setenv("LLMOPS_DATA_DIR", str(data))
    monkeypatch.setenv("LLMOPS_POLICY_FILE", str(tiny))
    monkeypatch.setenv("LLMOPS_ALERT_LATENCY_S", "0.001")  # the simulator answers in ~0.1 s: make latency breach
    monkeypatch.setenv("LLMOPS_SLACK_CONN_ID", "slack_ops")
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_OPS", json.dumps({"conn_type": "slackwebhook", "password": hook_url}))

    db.initdb()
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["llmops_health"]
    dr = dag.test()
    assert str(dr.state) == "success"
    subjects = sorted(str(make_header(decode_header(m["Subject"]))) for m in inbox.messages)
    ops = [s for s in subjects if "alert:" in s]
    assert any(s.startswith("[llmops] latency alert: sim-small") for s in ops), subjects
    assert any(s.startswith("[llmops] error_rate alert: sim-small") and "13.0%" in s for s in ops), subjects
    assert any("quality alert: support_ticket_classify@1.1.0/sim-small" in s and "0.620 < 0.7" in s for s in ops)
    assert len(ops) == 3
    budget = [s for s in subjects if "department budget support passed 80%" in s]
    assert len(budget) == 1, subjects
    assert all("platform-admin@example.com" in m["X-Envelope-To"] for m in inbox.messages)
    assert sorted(p["text"] for p in posts) == sorted(ops)  # Slack got the operational alerts too

    dr = dag.test()  # the same breaches: nothing new is sent
    assert str(dr.state) == "success"
    assert len(inbox.messages) == 4 and len(posts) == 3

    # latency back within the default 5 s: the alert resolves, and re-fires when it breaches again
    settings = load_settings(home=ROOT, data_dir=data, policy_file=tiny, alert_latency_s=5.0)
    sent: list[str] = []
    rep = run_health_check(gw.ledger, gw.policy, settings, lambda b, _to: sent.append(b.subject))
    assert rep.resolved == ("latency:sim-small",) and sent == []
    lowered = load_settings(home=ROOT, data_dir=data, policy_file=tiny, alert_latency_s=0.001)
    rep = run_health_check(gw.ledger, gw.policy, lowered, lambda b, _to: sent.append(b.subject))
    assert [b.rule for b in rep.notified] == ["latency"] and len(sent) == 1
    with gw.ledger.transaction() as s:
        row = s.query(AlertState).filter_by(rule="latency", alert_key="sim-small").one()
        assert row.firing and row.fire_count == 2


def test_default_thresholds(troubled_ledger):
    gw, data = troubled_ledger
    settings = load_settings(home=ROOT, data_dir=data)
    assert (settings.alert_latency_s, settings.alert_quality_min, settings.alert_error_rate) == (5.0, 0.7, 0.01)
    checked, breaches = evaluate_rules(gw.ledger, settings)
    assert "latency:sim-small" in checked and "error_rate:sim-small" in checked
    assert sorted(b.rule for b in breaches) == ["error_rate", "quality"]  # ~0.1 s calls: no latency breach
    few = load_settings(home=ROOT, data_dir=data, alert_min_requests=50)
    assert "error_rate:sim-small" not in evaluate_rules(gw.ledger, few)[0]  # too few calls to judge a rate
