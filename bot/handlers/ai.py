"""AI assistance in the chat: reply drafts (/suggest, Suggest reply), analysis (/analyze, Analyze) and opting in.

Every answer names the engine that produced it. Drafts are only ever sent by the user's own Send press (or as
the text they typed when editing one); nothing the model writes goes out by itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from bot.handlers.args import arg_id, arg_int
from bot.handlers.router import Request, action, command, maps_errors, on_reply, pop_prompt, set_prompt
from bot.handlers.screens import Button, Screen, SentRef, toast
from core.ai.service import (
    AiAnswer,
    AiNotFound,
    AiService,
    AiTextTooLong,
    ConversationRef,
    DraftSet,
    engine_label,
    service_for,
)
from core.messaging.relay import sent_text
from core.platform.i18n import Html, t
from core.providers.ai import Analysis, one_line

COPY_TEXT_MAX = 256  # Telegram's copy_text limit; a longer draft is copied from its <code> block instead
PICK_LIMIT = 8

Verb = Callable[[Request, list[str]], Awaitable[Screen | list[Screen]]]


def ai_service(req: Request) -> AiService:
    return service_for(req.services)


# --- what every AI answer says about itself ------------------------------------------------------------------------


def answer_footer(req: Request, answer: AiAnswer[Any]) -> list[str]:
    """The engine line, and why the rules answered when they did."""
    lines = [req.t("ai_answered_by", engine=engine_label(req.locale, answer.engine))]
    if not answer.opted_in:
        if ai_service(req).model_configured:
            lines.append(req.t("ai_note_not_opted_in"))
    elif answer.over_limit:
        lines.append(
            req.t("ai_note_over_limit", used=f"{answer.tokens_today:,}", allowed=f"{answer.tokens_allowed:,}")
        )
    elif answer.fell_back:
        lines.append(req.t("ai_note_fallback"))
    return lines


def privacy_buttons(req: Request, answer: AiAnswer[Any]) -> list[list[Button]]:
    """A way to opt in, offered only where opting in would change who answers."""
    if answer.opted_in or not ai_service(req).model_configured:
        return []
    return [[Button(req.t("ai_btn_turn_on"), action="ai:optin")]]


@maps_errors
def _ai_errors(req: Request, error: Exception) -> Screen | None:
    if isinstance(error, AiNotFound):
        return Screen(req.t("ai_not_found"))
    if isinstance(error, AiTextTooLong):
        return Screen(req.t("ai_analyze_too_long", limit=error.limit, length=error.length))
    return None


async def send_sms_to(
    req: Request, conversation: ConversationRef, text: str, request_key: str
) -> tuple[Screen, bool]:
    """Hand text the user chose to the normal sending path (limits, ledger, status); (answer, whether sent).

    The answer is messaging's own "SMS sent" text, kept up to date in place as delivery news comes.
    """
    messaging = req.services.messaging
    if messaging is None:
        return Screen(req.t("ai_sms_unavailable"), toast=req.t("ai_sms_unavailable")), False
    sent = await messaging.send_sms(
        req.user.id, conversation.remote_e164, text, from_number_id=conversation.phone_number_id,
        request_key=request_key,
    )

    async def remember(ref: SentRef) -> None:
        await messaging.remember_status_message(sent.message_id, ref.platform, ref.chat_id, ref.message_id)

    return Screen(
        sent_text(req.locale, sent),
        buttons=[[Button(req.t("sms_btn_open"), action=f"conv:{sent.conversation_id}:0")]],
        reply_context={"kind": "sms", "conversation_id": sent.conversation_id},
        on_sent=remember, edit=req.is_button, toast=req.t("ai_toast_sent"),
    ), True




# --- analysis --------------------------------------------------------------------------------------------------------


def analysis_screen(req: Request, answer: AiAnswer[Analysis], *, sender: str | None = None) -> Screen:
    a = answer.value
    lines = [req.t("ai_analysis_title_sms", sender=sender) if sender else req.t("ai_analysis_title")]
    lines.append(
        req.t(
            "ai_analysis_body", intent=req.t(f"ai_intent_{a.intent}"),
            sentiment=req.t(f"ai_sentiment_{a.sentiment}"), score=f"{a.sentiment_score:+.2f}",
            urgency=req.t(f"ai_urgency_{a.urgency}"), summary=a.summary,
        )
    )
    if a.intent == "spam_phishing":
        lines.append(req.t("ai_analysis_spam"))
    if a.warning:
        lines.append(req.t("ai_analysis_warning", warning=a.warning))
    lines.append("")
    lines += answer_footer(req, answer)
    return Screen(Html("\n".join(lines)), buttons=privacy_buttons(req, answer))


@command("analyze")
async def analyze(req: Request) -> Screen:
    """`/analyze <text>`: intent, sentiment, urgency and a summary; without text, asks for it."""
    if not req.text:
        await set_prompt(req, "ai:antext")
        return Screen(req.t("ai_analyze_prompt"), prompt=req.t("ai_analyze_placeholder"))
    return analysis_screen(req, await ai_service(req).analyze_text(req.user, req.text))


async def _analyze_typed(req: Request, args: list[str]) -> Screen:
    if req.prompt_data is None:  # only typed text answers this step; a button with this id is forged
        return toast(req.t("error_stale_button"))
    if not req.text:
        await set_prompt(req, "ai:antext")
        return Screen(req.t("ai_analyze_prompt"), prompt=req.t("ai_analyze_placeholder"))
    return analysis_screen(req, await ai_service(req).analyze_text(req.user, req.text))


async def _analyze_message(req: Request, args: list[str]) -> Screen:
    message_id = arg_id(args, 0, big=True)  # messages.id is BIGINT
    if message_id is None:
        return toast(req.t("error_stale_button"))
    answer = await ai_service(req).analyze_message(req.user, message_id)
    sender = answer.conversation.label if answer.conversation else None
    return analysis_screen(req, answer, sender=sender)


# --- reply drafts ----------------------------------------------------------------------------------------------------


def drafts_screen(
    req: Request, draft_set: DraftSet, answer: AiAnswer[Any] | None = None, *, edit: bool, more: bool = False
) -> Screen:
    lines = [req.t("ai_drafts_title", contact=draft_set.conversation.label)]
    if draft_set.subject:
        lines.append(req.t("ai_drafts_last", text=one_line(draft_set.subject, 200)))
    lines.append("")
    lines += [req.t("ai_draft_line", number=i, text=text) for i, text in enumerate(draft_set.drafts, 1)]
    lines += ["", req.t("ai_drafts_hint")]
    if answer is not None:
        lines += answer_footer(req, answer)
    else:
        lines.append(req.t("ai_answered_by", engine=engine_label(req.locale, draft_set.engine)))
    key = draft_set.key
    buttons = [
        [
            Button(req.t("ai_btn_send", number=i + 1), action=f"ai:send:{key}:{i}"),
            Button(req.t("ai_btn_edit", number=i + 1), action=f"ai:edit:{key}:{i}"),
            Button(req.t("ai_btn_regenerate", number=i + 1), action=f"ai:new:{key}:{i}"),
        ]
        for i in range(len(draft_set.drafts))
    ]
    if more:
        buttons.append([Button(req.t("ai_btn_other_conversation"), action="ai:pick")])
    if answer is not None:
        buttons += privacy_buttons(req, answer)
    return Screen(Html("\n".join(lines)), buttons=buttons, edit=edit)


async def _show_drafts(req: Request, answer: AiAnswer[Any], *, edit: bool, more: bool = False) -> Screen:
    draft_set = await ai_service(req).remember_drafts(req.user.id, answer)
    return drafts_screen(req, draft_set, answer, edit=edit, more=more)


@command("suggest")
async def suggest(req: Request) -> Screen:
    """Three reply drafts for the latest conversation, with a way to pick another one."""
    ai = ai_service(req)
    recent = await ai.recent_conversations(req.user.id, limit=2)
    if not recent:
        return Screen(req.t("ai_no_conversations"))
    answer = await ai.drafts_for_conversation(req.user, recent[0].id)
    return await _show_drafts(req, answer, edit=False, more=len(recent) > 1)


async def _suggest_for_message(req: Request, args: list[str]) -> Screen:
    message_id = arg_id(args, 0, big=True)  # messages.id is BIGINT
    if message_id is None:
        return toast(req.t("error_stale_button"))
    # A new message under the relayed SMS: the SMS itself, with its Reply button, stays as it was.
    return await _show_drafts(req, await ai_service(req).drafts_for_message(req.user, message_id), edit=False)


async def _suggest_for_conversation(req: Request, args: list[str]) -> Screen:
    conversation_id = arg_id(args, 0)
    if conversation_id is None:
        return toast(req.t("error_stale_button"))
    answer = await ai_service(req).drafts_for_conversation(req.user, conversation_id)
    return await _show_drafts(req, answer, edit=req.is_button)


async def _pick_conversation(req: Request, args: list[str]) -> Screen:
    recent = await ai_service(req).recent_conversations(req.user.id, limit=PICK_LIMIT)
    if not recent:
        return Screen(req.t("ai_no_conversations"), edit=req.is_button)
    buttons = [[Button(c.label, action=f"ai:conv:{c.id}")] for c in recent]
    return Screen(req.t("ai_pick_title"), buttons=buttons, edit=req.is_button)


async def _drafts_and_index(req: Request, args: list[str]) -> tuple[DraftSet | None, int | None]:
    index = arg_int(args, 1)
    if not args or index is None:
        return None, None
    draft_set = await ai_service(req).load_drafts(req.user.id, args[0])
    if draft_set is None or not 0 <= index < len(draft_set.drafts):
        return draft_set, None
    return draft_set, index


async def _send_draft(req: Request, args: list[str]) -> Screen:
    """Send: the one way a model's draft becomes an SMS, through the normal sending path."""
    draft_set, index = await _drafts_and_index(req, args)
    if draft_set is None or index is None:
        return toast(req.t("ai_drafts_expired"), alert=True)
    if index in draft_set.sent:
        return toast(req.t("ai_toast_sent"))
    text = draft_set.drafts[index]
    key = f"aidraft:{draft_set.key}:{index}:{_digest(text)}"
    answer, sent = await send_sms_to(req, draft_set.conversation, text, key)
    if sent:
        draft_set.sent.append(index)
        await ai_service(req).save_drafts(draft_set)
    return answer


