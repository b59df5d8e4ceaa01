"""Quarantine of blocked and denied records (reason, rule, finding types and counts; never raw PII).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("request_key", sa.String(32), nullable=False, unique=True),
        sa.Column("run_id", sa.String(250), nullable=False, index=True),
        sa.Column("record_key", sa.String(250), nullable=False),
        sa.Column("user", sa.String(250), nullable=False),
        sa.Column("department", sa.String(100), nullable=False),
        sa.Column("prompt_name", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.String(50), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("findings", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quarantine")
