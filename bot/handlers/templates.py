"""Message templates in the chat: /templates lists, creates, edits, deletes, fills in and sends them.

A template is sent to a conversation in two taps (the template, then the conversation); its variables are asked
one at a time, with ready-made values as buttons, and checked before the preview offers Send.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from bot.handlers.ai import ai_service, answer_footer, privacy_buttons, send_sms_to
from bot.handlers.args import arg_id, arg_int, parse_id
from bot.handlers.router import Request, action, command, maps_errors, pop_prompt, set_prompt
from bot.handlers.screens import Button, Screen, toast
from core.ai.service import AiTextTooLong, ConversationRef
from core.messaging import templates
from core.messaging.relay import display_number
from core.messaging.templates import Template, TemplateError
from core.models import KeyValue
from core.platform.clock import utcnow
from core.platform.i18n import Html, escape

STATE_TTL = timedelta(hours=12)
CARD_CONVERSATIONS = 4
COPY_TEXT_MAX = 256

Verb = Callable[[Request, list[str]], Awaitable[Screen | list[Screen]]]


@maps_errors
def _template_errors(req: Request, error: Exception) -> Screen | None:
    if isinstance(error, TemplateError):
        return Screen(error.describe(req.locale))
    return None


# --- dialog state: what a multi-step dialog remembers between taps ---------------------------------------------------


async def _put(req: Request, key: str, value: dict[str, Any]) -> None:
    async with req.db.transaction() as session:
        row = await session.get(KeyValue, key, with_for_update=True)
        if row is None:
            session.add(KeyValue(key=key, value=value, expires_at=utcnow() + STATE_TTL))
        else:
            row.value = value
            row.expires_at = utcnow() + STATE_TTL


async def _get(req: Request, key: str) -> dict[str, Any] | None:
    """The state under `key` when it is this user's and still fresh."""
    async with req.db.read() as session:
        row = await session.get(KeyValue, key)
    if row is None or (row.expires_at is not None and row.expires_at < utcnow()):
        return None
    value = dict(row.value)
    return value if value.get("user_id") == req.user.id else None


async def _drop(req: Request, key: str) -> None:
    async with req.db.transaction() as session:
        row = await session.get(KeyValue, key)
        if row is not None:
            await session.delete(row)


async def _clear_prompt(req: Request) -> None:
    await pop_prompt(req.services, req.contact)


def _typed(req: Request) -> bool:
    """True when this call answers a prompt the flow asked for (not a button with a prompt's action id)."""
    return req.prompt_data is not None


# --- the list and one template ---------------------------------------------------------------------------------------


async def _own_templates(req: Request) -> list[Template]:
    async with req.db.read() as session:
        return await templates.list_templates(session, req.user.id)


def _label(req: Request, key: str, **kwargs: Any) -> str:
    """A button label: plain text (chats show labels literally), so user text in it is not HTML-escaped."""
    return html.unescape(req.t(key, **kwargs))


def _pairs(buttons: list[Button]) -> list[list[Button]]:
    return [buttons[i : i + 2] for i in range(0, len(buttons), 2)]


async def _list(
    req: Request, *, edit: bool, notice: Html | None = None, services: list[str] | None = None,
    number: str | None = None,
) -> Screen:
    """The general built-ins, those of `services` (by default the services the user verifies with), and the
    user's own; `number` names the number whose services these are."""
    builtins = templates.builtin_templates(req.locale)
    if services is None:
        async with req.db.read() as session:
            services = await templates.services_of_user(session, req.user.id)
    own = await _own_templates(req)
    lines = [notice, ""] if notice else []
    lines.append(req.t("tpl_list_title"))
    if number is not None:
        lines.append(req.t("tpl_for_number", number=number))
    lines.append(req.t("tpl_section_builtin", names=", ".join(b.name for b in builtins)))
    per_service = [(s, templates.service_templates(s, req.locale)) for s in services]
    per_service = [(s, found) for s, found in per_service if found]
    for service, found in per_service:
        lines.append(
            req.t("tpl_section_service", service=templates.SERVICE_TEMPLATES[service].name,
                  names=", ".join(tpl.name for tpl in found))
        )
    if own:
        lines.append(
            req.t(
                "tpl_section_own", count=len(own), max=templates.MAX_TEMPLATES_PER_USER,
                names=", ".join(o.name for o in own),
            )
        )
    else:
        lines.append(req.t("tpl_none_own"))
    shown = builtins + [tpl for _, found in per_service for tpl in found]
    buttons = _pairs([Button(_label(req, "tpl_btn_builtin", name=b.name), action=f"tpl:open:{b.ref}") for b in shown])
    buttons += _pairs([Button(_label(req, "tpl_btn_own", name=o.name), action=f"tpl:open:{o.ref}") for o in own])
    buttons.append([Button(req.t("tpl_btn_new"), action="tpl:new"), Button(req.t("tpl_btn_ai"), action="tpl:ai")])
    buttons.append([Button(req.t("tpl_btn_by_service"), action="tpl:svc")])
    return Screen(Html("\n".join(lines)), buttons=buttons, edit=edit)


