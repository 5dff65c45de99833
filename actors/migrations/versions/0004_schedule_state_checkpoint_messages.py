"""The scheduler's per-entry state; the message saved with each checkpoint (stalled-job hand-back).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedule_state",
        sa.Column("entry", sa.String(100), nullable=False),
        sa.Column("last_scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_outcome", sa.String(16), nullable=False),
        sa.Column("last_message_id", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("fired_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("entry", name="pk_schedule_state"),
    )
    with op.batch_alter_table("job_checkpoints") as batch:
        batch.add_column(sa.Column("message", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_checkpoints") as batch:
        batch.drop_column("message")
    op.drop_table("schedule_state")
