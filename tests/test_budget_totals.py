"""Running budget totals (migration 0007): a budget's usage is its totals row plus the pending deltas that
triggers on llm_calls append — always equal to the SUM over the month's ledger rows it replaced, whatever
writes the ledger, on SQLite and on PostgreSQL, also while writers and folds run at once."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, func, insert, select, text, update

from llmops.ledger import BudgetDelta, BudgetTotal, Ledger, LlmCall
from tests.test_budget_router import _postgres_url

DEPTS, USERS, PROMPTS, MONTHS = ("support", "legal"), ("a@x", "b@x", "c@x"), ("p1", "p2"), ("2026-11", "2026-12")
COLUMN = {"department": LlmCall.department, "person": LlmCall.user, "prompt": LlmCall.prompt_name}
KEYS = {"department": DEPTS, "person": USERS, "prompt": PROMPTS}


def _row(i: int, rng: random.Random) -> dict[str, object]:
    now = datetime.now(UTC)
    return dict(
        request_key=f"k{i}",
        call_id=f"c{i}",
        run_id="r",
        record_key=f"x{i}",
        purpose="batch",
        user=rng.choice(USERS),
        department=rng.choice(DEPTS),
        prompt_name=rng.choice(PROMPTS),
        prompt_version="1.0.0",
        budget_month=rng.choice(MONTHS),
        status="ok",
        reasons="",
        findings="{}",
        prompt_excerpt="",
        cost_nanousd=rng.choice((0, 0, rng.randrange(1, 10**9))),
        reserved_nanousd=rng.choice((0, rng.randrange(1, 10**9))),
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=1,
        attempts=1,
        created_at=now,
        updated_at=now,
    )


def _summed(led: Ledger, scope: str, key: str, month: str) -> tuple[int, int]:
    stmt = select(
        func.coalesce(func.sum(LlmCall.cost_nanousd), 0), func.coalesce(func.sum(LlmCall.reserved_nanousd), 0)
    ).where(COLUMN[scope] == key, LlmCall.budget_month == month)
    with led.transaction() as s:
        spent, reserved = s.execute(stmt).one()
    return int(spent), int(reserved)


def _check_all(led: Ledger, rng: random.Random) -> None:
    for scope, keys in KEYS.items():
        for key in keys:
            for month in MONTHS:
                expected = _summed(led, scope, key, month)
                assert led.month_usage(key, month, scope=scope) == expected, (scope, key, month)
                if rng.random() < 0.5:  # a reservation's read folds the pending deltas
                    with led.transaction() as s:
                        assert led.month_usage(key, month, s, scope=scope) == expected, (scope, key, month)


def _random_writes(led: Ledger, seed: int, steps: int = 300, check: bool = True) -> None:
    """Inserts, updates of costs and reservations, rows moved to another budget, deletes: in random groups."""
    rng = random.Random(seed)
    ids: list[int] = []
    n = 0
    for step in range(steps):
        with led.transaction() as s:
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                if op < 0.45 or not ids:
                    s.execute(insert(LlmCall).values(**_row(seed * 100_000 + n, rng)))
                    n += 1
                    ids.append(int(s.scalar(select(func.max(LlmCall.id)))))
                elif op < 0.75:  # settle: the reservation becomes a cost
                    s.execute(
                        update(LlmCall)
                        .where(LlmCall.id == rng.choice(ids))
                        .values(reserved_nanousd=0, cost_nanousd=rng.randrange(0, 10**9))
                    )
                elif op < 0.9:  # a row moved to another budget (department, person, prompt, month)
                    r = _row(0, rng)
                    moved = {k: r[k] for k in ("department", "user", "prompt_name", "budget_month")}
                    s.execute(update(LlmCall).where(LlmCall.id == rng.choice(ids)).values(**moved))
                else:
                    victim = ids.pop(rng.randrange(len(ids)))
                    s.execute(delete(LlmCall).where(LlmCall.id == victim))
        if check and step % 50 == 49:  # alone on the ledger: reads of both kinds must agree
            _check_all(led, rng)


@pytest.fixture(autouse=True)
def _fold_early(monkeypatch):
    """Reservations fold once a budget has 3 pending changes (2000 in production), so folds interleave
    with writes everywhere below."""
    import llmops.ledger.store as store

    monkeypatch.setattr(store, "FOLD_AT", 3)


def test_totals_equal_the_sum_on_sqlite(tmp_path: Path):
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    _random_writes(led, 1)
    _check_all(led, random.Random(2))
    with led.transaction() as s:  # reservations fold what piled up
        for scope, keys in KEYS.items():
            for key in keys:
                for month in MONTHS:
                    led.month_usage(key, month, s, scope=scope)
        assert s.scalar(select(func.count()).select_from(BudgetDelta)) < 3 * len(KEYS) * 3 * len(MONTHS)
        assert s.scalar(select(func.count()).select_from(BudgetTotal)) > 0
    _check_all(led, random.Random(3))


def test_migration_backfills_the_totals_of_an_existing_ledger(tmp_path: Path):
    """A ledger at revision 0006 with rows in it: the upgrade's totals equal the sums, and stay so."""
    from alembic import command
    from alembic.config import Config

    from llmops.ledger.store import _MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0006")
    rng = random.Random(4)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(LlmCall), [_row(i, rng) for i in range(200)])
    engine.dispose()
    led = Ledger(url)  # migrates to head
    with led.transaction() as s:
        assert s.execute(text("SELECT version_num FROM llmops_alembic_version")).scalar() == "0007"
        assert s.scalar(select(func.count()).select_from(BudgetDelta)) == 0
    _check_all(led, rng)
    _random_writes(led, 5, steps=100)
    _check_all(led, rng)


