"""encryption at rest: verification SMS texts get a keyed fingerprint column and codes room for a token; rows
stored in plain text before encryption are encrypted with the key the application uses

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 18:15:00.000000+00:00

The key is found as `cumapp` finds it: DATA_ENCRYPTION_KEYS (environment or .env), else the sandbox key file
beside the SQLite database when every provider is simulated. The file is read, never made here: `cumapp run` and
`cumapp migrate` make it before migrating; a bare `alembic upgrade` without a key leaves the rows in plain text,
which the application reads as before and `cumapp rotate-keys` encrypts later.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _keyring(url: str):  # type: ignore[no-untyped-def]
    from core.platform.crypto import PLAIN_TEXT, Keyring, read_key_file, sandbox_key_path
    from core.platform.settings import Settings
    from core.providers.plan import MissingCredentials, plan_providers

    settings = Settings(database_url=url)  # type: ignore[call-arg]
    keys = settings.encryption_keys()
    if keys:
        return Keyring(keys)
    try:
        all_sandbox = plan_providers(settings).all_sandbox
    except MissingCredentials:
        all_sandbox = False
    path = sandbox_key_path(url) if all_sandbox else None
    if path is not None and path.exists():
        return Keyring([read_key_file(path)])
    return PLAIN_TEXT


def _dedupe_text(verification_id: int, text: str) -> str:
    # As VerificationSms.dedupe_text at this revision.
    return f"{verification_id}\n{' '.join(text.split())}"


def _columns():  # type: ignore[no-untyped-def]
    from core.platform.rotate_keys import EncryptedColumn

    def sms_hash(keyring, row, text):  # type: ignore[no-untyped-def]
        return {"text_hash": keyring.fingerprint(_dedupe_text(row.verification_id, text))}

    return [
        EncryptedColumn('api_events', 'data', 'id', True),
        EncryptedColumn('api_idempotency', 'response', 'id', True),
        EncryptedColumn('api_webhook_endpoints', 'secret', 'id', False),
        EncryptedColumn('key_values', 'value', 'key', True),
        EncryptedColumn('messages', 'body', 'id', False),
        EncryptedColumn('outbox_deliveries', 'payload', 'id', True),
        EncryptedColumn('verification_sms', 'code', 'id', False),
        EncryptedColumn('verification_sms', 'text', 'id', False, ('verification_id',), 'text_hash', sms_hash),
        EncryptedColumn('verifications', 'code', 'id', False),
        EncryptedColumn('verifications', 'sms_text', 'id', False),
    ]


def upgrade() -> None:
    from core.platform.rotate_keys import rotate_all

    # A code is a piece of its SMS: encrypted too, so it needs room for a token.
    with op.batch_alter_table('verifications', schema=None) as batch_op:
        batch_op.alter_column('code', existing_type=sa.String(length=32), type_=sa.Text(), existing_nullable=True)
    with op.batch_alter_table('verification_sms', schema=None) as batch_op:
        batch_op.add_column(sa.Column('text_hash', sa.String(length=64), nullable=True))
        batch_op.alter_column('code', existing_type=sa.String(length=32), type_=sa.Text(), existing_nullable=True)
    bind = op.get_bind()
    keyring = _keyring(bind.engine.url.render_as_string(hide_password=False))
    # One transaction with the schema change: a failure leaves the database as it was.
    rotate_all(bind, keyring, columns=_columns(), commit=False)
    with op.batch_alter_table('verification_sms', schema=None) as batch_op:
        batch_op.alter_column('text_hash', existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    # The version before reads SMS bodies, outbox payloads and the rest encrypted, but verification texts in plain.
    from core.platform.crypto import looks_encrypted

    bind = op.get_bind()
    keyring = _keyring(bind.engine.url.render_as_string(hide_password=False))
    pairs = (('verification_sms', 'text'), ('verification_sms', 'code'), ('verifications', 'sms_text'),
             ('verifications', 'code'))
    for name, column in pairs:
        target = sa.table(name, sa.column('id'), sa.column(column, sa.Text))
        rows = bind.execute(sa.select(target.c.id, target.c[column]).where(target.c[column].is_not(None))).all()
        plain = [{'_id': id_, column: keyring.decrypt(value)} for id_, value in rows if looks_encrypted(value)]
        if plain:
            bind.execute(target.update().where(target.c.id == sa.bindparam('_id')), plain)
    with op.batch_alter_table('verification_sms', schema=None) as batch_op:
        batch_op.drop_column('text_hash')
        batch_op.alter_column('code', existing_type=sa.Text(), type_=sa.String(length=32), existing_nullable=True)
    with op.batch_alter_table('verifications', schema=None) as batch_op:
        batch_op.alter_column('code', existing_type=sa.Text(), type_=sa.String(length=32), existing_nullable=True)