async def _for_number(req: Request, args: list[str]) -> Screen:
    """`tpl:num:<number>`: the templates of the services this number is used with, and the user's own."""
    number_id = arg_id(args, 0)
    messaging = req.services.messaging
    if number_id is None or messaging is None:
        return toast(req.t("error_stale_button"))
    number = await messaging.owned_number(req.user.id, number_id)
    async with req.db.read() as session:
        services = await templates.services_of_number(session, req.user.id, number.e164)
    return await _list(req, edit=req.is_button, services=services, number=display_number(number.e164))


async def _by_service(req: Request, args: list[str]) -> Screen:
    """`tpl:svc`: the services with a built-in set; `tpl:svc:<service>`: that service's set and the user's own."""
    if args:
        if args[0] not in templates.SERVICE_TEMPLATES:
            return toast(req.t("error_stale_button"))
        return await _list(req, edit=req.is_button, services=[args[0]])
    buttons = _pairs([Button(s.name, action=f"tpl:svc:{s.service}") for s in templates.SERVICE_TEMPLATES.values()])
    buttons.append([Button(req.t("tpl_btn_list"), action="tpl:list")])
    return Screen(req.t("tpl_pick_service"), buttons=buttons, edit=req.is_button)


@command("templates")
async def templates_command(req: Request) -> Screen:
    """The built-in templates (general, and those of the services the user uses) and the user's own, each a
    button; plus New, Draft with AI and the sets of other services."""
    return await _list(req, edit=False)


def _variables_line(req: Request, template: Template) -> Html:
    names = template.variables
    if not names:
        return req.t("tpl_no_variables")
    shown = [
        req.t("tpl_optional", variable=f"{{{n}}}") if templates.VARIABLES[n].optional else escape(f"{{{n}}}")
        for n in names
    ]
    return Html(", ".join(shown))


async def _card(req: Request, ref: str, *, edit: bool, notice: Html | None = None) -> Screen:
    async with req.db.read() as session:
        template = await templates.get_template(session, req.user.id, ref, req.locale)
    text = req.t(
        "tpl_card", name=template.name, kind=req.t("tpl_kind_builtin") if template.builtin else "",
        body=templates.highlight(template.body), variables=_variables_line(req, template),
    )
    conversations = await ai_service(req).recent_conversations(req.user.id, limit=CARD_CONVERSATIONS)
    lines = [notice, ""] if notice else []
    lines += [text, "", req.t("tpl_card_send_to" if conversations else "tpl_card_no_conversations")]
    buttons = [
        [Button(_label(req, "tpl_btn_send_to", contact=c.label), action=f"tpl:use:{template.ref}:{c.id}")]
        for c in conversations
    ]
    if not template.builtin:
        buttons.append(
            [
                Button(req.t("tpl_btn_edit_text"), action=f"tpl:body:{template.id}"),
                Button(req.t("tpl_btn_rename"), action=f"tpl:ren:{template.id}"),
                Button(req.t("tpl_btn_delete"), action=f"tpl:del:{template.id}"),
            ]
        )
    buttons.append([Button(req.t("tpl_btn_list"), action="tpl:list")])
    return Screen(Html("\n".join(lines)), buttons=buttons, edit=edit)


def _template_ref(args: list[str], index: int) -> str | None:
    """A template ref from a button: `b.<name>` and `s.<service>.<name>` (built in) or `u.<id>` with an id in range;
    None otherwise."""
    ref = args[index] if 0 <= index < len(args) else ""
    kind, _, key = ref.partition(".")
    if (kind in ("b", "s") and key) or (kind == "u" and parse_id(key) is not None):
        return ref
    return None


