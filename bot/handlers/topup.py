"""Top-up with Telegram Stars: offers, the invoice, pre-checkout validation and the one credit per charge.

No real money is taken while people of a real chat are sold simulated goods (core.providers.plan): /topup then says
it is a sandbox, no invoice is sent, and pre-checkout refuses an invoice sent before."""

from __future__ import annotations

from bot.handlers.router import Request, action, command
from bot.handlers.screens import Button, Invoice, Screen, toast
from bot.handlers.selling import is_simulated
from core.models import User
from core.money import payments
from core.money.accounts import Contact, find_identity
from core.platform.i18n import money, t
from core.providers.plan import simulated_for_real_users
from core.services import Services


@command("topup")
async def topup(req: Request) -> Screen:
    """The amounts on offer, as buttons; each opens a Stars invoice."""
    if req.contact.platform != "telegram":
        return Screen(req.t("topup_only_telegram"))
    if is_simulated(req):
        return Screen(req.t("topup_sandbox"), edit=req.is_button)
    buttons = [
        [Button(req.t("btn_topup_offer", stars=offer.stars, amount=money(offer.cents)), action=f"pay:{offer.stars}")]
        for offer in payments.offers(req.services.settings)
    ]
    return Screen(req.t("topup_title"), buttons=buttons, edit=req.is_button)


@action("pay")
async def invoice(req: Request) -> Screen:
    """An invoice in XTR for one of the offered amounts (the amount is re-checked against the settings)."""
    settings = req.services.settings
    if is_simulated(req):
        # An offer button from before (or a forged one): the sandbox takes no real money.
        return Screen(req.t("topup_sandbox"), edit=True)
    try:
        stars = int(req.args[0])
    except (IndexError, ValueError):
        return toast(req.t("error_stale_button"))
    if req.contact.platform != "telegram":
        return toast(req.t("error_stale_button"))
    if stars not in settings.topup_star_amounts:
        return toast(req.t("offer_no_longer_valid"))
    amount = money(stars * settings.stars_cents_per_star)
    return Screen(
        "",
        invoice=Invoice(
            title=req.t("topup_invoice_title", amount=amount),
            description=req.t("topup_invoice_description", stars=stars, amount=amount),
            payload=payments.make_payload(settings, req.user.id, stars),
            currency=payments.STARS,
            amount=stars,
            label=req.t("topup_invoice_title", amount=amount),
        ),
    )


async def pre_checkout(services: Services, contact: Contact, payload: str, currency: str, amount: int) -> str | None:
    """None to accept the payment, or the reason (in the payer's language) to refuse it."""
    async with services.db.read() as session:
        identity = await find_identity(session, contact.platform, contact.platform_user_id)
        user = await session.get(User, identity.user_id) if identity else None
        if user is None:
            return t("en", "payment_bad_payload")
        if simulated_for_real_users(services.settings, services.plan):
            # An invoice sent before the bot ran on simulated providers: it must not be paid for simulated goods.
            return t(user.locale, "topup_sandbox")
        try:
            await payments.validate_pre_checkout(session, services.settings, user, payload, currency, amount)
        except payments.PaymentError as error:
            return t(user.locale, error.reason)
    return None


async def payment_received(
    services: Services, contact: Contact, *, charge_id: str, payload: str, currency: str, amount: int
) -> list[Screen]:
    """Credits the account once per Telegram charge id, whatever the retries; only that once says so."""
    async with services.db.transaction() as session:
        identity = await find_identity(session, contact.platform, contact.platform_user_id)
        assert identity is not None
        user = await session.get(User, identity.user_id)
        assert user is not None
        payment, credited = await payments.record_payment(
            session, services.settings, user, charge_id=charge_id, payload=payload, currency=currency,
            total_amount=amount,
        )
        if not credited:
            return []  # the same payment delivered again: it was credited and answered the first time
        await session.refresh(user)
        return [Screen(
            t(user.locale, "topup_done", amount=money(payment.credited_cents), available=money(user.available_cents))
        )]
