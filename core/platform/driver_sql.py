"""SQLAlchemy Core statements compiled once for PostgreSQL and run by asyncpg itself, on the hot paths.

Each execution through SQLAlchemy builds its parameters, its cache key and its result objects anew: for the inbound
group commit's two reads and its unread-count update that was about 0.8 ms of a batch's 2.8 ms of fixed CPU
(bench/group_commit.py). Here a statement is compiled once (its SQL, the order of its parameters, their bind
processors, the result columns' processors) and a call costs asyncpg's own work. The caller's transaction is
kept: it runs on the session's own connection (`bulk.driver_connection`). Lists are passed as one array
(`= ANY($n)`, see `in_array`), never as an expanding IN, whose SQL changes with the list's length. `fetch` and
`execute_many` run a statement so on PostgreSQL and through SQLAlchemy on SQLite, so callers need not choose."""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from core.platform.bulk import driver_connection


def in_array(column: Any, name: str, postgresql: bool) -> ColumnElement[bool]:
    """`column` is one of the list bound as `name`: `= ANY($n)` of one array on PostgreSQL, an expanding IN
    elsewhere (SQLite has no arrays)."""
    if postgresql:
        return column == func.any(bindparam(name, type_=ARRAY(column.type)))  # type: ignore[no-any-return]
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DriverStatement:
    """A compiled statement: its SQL, and how a dict of parameters and asyncpg's rows are converted."""

    sql: str
    names: tuple[str, ...]  # the bound parameters, in their $n order
    fixed: Mapping[str, Any]  # the values bound in the statement itself (literals SQLAlchemy made parameters)
    processors: tuple[Callable[[Any], Any] | None, ...]
    row: Any  # a namedtuple class of the result columns, or None for a statement that returns none
    results: tuple[Callable[[Any], Any] | None, ...]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        values = []
        for name, process in zip(self.names, self.processors, strict=True):
            value = self.fixed[name] if name in self.fixed else params[name]
            values.append(value if process is None or value is None else process(value))
        return values

    async def fetch(self, connection: Any, params: Mapping[str, Any]) -> list[Any]:
        """The rows, with attribute access as SQLAlchemy's; `connection` is the asyncpg connection."""
        records = await connection.fetch(self.sql, *self.args(params))
        if not any(self.results):
            return [self.row._make(record) for record in records]
        return [self.row._make(value if process is None or value is None else process(value)
                               for value, process in zip(record, self.results, strict=True)) for record in records]

    async def executemany(self, connection: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """One execution per row, sent in order (so the rows' locks are taken in that order) in one round trip."""
        await connection.executemany(self.sql, [self.args(row) for row in rows])


@functools.cache
def driver_statement(statement: Any, dialect: Dialect) -> DriverStatement:
    """`statement` (a Core select, update or insert, built once by its caller) compiled for asyncpg."""
    compiled = statement.compile(dialect=dialect)
    # SQLAlchemy fills these in per execution (an `onupdate=utcnow`, a Python default): left to us, they would be NULL.
    prefetched = [column.name for column in (*compiled.insert_prefetch, *compiled.update_prefetch)]
    if prefetched:
        raise ValueError(f"give {', '.join(prefetched)} a value: its Python-side default is SQLAlchemy's to fill in")
    names = tuple(compiled.positiontup or ())
    binds = [compiled.binds[name] for name in names]
    if any(bind.expanding for bind in binds):
        raise ValueError("an expanding IN renders new SQL for each list length: use in_array()")
    processors = tuple(bind.type.dialect_impl(dialect).bind_processor(dialect) for bind in binds)
    fixed = {name: bind.value for name, bind in zip(names, binds, strict=True) if not bind.required}
    selected = list(getattr(statement, "selected_columns", ()))
    results = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in selected)
    row = namedtuple("Row", [column.key for column in selected]) if selected else None  # type: ignore[misc]
    return DriverStatement(compiled.string, names, fixed, processors, row, results)


async def fetch(session: AsyncSession, statement: Any, params: Mapping[str, Any], *, begin: bool = True) -> list[Any]:
    """The rows of `statement` in the session's transaction: by asyncpg on PostgreSQL, by SQLAlchemy on SQLite.
    `begin` False: on PostgreSQL, outside the transaction when it has not begun yet (see `driver_connection`)."""
    driver = await driver_connection(session, begin=begin)
    if driver is not None:
        return await driver_statement(statement, session.bind.dialect).fetch(driver, params)
    return list((await (await session.connection()).execute(statement, dict(params))).all())


async def execute_many(session: AsyncSession, statement: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """`statement` once per row, in order, in the session's transaction (asyncpg on PostgreSQL, else SQLAlchemy)."""
    driver = await driver_connection(session)
    if driver is not None:
        await driver_statement(statement, session.bind.dialect).executemany(driver, rows)
    else:
        await (await session.connection()).execute(statement, [dict(row) for row in rows])
