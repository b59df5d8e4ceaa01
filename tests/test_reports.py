"""Monthly cost reports: a seeded month, Great Expectations validation, mail through a real SMTP server
on loopback, totals checked against independent SQL, every corruption withholding the reports."""

from __future__ import annotations

import io
import random
import re
import sqlite3
from datetime import datetime, timedelta
from decimal import Decimal
from email.message import Message
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from llmops.ledger import Ledger, LlmCall
from llmops.policy import load_policy
from llmops.pricing import cost_nano, usd
from llmops.settings import load_settings
from tests.conftest import ROOT

TZ = ZoneInfo("Asia/Tokyo")
MONTH, PREV = "2026-10", "2026-09"
PEOPLE = {
    "legal": "ken.tanaka@example.com",
    "support": "hana.sato@example.com",
    "sales": "emily.clark@example.com",
    "platform": "platform-admin@example.com",
}
PROMPTS = {
    "legal": "contract_review",
    "support": "support_ticket_classify",
    "sales": "email_generation",
    "platform": "meeting_notes_summary_ja",
}


def seed(ledger: Ledger, month: str, n: int, seed_value: int) -> None:
    policy = load_policy(ROOT / "llmops.yaml")
    rng = random.Random(seed_value)
    year, mon = map(int, month.split("-"))
    start = datetime(year, mon, 1, tzinfo=TZ)
    days = ((datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=TZ)) - start).days
    rows = []
    for i in range(n):
        dept = rng.choice(list(PEOPLE))
        status = rng.choices(["ok", "blocked", "denied", "failed"], [90, 4, 2, 4])[0]
        model = rng.choice(["sim-small", "sim-medium", "sim-large"]) if status in ("ok", "failed") else None
        pt = rng.randint(200, 3000) if status == "ok" else 0
        ct = rng.randint(20, 600) if status == "ok" else 0
        cost = cost_nano(*policy.models[model].price(), pt, ct) if model else 0
        created = start + timedelta(seconds=rng.randint(0, days * 86400 - 1))
        rows.append(
            LlmCall(
                call_id=f"{month}-{seed_value}-{i:05d}",
                request_key=f"rk-{month}-{seed_value}-{i:05d}",
                run_id=f"seed-{month}",
                record_key=str(i),
                purpose="batch",
                user=PEOPLE[dept],
                department=dept,
                prompt_name=PROMPTS[dept],
                prompt_version="1.0.0",
                model=model,
                provider="simulator" if model else None,
                status=status,
                reasons="",
                findings='{"EMAIL": 1}' if rng.random() < 0.1 else "{}",
                prompt_tokens=pt,
                completion_tokens=ct,
                latency_ms=rng.randint(80, 2500) if model else 0,
                reserved_nanousd=0,
                cost_nanousd=cost,
                quality_score=round(rng.uniform(0.6, 1.0), 3) if status == "ok" else None,
                prompt_excerpt="",
                output=None,
                attempts=1 if model else 0,
                budget_month=month,
                created_at=created,
                updated_at=created,
            )
        )
    with ledger.transaction() as s:
        s.add_all(rows)


@pytest.fixture
def seeded(tmp_path: Path, sim):
    settings = load_settings(home=ROOT, data_dir=tmp_path / "data", simulator_port=sim.port)
    ledger = Ledger(settings.ledger_database_url)
    seed(ledger, PREV, 300, 1)
    seed(ledger, MONTH, 400, 2)
    return settings, ledger


def sql_totals(db: Path, month: str) -> dict[str, int]:
    with sqlite3.connect(db) as conn:  # independent of the report code: plain SQL
        return dict(
            conn.execute(
                "SELECT department, SUM(cost_nanousd) FROM llm_calls WHERE budget_month = ? GROUP BY department",
                (month,),
            ).fetchall()
        )


def parts(msg: Message) -> dict[str, Message]:
    out = {}
    for p in msg.walk():
        name = p.get_filename()
        if name:
            out[name] = p
        elif p.get_content_type() == "text/html":
            out["body.html"] = p
    return out


