"""Admin flow /broadcast: compose (text, optional photo URL, optional link buttons), pick a segment, preview
exactly what users get, Confirm, then steer the running broadcast from its progress card (Pause, Resume, Cancel).

Steps are buttons or a pending prompt (`set_prompt`), so the dialog survives restarts: the draft lives in the
`broadcasts` table from the first step and every button carries its id. Every action id starts with `bc:`.
"""

from __future__ import annotations

from dataclasses import replace

from bot.handlers.args import arg_id
from bot.handlers.router import Request, action, command, set_prompt
from bot.handlers.screens import Button, Screen, toast
from core.broadcast import service as broadcasts
from core.broadcast.service import DraftError, Segment
from core.models import Broadcast
from core.platform import outbox
from core.platform.i18n import LANGUAGES, Html, t

RECENT = 5


def _paid(req: Request) -> bool:
    # TELEGRAM_ALLOW_PAID_BROADCAST: Telegram charges Stars for the messages above the free 30/s.
    return bool(getattr(req.services.settings, "telegram_allow_paid_broadcast", False))


def _cancel_row(req: Request, broadcast_id: int) -> list[Button]:
    return [Button(req.t("btn_cancel"), action=f"bc:drop:{broadcast_id}")]


async def _draft(req: Request, broadcast_id: int) -> Broadcast | None:
    async with req.db.read() as session:
        found = await session.get(Broadcast, broadcast_id)
    return found if found is not None and found.state == "draft" else None


def _draft_id(req: Request) -> int | None:
    return arg_id(req.args, 1)


@command("broadcast", admin=True)
async def broadcast_command(req: Request) -> Screen:
    """With text: start composing it. Without: the broadcasts running now, the last ones, and a text prompt."""
    if req.text:
        return await _compose(req, req.text)
    async with req.db.read() as session:
        running = await broadcasts.active(session)
        finished = await broadcasts.recent(session, RECENT)
    lines = [req.t("bc_overview_title")]
    buttons: list[list[Button]] = []
    for item in running:
        lines.append(broadcasts.progress_text(item, req.locale))
        buttons += [[Button(f"{b.label} #{item.id}", action=b.action) for b in row]
                    for row in broadcasts.progress_buttons(item, req.locale)]
    if finished:
        lines.append(req.t("bc_recent_title"))
        lines += [broadcasts.summary_line(item, req.locale) for item in finished]
    elif not running:
        lines.append(req.t("bc_recent_none"))
    lines.append(req.t("bc_ask_text"))
    await set_prompt(req, "bc:text")
    return Screen(Html("\n\n".join(lines)), buttons=buttons, prompt=req.t("bc_prompt_text"))


async def _compose(req: Request, text: str) -> Screen:
    try:
        _, kept = broadcasts.broadcast_html(text)
        async with req.db.transaction() as session:
            draft = await broadcasts.create_draft(
                session, created_by_user_id=req.user.id, text=text, paid=_paid(req)
            )
    except DraftError as error:
        await set_prompt(req, "bc:text")
        return Screen(req.t(error.key, **error.details), prompt=req.t("bc_prompt_text"))
    return await _ask_photo(req, draft.id, note=None if kept else req.t("bc_note_plain"))


async def _ask_photo(req: Request, broadcast_id: int, *, note: Html | None = None, edit: bool = False) -> Screen:
    await set_prompt(req, f"bc:photo:{broadcast_id}")
    text = req.t("bc_ask_photo", id=broadcast_id)
    if note:
        text = Html(f"{note}\n\n{text}")
    return Screen(
        text,
        buttons=[[Button(req.t("bc_btn_skip"), action=f"bc:nophoto:{broadcast_id}")], _cancel_row(req, broadcast_id)],
        edit=edit,
    )


async def _ask_buttons(req: Request, broadcast_id: int, *, note: Html | None = None, edit: bool = False) -> Screen:
    await set_prompt(req, f"bc:buttons:{broadcast_id}")
    text = req.t("bc_ask_buttons")
    if note:
        text = Html(f"{note}\n\n{text}")
    return Screen(
        text,
        buttons=[[Button(req.t("bc_btn_skip"), action=f"bc:nobtn:{broadcast_id}")], _cancel_row(req, broadcast_id)],
        edit=edit,
    )


