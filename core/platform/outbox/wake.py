"""Waking dispatchers after a commit that enqueued: in-process, and by NOTIFY/LISTEN for what nobody local sends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from core.models import OutboxDelivery
from core.platform.clock import utcnow

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "cumapp_outbox"

# Session.info keys; the session lives for one transaction, these for the part of it before the commit.
_INFO_WAKE = "cumapp_outbox_wake"
_INFO_NOTIFIED = "cumapp_outbox_notified"
_INFO_EXPRESS = "cumapp_outbox_express"  # the transaction's _Express
# Options of SQLAlchemy's asyncpg dialect that asyncpg.connect() would take for server settings and refuse.
_SQLALCHEMY_ONLY_QUERY_KEYS = frozenset({"prepared_statement_cache_size", "prepared_statement_name_func"})
RECONNECT_MAX_SECONDS = 2.0

Waker = Callable[[], None]


class ExpressTaker(Protocol):
    """A dispatcher that takes deliveries claimed for it as they were enqueued (see `express_claim`)."""

    claim_seconds: float

    def reserve(self, platform: str) -> int | None:
        """One free sending slot for a chat of `platform`: our liveness key, or None (no room, no sender)."""

    def release(self, slots: int) -> None:
        """Slots reserved by a transaction that ended."""

    def take(self, deliveries: list[OutboxDelivery]) -> None:
        """Send these now; they are claimed for us, and the transaction that claimed them has committed."""


@dataclass
class ExpressClaim:
    """The claim columns of a delivery enqueued as already claimed by this process's dispatcher."""

    claimed_by: int
    claimed_until: datetime

    def columns(self) -> dict[str, Any]:
        return {"state": "sending", "claimed_by": self.claimed_by, "claimed_until": self.claimed_until,
                "attempts": 1}


_wakers: list[tuple[Waker, Engine | None, int | None, ExpressTaker | None]] = []


SentHook = Callable[[AsyncSession, list[tuple[OutboxDelivery, datetime]]], Awaitable[None]]
# Run in the transaction that records deliveries of a kind as sent (e.g. stamping when a code reached the chat).
SENT_HOOKS: dict[str, SentHook] = {}


def register_sent_hook(kind: str, hook: SentHook) -> None:
    SENT_HOOKS[kind] = hook


def register_waker(
    callback: Waker, *, engine: Engine | None = None, origin: int | None = None, express: ExpressTaker | None = None
) -> Callable[[], None]:
    """Call `callback` after every commit that enqueued a delivery (only through `engine`, when given).

    `origin`: the liveness key of the dispatcher behind `callback`, stamped on what this process enqueues
    through `engine` (see `origin_of`). `express`: that dispatcher, when it takes deliveries claimed for it as
    they are enqueued (see `express_claim`). Returns the function that unregisters it. Callbacks run inside the
    committing task, so they must only schedule work (set an event), never do it.
    """
    entry = (callback, engine, origin, express)
    _wakers.append(entry)

    def unregister() -> None:
        if entry in _wakers:
            _wakers.remove(entry)

    return unregister


def origin_of(session: AsyncSession) -> int | None:
    """The instance that will send what this session enqueues: the one dispatcher of this process on its
    database. None (any instance sends it) when this process runs no dispatcher there, as a CLI command, or
    several, as some tests do."""
    engine = _root_engine(session.sync_session)
    origins = {origin for _callback, only_engine, origin, _express in _wakers if only_engine is engine}
    if len(origins) != 1:
        return None
    return next(iter(origins))


