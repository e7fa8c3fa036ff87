"""The database handle: engine, sessions and one write transaction at a time where the engine needs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from core.platform.crypto import Keyring, bind_keyring


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    """Owns the engine; `transaction()` is the unit of work every service call runs in."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10, keyring: Keyring | None = None) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # SQL parameters are phone numbers, message bodies and tokens: never in an error or a log line.
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.is_sqlite:
            kwargs["poolclass"] = NullPool
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
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
