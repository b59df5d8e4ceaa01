"""Router reliability and cost governance: fallbacks on 5xx/429, the circuit breaker, once-only budget
alerts (log + SMTP), person budgets, pre-flight estimates and downgrades, exact ledger costs, and
concurrent reservations on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from llmops.batch import BatchSpec, run_batch
from llmops.breaker import CircuitBreaker
from llmops.errors import BudgetExceededError
from llmops.gateway import Gateway
from llmops.ledger import BudgetAlert
from llmops.pricing import cost_nano, to_nano, usd
from llmops.settings import load_settings
from llmops.simulator import SimConfig, run_in_thread
from llmops.types import Request, Status
from tests.conftest import ROOT, SIM_KEY, write_policy

TICKET = {"subject": "Refund please", "body": "I was charged twice, please refund one payment."}


def _req(i: int | str, **kw) -> Request:
    base = dict(
        user="hana.sato@example.com",
        department="support",
        prompt="support_ticket_classify",
        variables=dict(TICKET),
        record_key=str(i),
        run_id="gov",
    )
    base.update(kw)
    return Request(**base)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_states():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock)
    for _ in range(3):
        assert b.allow("e")
        b.record_failure("e")
    assert b.state("e") == "open" and not b.allow("e")
    clock.now += 31
    assert b.state("e") == "half_open"
    assert b.allow("e") and not b.allow("e")  # one probe at a time
    b.record_failure("e")  # the probe failed: open again
    assert b.state("e") == "open"
    clock.now += 31
    assert b.allow("e")
    b.record_success("e")
    assert b.state("e") == "closed" and b.allow("e")


def _gateway(tmp_path: Path, srv, policy_file: Path | None = None, **settings_kw) -> Gateway:
    kw = dict(home=ROOT, data_dir=tmp_path / "d", simulator_port=srv.port)
    if policy_file:
        kw["policy_file"] = policy_file
    kw.update(settings_kw)
    return Gateway(load_settings(**kw), sleep=lambda _s: None)


def test_fallback_on_5xx_and_on_429(tmp_path: Path):
    srv = run_in_thread(SimConfig(port=0, latency_scale=0, api_key=SIM_KEY, model_error_rates={"sim-small": 1.0}))
    try:
        gw = _gateway(tmp_path, srv, max_retries=1)
        res = gw.process(_req("5xx", priority="cost"))
        assert res.status == Status.OK and res.model == "sim-medium"
        assert "InternalServerError" in res.reason or "ServiceUnavailable" in res.reason
    finally:
        srv.stop()
    srv = run_in_thread(SimConfig(port=0, latency_scale=0, api_key=SIM_KEY, model_limits={"sim-small": (1, 10**6)}))
    try:
        gw = _gateway(tmp_path / "b", srv, max_retries=0)
        assert gw.process(_req("a", priority="cost")).model == "sim-small"
        res = gw.process(_req("b", priority="cost"))  # sim-small answers 429 now: fall back at once
        assert res.status == Status.OK and res.model == "sim-medium" and "RateLimitError" in res.reason
    finally:
        srv.stop()


def test_circuit_breaker_opens_and_recovers(tmp_path: Path):
    config = SimConfig(port=0, latency_scale=0, api_key=SIM_KEY, error_rate=1.0)
    srv = run_in_thread(config)
    clock = Clock()
    try:
        gw = _gateway(tmp_path, srv, max_retries=0)
        gw.breaker = CircuitBreaker(failure_threshold=2, cooldown_s=30, clock=clock)
        first = gw.process(_req(1))
        assert first.status == Status.FAILED
        health = httpx.get(srv.url.removesuffix("/v1") + "/health").json()
        calls_before = health["requests"]
        skipped = gw.process(_req(2))  # open: nothing is sent to the failing endpoint
        assert skipped.status == Status.FAILED and "circuit_open" in skipped.reason
        assert httpx.get(srv.url.removesuffix("/v1") + "/health").json()["requests"] == calls_before
        assert gw.ledger.get(skipped.request_key).cost_nanousd == 0
        config.error_rate = 0.0  # the provider recovers
        clock.now += 31
        probe = gw.process(_req(3))
        assert probe.status == Status.OK
        assert gw.breaker.state(gw.endpoint(gw.policy.models["sim-small"])) == "closed"
    finally:
        srv.stop()


def test_alert_at_80_percent_fires_once_and_hard_stop_at_100(tmp_path: Path, sim, inbox):
    from llmops.airflow_adapter import budget_alert_mail

    policy_file = write_policy(tmp_path / "p.yaml", **{"departments/support/monthly_budget_usd": 0.0006})
    st = load_settings(home=ROOT, data_dir=tmp_path / "d", simulator_port=sim.port, policy_file=policy_file)
    events = []

    def alerter(event):
        events.append(event)
        budget_alert_mail(event)

    gw = Gateway(st, alerter=alerter)
    results = [gw.process(_req(i, priority="cost")) for i in range(20)]
    statuses = [r.status for r in results]
    assert Status.BUDGET_EXCEEDED in statuses and statuses[0] == Status.OK
    assert [(e.scope, e.threshold) for e in events] == [("department", 0.8)]
    with gw.ledger.transaction() as s:
        assert s.scalar(select(func.count()).select_from(BudgetAlert)) == 1
    spent, reserved = gw.ledger.month_usage("support", gw.budget.month())
    assert reserved == 0 and spent <= to_nano("0.0006")
    [mail] = inbox.messages
    assert "passed 80%" in mail["Subject"] and "support-head@example.com" in mail["X-Envelope-To"]
    # a second gateway (another worker) does not fire the same alert again
    Gateway(st, alerter=alerter).budget.after_settle(
        "support", "hana.sato@example.com", "support_ticket_classify", gw.budget.month()
    )
    assert len(events) == 1


@pytest.mark.parametrize("interval", [0.0, 3600.0])
def test_the_engine_fires_a_crossed_alert_once_however_often_it_checks(tmp_path: Path, sim, interval):
    """The batch engine checks a budget's alert thresholds at most every ``alert_interval_s`` (each check
    sums the month's ledger rows) and once more when the run ends: the 80 % alert fires exactly once either
    way — during the run (interval 0) or at its end (an interval longer than the run)."""
    from llmops.engine import Engine

    policy_file = write_policy(tmp_path / "p.yaml", **{"departments/support/monthly_budget_usd": 0.0006})
    st = load_settings(home=ROOT, data_dir=tmp_path / "d", simulator_port=sim.port, policy_file=policy_file)
    events: list = []
    gw = Gateway(st, alerter=events.append)
    got: dict[int, object] = {}
    Engine(gw, concurrency=1, group_size=1, alert_interval_s=interval).run(
        [_req(i, priority="cost") for i in range(20)], got.__setitem__
    )
    assert len(got) == 20 and any(r.status == Status.OK for r in got.values())  # type: ignore[attr-defined]
    spent, _ = gw.ledger.month_usage("support", gw.budget.month())
    assert spent >= 0.8 * to_nano("0.0006")
    assert [(e.scope, e.threshold) for e in events] == [("department", 0.8)]


def test_an_alert_put_off_is_still_fired_when_the_writer_fails(tmp_path: Path, sim, monkeypatch):
    """Spending that crossed 80 % is committed, then the writer fails and the run with it — the alert check
    that was put off (``alert_interval_s``) still runs as the writer ends, so the alert is not lost."""
    from llmops.engine import Engine

    policy_file = write_policy(tmp_path / "p.yaml", **{"departments/support/monthly_budget_usd": 0.0006})
    st = load_settings(home=ROOT, data_dir=tmp_path / "d", simulator_port=sim.port, policy_file=policy_file)
    events: list = []
    gw = Gateway(st, alerter=events.append)
    real_write = Engine._write

    def write_then_fail(self, batch):
        checks_ns = real_write(self, batch)  # committed, its alert check put off (the first ran at the first write)
        spent, _ = gw.ledger.month_usage("support", gw.budget.month())
        if spent >= 0.8 * to_nano("0.0006"):
            raise RuntimeError("database went away")
        return checks_ns

    monkeypatch.setattr(Engine, "_write", write_then_fail)
    with pytest.raises(RuntimeError, match="database went away"):
        Engine(gw, concurrency=1, group_size=1, alert_interval_s=3600).run(
            [_req(i, priority="cost") for i in range(20)], lambda i, r: None
        )
    assert [(e.scope, e.threshold) for e in events] == [("department", 0.8)]


def test_person_budget_is_enforced(tmp_path: Path, sim):
    policy_file = write_policy(tmp_path / "p.yaml", **{"people/hana.sato@example.com/monthly_budget_usd": 0.0001})
    st = load_settings(home=ROOT, data_dir=tmp_path / "d", simulator_port=sim.port, policy_file=policy_file)
    gw = Gateway(st)
    results = [gw.process(_req(i, priority="cost")) for i in range(6)]
    stopped = [r for r in results if r.status == Status.BUDGET_EXCEEDED]
    assert stopped and "person hana.sato@example.com" in stopped[0].reason


def test_ledger_cost_equals_usage_times_catalog_price(gateway: Gateway):
    run_batch(
        gateway,
        BatchSpec(
            prompt="support_ticket_classify",
            input="sample:support_tickets.csv",
            department="support",
            user="hana.sato@example.com",
            run_id="exact",
        ),
    )
    rows = [r for r in gateway.ledger.run_rows("exact") if r.model]
    assert len(rows) == 24
    for r in rows:
        inp, out = gateway.policy.models[r.model].price()
        assert r.cost_nanousd == cost_nano(inp, out, r.prompt_tokens, r.completion_tokens) > 0


def test_dry_run_estimate_within_10_percent(gateway: Gateway):
    spec = dict(
        prompt="support_ticket_classify",
        input="sample:support_tickets.csv",
        department="support",
        user="hana.sato@example.com",
    )
    first = run_batch(gateway, BatchSpec(run_id="est-dry-1", dry_run=True, **spec))["plan"]["estimate"]
    actual = run_batch(gateway, BatchSpec(run_id="est-real", **spec))
    actual_usd = float(actual["cost_usd"])
    assert first["basis"] == "max_tokens" and float(first["expected_cost_usd"]) >= actual_usd  # an upper bound
    second = run_batch(gateway, BatchSpec(run_id="est-dry-2", dry_run=True, **spec))["plan"]["estimate"]
    assert second["basis"] == "history"
    assert abs(float(second["expected_cost_usd"]) - actual_usd) <= 0.10 * actual_usd, (second, actual_usd)


def test_preflight_downgrades_when_policy_says_so(tmp_path: Path, sim):
    base = {"departments/support/monthly_budget_usd": 0.003}  # sim-small ≈ $0.0017, sim-medium ≈ $0.011
    spec = BatchSpec(
        prompt="support_ticket_classify",
        input="sample:support_tickets.csv",
        department="support",
        user="hana.sato@example.com",
        run_id="dg",
        priority="quality",
        dry_run=False,
    )
    st = load_settings(
        home=ROOT,
        data_dir=tmp_path / "a",
        simulator_port=sim.port,
        policy_file=write_policy(tmp_path / "refuse.yaml", **base),
    )
    with pytest.raises(BudgetExceededError, match="budget_shortfall: downgrade"):
        run_batch(Gateway(st), spec)
    st = load_settings(
        home=ROOT,
        data_dir=tmp_path / "b",
        simulator_port=sim.port,
        policy_file=write_policy(tmp_path / "down.yaml", **base, **{"routing/budget_shortfall": "downgrade"}),
    )
    gw = Gateway(st)
    summary = run_batch(gw, spec)
    assert summary["counts"]["ok"] == 24
    assert {r.model for r in gw.ledger.run_rows("dg") if r.model} == {"sim-small"}


def _postgres_url() -> str:
    import uuid

    from sqlalchemy import create_engine, text

    name = f"llmops_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine("postgresql+psycopg2://postgres@127.0.0.1/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"the local PostgreSQL server is needed for this test: {exc}".splitlines()[0])
    finally:
        admin.dispose()
    return f"postgresql+psycopg2://postgres@127.0.0.1/{name}"


WORKER = """
import json, sys
from llmops.settings import load_settings
from llmops.gateway import Gateway
from llmops.types import Request
worker = int(sys.argv[1])
gw = Gateway(load_settings())
out = []
for i in range(12):
    r = gw.process(Request(user="hana.sato@example.com", department="support", prompt="support_ticket_classify",
                           variables={"subject": f"Refund {worker}-{i}", "body": "I was charged twice, refund."},
                           record_key=f"w{worker}-{i}", run_id="pg-race", priority="cost"))
    out.append(r.status.value)
