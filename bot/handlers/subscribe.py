"""/subscribe: the tiers with monthly prices; a Telegram Stars subscription on Telegram, else the balance; cancel.

On Telegram with nothing simulated a tier opens a Stars subscription invoice link (createInvoiceLink with a 30-day
subscription_period) and Telegram renews it; its payments arrive through `pre_checkout` and `payment_received`.
Elsewhere, and on Telegram while the sandbox sells simulated goods (no Stars are taken then), a tier is a monthly
debit of the balance behind Confirm and Cancel. "Cancel subscription" stops the renewals (editUserStarSubscription
for Stars); the tier stays until the paid period ends.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bot.handlers.router import Request, action, command, maps_errors
from bot.handlers.screens import Button, Screen, toast
from bot.handlers.selling import is_simulated, payer
from core.models import Subscription, User
from core.money import offers, payments, subscriptions
from core.money.accounts import Contact
from core.platform.i18n import Html, money, t
from core.platform.settings import TIER_NAMES
from core.providers.plan import simulated_for_real_users
from core.services import Services

ACTION = "sub"  # sub:pick:<tier> · sub:ok:<offer> · sub:no:<offer> · sub:cancel · sub:resume
OFFER_KIND = "subscribe"
OFFER_TTL = timedelta(minutes=30)


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _tier(locale: str, tier: str) -> Html:
    return t(locale, f"sub_tier_{tier}")


def _pays_with_stars(req: Request) -> bool:
    """Stars on Telegram, unless the sandbox sells simulated goods there (then the simulated balance pays)."""
    return req.contact.platform == "telegram" and not is_simulated(req)


async def _overview(req: Request, subscription: Subscription | None) -> Screen:
    settings = req.services.settings
    lines = [req.t("sub_title")]
    for tier in TIER_NAMES:
        limits = settings.tier_limits[tier]
        cents = subscriptions.price_cents(settings, tier)
        values = dict(
            tier=_tier(req.locale, tier), price=money(cents), verifications=limits.verifications_per_day,
            sms=limits.sms_per_day, numbers=limits.numbers_owned, markup=limits.markup_percent,
        )
        lines.append(req.t("sub_free_line" if cents <= 0 else "sub_line", **values))
    buttons: list[list[Button]] = []
    if subscription is not None:
        tier, until = _tier(req.locale, subscription.tier), _day(subscription.paid_until)
        if subscription.auto_renew:
            how = req.t("sub_how_stars" if subscription.channel == "stars" else "sub_how_balance")
            lines.append("\n" + req.t("sub_yours_renews", tier=tier, until=until, how=how))
            buttons.append([Button(req.t("sub_btn_cancel"), action=f"{ACTION}:cancel")])
        else:
            lines.append("\n" + req.t("sub_yours_ends", tier=tier, until=until))
            buttons.append([Button(req.t("sub_btn_resume"), action=f"{ACTION}:resume")])
    else:
        lines.append("\n" + req.t("sub_yours", tier=_tier(req.locale, req.user.tier)))
    if subscription is None or not subscription.auto_renew:
        buttons += [
            [Button(
                req.t("sub_btn_tier", tier=_tier(req.locale, offer.tier), price=money(offer.cents)),
                action=f"{ACTION}:pick:{offer.tier}",
            )]
            for offer in subscriptions.tier_offers(settings)
        ]
    return Screen(Html("\n".join(lines)), buttons=buttons, edit=req.is_button)


async def _current(req: Request) -> Subscription | None:
    async with req.db.read() as session:
        return await subscriptions.current(session, req.user.id)


@command("subscribe")
async def subscribe(req: Request) -> Screen:
    """The tiers with their monthly prices, your tier, and what you can do about it."""
    return await _overview(req, await _current(req))


@action(ACTION)
async def subscribe_action(req: Request) -> Screen:
    """The buttons of /subscribe: pick a tier, confirm or cancel a balance offer, cancel or resume renewals."""
    step = req.args[0] if req.args else ""
    if step == "pick" and len(req.args) == 2:
        return await _pick(req, req.args[1])
    if step == "ok" and len(req.args) == 2:
        return await _confirm(req, req.args[1])
    if step == "no" and len(req.args) == 2:
        await offers.withdraw(req.db, OFFER_KIND, req.user.id, req.args[1])
        return await _overview(req, await _current(req))
    if step in ("cancel", "resume"):
        return await _renewals(req, on=step == "resume")
    return toast(req.t("error_stale_button"))


async def _pick(req: Request, tier: str) -> Screen:
    settings = req.services.settings
    offer = next((o for o in subscriptions.tier_offers(settings) if o.tier == tier), None)
    if offer is None:
        return toast(req.t("offer_no_longer_valid"))
    name = _tier(req.locale, tier)
    if _pays_with_stars(req):
        api = req.services.stars_subscriptions
        if api is None:
            return toast(req.t("sub_unavailable"))
        if offer.stars > subscriptions.MAX_SUBSCRIPTION_STARS:
            return toast(req.t("sub_not_sold"))  # over Telegram's cap: TIER_LIMITS prices it too high in Stars
        title = req.t("sub_invoice_title", tier=name)
        link = await api.invoice_link(
            title=title, description=req.t("sub_invoice_description", tier=name), label=title,
            payload=subscriptions.make_payload(settings, req.user.id, tier), stars=offer.stars,
        )
        return Screen(
            req.t("sub_stars_offer", tier=name, stars=offer.stars),
            buttons=[[Button(req.t("sub_btn_pay_stars", stars=offer.stars), url=link)]], edit=True,
        )
    token = await offers.make(req.db, OFFER_KIND, req.user.id, {"tier": tier}, OFFER_TTL)
    text = req.t("sub_balance_offer", tier=name, price=money(offer.cents), available=money(req.user.available_cents))
    if is_simulated(req):
        text = Html(f"{req.t('sandbox_notice')}\n\n{text}")
    return Screen(
        text,
        buttons=[[
            Button(req.t("btn_confirm"), action=f"{ACTION}:ok:{token}"),
            Button(req.t("btn_cancel"), action=f"{ACTION}:no:{token}"),
        ]],
        edit=True,
    )


async def _confirm(req: Request, token: str) -> Screen:
    """Pays the offered tier from the balance, once per offer (a double press or an old screen does nothing)."""
    async with offers.redeem(req.db, OFFER_KIND, req.user.id, token) as data:
        async with req.db.transaction() as session:
            subscription, _ = await subscriptions.subscribe_from_balance(
                session, req.services.settings, req.user.id, str(data["tier"]), offer=token
            )
            user = await session.get(User, req.user.id, populate_existing=True)
            assert user is not None
            tier, until, available = subscription.tier, subscription.paid_until, user.available_cents
    return Screen(
        req.t(
            "sub_done", tier=_tier(req.locale, tier), until=_day(until),
            price=money(subscriptions.price_cents(req.services.settings, tier)), available=money(available),
        ),
        edit=True,
    )


async def _renewals(req: Request, *, on: bool) -> Screen:
    """Cancel (renewals off; the tier stays until the paid period ends) or turn renewals back on."""
    subscription = await _current(req)
    if subscription is None or subscription.auto_renew == on:
        return await _overview(req, subscription)
    if subscription.channel == "stars":
        api = req.services.stars_subscriptions
        if api is None or not subscription.platform_user_id or not subscription.charge_id:
            return toast(req.t("sub_cancel_on_telegram"), alert=True)
        # Telegram first: if it refuses, nothing here changes and the user can press again.
        await api.set_canceled(subscription.platform_user_id, subscription.charge_id, not on)
    async with req.db.transaction() as session:
        subscription = await subscriptions.set_auto_renew(session, req.user.id, on)
        tier, until = subscription.tier, subscription.paid_until
    key = "sub_resumed" if on else "sub_cancelled"
    return Screen(req.t(key, tier=_tier(req.locale, tier), until=_day(until)), edit=True)


@maps_errors
def _refused(req: Request, error: Exception) -> Screen | None:
    """A subscription step the rules refused: the reason, in a word."""
    if not isinstance(error, subscriptions.SubscriptionError):
        return None
    text = req.t(error.reason)
    return toast(text, alert=True) if req.is_button else Screen(text)


# --- Telegram Stars payments (called by the Telegram adapter for payloads that subscriptions.is_subscription_payload)


async def pre_checkout(services: Services, contact: Contact, payload: str, currency: str, amount: int) -> str | None:
    """None to accept the first payment of a subscription, or the reason (in the payer's language) to refuse it."""
    async with services.db.read() as session:
        user = await payer(session, contact)
        if user is None:
            return t("en", "payment_bad_payload")
        if simulated_for_real_users(services.settings, services.plan):
            return t(user.locale, "topup_sandbox")  # no Stars are taken for simulated goods
        try:
            await subscriptions.validate_pre_checkout(session, services.settings, user, payload, currency, amount)
        except payments.PaymentError as error:
            return t(user.locale, error.reason)
    return None


async def payment_received(
    services: Services, contact: Contact, *, charge_id: str, payload: str, currency: str, amount: int,
    expires_at: datetime | None, is_first: bool,
) -> list[Screen]:
    """Records a subscription payment (first or renewal) once per charge id; only that once says so."""
    async with services.db.transaction() as session:
        user = await payer(session, contact)
        assert user is not None  # Telegram sends a payment only after our pre-checkout accepted this sender
        subscription, recorded = await subscriptions.record_stars_payment(
            session, services.settings, user, charge_id=charge_id, payload=payload, currency=currency,
            total_amount=amount, expires_at=expires_at, platform_user_id=contact.platform_user_id,
        )
        if not recorded or subscription is None:
            return []  # the same charge delivered again: recorded and answered the first time
        key = "sub_stars_done" if is_first else "sub_stars_renewed"
        return [Screen(t(user.locale, key, tier=_tier(user.locale, subscription.tier),
                         until=_day(subscription.paid_until)))]
