"""Simulated credit while everything sold is simulated: /topup's $5, $10 and $25, credited through the ledger.

The credit is a ledger entry of kind "grant" (the schema's kinds are fixed) that names itself in its note, so the
history shows it as a sandbox top-up and `cumapp reset-sandbox-balances` takes it back before going live, as it does
the sign-up bonus."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from core.money import ledger
from core.platform.settings import Settings
from core.providers.plan import ProviderPlan, simulated_for_real_users

AMOUNTS_CENTS = (500, 1000, 2500)
KIND = "grant"
REFERENCE = "sandbox_topup"
NOTE = "sandbox top-up (simulated credit)"


def offered(plan: ProviderPlan) -> bool:
    """Everything the balance pays for is simulated (numbers and SMS): free credit can buy nothing real."""
    return plan.verification == "sandbox" and plan.sms == ("sandbox",)


def topup_available(settings: Settings, plan: ProviderPlan, platform: str) -> bool:
    """A "Top up" button can do something here: sandbox credit, or Telegram Stars where they are taken."""
    if offered(plan):
        return True
    return platform == "telegram" and not simulated_for_real_users(settings, plan)


async def credit(session: AsyncSession, user_id: int, cents: int, key: str) -> bool:
    """Add `cents` once per `key` (a double press credits once); False when that key was used already."""
    if cents not in AMOUNTS_CENTS:
        raise ValueError(f"sandbox credit comes in {AMOUNTS_CENTS} cents, not {cents}")
    return await ledger.post(
        session, user_id, cents, kind=KIND, idempotency_key=f"sandbox-topup:{key}"[:160], reference=REFERENCE,
        note=NOTE,
    )
