"""Telling "the database cannot be reached right now" from every other error, wherever it surfaces.

PostgreSQL stopped, restarting or unreachable shows up as a refused connection (OSError), as asyncpg's
connection errors, or as SQLAlchemy errors wrapping them (a pooled connection invalidated mid-query). These are
an outage, not a defect: webhooks answer 503 so the provider retries, chat users are told to try again shortly,
and the log says WARNING once per event rather than an ERROR with a traceback per request.
"""

from __future__ import annotations

import re
import sqlite3

import asyncpg
from sqlalchemy import exc as sa_exc

# asyncpg's own: lost or refused connections (class 08), "the database system is starting up / shutting down"
# (57P01-57P03), too many connections (53300), and a connection closed under us.
_ASYNCPG_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)
# SQLAlchemy: a query on a connection found dead, the pool exhausted while connections hang.
_SQLALCHEMY_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
)
_UNAVAILABLE = _SQLALCHEMY_UNAVAILABLE + _ASYNCPG_UNAVAILABLE
_SQLITE_UNAVAILABLE = re.compile(r"database is locked|unable to open database|disk i/o error", re.IGNORECASE)


def database_unavailable(error: BaseException) -> bool:
    """True when `error`, or what caused it, says the database is unreachable rather than that a query is wrong."""
    try:
        return _unavailable(error, set())
    except Exception:  # a classifier must never turn one error into two
        return False


def _unavailable(error: BaseException, seen: set[int]) -> bool:
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.OperationalError) and isinstance(current.orig, sqlite3.Error):
            # SQLite says OperationalError for "no such table" too: only a locked or unreadable file is an outage.
            return _SQLITE_UNAVAILABLE.search(str(current.orig)) is not None
        if isinstance(current, _UNAVAILABLE):
            return True
        if isinstance(current, OSError | TimeoutError):
            return True
        # A pooled connection PostgreSQL closed while it waited, found dead as a transaction begins on it. asyncpg's
        # InterfaceError otherwise means misuse, a defect: only this message is an outage.
        if isinstance(current, asyncpg.exceptions.InterfaceError) and str(current) == "connection is closed":
            return True
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException) and id(orig) not in seen:
            if _unavailable(orig, seen):
                return True
        # Only explicit causes: an error raised while handling an outage elsewhere is still its own defect.
        current = current.__cause__
    return False


def describe(error: BaseException) -> str:
    """One short line for the log: the class and the first line of the message."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message[:200]}" if message else type(error).__name__