def check_department_mail(msg: Message, dept: str, expected_nano: int) -> None:
    p = parts(msg)
    html = p["body.html"].get_payload(decode=True).decode()
    shown = re.search(r'id="total_cost_usd">([0-9.]+)<', html).group(1)
    assert Decimal(shown) == usd(expected_nano)
    chart = p[f"daily_spend_{dept}.png"]
    assert chart.get_payload(decode=True)[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"cid:daily_spend_{dept}.png" in html
    calls = pd.read_csv(io.BytesIO(p[f"{dept}_calls.csv"].get_payload(decode=True)))
    assert int(calls["cost_nanousd"].sum()) == expected_nano
    assert sum(Decimal(str(v)) for v in calls["cost_usd"].astype(str)) == usd(expected_nano)


def test_valid_month_is_mailed_with_totals_equal_to_sql(seeded, inbox):
    from llmops.airflow_adapter import send_email
    from llmops.reports import build_monthly_report, deliver_monthly_report

    settings, ledger = seeded
    policy = load_policy(settings.policy_path)
    report = build_monthly_report(settings, policy, ledger, MONTH)
    assert report.valid, report.failed_expectations
    outcome = deliver_monthly_report(report, policy, send_email)
    assert set(outcome["sent"]) == {*policy.departments, "finance"}
    totals = sql_totals(settings.data_path / "ledger.db", MONTH)
    for dept, cfg in policy.departments.items():
        [msg] = inbox.to(cfg.recipients[0])
        check_department_mail(msg, dept, totals.get(dept, 0))
    [summary] = inbox.to(policy.finance[0])
    html = parts(summary)["body.html"].get_payload(decode=True).decode()
    assert Decimal(re.search(r'id="total_cost_usd">([0-9.]+)<', html).group(1)) == usd(sum(totals.values()))
    assert not inbox.to(policy.admins[0]) or all("withheld" not in m["Subject"] for m in inbox.to(policy.admins[0]))
    assert Path(report.folder, "validation.json").exists() and Path(report.files["legal"]["csv"]).exists()
    # rerunning the month gives the same numbers
    again = build_monthly_report(settings, policy, ledger, MONTH)
    assert [d["cost_usd"] for d in again.departments] == [d["cost_usd"] for d in report.departments]


def _strip_unique(db: Path) -> None:
    """Simulate a ledger restored without its constraints (the only way a duplicate call_id can exist)."""
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "ALTER TABLE llm_calls RENAME TO llm_calls_old;"
            "CREATE TABLE llm_calls AS SELECT * FROM llm_calls_old;"
            "DROP TABLE llm_calls_old;"
        )


