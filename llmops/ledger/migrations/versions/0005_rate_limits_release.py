"""Rate-limit window events (per person / department), and release of quarantined records.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rate_events",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(300), nullable=False),  # "person:<email>" or "department:<name>"
        sa.Column("at", sa.Float, nullable=False),  # epoch seconds of admission
        sa.Column("tokens", sa.Integer, nullable=False),  # prompt tokens + max_tokens charged
    )
    op.create_index("ix_rate_events_scope_at", "rate_events", ["scope", "at"])
    with op.batch_alter_table("quarantine") as batch:
        batch.add_column(sa.Column("released_by", sa.String(250), nullable=True))
        batch.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("release_note", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quarantine") as batch:
        batch.drop_column("release_note")
        batch.drop_column("released_at")
        batch.drop_column("released_by")
    op.drop_index("ix_rate_events_scope_at", table_name="rate_events")
    op.drop_table("rate_events")