async def _edit_draft(req: Request, args: list[str]) -> Screen:
    """Edit: the draft comes back as a message to reply to (Telegram) or a text box (Discord's modal)."""
    draft_set, index = await _drafts_and_index(req, args)
    if draft_set is None or index is None:
        return toast(req.t("ai_drafts_expired"), alert=True)
    text = draft_set.drafts[index]
    await set_prompt(req, f"ai:typed:{draft_set.key}:{index}")
    buttons = [[Button(req.t("ai_btn_copy"), copy_text=text)]] if len(text) <= COPY_TEXT_MAX else []
    return Screen(
        req.t("ai_edit_prompt", number=index + 1, contact=draft_set.conversation.label, text=text),
        buttons=buttons, prompt=req.t("ai_edit_placeholder"),
        reply_context={"kind": "ai_draft", "key": draft_set.key, "index": index},
    )


async def _regenerate_draft(req: Request, args: list[str]) -> Screen:
    draft_set, index = await _drafts_and_index(req, args)
    if draft_set is None or index is None:
        return toast(req.t("ai_drafts_expired"), alert=True)
    answer, changed = await ai_service(req).regenerate(req.user, draft_set, index)
    if not changed:
        key = "ai_regen_same_model" if answer.from_model else "ai_regen_same_rules"
        return toast(req.t(key), alert=True)
    screen = drafts_screen(req, draft_set, answer, edit=True)
    screen.toast = req.t("ai_toast_regenerated", number=index + 1)
    return screen


