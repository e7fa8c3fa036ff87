"""/sms, /inbox and replies: sending texts, reading conversations, answering a relayed SMS, blocking senders."""

from __future__ import annotations

import html
import re

from bot.handlers.args import arg_id, arg_offset
from bot.handlers.numbers import messaging_errors  # noqa: F401 - registers the messaging error mapper
from bot.handlers.router import Request, action, command, on_reply, pop_prompt, set_prompt
from bot.handlers.screens import Button, Screen, SentRef, toast
from core.messaging.errors import InvalidNumber
from core.messaging.relay import STATUS_ICONS, display_number, sent_text
from core.messaging.results import ConversationView, SentSms
from core.messaging.service import MessagingService
from core.platform.i18n import Html, money
from core.platform.phone import InvalidPhoneNumber, country_name, normalize

INBOX_PAGE = 8
HISTORY_PAGE = 10
PREVIEW_CHARS = 300
# Tokens that may be part of a typed phone number ("+1 415 555 0100"); anything with letters starts the text.
_NUMBERISH = re.compile(r"^[+\d().\-]+$")


def _messaging(req: Request) -> MessagingService:
    return req.services.messaging  # type: ignore[no-any-return]


def split_recipient(text: str, region: str = "US") -> tuple[str, str]:
    """`"+1 415 555 0100 See you at 5"` → (`"+1 415 555 0100"`, `"See you at 5"`); the text keeps its lines."""
    tokens = text.split()
    if not tokens:
        return "", ""
    run = 0
    while run < len(tokens) and _NUMBERISH.match(tokens[run]):
        run += 1
    # Nothing valid: the whole number-looking run is what the user meant as the number (the error names it).
    take = max(run, 1)
    for size in range(run, 0, -1):
        try:
            normalize(" ".join(tokens[:size]), region)
        except InvalidPhoneNumber:
            continue
        take = size
        break
    pieces = text.strip().split(None, take)
    return " ".join(pieces[:take]), (pieces[take] if len(pieces) > take else "").strip()


async def _region(req: Request) -> str:
    owned = await _messaging(req).list_numbers(req.user.id)
    return owned[-1].country if owned else "US"


async def _send(req: Request, to: str, body: str, from_number_id: int | None) -> Screen:
    messaging = _messaging(req)
    sent = await messaging.send_sms(
        req.user.id, to, body, from_number_id=from_number_id, request_key=f"{req.contact.platform}:{req.request_id}"
    )
    return sent_screen(req, messaging, sent)


def sent_screen(req: Request, messaging: MessagingService, sent: SentSms) -> Screen:
    """The "sent" answer with the thread's button; the chat message it becomes is where delivery status updates go."""

    async def remember(ref: SentRef) -> None:
        await messaging.remember_status_message(sent.message_id, ref.platform, ref.chat_id, ref.message_id)

    return Screen(
        sent_text(req.locale, sent),
        buttons=[[Button(req.t("sms_btn_open"), action=f"conv:{sent.conversation_id}:0")]],
        reply_context={"kind": "sms", "conversation_id": sent.conversation_id},
        on_sent=remember,
    )


# --- /sms ----------------------------------------------------------------------------------------------------


@command("sms")
async def sms(req: Request) -> Screen:
    """`/sms <to> <text>` sends at once; without arguments, a usage line with the price and a prompt for both."""
    if not req.text:
        await set_prompt(req, "sms_compose")
        text = req.t("sms_usage")
        owned = await _messaging(req).list_numbers(req.user.id)
        if owned:
            # The price before anything is sent: a one-part text to a number of the user's own country.
            quote = await _messaging(req).quote_sms(req.user.id, None, country=owned[-1].country or "US")
            hint = req.t(
                "sms_price_hint_country", country=country_name(quote.country, req.locale),
                price=money(quote.price_cents),
            )
            text = Html(f"{text}\n{hint}")
        return Screen(text, prompt=req.t("sms_compose_placeholder"))
    return await _compose(req, req.text)


async def text_prompt(req: Request, to: str, from_number_id: int | None = None) -> Screen:
    """Asks for the text of an SMS to `to` (already checked), with what a one-part text costs."""
    await set_prompt(req, "sms_compose", **({"to": to, "from": from_number_id} if from_number_id else {"to": to}))
    quote = await _messaging(req).quote_sms(req.user.id, to, from_number_id=from_number_id)
    prompt = req.t("sms_text_prompt", number=display_number(quote.to_e164))
    hint = req.t("sms_price_hint", price=money(quote.price_cents))
    return Screen(Html(f"{prompt}\n{hint}"), prompt=req.t("sms_text_placeholder"))


