"""subscriptions: a paid tier per account (Telegram Stars or the balance) and one row per paid period

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 18:05:00.000000+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('subscriptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('auto_renew', sa.Boolean(), nullable=False),
    sa.Column('paid_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('platform_user_id', sa.String(length=64), nullable=True),
    sa.Column('charge_id', sa.String(length=160), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("tier IN ('free', 'pro', 'business')", name=op.f('ck_subscriptions_tier')),
    sa.CheckConstraint("channel IN ('stars', 'balance')", name=op.f('ck_subscriptions_channel')),
    sa.CheckConstraint("state IN ('active', 'lapsed')", name=op.f('ck_subscriptions_state')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_subscriptions_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscriptions')),
    sa.UniqueConstraint('user_id', name=op.f('uq_subscriptions_user_id'))
    )
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.create_index('ix_subscriptions_state_paid_until', ['state', 'paid_until'], unique=False)

    op.create_table('subscription_payments',
    sa.Column('id', BigId, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('charge_id', sa.String(length=160), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('paid_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_subscription_payments_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscription_payments')),
    sa.UniqueConstraint('provider', 'charge_id', name=op.f('uq_subscription_payments_provider_charge_id'))
    )
    with op.batch_alter_table('subscription_payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subscription_payments_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    op.drop_table('subscription_payments')
    op.drop_table('subscriptions')
