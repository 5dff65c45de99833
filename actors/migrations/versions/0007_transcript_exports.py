"""Transcript exports: a meeting's transcript as text pages, written by actors/exports.py.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "transcript_exports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("meeting_id", sa.String(255), nullable=False),
        sa.Column("first_idx", sa.Integer(), nullable=False),
        sa.Column("last_idx", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_transcript_exports"),
        sa.UniqueConstraint("meeting_id", "first_idx", name="uq_transcript_exports_meeting_id_first_idx"),
    )


def downgrade() -> None:
    op.drop_table("transcript_exports")
