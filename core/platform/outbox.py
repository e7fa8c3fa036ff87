"""The transactional outbox: messages to chats are written with what caused them and sent by a dispatcher."""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import asyncpg
from sqlalchemy import Engine, bindparam, event, exists, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, aliased

from core.models import ChatIdentity, OutboxDelivery
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.metrics import Metrics

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "cumapp_outbox"
# A delivery in one of these states still holds its place in its chat's queue.
ACTIVE_STATES = ("pending", "sending")
PAYLOAD_VERSION = 1

_LAST_ERROR_MAX = 512
_MESSAGE_ID_MAX = 64
_DEDUPE_KEY_MAX = 160
# Session.info keys; the session lives for one transaction, these for the part of it before the commit.
_INFO_HOOKED = "cumapp_outbox_hooked"
_INFO_WAKE = "cumapp_outbox_wake"
_INFO_NOTIFIED = "cumapp_outbox_notified"
# Options of SQLAlchemy's asyncpg dialect that asyncpg.connect() would take for server settings and refuse.
_SQLALCHEMY_ONLY_QUERY_KEYS = frozenset({"prepared_statement_cache_size", "prepared_statement_name_func"})


# --- What is sent ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutButton:
    """One inline button: a callback `action`, a link `url`, or a `copy_text` the chat copies on tap."""

    label: str
    action: str | None = None
    url: str | None = None
    copy_text: str | None = None

    def __post_init__(self) -> None:
        targets = [value for value in (self.action, self.url, self.copy_text) if value is not None]
        if len(targets) != 1:
            raise ValueError(f"button {self.label!r} needs exactly one of action, url or copy_text")

    def to_payload(self) -> dict[str, str]:
        data = {"label": self.label}
        for key in ("action", "url", "copy_text"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> OutButton:
        return cls(
            label=str(data["label"]), action=data.get("action"), url=data.get("url"), copy_text=data.get("copy_text")
        )


@dataclass(frozen=True)
class OutgoingMessage:
    """A platform-neutral chat message; `text` is the HTML subset every adapter renders, already escaped."""

    text: str
    buttons: tuple[tuple[OutButton, ...], ...] = ()
    photo_url: str | None = None
    # Where a reply in the chat should be routed, e.g. {"kind": "sms", "conversation_id": 5}.
    reply_context: dict[str, Any] | None = None
    disable_preview: bool = True
    paid_broadcast: bool = False
    # Replace this earlier message of ours (a status card) instead of sending a new one, where the platform can.
    edit_message_id: str | None = None

    def to_payload(self) -> dict[str, Any]:
        """A JSON-safe dict for `OutboxDelivery.payload`."""
        data: dict[str, Any] = {"v": PAYLOAD_VERSION, "text": self.text}
        if self.buttons:
            data["buttons"] = [[button.to_payload() for button in row] for row in self.buttons]
        if self.photo_url is not None:
            data["photo_url"] = self.photo_url
        if self.reply_context is not None:
            data["reply_context"] = dict(self.reply_context)
        if not self.disable_preview:
            data["disable_preview"] = False
        if self.paid_broadcast:
            data["paid_broadcast"] = True
        if self.edit_message_id is not None:
            data["edit_message_id"] = self.edit_message_id
        return data

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> OutgoingMessage:
        buttons = tuple(
            tuple(OutButton.from_payload(button) for button in row) for row in data.get("buttons") or ()
        )
        reply_context = data.get("reply_context")
        return cls(
            text=str(data["text"]),
            buttons=buttons,
            photo_url=data.get("photo_url"),
            reply_context=dict(reply_context) if reply_context is not None else None,
            disable_preview=bool(data.get("disable_preview", True)),
            paid_broadcast=bool(data.get("paid_broadcast", False)),
            edit_message_id=data.get("edit_message_id"),
        )


class DeliveryError(Exception):
    """A chat platform refused a message; the flags tell the dispatcher whether and when to try again."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
        blocked: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        # Seconds the platform asked us to wait (Telegram's 429); honoured exactly instead of the backoff.
        self.retry_after = retry_after
        self.permanent = permanent or blocked
        # The user blocked the bot or left the chat: nothing will get through until they write again.
        self.blocked = blocked


@runtime_checkable
class ChatSender(Protocol):
    """What core needs from a chat front end; each adapter registers one per platform."""

    platform: str

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        """Send one message and return the platform's message id; raise DeliveryError when refused."""
        ...


# --- Wake-ups ---------------------------------------------------------------------------------------------------

Waker = Callable[[], None]
_wakers: list[tuple[Waker, Engine | None]] = []


SentHook = Callable[[AsyncSession, list[tuple[OutboxDelivery, datetime]]], Awaitable[None]]
# Run in the transaction that records deliveries of a kind as sent (e.g. stamping when a code reached the chat).
SENT_HOOKS: dict[str, SentHook] = {}


def register_sent_hook(kind: str, hook: SentHook) -> None:
    SENT_HOOKS[kind] = hook


def register_waker(callback: Waker, *, engine: Engine | None = None) -> Callable[[], None]:
    """Call `callback` after every commit that enqueued a delivery (only through `engine`, when given).

    Returns the function that unregisters it. Callbacks run inside the committing task, so they must only
    schedule work (set an event), never do it.
    """
    entry = (callback, engine)
    _wakers.append(entry)

    def unregister() -> None:
        if entry in _wakers:
            _wakers.remove(entry)

    return unregister


def _fire_wakers(engine: Engine | None) -> None:
    for callback, only_engine in list(_wakers):
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
    # A savepoint's release fires this too; only the real commit makes the rows visible to a dispatcher.
    if session.get_nested_transaction() is not None:
        return
    session.info.pop(_INFO_NOTIFIED, None)
    if session.info.pop(_INFO_WAKE, False):
        _fire_wakers(_root_engine(session))


def _after_rollback(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return
    session.info.pop(_INFO_NOTIFIED, None)
    session.info.pop(_INFO_WAKE, None)


async def _arrange_wake(session: AsyncSession) -> None:
    """Wake dispatchers once this transaction commits: in this process by event, elsewhere by NOTIFY."""
    sync = session.sync_session
    if not sync.info.get(_INFO_HOOKED):
        sync.info[_INFO_HOOKED] = True
        event.listen(sync, "after_commit", _after_commit)
        event.listen(sync, "after_rollback", _after_rollback)
    sync.info[_INFO_WAKE] = True
    if session.bind.dialect.name != "postgresql":
        return
    # PostgreSQL holds a NOTIFY until commit and drops it on rollback; one per transaction is enough, but a
    # NOTIFY inside a savepoint may be rolled back with it, so those are never counted as done.
    root = sync.get_transaction()
    if sync.get_nested_transaction() is None and sync.info.get(_INFO_NOTIFIED) is root:
        return
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    if sync.get_nested_transaction() is None:
        sync.info[_INFO_NOTIFIED] = root


# --- Enqueueing -------------------------------------------------------------------------------------------------


def _insert(session: AsyncSession) -> Any:
    """`INSERT … ON CONFLICT DO NOTHING` in the session's dialect; the dedupe key makes repeats harmless."""
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert


async def enqueue(
    session: AsyncSession,
    *,
    platform: str,
    chat_id: str,
    kind: str,
    message: OutgoingMessage,
    user_id: int | None = None,
    dedupe_key: str | None = None,
    priority: int = 0,
    source_received_at: datetime | None = None,
) -> OutboxDelivery | None:
    """Add a pending delivery in the caller's transaction; None when `dedupe_key` was already used."""
    if dedupe_key is not None and len(dedupe_key) > _DEDUPE_KEY_MAX:
        raise ValueError(f"dedupe_key longer than {_DEDUPE_KEY_MAX} characters")
    now = utcnow()
    statement = (
        _insert(session)(OutboxDelivery)
        .values(
            user_id=user_id, platform=platform, chat_id=str(chat_id), kind=kind, payload=message.to_payload(),
            dedupe_key=dedupe_key, state="pending", priority=priority, attempts=0, next_attempt_at=now,
            source_received_at=source_received_at, created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(OutboxDelivery)
    )
    delivery = await session.scalar(statement, execution_options={"populate_existing": True})
    if delivery is not None:
        await _arrange_wake(session)
    return delivery


async def enqueue_for_user(
    session: AsyncSession,
    user_id: int,
    *,
    kind: str,
    message: OutgoingMessage,
    dedupe_key: str | None = None,
    priority: int = 0,
    source_received_at: datetime | None = None,
) -> list[OutboxDelivery]:
    """One delivery per reachable chat of the user; the dedupe key gets the platform appended per copy."""
    identities = (
        await session.scalars(
            select(ChatIdentity)
            .where(
                ChatIdentity.user_id == user_id,
                ChatIdentity.chat_id.is_not(None),
                ChatIdentity.unreachable_at.is_(None),
            )
            .order_by(ChatIdentity.id)
        )
    ).all()
    deliveries: list[OutboxDelivery] = []
    seen_platforms: set[str] = set()
    for identity in identities:
        assert identity.chat_id is not None
        key = None
        if dedupe_key is not None:
            # A second chat on the same platform (two linked Telegram accounts) needs its own key too.
            suffix = identity.platform if identity.platform not in seen_platforms else (
                f"{identity.platform}:{identity.chat_id}"
            )
            key = f"{dedupe_key}:{suffix}"
        seen_platforms.add(identity.platform)
        delivery = await enqueue(
            session, platform=identity.platform, chat_id=identity.chat_id, kind=kind, message=message,
            user_id=user_id, dedupe_key=key, priority=priority, source_received_at=source_received_at,
        )
        if delivery is not None:
            deliveries.append(delivery)
    return deliveries


# --- Health -----------------------------------------------------------------------------------------------------


async def outbox_health(db: Database) -> dict[str, Any]:
    """Queue figures for health pages and gauges.

    `pending` counts every delivery not yet sent (waiting or being sent), `sending` the part of it claimed
    right now, `oldest_pending_seconds` the age of the oldest of them (0 when none), `parked` those given up.
    """
    async with db.read() as session:
        rows = (
            await session.execute(
                select(OutboxDelivery.state, func.count(), func.min(OutboxDelivery.created_at))
                .where(OutboxDelivery.state.in_((*ACTIVE_STATES, "parked")))
                .group_by(OutboxDelivery.state)
            )
        ).all()
    counts = {state: 0 for state in (*ACTIVE_STATES, "parked")}
    oldest: datetime | None = None
    for state, count, created in rows:
        counts[state] = int(count)
        if state in ACTIVE_STATES and created is not None:
            oldest = created if oldest is None else min(oldest, created)
    age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0
    return {
        "pending": counts["pending"] + counts["sending"],
        "sending": counts["sending"],
        "oldest_pending_seconds": age,
        "parked": counts["parked"],
    }


# --- Dispatching ------------------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    """What one attempt led to, waiting to be written; `fence` is the attempts value our claim set."""

    delivery: OutboxDelivery
    fence: int
    state: str
    at: datetime
    platform_message_id: str | None = None
    next_attempt_at: datetime | None = None
    error: str | None = None
    blocked: bool = False
    alert: bool = False


def _clip(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[: limit - 1] + "…"


async def prepare_claim_plan(session: AsyncSession) -> None:
    """Keep PostgreSQL from checking a chat's earlier deliveries row by row, whatever its statistics say.

    With statistics that think pending rows are rare (a fresh table, or a burst after a quiet month) the planner
    picks a nested loop that walks each candidate chat's whole history, or rescans the table per candidate: a
    claim of 5,000 backlogged rows measured ~2 s that way. A hash anti-join over the active rows costs the same
    as the backlog, and is what the planner chooses anyway once its statistics are right. SET LOCAL ends with
    the transaction.
    """
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SET LOCAL enable_nestloop = off"))


def _listen_dsn(url: URL) -> str:
    query = {key: value for key, value in url.query.items() if key not in _SQLALCHEMY_ONLY_QUERY_KEYS}
    return url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


class OutboxDispatcher:
    """Claims due deliveries, sends them through the platform's ChatSender and records what happened.

    Delivery is at least once: a process that dies after the platform accepted a message but before the
    database heard of it sends that message again after the claim expires.
    """

    def __init__(
        self,
        db: Database,
        senders: dict[str, ChatSender],
        *,
        metrics: Metrics | None = None,
        max_attempts: int = 8,
        base_backoff: float = 0.5,
        max_backoff: float = 300.0,
        batch_size: int = 50,
        concurrency: int = 16,
        claim_seconds: float = 60,
        on_parked: Callable[[OutboxDelivery], Awaitable[None]] | None = None,
        instance_id: str | None = None,
        poll_interval: float = 1.0,
        send_timeout: float | None = None,
    ) -> None:
        if max_attempts < 1 or batch_size < 1 or concurrency < 1 or claim_seconds <= 0:
            raise ValueError("max_attempts, batch_size, concurrency and claim_seconds must be positive")
        self.db = db
        self.senders = dict(senders)
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.claim_seconds = claim_seconds
        self.on_parked = on_parked
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # The fallback poll: catches notifications lost while the LISTEN connection was down.
        self.poll_interval = poll_interval
        # An attempt must end well inside its claim, or recovery elsewhere could send the message a second time.
        self.send_timeout = send_timeout if send_timeout is not None else claim_seconds / 2
        self.maintenance_interval = max(0.05, min(claim_seconds / 2, 15.0))
        self._is_postgresql = db.engine.dialect.name == "postgresql"
        self._random = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._listen_changed = asyncio.Event()
        self._listen_ready = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[asyncio.Task[None], OutboxDelivery] = {}
        self._done: list[_Outcome] = []
        self._retry_timers: list[float] = []
        self._unregister_waker: Callable[[], None] | None = None
        self._listen_connection: asyncpg.Connection | None = None
        # Observability for health pages and tests: LISTEN connections opened, notifications heard.
        self.listen_connects = 0
        self.notifications_received = 0

    # -- lifecycle --

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopping

    async def start(self) -> None:
        """Recover expired claims, then dispatch in the background until `stop()`."""
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        for flag in (self._wakeup, self._stop_event, self._listen_changed, self._listen_ready):
            flag.clear()
        await self._recover()
        self._unregister_waker = register_waker(self.wake, engine=self.db.engine.sync_engine)
        if self._is_postgresql:
            self._tasks.append(asyncio.create_task(self._listen(), name=f"outbox-listen-{self.instance_id}"))
            try:
                # Returning before LISTEN is in place would let a commit right after start() go unnoticed.
                await asyncio.wait_for(self._listen_ready.wait(), timeout=5.0)
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
        for flag in (self._stop_event, self._wakeup, self._listen_changed):
            flag.set()
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
                    "outbox %s: could not record %d outcomes at stop; their claims will expire",
                    self.instance_id, len(self._done),
                )
                self._done.clear()
        self._retry_timers.clear()

    def wake(self) -> None:
        """Look for due deliveries now; safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wakeup.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wakeup.set()
        else:
            loop.call_soon_threadsafe(self._wakeup.set)

    async def run_once(self) -> int:
        """Claim one batch, send it and record the outcomes; returns how many deliveries were claimed.

        For tests and benchmarks, and for a process that drives dispatching itself; not alongside `start()`.
        """
        async with self.db.transaction() as session:
            claimed = await self._claim(session, self.batch_size)
        if not claimed:
            return 0
        semaphore = asyncio.Semaphore(self.concurrency)

        async def attempt(delivery: OutboxDelivery) -> _Outcome:
            async with semaphore:
                return await self._attempt(delivery, delivery.attempts)

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
            limit = min(self.batch_size, self.concurrency - len(self._in_flight))
            try:
                claimed = await self._cycle(limit) if limit > 0 or self._done else []
                failures = 0
            except Exception:
                failures += 1
                log.exception("outbox %s: claiming or recording failed", self.instance_id)
                await self._wait(self._stop_event, min(30.0, 0.25 * 2**min(failures, 7)))
                continue
            for delivery in claimed:
                task = asyncio.create_task(self._send_in_background(delivery), name=f"outbox-send-{delivery.id}")
                self._in_flight[task] = delivery
            if limit > 0 and len(claimed) == limit:
                continue  # a full batch: more are probably due already
            await self._wait(self._wakeup, self._next_timeout())

    async def _send_in_background(self, delivery: OutboxDelivery) -> None:
        task = asyncio.current_task()
        outcome: _Outcome | None = None
        try:
            outcome = await self._attempt(delivery, delivery.attempts)
        finally:
            if outcome is None:
                # Cancelled at stop: give the delivery back rather than leave it claimed until it expires.
                outcome = _Outcome(
                    delivery, delivery.attempts, "pending", utcnow(), next_attempt_at=utcnow(),
                    error="released: dispatcher stopped during the send",
                )
            self._done.append(outcome)
            if task is not None:
                self._in_flight.pop(task, None)
            self._wakeup.set()

    async def _maintain(self) -> None:
        while not self._stopping:
            await self._wait(self._stop_event, self.maintenance_interval)
            if self._stopping:
                return
            try:
                if await self._recover():
                    self._wakeup.set()
                if self.metrics is not None:
                    health = await outbox_health(self.db)
                    self.metrics.outbox_depth.set(health["pending"])
                    self.metrics.outbox_oldest_seconds.set(health["oldest_pending_seconds"])
            except Exception:
                log.exception("outbox %s: maintenance failed", self.instance_id)

    async def _listen(self) -> None:
        """Keep a LISTEN connection open; any notification, and every reconnection, wakes the dispatcher."""
        dsn = _listen_dsn(self.db.engine.url)
        delay = 0.5
        while not self._stopping:
            try:
                connection = await asyncpg.connect(
                    dsn, timeout=10, server_settings={"application_name": f"cumapp-outbox {self.instance_id}"[:63]}
                )
            except Exception as error:
                log.warning("outbox %s: LISTEN connection failed (%s); retrying in %.1f s", self.instance_id,
                            error, delay)
                await self._wait(self._stop_event, delay)
                delay = min(delay * 2, 30.0)
                continue
            self._listen_connection = connection
            try:
                connection.add_termination_listener(lambda _connection: self._listen_changed.set())
                await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
                delay = 0.5
                self.listen_connects += 1
                self._listen_ready.set()
                self._wakeup.set()  # anything committed while we were not listening
                while not self._stopping:
                    await self._wait(self._listen_changed, 15.0)
                    self._listen_changed.clear()
                    if self._stopping or connection.is_closed():
                        break
                    # A half-open TCP connection never reports itself; a query does.
                    await connection.fetchval("SELECT 1", timeout=5)
            except Exception as error:
                if not self._stopping:
                    log.warning("outbox %s: LISTEN connection lost (%s)", self.instance_id, error)
            finally:
                self._listen_connection = None
                if not connection.is_closed():
                    try:
                        await connection.close(timeout=2)
                    except Exception:
                        connection.terminate()

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.notifications_received += 1
        self._wakeup.set()

    @staticmethod
    async def _wait(flag: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(flag.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            pass

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
        earlier = aliased(OutboxDelivery, name="earlier")
        # SQLite answers this with a range of ix_outbox_deliveries_chat per candidate; PostgreSQL with a hash
        # anti-join over the active rows (see prepare_claim_plan), which does not grow with the sent history.
        earlier_waiting = exists().where(
            earlier.platform == OutboxDelivery.platform,
            earlier.chat_id == OutboxDelivery.chat_id,
            earlier.id < OutboxDelivery.id,
            earlier.state.in_(ACTIVE_STATES),
        )
        statement = (
            select(OutboxDelivery.id)
            .where(
                OutboxDelivery.state == "pending",
                OutboxDelivery.next_attempt_at <= now,
                OutboxDelivery.platform.in_(sorted(self.senders)),
                ~earlier_waiting,
            )
            .order_by(OutboxDelivery.priority.desc(), OutboxDelivery.id)
            .limit(limit)
        )
        if self._is_postgresql:
            # SQLite needs no row locks: Database.transaction() lets one writer in at a time.
            statement = statement.with_for_update(skip_locked=True, of=OutboxDelivery)
        return statement

    async def _claim(self, session: AsyncSession, limit: int) -> list[OutboxDelivery]:
        """Claim due deliveries; must be the last query of its transaction (it changes the planner's settings)."""
        if not self.senders:
            return []
        now = utcnow()
        await prepare_claim_plan(session)
        ids = list(await session.scalars(self.claim_statement(now, limit)))
        if not ids:
            return []
        claimed = (
            await session.scalars(
                update(OutboxDelivery)
                .where(OutboxDelivery.id.in_(ids), OutboxDelivery.state == "pending")
                .values(
                    state="sending",
                    claimed_until=now + timedelta(seconds=self.claim_seconds),
                    attempts=OutboxDelivery.attempts + 1,
                )
                .returning(OutboxDelivery),
                execution_options={"populate_existing": True, "synchronize_session": False},
            )
        ).all()
        return sorted(claimed, key=lambda delivery: (-delivery.priority, delivery.id))

    async def _record(self, session: AsyncSession, outcomes: list[_Outcome]) -> list[_Outcome]:
        """Write the outcomes whose claim is still ours, in a few statements however many there are.

        `attempts` only grows and every claim raises it, so a row whose attempts still equal the value our claim
        set was not claimed again since; it counts as ours even if recovery already put it back to pending.
        """
        if not outcomes:
            return []
        check = (
            select(OutboxDelivery.id, OutboxDelivery.attempts, OutboxDelivery.state)
            .where(OutboxDelivery.id.in_(sorted({outcome.delivery.id for outcome in outcomes})))
            .order_by(OutboxDelivery.id)
        )
        if self._is_postgresql:
            # Held to the commit, so no recovery or claim elsewhere slips between this check and the writes.
            check = check.with_for_update()
        current = {row.id: (row.attempts, row.state) for row in await session.execute(check)}
        applied: list[_Outcome] = []
        for outcome in outcomes:
            attempts, state = current.get(outcome.delivery.id, (None, None))
            if attempts != outcome.fence or state not in ACTIVE_STATES:
                log.warning(
                    "outbox %s: delivery %s lost its claim before its outcome (%s) was recorded; it may be "
                    "sent twice", self.instance_id, outcome.delivery.id, outcome.state,
                    extra={"delivery_id": outcome.delivery.id},
                )
                continue
            applied.append(outcome)

        table = OutboxDelivery.__table__
        by_id = update(table).where(table.c.id == bindparam("b_id"))
        sent = [
            {"b_id": o.delivery.id, "b_at": o.at, "b_message_id": o.platform_message_id}
            for o in applied if o.state == "sent"
        ]
        if sent:
            await session.execute(
                by_id.values(
                    state="sent", claimed_until=None, sent_at=bindparam("b_at", type_=table.c.sent_at.type),
                    platform_message_id=bindparam("b_message_id", type_=table.c.platform_message_id.type),
                ),
                sent,
            )
            for kind, hook in SENT_HOOKS.items():
                delivered = [(o.delivery, o.at) for o in applied if o.state == "sent" and o.delivery.kind == kind]
                if delivered:
                    await hook(session, delivered)
        retries = [
            {"b_id": o.delivery.id, "b_next": o.next_attempt_at or o.at, "b_error": _clip(o.error, _LAST_ERROR_MAX)}
            for o in applied if o.state == "pending"
        ]
        if retries:
            await session.execute(
                by_id.values(
                    state="pending", claimed_until=None,
                    next_attempt_at=bindparam("b_next", type_=table.c.next_attempt_at.type),
                    last_error=bindparam("b_error", type_=table.c.last_error.type),
                ),
                retries,
            )
        parked = [
            {"b_id": o.delivery.id, "b_error": _clip(o.error, _LAST_ERROR_MAX)} for o in applied if o.state == "parked"
        ]
        if parked:
            await session.execute(
                by_id.values(
                    state="parked", claimed_until=None, last_error=bindparam("b_error", type_=table.c.last_error.type)
                ),
                parked,
            )
        for outcome in applied:
            if outcome.blocked:
                await session.execute(
                    update(ChatIdentity)
                    .where(
                        ChatIdentity.platform == outcome.delivery.platform,
                        ChatIdentity.chat_id == outcome.delivery.chat_id,
                        ChatIdentity.unreachable_at.is_(None),
                    )
                    .values(unreachable_at=outcome.at)
                    .execution_options(synchronize_session=False)
                )
        return applied

    async def _after_record(self, applied: list[_Outcome]) -> None:
        """Effects that must follow the commit: timers, the parked counter and the admins' callback."""
        for outcome in applied:
            delivery = outcome.delivery
            delivery.state = outcome.state
            delivery.claimed_until = None
            if outcome.state == "sent":
                delivery.sent_at = outcome.at
                delivery.platform_message_id = outcome.platform_message_id
                continue
            delivery.last_error = _clip(outcome.error, _LAST_ERROR_MAX)
            if outcome.next_attempt_at is not None:
                delivery.next_attempt_at = outcome.next_attempt_at
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

    async def _recover(self) -> int:
        """Give back deliveries whose claim expired: their dispatcher died or hung mid-send."""
        now = utcnow()
        async with self.db.transaction() as session:
            result = await session.execute(
                update(OutboxDelivery)
                .where(OutboxDelivery.state == "sending", OutboxDelivery.claimed_until < now)
                .values(state="pending", claimed_until=None, last_error="claim expired: dispatcher gone")
                .execution_options(synchronize_session=False)
            )
        recovered = int(result.rowcount or 0)
        if recovered:
            log.warning("outbox %s: %d deliveries with expired claims back to pending", self.instance_id, recovered)
        return recovered

    # -- one attempt --

    def _backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff, self.base_backoff * 2 ** max(0, attempt - 1))
        # Jitter keeps deliveries that failed together (a platform outage) from retrying in lockstep.
        return delay + self._random.uniform(0, delay / 4)

    def _count(self, platform: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(platform, outcome).inc()

    async def _attempt(self, delivery: OutboxDelivery, fence: int) -> _Outcome:
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
        return _Outcome(delivery, fence, "sent", now, platform_message_id=_clip(str(message_id), _MESSAGE_ID_MAX))

    def _failure(
        self,
        delivery: OutboxDelivery,
        fence: int,
        reason: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
        blocked: bool = False,
    ) -> _Outcome:
        now = utcnow()
        if blocked:
            # Users block bots all the time; that is no news for the admins, only for the identity.
            self._count(delivery.platform, "blocked")
            log.info("outbox: %s:%s is unreachable (%s); delivery %s parked", delivery.platform,
                     delivery.chat_id, reason, delivery.id)
            return _Outcome(delivery, fence, "parked", now, error=reason, blocked=True)
        if permanent or fence >= self.max_attempts:
            self._count(delivery.platform, "parked")
            why = "refused for good" if permanent else f"failed {fence} times"
            log.warning("outbox: delivery %s to %s:%s %s, parked: %s", delivery.id, delivery.platform,
                      delivery.chat_id, why, reason)
            return _Outcome(delivery, fence, "parked", now, error=reason, alert=True)
        self._count(delivery.platform, "retry")
        delay = retry_after if retry_after is not None else self._backoff(fence)
        return _Outcome(
            delivery, fence, "pending", now, next_attempt_at=now + timedelta(seconds=delay), error=reason
        )
