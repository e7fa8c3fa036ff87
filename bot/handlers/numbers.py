"""/numbers: the user's own numbers (each with its screen, New SMS and Release), and Buy → country → area code →
number → price → Confirm."""

from __future__ import annotations

import re

from bot.handlers.args import arg_id, arg_int
from bot.handlers.calls import settings_button as call_settings_button
from bot.handlers.router import Request, action, command, maps_errors, pop_prompt, set_prompt
from bot.handlers.screens import Button, Screen, toast
from bot.handlers.selling import with_sandbox_notice
from bot.render import plain_text
from core.messaging.errors import MessagingError, NotYours
from core.messaging.numbers import QUOTE_KIND
from core.messaging.relay import display_number
from core.messaging.renewals import GRACE, period_id
from core.messaging.service import MessagingService
from core.models import PhoneNumber, User
from core.money import offers
from core.platform.clock import utcnow
from core.platform.i18n import Html, money
from core.platform.phone import InvalidPhoneNumber, country_name, normalize

# Countries offered by Buy, in this order; NANP countries get the area-code step.
COUNTRIES = ("US", "CA", "GB")
AREA_CODE_COUNTRIES = frozenset({"US", "CA"})
RESULTS = 8


def _messaging(req: Request) -> MessagingService:
    return req.services.messaging  # type: ignore[no-any-return]


@maps_errors
def messaging_errors(req: Request, error: Exception) -> Screen | None:
    """Refusals of the messaging service (numbers and SMS alike) in the user's words."""
    if isinstance(error, NotYours) and req.is_button:
        return toast(req.t("error_not_yours"))
    if isinstance(error, MessagingError):
        return Screen(error.text(req.locale))
    return None


@command("numbers")
async def numbers(req: Request) -> Screen:
    """The numbers the user owns, each with Release, and Buy."""
    owned = await _messaging(req).list_numbers(req.user.id)
    lines = [req.t("num_title")]
    if not owned:
        lines.append(req.t("num_none"))
    buttons: list[list[Button]] = []
    for number in owned:
        shown = display_number(number.e164)
        renews = number.renews_at.strftime("%Y-%m-%d") if number.renews_at else "—"
        lines.append(req.t("num_line", number=shown, price=money(number.monthly_price_cents), renews=renews))
        buttons.append([
            Button(req.t("num_btn_open", number=shown), action=f"num_open:{number.id}"),
            Button(req.t("num_btn_release", number=shown), action=f"num_rel:{number.id}"),
        ])
    buttons.append([Button(req.t("num_btn_buy"), action="num_buy")])
    return Screen(Html("\n".join(lines)), buttons=buttons, edit=req.is_button)


@action("num_open")
async def open_number(req: Request) -> Screen:
    """One number's screen: a new SMS from it, its templates, AI help, linking accounts, and Release."""
    number = await _owned(req)
    if isinstance(number, Screen):
        return number
    return _number_screen(req, number)


def _number_screen(req: Request, number: PhoneNumber, news: str | None = None) -> Screen:
    shown = display_number(number.e164)
    renews = number.renews_at.strftime("%Y-%m-%d") if number.renews_at else "—"
    text = req.t("num_screen", number=shown, price=money(number.monthly_price_cents), renews=renews)
    rental = _rental_line(req, number)
    return Screen(
        Html("\n\n".join(part for part in (news, text, rental) if part)),
        buttons=[
            [Button(req.t("btn_new_sms"), action=f"num_sms:{number.id}"),
             Button(req.t("btn_templates"), action=f"tpl:num:{number.id}")],
            [Button(req.t("btn_suggest"), action="cmd:suggest"), Button(req.t("btn_analyze"), action="cmd:analyze")],
            *_rental_buttons(req, number),
            [call_settings_button(req, number)],
            [Button(req.t("btn_link"), action="cmd:link"),
             Button(req.t("num_btn_release", number=shown), action=f"num_rel:{number.id}")],
            [Button(req.t("num_btn_my_numbers"), action="num_list")],
        ],
        edit=req.is_button,
    )


