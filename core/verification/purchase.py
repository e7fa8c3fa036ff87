"""Buying a number: the hold is placed before anything is bought, and released again if the purchase fails."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import select

from core.admin.alerts import alert_admins
from core.models import User, Verification
from core.money import ledger, limits
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.db_faults import database_unavailable, describe
from core.platform.i18n import t
from core.platform.settings import Settings
from core.providers.verification import InsufficientBalance, ProviderError, ProviderVerification
from core.verification.catalogue import Catalogue, Quote
from core.verification.errors import NotOffered, WrongState, failure_kind
from core.verification.gateway import ProviderGateway
from core.verification.records import VerificationRecords, transition

log = logging.getLogger(__name__)

DEFAULT_RENTAL = timedelta(minutes=15)
# A price screen's offer (core.money.offers): its Confirm buys once, not after Cancel, and not after this long,
# when the price shown may be stale.
OFFER_KIND = "vfoffer"
OFFER_TTL = timedelta(minutes=30)
# A double click that finds the first click's purchase still running waits this long for its outcome.
SETTLE_WAIT = 5.0


class PurchaseNotRecorded(ProviderError):
    """The provider rented a number that could not be recorded here; it was given back and nothing was charged.
    Shown as the provider's short "try again in a moment" (the details went to the log)."""