async def _open(req: Request, args: list[str]) -> Screen:
    ref = _template_ref(args, 0)
    if ref is None:
        return toast(req.t("error_stale_button"))
    return await _card(req, ref, edit=req.is_button)


async def _show_list(req: Request, args: list[str]) -> Screen:
    return await _list(req, edit=req.is_button)


# --- filling in and sending -------------------------------------------------------------------------------------------


def _fill_key(token: str) -> str:
    return f"tplfill:{token}"


async def _use(req: Request, args: list[str]) -> Screen:
    """Second tap: the template goes to this conversation, straight away when it has nothing to fill in."""
    ref, conversation_id = _template_ref(args, 0), arg_id(args, 1)
    if ref is None or conversation_id is None:
        return toast(req.t("error_stale_button"))
    async with req.db.read() as session:
        template = await templates.get_template(session, req.user.id, ref, req.locale)
    conversation = await ai_service(req).conversation(req.user.id, conversation_id)
    fill = {
        "user_id": req.user.id, "token": secrets.token_urlsafe(8), "name": template.name, "body": template.body,
        "conversation": [conversation.id, conversation.phone_number_id, conversation.remote_e164,
                         conversation.contact_name],
        "values": {}, "skipped": [], "pending": None, "options": [],
    }
    if not template.variables:
        return await _send_fill(req, fill)
    return await _next_step(req, fill, edit=True)


def _conversation(fill: dict[str, Any]) -> ConversationRef:
    cid, number_id, remote, name = fill["conversation"]
    return ConversationRef(int(cid), int(number_id), str(remote), name)


async def _next_step(req: Request, fill: dict[str, Any], *, edit: bool, problem: Html | None = None) -> Screen:
    """Ask for the first variable still missing, or show the SMS as it will go out."""
    missing = templates.missing_variables(fill["body"], fill["values"], fill["skipped"])
    token = fill["token"]
    cancel = Button(req.t("btn_cancel"), action=f"tpl:x:{token}")
    if not missing:
        fill["pending"], fill["options"] = None, []
        await _put(req, _fill_key(token), fill)
        await _clear_prompt(req)
        text = templates.render(fill["body"], fill["values"], fill["skipped"])
        return Screen(
            req.t("tpl_preview", contact=_conversation(fill).label, text=text),
            buttons=[[Button(req.t("tpl_btn_send"), action=f"tpl:send:{token}"), cancel]], edit=edit,
        )
    name = missing[0]
    spec = templates.VARIABLES[name]
    options = templates.suggestions(name, req.locale)
    contact_name = _conversation(fill).contact_name
    if name == "name" and contact_name:
        options = [contact_name[: spec.max_chars]]
    fill["pending"], fill["options"] = name, options
    await _put(req, _fill_key(token), fill)
    await set_prompt(req, f"tpl:val:{token}")
    hint = templates.hint(req.locale, spec.kind, spec.max_chars)
    if spec.optional:
        hint = req.t("tpl_hint_optional", hint=hint)
    total = len(templates.variables_of(fill["body"]))
    step = total - len(missing) + 1
    text = req.t("tpl_fill_ask", name=fill["name"], step=step, total=total, variable=spec.placeholder, hint=hint)
    if problem is not None:
        text = Html(f"{problem}\n\n{text}")
    buttons = _pairs([Button(option, action=f"tpl:q:{token}:{i}") for i, option in enumerate(options)])
    last_row = [Button(req.t("tpl_btn_skip"), action=f"tpl:skip:{token}")] if spec.optional else []
    buttons.append([*last_row, cancel])
    return Screen(text, buttons=buttons, edit=edit, prompt=req.t("tpl_fill_placeholder", variable=spec.placeholder))


async def _load_fill(req: Request, args: list[str]) -> dict[str, Any] | None:
    return await _get(req, _fill_key(args[0])) if args else None


