"""Sending one broadcast's recipients: a lane per platform claims a few ahead and sends each once, as bulk traffic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque

from core.broadcast.job import INTERRUPTED, Job, Outcome, Recipient
from core.broadcast.store import RecipientStore
from core.platform.metrics import Metrics
from core.platform.outbox import ChatSender, DeliveryError
from core.platform.pacing import PlatformBudgets, Rank, Traffic, Withdrawn, traffic

log = logging.getLogger(__name__)


class Lanes:
    """Sends a job's claimed recipients through the platforms' senders, and turns each platform answer into an
    outcome: sent, blocked, failed for good, or pending again with a backoff.

    `senders` take their slots from the bots' flood budgets (`PlatformBudgets.paced`); every send here is bulk
    traffic, so it only gets the slots answers, relays and alerts leave free, and gives its place up within
    0.25 s of a pause or cancel."""

    def __init__(
        self,
        senders: dict[str, ChatSender],
        budgets: PlatformBudgets,
        store: RecipientStore,
        metrics: Metrics | None,
        *,
        tick_seconds: float,
        max_attempts: int,
        send_timeout: float,
        concurrency: int | None,
    ) -> None:
        self.senders = senders
        self.budgets = budgets
        self.store = store
        self.metrics = metrics
        self.tick_seconds = tick_seconds
        self.max_attempts = max_attempts
        self.send_timeout = send_timeout
        self.concurrency = concurrency
        self.messages_sent = 0  # by this instance, for tests and benchmarks

    def _concurrency(self, platform: str, paid: bool) -> int:
        if self.concurrency is not None:
            return self.concurrency
        # Enough sends in flight to keep the rate with ~250 ms round trips, no more.
        return max(4, min(128, math.ceil(self.budgets.rate(platform, paid) * 0.25)))

    async def run(self, job: Job, platform: str) -> None:
        """Send one platform's recipients: claim a few ahead of their turn, send each as its slot comes.

        The next batch is claimed in the background while the current one is sent, so the claim's round trip
        never leaves a slot unused; at most two batches are claimed and unsent at any time."""
        sender = self.senders[platform]
        rate = self.budgets.rate(platform, job.paid)
        batch = max(1, min(500, math.ceil(rate * self.tick_seconds)))
        slots = asyncio.Semaphore(self._concurrency(platform, job.paid))
        queue: deque[Recipient] = deque()
        refill: asyncio.Task[list[Recipient] | None] | None = None
        exhausted = False
        cursor = 0
        rewinds_seen = job.rewinds
        try:
            while not job.stopped():
                if refill is None and not exhausted and len(queue) <= batch // 2:
                    if job.rewinds != rewinds_seen:
                        # Retries went back to pending behind the cursor: start over from the first chat.
                        cursor, rewinds_seen = 0, job.rewinds
                    refill = asyncio.create_task(self.store.claim(job, platform, batch, cursor))
                if refill is not None and (not queue or refill.done()):
                    claimed = await refill
                    refill = None
                    if claimed is None:
                        job.stop("lost")
                        break
                    if claimed:
                        cursor = claimed[-1].identity_id
                    elif cursor:
                        cursor = 0  # one more pass from the start before calling the lane done
                        continue
                    exhausted = not claimed
                    queue.extend(claimed)
                if not queue:
                    if exhausted:
                        return
                    continue
                await self.wait_backoff(job)
                await slots.acquire()
                if job.stopped():
                    slots.release()
                    break
                recipient = queue.popleft()
                task = asyncio.create_task(self._send(job, sender, recipient, slots))
                job.in_flight[task] = recipient
        finally:
            if refill is not None:
                # Let a claim in progress end (cancelling it mid-transaction gains nothing) and release its rows.
                claimed = None
                with contextlib.suppress(Exception):
                    claimed = await asyncio.shield(refill)
                queue.extend(claimed or [])
            job.unsent.extend(queue)

    async def _send(self, job: Job, sender: ChatSender, recipient: Recipient, slots: asyncio.Semaphore) -> None:
        task = asyncio.current_task()
        try:
            await self.wait_backoff(job)
            if job.stopped():
                job.unsent.append(recipient)
                return
            # The slot is taken inside the send, by the budget, in this task: when it comes, the request leaves.
            with traffic(Rank.BULK, stopped=job.stopped) as flow:
                outcome = await self._attempt(job, sender, recipient, flow)
            if outcome is None:
                job.unsent.append(recipient)  # the broadcast stopped before its slot came: nothing was sent
                return
            job.outcomes.append(outcome)
            self._count(recipient.platform, outcome.state)
        finally:
            slots.release()
            if task is not None:
                job.in_flight.pop(task, None)

    @staticmethod
    async def wait_backoff(job: Job) -> None:
        delay = job.backoff_until - time.monotonic()
        while delay > 0 and not job.stopped():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.stopped_event.wait(), delay)
            delay = job.backoff_until - time.monotonic()

    async def _attempt(self, job: Job, sender: ChatSender, recipient: Recipient, flow: Traffic) -> Outcome | None:
        """Send once; None when the broadcast stopped while the send waited for its slot (nothing was sent)."""
        if not recipient.chat_id:
            return Outcome(recipient, "blocked", "no chat")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.send_timeout):
                await sender.send(recipient.chat_id, job.message)
        except Withdrawn:
            return None
        except DeliveryError as error:
            return self._refused(job, recipient, error, started)
        except TimeoutError:
            if flow.requests == 0:
                # Still waiting for a slot (a long flood wait): nothing left, so it may simply go again later.
                return Outcome(recipient, "pending", "waited too long for a slot")
            log.warning("broadcast %s: send to %s:%s timed out; not resent", job.broadcast_id, recipient.platform,
                        recipient.chat_id)
            return Outcome(recipient, "failed", f"timed out: {INTERRUPTED}")
        except Exception as error:
            log.error("broadcast %s: send to %s:%s failed unexpectedly", job.broadcast_id, recipient.platform,
                      recipient.chat_id, exc_info=True)
            return Outcome(recipient, "failed", f"{type(error).__name__}: {error}"[:256])
        job.sent_times.append(time.monotonic())
        job.failures_in_row = 0
        self.messages_sent += 1
        return Outcome(recipient, "sent")

    def _refused(self, job: Job, recipient: Recipient, error: DeliveryError, started: float) -> Outcome:
        reason = error.reason[:256]
        if error.blocked:
            return Outcome(recipient, "blocked", reason)
        if error.permanent:
            log.warning("broadcast %s: %s:%s refused for good: %s", job.broadcast_id, recipient.platform,
                        recipient.chat_id, reason)
            return Outcome(recipient, "failed", reason)
        lowered = reason.lower()
        if "timed out" in lowered and "pool timeout" not in lowered:
            # The request may have reached the platform: the at-most-once rule applies.
            return Outcome(recipient, "failed", f"timed out: {INTERRUPTED}")
        if error.retry_after is not None:
            # The budget holds the whole bot for the flood wait already; the lanes wait it out too.
            job.backoff_until = max(job.backoff_until, time.monotonic() + error.retry_after)
            log.warning("broadcast %s: flood wait of %.1f s honoured", job.broadcast_id, error.retry_after)
        else:
            # The sends in flight when the platform fails all fail together: that is one failure, not eight (a
            # one-second 5xx blip once backed a broadcast off for 30 s). Only a send started since grows the wait.
            if started >= job.escalated_at:
                job.failures_in_row += 1
                job.escalated_at = time.monotonic()
            delay = min(30.0, 0.5 * 2 ** min(job.failures_in_row - 1, 6))
            job.backoff_until = max(job.backoff_until, time.monotonic() + delay)
            log.warning("broadcast %s: %s:%s failed (%s); backing off %.1f s", job.broadcast_id, recipient.platform,
                        recipient.chat_id, reason, delay)
        if recipient.attempts >= self.max_attempts:
            return Outcome(recipient, "failed", f"gave up after {recipient.attempts} attempts: {reason}"[:256])
        return Outcome(recipient, "pending", reason)

    def _count(self, platform: str, outcome: str) -> None:
        if self.metrics is None:
            return
        counter = self.metrics.__dict__.get("_broadcast_messages")
        if counter is None:
            from prometheus_client import Counter

            counter = Counter(
                "cumapp_broadcast_messages_total", "Broadcast sends by platform and outcome", ["platform", "outcome"],
                registry=self.metrics.registry,
            )
            self.metrics.__dict__["_broadcast_messages"] = counter
        counter.labels(platform, outcome).inc()