def _segment_label(req: Request, segment: Segment) -> Html:
    if segment.kind == "everyone":
        return req.t("bc_seg_everyone")
    if segment.kind == "tier":
        return req.t("bc_seg_tier", tier=segment.value)
    if segment.kind == "platform":
        return req.t("bc_seg_platform", platform=segment.value.capitalize())
    if segment.kind == "language":
        name = t(segment.value, "language_name") if segment.value in LANGUAGES else segment.value
        return req.t("bc_seg_language", language=name)
    return req.t("bc_seg_active", days=segment.value)


async def _ask_segment(req: Request, broadcast_id: int, *, edit: bool = False) -> Screen:
    segments = broadcasts.standard_segments(LANGUAGES)
    async with req.db.read() as session:
        counts = await broadcasts.count_segments(session, segments)
    lines = [req.t("bc_ask_segment")]
    rows: list[list[Button]] = []
    for segment in segments:
        count = counts[segment]
        # Segments nobody belongs to (a platform not in use) would only be noise.
        if segment.kind != "everyone" and count.recipients + count.left_out == 0:
            continue
        label = _segment_label(req, segment)
        lines.append(req.t("bc_segment_line", segment=label, count=broadcasts.describe_count(count, req.locale)))
        rows.append([Button(req.t("bc_btn_segment", segment=label, count=f"{count.recipients:,}"),
                            action=f"bc:seg:{broadcast_id}:{segment.key}")])
    rows.append(_cancel_row(req, broadcast_id))
    return Screen(Html("\n".join(lines)), buttons=rows, edit=edit)


async def _preview(req: Request, broadcast_id: int, segment: Segment) -> Screen:
    """The step's message becomes the confirmation card; the exact message follows through the outbox.

    The preview takes the very path every recipient's copy takes (the platform's sender: photo, caption, link
    buttons), so what the admin sees is what users get. It is one new message: the admin's chat has the
    platform's per-chat limit too (about one a second), and the broadcast itself reaches them right after."""
    async with req.db.transaction() as session:
        draft = await broadcasts.update_draft(session, broadcast_id, segment=segment)
        if draft is None:
            return toast(req.t("bc_not_draft"), alert=True)
        count = (await broadcasts.count_segments(session, [segment]))[segment]
        chat_id = req.message.chat_id if req.message is not None else req.contact.chat_id
        if chat_id:
            # Never paid: Telegram would charge Stars for the admin's own preview.
            message = replace(broadcasts.message_for(draft), paid_broadcast=False)
            await outbox.enqueue(session, platform=req.contact.platform, chat_id=chat_id, kind="broadcast_preview",
                                 message=message, user_id=req.user.id, priority=5)
    details = [req.t("bc_preview_below"),
               req.t("bc_preview_segment", segment=_segment_label(req, segment),
                     count=broadcasts.describe_count(count, req.locale))]
    if draft.paid:
        details.append(req.t("bc_preview_paid"))
    details.append(req.t("bc_preview_confirm"))
    return Screen(
        Html("\n".join(details)),
        buttons=[[Button(req.t("btn_confirm"), action=f"bc:go:{broadcast_id}"),
                  Button(req.t("btn_cancel"), action=f"bc:drop:{broadcast_id}")],
                 [Button(req.t("bc_btn_change_segment"), action=f"bc:segs:{broadcast_id}")]],
        edit=req.is_button,
    )


async def _progress_card(req: Request, broadcast_id: int, toast_key: str | None = None) -> Screen:
    async with req.db.read() as session:
        item = await broadcasts.get(session, broadcast_id)
    if item is None:
        return toast(req.t("error_stale_button"))
    buttons = [[Button(b.label, action=b.action) for b in row] for row in broadcasts.progress_buttons(item, req.locale)]
    screen = Screen(broadcasts.progress_text(item, req.locale), buttons=buttons, edit=True)
    if toast_key is not None:
        screen.toast = str(req.t(toast_key))
    return screen