# --- rentals: when the number renews, Auto-renew and Renew now (core.messaging.renewals) -------------------------


def _rental_line(req: Request, number: PhoneNumber) -> str | None:
    if number.renews_at is None:
        return None
    renews, release = number.renews_at.strftime("%Y-%m-%d"), (number.renews_at + GRACE).strftime("%Y-%m-%d")
    if number.release_started_at is not None:
        return req.t("num_renewal_releasing", grace=GRACE.days)
    if number.renews_at <= utcnow():
        return req.t("num_renewal_unpaid", renews=renews, release=release)
    if number.auto_renew:
        return req.t("num_renewal_on", renews=renews, price=money(number.monthly_price_cents))
    return req.t("num_renewal_off", renews=renews, release=release)


def _rental_buttons(req: Request, number: PhoneNumber) -> list[list[Button]]:
    if number.renews_at is None or number.release_started_at is not None:
        return []
    # Each button names what it leads to (the switch's new state, the period paid), so a second press is harmless.
    auto = Button(req.t("num_btn_auto_on" if number.auto_renew else "num_btn_auto_off"),
                  action=f"num_auto:{number.id}:{0 if number.auto_renew else 1}")
    renew = Button(req.t("num_btn_renew"), action=f"num_renew:{number.id}:{period_id(number.renews_at)}")
    return [[auto, renew]]


@action("num_renew")
async def renew_now(req: Request) -> Screen:
    """Renew now: pays the period the button showed, from the balance, once however often it is pressed."""
    number_id, period = arg_id(req.args, 0), arg_int(req.args, 1, minimum=1)
    if number_id is None or period is None:
        return toast(req.t("error_stale_button"))
    outcome = await _messaging(req).renewals.renew_now(req.user.id, number_id, period)
    number = outcome.number
    renews = number.renews_at.strftime("%Y-%m-%d") if number.renews_at else "—"
    if not outcome.renewed:
        return toast(req.t("num_renew_done", renews=renews))
    news = req.t("num_renewed", number=display_number(number.e164), price=money(number.monthly_price_cents),
                 renews=renews)
    screen = _number_screen(req, number, news)
    screen.toast = plain_text(news)[:190]
    return screen


@action("num_auto")
async def auto_renew(req: Request) -> Screen:
    """The Auto-renew switch: `num_auto:<number>:<1|0>` sets it on or off."""
    number_id, wanted = arg_id(req.args, 0), req.args[1] if len(req.args) > 1 else ""
    if number_id is None or wanted not in ("0", "1"):
        return toast(req.t("error_stale_button"))
    number = await _messaging(req).renewals.set_auto_renew(req.user.id, number_id, wanted == "1")
    screen = _number_screen(req, number)
    screen.toast = req.t("num_auto_on_done" if number.auto_renew else "num_auto_off_done")
    return screen


# --- a new SMS by buttons: who to, then the text (the text step is /sms's own) ----------------------------------


@action("num_sms")
async def new_sms(req: Request) -> Screen:
    """New SMS (from the menu, or `num_sms:<number>` from one number's screen): asks who it goes to."""
    number: PhoneNumber | None = None
    if req.args:
        chosen = await _owned(req)  # someone else's number raises NotYours; a released one is a short toast
        if isinstance(chosen, Screen):
            return chosen
        number = chosen
    elif not await _messaging(req).list_numbers(req.user.id):
        return Screen(req.t("num_sms_needs_number"), buttons=[[Button(req.t("num_btn_buy"), action="num_buy")]])
    await set_prompt(req, f"num_to:{number.id if number else 0}")
    text = (
        req.t("num_sms_to_from", number=display_number(number.e164)) if number is not None else req.t("num_sms_to")
    )
    # No buttons: on Discord a question alone opens a text box at once (/cancel or any button drops it).
    return Screen(text, prompt=req.t("num_sms_to_placeholder"))


