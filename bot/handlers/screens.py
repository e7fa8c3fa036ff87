"""What a handler answers with: platform-neutral Screens of HTML text, button rows, files and prompts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from core.platform.outbox import OutButton, OutgoingMessage

MAX_ACTION_BYTES = 64  # Telegram's callback_data limit; Discord's custom_id allows 100


@dataclass(frozen=True)
class SentRef:
    """Where an answer landed, so a flow can edit it later (a live verification status)."""

    platform: str
    chat_id: str
    message_id: str


@dataclass(frozen=True)
class Button:
    """A button: an action id handled by the router, a link, or text copied on tap."""

    label: str
    action: str | None = None
    url: str | None = None
    copy_text: str | None = None
    web_app: bool = False  # open `url` as a Telegram Mini App (https only); other platforms show the link

    def __post_init__(self) -> None:
        if self.action is not None and len(self.action.encode()) > MAX_ACTION_BYTES:
            raise ValueError(f"action id over {MAX_ACTION_BYTES} bytes: {self.action!r}")


@dataclass(frozen=True)
class Invoice:
    """A payment request (Telegram Stars: currency XTR, amount in Stars)."""

    title: str
    description: str
    payload: str
    currency: str
    amount: int
    label: str


@dataclass
class Screen:
    """One message to show: `text` is HTML whose user-supplied parts are already escaped."""

    text: str
    buttons: list[list[Button]] = field(default_factory=list)
    edit: bool = False  # replace the message whose button was pressed instead of sending a new one
    toast: str | None = None  # the short answer to a button press (shown as a notification)
    alert: bool = False
    photo: bytes | None = None
    photo_name: str = "image.png"
    document: bytes | None = None
    document_name: str = "file.txt"
    invoice: Invoice | None = None
    prompt: str | None = None  # placeholder of a reply box: the user's next text goes to a pending action
    reply_context: dict[str, Any] | None = None  # replying to this message in the chat is routed by this
    on_sent: Callable[[SentRef], Awaitable[None]] | None = None

    def as_outgoing(self) -> OutgoingMessage:
        """The same screen as an outbox message (relayed SMS, codes and alerts go through the outbox)."""
        rows = tuple(
            tuple(OutButton(label=b.label, action=b.action, url=b.url, copy_text=b.copy_text) for b in row)
            for row in self.buttons
        )
        return OutgoingMessage(text=self.text, buttons=rows, reply_context=self.reply_context)


def toast(text: str, *, alert: bool = False) -> Screen:
    """Only a short answer to a button press; no message is sent or changed."""
    return Screen(text="", toast=text, alert=alert)


def screen_from_outgoing(message: OutgoingMessage) -> Screen:
    return Screen(
        text=message.text,
        buttons=[
            [Button(label=b.label, action=b.action, url=b.url, copy_text=b.copy_text) for b in row]
            for row in message.buttons
        ],
        reply_context=message.reply_context,
    )
