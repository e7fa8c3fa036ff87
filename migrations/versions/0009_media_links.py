"""media links: pictures sent as MMS, served to the provider under an expiring token

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 18:05:00.000000+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('media_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_media_links')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_media_links_token_hash'))
    )
    with op.batch_alter_table('media_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_media_links_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('media_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_media_links_expires_at'))
    op.drop_table('media_links')
