"""Relaying an SMS: store it once, capture the hold on the first one, and send every new one to the user's chat.

A webhook and the poller may carry the same SMS; whichever comes second finds it stored and changes nothing.
"""

from __future__ import annotations

import functools
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import User, Verification, VerificationSms
from core.money import ledger
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.crypto import PLAIN_TEXT
from core.platform.db import Database, dialect_insert
from core.providers.verification import ProviderSms
from core.verification.cards import code_message
from core.verification.codes import extract_code
from core.verification.gateway import ProviderGateway
from core.verification.records import (
    VerificationRecords,
    enqueue_status,
    record_event,
    transition,
)

CODE_PRIORITY = 10


_LOCK_VERIFICATION = (
    select(Verification, User.locale)
    .join(User, User.id == Verification.user_id)
    .where(Verification.provider == bindparam("b_provider"), Verification.provider_verification_id == bindparam("b_id"))
    .with_for_update(of=Verification)
    .execution_options(populate_existing=True)
)
_SMS_COLUMNS = ("verification_id", "provider_sms_id", "text", "text_hash", "code", "received_at")


@functools.cache
def _sms_insert(dialect: str) -> Any:
    """An SMS stored unless seen already, in one round trip, built once: the same id is the conflict, the same
    text the NOT EXISTS (the verification's row lock keeps a webhook and a poll from both passing it)."""
    table = VerificationSms.__table__
    row = select(*(bindparam(f"b_{name}", type_=table.c[name].type) for name in _SMS_COLUMNS)).where(~exists().where(
        table.c.verification_id == bindparam("b_verification_id"),
        table.c.text_hash.in_(bindparam("b_hashes", expanding=True)),
    ))
    return (
        dialect_insert(dialect)(table)
        .from_select(list(_SMS_COLUMNS), row)
        .on_conflict_do_nothing(index_elements=["verification_id", "provider_sms_id"])
        .returning(table.c.id)
    )


class EventOutcome(StrEnum):
    HANDLED = "handled"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    UNKNOWN = "unknown"  # not one of our verifications (yet); polling picks its SMS up if it is


class SmsRelay:
    """Takes in the SMS of our verifications, from webhooks and from polling alike."""

    def __init__(self, db: Database, gateway: ProviderGateway, records: VerificationRecords) -> None:
        self.db = db
        self.gateway = gateway
        self.records = records

    async def ingest(
        self, provider_verification_id: str, sms: ProviderSms, *, event_key: str | None,
        source_received_at: datetime | None,
    ) -> EventOutcome:
        """Store one SMS and act on it in one transaction: the first captures the hold; every new one is relayed."""
        async with self.db.transaction() as session:
            # The row lock makes a webhook and a poll carrying the same SMS take turns, so the second sees the first.
            found = (
                await session.execute(_LOCK_VERIFICATION, {"b_provider": self.gateway.name, "b_id": provider_verification_id})
            ).first()
            if found is None:
                return EventOutcome.UNKNOWN
            verification, locale = found[0], found[1] or "en"
            if event_key is not None and not await record_event(session, self.gateway.name, event_key):
                return EventOutcome.DUPLICATE
            # A webhook names an SMS by its event id, the SMS list by the SMS's own id: the same text on the same
            # verification is the same SMS seen twice. The text is encrypted (a fresh token each time), so it is
            # found by its keyed fingerprint, under any configured key: rows written before a rotation match too.
            keyring = self.db.keyring or PLAIN_TEXT
            dedupe_text = VerificationSms.dedupe_text(verification.id, sms.text)
            if verification.state in ("requested", "failed"):
                seen = await session.scalar(select(exists().where(
                    VerificationSms.verification_id == verification.id,
                    (VerificationSms.provider_sms_id == sms.id[:128])
                    | VerificationSms.text_hash.in_(keyring.fingerprints(dedupe_text)),
                )))
                return EventOutcome.DUPLICATE if seen else EventOutcome.IGNORED
            code = extract_code(sms.text, verification.service, sms.parsed_code)
            now = utcnow()
            sms_id = await session.scalar(_sms_insert(session.bind.dialect.name), {
                "b_verification_id": verification.id, "b_provider_sms_id": sms.id[:128], "b_text": sms.text,
                "b_text_hash": keyring.fingerprint(dedupe_text), "b_code": code,
                "b_received_at": sms.received_at or now, "b_hashes": keyring.fingerprints(dedupe_text),
            })
            if sms_id is None:
                return EventOutcome.DUPLICATE
            # code_delivered_at is left for the outbox to stamp when the code message is sent (latency stats).
            first = await transition(
                session, verification.id, ("active",), state="code_received", code=code,
                sms_text=sms.text, code_received_at=now,
            )
            if first is not None:
                if first.hold_id is not None:
                    await ledger.capture(session, first.hold_id)
                verification = first
            elif code is not None and verification.code is None and verification.state in ("code_received", "completed"):
                updated = await transition(
                    session, verification.id, ("code_received", "completed"), code=code
                )
                verification = updated or verification
            await outbox.enqueue_for_user(
                session, verification.user_id, kind="code",
                message=code_message(verification, sms.text, code, locale, first=first is not None),
                dedupe_key=f"vf:{verification.id}:sms:{sms_id}", priority=CODE_PRIORITY,
                source_received_at=source_received_at or sms.received_at, express=True,
            )
            if first is not None:
                await enqueue_status(session, verification, locale)
        self.records.wake()
        return EventOutcome.HANDLED


async def _stamp_code_delivered(session: AsyncSession, delivered: list[tuple[Any, datetime]]) -> None:
    """The first time a code message reaches a chat, for the code-to-chat latency in /stats."""
    for delivery, at in delivered:
        key = delivery.dedupe_key or ""
        if not key.startswith("vf:"):
            continue
        try:
            verification_id = int(key.split(":")[1])
        except (IndexError, ValueError):
            continue
        await session.execute(
            update(Verification)
            .where(Verification.id == verification_id, Verification.code_delivered_at.is_(None))
            .values(code_delivered_at=at)
            .execution_options(synchronize_session=False)
        )


outbox.register_sent_hook("code", _stamp_code_delivered)
