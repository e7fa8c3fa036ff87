"""outbox: claims walk the pending rows in order and check each one's chat by id

So that a claim reads what it claims rather than the whole backlog (core/platform/outbox/claim_plan.py).

On PostgreSQL the indexes are built and the old one dropped CONCURRENTLY (migrations/online.py), so the instances
still running keep storing webhooks and claiming deliveries while this runs; run again after a failure, it takes
up where it stopped.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 00:40:00.000000+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("state IN ('pending', 'sending')")
PENDING = sa.text("state = 'pending'")

ACTIVE_CHAT = 'ix_outbox_deliveries_active_chat'
ACTIVE_CHAT_BUILDING = 'ix_outbox_deliveries_active_chat_by_id'  # built beside the old one, then renamed to it
PENDING_ORDER = 'ix_outbox_deliveries_pending_order'
ACTIVE_CHAT_SQL = "ON outbox_deliveries (platform, chat_id, id) WHERE state IN ('pending', 'sending')"
PENDING_ORDER_SQL = "ON outbox_deliveries (priority DESC, id) WHERE state = 'pending'"


def upgrade() -> None:
    if not online.on_postgresql():
        op.drop_index(ACTIVE_CHAT, table_name='outbox_deliveries')
        op.create_index(ACTIVE_CHAT, 'outbox_deliveries', ['platform', 'chat_id', 'id'], unique=False,
                        sqlite_where=ACTIVE)
        op.create_index(PENDING_ORDER, 'outbox_deliveries', [sa.text('priority DESC'), 'id'], unique=False,
                        sqlite_where=PENDING)
        return
    with op.get_context().autocommit_block():
        if 'chat_id, id)' not in (online.definition(ACTIVE_CHAT) or ''):  # not renamed yet by an earlier run
            online.build_index(ACTIVE_CHAT_BUILDING, ACTIVE_CHAT_SQL)
            online.drop_index(ACTIVE_CHAT)
            # Renaming an index takes no lock that keeps readers or writers of the table waiting.
            op.execute(f'ALTER INDEX {ACTIVE_CHAT_BUILDING} RENAME TO {ACTIVE_CHAT}')
        online.build_index(PENDING_ORDER, PENDING_ORDER_SQL)


def downgrade() -> None:
    op.drop_index(PENDING_ORDER, table_name='outbox_deliveries')
    op.drop_index(ACTIVE_CHAT, table_name='outbox_deliveries')
    op.create_index(
        ACTIVE_CHAT, 'outbox_deliveries', ['platform', 'chat_id'], unique=False,
        postgresql_where=ACTIVE, sqlite_where=ACTIVE,
    )
