"""Leadership among instances: the one job only one instance may do at a time (polling Telegram's getUpdates).

On PostgreSQL the leader is whoever holds a session-level advisory lock, taken with `pg_try_advisory_lock` on a
connection of its own and kept for as long as it leads. The others try again every `retry` seconds, so when the
leader stops, dies (kill -9: the kernel closes its socket and PostgreSQL releases the lock at once) or loses its
connection, another one leads within a few seconds. A leader that loses its lock connection steps down as soon as
it notices (at once for a closed socket, within `check` seconds for one that went silent), before anyone else
could have taken the lock for long.

On SQLite there is one process: it leads from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from core.platform.db import Database
from core.platform.outbox.wake import listen_dsn, wait

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0  # how often a follower tries to take the lock
CHECK_SECONDS = 2.0  # how often the leader makes sure its lock connection still answers


def lock_key(job: str) -> int:
    """A stable 64-bit advisory lock key for `job`. Single-key advisory locks never meet the instance liveness
    locks, which use the two-key form."""
    return int.from_bytes(hashlib.sha256(f"cumapp:{job}".encode()).digest()[:8], "big", signed=True)


class Leadership:
    """Runs `on_elected` when this instance becomes the leader for `job`, `on_deposed` when it stops being it."""

    def __init__(
        self,
        db: Database,
        job: str,
        *,
        on_elected: Callable[[], Awaitable[None]],
        on_deposed: Callable[[], Awaitable[None]],
        retry: float = RETRY_SECONDS,
        check: float = CHECK_SECONDS,
        name: str = "",
    ) -> None:
        self.db = db
        self.job = job
        self.key = lock_key(job)
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.retry = retry
        self.check = check
        self.name = name or job
        self.is_postgresql = db.engine.dialect.name == "postgresql"
        self.leading = False
        self.elections = 0  # how many times this instance became the leader, for tests and logs
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._failures = 0

    async def start(self) -> None:
        """Lead at once on SQLite; on PostgreSQL, try now and keep trying in the background."""
        if not self.is_postgresql:
            await self._elect()
            return
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name=f"leader-{self.job}")

    async def stop(self) -> None:
        """Step down (the job stops first, then the lock goes, so two instances never do it at once)."""
        task, self._task = self._task, None
        self._stop.set()
        self._changed.set()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), 10.0)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.leading:
            await self._depose()

    async def _elect(self) -> None:
        self.leading = True
        self.elections += 1
        await self.on_elected()

    async def _depose(self) -> None:
        self.leading = False
        await self.on_deposed()

    async def _run(self) -> None:
        dsn = listen_dsn(self.db.engine.url)
        while not self._stop.is_set():
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(
                    dsn, timeout=5,
                    server_settings={
                        "application_name": f"cumapp-leader {self.job}"[:63],
                        # A leader whose host vanished is noticed by PostgreSQL in about 5 + 2 × 3 s.
                        "tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3",
                    },
                )
                while not self._stop.is_set():
                    if await connection.fetchval("SELECT pg_try_advisory_lock($1)", self.key):
                        break
                    await wait(self._stop, self.retry)
                else:
                    break
                connection.add_termination_listener(lambda _connection: self._changed.set())
                self._changed.clear()
                log.info("%s: this instance leads now", self.name)
                self._failures = 0
                await self._elect()
                while not self._stop.is_set():
                    await wait(self._changed, self.check)
                    self._changed.clear()
                    if self._stop.is_set():
                        break
                    # A closed socket reports itself; a half-open one only to a query.
                    await connection.fetchval("SELECT 1", timeout=self.check)
            except Exception as error:
                if not self._stop.is_set():
                    self._log_failure(error)
            finally:
                if self.leading:
                    with contextlib.suppress(Exception):
                        await self._depose()
                    if not self._stop.is_set():
                        log.warning("%s: this instance stepped down; another one may lead now", self.name)
                if connection is not None and not connection.is_closed():
                    try:
                        await connection.close(timeout=2)  # the lock goes with the session
                    except Exception:
                        connection.terminate()
            await wait(self._stop, self.retry)

    def _log_failure(self, error: Exception) -> None:
        # One line at the first failure and then every 15th (about 30 s): a database outage is not a log flood.
        if self._failures % 15 == 0:
            log.warning("%s: cannot hold the leader lock (%s); trying again every %.0f s", self.name, error,
                        self.retry)
        self._failures += 1
