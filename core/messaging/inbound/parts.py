"""Long texts that arrive in parts (Vonage): each part kept until the last one comes, in any order; a text whose
parts stay incomplete is relayed as it is rather than never."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from core.messaging.inbound.store import Notes, store_inbound
from core.messaging.storage import short_key
from core.models import KeyValue, WebhookEvent
from core.platform.clock import utcnow
from core.platform.db import dialect_insert
from core.platform.settings import Settings
from core.providers.sms import InboundSms

log = logging.getLogger(__name__)

PARTS_TTL = timedelta(days=1)
PARTS_WAIT = timedelta(minutes=10)  # Vonage sends the parts of one text within seconds; later means one was lost


async def collect_part(session: AsyncSession, sms: InboundSms) -> InboundSms | None:
    """Keep one part; the whole text once the last part arrives (in any order), else None."""
    assert sms.part is not None
    ref, total, index = sms.part
    seen = await session.scalar(
        dialect_insert(session.bind.dialect.name)(WebhookEvent)
        .values(provider=sms.provider, event_key=f"part:{sms.provider_message_id}"[:160], received_at=utcnow())
        .on_conflict_do_nothing(index_elements=["provider", "event_key"])
        .returning(WebhookEvent.id)
    )
    if seen is None:
        return None
    key = short_key("smsparts", sms.provider, sms.from_e164, sms.to_e164, ref)
    first = {"parts": {}, "total": total, "provider": sms.provider, "from": sms.from_e164, "to": sms.to_e164,
             "first_at": utcnow().isoformat()}
    await session.execute(
        dialect_insert(session.bind.dialect.name)(KeyValue).values(key=key, value=first, expires_at=utcnow() + PARTS_TTL)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    row = await session.scalar(
        select(KeyValue).where(KeyValue.key == key).with_for_update().execution_options(populate_existing=True)
    )
    assert row is not None
    parts: dict[str, dict[str, Any]] = dict(row.value.get("parts") or {})
    parts[str(index)] = {"id": sms.provider_message_id, "text": sms.body, "media": list(sms.media_urls)}
    if not all(str(i) in parts for i in range(1, total + 1)):
        row.value = {**row.value, "total": total, "parts": parts}
        flag_modified(row, "value")
        return None
    await session.delete(row)
    ordered = [parts[str(i)] for i in range(1, total + 1)]
    return replace(
        sms, provider_message_id=ordered[0]["id"], body="".join(p["text"] for p in ordered),
        media_urls=tuple(url for p in ordered for url in p["media"]), part=None,
    )


async def relay_stale_parts(session: AsyncSession, settings: Settings, notes: Notes, now: datetime) -> int:
    """Relay each text whose parts are still incomplete after PARTS_WAIT, "[…]" marking what is missing.
    Returns how many were relayed."""
    relayed = 0
    rows = (await session.scalars(select(KeyValue).where(KeyValue.key.like("smsparts:%")).with_for_update())).all()
    for row in rows:
        value = row.value
        first_at = datetime.fromisoformat(value["first_at"]) if value.get("first_at") else now
        if first_at > now - PARTS_WAIT or not value.get("parts"):
            continue
        parts = value["parts"]
        present = sorted(parts, key=int)
        body = "".join(parts[str(i)]["text"] if str(i) in parts else "[…]"
                       for i in range(1, int(value.get("total") or len(parts)) + 1))
        await session.delete(row)
        log.warning("relaying %s SMS %s with missing parts", value.get("provider"), parts[present[0]]["id"])
        await store_inbound(session, settings, notes, InboundSms(
            provider=value["provider"], provider_message_id=parts[present[0]]["id"], from_e164=value["from"],
            to_e164=value["to"], body=body, media_urls=tuple(u for i in present for u in parts[i]["media"]),
        ), first_at)
        relayed += 1
    return relayed