@action("bc", admin=True)
async def broadcast_step(req: Request) -> Screen:
    """Every step of the dialog and every button of the progress card."""
    step = req.args[0] if req.args else ""
    if step == "text":
        return await _compose(req, req.text) if req.text else await broadcast_command(req)
    if step == "new":
        await set_prompt(req, "bc:text")
        return Screen(req.t("bc_ask_text"), prompt=req.t("bc_prompt_text"))
    broadcast_id = _draft_id(req)
    if broadcast_id is None:
        return toast(req.t("error_stale_button"))
    if step in ("pause", "resume", "stop"):
        return await _control(req, step, broadcast_id)
    if await _draft(req, broadcast_id) is None:
        # Also a composing step's old Cancel: it must never stop the broadcast it became (the card's ⏹ does).
        return toast(req.t("bc_not_draft"), alert=True) if req.is_button else Screen(req.t("bc_not_draft"))
    if step == "drop":
        await broadcasts.cancel(req.db, broadcast_id, actor_user_id=req.user.id)
        await _forget_prompt(req)
        screen = Screen(req.t("bc_dropped"), edit=req.is_button)
        screen.toast = str(req.t("bc_dropped"))
        return screen
    if step == "photo":
        try:
            url = broadcasts.parse_photo_url(req.text)
            async with req.db.transaction() as session:
                await broadcasts.update_draft(session, broadcast_id, photo=url)
        except DraftError as error:
            return await _ask_photo(req, broadcast_id, note=req.t(error.key, **error.details))
        return await _ask_buttons(req, broadcast_id)
    if step == "nophoto":
        return await _ask_buttons(req, broadcast_id, edit=True)
    if step == "buttons":
        try:
            links = broadcasts.parse_link_buttons(req.text)
        except DraftError as error:
            return await _ask_buttons(req, broadcast_id, note=req.t(error.key, **error.details))
        async with req.db.transaction() as session:
            await broadcasts.update_draft(session, broadcast_id, buttons=links)
        return await _ask_segment(req, broadcast_id)
    if step == "nobtn":
        await _forget_prompt(req)
        return await _ask_segment(req, broadcast_id, edit=True)
    if step == "segs":
        return await _ask_segment(req, broadcast_id, edit=True)
    if step == "seg":
        try:
            segment = Segment.parse(":".join(req.args[2:]))
        except ValueError:
            return toast(req.t("error_stale_button"))
        return await _preview(req, broadcast_id, segment)
    if step == "go":
        return await _go(req, broadcast_id)
    return toast(req.t("error_stale_button"))


async def _forget_prompt(req: Request) -> None:
    # A step's pending question must not swallow the admin's next unrelated text once they moved on.
    from bot.handlers.router import pop_prompt

    await pop_prompt(req.services, req.contact)


async def _go(req: Request, broadcast_id: int) -> Screen:
    """Confirm: recipients are materialised, the card becomes the progress card and the runner starts."""
    ref = req.message
    progress = (ref.platform, ref.chat_id, ref.message_id) if ref is not None else None
    started = await broadcasts.start(req.db, broadcast_id, actor_user_id=req.user.id, progress=progress)
    if started is None or started.state == "cancelled":
        return toast(req.t("bc_not_draft"), alert=True)
    return await _progress_card(req, broadcast_id, "bc_started_toast")


async def _control(req: Request, step: str, broadcast_id: int) -> Screen:
    change = {"pause": broadcasts.pause, "resume": broadcasts.resume, "stop": broadcasts.cancel}[step]
    changed = await change(req.db, broadcast_id, actor_user_id=req.user.id)
    if changed is None:
        return await _progress_card(req, broadcast_id, "bc_state_unchanged")
    key = {"pause": "bc_paused_toast", "resume": "bc_resumed_toast", "stop": "bc_cancelled_toast"}[step]
    return await _progress_card(req, broadcast_id, key)
