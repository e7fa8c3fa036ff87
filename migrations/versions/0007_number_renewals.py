"""number renewals: auto-renew per number, the low-balance notice given, an unpaid number's release under way;
renewal as a ledger kind

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 18:10:00.000000+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "'signup_bonus', 'topup', 'topup_refund', 'grant', 'hold', 'capture', 'release', 'refund', 'merge'"


def upgrade() -> None:
    with op.batch_alter_table('phone_numbers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('auto_renew', sa.Boolean(), server_default=sa.true(), nullable=False))
        batch_op.add_column(sa.Column('low_balance_notice_for', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('release_started_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_phone_numbers_state_renews', ['state', 'renews_at'], unique=False)
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_ledger_entries_kind'), type_='check')
        batch_op.create_check_constraint('kind', f"kind IN ({KINDS}, 'renewal')")


def downgrade() -> None:
    # Renewal entries stay as what they were, a debit of the balance.
    op.execute("UPDATE ledger_entries SET kind = 'grant' WHERE kind = 'renewal'")
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_ledger_entries_kind'), type_='check')
        batch_op.create_check_constraint('kind', f"kind IN ({KINDS})")
    with op.batch_alter_table('phone_numbers', schema=None) as batch_op:
        batch_op.drop_index('ix_phone_numbers_state_renews')
        batch_op.drop_column('release_started_at')
        batch_op.drop_column('low_balance_notice_for')
        batch_op.drop_column('auto_renew')