def express_claim(session: AsyncSession, platform: str) -> ExpressClaim | None:
    """A claim for this process's dispatcher on a delivery this transaction enqueues to an idle chat of
    `platform`, or None: no single dispatcher here, not on PostgreSQL, or it has no free sending slot.

    Such a delivery is inserted as `sending` and handed to the dispatcher at commit (`hand_over`), so a relay
    or a code goes out without waiting for the dispatcher's claim transaction (3 ms at p50, twice that at p90,
    on the relay path's 13). The caller checks that the chat has nothing waiting or being sent, which the
    claim's own rule would have checked; the slot is given back at the end of the transaction if unused."""
    if session.bind.dialect.name != "postgresql":
        return None
    engine = _root_engine(session.sync_session)
    takers = {express for _callback, only_engine, _origin, express in _wakers if only_engine is engine}
    if len(takers) != 1:
        return None
    taker = next(iter(takers))
    if taker is None:
        return None
    sync = session.sync_session
    if sync.get_nested_transaction() is not None:
        return None  # a savepoint rolled back would take the row with it, not the hand-over
    claimed_by = taker.reserve(platform)
    if claimed_by is None:
        return None
    express = sync.info.setdefault(_INFO_EXPRESS, _Express(taker))
    express.slots += 1
    return ExpressClaim(claimed_by, utcnow() + timedelta(seconds=taker.claim_seconds))


@dataclass
class _Express:
    """A transaction's express claims: the slots it reserved, the deliveries to hand over at commit."""

    taker: ExpressTaker
    slots: int = 0
    deliveries: list[OutboxDelivery] = field(default_factory=list)


def hand_over(session: AsyncSession, deliveries: list[OutboxDelivery]) -> None:
    """Deliveries inserted with an `express_claim` of this transaction: the dispatcher sends them at commit."""
    express = session.sync_session.info.get(_INFO_EXPRESS)
    if express is not None:
        express.deliveries.extend(deliveries)


def _take_express(session: Session) -> None:
    express = session.info.get(_INFO_EXPRESS)
    if express is not None and express.deliveries:
        deliveries, express.deliveries = express.deliveries, []
        express.taker.take(deliveries)


def _transaction_end(session: Session, transaction: Any) -> None:
    # Whatever ended the transaction (a commit, a rollback, a commit that failed, the session closed), its
    # reserved slots go back; a slot kept by mistake would shrink the dispatcher for good.
    if _INFO_EXPRESS not in session.info or transaction.nested or transaction.parent is not None:
        return
    express = session.info.pop(_INFO_EXPRESS, None)
    if express is not None:
        express.taker.release(express.slots)


def _fire_wakers(engine: Engine | None) -> None:
    for callback, only_engine, _origin, _express in list(_wakers):
        if only_engine is not None and only_engine is not engine:
            continue
        try:
            callback()
        except Exception:
            log.exception("outbox waker failed")


def _root_engine(session: Session) -> Engine | None:
    bind = session.get_bind()
    return getattr(bind, "engine", None)


def _after_commit(session: Session) -> None:
    info = session.info
    if _INFO_WAKE not in info and _INFO_EXPRESS not in info and _INFO_NOTIFIED not in info:
        return
    # A savepoint's release fires this too; only the real commit makes the rows visible to a dispatcher.
    if session.get_nested_transaction() is not None:
        return
    session.info.pop(_INFO_NOTIFIED, None)
    _take_express(session)
    if session.info.pop(_INFO_WAKE, False):
        _fire_wakers(_root_engine(session))


def _after_rollback(session: Session) -> None:
    info = session.info
    if _INFO_WAKE not in info and _INFO_NOTIFIED not in info:
        return
    if session.get_nested_transaction() is not None:
        return
    session.info.pop(_INFO_NOTIFIED, None)
    session.info.pop(_INFO_WAKE, None)


# Listened to once for every session, not per session as each transaction began to need them: with the API events'
# two, five listens cost 38 us of CPU per transaction, on every inbound batch and relay (docs/perf/process.md). A
# session with none of our keys in its info returns at the first line.
event.listen(Session, "after_commit", _after_commit)
event.listen(Session, "after_rollback", _after_rollback)
event.listen(Session, "after_transaction_end", _transaction_end)


