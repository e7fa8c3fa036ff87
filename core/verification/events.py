"""Provider pushes (webhooks, sandbox events): parse them, relay an SMS at once, look a state change up later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import datetime

from core.platform.clock import utcnow
from core.platform.db import Database
from core.providers.verification import WebhookEvent as ProviderEvent
from core.verification.gateway import ProviderGateway
from core.verification.records import VerificationRecords, by_provider_id, record_event
from core.verification.relay import EventOutcome, SmsRelay
from core.verification.sync import ProviderSync

# How long a webhook for a number we are buying right now waits for the purchase to be recorded.
UNKNOWN_EVENT_WAIT = 2.0


class ProviderEvents:
    """Handles provider events; the look-ups they start run as background tasks that `close` cancels."""

    def __init__(
        self, db: Database, gateway: ProviderGateway, records: VerificationRecords, relay: SmsRelay,
        sync: ProviderSync,
    ) -> None:
        self.db = db
        self.gateway = gateway
        self.records = records
        self.relay = relay
        self.sync = sync
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    def parse_webhook(self, raw_body: bytes) -> ProviderEvent:
        """The provider's parsing of a webhook body whose signature was already checked."""
        return self.gateway.provider.parse_webhook(raw_body)

    async def handle_event(self, event: ProviderEvent, *, received_at: datetime | None = None) -> EventOutcome:
        """A webhook (or a sandbox event): an SMS is recorded and relayed, a state change is looked up."""
        if event.kind == "sms_received" and event.sms is not None and event.verification_id:
            outcome = await self.relay.ingest(
                event.verification_id, event.sms, event_key=event.event_key, source_received_at=received_at
            )
            if outcome is EventOutcome.UNKNOWN and await self.records.buying_now(self.gateway.name):
                # The webhook can beat the purchase's own commit; give that commit a moment before giving up.
                deadline = time.monotonic() + UNKNOWN_EVENT_WAIT
                while outcome is EventOutcome.UNKNOWN and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    outcome = await self.relay.ingest(
                        event.verification_id, event.sms, event_key=event.event_key, source_received_at=received_at
                    )
            return outcome
        if event.kind == "verification_changed" and event.verification_id:
            async with self.db.transaction() as session:
                if not await record_event(session, self.gateway.name, event.event_key):
                    return EventOutcome.DUPLICATE
                verification = await by_provider_id(session, self.gateway.name, event.verification_id)
            if verification is None:
                return EventOutcome.UNKNOWN
            if verification.state == "active":
                # Reading the details takes provider round trips; the webhook is answered without waiting for them.
                self._spawn(self.sync.refresh_quietly(verification), f"verification-refresh-{verification.id}")
            return EventOutcome.HANDLED
        return EventOutcome.IGNORED

    async def on_provider_event(self, event: ProviderEvent) -> None:
        """The sandbox's stand-in for a webhook delivery (its `on_event` callback)."""
        await self.handle_event(event, received_at=utcnow())

    async def close(self) -> None:
        """Stop starting look-ups and cancel the running ones."""
        self._closed = True
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coroutine: Awaitable[None], name: str) -> None:
        if self._closed:
            return
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