print(json.dumps(out))
"""


def test_concurrent_reservations_on_postgres_never_pass_the_limit(tmp_path: Path):
    import os
    import subprocess
    import sys

    from sqlalchemy import create_engine, text

    url = _postgres_url()
    srv = run_in_thread(SimConfig(port=0, latency_scale=0.5, api_key=SIM_KEY))
    limit_usd = "0.0012"  # room for roughly a third of the 96 requests
    try:
        policy_file = write_policy(tmp_path / "p.yaml", **{"departments/support/monthly_budget_usd": float(limit_usd)})
        env = dict(
            os.environ,
            LLMOPS_LEDGER_URL=url,
            LLMOPS_POLICY_FILE=str(policy_file),
            LLMOPS_SIMULATOR_PORT=str(srv.port),
            LLMOPS_DATA_DIR=str(tmp_path / "d"),
            LLMOPS_HOME=str(ROOT),
        )
        from llmops.ledger import Ledger

        Ledger(url).dispose()  # migrate once before the race
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(w)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for w in range(8)
        ]
        outputs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outputs]
        statuses = [s for out, _ in outputs for s in json.loads(out.strip().splitlines()[-1])]
        assert len(statuses) == 96 and "budget_exceeded" in statuses and "ok" in statuses
        engine = create_engine(url)
        with engine.connect() as conn:
            spent, reserved, rows = conn.execute(
                text("SELECT SUM(cost_nanousd), SUM(reserved_nanousd), COUNT(*) FROM llm_calls")
            ).one()
        engine.dispose()
        assert rows == 96 and reserved == 0
        assert spent <= to_nano(limit_usd), f"settled ${usd(spent)} passed the limit ${limit_usd}"
        print(f"8 workers × 12 requests: {statuses.count('ok')} ok, settled ${usd(spent)} of ${limit_usd}")
    finally:
        srv.stop()
        admin = create_engine("postgresql+psycopg2://postgres@127.0.0.1/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()