async def _typed_value(req: Request, args: list[str]) -> Screen:
    if not _typed(req):
        return toast(req.t("error_stale_button"))
    fill = await _load_fill(req, args)
    if fill is None or not fill.get("pending"):
        return Screen(req.t("tpl_fill_expired"))
    try:
        value = templates.check_value(fill["pending"], req.text, req.locale)
    except TemplateError as error:
        return await _next_step(req, fill, edit=False, problem=error.describe(req.locale))
    fill["values"][fill["pending"]] = value
    return await _next_step(req, fill, edit=False)


async def _quick_value(req: Request, args: list[str]) -> Screen:
    fill = await _load_fill(req, args)
    index = arg_int(args, 1)
    if fill is None or not fill.get("pending") or index is None or not 0 <= index < len(fill["options"]):
        return toast(req.t("tpl_fill_expired"), alert=True)
    fill["values"][fill["pending"]] = templates.check_value(fill["pending"], fill["options"][index], req.locale)
    return await _next_step(req, fill, edit=True)


async def _skip(req: Request, args: list[str]) -> Screen:
    fill = await _load_fill(req, args)
    if fill is None or not fill.get("pending"):
        return toast(req.t("tpl_fill_expired"), alert=True)
    if not templates.VARIABLES[fill["pending"]].optional:
        return toast(req.t("error_stale_button"))
    fill["skipped"].append(fill["pending"])
    return await _next_step(req, fill, edit=True)


async def _send(req: Request, args: list[str]) -> Screen:
    fill = await _load_fill(req, args)
    if fill is None:
        return toast(req.t("tpl_fill_expired"), alert=True)
    return await _send_fill(req, fill)


async def _send_fill(req: Request, fill: dict[str, Any]) -> Screen:
    text = templates.render(fill["body"], fill["values"], fill["skipped"])
    conversation = _conversation(fill)
    answer, sent = await send_sms_to(req, conversation, text, f"tpl:{fill['token']}")
    if sent:
        await _drop(req, _fill_key(fill["token"]))
        await _clear_prompt(req)
    return answer


async def _cancel_fill(req: Request, args: list[str]) -> Screen:
    if args:
        await _drop(req, _fill_key(args[0]))
    await _clear_prompt(req)
    return Screen(req.t("cancelled"), edit=req.is_button)


# --- creating, renaming, editing and deleting the user's own -------------------------------------------------------


async def _ask(req: Request, action_id: str, text: Html, placeholder_key: str, *, copy: str | None = None,
               **data: Any) -> Screen:
    await set_prompt(req, action_id, **data)
    buttons = [[Button(req.t("ai_btn_copy"), copy_text=copy)]] if copy and len(copy) <= COPY_TEXT_MAX else []
    return Screen(text, buttons=buttons, prompt=req.t(placeholder_key))


async def _retry(req: Request, error: TemplateError, action_id: str, placeholder_key: str, **data: Any) -> Screen:
    """A refused answer: say why, and keep the same question open so the user just sends it again."""
    await set_prompt(req, action_id, **data)
    return Screen(Html(f"{error.describe(req.locale)}\n{req.t('tpl_try_again')}"), prompt=req.t(placeholder_key))


async def _new(req: Request, args: list[str]) -> Screen:
    return await _ask(req, "tpl:newname", req.t("tpl_ask_name", max=templates.NAME_MAX_CHARS), "tpl_name_placeholder")


async def _new_name(req: Request, args: list[str]) -> Screen:
    if not _typed(req):
        return toast(req.t("error_stale_button"))
    try:
        name = templates.clean_name(req.text)
        async with req.db.read() as session:
            if await templates.name_taken(session, req.user.id, name):
                raise TemplateError("name_taken", name=name)
    except TemplateError as error:
        return await _retry(req, error, "tpl:newname", "tpl_name_placeholder")
    text = req.t("tpl_ask_body", name=name, max=templates.BODY_MAX_CHARS, variables=templates.known_variables())
    return await _ask(req, "tpl:newbody", text, "tpl_body_placeholder", name=name)


async def _new_body(req: Request, args: list[str]) -> Screen:
    if not _typed(req):
        return toast(req.t("error_stale_button"))
    name = str((req.prompt_data or {}).get("name", ""))
    try:
        async with req.db.transaction() as session:
            created = await templates.create_template(session, req.user.id, name, req.text)
    except TemplateError as error:
        if error.reason in ("name_taken", "empty_name", "name_too_long", "too_many_templates"):
            raise
        return await _retry(req, error, "tpl:newbody", "tpl_body_placeholder", name=name)
    return await _card(req, created.ref, edit=False, notice=req.t("tpl_created", name=created.name))