@pytest.mark.timeout(600)
def test_totals_equal_the_sum_on_postgres_under_concurrent_writes_and_folds():
    """Four writers and two folding readers at once on PostgreSQL: no deadlock, no delta lost or counted
    twice (a delta committed during a fold stays for the next one)."""
    url = _postgres_url()
    led = Ledger(url)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            _random_writes(Ledger(url, migrate=False), seed, steps=120, check=False)
        except BaseException as exc:
            errors.append(exc)

    stop = threading.Event()

    def folder() -> None:
        rng = random.Random(9)
        try:
            while not stop.is_set():
                if rng.random() < 0.2:
                    led.fold_all()
                    continue
                with led.transaction() as s:
                    scope = rng.choice(tuple(KEYS))
                    key, month = rng.choice(KEYS[scope]), rng.choice(MONTHS)
                    led.lock_budgets(s, [(scope, key, month)])  # as Budget.reserve does
                    led.month_usage(key, month, s, scope=scope)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(seed,)) for seed in (11, 12, 13, 14)]
    folders = [threading.Thread(target=folder) for _ in range(2)]
    for t in writers + folders:
        t.start()
    for t in writers:
        t.join(500)
    stop.set()
    for t in folders:
        t.join(60)
    assert not errors, errors
    _check_all(led, random.Random(6))
    led.dispose()


def test_budget_benchmark_runs_and_checks_totals():
    """The benchmark's small variant: it exits 1 when a totals read differs from the SUM."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "budget.py"), "--rows", "1000", "3000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| 3,000 |" in r.stdout and "MISMATCH" not in r.stdout


def test_fold_all_empties_the_deltas_and_keeps_the_numbers(tmp_path: Path):
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    _random_writes(led, 21, steps=120, check=False)
    rng = random.Random(22)
    before = {
        (scope, key, month): _summed(led, scope, key, month)
        for scope in KEYS
        for key in KEYS[scope]
        for month in MONTHS
    }
    assert led.fold_all() > 0
    with led.transaction() as s:
        assert s.scalar(select(func.count()).select_from(BudgetDelta)) == 0
    for (scope, key, month), expected in before.items():
        assert led.month_usage(key, month, scope=scope) == expected
    assert led.fold_all() == 0
    _check_all(led, rng)


def test_a_batch_run_leaves_no_pending_deltas(gateway, sim):
    """The engine folds every budget's deltas when a run ends — the person and prompt budgets that no
    reservation checked (the shipped policy has none) included — and the totals equal the sums."""
    from llmops.batch import BatchSpec, run_batch

    run_batch(
        gateway,
        BatchSpec(
            prompt="support_ticket_classify",
            input="sample:support_tickets.csv",
            department="support",
            user="hana.sato@example.com",
            run_id="fold1",
        ),
    )
    led = gateway.ledger
    with led.transaction() as s:
        assert s.scalar(select(func.count()).select_from(BudgetDelta)) == 0
    month = gateway.budget.month()
    spent = led.month_usage("support", month)
    assert spent[0] > 0 and spent == _summed(led, "department", "support", month)
    assert led.month_usage("hana.sato@example.com", month, scope="person") == _summed(
        led, "person", "hana.sato@example.com", month
    )
    assert led.month_usage("support_ticket_classify", month, scope="prompt") == spent
