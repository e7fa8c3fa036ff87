"""One flood budget per bot: every message the bot sends (answers, relays, codes, alerts, broadcasts) takes a slot.

Why one budget
--------------
Telegram allows a bot about 30 messages per second, about one per second in a private chat (short bursts pass)
and 20 per minute in a group; Discord allows a bot 50 requests per second. Answers to commands, relayed SMS and
codes, admin alerts and broadcasts all leave through the same bot, so they must all draw from one budget, or a
broadcast at the limit plus a few answers makes 429s. Each front end hooks its client library here (Telegram:
python-telegram-bot's rate limiter, which every Bot API request passes through; Discord: discord.py's REST
client), so nothing can send around the budget.

Who goes first
--------------
Each send carries a `Rank`, taken from the `traffic()` context it runs in: a person's own traffic (`PERSONAL`:
answers to their commands and buttons, which is the default, and relayed SMS and codes from the outbox) before
notices (`NOTICE`: alerts and the outbox's other messages) before broadcasts (`BULK`). Waiting sends are served
by rank, then in arrival order, so a broadcast at full speed takes exactly the slots nobody else wants and delays a
relay by about one slot (tens of milliseconds at 30/s).

Staying under the limit despite jitter
--------------------------------------
The platform counts requests when they arrive, somewhere between our start and its answer; a request held up on
the way (a busy event loop, the network) can arrive next to later ones and make 31 in one second. So a send
counts in the one-second window from its start until one second after its answer came back: wherever it arrived
in between, no 31 sends ever meet in one second at the platform, whatever the delays. That costs one round trip
per second of sending: on loopback a few milliseconds (0.99 of the limit), against Telegram 50-150 ms (0.87-0.95),
a fair price against a 429, whose flood wait stops the whole bot for seconds. Sends are also spaced evenly, so a
window's worth never leaves in one burst and a relay never waits long for the window to open.

On Telegram a 429 holds the whole budget for its `retry_after`: the flood wait applies to the bot.

Several instances
-----------------
The budget is per bot, and N instances send for one bot. `InstanceShare` divides every budget's window by the
number of live instances (the holders of the liveness lock on PostgreSQL, counted every few seconds), so together
they never exceed the bot's limit in any second. Notices and broadcasts are also spaced at 1/N of the rate; a
person's own sends are spaced at the bot's whole rate, since each instance sends what it accepted
(core.platform.outbox.store.STEAL_AFTER) and the window alone keeps the sum under the limit. That wastes the shares
of idle instances (a broadcast runs on one instance, at 1/N of the limit), but needs nothing on the send path:
sharing slots through the database would add a round trip, and a dependency on PostgreSQL, to every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the outbox's package imports this module (attempts.py); at run time we need nothing of it
    from core.platform.outbox.messages import ChatSender, OutgoingMessage

log = logging.getLogger(__name__)

TELEGRAM_RATE = 30.0  # messages per second per bot
TELEGRAM_PAID_RATE = 950.0  # allow_paid_broadcast lifts the limit to 1000/s; 5% margin keeps us clear of 429s
DISCORD_RATE = 50.0  # requests per second per bot (a DM to someone new costs two: open the channel, send)
OTHER_RATE = 50.0  # the terminal chat and anything without a published limit

# Seconds after its start that an unanswered send stops counting: longer than any request's timeout, so only a
# send whose end was never reported (a defect) is ever let go this way.
ALLOWANCE = 60.0
STOP_CHECK_SECONDS = 0.25  # a stopped broadcast's waiting sends notice within this long
# An outbox delivery of this priority or more is a person's own traffic (core.messaging.relay.RELAY_PRIORITY,
# core.verification.relay.CODE_PRIORITY); below it, a notice.
PERSONAL_PRIORITY = 10


class Rank(IntEnum):
    """Who goes first when sends wait for a slot: lower first."""

    PERSONAL = 0  # answers to a person's command or button, relayed SMS, codes
    NOTICE = 1  # alerts and other notices from the outbox
    BULK = 2  # broadcasts


class Withdrawn(Exception):
    """A send gave up its place in the queue because its broadcast was paused or cancelled: nothing was sent."""


@dataclass
class Traffic:
    """What the sends made in this context are: their rank, whether they may give up, and how a 429 is met.

    `wait_out_floods`: a direct answer has nobody to retry it, so a 429 is waited out and the request made again;
    the outbox and the broadcast runner retry by themselves and get the 429 back. `requests` counts the requests
    that got a slot (and so may have reached the platform), for callers that must know whether anything went out.
    """

    rank: Rank = Rank.PERSONAL
    stopped: Callable[[], bool] | None = None
    wait_out_floods: bool = True
    requests: int = 0


_TRAFFIC: ContextVar[Traffic | None] = ContextVar("cumapp_traffic", default=None)


def current_traffic() -> Traffic:
    """The traffic of the running task; a person's own (an answer) when nobody said otherwise."""
    return _TRAFFIC.get() or Traffic()