async def arrange_wake(session: AsyncSession) -> None:
    """Wake dispatchers once this transaction commits: in this process by event, elsewhere by NOTIFY."""
    sync = session.sync_session
    sync.info[_INFO_WAKE] = True
    if session.bind.dialect.name != "postgresql":
        return
    # What this process's own dispatcher will send (origin_of) is its alone until STEAL_AFTER or its death,
    # which the others learn by polling and by its lock: a NOTIFY would wake nobody who may act on it, and it
    # cost every enqueueing transaction a round trip. Only deliveries anyone may send are announced.
    if origin_of(session) is not None:
        return
    # PostgreSQL holds a NOTIFY until commit and drops it on rollback; one per transaction is enough, but a
    # NOTIFY inside a savepoint may be rolled back with it, so those are never counted as done.
    root = sync.get_transaction()
    if sync.get_nested_transaction() is None and sync.info.get(_INFO_NOTIFIED) is root:
        return
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    if sync.get_nested_transaction() is None:
        sync.info[_INFO_NOTIFIED] = root


def listen_dsn(url: URL) -> str:
    """The asyncpg DSN of an engine URL, for the connections we keep outside the pool."""
    query = {key: value for key, value in url.query.items() if key not in _SQLALCHEMY_ONLY_QUERY_KEYS}
    return url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


async def wait(flag: asyncio.Event, seconds: float) -> None:
    """Until `flag` is set or `seconds` have passed, whichever comes first."""
    try:
        await asyncio.wait_for(flag.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        pass


class NotifyListener:
    """Keeps a LISTEN connection open; any notification, and every reconnection, sets the dispatcher's `wakeup`."""

    def __init__(self, url: URL, instance_id: str, *, wakeup: asyncio.Event, stop_event: asyncio.Event) -> None:
        self.url = url
        self.instance_id = instance_id
        self._wakeup = wakeup
        self._stop_event = stop_event
        # Set when the connection may have changed (closed, or the dispatcher stopping): time to look at it.
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()
        self._stopping = False
        self.connection: asyncpg.Connection | None = None
        # Observability for health pages and tests: LISTEN connections opened, notifications heard.
        self.connects = 0
        self.notifications_received = 0

    def reset(self) -> None:
        """Ready to run again after a stop."""
        self._stopping = False
        self.changed.clear()
        self.ready.clear()

    def stop(self) -> None:
        """End `run()` at its next check."""
        self._stopping = True
        self.changed.set()

    async def run(self) -> None:
        dsn = listen_dsn(self.url)
        failures = 0
        while not self._stopping:
            try:
                connection = await asyncpg.connect(
                    dsn, timeout=5, server_settings={"application_name": f"cumapp-outbox {self.instance_id}"[:63]}
                )
            except Exception as error:
                # Capped low: PostgreSQL back from a restart must be heard within seconds, and a refused
                # connection costs nothing. One line per 10 s of outage, not one per attempt.
                delay = min(0.5 * 2**failures, RECONNECT_MAX_SECONDS)
                if failures % 5 == 0:
                    log.warning("outbox %s: LISTEN connection failed (%s); retrying every %.1f s", self.instance_id,
                                error, RECONNECT_MAX_SECONDS)
                failures += 1
                await wait(self._stop_event, delay)
                continue
            self.connection = connection
            try:
                connection.add_termination_listener(lambda _connection: self.changed.set())
                await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
                failures = 0
                self.connects += 1
                self.ready.set()
                self._wakeup.set()  # anything committed while we were not listening
                while not self._stopping:
                    await wait(self.changed, 15.0)
                    self.changed.clear()
                    if self._stopping or connection.is_closed():
                        break
                    # A half-open TCP connection never reports itself; a query does.
                    await connection.fetchval("SELECT 1", timeout=5)
            except Exception as error:
                if not self._stopping:
                    log.warning("outbox %s: LISTEN connection lost (%s)", self.instance_id, error)
            finally:
                self.connection = None
                if not connection.is_closed():
                    try:
                        await connection.close(timeout=2)
                    except Exception:
                        connection.terminate()

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.notifications_received += 1
        self._wakeup.set()
