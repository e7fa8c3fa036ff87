"""Keeping our verifications in step with the provider and the clock: polling, the expiry sweeper, their jobs."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from core.models import Verification
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.settings import Settings
from core.providers.verification import ProviderError
from core.verification.gateway import ProviderGateway
from core.verification.records import VerificationRecords
from core.verification.relay import SmsRelay

log = logging.getLogger(__name__)

# A purchase still `requested` after this long lost its process between the hold and the provider's answer
# (TextVerified's own retries end well within it). TextVerified refunds a rental that never gets an SMS, so
# failing it and releasing the hold costs nobody anything.
REQUESTED_STALE = timedelta(minutes=5)
# Leaves the provider's own time-out (seen by polling) a chance to arrive before our clock decides.
EXPIRY_GRACE = timedelta(seconds=15)

# What a provider state means for one of our open verifications when no SMS came with it.
_PROVIDER_END_STATES = {"timed_out": "expired", "cancelled": "cancelled", "reported": "cancelled", "failed": "failed"}


class ProviderSync:
    """Asks the provider about open verifications and ends what the provider or the clock has ended."""

    def __init__(
        self, db: Database, gateway: ProviderGateway, settings: Settings, records: VerificationRecords,
        relay: SmsRelay, *, poll_concurrency: int = 16,
    ) -> None:
        self.db = db
        self.gateway = gateway
        self.settings = settings
        self.records = records
        self.relay = relay
        self.poll_concurrency = poll_concurrency

    async def refresh(self, verification: Verification, *, notify: bool = True) -> Verification:
        """Apply what the provider says now; returns the verification as it is afterwards."""
        await self.check_provider(verification, notify=notify)
        return await self.records.load(verification.id)

    async def check_provider(self, verification: Verification, *, notify: bool = True) -> None:
        """Details first; the SMS list only once they say an SMS came or the rental ended (SMS take the webhook
        path, an ended rental without one is closed). Waiting rentals, the common case, cost one call per poll."""
        provider_id = verification.provider_verification_id
        assert provider_id is not None
        details = await self.gateway.call("details", self.gateway.provider.details(provider_id))
        if details.state in ("pending", "active"):
            return
        messages = await self.gateway.call("sms", self.gateway.provider.sms(provider_id))
        for sms in messages:
            await self.relay.ingest(provider_id, sms, event_key=None, source_received_at=None)
        target = _PROVIDER_END_STATES.get(details.state)
        if not messages and target is not None:
            await self.records.close(
                verification.id, target, ("active",), reason=f"provider_{details.state}: seen by polling", notify=notify
            )

    async def refresh_quietly(self, verification: Verification) -> None:
        try:
            await self.check_provider(verification)
        except ProviderError as error:
            log.warning("polling verification %s failed: %s", verification.id, error)
        except Exception:
            log.exception("polling verification %s failed", verification.id)

    async def poll_open(self, *, spread: float = 0.0) -> int:
        """Ask the provider about every verification still waiting for its SMS; returns how many were checked.

        With `spread` the calls start evenly over that many seconds instead of all at once: each verification is
        still asked once a cycle, but the provider sees a steady rate and a code arriving by webhook meanwhile
        no longer queues on the event loop behind a hundred responses being parsed."""
        async with self.db.read() as session:
            rows = list(
                (
                    await session.scalars(
                        select(Verification).where(
                            Verification.provider == self.gateway.name,
                            Verification.state == "active",
                            Verification.provider_verification_id.is_not(None),
                        ).order_by(Verification.id)
                    )
                ).all()
            )
        if not rows:
            return 0
        semaphore = asyncio.Semaphore(self.poll_concurrency)
        loop = asyncio.get_running_loop()
        start, gap = loop.time(), spread / len(rows)

        async def one(index: int, verification: Verification) -> None:
            if gap:
                await asyncio.sleep(start + index * gap - loop.time())
            async with semaphore:
                await self.refresh_quietly(verification)

        await asyncio.gather(*(one(index, verification) for index, verification in enumerate(rows)))
        return len(rows)

    async def sweep_expired(self) -> int:
        """End what the clock has ended: stuck purchases, rentals past their end, codes past their window."""
        now = utcnow()
        changed = 0
        async with self.db.read() as session:
            stuck = list(
                await session.scalars(
                    select(Verification.id).where(
                        Verification.state == "requested", Verification.created_at < now - REQUESTED_STALE
                    )
                )
            )
            overdue = list(
                (
                    await session.scalars(
                        select(Verification).where(
                            Verification.provider == self.gateway.name,
                            Verification.state == "active",
                            Verification.ends_at < now - EXPIRY_GRACE,
                        )
                    )
                ).all()
            )
            finished = list(
                await session.scalars(
                    select(Verification.id).where(Verification.state == "code_received", Verification.ends_at < now)
                )
            )
        for verification_id in stuck:
            if await self.records.close(verification_id, "failed", ("requested",), reason="stale: no provider answer"):
                changed += 1
        for verification in overdue:
            # One last look: an SMS that came at the last second is the user's, and is paid for.
            try:
                async with asyncio.timeout(10):
                    await self.check_provider(verification)
            except (ProviderError, TimeoutError) as error:
                log.warning("last check of verification %s before expiry failed: %s", verification.id, error)
            if await self.records.close(verification.id, "expired", ("active",), reason="expired: no SMS in time"):
                changed += 1
        for verification_id in finished:
            if await self.records.close(verification_id, "completed", ("code_received",)):
                changed += 1
        return changed

    def start_jobs(self, scheduler: Any) -> None:
        """Register polling (VERIFICATION_POLL_SECONDS) and the sweeper with the database-leased scheduler."""

        interval = float(self.settings.verification_poll_seconds)

        async def poll() -> None:
            # Spread over half the interval, so a cycle ends well before the next one is due.
            await self.poll_open(spread=interval / 2)

        async def sweep() -> None:
            await self.sweep_expired()

        scheduler.add_periodic("verification-poll", poll, interval)
        scheduler.add_periodic("verification-sweep", sweep, 30.0)
