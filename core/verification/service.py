"""Verifications: rent a number for one service, hold its price, relay the code the moment it arrives, refund otherwise.

The money rule: a hold is placed before anything is bought, captured by the first SMS, released by every other end
(cancel, report, provider time-out, our own expiry, a failed purchase). Every state change is a conditional UPDATE
(`WHERE state IN (...)`), so webhooks, polling, the sweeper and button presses may race and repeat freely: one of
them moves the row, the rest change nothing, and the ledger settles each hold once.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from core.admin.alerts import alert_admins
from core.models import User, Verification, VerificationSms, WebhookEvent
from core.money import ledger, limits
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.i18n import Html, catalog, money, t
from core.platform.metrics import Metrics
from core.platform.settings import Settings
from core.providers.plan import ProviderPlan
from core.providers.verification import (
    InsufficientBalance,
    NotAllowed,
    NotFound,
    PriceChanged,
    ProviderError,
    ProviderSms,
    ProviderTimeout,
    ProviderVerification,
    RateLimited,
    ServiceInfo,
    Unavailable,
    VerificationProvider,
)
from core.providers.verification import WebhookEvent as ProviderEvent
from core.verification.codes import extract_code

log = logging.getLogger(__name__)

T = TypeVar("T")

# Shown first by /verify, in this order, when the provider offers them.
POPULAR_SERVICES = (
    "whatsapp", "google", "telegram", "facebook", "instagram", "discord", "tiktok", "microsoft", "apple", "amazon",
)
POPULAR_LIMIT = 8
CATALOGUE_PAGE = 8

CODE_PRIORITY = 10
STATUS_PRIORITY = 5
# A purchase still `requested` after this long lost its process between the hold and the provider's answer
# (TextVerified's own retries end well within it). TextVerified refunds a rental that never gets an SMS, so
# failing it and releasing the hold costs nobody anything.
REQUESTED_STALE = timedelta(minutes=5)
# Leaves the provider's own time-out (seen by polling) a chance to arrive before our clock decides.
EXPIRY_GRACE = timedelta(seconds=15)
DEFAULT_RENTAL = timedelta(minutes=15)
# How long a webhook for a number we are buying right now waits for the purchase to be recorded.
UNKNOWN_EVENT_WAIT = 2.0
# A double click that finds the first click's purchase still running waits this long for its outcome.
SETTLE_WAIT = 5.0

# Button action ids: the handlers register flows under these prefixes; core puts them on the messages it sends.
ACTION_PICK = "vfp"  # vfp:<service> → price screen
ACTION_CANCEL = "vfc"  # vfc:<verification id>
ACTION_REPORT = "vfr"
ACTION_ANOTHER = "vfn"
ACTION_DONE = "vfd"
ACTION_REUSE = "vfu"
ACTION_REFRESH = "vfv"

# What a provider state means for one of our open verifications when no SMS came with it.
_PROVIDER_END_STATES = {"timed_out": "expired", "cancelled": "cancelled", "reported": "cancelled", "failed": "failed"}


# --- errors ------------------------------------------------------------------------------------------------------


class VerificationError(Exception):
    """A verification rule refused the request; `key` is the catalog text to show, `details` its arguments."""

    def __init__(self, key: str, **details: Any) -> None:
        super().__init__(key)
        self.key = key
        self.details = details


class UnknownService(VerificationError):
    def __init__(self, service: str) -> None:
        super().__init__("vf_unknown_service", service=service)


class UnknownVerification(VerificationError):
    def __init__(self) -> None:
        super().__init__("error_stale_button")


class NotYours(VerificationError):
    def __init__(self) -> None:
        super().__init__("error_not_yours")


class WrongState(VerificationError):
    """The verification is no longer in a state that allows the action (already cancelled, code arrived…)."""

    def __init__(self, state: str) -> None:
        super().__init__(f"vf_toast_{state}")
        self.state = state


class NotOffered(VerificationError):
    """The provider does not offer this (reusing the number) for this verification."""

    def __init__(self) -> None:
        super().__init__("vf_err_not_allowed")


def failure_kind(error: BaseException) -> str:
    """A short, stable name for why a provider call failed; `vf_err_<kind>` is its user-facing text."""
    if isinstance(error, Unavailable):
        return "unavailable"
    if isinstance(error, InsufficientBalance):
        return "provider_balance"
    if isinstance(error, PriceChanged):
        return "price_changed"
    if isinstance(error, RateLimited):
        return "busy"
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, NotAllowed):
        return "not_allowed"
    if isinstance(error, NotFound):
        return "not_found"
    return "error"


# --- values ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    """What one verification of `service` costs this user now: the provider's price plus the tier's markup."""

    service: str
    name: str
    provider_cost_cents: int
    price_cents: int


@dataclass(frozen=True)
class CataloguePage:
    items: list[ServiceInfo]
    page: int
    pages: int


class EventOutcome(StrEnum):
    HANDLED = "handled"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    UNKNOWN = "unknown"  # not one of our verifications (yet); polling picks its SMS up if it is


def price_with_markup(cost_cents: int, markup_percent: int) -> int:
    """Provider cost plus markup, rounded up to the next cent so we never sell below cost."""
    return -(-cost_cents * (100 + markup_percent) // 100)


def _normalise(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def _match_score(query: str, service: ServiceInfo) -> int:
    """How well `query` names `service`: 100 exact, then prefix, word prefix, substring, then typo distance."""
    q = _normalise(query)
    if not q:
        return 0
    code, name = _normalise(service.code), _normalise(service.name)
    words = [_normalise(word) for word in re.split(r"[\s/()\-_,.]+", service.name) if word]
    if q in (code, name):
        return 100
    if code.startswith(q) or name.startswith(q):
        return 80
    if any(word.startswith(q) for word in words):
        return 70
    if q in code or q in name:
        return 60
    ratio = max(difflib.SequenceMatcher(None, q, candidate).ratio() for candidate in [code, *words])
    return int(ratio * 50) if ratio >= 0.75 else 0


def _insert(session: AsyncSession) -> Any:
    """`INSERT … ON CONFLICT DO NOTHING` in the session's dialect."""
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert


# --- messages core sends (the handlers show the same status screens) ----------------------------------------------


def _time_left(v: Verification, locale: str, now: datetime) -> Html:
    if v.ends_at is None:
        return Html("")
    seconds = int((v.ends_at - now).total_seconds())
    if seconds <= 0:
        return t(locale, "vf_time_up")
    return t(locale, "vf_time_left", minutes=max(1, round(seconds / 60)), until=v.ends_at.strftime("%H:%M"))


def _failure_text(v: Verification, locale: str) -> Html:
    kind = (v.failure_reason or "error").split(":", 1)[0]
    key = f"vf_err_{kind}"
    return t(locale, key if key in catalog("en") else "vf_err_error")


def status_message(
    v: Verification, locale: str, *, edit_message_id: str | None = None, now: datetime | None = None
) -> outbox.OutgoingMessage:
    """The live status of one verification, with the buttons its state allows."""
    now = now or utcnow()
    number = v.phone_number or ""
    common = {"service": v.service_name, "number": number, "price": money(v.price_cents)}
    rows: list[tuple[outbox.OutButton, ...]] = []

    def button(key: str, prefix: str) -> outbox.OutButton:
        return outbox.OutButton(t(locale, key), action=f"{prefix}:{v.id}")

    again = outbox.OutButton(t(locale, "vf_btn_again"), action=f"{ACTION_PICK}:{v.service}"[:64])
    if v.state == "requested":
        text = t(locale, "vf_status_requested", **common)
        rows.append((button("vf_btn_refresh", ACTION_REFRESH),))
    elif v.state == "active":
        text = t(locale, "vf_status_active", time_left=_time_left(v, locale, now), **common)
        if number:
            rows.append((outbox.OutButton(t(locale, "vf_btn_copy_number"), copy_text=number),))
        rows.append((button("btn_cancel", ACTION_CANCEL), button("vf_btn_report", ACTION_REPORT)))
        rows.append((button("vf_btn_another", ACTION_ANOTHER), button("vf_btn_refresh", ACTION_REFRESH)))
    elif v.state in ("code_received", "completed"):
        key = "vf_status_code" if v.state == "code_received" else "vf_status_completed"
        if v.code is None:
            key += "_none"
        text = t(locale, key, code=v.code or "", **common)
        if v.code:
            rows.append((outbox.OutButton(t(locale, "vf_btn_copy_code"), copy_text=v.code),))
        if v.state == "code_received":
            rows.append((button("vf_btn_done", ACTION_DONE), button("vf_btn_reuse", ACTION_REUSE)))
        else:
            rows.append((again,))
    elif v.state in ("cancelled", "expired"):
        text = t(locale, f"vf_status_{v.state}", **common)
        rows.append((again,))
    else:
        text = t(locale, "vf_status_failed", reason=_failure_text(v, locale), **common)
        rows.append((again,))
    return outbox.OutgoingMessage(text=text, buttons=tuple(rows), edit_message_id=edit_message_id)


