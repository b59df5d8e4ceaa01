from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from llmops.batch import BatchSpec, run_batch
from llmops.errors import BudgetExceededError, InputError, PromptError, RequestError
from llmops.gateway import Gateway
from llmops.ledger import LlmCall
from llmops.settings import load_settings
from tests.conftest import ROOT, write_policy


def _spec(**kw) -> BatchSpec:
    base = dict(
        prompt="support_ticket_classify@production",
        input="sample:support_tickets.csv",
        department="support",
        user="hana.sato@example.com",
        run_id="b1",
    )
    base.update(kw)
    return BatchSpec(**base)


def _ledger_rows(gw: Gateway) -> int:
    with gw.ledger.transaction() as s:
        return s.scalar(select(func.count()).select_from(LlmCall))


def test_batch_reconciles_and_writes_outputs(gateway: Gateway):
    summary = run_batch(gateway, _spec(chunk_size=10))
    c = summary["counts"]
    assert summary["records"] == 25 == sum(c.values())
    assert c["blocked"] == 1 and c["ok"] == 24
    out = pd.read_parquet(summary["output"])
    assert len(out) == 25 and set(out["status"]) <= {"ok", "blocked"}
    assert _ledger_rows(gateway) == 25
    total = sum(r.cost_nanousd for r in gateway.ledger.run_rows("b1"))
    assert summary["cost_by_department"]["support"] == str(total / 10**9) or total > 0


def test_sql_table_input(gateway: Gateway, tmp_path: Path):
    from sqlalchemy import create_engine

    db = tmp_path / "src.db"
    eng = create_engine(f"sqlite:///{db}")
    pd.DataFrame({"id": ["a", "b"], "subject": ["Refund", "Crash"], "body": ["refund my charge", "app crash"]}).to_sql(
        "tickets", eng, index=False
    )
    eng.dispose()
    summary = run_batch(gateway, _spec(input=f"sqlite:///{db}#tickets", run_id="sql"))
    assert summary["counts"]["ok"] == 2


@pytest.mark.parametrize(
    ("spec", "error", "text"),
    [
        (dict(prompt="nope"), PromptError, "unknown prompt 'nope'"),
        (dict(prompt="support_ticket_classify@7.0.0"), PromptError, "no version 7.0.0"),
        (dict(department="marketing"), RequestError, "unknown department 'marketing'"),
        (dict(user="nobody@example.com"), RequestError, "unknown user"),
        (dict(input="missing.csv"), InputError, "does not exist"),
    ],
)
def test_bad_input_bills_nothing(gateway: Gateway, spec, error, text):
    with pytest.raises(error, match=text) as ei:
        run_batch(gateway, _spec(**spec))
    assert "\n" not in str(ei.value) and "fix:" in str(ei.value)
    assert _ledger_rows(gateway) == 0


def test_malformed_csv_and_missing_column(gateway: Gateway, tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text('id,subject,body\n1,ok,fine\n2,"broken,too,many,fields\n3,x,y,z,w\n')
    with pytest.raises(InputError, match="malformed CSV"):
        run_batch(gateway, _spec(input=str(bad)))
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("id,subject\n1,hello\n")
    with pytest.raises(InputError, match="no column 'body'"):
        run_batch(gateway, _spec(input=str(nocol)))
    dup = tmp_path / "dup.csv"
    dup.write_text("id,subject,body\n1,a,b\n1,c,d\n")
    with pytest.raises(InputError, match="duplicate record key"):
        run_batch(gateway, _spec(input=str(dup)))
    assert _ledger_rows(gateway) == 0


def test_preflight_refuses_over_budget_and_cost_cap(tmp_path: Path, sim):
    policy_file = write_policy(tmp_path / "p.yaml", **{"departments/support/monthly_budget_usd": 0.0002})
    st = load_settings(home=ROOT, data_dir=tmp_path / "d", simulator_port=sim.port, policy_file=policy_file)
    gw = Gateway(st)
    with pytest.raises(BudgetExceededError, match="remaining budget"):
        run_batch(gw, _spec())
    dry = run_batch(gw, _spec(dry_run=True))
    assert dry["dry_run"] and float(dry["plan"]["estimate"]["max_cost_usd"]) > 0
    assert _ledger_rows(gw) == 0


def test_cost_cap_refused_up_front(gateway: Gateway):
    with pytest.raises(BudgetExceededError, match="cost cap"):
        run_batch(gateway, _spec(cost_cap_usd=0.00001))
    assert _ledger_rows(gateway) == 0


def test_budget_stop_mid_batch_defers_the_rest(tmp_path: Path, sim):
    from llmops.batch import plan_batch, reconcile, run_chunk

    policy_file = write_policy(tmp_path / "p.yaml", **{"departments/support/monthly_budget_usd": 0.01})
    st = load_settings(home=ROOT, data_dir=tmp_path / "d", simulator_port=sim.port, policy_file=policy_file)
    gw = Gateway(st)
    plan = plan_batch(gw, _spec(run_id="defer"))
    with gw.ledger.transaction() as s:  # meanwhile another job spends all but $0.0002 of the budget
        gw.ledger.upsert_call(
            s,
            "other-job",
            call_id="other-job",
            run_id="other",
            record_key="x",
            purpose="batch",
            user="hana.sato@example.com",
            department="support",
            prompt_name="p",
            prompt_version="1",
            status="ok",
            cost_nanousd=gw.budget.limit_nano("support") - 200_000,
            budget_month=gw.budget.month(),
            reasons="",
            findings="{}",
            prompt_excerpt="",
            reserved_nanousd=0,
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=0,
            attempts=1,
        )
    run_chunk(gw, plan, 0)
    summary = reconcile(gw, plan)
    c = summary["counts"]
    assert sum(c.values()) == 25
    assert c["deferred"] > 0 and c["ok"] >= 1 and c["failed"] == 0
    assert summary["dead_letters"] == c["deferred"]
    spent, reserved = gw.ledger.month_usage("support", gw.budget.month())
    assert reserved == 0 and spent <= gw.budget.limit_nano("support")  # the hard stop held
