"""outbox: a partial index of the deliveries still waiting or being sent, by chat

Built CONCURRENTLY on PostgreSQL (migrations/online.py): the running instances keep writing to the outbox meanwhile.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 02:40:00.000000+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("state IN ('pending', 'sending')")


def upgrade() -> None:
    if online.on_postgresql():
        with op.get_context().autocommit_block():
            online.build_index(
                'ix_outbox_deliveries_active_chat',
                "ON outbox_deliveries (platform, chat_id) WHERE state IN ('pending', 'sending')",
            )
        return
    op.create_index(
        'ix_outbox_deliveries_active_chat', 'outbox_deliveries', ['platform', 'chat_id'], unique=False,
        postgresql_where=ACTIVE, sqlite_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index('ix_outbox_deliveries_active_chat', table_name='outbox_deliveries')
