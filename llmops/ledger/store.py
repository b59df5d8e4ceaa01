"""Ledger storage: engine set-up, migrations, and the row operations the request path needs.

SQLite (the embedded default) runs every transaction as ``BEGIN IMMEDIATE`` so a budget check and
the reservation it guards are one serialised step; Postgres locks the department's rows with
``SELECT … FOR UPDATE`` semantics through the same API.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from llmops.errors import LedgerError
from llmops.ledger.models import BatchRun, BudgetDelta, BudgetTotal, DeadLetter, LlmCall
from llmops.types import FINAL_STATUSES, GUARD_ERROR, Status

_MIGRATIONS = Path(__file__).parent / "migrations"


_SCOPES = ("department", "person", "prompt")
FOLD_AT = 2000  # pending changes of one budget a reservation folds itself (else Ledger.fold_all does)
# a budget's usage and how many changes wait to be folded, in one statement (one snapshot); plain SQL, the
# same on SQLite and PostgreSQL (built with the expression language per call it cost ~0.3 ms of Python)
_USAGE = text(
    "SELECT coalesce(t.spent_nanousd, 0) + d.spent, coalesce(t.reserved_nanousd, 0) + d.reserved, d.waiting "
    "FROM (SELECT coalesce(sum(d_spent), 0) AS spent, coalesce(sum(d_reserved), 0) AS reserved, "
    "count(*) AS waiting FROM budget_deltas WHERE scope = :scope AND budget_key = :key AND month = :month) AS d "
    "LEFT JOIN budget_totals AS t ON t.scope = :scope AND t.budget_key = :key AND t.month = :month"
)


def is_final(row: LlmCall) -> bool:
    """Final rows are never called again: ok/blocked/denied, or a failure that was already billed. A block
    for a guard error is not: it says nothing about the record (the guard failed, closed), so a rerun of the
    same run screens it again — nothing was sent or billed for it."""
    if row.status == Status.BLOCKED and row.reasons.startswith(GUARD_ERROR):
        return False
    return row.status in FINAL_STATUSES or (row.status == Status.FAILED and row.cost_nanousd > 0)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy emit BEGIN itself
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def p95(values: Sequence[int]) -> float:
    """The 95th percentile (nearest rank) of a non-empty sample."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))])


