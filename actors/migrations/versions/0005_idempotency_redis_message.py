"""Where a keyed send put its message on Redis, so a claim whose sender died before sending can be taken over.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("redis_queue", sa.String(255), nullable=True))
        batch.add_column(sa.Column("redis_message_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("redis_message_id")
        batch.drop_column("redis_queue")
