"""Drafts: what the admin composed (text, photo, link buttons, segment), and the message each recipient receives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.broadcast.markup import DraftError, broadcast_html
from core.broadcast.segments import Segment
from core.models import Broadcast
from core.platform.clock import utcnow
from core.platform.outbox import OutButton, OutgoingMessage

MAX_CAPTION = 1024  # with a photo the text is its caption: one message, so a retry can never repeat half of it


def message_for(broadcast: Broadcast) -> OutgoingMessage:
    """Exactly what each recipient receives; the preview shows this same message."""
    rows = tuple(
        (OutButton(label=str(button["label"]), url=str(button["url"])),) for button in broadcast.buttons or []
    )
    return OutgoingMessage(
        text=broadcast.text, buttons=rows, photo_url=broadcast.photo, paid_broadcast=bool(broadcast.paid),
    )


async def create_draft(
    session: AsyncSession,
    *,
    created_by_user_id: int,
    text: str,
    photo: str | None = None,
    buttons: Sequence[dict[str, str]] = (),
    segment: Segment | None = None,
    paid: bool = False,
) -> Broadcast:
    """A broadcast in `draft`: nothing is sent until `start`."""
    body, _ = broadcast_html(text)
    broadcast = Broadcast(
        created_by_user_id=created_by_user_id, text=body, photo=photo, buttons=[dict(b) for b in buttons],
        segment=(segment or Segment()).to_json(), paid=paid, state="draft", created_at=utcnow(),
    )
    session.add(broadcast)
    await session.flush()
    return broadcast


async def update_draft(session: AsyncSession, broadcast_id: int, **changes: Any) -> Broadcast | None:
    """Change `photo`, `buttons`, `segment` (a Segment) or `paid` of a draft; None when it is no draft any more.

    DraftError when a photo is added to a text too long to be its caption."""
    broadcast = await session.get(Broadcast, broadcast_id, with_for_update=True)
    if broadcast is None or broadcast.state != "draft":
        return None
    for name, value in changes.items():
        if name == "segment":
            broadcast.segment = value.to_json()
        elif name == "buttons":
            broadcast.buttons = [dict(b) for b in value]
        elif name == "photo":
            if value is not None and len(broadcast.text) > MAX_CAPTION:
                raise DraftError("bc_error_caption_too_long", limit=MAX_CAPTION)
            broadcast.photo = value
        elif name == "paid":
            broadcast.paid = bool(value)
        else:
            raise TypeError(f"cannot change {name} of a draft")
    await session.flush()
    return broadcast