class Purchases:
    """Opens a verification with its hold, rents the number, and settles double clicks on the first click."""

    def __init__(
        self, db: Database, gateway: ProviderGateway, settings: Settings, records: VerificationRecords,
        catalogue: Catalogue,
    ) -> None:
        self.db = db
        self.gateway = gateway
        self.settings = settings
        self.records = records
        self.catalogue = catalogue

    async def start(self, user_id: int, service: str, request_key: str) -> Verification:
        """Buy a number for `service`; the same `request_key` (a double click) gives the same verification.

        Raises LimitReached or ledger.InsufficientFunds before anything is bought, and the provider's error after
        the verification was marked failed and its hold released.
        """
        key = f"vf:{user_id}:{request_key}"[:128]
        existing = await self.records.by_key(key)
        if existing is not None:
            return await self.settled(existing)
        user = await self.records.user(user_id)
        async with self.db.read() as session:
            # Checked again under the account's lock below; this early check spares the provider a price call.
            await limits.check_verification(session, self.settings, user)
        quote = await self.catalogue.quote(user, service)
        verification, created = await self._open(user_id, quote, key)
        if not created:
            return await self.settled(verification)
        return await self._buy(
            verification,
            lambda: self.gateway.provider.create(
                quote.service, f"cumapp-verification-{verification.id}", max_cost_cents=quote.provider_cost_cents
            ),
        )

    async def reuse(self, user_id: int, verification_id: int) -> Verification:
        """Rent the same number again for the same service, where the provider offers it (priced like new)."""
        old = await self.records.owned(user_id, verification_id)
        if old.state not in ("code_received", "completed") or old.provider_verification_id is None:
            raise WrongState(old.state)
        key = f"vf:{user_id}:reuse:{verification_id}"
        existing = await self.records.by_key(key)
        if existing is not None:
            return await self.settled(existing)
        details = await self.gateway.call("details", self.gateway.provider.details(old.provider_verification_id))
        if not details.can_reuse:
            raise NotOffered()
        user = await self.records.user(user_id)
        quote = await self.catalogue.quote(user, old.service)
        verification, created = await self._open(user_id, quote, key)
        if not created:
            return await self.settled(verification)
        return await self._buy(verification, lambda: self.gateway.provider.reuse(old.provider_verification_id or ""))

    async def settled(self, verification: Verification) -> Verification:
        """A double click's answer: the first click's verification once its purchase has an outcome."""
        deadline = time.monotonic() + SETTLE_WAIT
        while verification.state == "requested" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            verification = await self.records.load(verification.id)
        return verification

    async def _open(self, user_id: int, quote: Quote, key: str) -> tuple[Verification, bool]:
        """The verification row and its hold in one transaction, under the account's row lock."""
        async with self.db.transaction() as session:
            user = await session.scalar(
                select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
            )
            if user is None:
                raise ledger.UnknownAccount(f"no account {user_id}")
            existing = await session.scalar(select(Verification).where(Verification.idempotency_key == key))
            if existing is not None:
                return existing, False
            await limits.check_verification(session, self.settings, user)
            now = utcnow()
            verification = Verification(
                user_id=user_id, provider=self.gateway.name, service=quote.service, service_name=quote.name,
                state="requested", price_cents=quote.price_cents, provider_cost_cents=quote.provider_cost_cents,
                idempotency_key=key, created_at=now, updated_at=now,
            )
            session.add(verification)
            await session.flush()
            hold = await ledger.place_hold(
                session, user_id, quote.price_cents, purpose="verification",
                idempotency_key=f"verification:{verification.id}", reference=f"verification:{verification.id}",
            )
            verification.hold_id = hold.id
            await session.flush()
            return verification, True

    async def _buy(
        self, verification: Verification, buy: Callable[[], Awaitable[ProviderVerification]]
    ) -> Verification:
        try:
            rented = await self.gateway.call("create", buy())
        except Exception as error:
            # Whatever went wrong (a provider refusal or our own defect), the user's money must not stay held.
            await self._fail(verification, error)
            raise
        try:
            async with self.db.transaction() as session:
                active = await transition(
                    session, verification.id, ("requested",), state="active",
                    provider_verification_id=rented.id, phone_number=rented.number,
                    ends_at=rented.ends_at or utcnow() + DEFAULT_RENTAL,
                    provider_cost_cents=rented.cost_cents or verification.provider_cost_cents,
                )
        except BaseException as error:
            # Bought at the provider but not recorded (a constraint clash, the database gone, a cancelled task):
            # the rental goes back and the hold is released, shielded so a cancellation cannot stop half-way.
            await asyncio.shield(self._undo(verification, rented, error))
            if isinstance(error, Exception) and not isinstance(error, ProviderError) and not database_unavailable(error):
                raise PurchaseNotRecorded(f"verification {verification.id}: {describe(error)}") from error
            raise
        if active is not None:
            return active
        # The sweeper gave up on this purchase while the provider was still answering: the user was refunded,
        # so the number must go back too.
        log.warning("verification %s was bought after it had been failed; cancelling %s", verification.id, rented.id)
        await self._cancel_rental(rented.id)
        return await self.records.load(verification.id)

    async def _undo(self, verification: Verification, rented: ProviderVerification, error: BaseException) -> None:
        """After a failure past the provider call: the rental cancelled at the provider, then the hold released,
        each once (the rental first: unlike the hold, nothing would ever find it again)."""
        if database_unavailable(error):
            log.warning("verification %s: recording rental %s failed, the database is unavailable (%s); cancelling it",
                        verification.id, rented.id, describe(error))
        elif isinstance(error, Exception):
            log.error("verification %s: recording rental %s failed; cancelling it", verification.id, rented.id,
                      exc_info=error)
        await self._cancel_rental(rented.id)
        try:
            await self._fail(verification, error)
        except Exception as fail_error:
            # The database is still away: the sweeper fails this purchase and releases its hold later.
            log.warning("verification %s: releasing the hold failed (%s); the sweeper will", verification.id,
                        describe(fail_error))

    async def _cancel_rental(self, rental_id: str) -> None:
        try:
            await self.gateway.call("cancel", self.gateway.provider.cancel(rental_id))
        except ProviderError as error:
            log.warning("cancelling the unrecorded rental %s failed: %s", rental_id, error)

    async def _fail(self, verification: Verification, error: BaseException) -> None:
        kind = failure_kind(error)
        reason = f"{kind}: {type(error).__name__}: {error}"[:256]
        async with self.db.transaction() as session:
            failed = await transition(session, verification.id, ("requested",), state="failed", failure_reason=reason)
            if failed is not None and failed.hold_id is not None:
                await ledger.release(session, failed.hold_id)
            if isinstance(error, InsufficientBalance):
                await alert_admins(
                    session, self.settings, kind="provider balance", key=self.gateway.name,
                    text=t("en", "vf_alert_provider_balance", provider=self.gateway.name, detail=str(error)),
                )
        if isinstance(error, ProviderError):
            log.warning("verification %s failed at the provider: %s", verification.id, error)
        self.records.wake()
