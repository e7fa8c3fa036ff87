"""`cumapp rotate-keys`: every encrypted column's rows re-encrypted with the first data key, in batches, resumable.

Each batch is its own transaction, so a run stopped anywhere (a crash, `--max-batches`) has kept what it did, and
the next run finishes: a row the first key already opens is skipped without a write (a Fernet token authenticates
under exactly one key, so the test is exact and the token format needs no key id). Rows written in plain text
before encryption was turned on are encrypted on the way, which is also what migration 0005 does.

A batch writes a row only if it still holds what was read (compared as text), so the application may keep running
with the new key list meanwhile: a row it rewrote in between is already under the first key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Text, bindparam, cast, column, func, select, table, update
from sqlalchemy.engine import Connection, Row

from core.platform.crypto import EncryptedJSON, EncryptedText, Keyring, looks_encrypted

DEFAULT_BATCH_SIZE = 500

# A column derived from the plain text (a fingerprint): recomputed whenever its row is rewritten.
Derive = Callable[[Keyring, Row[Any], str], dict[str, Any]]


@dataclass(frozen=True)
class EncryptedColumn:
    """One encrypted column, named as the database knows it (migrations describe the schema of their time)."""

    table: str
    column: str
    key: str
    json: bool
    # Other columns the derivation reads, the column it writes (rows where it is NULL need work too) and how.
    reads: tuple[str, ...] = ()
    derived: str | None = None
    derive: Derive | None = None
    max_batch: int | None = None

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass
class ColumnReport:
    name: str
    rows: int = 0
    checked: int = 0
    rewritten: int = 0
    was_plain: int = 0
    current: int = 0
    done: bool = False


@dataclass
class RotationReport:
    columns: list[ColumnReport] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        return all(c.done for c in self.columns)

    def summary(self) -> str:
        rewritten = sum(c.rewritten for c in self.columns)
        plain = sum(c.was_plain for c in self.columns)
        current = sum(c.current for c in self.columns)
        state = "every encrypted row is under the first key" if self.done else (
            "stopped before the end: run `cumapp rotate-keys` again to finish")
        return (
            f"rotate-keys: {rewritten} row(s) re-encrypted ({plain} of them were plain text), {current} already "
            f"under the first key, {len(self.columns)} column(s), {self.batches} batch(es) in {self.seconds:.1f} s; "
            f"{state}"
        )


def _verification_sms_hash(keyring: Keyring, row: Row[Any], text: str) -> dict[str, Any]:
    from core.models import VerificationSms

    return {"text_hash": keyring.fingerprint(VerificationSms.dedupe_text(row.verification_id, text))}


# Columns whose values are large (a picture is up to MEDIA_MAX_BYTES in base64): fewer rows per batch, so a batch
# holds a few megabytes rather than a few hundred.
_BATCH_CAP = {("media_links", "data"): 4}

# Derived columns of the current models, by encrypted column.
_DERIVED: dict[tuple[str, str], tuple[tuple[str, ...], str, Derive]] = {
    ("verification_sms", "text"): (("verification_id",), "text_hash", _verification_sms_hash),
}


def model_columns() -> list[EncryptedColumn]:
    """Every EncryptedText / EncryptedJSON column of the current models."""
    from core.models import Base

    found = []
    for name in sorted(Base.metadata.tables):
        mapped = Base.metadata.tables[name]
        for col in mapped.columns:
            if not isinstance(col.type, EncryptedText | EncryptedJSON):
                continue
            (key,) = mapped.primary_key.columns  # every table with secrets has a one-column key
            reads, derived, derive = _DERIVED.get((name, col.name), ((), None, None))
            found.append(EncryptedColumn(name, col.name, key.name, isinstance(col.type, EncryptedJSON),
                                         reads, derived, derive, _BATCH_CAP.get((name, col.name))))
    return found


def _plain_text(spec: EncryptedColumn, keyring: Keyring, stored: str) -> tuple[str | None, bool]:
    """The plain text of a stored value (None: SQL/JSON null, nothing to do) and whether it was stored in plain."""
    if not spec.json:
        return (keyring.decrypt(stored), False) if looks_encrypted(stored) else (stored, True)
    value = json.loads(stored)
    if value is None:
        return None, False
    if isinstance(value, str) and looks_encrypted(value):
        return keyring.decrypt(value), False
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")), True


def _current(spec: EncryptedColumn, keyring: Keyring, stored: str) -> bool:
    if not keyring.encrypts:  # no key to encrypt with: plain text stays as it is
        return True
    if not spec.json:
        return keyring.is_current(stored)
    value = json.loads(stored)
    return value is None or (isinstance(value, str) and keyring.is_current(value))


def rotate_column(
    connection: Connection, spec: EncryptedColumn, keyring: Keyring, report: ColumnReport, *,
    batch_size: int = DEFAULT_BATCH_SIZE, batches: Iterable[int] | None = None, commit: bool = True,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Rotate one column batch by batch, in key order, one transaction per batch when `commit`; `batches` hands
    out the permission for each batch (it stops early when exhausted). Returns the batches run."""
    key, raw = column(spec.key), column(spec.column)
    target = table(spec.table, key, raw, *(column(name) for name in spec.reads),
                   *((column(spec.derived),) if spec.derived else ()))
    stored_text = cast(raw, Text).label("stored")
    derived_col = column(spec.derived) if spec.derived else None
    report.rows = int(connection.scalar(select(func.count()).select_from(target).where(raw.is_not(None))) or 0)
    writes = update(target).where(key == bindparam("_key"), cast(raw, Text) == bindparam("_old"))
    permits = iter(batches) if batches is not None else None
    batch_size = min(batch_size, spec.max_batch or batch_size)
    after: Any = None
    ran = 0
    while True:
        query = select(key, stored_text, *(column(name) for name in spec.reads),
                       *((derived_col,) if derived_col is not None else ()))
        query = query.select_from(target).where(raw.is_not(None)).order_by(key).limit(batch_size)
        if after is not None:
            query = query.where(key > after)
        rows = connection.execute(query).all()
        if not rows:
            report.done = True
            if commit:
                connection.commit()
            return ran
        if permits is not None and next(permits, None) is None:
            return ran
        changes: list[dict[str, Any]] = []
        for row in rows:
            report.checked += 1
            stored = row.stored
            needs_derived = derived_col is not None and getattr(row, spec.derived or "") is None
            current = _current(spec, keyring, stored)
            if current and not needs_derived:
                report.current += 1
                continue
            text, was_plain = _plain_text(spec, keyring, stored)
            if text is None:
                continue
            if current:  # only the derived column is missing: the value stays as it is
                value = json.loads(stored) if spec.json else stored
                report.current += 1
            else:
                value = keyring.encrypt(text)
                report.rewritten += 1
                report.was_plain += was_plain
            change: dict[str, Any] = {"_key": getattr(row, spec.key), "_old": stored, spec.column: value}
            if spec.derive is not None:
                change.update(spec.derive(keyring, row, text))
            changes.append(change)
        if changes:
            values: dict[str, Any] = {spec.column: bindparam(spec.column, type_=JSON() if spec.json else Text())}
            values.update({name: bindparam(name) for name in changes[0] if name not in ("_key", "_old", spec.column)})
            connection.execute(writes.values(values), changes)
        if commit:
            connection.commit()
        ran += 1
        after = getattr(rows[-1], spec.key)
        if progress is not None:
            progress(f"{spec.name}: {report.checked}/{report.rows} checked, {report.rewritten} re-encrypted")


def rotate_all(
    connection: Connection, keyring: Keyring, *, columns: list[EncryptedColumn] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, max_batches: int | None = None, commit: bool = True,
    progress: Callable[[str], None] | None = None,
) -> RotationReport:
    """Every encrypted column under the first key; stops after `max_batches` batches when given."""
    started = time.monotonic()
    result = RotationReport()
    permits = iter(range(max_batches)) if max_batches is not None else None
    for spec in columns if columns is not None else model_columns():
        report = ColumnReport(spec.name)
        result.columns.append(report)
        result.batches += rotate_column(connection, spec, keyring, report, batch_size=batch_size, batches=permits,
                                        commit=commit, progress=progress)
        if not report.done:
            break
    result.seconds = time.monotonic() - started
    return result


async def rotate_database(
    url: str, keyring: Keyring, *, batch_size: int = DEFAULT_BATCH_SIZE, max_batches: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> RotationReport:
    """rotate_all on the database at `url`, through an engine of its own."""
    from core.platform.db import Database

    db = Database(url, keyring=keyring, pool_size=1)
    try:
        async with db.engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: rotate_all(sync, keyring, batch_size=batch_size, max_batches=max_batches,
                                        progress=progress)
            )
    finally:
        await db.dispose()