async def _rename(req: Request, args: list[str]) -> Screen:
    template_id = arg_id(args, 0)
    if template_id is None:
        return toast(req.t("error_stale_button"))
    async with req.db.read() as session:
        template = await templates.get_template(session, req.user.id, f"u.{template_id}", req.locale)
    text = req.t("tpl_ask_rename", name=template.name, max=templates.NAME_MAX_CHARS)
    return await _ask(req, f"tpl:rename:{template_id}", text, "tpl_name_placeholder", copy=template.name)


async def _renamed(req: Request, args: list[str]) -> Screen:
    template_id = arg_id(args, 0)
    if not _typed(req) or template_id is None:
        return toast(req.t("error_stale_button"))
    try:
        async with req.db.transaction() as session:
            updated = await templates.update_template(session, req.user.id, template_id, name=req.text)
    except TemplateError as error:
        if error.reason == "not_found":
            raise
        return await _retry(req, error, f"tpl:rename:{template_id}", "tpl_name_placeholder")
    return await _card(req, updated.ref, edit=False, notice=req.t("tpl_updated", name=updated.name))


async def _edit_body(req: Request, args: list[str]) -> Screen:
    template_id = arg_id(args, 0)
    if template_id is None:
        return toast(req.t("error_stale_button"))
    async with req.db.read() as session:
        template = await templates.get_template(session, req.user.id, f"u.{template_id}", req.locale)
    text = req.t("tpl_ask_new_body", name=template.name, body=template.body)
    return await _ask(req, f"tpl:setbody:{template_id}", text, "tpl_body_placeholder", copy=template.body)


async def _body_edited(req: Request, args: list[str]) -> Screen:
    template_id = arg_id(args, 0)
    if not _typed(req) or template_id is None:
        return toast(req.t("error_stale_button"))
    try:
        async with req.db.transaction() as session:
            updated = await templates.update_template(session, req.user.id, template_id, body=req.text)
    except TemplateError as error:
        if error.reason == "not_found":
            raise
        return await _retry(req, error, f"tpl:setbody:{template_id}", "tpl_body_placeholder")
    return await _card(req, updated.ref, edit=False, notice=req.t("tpl_updated", name=updated.name))


async def _delete(req: Request, args: list[str]) -> Screen:
    template_id = arg_id(args, 0)
    if template_id is None:
        return toast(req.t("error_stale_button"))
    async with req.db.read() as session:
        template = await templates.get_template(session, req.user.id, f"u.{template_id}", req.locale)
    return Screen(
        req.t("tpl_confirm_delete", name=template.name),
        buttons=[[
            Button(req.t("tpl_btn_confirm_delete"), action=f"tpl:delok:{template_id}"),
            Button(req.t("btn_cancel"), action=f"tpl:open:{template.ref}"),
        ]],
        edit=req.is_button,
    )


async def _delete_confirmed(req: Request, args: list[str]) -> Screen:
    template_id = arg_id(args, 0)
    if template_id is None:
        return toast(req.t("error_stale_button"))
    async with req.db.transaction() as session:
        gone = await templates.delete_template(session, req.user.id, template_id)
    return await _list(req, edit=req.is_button, notice=req.t("tpl_deleted", name=gone.name))


# --- drafted by AI --------------------------------------------------------------------------------------------------


def _ai_key(token: str) -> str:
    return f"tplai:{token}"


async def _ai_start(req: Request, args: list[str]) -> Screen:
    return await _ask(req, "tpl:aidesc", req.t("tpl_ai_ask"), "tpl_ai_placeholder")


async def _ai_described(req: Request, args: list[str]) -> Screen:
    if not _typed(req):
        return toast(req.t("error_stale_button"))
    if not req.text:
        return await _ai_start(req, args)
    draft = {"user_id": req.user.id, "token": secrets.token_urlsafe(8), "description": req.text}
    return await _ai_draft(req, draft, edit=False)