@action("sms_compose")
async def compose(req: Request) -> Screen:
    """The answer to the /sms prompt: "<to> <text>", or only the text when the number came first."""
    if req.is_button:
        return await sms(req)
    to = (req.prompt_data or {}).get("to")
    if to:
        from_id = (req.prompt_data or {}).get("from")  # New SMS from one number's screen
        return await _send(req, str(to), req.text, int(from_id) if isinstance(from_id, int) else None)
    return await _compose(req, req.text)


async def _compose(req: Request, text: str) -> Screen:
    region = await _region(req)
    to, body = split_recipient(text, region)
    if not body:
        try:
            normalize(to, region)
        except InvalidPhoneNumber as error:
            raise InvalidNumber(to, error.reason) from None
        return await text_prompt(req, to)
    return await _send(req, to, body, None)


# --- replies -------------------------------------------------------------------------------------------------


@on_reply("sms")
async def reply_in_chat(req: Request) -> Screen:
    """A chat reply to a relayed SMS (or to a conversation) texts that person back from the same number."""
    context = req.reply_context or {}
    try:
        conversation_id = int(context["conversation_id"])
    except (KeyError, TypeError, ValueError):
        return Screen(req.t("error_stale_button"))
    conversation = await _messaging(req).conversation(req.user.id, conversation_id)
    # Answering with the chat's reply function ends whatever dialog was half-way, as a command does.
    await pop_prompt(req.services, req.contact)
    return await _send(req, conversation.remote_e164, req.text, conversation.phone_number_id)


@action("sms_reply")
async def reply(req: Request) -> Screen:
    """The Reply button asks for the text; the text that answers it is sent from the conversation's number."""
    conversation = await _conversation_arg(req)
    if isinstance(conversation, Screen):
        return conversation
    if not req.is_button:
        return await _send(req, conversation.remote_e164, req.text, conversation.phone_number_id)
    if not conversation.number_active:
        return toast(req.t("sms_conv_released"))
    # Only the prompt routes the answer (no reply context here): on Telegram the answer is a ForceReply to this
    # message, and two routes would leave the prompt pending for the next, unrelated text.
    await set_prompt(req, f"sms_reply:{conversation.id}")
    return Screen(req.t("sms_reply_prompt", number=_who(conversation)), prompt=req.t("sms_reply_placeholder"))


# --- block ---------------------------------------------------------------------------------------------------


@action("sms_block")
async def block(req: Request) -> Screen:
    """Texts from this sender are still stored but no longer shown."""
    return await _set_blocked(req, True)


@action("sms_unblock")
async def unblock(req: Request) -> Screen:
    return await _set_blocked(req, False)


async def _set_blocked(req: Request, blocked: bool) -> Screen:
    conversation = await _conversation_arg(req)
    if isinstance(conversation, Screen):
        return conversation
    view = await _messaging(req).block(req.user.id, conversation.id, blocked)
    text = req.t("sms_blocked_done" if blocked else "sms_unblocked_done", number=_who(view))
    other = Button(
        req.t("sms_btn_unblock" if blocked else "sms_btn_block"),
        action=f"{'sms_unblock' if blocked else 'sms_block'}:{view.id}",
    )
    return Screen(
        text, buttons=[[other, Button(req.t("sms_btn_open"), action=f"conv:{view.id}:0")]],
        toast=html.unescape(re.sub(r"<[^>]+>", "", text))[:190],
    )


# --- /inbox --------------------------------------------------------------------------------------------------


@command("inbox")
async def inbox(req: Request) -> Screen:
    """Conversations, most recent first, with unread counts; a button opens each."""
    return await _inbox(req, 0)


@action("inbox")
async def inbox_page(req: Request) -> Screen:
    offset = arg_offset(req.args, 0)
    if offset is None:
        return toast(req.t("error_stale_button"))
    return await _inbox(req, offset)


