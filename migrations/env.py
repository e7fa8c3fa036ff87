"""Alembic environment: runs migrations on the async engine named by the configuration's URL."""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from core.models import Base
from core.platform.settings import Settings

config = context.config
target_metadata = Base.metadata

if config.config_file_name:  # the alembic command line; `cumapp migrate` keeps the application's logging
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# `cumapp migrate` passes the URL; `alembic …` from the project root (alembic.ini) takes DATABASE_URL like cumapp does.
if not config.get_main_option("sqlalchemy.url"):
    config.set_main_option("sqlalchemy.url", Settings().database_url.replace("%", "%%"))


# SQLite reflects an index's columns without their order (DESC), so this one always looks changed there; PostgreSQL
# still compares it.
_UNREFLECTED_ON_SQLITE = frozenset({"ix_outbox_deliveries_pending_order"})


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"

    def include_object(_object: object, name: str | None, type_: str, _reflected: bool, _compare_to: object) -> bool:
        return not (sqlite and type_ == "index" and name in _UNREFLECTED_ON_SQLITE)

    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=sqlite,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = async_engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    async with engine.connect() as connection:
        await connection.run_sync(_configure)
    await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    asyncio.run(_run_async())


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
