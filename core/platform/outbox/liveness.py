"""Instance liveness: a process proves it is alive by holding a PostgreSQL advisory lock for as long as it lives.

A claim (an outbox delivery being sent, a periodic job's lease) carries the key of the instance that made it, and
lasts as long as that instance lives, not for a fixed lease: when a process dies (kill -9, out of memory, host
gone) PostgreSQL ends its session and releases the lock, and the other instances, or the process itself when it
restarts under a new key, take over what it held within seconds. This is how graphile-worker and Oban tell live
workers from dead ones.

SQLite has one process: whatever was claimed before this process started is orphaned by definition.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.platform.db import Database
from core.platform.outbox.claim_plan import CLAIM_PLAN_SETTINGS
from core.platform.outbox.wake import listen_dsn, wait

log = logging.getLogger(__name__)

# The first half of every instance lock's key ("CUMA"), so they never meet another advisory lock in the database.
NAMESPACE = 0x43554D41

# Seconds our own lock must have been held before we call another instance dead. After a PostgreSQL restart
# every instance reconnects at once; this gives the others time to take their locks back first.
DEFAULT_GRACE = 2.0
# Seconds an instance must have been seen dead before its claims are taken: a lock connection that drops and
# comes back at once (a network blip, an operator's pg_terminate_backend) does not cost its sends twice.
DEFAULT_CONFIRM = 1.0
# Seconds between attempts to take the lock back after the connection was lost.
RETRY_SECONDS = 0.5
START_TIMEOUT = 10.0


def _new_key() -> int:
    return secrets.randbelow(2**31 - 2) + 1


class InstanceLiveness:
    """This process's proof of life on PostgreSQL, and the test of another instance's.

    `start()` opens a dedicated connection holding the session-level advisory lock (NAMESPACE, key) and keeps it:
    a lost connection is reopened and the same key taken again. TCP keepalives make PostgreSQL notice a vanished
    host in about 10 s; a killed process is noticed at once, because its socket is closed by the kernel.
    """

    def __init__(
        self,
        db: Database,
        *,
        grace: float = DEFAULT_GRACE,
        confirm: float = DEFAULT_CONFIRM,
        retry: float = RETRY_SECONDS,
        name: str = "",
    ) -> None:
        self.db = db
        self.key = _new_key()
        self.grace = grace
        self.confirm = confirm
        self.retry = retry
        self.name = name or f"instance {self.key}"
        self.is_postgresql = db.engine.dialect.name == "postgresql"
        self.connection: asyncpg.Connection | None = None
        self.acquisitions = 0  # how many times the lock was taken (1 + reconnections), for tests and health
        self._held_since: float | None = None
        self._suspects: dict[int, float] = {}
        self._changed = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._held = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failures = 0

    # -- own life --

    @property
    def alive(self) -> bool:
        """True while this process holds its lock (always on SQLite)."""
        return not self.is_postgresql or self._held_since is not None

    @property
    def steady(self) -> bool:
        """True once our own lock has been held for `grace` seconds: from then on we may judge the others."""
        if not self.is_postgresql:
            return True
        return self._held_since is not None and time.monotonic() - self._held_since >= self.grace

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Take the lock and keep it from now on; raises TimeoutError when PostgreSQL cannot be reached in 10 s."""
        if self._task is not None or not self.is_postgresql:
            return
        self._stopping = False
        self._stop_event.clear()
        self._held.clear()
        self._task = asyncio.create_task(self._keep(), name=f"liveness-{self.key}")
        try:
            await asyncio.wait_for(self._held.wait(), START_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Let go of the lock: whatever this process still has claimed is free for the others at once."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._stop_event.set()
        self._changed.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 5.0)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._held_since = None

    def lost(self) -> None:
        """Someone found our lock free (a claim checks it): reconnect now instead of at the next check."""
        if self._held_since is not None:
            log.warning("%s: the liveness lock is not held any more; taking it again", self.name)
        self._held_since = None
        self._changed.set()

    async def _keep(self) -> None:
        dsn = listen_dsn(self.db.engine.url)
        while not self._stopping:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(
                    dsn, timeout=5,
                    server_settings={
                        "application_name": f"cumapp-liveness {self.key}"[:63],
                        # A host that vanished without closing its socket is noticed in about 5 + 2 × 3 s.
                        "tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3",
                    },
                )
                connection.add_termination_listener(lambda _connection: self._changed.set())
                if not await connection.fetchval("SELECT pg_try_advisory_lock($1, $2)", NAMESPACE, self.key):
                    # Another instance is taking over our claims this moment (it holds our key until it
                    # commits); we take the key back right after.
                    raise RuntimeError(f"lock ({NAMESPACE}, {self.key}) is held elsewhere")
            except Exception as error:
                if connection is not None:
                    connection.terminate()
                self._log_failure(error)
                await wait(self._stop_event, self.retry)
                continue
            self.connection = connection
            self._held_since = time.monotonic()
            self._suspects.clear()  # seen while we were away: look again
            self.acquisitions += 1
            if self.acquisitions > 1:
                log.warning("%s: liveness lock taken again after %d failed attempt(s)", self.name, self._failures)
            self._failures = 0
            self._held.set()
            try:
                while not self._stopping:
                    await wait(self._changed, 5.0)
                    self._changed.clear()
                    if self._stopping or connection.is_closed() or self._held_since is None:
                        break
                    # A half-open TCP connection never reports itself; a query does.
                    await connection.fetchval("SELECT 1", timeout=5)
            except Exception as error:
                if not self._stopping:
                    log.warning("%s: liveness connection lost (%s)", self.name, error)
            finally:
                self._held_since = None
                self.connection = None
                if not connection.is_closed():
                    try:
                        await connection.close(timeout=2)  # the lock goes with the session
                    except Exception:
                        connection.terminate()

    def _log_failure(self, error: Exception) -> None:
        # One line at the first failure and then every 20 attempts (10 s): an outage is not a log flood.
        if self._failures % 20 == 0:
            log.warning("%s: cannot take the liveness lock (%s); retrying every %.1f s", self.name, error, self.retry)
        self._failures += 1

    # -- the others --

    async def check_own(self, session: AsyncSession, *, plan_claim: bool = False) -> bool:
        """In a claim's transaction: True when our lock is held, so the claim will be ours and no one else's.

        Taking our own key from another connection fails exactly while our lock connection holds it; if it
        succeeds, the lock is gone (our connection died and we have not noticed yet) and nothing may be claimed.
        `plan_claim` also does store.prepare_claim_plan's setting in the same round trip (set_config with
        is_local is SET LOCAL), since every claim needs both.
        """
        if not self.is_postgresql:
            return True
        if self._held_since is None:
            return False
        statement = "SELECT pg_try_advisory_xact_lock(:ns, :key)"
        if plan_claim:
            statement += f", {CLAIM_PLAN_SETTINGS}"
        free = await session.scalar(text(statement), {"ns": NAMESPACE, "key": self.key})
        if free:
            self.lost()
            return False
        return True

    async def dead_among(self, session: AsyncSession, keys: Iterable[int]) -> set[int]:
        """The instances among `keys` that are dead and whose claims may be taken over now.

        Call inside the transaction that takes the claims over: a dead instance's key stays locked by us until
        it commits, so its process, should it come back under that key, waits until the takeover is done.
        Empty until our own lock has been held `grace` seconds, and for `confirm` seconds after an instance is
        first seen dead.
        """
        others = sorted({key for key in keys if key != self.key})
        if not others or not self.is_postgresql or not self.steady:
            return set()
        rows = await session.execute(
            text("SELECT k FROM unnest(CAST(:keys AS integer[])) AS k WHERE pg_try_advisory_xact_lock(:ns, k)"),
            {"keys": others, "ns": NAMESPACE},
        )
        dead_now = {int(row[0]) for row in rows}
        now = time.monotonic()
        for key in list(self._suspects):
            if key not in dead_now:
                del self._suspects[key]  # alive again, or its claims are gone
        confirmed: set[int] = set()
        for key in dead_now:
            first_seen = self._suspects.setdefault(key, now)
            if now - first_seen >= self.confirm:
                confirmed.add(key)
        return confirmed

    def forget(self, keys: Iterable[int]) -> None:
        """The claims of these dead instances were taken over; nothing more to watch."""
        for key in keys:
            self._suspects.pop(key, None)

    async def instances_alive(self) -> int | None:
        """How many instances hold their lock in this database now (None on SQLite, or when it cannot be told)."""
        if not self.is_postgresql:
            return None
        try:
            async with self.db.read() as session:
                count = await session.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = :ns "
                        "AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    ),
                    {"ns": NAMESPACE},
                )
        except Exception:
            return None
        return int(count or 0)