async def _ai_draft(req: Request, draft: dict[str, Any], *, edit: bool) -> Screen:
    try:
        answer = await ai_service(req).draft_template(req.user, draft["description"])
    except AiTextTooLong as error:
        await set_prompt(req, "tpl:aidesc")
        return Screen(req.t("tpl_ai_too_long", limit=error.limit), prompt=req.t("tpl_ai_placeholder"))
    draft.update(name=answer.value.name, body=answer.value.body, engine=answer.engine)
    await _put(req, _ai_key(draft["token"]), draft)
    lines = [req.t("tpl_ai_preview", name=answer.value.name, body=templates.highlight(answer.value.body))]
    token = draft["token"]
    first_row = []
    try:
        templates.clean_body(answer.value.body)
        first_row.append(Button(req.t("tpl_btn_save"), action=f"tpl:aisave:{token}"))
    except TemplateError as error:
        # Saving is only offered for a body that passes every check; the user can fix the model's text.
        lines += ["", req.t("tpl_ai_needs_fix", error=error.describe(req.locale))]
    first_row.append(Button(req.t("tpl_btn_edit_text"), action=f"tpl:aiedit:{token}"))
    lines.append("")
    lines += answer_footer(req, answer)
    buttons = [first_row, [Button(req.t("tpl_btn_try_again"), action=f"tpl:aiagain:{token}")]]
    buttons += privacy_buttons(req, answer)
    return Screen(Html("\n".join(lines)), buttons=buttons, edit=edit)


async def _load_ai(req: Request, args: list[str]) -> dict[str, Any] | None:
    return await _get(req, _ai_key(args[0])) if args else None


async def _ai_again(req: Request, args: list[str]) -> Screen:
    draft = await _load_ai(req, args)
    if draft is None:
        return toast(req.t("tpl_ai_expired"), alert=True)
    return await _ai_draft(req, draft, edit=True)


async def _ai_save(req: Request, args: list[str], body: str | None = None) -> Screen:
    draft = await _load_ai(req, args)
    if draft is None:
        return Screen(req.t("tpl_ai_expired")) if body is not None else toast(req.t("tpl_ai_expired"), alert=True)
    async with req.db.transaction() as session:
        name = await templates.free_name(session, req.user.id, str(draft["name"]))
        created = await templates.create_template(session, req.user.id, name, body or str(draft["body"]))
    await _drop(req, _ai_key(draft["token"]))
    return await _card(req, created.ref, edit=body is None, notice=req.t("tpl_created", name=created.name))


async def _ai_edit(req: Request, args: list[str]) -> Screen:
    draft = await _load_ai(req, args)
    if draft is None:
        return toast(req.t("tpl_ai_expired"), alert=True)
    text = req.t("tpl_ask_new_body", name=draft["name"], body=draft["body"])
    return await _ask(req, f"tpl:aibody:{draft['token']}", text, "tpl_body_placeholder", copy=str(draft["body"]))


async def _ai_body_typed(req: Request, args: list[str]) -> Screen:
    if not _typed(req) or not args:
        return toast(req.t("error_stale_button"))
    try:
        templates.clean_body(req.text)
    except TemplateError as error:
        return await _retry(req, error, f"tpl:aibody:{args[0]}", "tpl_body_placeholder")
    return await _ai_save(req, args, body=req.text)


# --- the one entry point for every `tpl:` button ----------------------------------------------------------------------


_VERBS: dict[str, Verb] = {
    "list": _show_list,
    "num": _for_number,
    "svc": _by_service,
    "open": _open,
    "use": _use,
    "val": _typed_value,
    "q": _quick_value,
    "skip": _skip,
    "send": _send,
    "x": _cancel_fill,
    "new": _new,
    "newname": _new_name,
    "newbody": _new_body,
    "ren": _rename,
    "rename": _renamed,
    "body": _edit_body,
    "setbody": _body_edited,
    "del": _delete,
    "delok": _delete_confirmed,
    "ai": _ai_start,
    "aidesc": _ai_described,
    "aiagain": _ai_again,
    "aisave": _ai_save,
    "aiedit": _ai_edit,
    "aibody": _ai_body_typed,
}


@action("tpl")
async def template_button(req: Request) -> Screen | list[Screen]:
    """Every `tpl:<verb>:…` button, and typed answers to the questions the template dialogs ask."""
    verb = _VERBS.get(req.args[0] if req.args else "")
    if verb is None:
        return toast(req.t("error_stale_button"))
    return await verb(req, req.args[1:])