@action("num_to")
async def new_sms_recipient(req: Request) -> Screen:
    """The typed recipient: checked, then the text is asked for (and sent by /sms's compose step)."""
    if req.prompt_data is None:  # only typed text answers this step
        return toast(req.t("error_stale_button"))
    from_id = arg_id(req.args, 0)
    owned = await _messaging(req).list_numbers(req.user.id)
    region = next((n.country for n in owned if n.id == from_id), owned[-1].country if owned else "US")
    try:
        to = normalize(req.text, region)
    except InvalidPhoneNumber:
        await set_prompt(req, f"num_to:{from_id or 0}")
        return Screen(req.t("num_sms_to_invalid", number=req.text[:40]), prompt=req.t("num_sms_to_placeholder"))
    from bot.handlers.sms import text_prompt  # sms imports this module (its error mapper): imported late

    return await text_prompt(req, to, from_id or None)  # asks for the text, with its price


@action("num_list")
async def numbers_again(req: Request) -> Screen:
    return await numbers(req)


@action("num_buy")
async def buy(req: Request) -> Screen:
    """First step of Buy: the tier limit is checked before anything is picked, then the countries."""
    await _messaging(req).check_can_buy(req.user.id)
    buttons = [[Button(country_name(code, req.locale), action=f"num_cc:{code}")] for code in COUNTRIES]
    buttons.append([Button(req.t("btn_cancel"), action="num_cancel")])
    return Screen(req.t("num_pick_country"), buttons=buttons, edit=req.is_button)


@action("num_cc")
async def pick_country(req: Request) -> Screen:
    """A country: the area-code step where numbers have area codes, else the numbers straight away."""
    country = req.args[0] if req.args else ""
    if country not in COUNTRIES:
        return toast(req.t("error_stale_button"))
    if country not in AREA_CODE_COUNTRIES:
        return await _results(req, country, None)
    await set_prompt(req, f"num_area:{country}")
    return Screen(
        req.t("num_area_prompt", country=country_name(country, req.locale)),
        buttons=[
            [Button(req.t("num_btn_any"), action=f"num_area:{country}:any")],
            [Button(req.t("btn_back"), action="num_buy")],
        ],
        prompt=req.t("num_area_placeholder"),
        edit=req.is_button,
    )


@action("num_area")
async def pick_area(req: Request) -> Screen:
    """"Any" (a button) or an area code the user typed (the prompt) → the numbers for sale there."""
    country = req.args[0] if req.args else ""
    if country not in AREA_CODE_COUNTRIES:
        return toast(req.t("error_stale_button"))
    choice = req.args[1] if len(req.args) > 1 else req.text.strip()
    if choice.lower() in ("any", req.t("num_btn_any").lower()):  # the button, or the word typed
        return await _results(req, country, None)
    if not re.fullmatch(r"[2-9]\d\d", choice):
        await set_prompt(req, f"num_area:{country}")
        return Screen(
            req.t("num_area_invalid"),
            buttons=[[Button(req.t("num_btn_any"), action=f"num_area:{country}:any")]],
            prompt=req.t("num_area_placeholder"),
        )
    return await _results(req, country, choice)


async def _results(req: Request, country: str, area_code: str | None) -> Screen:
    # Past the area-code step: a later plain text must not be taken for an area code.
    await pop_prompt(req.services, req.contact)
    found = await _messaging(req).search_numbers(country, area_code, None, limit=RESULTS)
    place = country_name(country, req.locale) + (f" ({area_code})" if area_code else "")
    if not found:
        buttons = [[Button(req.t("num_btn_any"), action=f"num_area:{country}:any")]] if area_code else []
        buttons.append([Button(req.t("btn_back"), action="num_buy")])
        return Screen(req.t("num_none_found", place=place), buttons=buttons, edit=req.is_button)
    buttons = [[Button(display_number(n.e164), action=f"num_pick:{n.e164}")] for n in found]
    buttons.append([Button(req.t("btn_cancel"), action="num_cancel")])
    return Screen(req.t("num_results", place=place), buttons=buttons, edit=req.is_button)


