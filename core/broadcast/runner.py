"""The broadcast runner: finds running broadcasts, takes a lease on each, and sends it through lanes and a ticker.

Exactly once
------------
A recipient goes `pending` → `sending` (claimed under the lease, a few at a time, just before its turn) → `sent`
(or `failed`, `blocked`). The outcome is committed within `tick_seconds` (0.25 s) of the platform's answer. A
retryable refusal (429, 5xx, connection error: the platform did not take the message) puts it back to `pending`.

The one window we cannot close is between the platform accepting a message and our commit: Bot API has no
idempotency key and no way to ask whether a message arrived. We choose *at most once* there: a recipient found in
`sending` after a crash (or after a send timed out, where the outcome is equally unknown) is marked `failed` with
the reason "interrupted", never sent again. So no user ever gets a broadcast twice; after a crash, at most two
claim batches plus the sends in flight (about 20 chats at 29/s) may miss it, and the figures say so. A lease that
lapsed while its holder still runs cannot cause a duplicate either: every write is fenced by the recipient's
`attempts` and state, and the new holder never sends what it finds in `sending`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
import weakref
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update

from core.broadcast.bookkeeping import Bookkeeper
from core.broadcast.job import Job
from core.broadcast.progress import ProgressCard
from core.broadcast.sending import Lanes
from core.broadcast.store import RecipientStore
from core.models import Broadcast
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.db_faults import database_unavailable, describe
from core.platform.metrics import Metrics
from core.platform.outbox import ChatSender
from core.platform.pacing import (
    DISCORD_RATE,
    OTHER_RATE,
    TELEGRAM_PAID_RATE,
    TELEGRAM_RATE,
    BotBudget,
    PlatformBudgets,
)

log = logging.getLogger(__name__)

_runners: weakref.WeakSet[BroadcastRunner] = weakref.WeakSet()


def kick(db: Database) -> None:
    """Tell this process's runners on the same database to look for work now (after start, resume, pause)."""
    for runner in list(_runners):
        if runner.db.engine is db.engine or runner.db.url == db.url:
            runner.kick()


