"""An account's ledger history: pages newest first and a CSV export."""

from __future__ import annotations

import csv
import io

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import LedgerEntry

# Hold and release entries move money between available and held; the history shows what changed the balance
# plus holds still open, which is what a person reading a statement expects.
SHOWN_KINDS = ("signup_bonus", "topup", "topup_refund", "grant", "capture", "refund", "merge", "hold", "release")


async def page(session: AsyncSession, user_id: int, *, offset: int, limit: int) -> tuple[list[LedgerEntry], int]:
    base = select(LedgerEntry).where(LedgerEntry.user_id == user_id, LedgerEntry.kind.in_(SHOWN_KINDS))
    total = await session.scalar(select(func.count()).select_from(base.subquery()))
    rows = await session.scalars(base.order_by(LedgerEntry.id.desc()).offset(offset).limit(limit))
    return list(rows.all()), int(total or 0)


async def export_csv(session: AsyncSession, user_id: int) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "time_utc", "kind", "amount_usd", "held_change_usd", "reference", "note"])
    rows = await session.stream_scalars(
        select(LedgerEntry).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id.desc())
    )
    async for entry in rows:
        writer.writerow(
            [
                entry.id, entry.created_at.isoformat(), entry.kind, f"{entry.amount_cents / 100:.2f}",
                f"{entry.held_delta_cents / 100:.2f}", entry.reference or "", entry.note or "",
            ]
        )
    return buffer.getvalue().encode("utf-8")
