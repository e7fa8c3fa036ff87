"""The configured SMS providers as messaging sees them: the webhook URLs we give them, what a segment costs at
each, which is cheapest for a country, and metered calls to them."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from core.messaging.errors import MessagingError
from core.platform.metrics import Metrics
from core.platform.settings import Settings
from core.providers.sms import SmsProvider, SmsProviderError

log = logging.getLogger(__name__)

# Paths of our webhook routes; webhooks/ imports them from here so the URLs we give providers and the routes
# we serve cannot drift apart.
TWILIO_SMS_PATH = "/webhooks/twilio/sms"
TWILIO_STATUS_PATH = "/webhooks/twilio/status"
VONAGE_INBOUND_PATH = "/webhooks/vonage/inbound"
VONAGE_STATUS_PATH = "/webhooks/vonage/status"


def with_markup(cost_cents: int, markup_percent: int) -> int:
    """Provider cost plus the tier's markup, rounded up to the cent so a fraction is never given away."""
    return cost_cents + (cost_cents * markup_percent + 99) // 100


class SmsGateway:
    """The providers by name, plus the settings and metrics every call to them needs."""

    def __init__(self, providers: dict[str, SmsProvider], settings: Settings, metrics: Metrics) -> None:
        self.providers = dict(providers)
        self.settings = settings
        self.metrics = metrics

    async def close(self) -> None:
        for provider in self.providers.values():
            try:
                await provider.close()
            except Exception:
                log.exception("closing SMS provider %s failed", provider.name)

    # -- URLs given to providers --

    def inbound_url(self, provider: str) -> str:
        path = VONAGE_INBOUND_PATH if provider == "vonage" else TWILIO_SMS_PATH
        return f"{self.settings.public_base_url}{path}"

    def status_url(self, provider: str) -> str:
        path = VONAGE_STATUS_PATH if provider == "vonage" else TWILIO_STATUS_PATH
        return f"{self.settings.public_base_url}{path}"

    # -- costs --

    def segment_cost(self, provider: str, country: str) -> int:
        """Cents per segment from SMS costs ("*" for unlisted countries); an unlisted provider costs the most."""
        table = self.settings.sms_costs.get(provider)
        if table is not None:
            cost = table.get(country.upper(), table.get("*"))
            if cost is not None:
                return cost
        return max([1, *(c for costs in self.settings.sms_costs.values() for c in costs.values())])

    def cheapest_provider(self, country: str, candidates: list[str] | None = None) -> str:
        """The configured provider with the lowest cost for `country`; ties go to the plan's order."""
        names = [name for name in (candidates or list(self.providers)) if name in self.providers]
        if not names:
            raise MessagingError("sms_number_unavailable")
        return min(names, key=lambda name: (self.segment_cost(name, country), names.index(name)))

    async def call(self, provider: SmsProvider, call: Awaitable[Any]) -> Any:
        """Await one provider call, counting its outcome and time in the provider metrics."""
        started = time.monotonic()
        try:
            result = await call
        except SmsProviderError:
            self.metrics.provider_calls.labels(provider.name, "refused").inc()
            raise
        except Exception:
            self.metrics.provider_calls.labels(provider.name, "error").inc()
            raise
        finally:
            self.metrics.provider_latency.labels(provider.name).observe(time.monotonic() - started)
        self.metrics.provider_calls.labels(provider.name, "ok").inc()
        return result