CORRUPTIONS = {
    "negative_cost": (
        "UPDATE llm_calls SET cost_nanousd = -5 WHERE id = (SELECT MIN(id) FROM llm_calls "
        "WHERE budget_month = '2026-10')",
        "expect_column_values_to_be_between",
        "cost_nanousd",
    ),
    "duplicate_call_id": (
        "INSERT INTO llm_calls SELECT * FROM llm_calls WHERE budget_month = '2026-10' LIMIT 1",
        "expect_column_values_to_be_unique",
        "call_id",
    ),
    "unknown_department": (
        "UPDATE llm_calls SET department = 'marketing' WHERE id = (SELECT MAX(id) FROM llm_calls)",
        "expect_column_values_to_be_in_set",
        "department",
    ),
    "row_from_another_month": (
        "UPDATE llm_calls SET created_at = '2026-09-10 03:00:00.000000' WHERE id = (SELECT MAX(id) FROM llm_calls)",
        "expect_column_values_to_be_between",
        "created_epoch",
    ),
    "cost_not_matching_tokens": (
        "UPDATE llm_calls SET cost_nanousd = cost_nanousd * 3 + 10000 WHERE id = "
        "(SELECT MAX(id) FROM llm_calls WHERE status = 'ok')",
        "expect_column_values_to_be_between",
        "cost_error_nano",
    ),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corruption_withholds_reports_and_alerts_admins(seeded, inbox, kind):
    from llmops.airflow_adapter import send_email
    from llmops.reports import build_monthly_report, deliver_monthly_report

    settings, ledger = seeded
    ledger.dispose()
    db = settings.data_path / "ledger.db"
    statement, expectation, column = CORRUPTIONS[kind]
    if kind == "duplicate_call_id":
        _strip_unique(db)
    with sqlite3.connect(db) as conn:
        conn.execute(statement)
    policy = load_policy(settings.policy_path)
    report = build_monthly_report(settings, policy, Ledger(settings.ledger_database_url, migrate=False), MONTH)
    assert not report.valid
    assert any(f["expectation"] == expectation and f["column"] == column for f in report.failed_expectations), (
        report.failed_expectations
    )
    deliver_monthly_report(report, policy, send_email)
    # exactly one mail left: the admins' alert — no department report, no finance summary
    assert [m["Subject"] for m in inbox.messages] == [f"[llmops] cost report {MONTH} withheld: data validation failed"]
    [alert] = inbox.messages
    assert alert["X-Envelope-To"] == ", ".join(policy.admins)
    body = parts(alert)["body.html"].get_payload(decode=True).decode()
    assert expectation in body and column in body and "validation.json" in parts(alert)


def test_dag_sends_reports_and_fails_on_bad_data(seeded, inbox, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db as airflow_db

    settings, ledger = seeded
    monkeypatch.setenv("LLMOPS_DATA_DIR", str(settings.data_path))
    airflow_db.initdb()
    dag = DagBag(str(ROOT / "dags")).dags["monthly_cost_report"]
    dr = dag.test(run_conf={"month": MONTH})
    assert str(dr.state) == "success"
    policy = load_policy(settings.policy_path)
    totals = sql_totals(settings.data_path / "ledger.db", MONTH)
    [legal] = inbox.to("legal-head@example.com")
    check_department_mail(legal, "legal", totals["legal"])
    assert len(inbox.to(policy.finance[0])) == 1

    inbox.messages.clear()
    ledger.dispose()
    with sqlite3.connect(settings.data_path / "ledger.db") as conn:
        conn.execute(CORRUPTIONS["negative_cost"][0])
    dr = dag.test(run_conf={"month": MONTH})
    assert str(dr.state) == "failed"
    assert [m["Subject"] for m in inbox.messages] == [f"[llmops] cost report {MONTH} withheld: data validation failed"]


def test_report_renders_in_headless_chromium(seeded):
    import shutil

    from playwright.sync_api import sync_playwright

    from llmops.reports import build_monthly_report

    settings, ledger = seeded
    report = build_monthly_report(settings, load_policy(settings.policy_path), ledger, MONTH)
    html = Path(report.files["support"]["html"])
    # a mail client resolves cid: to the attachment; for the browser point it at the archived file
    page_file = html.with_name("support.preview.html")
    page_file.write_text(html.read_text().replace("cid:daily_spend_support.png", "daily_spend_support.png"))
    shot = ROOT / "test-artifacts" / "monthly_report_support.png"
    shot.parent.mkdir(exist_ok=True)
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is missing: run `make test` (it installs it)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 900, "height": 1400})
        page.goto(page_file.as_uri())
        assert page.locator("h1").inner_text().startswith("LLM usage and cost")
        img = page.locator("img")
        assert img.evaluate("i => i.complete && i.naturalWidth > 0")
        assert (
            page.locator("#total_cost_usd").inner_text()
            == report.departments[[d["department"] for d in report.departments].index("support")]["cost_usd"]
        )
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    print(f"screenshot: {shot}")


def test_cli_report_monthly(seeded, inbox, tmp_path):
    import os
    import subprocess
    import sys

    settings, _ledger = seeded
    env = dict(os.environ, LLMOPS_DATA_DIR=str(settings.data_path), LLMOPS_HOME=str(ROOT))
    out = tmp_path / "archive"
    r = subprocess.run(
        [sys.executable, "-m", "llmops", "report", "monthly", "--month", MONTH, "--send", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    total = sum(sql_totals(settings.data_path / "ledger.db", MONTH).values())
    assert f"total ${usd(total)}" in r.stdout and "mailed: " in r.stdout and "finance" in r.stdout
    assert (out / "summary.html").exists() and (out / "validation.json").exists()
    assert len(inbox.messages) == 5  # four departments + finance
    bad = subprocess.run(
        [sys.executable, "-m", "llmops", "report", "monthly", "--month", "2026-13"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: month '2026-13' is not YYYY-MM — fix: pass a month such as 2026-10"