def code_message(v: Verification, sms_text: str, code: str | None, locale: str, *, first: bool) -> outbox.OutgoingMessage:
    """A new chat message (so the phone notifies) with the code, a Copy button and the whole SMS."""
    args = {"service": v.service_name, "number": v.phone_number or "", "sms": sms_text, "code": code or ""}
    if code:
        key = "vf_code_message" if first else "vf_code_message_again"
        buttons = ((outbox.OutButton(t(locale, "vf_btn_copy_code"), copy_text=code),),)
    else:
        key = "vf_sms_message"
        buttons = ()
    return outbox.OutgoingMessage(text=t(locale, key, **args), buttons=buttons)


# --- the service -----------------------------------------------------------------------------------------------


class VerificationService:
    """Everything about verifications; one per process, built by `build_verification_service`."""

    def __init__(
        self,
        db: Database,
        provider: VerificationProvider,
        settings: Settings,
        metrics: Metrics,
        *,
        wake_outbox: Callable[[], None] | None = None,
        poll_concurrency: int = 16,
    ) -> None:
        self.db = db
        self.provider = provider
        self.settings = settings
        self.metrics = metrics
        self.wake_outbox = wake_outbox
        self.poll_concurrency = poll_concurrency
        # Serialises presses on one verification within this process so twenty Cancel clicks make one provider
        # call; across processes the conditional UPDATEs keep the outcome exactly-once anyway.
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    # ---- catalogue and price -------------------------------------------------------------------------------

    async def services(self) -> list[ServiceInfo]:
        return await self._call("services", self.provider.list_services())

    async def popular_services(self) -> list[ServiceInfo]:
        by_code = {service.code: service for service in await self.services()}
        popular = [by_code[code] for code in POPULAR_SERVICES if code in by_code]
        return popular[:POPULAR_LIMIT]

    async def search_services(self, query: str) -> list[ServiceInfo]:
        """Services matching `query`, best first; an exact name or code comes alone."""
        scored = [(score, service) for service in await self.services() if (score := _match_score(query, service))]
        scored.sort(key=lambda pair: (-pair[0], pair[1].name.lower()))
        if scored and scored[0][0] == 100:
            return [scored[0][1]]
        return [service for _, service in scored]

    async def catalogue(self, page: int) -> CataloguePage:
        items = sorted(await self.services(), key=lambda service: service.name.lower())
        pages = max(1, -(-len(items) // CATALOGUE_PAGE))
        page = min(max(0, page), pages - 1)
        return CataloguePage(items[page * CATALOGUE_PAGE : (page + 1) * CATALOGUE_PAGE], page, pages)

    async def service_info(self, service: str) -> ServiceInfo:
        for info in await self.services():
            if info.code == service:
                return info
        raise UnknownService(service)

    async def quote(self, user: User, service: str) -> Quote:
        """The price read from the provider now (never from a button), with the user's tier markup."""
        info = await self.service_info(service)
        price = await self._call("price", self.provider.price(info.code))
        markup = self.settings.tier_limits[user.tier].markup_percent
        return Quote(info.code, info.name, price.cost_cents, price_with_markup(price.cost_cents, markup))

    # ---- buying -------------------------------------------------------------------------------------------

    async def start(self, user_id: int, service: str, request_key: str) -> Verification:
        """Buy a number for `service`; the same `request_key` (a double click) gives the same verification.

        Raises LimitReached or ledger.InsufficientFunds before anything is bought, and the provider's error after
        the verification was marked failed and its hold released.
        """
        key = f"vf:{user_id}:{request_key}"[:128]
        existing = await self._by_key(key)
        if existing is not None:
            return await self._settled(existing)
        user = await self._user(user_id)
        async with self.db.read() as session:
            # Checked again under the account's lock below; this early check spares the provider a price call.
            await limits.check_verification(session, self.settings, user)
        quote = await self.quote(user, service)
        verification, created = await self._open(user_id, quote, key)
        if not created:
            return await self._settled(verification)
        return await self._buy(
            verification,
            lambda: self.provider.create(
                quote.service, f"cumapp-verification-{verification.id}", max_cost_cents=quote.provider_cost_cents
            ),
        )

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
                user_id=user_id, provider=self.provider.name, service=quote.service, service_name=quote.name,
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
            rented = await self._call("create", buy())
        except Exception as error:
            # Whatever went wrong (a provider refusal or our own defect), the user's money must not stay held.
            await self._fail(verification, error)
            raise
        async with self.db.transaction() as session:
            active = await self._transition(
                session, verification.id, ("requested",), state="active",
                provider_verification_id=rented.id, phone_number=rented.number,
                ends_at=rented.ends_at or utcnow() + DEFAULT_RENTAL,
                provider_cost_cents=rented.cost_cents or verification.provider_cost_cents,
            )
        if active is not None:
            return active
        # The sweeper gave up on this purchase while the provider was still answering: the user was refunded,
        # so the number must go back too.
        log.warning("verification %s was bought after it had been failed; cancelling %s", verification.id, rented.id)
        try:
            await self._call("cancel", self.provider.cancel(rented.id))
        except ProviderError as error:
            log.warning("cancelling the late number %s failed: %s", rented.id, error)
        return await self._load(verification.id)

    async def _fail(self, verification: Verification, error: BaseException) -> None:
        kind = failure_kind(error)
        reason = f"{kind}: {type(error).__name__}: {error}"[:256]
        async with self.db.transaction() as session:
            failed = await self._transition(session, verification.id, ("requested",), state="failed", failure_reason=reason)
            if failed is not None and failed.hold_id is not None:
                await ledger.release(session, failed.hold_id)
            if isinstance(error, InsufficientBalance):
                await alert_admins(
                    session, self.settings, kind="provider balance", key=self.provider.name,
                    text=t("en", "vf_alert_provider_balance", provider=self.provider.name, detail=str(error)),
                )
        if isinstance(error, ProviderError):
            log.warning("verification %s failed at the provider: %s", verification.id, error)
        self._wake()

    async def _settled(self, verification: Verification) -> Verification:
        """A double click's answer: the first click's verification once its purchase has an outcome."""
        deadline = time.monotonic() + SETTLE_WAIT
        while verification.state == "requested" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            verification = await self._load(verification.id)
        return verification

    async def another_number(self, user_id: int, verification_id: int) -> Verification:
        """Give this number back (if still waiting) and rent a new one for the same service."""
        old = await self._owned(user_id, verification_id)
        if old.state == "requested":
            raise WrongState(old.state)
        if old.state == "active":
            try:
                await self.cancel(user_id, verification_id)
            except WrongState:
                pass  # a parallel press or the SMS got there first; the new rental is still what was asked
        return await self.start(user_id, old.service, f"another:{verification_id}")

    async def reuse(self, user_id: int, verification_id: int) -> Verification:
        """Rent the same number again for the same service, where the provider offers it (priced like new)."""
        old = await self._owned(user_id, verification_id)
        if old.state not in ("code_received", "completed") or old.provider_verification_id is None:
            raise WrongState(old.state)
        key = f"vf:{user_id}:reuse:{verification_id}"
        existing = await self._by_key(key)
        if existing is not None:
            return await self._settled(existing)
        details = await self._call("details", self.provider.details(old.provider_verification_id))
        if not details.can_reuse:
            raise NotOffered()
        user = await self._user(user_id)
        quote = await self.quote(user, old.service)
        verification, created = await self._open(user_id, quote, key)
        if not created:
            return await self._settled(verification)
        return await self._buy(verification, lambda: self.provider.reuse(old.provider_verification_id or ""))

    # ---- the user's buttons ---------------------------------------------------------------------------------

    async def get(self, user_id: int, verification_id: int) -> Verification:
        return await self._owned(user_id, verification_id)

    async def refresh(self, user_id: int, verification_id: int) -> Verification:
        """The current status; an open one is first checked at the provider (useful when webhooks lag)."""
        verification = await self._owned(user_id, verification_id)
        if verification.state == "active" and verification.provider_verification_id:
            try:
                return await self._refresh(verification, notify=False)
            except ProviderError as error:
                log.warning("refresh of verification %s failed: %s", verification_id, error)
        return verification

    async def cancel(self, user_id: int, verification_id: int) -> Verification:
        """Give the number back and release the hold; parallel presses cancel once, the rest get WrongState."""
        async with self._lock_for(verification_id):
            verification = await self._owned(user_id, verification_id)
            if verification.state != "active" or verification.provider_verification_id is None:
                raise WrongState(verification.state)
            try:
                await self._call("cancel", self.provider.cancel(verification.provider_verification_id))
            except NotAllowed:
                # The SMS may have just arrived, or another instance cancelled: the provider knows which.
                now = await self._refresh(verification, notify=False)
                if now.state == "active":
                    raise
                if now.state != "cancelled":
                    raise WrongState(now.state) from None
                return now
            closed = await self._close(verification.id, "cancelled", ("active",), reason="cancelled: by user", notify=False)
            if closed is None:
                raise WrongState((await self._load(verification.id)).state)
            return closed

    async def report(self, user_id: int, verification_id: int) -> Verification:
        """The number does not work (no code is coming): tell the provider, end it, release the hold."""
        async with self._lock_for(verification_id):
            verification = await self._owned(user_id, verification_id)
            if verification.state != "active" or verification.provider_verification_id is None:
                raise WrongState(verification.state)
            try:
                await self._call("report", self.provider.report(verification.provider_verification_id))
            except NotAllowed:
                now = await self._refresh(verification, notify=False)
                if now.state == "active":
                    raise
                raise WrongState(now.state) from None
            closed = await self._close(verification.id, "cancelled", ("active",), reason="reported: by user", notify=False)
            if closed is None:
                raise WrongState((await self._load(verification.id)).state)
            return closed

    async def complete(self, user_id: int, verification_id: int) -> Verification:
        """The user is done with the code ("Done")."""
        verification = await self._owned(user_id, verification_id)
        async with self.db.transaction() as session:
            done = await self._transition(session, verification.id, ("code_received",), state="completed")
        if done is None:
            raise WrongState((await self._load(verification.id)).state)
        return done

    async def attach_status_message(
        self, verification_id: int, *, platform: str, chat_id: str, message_id: str, shown_state: str
    ) -> None:
        """Remember the chat message showing this verification's status, so later changes edit it in place.

        If the state moved on while that message was on its way (a fast code), the edit is queued right now."""
        async with self.db.transaction() as session:
            verification = await session.scalar(
                update(Verification)
                .where(Verification.id == verification_id)
                .values(status_platform=platform, status_chat_id=chat_id, status_message_id=message_id)
                .returning(Verification),
                execution_options={"populate_existing": True, "synchronize_session": False},
            )
            if verification is None or verification.state == shown_state:
                return
            await self._enqueue_status(session, verification)
        self._wake()

    async def history(self, user_id: int, offset: int, limit: int) -> tuple[list[Verification], int]:
        """The user's verifications, newest first, and how many there are."""
        async with self.db.read() as session:
            total = await session.scalar(
                select(func.count()).select_from(Verification).where(Verification.user_id == user_id)
            )
            rows = await session.scalars(
                select(Verification).where(Verification.user_id == user_id)
                .order_by(Verification.id.desc()).offset(max(0, offset)).limit(limit)
            )
            return list(rows.all()), int(total or 0)

    # ---- events from the provider -----------------------------------------------------------------------------

    def parse_webhook(self, raw_body: bytes) -> ProviderEvent:
        """The provider's parsing of a webhook body whose signature was already checked."""
        return self.provider.parse_webhook(raw_body)

    async def handle_event(self, event: ProviderEvent, *, received_at: datetime | None = None) -> EventOutcome:
        """A webhook (or a sandbox event): an SMS is recorded and relayed, a state change is looked up."""
        if event.kind == "sms_received" and event.sms is not None and event.verification_id:
            outcome = await self._ingest(
                event.verification_id, event.sms, event_key=event.event_key, source_received_at=received_at
            )
            if outcome is EventOutcome.UNKNOWN and await self._buying_now():
                # The webhook can beat the purchase's own commit; give that commit a moment before giving up.
                deadline = time.monotonic() + UNKNOWN_EVENT_WAIT
                while outcome is EventOutcome.UNKNOWN and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    outcome = await self._ingest(
                        event.verification_id, event.sms, event_key=event.event_key, source_received_at=received_at
                    )
            return outcome
        if event.kind == "verification_changed" and event.verification_id:
            async with self.db.transaction() as session:
                if not await self._record_event(session, event.event_key):
                    return EventOutcome.DUPLICATE
                verification = await self._by_provider_id(session, event.verification_id)
            if verification is None:
                return EventOutcome.UNKNOWN
            if verification.state == "active":
                # Reading the details takes provider round trips; the webhook is answered without waiting for them.
                self._spawn(self._refresh_quietly(verification), f"verification-refresh-{verification.id}")
            return EventOutcome.HANDLED
        return EventOutcome.IGNORED

    async def on_provider_event(self, event: ProviderEvent) -> None:
        """The sandbox's stand-in for a webhook delivery (its `on_event` callback)."""
        await self.handle_event(event, received_at=utcnow())

    async def _record_event(self, session: AsyncSession, event_key: str) -> bool:
        """True the first time this provider event is seen (in the caller's transaction)."""
        inserted = await session.scalar(
            _insert(session)(WebhookEvent)
            .values(provider=self.provider.name, event_key=event_key[:160], received_at=utcnow())
            .on_conflict_do_nothing(index_elements=["provider", "event_key"])
            .returning(WebhookEvent.id)
        )
        return inserted is not None

    async def _ingest(
        self, provider_verification_id: str, sms: ProviderSms, *, event_key: str | None,
        source_received_at: datetime | None,
    ) -> EventOutcome:
        """Store one SMS and act on it in one transaction: the first captures the hold; every new one is relayed."""
        async with self.db.transaction() as session:
            # The row lock makes a webhook and a poll carrying the same SMS take turns, so the second sees the first.
            found = (
                await session.execute(
                    select(Verification, User.locale)
                    .join(User, User.id == Verification.user_id)
                    .where(
                        Verification.provider == self.provider.name,
                        Verification.provider_verification_id == provider_verification_id,
                    )
                    .with_for_update(of=Verification)
                    .execution_options(populate_existing=True)
                )
            ).first()
            if found is None:
                return EventOutcome.UNKNOWN
            verification, locale = found[0], found[1] or "en"
            if event_key is not None and not await self._record_event(session, event_key):
                return EventOutcome.DUPLICATE
            # A webhook names an SMS by its event id, the SMS list by the SMS's own id: the same text on the same
            # verification is the same SMS seen twice.
            seen = await session.scalar(
                select(
                    exists().where(
                        VerificationSms.verification_id == verification.id,
                        (VerificationSms.provider_sms_id == sms.id[:128]) | (VerificationSms.text == sms.text),
                    )
                )
            )
            if seen or verification.state in ("requested", "failed"):
                return EventOutcome.DUPLICATE if seen else EventOutcome.IGNORED
            code = extract_code(sms.text, verification.service, sms.parsed_code)
            now = utcnow()
            sms_id = await session.scalar(
                _insert(session)(VerificationSms)
                .values(
                    verification_id=verification.id, provider_sms_id=sms.id[:128], text=sms.text, code=code,
                    received_at=sms.received_at or now,
                )
                .on_conflict_do_nothing(index_elements=["verification_id", "provider_sms_id"])
                .returning(VerificationSms.id)
            )
            if sms_id is None:
                return EventOutcome.DUPLICATE
            # code_delivered_at is left for the outbox to stamp when the code message is sent (latency stats).
            first = await self._transition(
                session, verification.id, ("active",), state="code_received", code=code,
                sms_text=sms.text, code_received_at=now,
            )
            if first is not None:
                if first.hold_id is not None:
                    await ledger.capture(session, first.hold_id)
                verification = first
            elif code is not None and verification.code is None and verification.state in ("code_received", "completed"):
                updated = await self._transition(
                    session, verification.id, ("code_received", "completed"), code=code
                )
                verification = updated or verification
            await outbox.enqueue_for_user(
                session, verification.user_id, kind="code",
                message=code_message(verification, sms.text, code, locale, first=first is not None),
                dedupe_key=f"vf:{verification.id}:sms:{sms_id}", priority=CODE_PRIORITY,
                source_received_at=source_received_at or sms.received_at,
            )
            if first is not None:
                await self._enqueue_status(session, verification, locale)
        self._wake()
        return EventOutcome.HANDLED

    # ---- background work ------------------------------------------------------------------------------------

    async def poll_open(self) -> int:
        """Ask the provider about every verification still waiting for its SMS; returns how many were checked."""
        async with self.db.read() as session:
            rows = list(
                (
                    await session.scalars(
                        select(Verification).where(
                            Verification.provider == self.provider.name,
                            Verification.state == "active",
                            Verification.provider_verification_id.is_not(None),
                        ).order_by(Verification.id)
                    )
                ).all()
            )
        if not rows:
            return 0
        semaphore = asyncio.Semaphore(self.poll_concurrency)

        async def one(verification: Verification) -> None:
            async with semaphore:
                await self._refresh_quietly(verification)

        await asyncio.gather(*(one(verification) for verification in rows))
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
                            Verification.provider == self.provider.name,
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
            if await self._close(verification_id, "failed", ("requested",), reason="stale: no provider answer"):
                changed += 1
        for verification in overdue:
            # One last look: an SMS that came at the last second is the user's, and is paid for.
            try:
                async with asyncio.timeout(10):
                    await self._check_provider(verification)
            except (ProviderError, TimeoutError) as error:
                log.warning("last check of verification %s before expiry failed: %s", verification.id, error)
            if await self._close(verification.id, "expired", ("active",), reason="expired: no SMS in time"):
                changed += 1
        for verification_id in finished:
            if await self._close(verification_id, "completed", ("code_received",)):
                changed += 1
        return changed

    def start_jobs(self, scheduler: Any) -> None:
        """Register polling (VERIFICATION_POLL_SECONDS) and the sweeper with the database-leased scheduler."""

        async def poll() -> None:
            await self.poll_open()

        async def sweep() -> None:
            await self.sweep_expired()

        scheduler.add_periodic("verification-poll", poll, float(self.settings.verification_poll_seconds))
        scheduler.add_periodic("verification-sweep", sweep, 30.0)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.provider.close()

    # ---- internals ----------------------------------------------------------------------------------------

    async def _refresh(self, verification: Verification, *, notify: bool = True) -> Verification:
        """Apply what the provider says now; returns the verification as it is afterwards."""
        await self._check_provider(verification, notify=notify)
        return await self._load(verification.id)

    async def _check_provider(self, verification: Verification, *, notify: bool = True) -> None:
        """Details first; the SMS list only once they say an SMS came or the rental ended (SMS take the webhook
        path, an ended rental without one is closed). Waiting rentals, the common case, cost one call per poll."""
        provider_id = verification.provider_verification_id
        assert provider_id is not None
        details = await self._call("details", self.provider.details(provider_id))
        if details.state in ("pending", "active"):
            return
        messages = await self._call("sms", self.provider.sms(provider_id))
        for sms in messages:
            await self._ingest(provider_id, sms, event_key=None, source_received_at=None)
        target = _PROVIDER_END_STATES.get(details.state)
        if not messages and target is not None:
            await self._close(
                verification.id, target, ("active",), reason=f"provider_{details.state}: seen by polling", notify=notify
            )

    async def _refresh_quietly(self, verification: Verification) -> None:
        try:
            await self._check_provider(verification)
        except ProviderError as error:
            log.warning("polling verification %s failed: %s", verification.id, error)
        except Exception:
            log.exception("polling verification %s failed", verification.id)

    async def _close(
        self, verification_id: int, state: str, from_states: Sequence[str], *, reason: str | None = None,
        notify: bool = True,
    ) -> Verification | None:
        """Move to an end state once; the hold is released unless the code had already been paid for."""
        async with self.db.transaction() as session:
            values: dict[str, Any] = {"state": state}
            if reason is not None:
                values["failure_reason"] = reason[:256]
            closed = await self._transition(session, verification_id, tuple(from_states), **values)
            if closed is None:
                return None
            if state in ("cancelled", "expired", "failed") and closed.hold_id is not None:
                await ledger.release(session, closed.hold_id)
            if notify:
                await self._enqueue_status(session, closed)
        self._wake()
        return closed

    async def _transition(
        self, session: AsyncSession, verification_id: int, from_states: tuple[str, ...], **values: Any
    ) -> Verification | None:
        """The one way a verification changes: only from `from_states`, so repeats and races change nothing."""
        return await session.scalar(
            update(Verification)
            .where(Verification.id == verification_id, Verification.state.in_(from_states))
            .values(updated_at=utcnow(), **values)
            .returning(Verification),
            execution_options={"populate_existing": True, "synchronize_session": False},
        )

    async def _enqueue_status(self, session: AsyncSession, verification: Verification, locale: str | None = None) -> None:
        """Edit the chat message showing this verification's status, once per state it reaches."""
        if not (verification.status_platform and verification.status_chat_id and verification.status_message_id):
            return
        if locale is None:
            locale = await session.scalar(select(User.locale).where(User.id == verification.user_id)) or "en"
        await outbox.enqueue(
            session, platform=verification.status_platform, chat_id=verification.status_chat_id,
            kind="verification_status", user_id=verification.user_id, priority=STATUS_PRIORITY,
            message=status_message(verification, locale, edit_message_id=verification.status_message_id),
            dedupe_key=f"vf:{verification.id}:status:{verification.state}",
        )

    async def _buying_now(self) -> bool:
        async with self.db.read() as session:
            return bool(
                await session.scalar(
                    select(exists().where(Verification.provider == self.provider.name, Verification.state == "requested"))
                )
            )

    async def _by_key(self, key: str) -> Verification | None:
        async with self.db.read() as session:
            return await session.scalar(select(Verification).where(Verification.idempotency_key == key))

    async def _by_provider_id(self, session: AsyncSession, provider_id: str) -> Verification | None:
        return await session.scalar(
            select(Verification).where(
                Verification.provider == self.provider.name, Verification.provider_verification_id == provider_id
            )
        )

    async def _load(self, verification_id: int) -> Verification:
        async with self.db.read() as session:
            verification = await session.get(Verification, verification_id)
        if verification is None:
            raise UnknownVerification()
        return verification

    async def _owned(self, user_id: int, verification_id: int) -> Verification:
        verification = await self._load(verification_id)
        if verification.user_id != user_id:
            raise NotYours()
        return verification

    async def _user(self, user_id: int) -> User:
        async with self.db.read() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise ledger.UnknownAccount(f"no account {user_id}")
        return user

    def _lock_for(self, verification_id: int) -> asyncio.Lock:
        lock = self._locks.get(verification_id)
        if lock is None:
            lock = self._locks[verification_id] = asyncio.Lock()
        return lock

    async def _call(self, op: str, call: Awaitable[T]) -> T:
        """One provider call, counted and timed for /metrics."""
        name = self.provider.name
        started = time.perf_counter()
        try:
            result = await call
        except ProviderError as error:
            self.metrics.provider_calls.labels(name, failure_kind(error)).inc()
            raise
        finally:
            self.metrics.provider_latency.labels(name).observe(time.perf_counter() - started)
        self.metrics.provider_calls.labels(name, "ok").inc()
        return result

    def _spawn(self, coroutine: Awaitable[None], name: str) -> None:
        if self._closed:
            return
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _wake(self) -> None:
        # The outbox wakes its in-process dispatcher on commit by itself; this hook is for a caller that runs
        # dispatching some other way (a benchmark, a test).
        if self.wake_outbox is not None:
            self.wake_outbox()


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


def build_verification_service(
    settings: Settings, db: Database, metrics: Metrics, plan: ProviderPlan
) -> VerificationService:
    """TextVerified when configured, else the sandbox twin whose codes take the webhook path."""
    if plan.verification == "textverified":
        from core.providers.textverified import TextVerifiedProvider

        assert settings.textverified_api_key is not None and settings.textverified_api_username is not None
        provider: VerificationProvider = TextVerifiedProvider(
            settings.textverified_api_key, settings.textverified_api_username, settings.textverified_base_url
        )
        return VerificationService(db, provider, settings, metrics)
    from core.providers.sandbox_verification import SandboxVerificationProvider

    sandbox = SandboxVerificationProvider(code_delay_seconds=settings.sandbox_code_delay_seconds)
    service = VerificationService(db, sandbox, settings, metrics)
    sandbox.on_event = service.on_provider_event
    return service

