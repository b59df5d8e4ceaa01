"""Operational alert state: one row per (rule, key) so a breach notifies once and re-arms when it clears.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(50), nullable=False),
        sa.Column("alert_key", sa.String(250), nullable=False),
        sa.Column("firing", sa.Boolean, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fire_count", sa.Integer, nullable=False),
        sa.UniqueConstraint("rule", "alert_key", name="uq_alert_state_rule_key"),
    )


def downgrade() -> None:
    op.drop_table("alert_state")
