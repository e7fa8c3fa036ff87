"""Periodic jobs on APScheduler, each claimed through the database so only one instance runs it at a time.

A job's lease belongs to the instance that holds it while that instance lives: with the process's liveness
(core.platform.outbox.liveness) a dead holder's lease is taken at the next run elsewhere, not when it runs out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import or_, select, update

from core.models import JobLease
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.db_faults import database_unavailable, describe
from core.platform.outbox.liveness import InstanceLiveness

log = logging.getLogger(__name__)
Job = Callable[[], Awaitable[None]]


class Scheduler:
    """APScheduler with a lease per job name in `job_leases`, so several app instances never overlap."""

    def __init__(self, db: Database, *, liveness: InstanceLiveness | None = None) -> None:
        self.db = db
        self.liveness = liveness
        # The liveness key names the owner, so the others can tell whether it still lives.
        self.owner = str(liveness.key) if liveness is not None else uuid.uuid4().hex[:16]
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._running: set[asyncio.Task[None]] = set()

    def add_periodic(self, name: str, job: Job, seconds: float, *, exclusive: bool = True) -> None:
        async def run() -> None:
            task = asyncio.current_task()
            if task is not None:
                # Shutdown cancels and awaits jobs still running, so none is destroyed with the loop.
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            try:
                if exclusive and not await self.claim(name, lease_seconds=max(seconds * 3, 30)):
                    return
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if database_unavailable(error):
                    # An outage, not a defect: it says so once per run, without a traceback.
                    log.warning("periodic job %s skipped: the database is unavailable (%s)", name, describe(error))
                else:
                    log.exception("periodic job %s failed", name)

        self._scheduler.add_job(
            run, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True, next_run_time=utcnow()
        )

    async def claim(self, name: str, *, lease_seconds: float) -> bool:
        """Take or renew the lease on `name`; False when another live instance holds it."""
        if self.liveness is not None and not self.liveness.alive:
            return False  # the others may be taking our leases over right now
        now = utcnow()
        until = now + timedelta(seconds=lease_seconds)
        async with self.db.transaction() as session:
            lease = await session.get(JobLease, name, with_for_update=True)
            if lease is None:
                session.add(JobLease(name=name, owner=self.owner, lease_until=until))
                try:
                    await session.flush()
                except Exception:
                    return False
                return True
            takeable = or_(JobLease.owner == self.owner, JobLease.lease_until < now)
            if lease.owner != self.owner and lease.lease_until >= now and self.liveness is not None:
                holder = int(lease.owner) if lease.owner.isdigit() else None
                if holder is not None and holder in await self.liveness.dead_among(session, [holder]):
                    log.warning("periodic job %s: taken over from instance %s, which is gone", name, holder)
                    takeable = JobLease.owner == lease.owner
            result = await session.execute(
                update(JobLease).where(JobLease.name == name, takeable).values(owner=self.owner, lease_until=until)
            )
            return result.rowcount == 1

    async def holder(self, name: str) -> str | None:
        async with self.db.read() as session:
            return await session.scalar(select(JobLease.owner).where(JobLease.name == name))

    def start(self) -> None:
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler.running:
            # No new runs; APScheduler's shutdown would cancel jobs in progress mid-query, so they finish first.
            self._scheduler.pause()
        running = list(self._running)
        if running:
            _, late = await asyncio.wait(running, timeout=5)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        try:
            async with self.db.transaction() as session:
                await session.execute(
                    update(JobLease).where(JobLease.owner == self.owner).values(lease_until=utcnow())
                )
        except Exception as error:
            if not database_unavailable(error):
                raise
            # Our leases are taken over anyway once our liveness lock is gone.
            log.warning("scheduler: could not release the job leases (%s)", describe(error))
