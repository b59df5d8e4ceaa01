"""Nightly evaluation results (the quality table the router reads).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "eval_results",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("night", sa.String(10), nullable=False),
        sa.Column("prompt_name", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.String(50), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("cases", sa.Integer, nullable=False),
        sa.Column("overall", sa.Float, nullable=False),
        sa.Column("pass_rate", sa.Float, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("cost_nanousd", sa.BigInteger, nullable=False),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("night", "prompt_name", "prompt_version", "model", name="uq_eval_results_night"),
    )
    op.create_index("ix_eval_results_prompt_model", "eval_results", ["prompt_name", "model", "night"])


def downgrade() -> None:
    op.drop_index("ix_eval_results_prompt_model", table_name="eval_results")
    op.drop_table("eval_results")
