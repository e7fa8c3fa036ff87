"""The verification provider as the service uses it: every call counted and timed for /metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

from core.platform.metrics import Metrics
from core.providers.verification import ProviderError, VerificationProvider
from core.verification.errors import failure_kind

T = TypeVar("T")


class ProviderGateway:
    """Holds the one provider every part of the service talks to (read at call time, so it can be swapped)."""

    def __init__(self, provider: VerificationProvider, metrics: Metrics) -> None:
        self.provider = provider
        self.metrics = metrics

    @property
    def name(self) -> str:
        return self.provider.name

    async def call(self, op: str, call: Awaitable[T]) -> T:
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
