"""Many-row INSERTs for the hot paths on PostgreSQL: one statement over unnest() of a column's array each, sent by
asyncpg itself inside the caller's transaction.

An executemany through SQLAlchemy (insertmanyvalues) builds a bound parameter per value and renders the statement
for each batch size; here the statement is rendered once per table and column list, and a batch costs one list
per column (the group commit of 48 inbound SMS: 0.204-0.227 ms of CPU per SMS before, 0.174-0.205 ms after,
bench/group_commit.py). Values still pass through each column's own bind processor (encryption, JSON, UTC
datetimes), so what is stored is what the ORM would have stored. SQLite, the embedded default, keeps the
executemany: `driver_connection` answers None there."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class Arrays:
    """Rows sent as one array per column: which columns, and each one's bind processor."""

    columns: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def arrays(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        """One list per column, each value through the column's bind processor."""
        arrays: list[list[Any]] = []
        for name, process in zip(self.columns, self.processors, strict=True):
            values = [row[name] for row in rows]
            arrays.append(values if process is None else [None if v is None else process(v) for v in values])
        return arrays


@dataclass(frozen=True)
class UnnestInsert(Arrays):
    """`INSERT INTO table (columns) SELECT * FROM unnest($1::type[], …) ON CONFLICT … DO NOTHING RETURNING …`."""

    sql: str

    async def fetch(self, connection: Any, rows: Sequence[Mapping[str, Any]], *extra: Any) -> list[Any]:
        """The rows (asyncpg Records) the statement returns for the rows inserted; `connection` is the asyncpg
        connection, `extra` the parameters after the columns' arrays that a suffix uses."""
        return list(await connection.fetch(self.sql, *self.arrays(rows), *extra))


@functools.cache
def unnest_source(
    table: Table, columns: tuple[str, ...], dialect: Dialect, first: int = 1, extra: tuple[tuple[str, str], ...] = ()
) -> tuple[str, Arrays]:
    """`unnest($first::type[], …) AS u(columns…)` of `columns` of `table`, then of the `extra` (name, SQL type)
    columns that are no column of it (a key to filter the rows by, say), and how the rows become the arrays of
    `columns`; the caller sends the extra columns' arrays after them."""
    # Python-side defaults are the ORM's and Core's to fill in, not unnest's: every column that has one must be given.
    missing = [c.name for c in table.columns if c.name not in columns and c.default is not None]
    if missing:
        raise ValueError(f"unnest into {table.name} needs values for {', '.join(missing)}")
    casts = []
    processors: list[Callable[[Any], Any] | None] = []
    for index, name in enumerate(columns, start=first):
        column = table.c[name]
        casts.append(f"${index}::{column.type.compile(dialect)}[]")
        processors.append(column.type.dialect_impl(dialect).bind_processor(dialect))
    for index, (_name, sql_type) in enumerate(extra, start=first + len(columns)):
        casts.append(f"${index}::{sql_type}[]")
    names = (*columns, *(name for name, _type in extra))
    return f"unnest({', '.join(casts)}) AS u({', '.join(names)})", Arrays(columns, tuple(processors))


@functools.cache
def unnest_insert(
    table: Table, columns: tuple[str, ...], conflict: tuple[str, ...], returning: tuple[str, ...],
    dialect: Dialect, suffix: str = "",
) -> UnnestInsert:
    """The statement for `columns` of `table`, rows conflicting on `conflict` left out; `suffix` is SQL that
    reads the inserted rows from a CTE named `added` (default: `SELECT` the `returning` columns); its own
    parameters are numbered from len(columns) + 1."""
    source, arrays = unnest_source(table, columns, dialect)
    insert = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM {source} "
        f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING RETURNING {', '.join(returning)}"
    )
    sql = f"WITH added AS ({insert}) {suffix or 'SELECT ' + ', '.join(returning) + ' FROM added'}"
    return UnnestInsert(arrays.columns, arrays.processors, sql)


def columns_of(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The columns of `rows`, which must all have the same keys (as an executemany's), in the first row's order."""
    columns = tuple(rows[0])
    if any(row.keys() != rows[0].keys() for row in rows):
        raise ValueError("every row of one insert must have the same columns")
    return columns


async def driver_connection(session: AsyncSession, *, begin: bool = True) -> Any | None:
    """The asyncpg connection under the session's transaction on PostgreSQL; None on SQLite.

    With `begin` False, the transaction is not begun if it was not yet: what runs on the connection then commits
    on its own (a read, or one statement that is a whole write), until something begins it."""
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        return None
    raw = await connection.get_raw_connection()
    if not begin:
        return raw.driver_connection
    adapted = raw.dbapi_connection
    # SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement it runs itself: a statement sent
    # straight to asyncpg before any would run outside the transaction and stay when the transaction rolls back.
    # The adapter's own start is used, so SQLAlchemy commits or rolls back what it began (tests/core/platform/
    # test_driver_sql.py fails if its internals change).
    if adapted is not None and adapted._transaction is None and not adapted.autocommit:
        await adapted._start_transaction()
    return raw.driver_connection
