"""The user's buttons on a verification: refresh, cancel, report, done, another number and the same number again."""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import Literal

from core.models import Verification
from core.platform.db import Database
from core.providers.verification import NotAllowed, ProviderError
from core.verification.catalogue import Quote
from core.verification.errors import NotOffered, WrongState
from core.verification.gateway import ProviderGateway
from core.verification.purchase import Purchases
from core.verification.records import VerificationRecords, transition
from core.verification.sync import ProviderSync

log = logging.getLogger(__name__)

# The finished states whose number the provider may hand out again.
_FINISHED_WITH_CODE = ("code_received", "completed")
SameNumberWay = Literal["reuse", "reactivate"]


@dataclass(frozen=True)
class SameNumberOffer:
    """How this verification's number can be had again right now, and what it costs this user.

    TextVerified v2: "reuse" shortly after the code came (`reuse.reusableUntil`), later "reactivate" (while
    `reactivate.canReactivate`); each opens a new verification on the same number, paid like a new one.
    """

    way: SameNumberWay
    verification: Verification
    quote: Quote


class UserActions:
    """What a user may do with their own verification; each press is checked against its current state."""

    def __init__(
        self, db: Database, gateway: ProviderGateway, records: VerificationRecords, sync: ProviderSync,
        purchases: Purchases,
    ) -> None:
        self.db = db
        self.gateway = gateway
        self.records = records
        self.sync = sync
        self.purchases = purchases
        # Serialises presses on one verification within this process so twenty Cancel clicks make one provider
        # call; across processes the conditional UPDATEs keep the outcome exactly-once anyway.
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    async def get(self, user_id: int, verification_id: int) -> Verification:
        return await self.records.owned(user_id, verification_id)

    async def refresh(self, user_id: int, verification_id: int) -> Verification:
        """The current status; an open one is first checked at the provider (useful when webhooks lag)."""
        verification = await self.records.owned(user_id, verification_id)
        if verification.state == "active" and verification.provider_verification_id:
            try:
                return await self.sync.refresh(verification, notify=False)
            except ProviderError as error:
                log.warning("refresh of verification %s failed: %s", verification_id, error)
        return verification

    async def another_number(self, user_id: int, verification_id: int) -> Verification:
        """Give this number back (if still waiting) and rent a new one for the same service."""
        old = await self.records.owned(user_id, verification_id)
        if old.state == "requested":
            raise WrongState(old.state)
        if old.state == "active":
            try:
                await self.cancel(user_id, verification_id)
            except WrongState:
                pass  # a parallel press or the SMS got there first; the new rental is still what was asked
        return await self.purchases.start(user_id, old.service, f"another:{verification_id}")

    async def same_number_offer(self, user_id: int, verification_id: int) -> SameNumberOffer | None:
        """Whether the provider would give this finished verification's number again now (reuse, else
        reactivate), with the price; None when it would not, so the chat does not offer it."""
        old = await self.records.owned(user_id, verification_id)
        if old.state not in _FINISHED_WITH_CODE or old.provider_verification_id is None:
            return None
        try:
            details = await self.gateway.call("details", self.gateway.provider.details(old.provider_verification_id))
        except ProviderError as error:
            log.warning("reading verification %s for the same number failed: %s", verification_id, error)
            return None
        way: SameNumberWay | None = "reuse" if details.can_reuse else "reactivate" if details.can_reactivate else None
        if way is None:
            return None
        quote = await self.purchases.catalogue.quote(await self.records.user(user_id), old.service)
        return SameNumberOffer(way, old, quote)

    async def reactivate(self, user_id: int, verification_id: int, request_key: str) -> Verification:
        """The number of a finished verification again, after its reuse window (priced like a new one).

        Like a purchase: the hold comes first, a refusal by the provider releases it, and the same `request_key`
        (a double click on one Confirm) gives the same new verification; a failed attempt leaves the way open.
        """
        old = await self.records.owned(user_id, verification_id)
        if old.state not in _FINISHED_WITH_CODE or old.provider_verification_id is None:
            raise WrongState(old.state)
        key = f"vf:{user_id}:reactivate:{verification_id}:{request_key}"[:128]
        existing = await self.records.by_key(key)
        if existing is not None:
            return await self.purchases.settled(existing)
        details = await self.gateway.call("details", self.gateway.provider.details(old.provider_verification_id))
        if not details.can_reactivate:
            raise NotOffered()
        quote = await self.purchases.catalogue.quote(await self.records.user(user_id), old.service)
        # Purchases' own steps, so a reactivation settles its hold exactly as a purchase does.
        verification, created = await self.purchases._open(user_id, quote, key)
        if not created:
            return await self.purchases.settled(verification)
        provider_id = old.provider_verification_id
        return await self.purchases._buy(verification, lambda: self.gateway.provider.reactivate(provider_id))

    async def cancel(self, user_id: int, verification_id: int) -> Verification:
        """Give the number back and release the hold; parallel presses cancel once, the rest get WrongState."""
        async with self._lock_for(verification_id):
            verification = await self.records.owned(user_id, verification_id)
            if verification.state != "active" or verification.provider_verification_id is None:
                raise WrongState(verification.state)
            try:
                await self.gateway.call("cancel", self.gateway.provider.cancel(verification.provider_verification_id))
            except NotAllowed:
                # The SMS may have just arrived, or another instance cancelled: the provider knows which.
                now = await self.sync.refresh(verification, notify=False)
                if now.state == "active":
                    raise
                if now.state != "cancelled":
                    raise WrongState(now.state) from None
                return now
            closed = await self.records.close(
                verification.id, "cancelled", ("active",), reason="cancelled: by user", notify=False
            )
            if closed is None:
                raise WrongState((await self.records.load(verification.id)).state)
            return closed

    async def report(self, user_id: int, verification_id: int) -> Verification:
        """The number does not work (no code is coming): tell the provider, end it, release the hold."""
        async with self._lock_for(verification_id):
            verification = await self.records.owned(user_id, verification_id)
            if verification.state != "active" or verification.provider_verification_id is None:
                raise WrongState(verification.state)
            try:
                await self.gateway.call("report", self.gateway.provider.report(verification.provider_verification_id))
            except NotAllowed:
                now = await self.sync.refresh(verification, notify=False)
                if now.state == "active":
                    raise
                raise WrongState(now.state) from None
            closed = await self.records.close(
                verification.id, "cancelled", ("active",), reason="reported: by user", notify=False
            )
            if closed is None:
                raise WrongState((await self.records.load(verification.id)).state)
            return closed

    async def complete(self, user_id: int, verification_id: int) -> Verification:
        """The user is done with the code ("Done")."""
        verification = await self.records.owned(user_id, verification_id)
        async with self.db.transaction() as session:
            done = await transition(session, verification.id, ("code_received",), state="completed")
        if done is None:
            raise WrongState((await self.records.load(verification.id)).state)
        return done

    def _lock_for(self, verification_id: int) -> asyncio.Lock:
        lock = self._locks.get(verification_id)
        if lock is None:
            lock = self._locks[verification_id] = asyncio.Lock()
        return lock
