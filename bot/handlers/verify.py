"""/verify: pick a service, see its price, confirm, then a live status message that later changes edit in place."""

from __future__ import annotations

import hashlib

from bot.handlers.args import arg_id, arg_offset
from bot.handlers.router import Request, action, command, maps_errors, set_prompt
from bot.handlers.screens import Button, Screen, SentRef, screen_from_outgoing, toast
from bot.handlers.selling import with_sandbox_notice
from core.models import Verification
from core.money import offers
from core.platform.i18n import Html, money
from core.providers.verification import ProviderError, ServiceInfo
from core.verification.purchase import OFFER_KIND, OFFER_TTL
from core.verification.service import (
    ACTION_ANOTHER,
    ACTION_CANCEL,
    ACTION_DONE,
    ACTION_PICK,
    ACTION_REFRESH,
    ACTION_REPORT,
    ACTION_REUSE,
    DEFAULT_RENTAL,
    UnknownService,
    VerificationError,
    VerificationService,
    failure_kind,
    status_message,
)

ACTION_SEARCH = "vfq"
ACTION_ALL = "vfa"  # vfa:<page>
ACTION_CONFIRM = "vfok"  # vfok:<offer token>
ACTION_BACK_OUT = "vfx"  # vfx:<offer token>
ACTION_HISTORY = "vfh"  # vfh:<offset>

HISTORY_PAGE = 8
# Room for a service code in a 64-byte action id after its button's prefix ("vfp:"), with a margin to spare.
_MAX_TOKEN_BYTES = 48
# A status in one of these states can still change by itself, so its chat message is remembered for edits.
_LIVE_STATES = ("requested", "active", "code_received")


def _service(req: Request) -> VerificationService:
    service = req.services.verification
    assert service is not None, "services.verification is not wired"
    return service


def _token(code: str) -> str:
    """A service code as it fits in a button; an overlong one travels as a hash and is looked up again."""
    if len(code.encode()) <= _MAX_TOKEN_BYTES:
        return code
    return "#" + hashlib.sha256(code.encode()).hexdigest()[:16]


async def _resolve(req: Request, token: str) -> str:
    if not token.startswith("#"):
        return token
    for info in await _service(req).services():
        if _token(info.code) == token:
            return info.code
    raise UnknownService(token)


def _service_rows(infos: list[ServiceInfo], per_row: int = 2) -> list[list[Button]]:
    buttons = [Button(info.name, action=f"{ACTION_PICK}:{_token(info.code)}") for info in infos]
    return [buttons[i : i + per_row] for i in range(0, len(buttons), per_row)]


def _browse_row(req: Request) -> list[Button]:
    return [Button(req.t("vf_btn_search"), action=ACTION_SEARCH), Button(req.t("vf_btn_all"), action=f"{ACTION_ALL}:0")]


def _verification_id(req: Request) -> int:
    verification_id = arg_id(req.args, 0, big=True)
    if verification_id is None:
        raise VerificationError("error_stale_button")
    return verification_id


def _status_screen(
    req: Request, verification: Verification, *, edit: bool, toast_text: str | None = None,
    same_number: str | None = "unknown",
) -> Screen:
    """The live status; its chat message id is stored so the service can edit it when the state moves on."""
    screen = screen_from_outgoing(status_message(verification, req.locale, same_number=same_number))
    screen.edit = edit
    screen.toast = toast_text
    if verification.state in _LIVE_STATES:
        service, verification_id, shown = _service(req), verification.id, verification.state

        async def remember(ref: SentRef) -> None:
            await service.attach_status_message(
                verification_id, platform=ref.platform, chat_id=ref.chat_id, message_id=ref.message_id,
                shown_state=shown,
            )

        screen.on_sent = remember
    return screen


# --- choosing a service ------------------------------------------------------------------------------------------


@command("verify")
async def verify(req: Request) -> Screen:
    """Without a service: popular services, search and the full list. With one: straight to its price."""
    if req.text:
        return await _find(req, req.text)
    popular = await _service(req).popular_services()
    buttons = _service_rows(popular)
    buttons.append(_browse_row(req))
    buttons.append([Button(req.t("vf_btn_history"), action=f"{ACTION_HISTORY}:0")])
    return Screen(req.t("vf_menu_title"), buttons=buttons, edit=req.is_button)


async def _find(req: Request, query: str) -> Screen:
    matches = await _service(req).search_services(query)
    if len(matches) == 1:
        return await _price_screen(req, matches[0].code)
    if not matches:
        return Screen(req.t("vf_no_match", query=query), buttons=[_browse_row(req)])
    return Screen(req.t("vf_matches", query=query), buttons=[*_service_rows(matches[:8]), _browse_row(req)])


