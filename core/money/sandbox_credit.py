"""Credit given out while providers were simulated: noted when the sandbox runs, taken back before going live.

A database that served simulated numbers holds balances nobody paid for (sign-up bonuses, admin grants). Such a
database must not start with SANDBOX=false until `cumapp reset-sandbox-balances` has taken that credit back through
the ledger, so the history of each account shows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, exists, func, inspect, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import KeyValue, LedgerEntry, PhoneNumber, User, Verification
from core.money import ledger
from core.platform.clock import utcnow
from core.platform.db import Database, dialect_insert

# Markers are key_values rows whose key carries the time ("sandbox:since:<ISO time>"), so that reading them never
# decrypts a value: the sandbox and the live bot may hold different data keys.
SINCE_PREFIX = "sandbox:since:"  # the first start with a simulated provider since the last reset
RESET_PREFIX = "sandbox:reset:"  # the last `cumapp reset-sandbox-balances`
CREDIT_KINDS = ("signup_bonus", "grant")  # money handed out rather than paid; Stars top-ups are real money
# Taken back as an adjustment (kind "grant": the ledger's kinds are fixed by the schema) that names itself.
RESET_KIND = "grant"
RESET_REFERENCE = "sandbox_reset"
RESET_NOTE = "sandbox credit taken back before going live"
SANDBOX_PROVIDER = "sandbox"


@dataclass(frozen=True)
class SandboxCredit:
    """Per account, the credit handed out while the sandbox ran (net of debits by grant), where positive."""

    per_account: dict[int, int] = field(default_factory=dict)

    @property
    def accounts(self) -> int:
        return len(self.per_account)

    @property
    def cents(self) -> int:
        return sum(self.per_account.values())


@dataclass(frozen=True)
class ResetReport:
    accounts: int  # accounts from which credit was taken back (one ledger entry each)
    cents: int  # taken back in all
    kept_cents: int  # sandbox credit already spent or held, so not there to take back


async def _marker_times(session: AsyncSession, prefix: str) -> list[datetime | None]:
    """The times of the markers with `prefix`, oldest first (None for one that cannot be read)."""
    keys = (await session.scalars(select(KeyValue.key).where(KeyValue.key.like(f"{prefix}%")))).all()
    times: list[datetime | None] = []
    for key in keys:
        try:
            times.append(datetime.fromisoformat(key.removeprefix(prefix)))
        except ValueError:
            times.append(None)
    return sorted(times, key=lambda at: (at is not None, at))


async def note_sandbox_run(db: Database) -> None:
    """Start-up with a simulated provider: from now on, credit handed out counts as sandbox credit (the first
    such start counts until the next reset)."""
    async with db.transaction() as session:
        if not await _marker_times(session, SINCE_PREFIX):
            # Two instances starting at once may both write one; the older counts. Started in the same
            # microsecond they write the same key, and the second must not fail its start for it.
            insert = dialect_insert(session.bind.dialect.name)
            await session.execute(
                insert(KeyValue).values(key=f"{SINCE_PREFIX}{utcnow().isoformat()}", value={}, expires_at=None)
                .on_conflict_do_nothing(index_elements=["key"])
            )


async def _window(session: AsyncSession) -> tuple[bool, datetime | None]:
    """Whether sandbox credit may exist, and from when (None: from the start)."""
    since = await _marker_times(session, SINCE_PREFIX)
    if since:
        return True, since[0]
    if await _marker_times(session, RESET_PREFIX):
        return False, None
    # Databases from before this was noted: sandbox purchases on record mean the sandbox ran, from the start.
    ran = await session.scalar(
        select(
            or_(
                exists().where(Verification.provider == SANDBOX_PROVIDER),
                exists().where(PhoneNumber.provider == SANDBOX_PROVIDER),
            )
        )
    )
    return bool(ran), None


async def sandbox_credit(session: AsyncSession) -> SandboxCredit:
    """The credit handed out since the sandbox first ran (after the last reset), per account."""
    ran, since = await _window(session)
    if not ran:
        return SandboxCredit()
    query = select(LedgerEntry.user_id, func.sum(LedgerEntry.amount_cents)).where(LedgerEntry.kind.in_(CREDIT_KINDS))
    if since is not None:
        query = query.where(LedgerEntry.created_at >= since)
    rows = await session.execute(query.group_by(LedgerEntry.user_id))
    return SandboxCredit({int(user_id): int(total) for user_id, total in rows if total and total > 0})


async def _has_tables(db: Database) -> bool:
    async with db.engine.connect() as connection:
        return bool(await connection.run_sync(
            lambda sync: inspect(sync).has_table("key_values") and inspect(sync).has_table("ledger_entries")
        ))


async def pending(db: Database) -> SandboxCredit:
    """What would stop SANDBOX=false from starting; nothing for a database without tables yet."""
    if not await _has_tables(db):
        return SandboxCredit()
    async with db.read() as session:
        return await sandbox_credit(session)


async def reset_sandbox_balances(db: Database) -> ResetReport:
    """Take each account's sandbox credit back as far as its available balance goes (Stars it paid stay), with one
    ledger entry per account, and note the reset so SANDBOX=false may start."""
    now = utcnow()
    taken, accounts, kept = 0, 0, 0
    if not await _has_tables(db):
        return ResetReport(accounts=0, cents=0, kept_cents=0)  # a new database: nothing was ever handed out
    async with db.transaction() as session:
        credit = await sandbox_credit(session)
        for user_id, cents in sorted(credit.per_account.items()):
            user = await session.scalar(
                select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
            )
            amount = min(cents, user.available_cents) if user is not None else 0
            kept += cents - max(amount, 0)
            if amount <= 0:
                continue
            await ledger.post(
                session, user_id, -amount, kind=RESET_KIND,
                idempotency_key=f"sandbox-reset:{now.isoformat()}:{user_id}", reference=RESET_REFERENCE,
                note=RESET_NOTE,
            )
            taken += amount
            accounts += 1
        await session.execute(
            delete(KeyValue).where(or_(KeyValue.key.like(f"{SINCE_PREFIX}%"), KeyValue.key.like(f"{RESET_PREFIX}%")))
        )
        session.add(KeyValue(key=f"{RESET_PREFIX}{now.isoformat()}", value={}, expires_at=None))
    return ResetReport(accounts=accounts, cents=taken, kept_cents=kept)
