"""Live fan-out of events to the WebSockets of this process: events committed here arrive at once (an after-commit
hook), events committed by other instances by PostgreSQL LISTEN/NOTIFY (read back from the table)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from core.api import events as api_events
from core.api.events import Event
from core.platform.db import Database
from core.platform.outbox.wake import listen_dsn, wait

log = logging.getLogger(__name__)

QUEUE_MAX = 1000
_SEEN_MAX = 20_000
RECONNECT_SECONDS = 1.0


class Subscription:
    """One WebSocket's queue; `overflowed` means it fell behind and should reconnect with `?after=`."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_MAX)
        self.overflowed = asyncio.Event()

    def put(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()


class EventHub:
    """Subscriptions per account, fed by this process's commits and by other instances' NOTIFYs."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._subscribers: dict[int, set[Subscription]] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._unregister: Callable[[], None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._unregister = api_events.register_publisher(self._publish_local, engine=self.db.engine.sync_engine)
        if not self.db.is_sqlite:
            self._listen_task = asyncio.create_task(self._listen(), name="api-events-listen")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.listening.wait(), 5.0)

    async def stop(self) -> None:
        if self._unregister is not None:
            self._unregister()
            self._unregister = None
        self._stopping.set()
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.gather(self._listen_task, return_exceptions=True)
            self._listen_task = None

    @contextlib.asynccontextmanager
    async def subscribe(self, user_id: int) -> AsyncIterator[Subscription]:
        subscription = Subscription(user_id)
        self._subscribers.setdefault(user_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            group = self._subscribers.get(user_id)
            if group is not None:
                group.discard(subscription)
                if not group:
                    del self._subscribers[user_id]

    @property
    def subscriber_count(self) -> int:
        return sum(len(group) for group in self._subscribers.values())

    def _first_time(self, event_id: int) -> bool:
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            if not self._first_time(event.id):
                continue
            for subscription in list(self._subscribers.get(event.user_id, ())):
                subscription.put(event)

    def _publish_local(self, events: list[Event]) -> None:
        """Called after a commit in this process, in the committing task (or another thread's)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(events)
        else:
            loop.call_soon_threadsafe(self._deliver, events)

    async def _listen(self) -> None:
        dsn = listen_dsn(self.db.engine.url)
        while not self._stopping.is_set():
            try:
                connection = await asyncpg.connect(dsn, timeout=5, server_settings={"application_name": "cumapp-api-events"})
            except Exception as error:
                log.warning("API events: LISTEN connection failed (%s); retrying", error)
                await wait(self._stopping, RECONNECT_SECONDS)
                continue
            closed = asyncio.Event()
            try:
                connection.add_termination_listener(lambda _c, closed=closed: closed.set())
                await connection.add_listener(api_events.NOTIFY_CHANNEL, self._on_notify)
                self.listening.set()
                while not self._stopping.is_set() and not connection.is_closed():
                    await wait(closed, 15.0)
                    if not connection.is_closed():
                        await connection.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("API events: LISTEN connection lost (%s)", error)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        user_text, _, id_text = payload.partition(":")
        try:
            user_id, event_id = int(user_text), int(id_text)
        except ValueError:
            return
        if event_id in self._seen or user_id not in self._subscribers:
            return  # ours (already delivered) or nobody here listens for that account
        asyncio.get_running_loop().create_task(self._fetch_and_deliver(event_id))

    async def _fetch_and_deliver(self, event_id: int) -> None:
        try:
            found = await api_events.by_ids(self.db, [event_id])
        except Exception:
            log.warning("API events: reading event %s failed", event_id, exc_info=True)
            return
        self._deliver(found)