@action(ACTION_SEARCH)
async def search(req: Request) -> Screen:
    """Asks for a service name; the typed answer comes back here as a prompt answer."""
    if req.prompt_data is not None:
        return await _find(req, req.text)
    await set_prompt(req, ACTION_SEARCH)
    return Screen(req.t("vf_search_prompt"), prompt=req.t("vf_search_placeholder"))


@action(ACTION_ALL)
async def all_services(req: Request) -> Screen:
    """Every service, a page at a time."""
    page = arg_offset(req.args, 0, default=0)
    if page is None:
        return toast(req.t("error_stale_button"))
    catalogue = await _service(req).catalogue(page)
    buttons = _service_rows(catalogue.items)
    nav: list[Button] = []
    if catalogue.page > 0:
        nav.append(Button(req.t("btn_prev"), action=f"{ACTION_ALL}:{catalogue.page - 1}"))
    if catalogue.page + 1 < catalogue.pages:
        nav.append(Button(req.t("btn_next"), action=f"{ACTION_ALL}:{catalogue.page + 1}"))
    if nav:
        buttons.append(nav)
    buttons.append([Button(req.t("vf_btn_search"), action=ACTION_SEARCH)])
    return Screen(
        req.t("vf_catalogue_title", page=catalogue.page + 1, pages=catalogue.pages), buttons=buttons,
        edit=req.is_button,
    )


@action(ACTION_PICK)
async def pick(req: Request) -> Screen:
    """A service button: its price with Confirm and Cancel."""
    if not req.args:
        return toast(req.t("error_stale_button"))
    return await _price_screen(req, await _resolve(req, ":".join(req.args)))


