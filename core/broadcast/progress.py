"""The progress card: its text and buttons, the one-line summaries, and keeping the admin's card up to date."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import math
import re
import time
from typing import TYPE_CHECKING

from core.models import Broadcast
from core.platform.i18n import Html, t
from core.platform.outbox import ChatSender, DeliveryError, OutButton, OutgoingMessage

if TYPE_CHECKING:
    from core.broadcast.job import Job

log = logging.getLogger(__name__)

# Front ends whose sender honours `OutgoingMessage.edit_message_id`; elsewhere progress is sent once, at the end.
EDITABLE_PLATFORMS = frozenset({"telegram", "discord"})


def progress_ref(broadcast: Broadcast) -> tuple[str, str, str] | None:
    """(platform, chat id, message id) of the progress card; `progress_chat_id` keeps `platform:chat`."""
    if not broadcast.progress_chat_id or not broadcast.progress_message_id:
        return None
    platform, _, chat_id = broadcast.progress_chat_id.partition(":")
    return platform, chat_id, broadcast.progress_message_id


def left(broadcast: Broadcast) -> int:
    """Recipients not reached (still to go, or skipped by a cancel)."""
    return max(0, broadcast.total - broadcast.sent - broadcast.failed - broadcast.blocked)


def _duration(locale: str, seconds: float) -> Html:
    seconds = max(0, int(math.ceil(seconds)))
    if seconds >= 3600:
        return t(locale, "bc_duration_hours", hours=seconds // 3600, minutes=(seconds % 3600) // 60)
    if seconds >= 60:
        return t(locale, "bc_duration_minutes", minutes=seconds // 60, seconds=seconds % 60)
    return t(locale, "bc_duration_seconds", seconds=seconds)


def progress_text(broadcast: Broadcast, locale: str, *, rate: float | None = None) -> Html:
    """The progress card: state, sent, failed, blocked, left, current rate and time to go."""
    remaining = left(broadcast)
    lines = [
        t(locale, "bc_progress_title", id=broadcast.id, state=t(locale, f"bc_state_{broadcast.state}")),
        t(locale, "bc_progress_counts", sent=f"{broadcast.sent:,}", total=f"{broadcast.total:,}",
          failed=f"{broadcast.failed:,}", blocked=f"{broadcast.blocked:,}", left=f"{remaining:,}"),
    ]
    if broadcast.state == "running" and rate is not None:
        eta = _duration(locale, remaining / rate) if rate > 0.05 else t(locale, "bc_eta_unknown")
        lines.append(t(locale, "bc_progress_rate", rate=f"{rate:.1f}", eta=eta))
    if broadcast.paid:
        lines.append(t(locale, "bc_progress_paid"))
    return Html("\n".join(lines))


def progress_buttons(broadcast: Broadcast, locale: str) -> tuple[tuple[OutButton, ...], ...]:
    """Pause or Resume, and Cancel, while the broadcast can still change."""
    cancel_button = OutButton(t(locale, "bc_btn_cancel_run"), action=f"bc:stop:{broadcast.id}")
    if broadcast.state == "running":
        return ((OutButton(t(locale, "bc_btn_pause"), action=f"bc:pause:{broadcast.id}"), cancel_button),)
    if broadcast.state == "paused":
        return ((OutButton(t(locale, "bc_btn_resume"), action=f"bc:resume:{broadcast.id}"), cancel_button),)
    return ()


def summary_line(broadcast: Broadcast, locale: str) -> Html:
    """One line per finished broadcast for `/broadcast`'s list."""
    when = (broadcast.finished_at or broadcast.created_at).strftime("%Y-%m-%d %H:%M")
    preview = re.sub(r"<[^>]+>", "", broadcast.text)
    preview = html.unescape(preview).replace("\n", " ")
    preview = preview[:40] + ("…" if len(preview) > 40 else "")
    return t(
        locale, "bc_recent_line", id=broadcast.id, when=when, state=t(locale, f"bc_state_{broadcast.state}"),
        sent=f"{broadcast.sent:,}", total=f"{broadcast.total:,}", failed=f"{broadcast.failed:,}",
        blocked=f"{broadcast.blocked:,}", left=f"{left(broadcast):,}", preview=preview,
    )


class ProgressCard:
    """Edits a running broadcast's progress card in the admin's chat, through the front ends' senders."""

    def __init__(self, senders: dict[str, ChatSender], interval: float) -> None:
        self.senders = senders
        self.interval = interval

    async def update(self, job: Job, *, force: bool = False, final: bool = False) -> None:
        """Edit the admin's progress card; at most one edit per `interval`, never two at once."""
        if job.progress is None or job.edit_broken:
            return
        platform, chat_id, message_id = job.progress
        sender = self.senders.get(platform)
        if sender is None or (platform not in EDITABLE_PLATFORMS and not final):
            return
        if job.edit_task is not None and not job.edit_task.done():
            if not final:
                return
            with contextlib.suppress(Exception):
                await job.edit_task
        if not force and time.monotonic() - job.last_edit < self.interval:
            return
        job.last_edit = time.monotonic()
        figures = job.figures
        message = OutgoingMessage(
            text=progress_text(figures, job.locale, rate=job.rate()),
            buttons=progress_buttons(figures, job.locale),
            edit_message_id=message_id if platform in EDITABLE_PLATFORMS else None,
        )

        async def edit() -> None:
            # Not charged to the budget: an edit is no new message, and one per 3 s is far below any limit.
            try:
                sent_id = await sender.send(chat_id, message)
                if message.edit_message_id and sent_id and str(sent_id) != message.edit_message_id:
                    # The card could not be edited any more (Discord, after its interaction expired) and came as
                    # a new message: keep editing that one rather than sending a new card every few seconds.
                    job.progress = (platform, chat_id, str(sent_id))
            except DeliveryError as error:
                if error.permanent and "not modified" not in error.reason.lower():
                    job.edit_broken = True
                log.warning("broadcast %s: progress card not updated: %s", job.broadcast_id, error.reason)
            except Exception:
                log.warning("broadcast %s: progress card not updated", job.broadcast_id, exc_info=True)

        job.edit_task = asyncio.create_task(edit(), name=f"broadcast-{job.broadcast_id}-progress")
        if final:
            await job.edit_task
