"""What the outbox sends: wire-neutral messages and buttons, the platforms' refusal, and the sender protocol."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

PAYLOAD_VERSION = 1

@dataclass(frozen=True)
class OutButton:
    """One inline button: a callback `action`, a link `url`, or a `copy_text` the chat copies on tap."""

    label: str
    action: str | None = None
    url: str | None = None
    copy_text: str | None = None

    def __post_init__(self) -> None:
        targets = [value for value in (self.action, self.url, self.copy_text) if value is not None]
        if len(targets) != 1:
            raise ValueError(f"button {self.label!r} needs exactly one of action, url or copy_text")

    def to_payload(self) -> dict[str, str]:
        # Exactly one target is set (__post_init__); every relayed SMS writes a few of these.
        if self.action is not None:
            return {"label": self.label, "action": self.action}
        if self.url is not None:
            return {"label": self.label, "url": self.url}
        return {"label": self.label, "copy_text": self.copy_text or ""}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> OutButton:
        return cls(
            label=str(data["label"]), action=data.get("action"), url=data.get("url"), copy_text=data.get("copy_text")
        )


@dataclass(frozen=True)
class Attachment:
    """A file that goes with a message (a voicemail, an MMS picture). Its bytes travel in the payload (base64), so
    a delivery stays self-contained: written in the transaction that caused it, sent however late."""

    kind: str  # "audio", "photo" or "document": how the adapter presents it
    data: bytes
    filename: str
    content_type: str = "application/octet-stream"
    title: str | None = None

    def to_payload(self) -> dict[str, str]:
        data = {"kind": self.kind, "data": base64.b64encode(self.data).decode("ascii"), "filename": self.filename,
                "content_type": self.content_type}
        if self.title is not None:
            data["title"] = self.title
        return data

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Attachment:
        return cls(
            kind=str(data["kind"]), data=base64.b64decode(data["data"]), filename=str(data["filename"]),
            content_type=str(data.get("content_type") or "application/octet-stream"), title=data.get("title"),
        )


@dataclass(frozen=True)
class MediaRef:
    """A file stored as where to fetch it (an MMS picture at the SMS provider): `source` names the fetcher
    registered in outbox.media, `url` is what it fetches. The bytes are fetched at send time and handed to the
    sender as an Attachment, so the table stays small and a failed fetch is retried like a failed send."""

    source: str
    url: str

    def to_payload(self) -> dict[str, str]:
        return {"source": self.source, "url": self.url}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> MediaRef:
        return cls(source=str(data["source"]), url=str(data["url"]))


@dataclass(frozen=True)
class OutgoingMessage:
    """A platform-neutral chat message; `text` is the HTML subset every adapter renders, already escaped."""

    text: str
    buttons: tuple[tuple[OutButton, ...], ...] = ()
    photo_url: str | None = None
    # Where a reply in the chat should be routed, e.g. {"kind": "sms", "conversation_id": 5}.
    reply_context: dict[str, Any] | None = None
    disable_preview: bool = True
    paid_broadcast: bool = False
    # Replace this earlier message of ours (a status card) instead of sending a new one, where the platform can.
    edit_message_id: str | None = None
    # Files sent with the text, which becomes their caption where the platform allows.
    attachments: tuple[Attachment, ...] = ()
    # Files fetched at send time and sent as attachments; `locale` is for what the fetch may add to the text
    # (a picture over MEDIA_MAX_BYTES is named instead of shown).
    media: tuple[MediaRef, ...] = ()
    locale: str = "en"

    def to_payload(self) -> dict[str, Any]:
        """A JSON-safe dict for `OutboxDelivery.payload`."""
        data: dict[str, Any] = {"v": PAYLOAD_VERSION, "text": self.text}
        if self.buttons:
            data["buttons"] = [[button.to_payload() for button in row] for row in self.buttons]
        if self.photo_url is not None:
            data["photo_url"] = self.photo_url
        if self.reply_context is not None:
            data["reply_context"] = dict(self.reply_context)
        if not self.disable_preview:
            data["disable_preview"] = False
        if self.paid_broadcast:
            data["paid_broadcast"] = True
        if self.edit_message_id is not None:
            data["edit_message_id"] = self.edit_message_id
        if self.attachments:
            data["attachments"] = [attachment.to_payload() for attachment in self.attachments]
        if self.media:
            data["media"] = [item.to_payload() for item in self.media]
            data["locale"] = self.locale
        return data

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> OutgoingMessage:
        buttons = tuple(
            tuple(OutButton.from_payload(button) for button in row) for row in data.get("buttons") or ()
        )
        reply_context = data.get("reply_context")
        return cls(
            text=str(data["text"]),
            buttons=buttons,
            photo_url=data.get("photo_url"),
            reply_context=dict(reply_context) if reply_context is not None else None,
            disable_preview=bool(data.get("disable_preview", True)),
            paid_broadcast=bool(data.get("paid_broadcast", False)),
            edit_message_id=data.get("edit_message_id"),
            attachments=tuple(Attachment.from_payload(item) for item in data.get("attachments") or ()),
            media=tuple(MediaRef.from_payload(item) for item in data.get("media") or ()),
            locale=str(data.get("locale") or "en"),
        )


class DeliveryError(Exception):
    """A chat platform refused a message; the flags tell the dispatcher whether and when to try again."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
        blocked: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        # Seconds the platform asked us to wait (Telegram's 429); honoured exactly instead of the backoff.
        self.retry_after = retry_after
        self.permanent = permanent or blocked
        # The user blocked the bot or left the chat: nothing will get through until they write again.
        self.blocked = blocked


@runtime_checkable
class ChatSender(Protocol):
    """What core needs from a chat front end; each adapter registers one per platform."""

    platform: str

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        """Send one message and return the platform's message id; raise DeliveryError when refused."""
        ...
