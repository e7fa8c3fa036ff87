"""One delivery attempt: send through the platform's ChatSender, then decide between sent, retry and parked."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from dataclasses import replace
from datetime import timedelta

from core.models import OutboxDelivery
from core.platform.clock import utcnow
from core.platform.metrics import Metrics
from core.platform.outbox.media import resolve_media
from core.platform.outbox.messages import ChatSender, DeliveryError, OutgoingMessage
from core.platform.outbox.store import Outcome, clip
from core.platform.pacing import rank_for_priority, traffic

log = logging.getLogger(__name__)

_MESSAGE_ID_MAX = 64
_REPLACED_KEPT = 1000


class DeliveryAttempts:
    """Sends claimed deliveries one at a time and turns each result into the Outcome to record.

    Only a permanent refusal parks a delivery at once (blocked, chat not found, a request that can never
    succeed). Anything else (5xx, 429, timeouts, network errors, an exception we did not expect) is retried
    with a backoff capped at `max_backoff` seconds for `retry_for` seconds from the first failure of the run,
    a day by default, so a platform outage of minutes or hours delays messages but loses none.
    """

    def __init__(
        self,
        senders: dict[str, ChatSender],
        *,
        metrics: Metrics | None,
        retry_for: float,
        base_backoff: float,
        max_backoff: float,
        send_timeout: float,
    ) -> None:
        self.senders = senders
        self.metrics = metrics
        self.retry_for = retry_for
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.send_timeout = send_timeout
        self._random = random.Random()
        # (platform, chat, message id) → the message that replaced it when an edit could not be made.
        self._replaced: OrderedDict[tuple[str, str, str], str] = OrderedDict()

    def backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff, self.base_backoff * 2 ** max(0, min(attempt - 1, 30)))
        # Jitter keeps deliveries that failed together (a platform outage) from retrying in lockstep; downwards,
        # so the cap holds.
        return delay * self._random.uniform(0.75, 1.0)

    @staticmethod
    def _level(delivery: OutboxDelivery, fence: int) -> int:
        """WARNING for the first failure of a run and every 20th try after it; an outage of hours retries every
        10 s, which would otherwise be a line per chat every 10 s."""
        return logging.WARNING if delivery.failing_since is None or fence % 20 == 0 else logging.DEBUG

    def _count(self, platform: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(platform, outcome).inc()

    async def attempt(self, delivery: OutboxDelivery, fence: int) -> Outcome:
        """Send once and decide what follows; never raises except on cancellation."""
        context = {"delivery_id": delivery.id, "platform": delivery.platform, "chat_id": delivery.chat_id}
        sender = self.senders[delivery.platform]
        try:
            message = OutgoingMessage.from_payload(delivery.payload)
            message = self._follow_replacement(delivery, message)
        except (KeyError, TypeError, ValueError) as error:
            log.error("outbox: delivery %s has an unreadable payload: %r", delivery.id, error, extra=context)
            return self._failure(delivery, fence, f"unreadable payload: {error!r}", permanent=True)
        try:
            async with asyncio.timeout(self.send_timeout):
                if message.media:  # fetched at every attempt: a failed fetch is retried like a failed send
                    message = await resolve_media(message)
                # In the bot's flood budget, relays and codes go before alerts, and both before broadcasts.
                with traffic(rank_for_priority(delivery.priority)):
                    message_id = await sender.send(delivery.chat_id, message)
        except DeliveryError as error:
            log.log(
                self._level(delivery, fence), "outbox: delivery %s to %s:%s refused (attempt %d): %s", delivery.id,
                delivery.platform, delivery.chat_id, fence, error.reason, extra=context,
            )
            return self._failure(
                delivery, fence, error.reason, retry_after=error.retry_after, permanent=error.permanent,
                blocked=error.blocked,
            )
        except TimeoutError:
            # A slow chat platform is not our defect: WARNING, like any refusal from outside.
            log.log(
                self._level(delivery, fence), "outbox: delivery %s to %s:%s timed out after %.1f s (attempt %d)",
                delivery.id, delivery.platform, delivery.chat_id, self.send_timeout, fence, extra=context,
            )
            return self._failure(delivery, fence, f"send timed out after {self.send_timeout:.1f} s")
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            if (delivery.last_error or "").startswith(f"{type(error).__name__}:"):
                # The same defect again: its trace is in the log already; once per retry would flood it.
                log.warning("outbox: delivery %s to %s:%s failed unexpectedly again (attempt %d): %s", delivery.id,
                            delivery.platform, delivery.chat_id, fence, reason, extra=context)
            else:
                log.error(
                    "outbox: delivery %s to %s:%s failed unexpectedly (attempt %d)", delivery.id, delivery.platform,
                    delivery.chat_id, fence, exc_info=True, extra=context,
                )
            return self._failure(delivery, fence, reason)
        self._note_replacement(delivery, message, str(message_id))
        now = utcnow()
        self._count(delivery.platform, "sent")
        if self.metrics is not None and delivery.source_received_at is not None:
            latency = (now - delivery.source_received_at).total_seconds()
            self.metrics.relay_latency.labels(delivery.kind).observe(max(0.0, latency))
        return Outcome(delivery, fence, "sent", now, platform_message_id=clip(str(message_id), _MESSAGE_ID_MAX))

    def _follow_replacement(self, delivery: OutboxDelivery, message: OutgoingMessage) -> OutgoingMessage:
        """An edit of a message that an earlier edit had to replace (deleted, too old) goes to the replacement, so
        a status card that moves on after that stays one message instead of one per step."""
        if message.edit_message_id is None:
            return message
        target = message.edit_message_id
        for _ in range(10):  # a chain of replacements; ids are new each time, the bound is only a guard
            newer = self._replaced.get((delivery.platform, delivery.chat_id, target))
            if newer is None:
                break
            target = newer
        return message if target == message.edit_message_id else replace(message, edit_message_id=target)

    def _note_replacement(self, delivery: OutboxDelivery, message: OutgoingMessage, sent_id: str) -> None:
        if message.edit_message_id is None or sent_id in ("", message.edit_message_id):
            return
        self._replaced[(delivery.platform, delivery.chat_id, message.edit_message_id)] = sent_id
        while len(self._replaced) > _REPLACED_KEPT:
            self._replaced.popitem(last=False)

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
        failing_since = delivery.failing_since or now
        failing_for = (now - failing_since).total_seconds()
        if permanent or failing_for >= self.retry_for:
            self._count(delivery.platform, "parked")
            why = "refused for good" if permanent else f"failed for {failing_for / 3600:.1f} h ({fence} attempts)"
            log.warning("outbox: delivery %s to %s:%s %s, parked: %s", delivery.id, delivery.platform,
                        delivery.chat_id, why, reason)
            return Outcome(delivery, fence, "parked", now, error=reason, alert=True)
        self._count(delivery.platform, "retry")
        delay = retry_after if retry_after is not None else self.backoff(fence)
        return Outcome(
            delivery, fence, "pending", now, next_attempt_at=now + timedelta(seconds=delay), error=reason,
            failing_since=failing_since,
        )