class BroadcastRunner:
    """Sends running broadcasts at the platform limit, exactly once per chat, resuming after restarts.

    `start()` adopts every running broadcast without a live lease, now and every `poll_interval` seconds (so a
    broadcast left by a crashed instance is taken over when its lease lapses); `kick()` makes it look at once.
    Each broadcast is sent by one task holding its lease: a lane per platform claims a few recipients at a time
    just before their turn and sends each as bulk traffic, which takes the slots of the bot's flood budget that
    answers, relays and alerts leave free (core/platform/pacing.py); a ticker commits outcomes,
    renews the lease and reads the state four times a second, so Pause and Cancel stop new sends within 0.25 s.
    """

    def __init__(
        self,
        db: Database,
        senders: dict[str, ChatSender],
        metrics: Metrics | None = None,
        *,
        rate_per_second: float = TELEGRAM_RATE,
        paid_rate_per_second: float = TELEGRAM_PAID_RATE,
        discord_rate_per_second: float = DISCORD_RATE,
        other_rate_per_second: float = OTHER_RATE,
        budgets: dict[str, BotBudget] | None = None,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        tick_seconds: float = 0.25,
        progress_interval: float = 3.0,
        max_attempts: int = 6,
        send_timeout: float = 30.0,
        concurrency: int | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.senders = dict(senders)
        self.pacing = PlatformBudgets(
            self.senders, telegram_rate=rate_per_second, paid_rate=paid_rate_per_second,
            discord_rate=discord_rate_per_second, other_rate=other_rate_per_second, budgets=budgets,
        )
        self.db = db
        self.metrics = metrics
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.instance_id = (instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")[:64]
        self._store = RecipientStore(db, self.instance_id, lease_seconds, frozenset(self.senders))
        self._lanes = Lanes(
            self.pacing.paced(self.senders), self.pacing, self._store, metrics, tick_seconds=tick_seconds, max_attempts=max_attempts,
            send_timeout=send_timeout, concurrency=concurrency,
        )
        self._books = Bookkeeper(self._store, ProgressCard(self.senders, progress_interval), tick_seconds=tick_seconds)
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._job_state: dict[int, Job] = {}
        self._not_before: dict[int, float] = {}
        self._wakeup = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._abandoned = False
        _runners.add(self)

    # -- wiring helpers --

    @property
    def budgets(self) -> dict[str, BotBudget]:
        """Each platform's bot budget; a sender that paces itself brings its own, the others share these."""
        return self.pacing.bots

    @property
    def messages_sent(self) -> int:
        """Sent by this instance, for tests and benchmarks."""
        return self._lanes.messages_sent

    def paced_senders(self) -> dict[str, ChatSender]:
        """The same senders for the outbox, on the budgets broadcasts draw from (the sender itself where it paces
        itself, as the real front ends do)."""
        return self.pacing.paced(self.senders)

    # -- lifecycle --

    @property
    def running(self) -> bool:
        return self._supervisor is not None and not self._supervisor.done()

    @property
    def active_broadcasts(self) -> set[int]:
        return {bid for bid, task in self._jobs.items() if not task.done()}

    async def start(self) -> None:
        """Adopt running broadcasts now (a restart resumes them) and keep looking until `stop()`."""
        if self.running:
            return
        self._stopping = False
        self._abandoned = False
        self._wakeup.set()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"broadcast-supervisor-{self.instance_id}")

    def kick(self) -> None:
        """Look for work now, and have every running job read its state now (a Pause pressed here)."""
        self._wakeup.set()
        for job in self._job_state.values():
            job.poked.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop sending: in-flight sends get `grace` seconds, outcomes are committed, claims and leases released
        so a restarted instance resumes at once."""
        self._stopping = True
        self._wakeup.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        for job in self._job_state.values():
            job.stop("shutdown")
        tasks = [task for task in self._jobs.values() if not task.done()]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=grace + 5.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def abandon(self) -> None:
        """Stop at once as a crash would: nothing is committed and leases are left to lapse (tests, benchmarks)."""
        self._abandoned = True
        self._stopping = True
        tasks: list[asyncio.Task[Any]] = [t for t in (self._supervisor,) if t is not None]
        for job in self._job_state.values():
            tasks += list(job.in_flight)
            if job.edit_task is not None:
                tasks.append(job.edit_task)
        tasks += list(self._jobs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._supervisor = None

    async def wait(self, broadcast_id: int) -> None:
        """Until this instance's task for the broadcast has ended (finished, paused, cancelled or stopped)."""
        task = self._jobs.get(broadcast_id)
        if task is not None:
            await asyncio.shield(task)

    # -- adopting broadcasts --

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.poll_interval)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self.adopt()
                failures = 0
            except Exception as error:
                failures += 1
                if database_unavailable(error):
                    # An outage is not our defect: one line, and a short wait, so work resumes soon after it ends.
                    log.warning("broadcast runner %s: database unavailable (%s)", self.instance_id, describe(error))
                    await asyncio.sleep(min(5.0, 0.5 * 2 ** min(failures, 3)))
                    continue
                log.exception("broadcast runner %s: looking for work failed", self.instance_id)
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))

    async def adopt(self) -> list[int]:
        """Take the lease on every running broadcast nobody holds (or whose holder's lease lapsed) and run it.

        Also the job the scheduler may call periodically; returns the broadcasts this call started."""
        now = utcnow()
        async with self.db.read() as session:
            candidates = list(
                await session.scalars(
                    select(Broadcast.id).where(
                        Broadcast.state == "running",
                        or_(
                            Broadcast.lease_owner.is_(None),
                            Broadcast.lease_until.is_(None),
                            Broadcast.lease_until < now,
                            Broadcast.lease_owner == self.instance_id,
                        ),
                    )
                )
            )
        started: list[int] = []
        for broadcast_id in candidates:
            if self._stopping or broadcast_id in self.active_broadcasts:
                continue
            if self._not_before.get(broadcast_id, 0.0) > time.monotonic():
                continue
            if await self._take_lease(broadcast_id):
                self._jobs[broadcast_id] = asyncio.create_task(
                    self._run(broadcast_id), name=f"broadcast-{broadcast_id}"
                )
                started.append(broadcast_id)
        return started

    async def _take_lease(self, broadcast_id: int) -> bool:
        now = utcnow()
        async with self.db.transaction() as session:
            taken = await session.scalar(
                update(Broadcast)
                .where(
                    Broadcast.id == broadcast_id,
                    Broadcast.state == "running",
                    or_(
                        Broadcast.lease_owner.is_(None),
                        Broadcast.lease_until.is_(None),
                        Broadcast.lease_until < now,
                        Broadcast.lease_owner == self.instance_id,
                    ),
                )
                .values(lease_owner=self.instance_id, lease_until=now + timedelta(seconds=self.lease_seconds))
                .returning(Broadcast.id)
                .execution_options(synchronize_session=False)
            )
        return taken is not None

    # -- one broadcast --

    async def _run(self, broadcast_id: int) -> None:
        job: Job | None = None
        ticker: asyncio.Task[None] | None = None
        try:
            job = Job.for_broadcast(*await self._store.prepare(broadcast_id))
            self._job_state[broadcast_id] = job
            ticker = asyncio.create_task(self._books.ticker(job), name=f"broadcast-{broadcast_id}-ticker")
            while not job.stopped():
                platforms = await self._store.pending_platforms(job.broadcast_id)
                if not platforms:
                    await self._books.drain(job)
                    if not await self._store.pending_platforms(job.broadcast_id) and not job.in_flight:
                        job.stop("finished")
                    continue
                await asyncio.gather(*(self._lanes.run(job, platform) for platform in platforms))
                await self._books.drain(job)
        except asyncio.CancelledError:
            if self._abandoned:
                raise
            if job is not None:
                job.stop("shutdown")
        except Exception as error:
            if database_unavailable(error):
                log.warning("broadcast %s: database unavailable (%s); resuming in 5 s", broadcast_id, describe(error))
                self._not_before[broadcast_id] = time.monotonic() + 5.0
            else:
                log.exception("broadcast %s: runner %s failed; releasing it for 30 s", broadcast_id, self.instance_id)
                # Not adopted again at once by this instance: a lasting fault would otherwise log every second.
                self._not_before[broadcast_id] = time.monotonic() + 30.0
            if job is not None:
                job.stop("shutdown")
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            if job is not None and not self._abandoned:
                await self._books.finish(job)
            self._job_state.pop(broadcast_id, None)
