"""The ledger extract of one accounting month (rows whose budget month is the month)."""

from __future__ import annotations

from datetime import UTC

import pandas as pd
from sqlalchemy import func, select

from llmops.ledger import Ledger, LlmCall

COLUMNS = [
    "call_id",
    "request_key",
    "run_id",
    "record_key",
    "purpose",
    "user",
    "department",
    "prompt_name",
    "prompt_version",
    "model",
    "provider",
    "status",
    "findings",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "cost_nanousd",
    "quality_score",
    "budget_month",
    "created_at",
]


def extract_month(ledger: Ledger, month: str) -> pd.DataFrame:
    stmt = select(*[getattr(LlmCall, c) for c in COLUMNS]).where(LlmCall.budget_month == month)
    with ledger.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    df = pd.DataFrame([tuple(r) for r in rows], columns=COLUMNS)
    df["created_at"] = pd.to_datetime(
        [(t if t is None or t.tzinfo else t.replace(tzinfo=UTC)) for t in df["created_at"]], utc=True
    )
    for col in ("prompt_tokens", "completion_tokens", "latency_ms", "cost_nanousd"):
        df[col] = df[col].astype("int64")
    return df


def ledger_total_nano(ledger: Ledger, month: str) -> int:
    with ledger.engine.connect() as conn:
        total = conn.execute(
            select(func.coalesce(func.sum(LlmCall.cost_nanousd), 0)).where(LlmCall.budget_month == month)
        ).scalar_one()
    return int(total)