@action("num_pick")
async def pick_number(req: Request) -> Screen:
    """A number: its monthly price for this user's tier (from the stored offer), Confirm and Cancel."""
    e164 = req.args[0] if req.args else ""
    if not re.fullmatch(r"\+\d{6,15}", e164):
        return toast(req.t("error_stale_button"))
    quote = await _messaging(req).quote_number(req.user.id, e164)
    async with req.db.read() as session:
        user = await session.get(User, req.user.id)
        available = user.available_cents if user is not None else 0
    place_parts = [p for p in (quote.locality, country_name(quote.country, req.locale)) if p]
    text = req.t(
        "num_quote", number=display_number(quote.e164), place=f" · {', '.join(place_parts)}",
        price=money(quote.monthly_price_cents), available=money(available),
    )
    return Screen(
        with_sandbox_notice(req, "sms", text),
        buttons=[[
            Button(req.t("btn_confirm"), action=f"num_ok:{quote.token}"),
            Button(req.t("btn_cancel"), action=f"num_cancel:{quote.token}"),
        ]],
        edit=req.is_button,
    )


@action("num_ok")
async def confirm(req: Request) -> Screen:
    """Confirm: buys once per quote; pressed again, or after the quote's Cancel or expiry, it only says so."""
    token = req.args[0] if req.args else ""
    async with offers.redeem(req.db, QUOTE_KIND, req.user.id, token) as quote:
        number = await _messaging(req).buy_number(req.user.id, str(quote["e164"]), request_key=token)
    return Screen(
        req.t("num_bought", number=display_number(number.e164), price=money(number.monthly_price_cents)),
        buttons=[[Button(req.t("btn_new_sms"), action=f"num_sms:{number.id}"),
                  Button(req.t("num_btn_my_numbers"), action="num_list")]],
        edit=True,
    )


@action("num_cancel")
async def cancel(req: Request) -> Screen:
    """Cancel on any step of Buy; on a price screen (num_cancel:<quote>) its Confirm does nothing from now on."""
    if req.args and not await offers.withdraw(req.db, QUOTE_KIND, req.user.id, req.args[0]):
        # The number was already bought from this quote (or it expired): "cancelled" would not be true.
        raise offers.OfferGone()
    await pop_prompt(req.services, req.contact)
    return Screen(req.t("num_cancelled"), edit=True)


@action("num_rel")
async def release(req: Request) -> Screen:
    """Release asks first: a released number cannot be got back."""
    number = await _owned(req)
    if isinstance(number, Screen):
        return number
    return Screen(
        req.t("num_release_confirm", number=display_number(number.e164)),
        buttons=[[
            Button(req.t("btn_confirm"), action=f"num_relok:{number.id}"),
            Button(req.t("btn_cancel"), action="num_list"),
        ]],
        edit=True,
    )


@action("num_relok")
async def release_confirmed(req: Request) -> Screen:
    number = await _owned(req)
    if isinstance(number, Screen):
        return number
    released = await _messaging(req).release_number(req.user.id, number.id)
    screen = await numbers(req)
    screen.text = Html(f"{req.t('num_released', number=display_number(released.e164))}\n\n{screen.text}")
    return screen


async def _owned(req: Request) -> PhoneNumber | Screen:
    """The number a Release button names, re-checked: someone else's → not yours; released → a short toast."""
    number_id = arg_id(req.args, 0)
    if number_id is None:
        return toast(req.t("error_stale_button"))
    number = await _messaging(req).owned_number(req.user.id, number_id)
    if number.state != "active":
        return toast(req.t("num_already_released", number=display_number(number.e164)))
    return number
