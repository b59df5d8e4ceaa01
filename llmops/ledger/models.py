"""SQLAlchemy 2 models of the ledger. Money is integer nano-USD (exact sums on every database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

_BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes stored as UTC on every backend (SQLite would drop the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class LlmCall(Base):
    """One row per request key (run, record, purpose, prompt version); ``call_id`` adds the model."""

    __tablename__ = "llm_calls"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(String(32), unique=True)
    request_key: Mapped[str] = mapped_column(String(32), unique=True)
    run_id: Mapped[str] = mapped_column(String(250), index=True)
    record_key: Mapped[str] = mapped_column(String(250))
    purpose: Mapped[str] = mapped_column(String(32))
    user: Mapped[str] = mapped_column(String(250))
    department: Mapped[str] = mapped_column(String(100))
    prompt_name: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[str] = mapped_column(String(50))
    model: Mapped[str | None] = mapped_column(String(100))
    provider: Mapped[str | None] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), index=True)
    reasons: Mapped[str] = mapped_column(Text, default="")
    findings: Mapped[str] = mapped_column(Text, default="{}")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    reserved_nanousd: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nanousd: Mapped[int] = mapped_column(BigInteger, default=0)
    quality_score: Mapped[float | None] = mapped_column(Float)
    prompt_excerpt: Mapped[str] = mapped_column(String(100), default="")
    output: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    budget_month: Mapped[str] = mapped_column(String(7))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_llm_calls_department_month", "department", "budget_month"),
        Index("ix_llm_calls_user_month", "user", "budget_month"),
        Index("ix_llm_calls_prompt_month", "prompt_name", "budget_month"),
        Index("ix_llm_calls_model_created", "model", "created_at"),
    )


class BudgetAlert(Base):
    """One row per (budget scope, key, month, threshold): the alert fires exactly once."""

    __tablename__ = "budget_alerts"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(20))
    scope_key: Mapped[str] = mapped_column(String(250))
    month: Mapped[str] = mapped_column(String(7))
    threshold_permille: Mapped[int] = mapped_column(Integer)
    spent_nanousd: Mapped[int] = mapped_column(BigInteger)
    limit_nanousd: Mapped[int] = mapped_column(BigInteger)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("scope", "scope_key", "month", "threshold_permille", name="uq_budget_alerts_once"),
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(250), index=True)
    record_key: Mapped[str] = mapped_column(String(250))
    request_key: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("run_id", "record_key", name="uq_dead_letters_run_record"),)


class BatchRun(Base):
    __tablename__ = "batch_runs"

    run_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    prompt_ref: Mapped[str] = mapped_column(String(150))
    prompt_version: Mapped[str] = mapped_column(String(50))
    department: Mapped[str] = mapped_column(String(100))
    user: Mapped[str] = mapped_column(String(250))
    input: Mapped[str] = mapped_column(Text)
    total_rows: Mapped[int] = mapped_column(Integer)
    counts: Mapped[str] = mapped_column(Text, default="{}")
    status: Mapped[str] = mapped_column(String(20))
    output_path: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class EvalResult(Base):
    """One row per night × prompt version × model: the quality table the router reads."""

    __tablename__ = "eval_results"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    night: Mapped[str] = mapped_column(String(10))
    prompt_name: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    cases: Mapped[int] = mapped_column(Integer)
    overall: Mapped[float] = mapped_column(Float)
    pass_rate: Mapped[float] = mapped_column(Float)
    metrics: Mapped[str] = mapped_column(Text)  # JSON {metric: mean}
    cost_nanousd: Mapped[int] = mapped_column(BigInteger)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("night", "prompt_name", "prompt_version", "model", name="uq_eval_results_night"),
        Index("ix_eval_results_prompt_model", "prompt_name", "model", "night"),
    )


class Quarantine(Base):
    """Blocked and denied records for review by the data owner. Holds finding types and counts only."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    request_key: Mapped[str] = mapped_column(String(32), unique=True)
    run_id: Mapped[str] = mapped_column(String(250), index=True)
    record_key: Mapped[str] = mapped_column(String(250))
    user: Mapped[str] = mapped_column(String(250))
    department: Mapped[str] = mapped_column(String(100))
    prompt_name: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20))
    rule: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    findings: Mapped[str] = mapped_column(Text)  # JSON {type: count}
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    released_by: Mapped[str | None] = mapped_column(String(250), nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    release_note: Mapped[str | None] = mapped_column(Text, nullable=True)


class RateEvent(Base):
    """One admitted request in a rate-limit scope's sliding minute (``person:<email>``, ``department:<name>``)."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_scope_at", "scope", "at"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(300))
    at: Mapped[float] = mapped_column(Float)
    tokens: Mapped[int] = mapped_column(Integer)


class AlertState(Base):
    """One row per operational alert rule and key: fires once per breach, re-arms when the breach clears."""

    __tablename__ = "alert_state"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(50))
    alert_key: Mapped[str] = mapped_column(String(250))
    firing: Mapped[bool] = mapped_column(Boolean)
    value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    detail: Mapped[str] = mapped_column(Text)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fire_count: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (UniqueConstraint("rule", "alert_key", name="uq_alert_state_rule_key"),)


class BudgetTotal(Base):
    """A budget's month usage as of its last fold (migration 0007): add its :class:`BudgetDelta` rows."""

    __tablename__ = "budget_totals"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # department | person | prompt
    budget_key: Mapped[str] = mapped_column(String(250), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    spent_nanousd: Mapped[int] = mapped_column(BigInteger)
    reserved_nanousd: Mapped[int] = mapped_column(BigInteger)


class BudgetDelta(Base):
    """A change of one ledger row's cost or reservation, for one budget; appended by triggers on llm_calls
    (never by the application), folded into :class:`BudgetTotal` by the reservation that reads the budget."""

    __tablename__ = "budget_deltas"
    __table_args__ = (Index("ix_budget_deltas_budget", "scope", "budget_key", "month"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))
    budget_key: Mapped[str] = mapped_column(String(250))
    month: Mapped[str] = mapped_column(String(7))
    d_spent: Mapped[int] = mapped_column(BigInteger)
    d_reserved: Mapped[int] = mapped_column(BigInteger)
