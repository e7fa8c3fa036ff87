"""Verifications: rent a number for one service, hold its price, relay the code the moment it arrives, refund otherwise.

The money rule: a hold is placed before anything is bought, captured by the first SMS, released by every other end
(cancel, report, provider time-out, our own expiry, a failed purchase). Every state change is a conditional UPDATE
(`WHERE state IN (...)`), so webhooks, polling, the sweeper and button presses may race and repeat freely: one of
them moves the row, the rest change nothing, and the ledger settles each hold once.

`VerificationService` is the one object callers hold; it hands each call to the part that does it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from core.models import User, Verification
from core.platform.db import Database
from core.platform.metrics import Metrics
from core.platform.settings import Settings
from core.providers.plan import ProviderPlan
from core.providers.verification import ServiceInfo, VerificationProvider
from core.providers.verification import WebhookEvent as ProviderEvent
from core.verification.actions import SameNumberOffer, UserActions
from core.verification.cards import (
    ACTION_ANOTHER,
    ACTION_CANCEL,
    ACTION_DONE,
    ACTION_PICK,
    ACTION_REFRESH,
    ACTION_REPORT,
    ACTION_REUSE,
    ACTION_SAME_NUMBER,
    status_message,
)
from core.verification.catalogue import Catalogue, CataloguePage, Quote
from core.verification.errors import UnknownService, VerificationError, failure_kind
from core.verification.events import ProviderEvents
from core.verification.gateway import ProviderGateway
from core.verification.purchase import DEFAULT_RENTAL, Purchases
from core.verification.records import VerificationRecords
from core.verification.relay import EventOutcome, SmsRelay
from core.verification.sync import ProviderSync

# Imported from here by the /verify handlers, which predate the split into modules.
__all__ = [
    "ACTION_ANOTHER",
    "ACTION_CANCEL",
    "ACTION_DONE",
    "ACTION_PICK",
    "ACTION_REFRESH",
    "ACTION_REPORT",
    "ACTION_REUSE",
    "ACTION_SAME_NUMBER",
    "DEFAULT_RENTAL",
    "EventOutcome",
    "SameNumberOffer",
    "UnknownService",
    "VerificationError",
    "VerificationService",
    "build_verification_service",
    "failure_kind",
    "status_message",
]


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
        self.settings = settings
        self.metrics = metrics
        self._gateway = ProviderGateway(provider, metrics)
        self._records = VerificationRecords(db, wake_outbox)
        self._catalogue = Catalogue(self._gateway, settings)
        self._purchases = Purchases(db, self._gateway, settings, self._records, self._catalogue)
        relay = SmsRelay(db, self._gateway, self._records)
        self._sync = ProviderSync(db, self._gateway, settings, self._records, relay, poll_concurrency=poll_concurrency)
        self._actions = UserActions(db, self._gateway, self._records, self._sync, self._purchases)
        self._events = ProviderEvents(db, self._gateway, self._records, relay, self._sync)

    @property
    def provider(self) -> VerificationProvider:
        return self._gateway.provider

    @provider.setter
    def provider(self, provider: VerificationProvider) -> None:
        # Every part reads the provider from the gateway at call time, so a swap (tests share one sandbox
        # between two services) reaches all of them.
        self._gateway.provider = provider

    # ---- catalogue and price -------------------------------------------------------------------------------

    async def services(self) -> list[ServiceInfo]:
        return await self._catalogue.services()

    async def popular_services(self) -> list[ServiceInfo]:
        return await self._catalogue.popular_services()

    async def search_services(self, query: str) -> list[ServiceInfo]:
        return await self._catalogue.search_services(query)

    async def catalogue(self, page: int) -> CataloguePage:
        return await self._catalogue.catalogue(page)

    async def service_info(self, service: str) -> ServiceInfo:
        return await self._catalogue.service_info(service)

    async def quote(self, user: User, service: str) -> Quote:
        return await self._catalogue.quote(user, service)

    # ---- buying and the user's buttons ----------------------------------------------------------------------

    async def start(self, user_id: int, service: str, request_key: str) -> Verification:
        return await self._purchases.start(user_id, service, request_key)

    async def reuse(self, user_id: int, verification_id: int) -> Verification:
        return await self._purchases.reuse(user_id, verification_id)

    async def another_number(self, user_id: int, verification_id: int) -> Verification:
        return await self._actions.another_number(user_id, verification_id)

    async def same_number_offer(self, user_id: int, verification_id: int) -> SameNumberOffer | None:
        return await self._actions.same_number_offer(user_id, verification_id)

    async def reactivate(self, user_id: int, verification_id: int, request_key: str) -> Verification:
        return await self._actions.reactivate(user_id, verification_id, request_key)

    async def get(self, user_id: int, verification_id: int) -> Verification:
        return await self._actions.get(user_id, verification_id)

    async def refresh(self, user_id: int, verification_id: int) -> Verification:
        return await self._actions.refresh(user_id, verification_id)

    async def cancel(self, user_id: int, verification_id: int) -> Verification:
        return await self._actions.cancel(user_id, verification_id)

    async def report(self, user_id: int, verification_id: int) -> Verification:
        return await self._actions.report(user_id, verification_id)

    async def complete(self, user_id: int, verification_id: int) -> Verification:
        return await self._actions.complete(user_id, verification_id)

    async def attach_status_message(
        self, verification_id: int, *, platform: str, chat_id: str, message_id: str, shown_state: str
    ) -> None:
        await self._records.attach_status_message(
            verification_id, platform=platform, chat_id=chat_id, message_id=message_id, shown_state=shown_state
        )

    async def history(self, user_id: int, offset: int, limit: int) -> tuple[list[Verification], int]:
        return await self._records.history(user_id, offset, limit)

    # ---- events from the provider and background work ---------------------------------------------------------

    def parse_webhook(self, raw_body: bytes) -> ProviderEvent:
        return self._events.parse_webhook(raw_body)

    async def handle_event(self, event: ProviderEvent, *, received_at: datetime | None = None) -> EventOutcome:
        return await self._events.handle_event(event, received_at=received_at)

    async def on_provider_event(self, event: ProviderEvent) -> None:
        await self._events.on_provider_event(event)

    async def poll_open(self, *, spread: float = 0.0) -> int:
        return await self._sync.poll_open(spread=spread)

    async def sweep_expired(self) -> int:
        return await self._sync.sweep_expired()

    def start_jobs(self, scheduler: Any) -> None:
        self._sync.start_jobs(scheduler)

    async def close(self) -> None:
        await self._events.close()
        await self._gateway.provider.close()


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

    # A fresh seed per run: numbers and codes differ from the last run's, as real ones would.
    sandbox = SandboxVerificationProvider(code_delay_seconds=settings.sandbox_code_delay_seconds, seed=None)
    service = VerificationService(db, sandbox, settings, metrics)
    sandbox.on_event = service.on_provider_event
    return service
