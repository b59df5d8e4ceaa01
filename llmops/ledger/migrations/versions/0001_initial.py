"""Initial ledger: llm_calls, dead_letters, batch_runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "llm_calls",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(32), nullable=False, unique=True),
        sa.Column("request_key", sa.String(32), nullable=False, unique=True),
        sa.Column("run_id", sa.String(250), nullable=False, index=True),
        sa.Column("record_key", sa.String(250), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("user", sa.String(250), nullable=False),
        sa.Column("department", sa.String(100), nullable=False),
        sa.Column("prompt_name", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.String(50), nullable=False),
        sa.Column("model", sa.String(100)),
        sa.Column("provider", sa.String(50)),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("findings", sa.Text, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Integer, nullable=False),
        sa.Column("reserved_nanousd", sa.BigInteger, nullable=False),
        sa.Column("cost_nanousd", sa.BigInteger, nullable=False),
        sa.Column("quality_score", sa.Float),
        sa.Column("prompt_excerpt", sa.String(100), nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("budget_month", sa.String(7), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_llm_calls_department_month", "llm_calls", ["department", "budget_month"])
    op.create_table(
        "dead_letters",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(250), nullable=False, index=True),
        sa.Column("record_key", sa.String(250), nullable=False),
        sa.Column("request_key", sa.String(32), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("run_id", "record_key", name="uq_dead_letters_run_record"),
    )
    op.create_table(
        "batch_runs",
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("prompt_ref", sa.String(150), nullable=False),
        sa.Column("prompt_version", sa.String(50), nullable=False),
        sa.Column("department", sa.String(100), nullable=False),
        sa.Column("user", sa.String(250), nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("total_rows", sa.Integer, nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("output_path", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("batch_runs")
    op.drop_table("dead_letters")
    op.drop_index("ix_llm_calls_department_month", table_name="llm_calls")
    op.drop_table("llm_calls")
