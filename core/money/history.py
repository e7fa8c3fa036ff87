"""An account's history: pages newest first, one line per purchase, and a CSV export of every ledger entry."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Hold, LedgerEntry, Verification

# What a person reading a statement expects: what changed the balance, and one line per purchase. A purchase is
# several ledger entries (hold, then capture or release, perhaps a refund); they share their hold and are shown
# together on the line of the hold. The CSV export keeps every entry.
SHOWN_KINDS = (
    "signup_bonus", "topup", "topup_refund", "grant", "capture", "refund", "merge", "hold", "release", "renewal",
)


@dataclass(frozen=True)
class HistoryLine:
    """One line of the history: a plain balance change, or a purchase with where its hold ended up."""

    created_at: datetime
    kind: str  # the ledger kind, or "purchase"
    amount_cents: int  # the balance change; for a purchase, minus its price (what it costs if charged)
    note: str | None = None
    purpose: str | None = None  # purchases: verification, sms, number
    outcome: str | None = None  # purchases: held, captured, released, refunded (the hold's state)
    detail: str | None = None  # purchases: the service's name or the number it concerned; renewals: the number


def _starts_a_line() -> Any:
    return and_(
        LedgerEntry.kind.in_(SHOWN_KINDS), or_(LedgerEntry.hold_id.is_(None), LedgerEntry.kind == "hold")
    )


async def page(session: AsyncSession, user_id: int, *, offset: int, limit: int) -> tuple[list[HistoryLine], int]:
    """Newest first: each purchase on the line of its hold, with its outcome; the total counts lines."""
    base = select(LedgerEntry).where(LedgerEntry.user_id == user_id, _starts_a_line())
    total = await session.scalar(select(func.count()).select_from(base.subquery()))
    entries = list((await session.scalars(base.order_by(LedgerEntry.id.desc()).offset(offset).limit(limit))).all())
    hold_ids = [entry.hold_id for entry in entries if entry.hold_id is not None]
    holds: dict[int, Hold] = {}
    services: dict[int, str] = {}
    if hold_ids:
        holds = {hold.id: hold for hold in (await session.scalars(select(Hold).where(Hold.id.in_(hold_ids)))).all()}
        # A verification's hold names it ("verification:<id>"): its primary key finds the service's name.
        verification_ids = {
            int(ref.split(":", 1)[1]): hold_id for hold_id, hold in holds.items()
            if (ref := hold.reference or "").startswith("verification:") and ref.split(":", 1)[1].isdigit()
        }
        if verification_ids:
            services = {
                verification_ids[row.id]: row.service_name for row in (await session.execute(
                    select(Verification.id, Verification.service_name).where(Verification.id.in_(verification_ids))
                )).all()
            }
    lines: list[HistoryLine] = []
    for entry in entries:
        hold = holds.get(entry.hold_id) if entry.hold_id is not None else None
        if hold is None:
            # A number's monthly renewal is one entry of its own, naming the number ("number:<e164>").
            renewed = entry.reference.split(":", 1)[1] if entry.kind == "renewal" and entry.reference else None
            lines.append(HistoryLine(entry.created_at, entry.kind, entry.amount_cents, entry.note, detail=renewed))
            continue
        detail = services.get(hold.id)
        if detail is None and hold.reference and ":" in hold.reference and hold.purpose != "verification":
            detail = hold.reference.split(":", 1)[1]
        lines.append(HistoryLine(
            entry.created_at, "purchase", -hold.amount_cents, entry.note, purpose=hold.purpose, outcome=hold.state,
            detail=detail,
        ))
    return lines, int(total or 0)


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
