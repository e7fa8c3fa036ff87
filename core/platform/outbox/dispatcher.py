"""The dispatcher: claims due deliveries, sends them concurrently, records outcomes, retries and recovers."""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.models import OutboxDelivery
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.db_faults import database_unavailable, describe
from core.platform.metrics import Metrics
from core.platform.outbox import store
from core.platform.outbox.attempts import DeliveryAttempts
from core.platform.outbox.liveness import InstanceLiveness
from core.platform.outbox.messages import ChatSender
from core.platform.outbox.store import Outcome, outbox_health
from core.platform.outbox.wake import NotifyListener, register_waker, wait

log = logging.getLogger(__name__)

# Transient failures (5xx, 429, timeouts, network errors) are retried this long before a delivery is parked.
DEFAULT_RETRY_FOR = 24 * 3600.0


class OutboxDispatcher:
    """Claims due deliveries, sends them through the platform's ChatSender and records what happened.

    A claim belongs to this process while it lives (see liveness.py): when a process dies, another instance,
    or this one restarted, takes its claims over within seconds. A delivery recorded as sent is never sent
    again. Delivery is at least once only for a send in flight at the moment of death: the platform may have
    accepted it before the database heard of it, and Telegram has no idempotency key to ask.
    """

    def __init__(
        self,
        db: Database,
        senders: dict[str, ChatSender],
        *,
        metrics: Metrics | None = None,
        retry_for: float = DEFAULT_RETRY_FOR,
        base_backoff: float = 0.5,
        max_backoff: float = 10.0,
        batch_size: int = 50,
        concurrency: int = 16,
        claim_seconds: float = 60,
        on_parked: Callable[[OutboxDelivery], Awaitable[None]] | None = None,
        instance_id: str | None = None,
        poll_interval: float = 1.0,
        send_timeout: float = 30.0,
        liveness: InstanceLiveness | None = None,
        takeover_interval: float = 0.5,
    ) -> None:
        if batch_size < 1 or concurrency < 1 or claim_seconds <= 0 or retry_for < 0:
            raise ValueError("batch_size, concurrency and claim_seconds must be positive, retry_for not negative")
        self.db = db
        self.senders = dict(senders)
        self.metrics = metrics
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._claim_chunk = min(batch_size, max(1, concurrency // 2))
        self.claim_seconds = claim_seconds
        self.on_parked = on_parked
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # One per process, shared with the scheduler, when the composition root passes it; else our own.
        self._owns_liveness = liveness is None
        self.liveness = liveness or InstanceLiveness(db, name=f"outbox {self.instance_id}")
        # The fallback poll: catches notifications lost while the LISTEN connection was down.
        self.poll_interval = poll_interval
        self.attempts = DeliveryAttempts(
            self.senders, metrics=metrics, retry_for=retry_for, base_backoff=base_backoff, max_backoff=max_backoff,
            send_timeout=send_timeout,
        )
        # How often dead instances are looked for and our own claims renewed: takeover within a few seconds.
        self.takeover_interval = takeover_interval
        self.health_interval = 15.0
        self._is_postgresql = db.engine.dialect.name == "postgresql"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._listener = NotifyListener(
            db.engine.url, self.instance_id, wakeup=self._wakeup, stop_event=self._stop_event
        )
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[asyncio.Task[None], OutboxDelivery] = {}
        self._done: list[Outcome] = []
        # Sending slots promised to transactions that may enqueue deliveries claimed for us (see wake.express_claim).
        self._reserved = 0
        self._retry_timers: list[float] = []
        self._unregister_waker: Callable[[], None] | None = None

    @property
    def listen_connects(self) -> int:
        """LISTEN connections opened, for health pages and tests."""
        return self._listener.connects

    @property
    def notifications_received(self) -> int:
        """Notifications heard on the LISTEN connection, for health pages and tests."""
        return self._listener.notifications_received

    # -- lifecycle --

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopping

    async def start(self) -> None:
        """Prove this instance alive, take over what dead ones left claimed, then dispatch until `stop()`."""
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        for flag in (self._wakeup, self._stop_event):
            flag.clear()
        self._listener.reset()
        if self._owns_liveness:
            await self.liveness.start()
        try:
            await self._recover(at_start=True)
        except BaseException:
            if self._owns_liveness:
                await self.liveness.stop()
            raise
        origin = self.liveness.key if self._is_postgresql else None
        self._unregister_waker = register_waker(
            self.wake, engine=self.db.engine.sync_engine, origin=origin, express=self if self._is_postgresql else None
        )
        if self._is_postgresql:
            self._tasks.append(asyncio.create_task(self._listener.run(), name=f"outbox-listen-{self.instance_id}"))
            try:
                # Returning before LISTEN is in place would let a commit right after start() go unnoticed.
                await asyncio.wait_for(self._listener.ready.wait(), timeout=5.0)
            except TimeoutError:
                log.warning("outbox %s: LISTEN not ready after 5 s; relying on polling", self.instance_id)
        self._tasks.append(asyncio.create_task(self._maintain(), name=f"outbox-maintain-{self.instance_id}"))
        self._tasks.append(asyncio.create_task(self._dispatch(), name=f"outbox-dispatch-{self.instance_id}"))
        self._wakeup.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; let in-flight sends finish for `grace` seconds, then release the rest to pending."""
        if not self._tasks:
            return
        deadline = asyncio.get_running_loop().time() + grace
        self._stopping = True
        if self._unregister_waker is not None:
            self._unregister_waker()
            self._unregister_waker = None
        for flag in (self._stop_event, self._wakeup):
            flag.set()
        self._listener.stop()
        # The loops end on their own at the next check; cancelling one mid-transaction would waste a connection.
        _, stuck = await asyncio.wait(self._tasks, timeout=max(grace, 1.0))
        for task in stuck:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("outbox %s: task ended with an error", self.instance_id, exc_info=result)
        self._tasks.clear()

        if self._in_flight:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            _, unfinished = await asyncio.wait(set(self._in_flight), timeout=remaining)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._done:
            try:
                await self._cycle(limit=0)
            except Exception:
                log.exception(
                    "outbox %s: could not record %d outcomes at stop; they are taken over once our lock is released",
                    self.instance_id, len(self._done),
                )
                self._done.clear()
        self._retry_timers.clear()
        if self._owns_liveness:
            # Last: our claims are free for the others once our lock goes, and every send has ended by now.
            await self.liveness.stop()

    def wake(self) -> None:
        """Look for due deliveries now; safe to call from any thread."""
        if not self._call_in_loop(self._wakeup.set):
            self._wakeup.set()

    def _call_in_loop(self, callback: Callable[..., None], *args: Any) -> bool:
        """Run `callback` on our event loop: now when called on it, else soon; False when we have no loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            callback(*args)
        else:
            loop.call_soon_threadsafe(callback, *args)
        return True

    # -- deliveries claimed for us as they are enqueued (wake.express_claim) --

    def reserve(self, platform: str) -> int | None:
        """A free sending slot for a chat of `platform`: our liveness key, which the delivery is claimed by."""
        if self._stopping or not self._tasks or not self.liveness.alive or platform not in self.senders:
            return None
        if len(self._in_flight) + self._reserved >= self.concurrency:
            return None
        self._reserved += 1
        return self.liveness.key

    def release(self, slots: int) -> None:
        self._reserved = max(0, self._reserved - slots)

    def take(self, deliveries: list[OutboxDelivery]) -> None:
        """Send deliveries claimed for us in a transaction that has just committed, as a claim's would be. Never
        started here, they are taken over like any dead instance's claims."""
        self._call_in_loop(self._start_sends, deliveries)

    def _start_sends(self, deliveries: list[OutboxDelivery]) -> None:
        if self._stopping:
            # Claimed for us but not started: back to pending by our next start, or another instance's takeover.
            log.info("outbox %s: stopping, %d deliveries claimed at enqueue left for takeover", self.instance_id,
                     len(deliveries))
            return
        for delivery in deliveries:
            task = asyncio.create_task(self._send_in_background(delivery), name=f"outbox-send-{delivery.id}")
            self._in_flight[task] = delivery

    async def run_once(self) -> int:
        """Claim one batch, send it and record the outcomes; returns how many deliveries were claimed.

        For tests and benchmarks, and for a process that drives dispatching itself; not alongside `start()`.
        Its claims carry our liveness key without our lock necessarily being held: should the caller vanish
        mid-batch, the others see its claims as a dead instance's.
        """
        async with self.db.transaction() as session:
            claimed = await self._claim(session, self.batch_size)
        if not claimed:
            return 0
        semaphore = asyncio.Semaphore(self.concurrency)

        async def attempt(delivery: OutboxDelivery) -> Outcome:
            async with semaphore:
                return await self.attempts.attempt(delivery, delivery.attempts)

        outcomes = await asyncio.gather(*(attempt(delivery) for delivery in claimed))
        async with self.db.transaction() as session:
            applied = await self._record(session, list(outcomes))
        await self._after_record(applied)
        return len(claimed)

    # -- the loops --

    async def _dispatch(self) -> None:
        failures = 0
        while not self._stopping:
            self._wakeup.clear()
            # Without our liveness lock a claim would look like a dead instance's to the others: record only.
            room = self.concurrency - len(self._in_flight) - self._reserved
            limit = min(self.batch_size, room) if self.liveness.alive else 0
            if self._in_flight and limit < self._claim_chunk:
                # Sends are still queued for the flood budget: a claim now would fetch one delivery per completed
                # send, each a transaction that walks the waiting rows up to its limit (and over all the rows of
                # chats still being sent to, claim_plan.py). Claimed once half the slots are free, the budget
                # still has the other half to send meanwhile.
                limit = 0
            try:
                claimed = await self._cycle(limit) if limit > 0 or self._done else []
                failures = 0
            except Exception as error:
                failures += 1
                self._log_failure("claiming or recording", error, failures)
                # Capped at 2 s: the database back from a restart is used again within seconds.
                await wait(self._stop_event, min(2.0, 0.25 * 2**min(failures, 7)))
                continue
            for delivery in claimed:
                task = asyncio.create_task(self._send_in_background(delivery), name=f"outbox-send-{delivery.id}")
                self._in_flight[task] = delivery
            if limit > 0 and len(claimed) == limit:
                continue  # a full batch: more are probably due already
            await wait(self._wakeup, self._next_timeout())

    async def _send_in_background(self, delivery: OutboxDelivery) -> None:
        task = asyncio.current_task()
        outcome: Outcome | None = None
        try:
            outcome = await self.attempts.attempt(delivery, delivery.attempts)
        finally:
            if outcome is None:
                # Cancelled at stop: give the delivery back rather than leave it claimed until it expires.
                outcome = Outcome(
                    delivery, delivery.attempts, "pending", utcnow(), next_attempt_at=utcnow(),
                    error="released: dispatcher stopped during the send", failing_since=delivery.failing_since,
                )
            self._done.append(outcome)
            if task is not None:
                self._in_flight.pop(task, None)
            self._wakeup.set()

    async def _maintain(self) -> None:
        assert self._loop is not None
        next_health = self._loop.time() + self.health_interval
        # Claims that ran out, and the renewal of ours, matter on the scale of claim_seconds, not of a takeover.
        slow_interval = max(self.takeover_interval, min(self.claim_seconds / 4, 5.0))
        next_slow = self._loop.time()
        failures = 0
        while not self._stopping:
            await wait(self._stop_event, self.takeover_interval)
            if self._stopping:
                return
            try:
                slow = self._loop.time() >= next_slow
                if await self._recover(expired=slow):
                    self._wakeup.set()
                if slow:
                    next_slow = self._loop.time() + slow_interval
                    if self.liveness.alive:
                        await store.renew_claims(self.db, self.liveness.key, self.claim_seconds)
                if self.metrics is not None and self._loop.time() >= next_health:
                    next_health = self._loop.time() + self.health_interval
                    health = await outbox_health(self.db)
                    self.metrics.outbox_depth.set(health["pending"])
                    self.metrics.outbox_oldest_seconds.set(health["oldest_pending_seconds"])
                failures = 0
            except Exception as error:
                failures += 1
                self._log_failure("maintenance", error, failures)

    def _log_failure(self, what: str, error: Exception, failures: int) -> None:
        """An outage of the database is a WARNING now and then; anything else is a defect, with its trace."""
        if database_unavailable(error):
            if failures == 1 or failures % 20 == 0:
                log.warning("outbox %s: %s failed, the database is unavailable (%s); retrying", self.instance_id,
                            what, describe(error))
            return
        log.error("outbox %s: %s failed", self.instance_id, what, exc_info=error)

    def _next_timeout(self) -> float:
        """Until the next poll, or sooner when a retry we scheduled comes due."""
        assert self._loop is not None
        now = self._loop.time()
        while self._retry_timers and self._retry_timers[0] <= now:
            heapq.heappop(self._retry_timers)
        if self._retry_timers:
            return min(self.poll_interval, self._retry_timers[0] - now)
        return self.poll_interval

    # -- database steps --

    async def _cycle(self, limit: int) -> list[OutboxDelivery]:
        """Record finished attempts and claim the next batch in one transaction, so a chat's next message
        becomes claimable in the same commit that marks the previous one sent."""
        outcomes, self._done = self._done, []
        try:
            async with self.db.transaction() as session:
                applied = await self._record(session, outcomes) if outcomes else []
                claimed = await self._claim(session, limit) if limit > 0 else []
        except BaseException:
            self._done[:0] = outcomes
            raise
        await self._after_record(applied)
        return claimed

    def claim_statement(self, now: datetime, limit: int) -> Any:
        """The SELECT that picks due deliveries whose chat has nothing earlier still waiting or being sent."""
        return store.claim_statement(now, limit, self.senders, lock_rows=self._is_postgresql,
                                     me=self.liveness.key if self._is_postgresql else None)

    async def _claim(self, session: AsyncSession, limit: int) -> list[OutboxDelivery]:
        """Claim due deliveries; must be the last query of its transaction (it changes the planner's settings)."""
        if not self.senders:
            return []
        planned = bool(self._tasks) and self._is_postgresql
        if self._tasks and not await self.liveness.check_own(session, plan_claim=planned):
            return []
        return await store.claim(
            session, self.senders, limit, claim_seconds=self.claim_seconds, lock_rows=self._is_postgresql,
            claimed_by=self.liveness.key, planned=planned, mine_first=self._is_postgresql,
        )

    async def _record(self, session: AsyncSession, outcomes: list[Outcome]) -> list[Outcome]:
        """Write the outcomes whose claim is still ours; returns those."""
        return await store.record(session, outcomes, lock_rows=self._is_postgresql, instance_id=self.instance_id)

    async def _after_record(self, applied: list[Outcome]) -> None:
        """Effects that must follow the commit: timers, the parked counter and the admins' callback."""
        for outcome in applied:
            store.mirror(outcome)
            if outcome.state == "sent":
                continue
            delivery = outcome.delivery
            if outcome.state == "pending" and outcome.next_attempt_at is not None and self._loop is not None:
                delay = (outcome.next_attempt_at - utcnow()).total_seconds()
                # A hair late, so the row is due by the database's comparison when we look.
                heapq.heappush(self._retry_timers, self._loop.time() + max(0.0, delay) + 0.002)
            if outcome.state == "parked" and outcome.alert:
                if self.metrics is not None:
                    self.metrics.deliveries_parked.labels(delivery.platform).inc()
                if self.on_parked is not None:
                    try:
                        await asyncio.wait_for(self.on_parked(delivery), timeout=30)
                    except Exception:
                        log.exception("outbox %s: on_parked failed for delivery %s", self.instance_id, delivery.id)

    async def _recover(self, *, at_start: bool = False, expired: bool = True) -> int:
        """Give back deliveries claimed by instances that are gone (or hung): see store.release_orphans."""
        return await store.release_orphans(
            self.db, self.liveness, self.instance_id, at_start=at_start, expired=expired
        )
