"""A number's call setting, reached from its screen in /numbers: voicemail, off, or forward to a typed number."""

from __future__ import annotations

from bot.handlers.args import arg_id
from bot.handlers.router import Request, action, set_prompt
from bot.handlers.screens import Button, Screen, toast
from core.messaging.calls import CallDesk
from core.messaging.errors import MessagingError
from core.messaging.relay import display_number
from core.models import PhoneNumber
from core.platform.i18n import Html


def _calls(req: Request) -> CallDesk:
    return req.services.messaging.calls  # type: ignore[no-any-return]


def mode_text(req: Request, number: PhoneNumber) -> Html:
    """The number's call setting in words: "Voicemail", "Off", "Forward to +1 415-555-0123"."""
    if number.call_mode == "forward" and number.call_forward_to:
        return req.t("call_mode_forward", number=display_number(number.call_forward_to))
    return req.t("call_mode_off" if number.call_mode == "off" else "call_mode_voicemail")


def settings_button(req: Request, number: PhoneNumber) -> Button:
    """The button on the number's screen that opens its call setting."""
    return Button(req.t("call_btn_settings", mode=mode_text(req, number)), action=f"num_calls:{number.id}")


async def _active_number(req: Request) -> PhoneNumber | Screen:
    number_id = arg_id(req.args, 0)
    if number_id is None:
        return toast(req.t("error_stale_button"))
    number = await req.services.messaging.owned_number(req.user.id, number_id)
    if number.state != "active":
        return toast(req.t("num_already_released", number=display_number(number.e164)))
    return number  # type: ignore[no-any-return]


def _settings(req: Request, number: PhoneNumber, saved: bool = False) -> Screen:
    shown = display_number(number.e164)
    mode = mode_text(req, number)
    text = req.t("call_settings", number=shown, mode=mode)
    if saved:
        text = Html(f"{req.t('call_mode_saved', number=shown, mode=mode)}\n\n{text}")

    def marked(key: str, current: bool) -> str:
        return f"✓ {req.t(key)}" if current else str(req.t(key))

    return Screen(
        text,
        buttons=[
            [Button(marked("call_mode_voicemail", number.call_mode == "voicemail"),
                    action=f"num_callset:{number.id}:voicemail"),
             Button(marked("call_mode_off", number.call_mode == "off"), action=f"num_callset:{number.id}:off")],
            [Button(marked("call_btn_forward", number.call_mode == "forward"), action=f"num_callfwd:{number.id}")],
            [Button(req.t("btn_back"), action=f"num_open:{number.id}")],
        ],
        edit=req.is_button,
    )


@action("num_calls")
async def call_settings(req: Request) -> Screen:
    """The number's call setting and the choices."""
    number = await _active_number(req)
    return number if isinstance(number, Screen) else _settings(req, number)


@action("num_callset")
async def set_mode(req: Request) -> Screen:
    """Voicemail or Off, at once."""
    number = await _active_number(req)
    if isinstance(number, Screen):
        return number
    mode = req.args[1] if len(req.args) > 1 else ""
    if mode not in ("voicemail", "off"):
        return toast(req.t("error_stale_button"))
    changed = await _calls(req).set_call_mode(req.user.id, number.id, mode)
    return _settings(req, changed, saved=True)


@action("num_callfwd")
async def ask_forward(req: Request) -> Screen:
    """Forward…: the number calls should ring is typed next."""
    number = await _active_number(req)
    if isinstance(number, Screen):
        return number
    await set_prompt(req, f"num_callto:{number.id}")
    return Screen(req.t("call_forward_prompt", number=display_number(number.e164)),
                  prompt=req.t("call_forward_placeholder"))


@action("num_callto")
async def forward_to(req: Request) -> Screen:
    """The typed number: checked (libphonenumber, the number's own country when no country code is given), then
    saved; a number that cannot be used says why and asks again."""
    if req.prompt_data is None:  # only typed text answers this step
        return toast(req.t("error_stale_button"))
    number = await _active_number(req)
    if isinstance(number, Screen):
        return number
    try:
        changed = await _calls(req).set_call_mode(req.user.id, number.id, "forward", req.text)
    except MessagingError as error:
        if error.key not in ("call_forward_invalid", "call_forward_self"):
            raise
        await set_prompt(req, f"num_callto:{number.id}")
        return Screen(error.text(req.locale), prompt=req.t("call_forward_placeholder"))
    return _settings(req, changed, saved=True)
