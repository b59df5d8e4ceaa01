"""Budget alerts fired (once per budget, month and threshold).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "budget_alerts",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("scope_key", sa.String(250), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("threshold_permille", sa.Integer, nullable=False),
        sa.Column("spent_nanousd", sa.BigInteger, nullable=False),
        sa.Column("limit_nanousd", sa.BigInteger, nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("scope", "scope_key", "month", "threshold_permille", name="uq_budget_alerts_once"),
    )
    op.create_index("ix_llm_calls_user_month", "llm_calls", ["user", "budget_month"])
    op.create_index("ix_llm_calls_prompt_month", "llm_calls", ["prompt_name", "budget_month"])
    op.create_index("ix_llm_calls_model_created", "llm_calls", ["model", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_llm_calls_model_created", table_name="llm_calls")
    op.drop_index("ix_llm_calls_prompt_month", table_name="llm_calls")
    op.drop_index("ix_llm_calls_user_month", table_name="llm_calls")
    op.drop_table("budget_alerts")
