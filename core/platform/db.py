"""The database handle: engine, sessions and one write transaction at a time where the engine needs it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from core.platform.crypto import Keyring, bind_keyring


def dialect_insert(dialect: str) -> Any:
    """The `insert` of `dialect` ("postgresql" or "sqlite"): both have `on_conflict_do_nothing`, which the exactly-once
    writes (ledger entries, webhook events, outbox keys) rely on."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# Hosts where TLS protects nothing: the traffic never leaves the machine.
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
# Prepared statements kept per connection. The group commit's IN lists and executemany give one statement per
# batch size, so SQLAlchemy's default of 100 would keep evicting and preparing again (a round trip each).
STATEMENT_CACHE_SIZE = 200
DEFAULT_POOL_SIZE = 20


def asyncpg_connect_args(url: str) -> dict[str, Any]:
    """What asyncpg.connect gets besides the URL: the statement cache, and no TLS attempt on loopback.

    asyncpg's default (sslmode "prefer") asks every new connection for TLS first; on 127.0.0.1 or a Unix socket
    that is a wasted round trip, or TLS for nothing when the server has it on. Anywhere else the URL decides
    (`?ssl=require`, `?ssl=verify-full`, ...), and without a word from it asyncpg's "prefer" stays.
    """
    parsed = make_url(url)
    args: dict[str, Any] = {"prepared_statement_cache_size": STATEMENT_CACHE_SIZE}
    if "ssl" in parsed.query or "sslmode" in parsed.query or os.environ.get("PGSSLMODE"):
        return args
    host = str(parsed.host or parsed.query.get("host") or "")
    if host in _LOOPBACK or host.startswith("/"):
        args["ssl"] = False
    return args


class Database:
    """Owns the engine; `transaction()` is the unit of work every service call runs in."""

    def __init__(
        self, url: str, *, echo: bool = False, pool_size: int = DEFAULT_POOL_SIZE, keyring: Keyring | None = None
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # SQL parameters are phone numbers, message bodies and tokens: never in an error or a log line.
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.is_sqlite:
            kwargs["poolclass"] = NullPool
        else:
            # Sized for what one process serves at once (webhooks in flight, the group-commit writers, the outbox,
            # the scheduler), so connections are kept rather than opened and closed under load. No pre-ping: it
            # costs three round trips per checkout; a connection found dead fails its one query, SQLAlchemy then
            # discards every connection of the pool opened before, and that failure is an outage for
            # db_faults (a 503 the provider retries, a retry of the outbox cycle). Recycling bounds how long an
            # idle connection may sit behind a firewall or a server timeout that closes it silently. Last in, first
            # out: a quiet moment's work goes to the few connections used most, whose prepared statements are warm;
            # first in, first out made every one of the pool's connections prepare each statement on its first use
            # (a round trip more, measured as the slowest of a hundred codes).
            kwargs.update(
                pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800, pool_use_lifo=True,
                connect_args=asyncpg_connect_args(url),
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer; serialising our own write transactions turns "database is locked" into a
        # short wait and gives the same exactly-once rules PostgreSQL gets from row locks.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        # None until given: encrypted columns then store plain text (core.platform.crypto).
        self.keyring: Keyring | None = None
        if keyring is not None:
            self.use_keyring(keyring)

    def use_keyring(self, keyring: Keyring) -> None:
        """Encrypt and decrypt this database's encrypted columns with `keyring` from now on."""
        self.keyring = keyring
        bind_keyring(self.engine.sync_engine.dialect, keyring)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction, committed on success and rolled back on error."""
        if self._write_lock is not None:
            async with self._write_lock, self.sessionmaker() as session:
                # BEGIN IMMEDIATE takes SQLite's write lock up front, so other processes wait instead of failing.
                await session.execute(text("BEGIN IMMEDIATE"))
                try:
                    yield session
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    raise
            return
        async with self.sessionmaker() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only; nothing it does is committed."""
        async with self.sessionmaker() as session:
            yield session

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()
