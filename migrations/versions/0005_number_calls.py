"""number calls: what a call to an owned number gets (voicemail, off, forward), and the calls received

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 18:00:00.000000+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('phone_numbers', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('call_mode', sa.String(length=16), server_default='voicemail', nullable=False)
        )
        batch_op.add_column(sa.Column('call_forward_to', sa.String(length=32), nullable=True))
        batch_op.create_check_constraint(
            op.f('ck_phone_numbers_call_mode'), "call_mode IN ('voicemail', 'off', 'forward')"
        )

    op.create_table('calls',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('call_sid', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('phone_number_id', sa.Integer(), nullable=False),
    sa.Column('from_e164', sa.String(length=32), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('forwarded_to', sa.String(length=32), nullable=True),
    sa.Column('recording_sid', sa.String(length=64), nullable=True),
    sa.Column('recording_seconds', sa.Integer(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("mode IN ('voicemail', 'off', 'forward')", name=op.f('ck_calls_mode')),
    sa.ForeignKeyConstraint(['phone_number_id'], ['phone_numbers.id'], name=op.f('fk_calls_phone_number_id_phone_numbers')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_calls_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calls')),
    sa.UniqueConstraint('call_sid', name=op.f('uq_calls_call_sid')),
    sa.UniqueConstraint('recording_sid', name=op.f('uq_calls_recording_sid'))
    )
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.create_index('ix_calls_user_received', ['user_id', 'received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index('ix_calls_user_received')
    op.drop_table('calls')
    with op.batch_alter_table('phone_numbers', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_phone_numbers_call_mode'), type_='check')
        batch_op.drop_column('call_forward_to')
        batch_op.drop_column('call_mode')
