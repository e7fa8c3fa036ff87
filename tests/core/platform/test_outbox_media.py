"""Media fetched at send time: references become attachments or named notes, and payloads keep references only."""

from __future__ import annotations

import pytest

from core.platform.outbox import Attachment, DeliveryError, Fetched, MediaRef, OutgoingMessage
from core.platform.outbox.media import MEDIA_FETCHERS, register_media_fetcher, resolve_media


async def test_references_round_trip_and_resolve_into_attachments_or_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.platform.outbox.media.MEDIA_FETCHERS", dict(MEDIA_FETCHERS))
    message = OutgoingMessage(
        text="hello", locale="es",
        media=(MediaRef("bench", "https://x/1"), MediaRef("bench", "https://x/2"), MediaRef("nobody", "https://y")),
    )
    payload = message.to_payload()
    assert payload["media"][0] == {"source": "bench", "url": "https://x/1"} and "data" not in str(payload)
    assert OutgoingMessage.from_payload(payload) == message

    async def fetch(ref: MediaRef, locale: str) -> Fetched:
        if ref.url.endswith("2"):
            return Fetched(note=f"too large ({locale})")
        return Fetched(attachment=Attachment("photo", b"jpeg", "a.jpg", "image/jpeg"))

    register_media_fetcher("bench", fetch)
    resolved = await resolve_media(OutgoingMessage.from_payload(payload))
    assert resolved.media == () and [a.filename for a in resolved.attachments] == ["a.jpg"]
    # The note of the fetcher, and one for a source nobody registered (in the message's language).
    assert resolved.text.splitlines() == ["hello", "too large (es)", "📎 no se pudo obtener un archivo del proveedor, no se muestra"]

    async def down(ref: MediaRef, locale: str) -> Fetched:
        raise DeliveryError("provider down")

    register_media_fetcher("bench", down)
    with pytest.raises(DeliveryError):  # the outbox then retries the whole delivery
        await resolve_media(message)