async def _typed_draft(req: Request, args: list[str]) -> Screen:
    if req.prompt_data is None:
        return toast(req.t("error_stale_button"))
    return await _send_edited(req, args[0] if args else "", arg_int(args, 1))


@on_reply("ai_draft")
async def edited_draft(req: Request) -> Screen:
    """The user's reply to an Edit message: their own text, sent to the draft's conversation."""
    context = req.reply_context or {}
    key = str(context.get("key", ""))
    index = context.get("index")
    # The Edit step also left a pending prompt; answered by reply, it must not catch the user's next text.
    await _forget_edit(req, key)
    return await _send_edited(req, key, index if isinstance(index, int) else None)


async def _forget_edit(req: Request, key: str = "") -> None:
    """Drop a pending "type your version" question of an Edit step (of draft set `key`, or of any)."""
    pending = await pop_prompt(req.services, req.contact)
    if pending is not None and not str(pending.get("action", "")).startswith(f"ai:typed:{key}"):
        await set_prompt(req, str(pending["action"]), **dict(pending.get("data") or {}))


async def _send_edited(req: Request, key: str, index: int | None) -> Screen:
    draft_set = await ai_service(req).load_drafts(req.user.id, key) if key else None
    if draft_set is None or index is None:
        return Screen(req.t("ai_drafts_expired"))
    text = req.text.strip()
    if not text:
        await set_prompt(req, f"ai:typed:{key}:{index}")
        return Screen(req.t("ai_edit_empty"), prompt=req.t("ai_edit_placeholder"))
    # The same text sent twice for the same draft (a redelivered update) is one SMS.
    answer, sent = await send_sms_to(req, draft_set.conversation, text, f"aiedit:{key}:{index}:{_digest(text)}")
    if sent:
        draft_set.sent.append(index)
        await ai_service(req).save_drafts(draft_set)
    return answer


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- opting in -------------------------------------------------------------------------------------------------------


async def _opt_in(req: Request, args: list[str]) -> Screen:
    """What turning AI on means, in one paragraph, and the /settings toggle to do it."""
    if req.user.ai_opt_in:
        return toast(req.t("ai_optin_already"))
    label = t(req.locale, "btn_ai", state=t(req.locale, "state_off"))
    return Screen(req.t("ai_optin_title"), buttons=[[Button(label, action="set:ai")]])


# --- the one entry point for every `ai:` button ------------------------------------------------------------------------

_VERBS: dict[str, Verb] = {
    "sug": _suggest_for_message,
    "an": _analyze_message,
    "antext": _analyze_typed,
    "conv": _suggest_for_conversation,
    "pick": _pick_conversation,
    "send": _send_draft,
    "edit": _edit_draft,
    "new": _regenerate_draft,
    "typed": _typed_draft,
    "optin": _opt_in,
}


@action("ai")
async def ai_button(req: Request) -> Screen | list[Screen]:
    """Every `ai:<verb>:…` button (and typed answers to the prompts the AI flows ask)."""
    name = req.args[0] if req.args else ""
    verb = _VERBS.get(name)
    if verb is None:
        return toast(req.t("error_stale_button"))
    if req.is_button and name != "edit":
        # A user who pressed Edit and then another button has moved on: their next text must not become an SMS.
        await _forget_edit(req)
    return await verb(req, req.args[1:])
