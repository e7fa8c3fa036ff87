"""outbox: claims walk the pending rows in order and check each one's chat by id

So that a claim reads what it claims rather than the whole backlog (core/platform/outbox/claim_plan.py).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 00:40:00.000000+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("state IN ('pending', 'sending')")
PENDING = sa.text("state = 'pending'")


def upgrade() -> None:
    op.drop_index('ix_outbox_deliveries_active_chat', table_name='outbox_deliveries')
    op.create_index(
        'ix_outbox_deliveries_active_chat', 'outbox_deliveries', ['platform', 'chat_id', 'id'], unique=False,
        postgresql_where=ACTIVE, sqlite_where=ACTIVE,
    )
    op.create_index(
        'ix_outbox_deliveries_pending_order', 'outbox_deliveries', [sa.text('priority DESC'), 'id'], unique=False,
        postgresql_where=PENDING, sqlite_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index('ix_outbox_deliveries_pending_order', table_name='outbox_deliveries')
    op.drop_index('ix_outbox_deliveries_active_chat', table_name='outbox_deliveries')
    op.create_index(
        'ix_outbox_deliveries_active_chat', 'outbox_deliveries', ['platform', 'chat_id'], unique=False,
        postgresql_where=ACTIVE, sqlite_where=ACTIVE,
    )