@contextlib.contextmanager
def traffic(
    rank: Rank, *, stopped: Callable[[], bool] | None = None, wait_out_floods: bool = False
) -> Iterator[Traffic]:
    """Sends made inside the block (in this task and tasks it starts) are of this rank."""
    current = Traffic(rank, stopped, wait_out_floods)
    token = _TRAFFIC.set(current)
    try:
        yield current
    finally:
        _TRAFFIC.reset(token)


def rank_for_priority(priority: int) -> Rank:
    """The rank of an outbox delivery: relays and codes are a person's own traffic, the rest are notices."""
    return Rank.PERSONAL if priority >= PERSONAL_PRIORITY else Rank.NOTICE


# --- the accounting ------------------------------------------------------------------------------------------------


class Ticket:
    """One send's slot: when it started and, once `finish()`ed, when its answer came back."""

    __slots__ = ("start", "end")

    def __init__(self, start: float) -> None:
        self.start = start
        self.end: float | None = None

    def finish(self) -> None:
        if self.end is None:
            self.end = time.monotonic()

    def release(self, period: float, allowance: float) -> float:
        """When this send stops counting in a window of `period`: `period` after its answer (see the module
        docstring), or after `allowance` seconds from its start, whichever is earlier."""
        took = allowance if self.end is None else min(allowance, max(0.0, self.end - self.start))
        return self.start + took + period


class Window:
    """At most `cap` sends in any `period` seconds, each counted as `Ticket.release` says."""

    def __init__(self, cap: int, period: float, allowance: float) -> None:
        self.cap = cap
        self.period = period
        self.allowance = allowance
        self._sends: deque[Ticket] = deque()

    def __len__(self) -> int:
        return len(self._sends)

    def add(self, ticket: Ticket) -> None:
        self._sends.append(ticket)

    def free_at(self, now: float) -> float:
        """The first moment another send may start (`now` if it may start now)."""
        sends, period, allowance = self._sends, self.period, self.allowance
        while sends and sends[0].release(period, allowance) <= now:
            sends.popleft()
        if len(sends) < self.cap:
            return now
        if allowance == 0:
            # Counted from their starts only (paid broadcasts): the releases are in order, no sorting needed.
            return sends[len(sends) - self.cap].start + period
        releases = sorted(release for ticket in sends if (release := ticket.release(period, allowance)) > now)
        if len(releases) < self.cap:
            return now
        return releases[len(releases) - self.cap]


@dataclass(frozen=True)
class ChatLimits:
    """The per-chat limits: a token bucket per private chat, and a sliding window per group on top of it.

    Telegram allows about one message a second in a chat, with short bursts; we allow a burst of two (Telegram
    tolerates a few more, and that spare message absorbs network jitter) and 20 per minute in a group."""

    rate: float = 1.0
    burst: int = 2
    group_cap: int = 20
    group_period: float = 60.0


def _is_group(chat: str) -> bool:
    """Telegram's group and channel chats have negative ids, or are named by @username."""
    return chat.startswith(("-", "@"))


class ChatPacer:
    """Per-chat limits shared by a bot's budgets (a paid broadcast and an answer reach the same chats)."""

    PRUNE_AT = 10_000

    def __init__(self, limits: ChatLimits, allowance: float = ALLOWANCE) -> None:
        self.limits = limits
        self.allowance = allowance
        self._interval = 1.0 / limits.rate
        self._tolerance = (limits.burst - 1) * self._interval
        self._due: dict[str, float] = {}  # GCRA: the theoretical arrival time of each chat's next message
        self._groups: dict[str, Window] = {}

    def wait(self, chat: str, now: float) -> float:
        """Seconds until a message to `chat` may start (0: now)."""
        wait = 0.0
        due = self._due.get(chat)
        if due is not None:
            wait = max(0.0, due - self._tolerance - now)
        window = self._groups.get(chat)
        if window is not None:
            wait = max(wait, window.free_at(now) - now)
        return wait

    def take(self, chat: str, now: float, ticket: Ticket) -> None:
        self._due[chat] = max(self._due.get(chat, now), now) + self._interval
        if _is_group(chat):
            window = self._groups.get(chat)
            if window is None:
                window = self._groups[chat] = Window(self.limits.group_cap, self.limits.group_period, self.allowance)
            window.add(ticket)
        if len(self._due) > self.PRUNE_AT or len(self._groups) > self.PRUNE_AT:
            self._prune(now)

    def _prune(self, now: float) -> None:
        # A chat whose bucket is full again, or whose window emptied, is as if never seen.
        self._due = {chat: due for chat, due in self._due.items() if due > now}
        self._groups = {chat: w for chat, w in self._groups.items() if w.free_at(now) > now or len(w) > 0}


