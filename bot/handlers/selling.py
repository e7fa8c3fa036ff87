"""What every screen that sells shares: the sandbox notice, and the answer to a Confirm or Buy whose offer is gone."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot.handlers.router import Request, maps_errors
from bot.handlers.screens import Screen, toast
from core.models import User
from core.money.accounts import Contact, find_identity
from core.money.offers import OfferGone
from core.platform.i18n import Html
from core.providers.plan import simulated_for_real_users


async def payer(session: AsyncSession, contact: Contact) -> User | None:
    """The account a Telegram payment update belongs to (its sender), or None for a sender we never saw."""
    identity = await find_identity(session, contact.platform, contact.platform_user_id)
    return await session.get(User, identity.user_id) if identity is not None else None


def is_simulated(req: Request, kind: str | None = None) -> bool:
    """People of a real chat are offered something simulated: `kind` ("verification", "sms"), or any kind."""
    simulated = simulated_for_real_users(req.services.settings, req.services.plan)
    return bool(simulated) if kind is None else kind in simulated


def with_sandbox_notice(req: Request, kind: str, text: str) -> Html:
    """A price screen's text, headed by the sandbox notice when what it sells is simulated."""
    if not is_simulated(req, kind):
        return Html(text)
    return Html(f"{req.t('sandbox_notice')}\n\n{text}")


@maps_errors
def _offer_gone(req: Request, error: Exception) -> Screen | None:
    """A Confirm or Buy from a screen that was cancelled, used or has expired: nothing happens, and it says so."""
    if not isinstance(error, OfferGone):
        return None
    text = req.t("offer_no_longer_valid")
    return toast(text) if req.is_button else Screen(text)