async def _price_screen(req: Request, code: str) -> Screen:
    quote = await _service(req).quote(req.user, code)
    # The offer names this one price screen: its Confirm buys once, and never after its Cancel or expiry.
    token = await offers.make(req.db, OFFER_KIND, req.user.id, {"service": quote.service}, OFFER_TTL)
    text = req.t(
        "vf_price", service=quote.name, price=money(quote.price_cents),
        minutes=int(DEFAULT_RENTAL.total_seconds() // 60),
    )
    buttons = [[
        Button(req.t("btn_confirm"), action=f"{ACTION_CONFIRM}:{token}"),
        Button(req.t("btn_cancel"), action=f"{ACTION_BACK_OUT}:{token}"),
    ]]
    return Screen(with_sandbox_notice(req, "verification", text), buttons=buttons, edit=req.is_button)


@action(ACTION_BACK_OUT)
async def back_out(req: Request) -> Screen:
    """Cancel on the price screen: nothing was bought, and its Confirm does nothing from now on."""
    if req.args and not await offers.withdraw(req.db, OFFER_KIND, req.user.id, req.args[0]):
        # Already used (a verification was bought from it) or gone: saying "nothing was charged" would be wrong.
        raise offers.OfferGone()
    text = req.t("vf_purchase_cancelled")
    return Screen(text, edit=True, toast=text)


@action(ACTION_CONFIRM)
async def confirm(req: Request) -> Screen:
    """Buys at the price read again now (never the one on the button) and turns the offer into the live status."""
    token = req.args[0] if req.args else ""
    async with offers.redeem(req.db, OFFER_KIND, req.user.id, token) as offer:
        verification = await _service(req).start(req.user.id, str(offer["service"]), request_key=f"offer:{token}")
    return _status_screen(req, verification, edit=True)


# --- the live status's buttons -----------------------------------------------------------------------------------


@action(ACTION_CANCEL)
async def cancel(req: Request) -> Screen:
    """Gives the number back; the hold is released once however many times this is pressed."""
    verification = await _service(req).cancel(req.user.id, _verification_id(req))
    return _status_screen(req, verification, edit=True, toast_text=req.t("vf_cancelled_toast", price=money(verification.price_cents)))


@action(ACTION_REPORT)
async def report(req: Request) -> Screen:
    """The number does not work: reported to the provider, money back."""
    verification = await _service(req).report(req.user.id, _verification_id(req))
    return _status_screen(req, verification, edit=True, toast_text=req.t("vf_reported_toast", price=money(verification.price_cents)))


@action(ACTION_ANOTHER)
async def another(req: Request) -> Screen:
    """Gives this number back (money back) and shows a new one's price with Confirm: every purchase is confirmed."""
    service, verification_id = _service(req), _verification_id(req)
    old = await service.get(req.user.id, verification_id)
    if old.state == "active":
        try:
            await service.cancel(req.user.id, verification_id)
        except VerificationError:
            pass  # the code or a parallel press got there first; the price screen is still what was asked
    return await _price_screen(req, old.service)


@action(ACTION_DONE)
async def done(req: Request) -> Screen:
    verification = await _service(req).complete(req.user.id, _verification_id(req))
    return _status_screen(
        req, verification, edit=True, toast_text=req.t("vf_done_toast"), same_number=await _same_number(req, verification)
    )


@action(ACTION_REUSE)
async def reuse(req: Request) -> Screen:
    """"Same number again" on cards sent before it asked first: now its price and Confirm, like every purchase."""
    from bot.handlers.same_number import same_number  # that module builds on this one: imported late

    return await same_number(req)


@action(ACTION_REFRESH)
async def refresh(req: Request) -> Screen:
    """Re-reads the status (asking the provider for an open one) and shows it in place."""
    verification = await _service(req).refresh(req.user.id, _verification_id(req))
    return _status_screen(
        req, verification, edit=req.is_button, toast_text=req.t("vf_refreshed_toast"),
        same_number=await _same_number(req, verification),
    )


async def _same_number(req: Request, verification: Verification) -> str | None:
    """How the provider would give this number again now (Same number again / Reactivate), asked only once the
    code came; None hides the button where it cannot work."""
    if verification.state not in ("code_received", "completed"):
        return None
    try:
        offer = await _service(req).same_number_offer(req.user.id, verification.id)
    except ProviderError:
        return "unknown"  # the price could not be read now: the card guesses, and its button asks again
    return offer.way if offer else None


async def cancel_live(req: Request) -> Screen | None:
    """/cancel with no question pending: a live verification is cancelled (its money back); with several, each
    one's Cancel button; None when nothing is live."""
    service = req.services.verification
    if service is None:
        return None
    rows, _ = await service.history(req.user.id, 0, HISTORY_PAGE)
    live = [v for v in rows if v.state == "active"]
    if len(live) == 1:
        return _status_screen(req, await service.cancel(req.user.id, live[0].id), edit=False)
    if not live:
        return None
    buttons = [
        [Button(req.t("vf_btn_cancel_one", service=v.service_name, number=v.phone_number or ""),
                action=f"{ACTION_CANCEL}:{v.id}")]
        for v in live
    ]
    return Screen(req.t("vf_cancel_which"), buttons=buttons)


# --- history -------------------------------------------------------------------------------------------------------


@action(ACTION_HISTORY)
async def history(req: Request) -> Screen:
    """The user's verifications, newest first; open ones have a button back to their status."""
    offset = arg_offset(req.args, 0, default=0)
    if offset is None:
        return toast(req.t("error_stale_button"))
    rows, total = await _service(req).history(req.user.id, offset, HISTORY_PAGE)
    if total == 0:
        return Screen(req.t("vf_history_empty"), edit=req.is_button)
    lines = [req.t("vf_history_title", first=offset + 1, last=offset + len(rows), total=total)]
    open_buttons: list[Button] = []
    for v in rows:
        code = req.t("vf_history_code", code=v.code) if v.code else Html("")
        lines.append(
            req.t(
                "vf_history_line", id=v.id, when=v.created_at.strftime("%Y-%m-%d %H:%M"), service=v.service_name,
                number=v.phone_number or "", state=req.t(f"vf_state_{v.state}"), price=money(v.price_cents),
                code=code,
            )
        )
        if v.state in _LIVE_STATES:
            open_buttons.append(Button(req.t("vf_btn_view", id=v.id, service=v.service_name), action=f"{ACTION_REFRESH}:{v.id}"))
    buttons = [open_buttons[i : i + 2] for i in range(0, len(open_buttons), 2)]
    nav: list[Button] = []
    if offset > 0:
        nav.append(Button(req.t("btn_prev"), action=f"{ACTION_HISTORY}:{max(0, offset - HISTORY_PAGE)}"))
    if offset + HISTORY_PAGE < total:
        nav.append(Button(req.t("btn_next"), action=f"{ACTION_HISTORY}:{offset + HISTORY_PAGE}"))
    if nav:
        buttons.append(nav)
    return Screen(Html("\n".join(lines)), buttons=buttons, edit=req.is_button)


# --- errors ------------------------------------------------------------------------------------------------------


@maps_errors
def _verification_errors(req: Request, error: Exception) -> Screen | None:
    """Refusals of the verification service and provider failures, as short user-safe answers."""
    if isinstance(error, VerificationError):
        text = req.t(error.key, **error.details)
        # On a button the message stays as it was: a stale or foreign button changes nothing.
        return toast(text) if req.is_button else Screen(text)
    if isinstance(error, ProviderError):
        text = req.t(f"vf_err_{failure_kind(error)}")
        if req.is_button and req.name != ACTION_CONFIRM:
            return toast(text)
        # A failed purchase replaces the offer, so its Confirm cannot be pressed again by mistake.
        return Screen(text, edit=req.is_button, buttons=[_browse_row(req)])
    return None
