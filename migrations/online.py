"""Index builds that leave the table usable while they run, for migrations on tables the running instances write to.

A plain CREATE INDEX blocks every write to its table for as long as it reads the table, and a plain DROP INDEX
every read as well, until the migration's transaction ends; on PostgreSQL these run CONCURRENTLY instead, outside
any transaction (docs/DEPLOY.md, Upgrades: the old instances keep serving while `cumapp migrate` runs). SQLite has
one process and no such builds: the callers keep Alembic's own operations there."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def on_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def build_index(name: str, on: str) -> None:
    """`CREATE INDEX CONCURRENTLY name on`, unless a valid index of that name is there. A build that failed half way
    left an invalid one: it is dropped and built again. Call inside `op.get_context().autocommit_block()`."""
    valid = op.get_bind().execute(sa.text(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace"
    ), {"name": name}).scalar()
    if valid:
        return
    if valid is not None:
        drop_index(name)
    op.execute(f"CREATE INDEX CONCURRENTLY {name} {on}")


def drop_index(name: str) -> None:
    """`DROP INDEX CONCURRENTLY IF EXISTS name`. Call inside `op.get_context().autocommit_block()`."""
    op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def definition(name: str) -> str | None:
    """The index's CREATE INDEX statement as PostgreSQL shows it, or None when there is none of that name."""
    return op.get_bind().execute(
        sa.text("SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = :name"),
        {"name": name},
    ).scalar()
