"""integrator API: events, idempotency keys, webhook endpoints; the outbox also delivers to webhooks

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:20:00.000000+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('api_events',
    sa.Column('id', BigId, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('dedupe_key', sa.String(length=160), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_events_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_events')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_api_events_dedupe_key'))
    )
    with op.batch_alter_table('api_events', schema=None) as batch_op:
        batch_op.create_index('ix_api_events_user_id', ['user_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_api_events_created_at'), ['created_at'], unique=False)

    op.create_table('api_idempotency',
    sa.Column('id', BigId, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_idempotency_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_idempotency')),
    sa.UniqueConstraint('user_id', 'key', name=op.f('uq_api_idempotency_user_id_key'))
    )
    with op.batch_alter_table('api_idempotency', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_idempotency_created_at'), ['created_at'], unique=False)

    op.create_table('api_webhook_endpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_webhook_endpoints_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_webhook_endpoints'))
    )
    with op.batch_alter_table('api_webhook_endpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_webhook_endpoints_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('outbox_deliveries', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_outbox_deliveries_platform'), type_='check')
        batch_op.create_check_constraint(
            'platform', "platform IN ('telegram', 'discord', 'console', 'webhook')"
        )


def downgrade() -> None:
    op.execute("DELETE FROM outbox_deliveries WHERE platform = 'webhook'")
    with op.batch_alter_table('outbox_deliveries', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_outbox_deliveries_platform'), type_='check')
        batch_op.create_check_constraint('platform', "platform IN ('telegram', 'discord', 'console')")
    op.drop_table('api_webhook_endpoints')
    op.drop_table('api_idempotency')
    op.drop_table('api_events')
