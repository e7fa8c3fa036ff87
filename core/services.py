"""The service container: everything a handler or webhook needs, built once by the composition root."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.platform.crypto import keyring_for
from core.platform.db import Database
from core.platform.metrics import Metrics
from core.platform.settings import Settings
from core.providers.plan import ProviderPlan, plan_providers, signup_bonus_cents

if TYPE_CHECKING:
    from core.money.subscriptions import StarsSubscriptionApi

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Built once per process and handed down; nothing below imports it back upwards."""

    settings: Settings
    db: Database
    plan: ProviderPlan
    metrics: Metrics = field(default_factory=Metrics)
    started_monotonic: float = field(default_factory=time.monotonic)
    # Domain services, built by the composition root (bot/app.py) from the provider plan. Typed loosely here so
    # this container stays importable by every layer; each module documents its own service class.
    verification: Any = None  # core.verification.service.VerificationService
    messaging: Any = None  # core.messaging.service.MessagingService
    ai: Any = None  # core.ai.service.AiService
    outbox: Any = None  # core.platform.outbox.OutboxDispatcher
    # Set by the Telegram front end at start-up: asks Telegram to refund a Stars charge (user id, charge id).
    stars_refunder: Callable[[str, str], Awaitable[None]] | None = None
    # Set by the Telegram front end at start-up: Stars subscription invoice links and cancelling their renewals.
    stars_subscriptions: StarsSubscriptionApi | None = None

    @property
    def signup_bonus_cents(self) -> int:
        return signup_bonus_cents(self.settings, self.plan)

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic

    async def close(self) -> None:
        for service in (self.verification, self.messaging, self.ai):
            close = getattr(service, "close", None)
            if close is not None:
                await close()
        await self.db.dispose()


def build_services(settings: Settings, db: Database | None = None) -> Services:
    """The container; a database given without a keyring gets the one the settings call for (crypto.keyring_for)."""
    plan = plan_providers(settings)
    if db is None or db.keyring is None:
        keyring = keyring_for(settings, all_sandbox=plan.all_sandbox)
        if not keyring.encrypts:
            # `cumapp run` has refused this already unless every provider is simulated (sandbox on PostgreSQL).
            log.warning("DATA_ENCRYPTION_KEYS is unset: SMS bodies and AI notes are stored in plain text")
        if db is None:
            db = Database(settings.database_url, keyring=keyring, pool_size=settings.database_pool_size)
        else:
            db.use_keyring(keyring)
    services = Services(settings=settings, db=db, plan=plan)
    services.metrics.up_since.set_to_current_time()
    return services