async def _inbox(req: Request, offset: int) -> Screen:
    views, total = await _messaging(req).conversations(req.user.id, offset, INBOX_PAGE)
    if total == 0:
        return Screen(req.t("sms_inbox_empty"), edit=req.is_button)
    if not views:
        offset, (views, total) = 0, await _messaging(req).conversations(req.user.id, 0, INBOX_PAGE)
    buttons = []
    for view in views:
        unread = f"🔵 {view.unread_count} · " if view.unread_count else ("⛔ " if view.blocked else "")
        label = html.unescape(req.t("sms_btn_conversation", unread=unread, number=_who(view)))
        buttons.append([Button(label, action=f"conv:{view.id}:0")])
    nav = []
    if offset > 0:
        nav.append(Button(req.t("btn_prev"), action=f"inbox:{max(0, offset - INBOX_PAGE)}"))
    if offset + INBOX_PAGE < total:
        nav.append(Button(req.t("btn_next"), action=f"inbox:{offset + INBOX_PAGE}"))
    if nav:
        buttons.append(nav)
    text = req.t("sms_inbox_title", first=offset + 1, last=offset + len(views), total=total)
    return Screen(text, buttons=buttons, edit=req.is_button)


@action("conv")
async def open_conversation(req: Request) -> Screen:
    """One conversation, a page of messages newest first; opening it marks it read. Replying to it texts back."""
    conversation_id = arg_id(req.args, 0)
    offset = arg_offset(req.args, 1, default=0)
    if conversation_id is None or offset is None:
        return toast(req.t("error_stale_button"))
    view, messages, total = await _messaging(req).history(conversation_id, offset, HISTORY_PAGE, user_id=req.user.id)
    lines = [req.t("sms_conv_header", remote=_who(view), own=display_number(view.own_e164))]
    if view.opted_out:
        lines.append(req.t("sms_conv_opted_out"))
    if view.blocked:
        lines.append(req.t("sms_conv_blocked"))
    if not view.number_active:
        lines.append(req.t("sms_conv_released"))
    lines.append("")
    if not messages:
        lines.append(req.t("sms_conv_empty"))
    else:
        lines.append(req.t("sms_conv_page", first=offset + 1, last=offset + len(messages), total=total))
    for message in messages:
        when = (message.received_at or message.created_at).strftime("%m-%d %H:%M")
        body = message.body if len(message.body) <= PREVIEW_CHARS else message.body[: PREVIEW_CHARS - 1] + "…"
        if message.media_urls:
            body = f"{body} 📎×{len(message.media_urls)}".strip()
        if message.direction == "inbound":
            lines.append(req.t("sms_line_in", when=when, body=body))
        else:
            lines.append(req.t("sms_line_out", when=when, body=body, status=STATUS_ICONS.get(message.status, "")))
    actions: list[Button] = []
    if view.number_active and not view.blocked:
        actions.append(Button(req.t("sms_btn_reply"), action=f"sms_reply:{view.id}"))
    if view.blocked:
        actions.append(Button(req.t("sms_btn_unblock"), action=f"sms_unblock:{view.id}"))
    else:
        actions.append(Button(req.t("sms_btn_block"), action=f"sms_block:{view.id}"))
    nav: list[Button] = []
    if offset > 0:
        nav.append(Button(req.t("sms_btn_newer"), action=f"conv:{view.id}:{max(0, offset - HISTORY_PAGE)}"))
    if offset + HISTORY_PAGE < total:
        nav.append(Button(req.t("sms_btn_older"), action=f"conv:{view.id}:{offset + HISTORY_PAGE}"))
    buttons = [actions] + ([nav] if nav else []) + [[Button(req.t("sms_btn_inbox"), action="inbox:0")]]
    return Screen(
        Html("\n".join(lines)), buttons=buttons, edit=req.is_button,
        reply_context={"kind": "sms", "conversation_id": view.id} if view.number_active else None,
    )


# --- helpers -------------------------------------------------------------------------------------------------


def _who(view: ConversationView) -> str:
    number = display_number(view.remote_e164)
    return f"{view.contact_name} ({number})" if view.contact_name else number


async def _conversation_arg(req: Request) -> ConversationView | Screen:
    """The conversation a button or prompt names, re-checked against the database (NotYours otherwise)."""
    conversation_id = arg_id(req.args, 0)
    if conversation_id is None:
        return toast(req.t("error_stale_button"))
    return await _messaging(req).conversation(req.user.id, conversation_id)
