"""Top-up: simulated credit in the sandbox; else Telegram Stars (offers, invoice, pre-checkout, one credit per charge).

While everything the balance buys is simulated, /topup offers $5, $10 and $25 of simulated credit on every platform
(core.money.sandbox_topup). No real money is taken while people of a real chat are sold simulated goods
(core.providers.plan): /topup then says it is a sandbox, no invoice is sent, and pre-checkout refuses an invoice sent
before."""

from __future__ import annotations

from datetime import timedelta

from bot.handlers.router import Request, action, command
from bot.handlers.screens import Button, Invoice, Screen, toast
from bot.handlers.selling import is_simulated, payer
from core.models import User
from core.money import offers, payments, sandbox_topup
from core.money.accounts import Contact
from core.platform.i18n import Html, money, t
from core.providers.plan import simulated_for_real_users
from core.services import Services

# sbt:<offer token>:<cents>: one credit per /topup screen, so a double press or an old screen adds nothing more.
ACTION_SANDBOX_CREDIT = "sbt"
SANDBOX_OFFER_KIND = "sbtopup"
SANDBOX_OFFER_TTL = timedelta(minutes=30)


async def _sandbox_offer(req: Request, text: Html) -> Screen:
    token = await offers.make(req.db, SANDBOX_OFFER_KIND, req.user.id, {}, SANDBOX_OFFER_TTL)
    buttons = [[
        Button(req.t("btn_sandbox_credit", amount=money(cents)), action=f"{ACTION_SANDBOX_CREDIT}:{token}:{cents}")
        for cents in sandbox_topup.AMOUNTS_CENTS
    ]]
    return Screen(text, buttons=buttons, edit=req.is_button)


@command("topup")
async def topup(req: Request) -> Screen:
    """The amounts on offer, as buttons: simulated credit in the sandbox, else each opens a Stars invoice."""
    if sandbox_topup.offered(req.services.plan):
        return await _sandbox_offer(
            req, req.t("topup_sandbox_credit", available=money(req.user.available_cents))
        )
    if req.contact.platform != "telegram":
        return Screen(req.t("topup_only_telegram"))
    if is_simulated(req):
        return Screen(req.t("topup_sandbox"), edit=req.is_button)
    buttons = [
        [Button(req.t("btn_topup_offer", stars=offer.stars, amount=money(offer.cents)), action=f"pay:{offer.stars}")]
        for offer in payments.offers(req.services.settings)
    ]
    return Screen(req.t("topup_title"), buttons=buttons, edit=req.is_button)


@action(ACTION_SANDBOX_CREDIT)
async def sandbox_credit(req: Request) -> Screen:
    """Adds the simulated credit of the pressed button, once per /topup screen, and offers more."""
    if not sandbox_topup.offered(req.services.plan) or len(req.args) != 2 or not req.args[1].isdigit():
        return toast(req.t("error_stale_button"))
    cents = int(req.args[1])
    if cents not in sandbox_topup.AMOUNTS_CENTS:
        return toast(req.t("error_stale_button"))
    async with offers.redeem(req.db, SANDBOX_OFFER_KIND, req.user.id, req.args[0]):
        async with req.db.transaction() as session:
            await sandbox_topup.credit(session, req.user.id, cents, f"{req.user.id}:{req.args[0]}")
            user = await session.get(User, req.user.id, populate_existing=True)
            assert user is not None
            available = user.available_cents
    return await _sandbox_offer(req, req.t("topup_sandbox_done", amount=money(cents), available=money(available)))


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
        user = await payer(session, contact)
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
        user = await payer(session, contact)
        assert user is not None  # Telegram sends a payment only after our pre-checkout accepted this sender
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
