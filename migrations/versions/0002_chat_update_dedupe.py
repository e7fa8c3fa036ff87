"""chat update dedupe: claimed Telegram update ids and Discord interaction ids, kept a day

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 14:41:29.561392+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('chat_updates',
    sa.Column('platform', sa.String(length=16), nullable=False),
    sa.Column('update_id', sa.String(length=64), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('platform', 'update_id', name=op.f('pk_chat_updates'))
    )
    with op.batch_alter_table('chat_updates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_updates_seen_at'), ['seen_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('chat_updates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_updates_seen_at'))

    op.drop_table('chat_updates')