# --- the budget ------------------------------------------------------------------------------------------------------


class _Waiter:
    __slots__ = ("rank", "seq", "chat", "future", "gone")

    def __init__(self, rank: Rank, seq: int, chat: str | None, future: asyncio.Future[Ticket | None]) -> None:
        self.rank = rank
        self.seq = seq
        self.chat = chat
        self.future = future
        self.gone = False

    def __lt__(self, other: _Waiter) -> bool:
        return (self.rank, self.seq) < (other.rank, other.seq)


class RateBudget:
    """A bot's slots at one rate: waiting sends are served by rank, then in order, under every limit at once.

    Limits: `rate` sends in any `window` seconds (counted as `Ticket.release` says), a flood wait (`hold`), the
    per-chat limits of `chats`, and an even spacing so a window's worth never leaves in one burst: a GCRA at
    `headway` × rate, which lets a send come up to `early` intervals before its turn. The window is what binds; the
    spacing is a little faster than the rate, and its tolerance lets a send that was held up (a late answer, a busy
    event loop) be made up by the next one instead of carrying the delay over to every send after it.
    """

    def __init__(
        self,
        rate: float,
        *,
        window: float = 1.0,
        allowance: float = ALLOWANCE,
        headway: float = 1.05,
        early: float = 1.0,
        chats: ChatPacer | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.limit = rate  # the bot's rate; `rate` is this instance's share of it
        self.window_seconds = window
        self.allowance = allowance
        self.headway = headway
        self.early = early
        self.chats = chats
        self.instances = 1
        self._window = Window(1, window, allowance)
        self._configure()
        self._due = 0.0  # GCRA: when the next send is due on the even spacing
        self._blocked_until = 0.0
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.taken = 0

    def _configure(self) -> None:
        self.rate = self.limit / self.instances
        self.cap = max(1, math.floor(self.rate * self.window_seconds + 1e-9))
        self.interval = 1.0 / (self.rate * self.headway)
        # A person's own sends are spaced at the bot's whole rate even when this instance has only a share of it:
        # the window (`cap`, this instance's share) keeps the instances together under the bot's limit, and
        # spacing a relay at 1/N of the rate only queued it behind the one before (see "Several instances").
        self.personal_interval = 1.0 / (self.limit * self.headway)
        # At high rates an interval is shorter than an event-loop turn: a few milliseconds of tolerance keep a
        # busy loop from costing throughput there (the window still caps the second).
        self._tolerance = max(self.early * self.interval, 0.005)
        self._window.cap = self.cap

    def share(self, instances: int) -> None:
        """This instance's part of the bot's budget when `instances` instances send for the bot."""
        instances = max(1, instances)
        if instances != self.instances:
            self.instances = instances
            self._configure()
            self._pump()

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    # -- flood waits --

    def hold(self, seconds: float) -> None:
        """Nobody sends for `seconds` (a flood wait from the platform)."""
        self._blocked_until = max(self._blocked_until, self._now() + max(0.0, seconds))

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._now())

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._queue if not waiter.gone)

    # -- taking slots --

    async def acquire(self, chat: str | int | None = None, flow: Traffic | None = None) -> Ticket:
        """Wait for a slot for one send to `chat` and take it; `finish()` the ticket when the answer is back.

        Raises Withdrawn when the traffic's `stopped()` says so first."""
        flow = flow or current_traffic()
        key = None if chat is None or self.chats is None else str(chat)
        while True:
            if key is not None:
                assert self.chats is not None
                wait = self.chats.wait(key, self._now())
                if wait > 0:
                    await self._nap(wait, flow)
                    continue
            ticket = await self._queue_up(key, flow)
            if ticket is not None:
                flow.requests += 1
                return ticket
            # The chat was taken while we queued (another send to it got there first): back to its own wait.

    async def _nap(self, seconds: float, flow: Traffic) -> None:
        if flow.stopped is None:
            await asyncio.sleep(seconds)
            return
        deadline = self._now() + seconds
        while (left := deadline - self._now()) > 0:
            if flow.stopped():
                raise Withdrawn
            await asyncio.sleep(min(left, STOP_CHECK_SECONDS))

    async def _queue_up(self, chat: str | None, flow: Traffic) -> Ticket | None:
        future: asyncio.Future[Ticket | None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(flow.rank, next(self._seq), chat, future)
        heapq.heappush(self._queue, waiter)
        self._pump()
        try:
            if flow.stopped is None:
                return await future
            while True:
                await asyncio.wait((future,), timeout=STOP_CHECK_SECONDS)
                if future.done():
                    return future.result()
                if flow.stopped():
                    raise Withdrawn
        except BaseException:
            waiter.gone = True
            if future.done() and not future.cancelled():
                granted = future.result()
                if granted is not None:
                    granted.end = granted.start  # taken but never used: it counts, for the shortest time
            else:
                future.cancel()
            self._pump()
            raise

    async def acquire_priority(self) -> Ticket:
        """A send of a person's own traffic (no chat) whose answer is never reported: it counts from its start."""
        ticket = await self.acquire(None, Traffic(Rank.PERSONAL))
        ticket.end = ticket.start
        return ticket

    async def acquire_bulk(self, stopped: Callable[[], bool] | None = None) -> bool:
        """A broadcast's send (no chat), counted from its start: False when `stopped()` said so before a slot came."""
        try:
            ticket = await self.acquire(None, Traffic(Rank.BULK, stopped, wait_out_floods=False))
        except Withdrawn:
            return False
        ticket.end = ticket.start
        return True

    def finished(self, ticket: Ticket) -> None:
        """The send's answer came back: it may stop counting sooner, so a waiting send may go sooner."""
        ticket.finish()
        if self._queue:
            self._pump()

    # -- the scheduler --

    def _earliest(self, now: float) -> float:
        return max(self._due - self._tolerance, self._blocked_until, self._window.free_at(now))

    def _pump(self) -> None:
        """Hand free slots to the first waiters, by rank and order; then sleep until the next slot frees."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue = self._queue
        while queue:
            head = queue[0]
            if head.gone or head.future.done():
                heapq.heappop(queue)
                continue
            now = self._now()
            slot = self._earliest(now)
            if slot > now:
                self._timer = asyncio.get_running_loop().call_later(slot - now, self._pump)
                return
            heapq.heappop(queue)
            if head.chat is not None and self.chats is not None and self.chats.wait(head.chat, now) > 0:
                head.future.set_result(None)
                continue
            ticket = Ticket(now)
            self._due = max(self._due, now) + (self.personal_interval if head.rank == Rank.PERSONAL else self.interval)
            self._window.add(ticket)
            if head.chat is not None and self.chats is not None:
                self.chats.take(head.chat, now, ticket)
            self.taken += 1
            head.future.set_result(ticket)

    @contextlib.asynccontextmanager
    async def slot(self, chat: str | int | None = None, flow: Traffic | None = None) -> AsyncIterator[Ticket]:
        """`async with budget.slot(chat):` one send; a 429's DeliveryError (or anything with `retry_after`) holds
        the budget."""
        ticket = await self.acquire(chat, flow)
        try:
            yield ticket
        except Exception as error:
            retry_after = getattr(error, "retry_after", None)
            if isinstance(retry_after, int | float) and retry_after > 0:
                self.hold(float(retry_after))
            raise
        finally:
            self.finished(ticket)


class BotBudget:
    """One bot's budget: ordinary sends at the platform's rate, Telegram's paid broadcasts at theirs, and the
    per-chat limits both share."""

    def __init__(
        self, rate: float, *, paid_rate: float | None = None, chat_limits: ChatLimits | None = None,
        allowance: float = ALLOWANCE,
    ) -> None:
        if paid_rate is not None and paid_rate > 1000:
            raise ValueError("Telegram's paid broadcasts allow 1000 messages per second at most")
        self.chats = ChatPacer(chat_limits, allowance) if chat_limits is not None else None
        self.shared = RateBudget(rate, allowance=allowance, chats=self.chats)
        # At 950/s a request's round trip is many slots long; the 50 slots a second under Telegram's 1000 are the
        # margin for jitter there, so paid sends count from their start only.
        self.paid = (
            RateBudget(paid_rate, allowance=0.0, chats=self.chats) if paid_rate is not None else None
        )

    @classmethod
    def telegram(cls, rate: float = TELEGRAM_RATE, paid_rate: float = TELEGRAM_PAID_RATE) -> BotBudget:
        return cls(rate, paid_rate=paid_rate, chat_limits=ChatLimits())

    @classmethod
    def discord(cls, rate: float = DISCORD_RATE) -> BotBudget:
        # Per-channel limits come back in every answer's headers and discord.py keeps to them by itself.
        return cls(rate)

    def budget(self, paid: bool = False) -> RateBudget:
        return self.paid if paid and self.paid is not None else self.shared

    def share(self, instances: int) -> None:
        for budget in (self.shared, self.paid):
            if budget is not None:
                budget.share(instances)


# --- senders ---------------------------------------------------------------------------------------------------------


def own_budget(sender: object) -> BotBudget | None:
    """The budget a sender's client library takes every request's slot from itself (the real front ends), if any."""
    budget = getattr(sender, "budget", None)
    return budget if isinstance(budget, BotBudget) else None


class PacedSender:
    """Wraps a ChatSender that does not pace itself, so each message takes a slot of the bot's budget."""

    def __init__(self, inner: ChatSender, budget: BotBudget) -> None:
        self.inner = inner
        self.budget = budget
        self.platform = inner.platform

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        async with self.budget.budget(message.paid_broadcast).slot(chat_id):
            return await self.inner.send(chat_id, message)


def paced(sender: ChatSender, budget: BotBudget) -> ChatSender:
    """The sender as the outbox and the broadcast runner use it: itself when it paces itself."""
    if own_budget(sender) is budget:
        return sender
    return PacedSender(sender, budget)


class PlatformBudgets:
    """The BotBudget of each platform's bot: the sender's own where it paces itself, else one made here."""

    def __init__(
        self,
        senders: Mapping[str, ChatSender],
        *,
        telegram_rate: float = TELEGRAM_RATE,
        paid_rate: float = TELEGRAM_PAID_RATE,
        discord_rate: float = DISCORD_RATE,
        other_rate: float = OTHER_RATE,
        budgets: Mapping[str, BotBudget] | None = None,
    ) -> None:
        if paid_rate > 1000:
            raise ValueError("Telegram's paid broadcasts allow 1000 messages per second at most")
        self.bots: dict[str, BotBudget] = {}
        for platform, sender in senders.items():
            own = own_budget(sender)
            if own is not None:
                self.bots[platform] = own
            elif budgets is not None and platform in budgets:
                self.bots[platform] = budgets[platform]
            elif platform == "telegram":
                self.bots[platform] = BotBudget.telegram(telegram_rate, paid_rate)
            elif platform == "discord":
                self.bots[platform] = BotBudget.discord(discord_rate)
            else:
                self.bots[platform] = BotBudget(other_rate)

    def budget(self, platform: str, paid: bool) -> RateBudget:
        return self.bots[platform].budget(paid and platform == "telegram")

    def rate(self, platform: str, paid: bool) -> float:
        return self.budget(platform, paid).rate

    def paced(self, senders: Mapping[str, ChatSender]) -> dict[str, ChatSender]:
        return {platform: paced(sender, self.bots[platform]) for platform, sender in senders.items()}


class InstanceShare:
    """Keeps each bot budget at 1/N of the bot's limit while N instances are alive (see the module docstring)."""

    name = "flood budget share"

    def __init__(
        self, budgets: Iterable[BotBudget], count: Callable[[], Awaitable[int | None]], *, every: float = 3.0
    ) -> None:
        self.budgets = list(budgets)
        self.count = count
        self.every = every
        self.instances = 1
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        counted = await self.count()
        if counted is None:
            return  # SQLite (one process), or the count failed: keep the last share
        instances = max(1, counted)
        if instances != self.instances:
            log.info("%d instances send for this bot: each takes 1/%d of its flood budget", instances, instances)
            self.instances = instances
        for budget in self.budgets:
            budget.share(instances)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._keep(), name="flood-budget-share")

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.refresh()
            except Exception:  # a database blip: keep the last share and look again
                log.warning("counting live instances for the flood budget failed", exc_info=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
