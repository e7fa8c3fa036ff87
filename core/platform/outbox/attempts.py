"""One delivery attempt: send through the platform's ChatSender, then decide between sent, retry and parked."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta

from core.models import OutboxDelivery
from core.platform.clock import utcnow
from core.platform.metrics import Metrics
from core.platform.outbox.messages import ChatSender, DeliveryError, OutgoingMessage
from core.platform.outbox.store import Outcome, clip

log = logging.getLogger(__name__)

_MESSAGE_ID_MAX = 64


class DeliveryAttempts:
    """Sends claimed deliveries one at a time and turns each result into the Outcome to record."""

    def __init__(
        self,
        senders: dict[str, ChatSender],
        *,
        metrics: Metrics | None,
        max_attempts: int,
        base_backoff: float,
        max_backoff: float,
        send_timeout: float,
    ) -> None:
        self.senders = senders
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.send_timeout = send_timeout
        self._random = random.Random()

    def backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff, self.base_backoff * 2 ** max(0, attempt - 1))
        # Jitter keeps deliveries that failed together (a platform outage) from retrying in lockstep.
        return delay + self._random.uniform(0, delay / 4)

    def _count(self, platform: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(platform, outcome).inc()

    async def attempt(self, delivery: OutboxDelivery, fence: int) -> Outcome:
        """Send once and decide what follows; never raises except on cancellation."""
        context = {"delivery_id": delivery.id, "platform": delivery.platform, "chat_id": delivery.chat_id}
        sender = self.senders[delivery.platform]
        try:
            message = OutgoingMessage.from_payload(delivery.payload)
        except (KeyError, TypeError, ValueError) as error:
            log.error("outbox: delivery %s has an unreadable payload: %r", delivery.id, error, extra=context)
            return self._failure(delivery, fence, f"unreadable payload: {error!r}", permanent=True)
        try:
            async with asyncio.timeout(self.send_timeout):
                message_id = await sender.send(delivery.chat_id, message)
        except DeliveryError as error:
            log.warning(
                "outbox: delivery %s to %s:%s refused (attempt %d): %s", delivery.id, delivery.platform,
                delivery.chat_id, fence, error.reason, extra=context,
            )
            return self._failure(
                delivery, fence, error.reason, retry_after=error.retry_after, permanent=error.permanent,
                blocked=error.blocked,
            )
        except TimeoutError:
            # A slow chat platform is not our defect: WARNING, like any refusal from outside.
            log.warning(
                "outbox: delivery %s to %s:%s timed out after %.1f s (attempt %d)", delivery.id,
                delivery.platform, delivery.chat_id, self.send_timeout, fence, extra=context,
            )
            return self._failure(delivery, fence, f"send timed out after {self.send_timeout:.1f} s")
        except Exception as error:
            log.error(
                "outbox: delivery %s to %s:%s failed unexpectedly (attempt %d)", delivery.id, delivery.platform,
                delivery.chat_id, fence, exc_info=True, extra=context,
            )
            return self._failure(delivery, fence, f"{type(error).__name__}: {error}")
        now = utcnow()
        self._count(delivery.platform, "sent")
        if self.metrics is not None and delivery.source_received_at is not None:
            latency = (now - delivery.source_received_at).total_seconds()
            self.metrics.relay_latency.labels(delivery.kind).observe(max(0.0, latency))
        return Outcome(delivery, fence, "sent", now, platform_message_id=clip(str(message_id), _MESSAGE_ID_MAX))

    def _failure(
        self,
        delivery: OutboxDelivery,
        fence: int,
        reason: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
        blocked: bool = False,
    ) -> Outcome:
        now = utcnow()
        if blocked:
            # Users block bots all the time; that is no news for the admins, only for the identity.
            self._count(delivery.platform, "blocked")
            log.info("outbox: %s:%s is unreachable (%s); delivery %s parked", delivery.platform,
                     delivery.chat_id, reason, delivery.id)
            return Outcome(delivery, fence, "parked", now, error=reason, blocked=True)
        if permanent or fence >= self.max_attempts:
            self._count(delivery.platform, "parked")
            why = "refused for good" if permanent else f"failed {fence} times"
            log.warning("outbox: delivery %s to %s:%s %s, parked: %s", delivery.id, delivery.platform,
                      delivery.chat_id, why, reason)
            return Outcome(delivery, fence, "parked", now, error=reason, alert=True)
        self._count(delivery.platform, "retry")
        delay = retry_after if retry_after is not None else self.backoff(fence)
        return Outcome(
            delivery, fence, "pending", now, next_attempt_at=now + timedelta(seconds=delay), error=reason
        )
