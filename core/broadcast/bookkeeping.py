"""Committing a broadcast's outcomes: four times a second while it is sent, and once more when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from core.broadcast.job import INTERRUPTED, Job, Outcome
from core.broadcast.progress import ProgressCard
from core.broadcast.store import RecipientStore
from core.platform.clock import utcnow

log = logging.getLogger(__name__)


class Bookkeeper:
    """Commits a job's outcomes, keeps its lease and figures current, notices Pause and Cancel, and leaves the
    broadcast to the next holder (or finished) when the job ends."""

    def __init__(self, store: RecipientStore, card: ProgressCard, *, tick_seconds: float) -> None:
        self.store = store
        self.card = card
        self.tick_seconds = tick_seconds

    async def ticker(self, job: Job) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.poked.wait(), self.tick_seconds)
            job.poked.clear()
            try:
                await self.tick(job, renew=True)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("broadcast %s: committing progress failed (%d in a row)", job.broadcast_id, failures)
            if time.monotonic() - job.last_edit >= self.card.interval:
                await self.card.update(job)

    async def tick(self, job: Job, *, renew: bool) -> None:
        """Commit outcomes (fenced by `attempts`, so a stale runner changes nothing), renew the lease, read the
        state: paused or cancelled stops this job."""
        outcomes, job.outcomes = job.outcomes, []
        now = utcnow()
        try:
            row = await self.store.commit(job.broadcast_id, outcomes, now, renew=renew)
        except BaseException:
            job.outcomes[:0] = outcomes
            raise
        if any(outcome.state == "pending" for outcome in outcomes):
            job.rewinds += 1  # after the commit, so a lane restarting its cursor finds them pending
        if row is None:
            job.stop("lost")
            return
        figures = job.figures
        figures.state, figures.total, figures.sent, figures.failed, figures.blocked = (
            row.state, row.total, row.sent, row.failed, row.blocked,
        )
        if row.state != "running":
            job.stop(row.state)

    async def drain(self, job: Job) -> None:
        """Wait for the sends in flight, then commit their outcomes."""
        while job.in_flight:
            await asyncio.wait(set(job.in_flight), timeout=1.0)
        await self.tick(job, renew=not job.stopped())

    async def finish(self, job: Job) -> None:
        """Leave the broadcast in a state the next holder (or nobody, when it is done) can pick up from."""
        reason = job.stop_reason or "shutdown"
        job.stop(reason)
        if job.in_flight:
            _, stuck = await asyncio.wait(set(job.in_flight), timeout=5.0)
            stuck_recipients = [job.in_flight[task] for task in stuck if task in job.in_flight]
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
            # Cancelled mid-send: the platform may have taken it, so it is settled as interrupted, never resent.
            job.outcomes += [Outcome(recipient, "failed", INTERRUPTED) for recipient in stuck_recipients]
        try:
            await self.tick(job, renew=False)
        except Exception:
            log.exception("broadcast %s: committing the last outcomes failed; their claims will be settled by "
                          "the next holder", job.broadcast_id)
        reason = job.stop_reason or reason
        try:
            reason, broadcast = await self.store.release(job.broadcast_id, job.unsent, reason)
        except Exception:
            log.exception("broadcast %s: releasing it failed; its lease will lapse", job.broadcast_id)
            return
        if broadcast is not None:
            job.figures = broadcast
        if reason in ("finished", "paused", "cancelled") or job.figures.state in ("finished", "cancelled"):
            await self.card.update(job, force=True, final=True)
        if reason == "finished":
            log.info("broadcast %s finished: %d sent, %d failed, %d blocked", job.broadcast_id, job.figures.sent,
                     job.figures.failed, job.figures.blocked)
