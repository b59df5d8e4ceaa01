"""Budget reads as the month fills: running totals (migration 0007) against the SUM they replaced.

Every reservation group reads each applicable budget (department, and person/prompt where set). This
fills a SQLite ledger with N rows of one department's month and times, in the same process and on the same
file:

* **read**: one budget read inside a reservation transaction — ``Ledger.month_usage`` (the totals row plus
  the changes not folded yet) against the SUM over the month's rows that it replaced (the baseline);
* **write**: the price the triggers add — a settle transaction of 16 rows (reservation → cost), with the
  triggers against the same transaction with them dropped (a copy of the file).

    .venv/bin/python benchmarks/budget.py [--rows 10000 100000 300000]

Prints medians in ms and the ratios; exits 1 if a read's totals differ from the SUM.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, insert, select, text, update

from llmops.ledger import Ledger, LlmCall

MONTH, DEPT = "2026-12", "support"


def rows(start: int, n: int) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    return [
        dict(
            request_key=f"k{i}",
            call_id=f"c{i}",
            run_id="bench",
            record_key=f"x{i}",
            purpose="batch",
            user=f"user{i % 50}@example.com",
            department=DEPT,
            prompt_name="support_ticket_classify",
            prompt_version="1.0.0",
            budget_month=MONTH,
            status="ok",
            reasons="",
            findings="{}",
            prompt_excerpt="",
            cost_nanousd=90_000 + i % 7,
            reserved_nanousd=0,
            prompt_tokens=500,
            completion_tokens=60,
            latency_ms=400,
            attempts=1,
            created_at=now,
            updated_at=now,
        )
        for i in range(start, start + n)
    ]


def settle(ledger: Ledger, counter: Iterator[int], n: int) -> None:
    """Reserve 16 rows, then settle them (reservation -> cost), in two transactions as the engine does."""
    first = next(counter) * 16 % (n - 16) + 1
    with ledger.transaction() as s:
        for i in range(first, first + 16):
            s.execute(update(LlmCall).where(LlmCall.id == i).values(reserved_nanousd=150_000))
    with ledger.transaction() as s:
        for i in range(first, first + 16):
            s.execute(update(LlmCall).where(LlmCall.id == i).values(reserved_nanousd=0, cost_nanousd=90_000))


def median_ms(fn, repeat: int = 15) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmops-budget-bench-"))
    ok = True
    try:
        led = Ledger(f"sqlite:///{work / 'ledger.db'}")
        have = 0
        summed = select(
            func.coalesce(func.sum(LlmCall.cost_nanousd), 0), func.coalesce(func.sum(LlmCall.reserved_nanousd), 0)
        ).where(LlmCall.department == DEPT, LlmCall.budget_month == MONTH)
        print(
            "| ledger rows in the month | read: SUM (baseline) ms | read: totals ms | SUM / totals | "
            "settle 16 rows: no triggers ms | with triggers ms | triggers / none |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n in sorted(args.rows):
            with led.transaction() as s:
                s.execute(insert(LlmCall), rows(have, n - have))
            have = n
            led.fold_all()  # the inserts' deltas into the totals (the engine's housekeeping would)

            def read_totals() -> tuple[int, int]:
                with led.transaction() as s:
                    return led.month_usage(DEPT, MONTH, s)

            def read_sum() -> tuple[int, int]:
                with led.transaction() as s:
                    spent, reserved = s.execute(summed).one()
                    return int(spent), int(reserved)

            if read_totals() != read_sum():
                print(f"MISMATCH at {n} rows: totals {read_totals()} != SUM {read_sum()}")
                ok = False
            t_sum, t_tot = median_ms(read_sum), median_ms(read_totals)
            # the write side: the same settle transactions on a copy without the triggers
            bare_path = work / f"bare-{n}.db"
            led.dispose()
            shutil.copy(work / "ledger.db", bare_path)
            bare = Ledger(f"sqlite:///{bare_path}", migrate=False)
            with bare.transaction() as s:
                for name in ("insert", "delete", "update", "move"):
                    s.execute(text(f"DROP TRIGGER budget_usage_{name}"))
            t_bare = median_ms(functools.partial(settle, bare, iter(range(10**9)), n))
            t_trig = median_ms(functools.partial(settle, led, iter(range(10**9)), n))
            bare.dispose()
            print(
                f"| {n:,} | {t_sum:.2f} | {t_tot:.3f} | {t_sum / t_tot:.0f}× | {t_bare:.2f} | {t_trig:.2f} | "
                f"{t_trig / t_bare:.2f}× |"
            )
            if read_totals() != read_sum():
                print(f"MISMATCH after the settles at {n} rows")
                ok = False
        led.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