class Ledger:
    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        try:
            self.engine = _make_engine(url)
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
            if migrate:
                self.migrate()
        except SQLAlchemyError as exc:
            raise LedgerError(
                f"cannot open the ledger at {self.safe_url}: {type(exc).__name__}",
                "check LLMOPS_LEDGER_URL and that the database is running",
            ) from exc

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True) if hasattr(self, "engine") else "?"

    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.engine.connect() as conn:
            if self._at_head(conn):
                return
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()

    def _at_head(self, conn: Any) -> bool:
        try:
            rev = conn.execute(text("SELECT version_num FROM llmops_alembic_version")).scalar()
        except OperationalError:
            conn.rollback()
            return False
        except SQLAlchemyError:
            conn.rollback()
            return False
        conn.rollback()
        heads = sorted(p.name.split("_", 1)[0] for p in (_MIGRATIONS / "versions").glob("[0-9]*.py"))
        return rev == heads[-1]

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    # -- reads ----------------------------------------------------------------------------------
    def get(self, request_key: str) -> LlmCall | None:
        with self._sessions() as s:
            return s.scalar(select(LlmCall).where(LlmCall.request_key == request_key))

    def run_rows(self, run_id: str) -> list[LlmCall]:
        with self._sessions() as s:
            return list(s.scalars(select(LlmCall).where(LlmCall.run_id == run_id).order_by(LlmCall.id)))

    def month_usage(
        self, department: str, month: str, session: Session | None = None, *, scope: str = "department"
    ) -> tuple[int, int]:
        """(spent, reserved) nano-USD of a budget (department, person or prompt) in a budget month: its
        running total plus the changes not yet folded into it (migration 0007) — the same numbers as a SUM
        over the month's ledger rows, at a cost that does not grow with them.

        One statement, so one snapshot (on PostgreSQL two could miss a fold committed between them). Folds
        are left to :meth:`fold_all` (the batch engine's housekeeping), except where a budget's pending
        changes have piled up (:data:`FOLD_AT`) and a reservation reads it (``session``): that reservation
        folds them."""
        if scope not in _SCOPES:
            raise ValueError(f"unknown budget scope {scope!r}")
        stmt, params = _USAGE, {"scope": scope, "key": department, "month": month}
        if session is None:
            with self._sessions() as s:
                spent, reserved, _ = s.execute(stmt, params).one()
        else:
            spent, reserved, waiting = session.execute(stmt, params).one()
            if waiting >= FOLD_AT:
                self._fold(session, scope, department, month)  # moves usage between the two: same sum
        return int(spent), int(reserved)

    def lock_budgets(self, session: Session, budgets: Iterable[tuple[str, str, str]]) -> None:
        """Serialise on budgets ``(scope, key, month)`` for the rest of the transaction. SQLite: every
        transaction is already BEGIN IMMEDIATE (one writer). PostgreSQL: advisory locks, always taken in the
        same order so two transactions never deadlock."""
        if session.get_bind().dialect.name == "postgresql":
            for key in sorted({f"{scope}:{key}:{month}" for scope, key, month in budgets}):
                session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})

    def fold_all(self) -> int:
        """Fold every budget's pending deltas into its totals, one short transaction per budget (under its
        lock, as a reservation would). Reservations fold only the budgets they check; the deltas of the others
        — a person or prompt without a budget of its own, a month that has ended — are folded here (the
        batch engine calls this every ``fold_interval_s`` and when a run ends). Returns the budgets folded."""
        with self._sessions() as s:
            budgets = s.execute(select(BudgetDelta.scope, BudgetDelta.budget_key, BudgetDelta.month).distinct()).all()
        for scope, key, month in sorted(budgets):
            with self.transaction() as s:
                self.lock_budgets(s, [(scope, key, month)])
                self._fold(s, scope, key, month)
        return len(budgets)

    def _fold(self, s: Session, scope: str, key: str, month: str) -> None:
        """Move a budget's pending deltas into its totals row: exactly the deltas this DELETE removed are
        added (one committed meanwhile stays for the next fold); the first fold inserts the row."""
        budget = (BudgetDelta.scope == scope, BudgetDelta.budget_key == key, BudgetDelta.month == month)
        deleted = delete(BudgetDelta).where(*budget).returning(BudgetDelta.d_spent, BudgetDelta.d_reserved)
        folded = s.execute(deleted).all()
        if not folded:
            return
        d_spent, d_reserved = sum(int(r[0]) for r in folded), sum(int(r[1]) for r in folded)
        insert_ = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        values = {"scope": scope, "budget_key": key, "month": month}
        s.execute(
            insert_(BudgetTotal)
            .values(**values, spent_nanousd=d_spent, reserved_nanousd=d_reserved)
            .on_conflict_do_update(
                index_elements=list(values),
                set_={
                    "spent_nanousd": BudgetTotal.spent_nanousd + d_spent,
                    "reserved_nanousd": BudgetTotal.reserved_nanousd + d_reserved,
                },
            )
        )

    def p95_latency_ms(self, model: str, since: datetime, min_samples: int = 20) -> float | None:
        """p95 latency of successful calls of a model since ``since`` (None below ``min_samples``)."""
        stmt = (
            select(LlmCall.latency_ms)
            .where(LlmCall.model == model, LlmCall.status == "ok", LlmCall.created_at >= since)
            .order_by(LlmCall.id.desc())
            .limit(5000)
        )
        with self._sessions() as s:
            values = [int(v) for v in s.scalars(stmt)]
        return p95(values) if len(values) >= min_samples else None

    def mean_completion_tokens(
        self, prompt_name: str, prompt_version: str, model: str, min_samples: int = 5
    ) -> float | None:
        """Average completion tokens of this prompt version on this model, from successful calls."""
        stmt = select(func.avg(LlmCall.completion_tokens), func.count()).where(
            LlmCall.prompt_name == prompt_name,
            LlmCall.prompt_version == prompt_version,
            LlmCall.model == model,
            LlmCall.status == "ok",
        )
        with self._sessions() as s:
            avg, n = s.execute(stmt).one()
        return float(avg) if n and n >= min_samples else None

    def spend_by_department(self, run_id: str | None = None) -> dict[str, int]:
        stmt = select(LlmCall.department, func.sum(LlmCall.cost_nanousd)).group_by(LlmCall.department)
        if run_id:
            stmt = stmt.where(LlmCall.run_id == run_id)
        with self._sessions() as s:
            return {d: int(c or 0) for d, c in s.execute(stmt)}

    # -- writes ---------------------------------------------------------------------------------
    def upsert_call(self, session: Session, request_key: str, **fields: Any) -> LlmCall:
        row = session.scalar(select(LlmCall).where(LlmCall.request_key == request_key).with_for_update())
        if row is None:
            row = LlmCall(request_key=request_key, **fields)
            session.add(row)
        else:
            for k, v in fields.items():
                setattr(row, k, v)
        session.flush()
        return row

    def replace_dead_letters(self, run_id: str, letters: list[dict[str, str]]) -> None:
        with self.transaction() as s:
            s.query(DeadLetter).filter(DeadLetter.run_id == run_id).delete()
            s.add_all(DeadLetter(run_id=run_id, **letter) for letter in letters)

    def dead_letters(self, run_id: str) -> list[DeadLetter]:
        with self._sessions() as s:
            return list(s.scalars(select(DeadLetter).where(DeadLetter.run_id == run_id)))

    def save_batch_run(self, run_id: str, **fields: Any) -> None:
        if "counts" in fields and not isinstance(fields["counts"], str):
            fields["counts"] = json.dumps(fields["counts"], sort_keys=True)
        with self.transaction() as s:
            row = s.get(BatchRun, run_id)
            if row is None:
                s.add(BatchRun(run_id=run_id, **fields))
            else:
                for k, v in fields.items():
                    setattr(row, k, v)

    def batch_run(self, run_id: str) -> BatchRun | None:
        with self._sessions() as s:
            return s.get(BatchRun, run_id)
