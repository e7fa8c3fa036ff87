"""Pacing sends under the platforms' flood limits: one shared rate budget per platform.

Sharing the platform limit
--------------------------
Telegram allows about 30 messages per second per bot. Broadcasts and ordinary traffic go through the same bot,
so they draw from one `RateBudget` per platform (a GCRA token bucket, 29/s by default for Telegram):

* the outbox's deliveries (codes, relayed SMS, alerts) are wrapped by `paced_senders()` and take a slot with
  priority: they reserve the next free slot at once and never queue behind a broadcast, which only takes a slot
  that is free *now*; a broadcast therefore slows down by exactly the ordinary traffic and never starves it;
* direct answers to a user's own command or button are sent by the front end outside the budget; the 1/s left
  between 29 and 30 is their headroom (they are at most about one per second per person typing);
* a paid broadcast (`allow_paid_broadcast`, up to 1000/s) draws from its own budget (`paid_rate_per_second`);
* a 429's `retry_after` blocks the whole budget for that long: Telegram's flood wait applies to the bot; a send
  that took over a second (a flood wait served inside python-telegram-bot) holds it for one more window.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable

from core.platform.outbox import ChatSender, DeliveryError, OutgoingMessage

TELEGRAM_RATE = 29.0  # Telegram's ~30/s per bot, less the headroom for direct answers (see the module docstring)
TELEGRAM_PAID_RATE = 950.0  # allow_paid_broadcast lifts the limit to 1000/s; 5% margin keeps us clear of 429s
# Discord allows 50 requests/s per bot; a DM to someone new costs two (open the channel, send).
DISCORD_RATE = 20.0
OTHER_RATE = 50.0  # the terminal chat and anything without a published limit

STALL_SECONDS = 1.0  # a send slower than this waited out a flood wait somewhere (see RateBudget.finished)


class RateBudget:
    """A token bucket (GCRA) at one platform's rate, shared by ordinary sends (priority) and broadcasts (bulk).

    Priority callers reserve the next free slot at once; bulk callers only take a slot that is due now. So
    ordinary traffic waits at most one interval and a broadcast fills whatever is left.

    Sends are spaced evenly, a little closer than `1/rate` (`headway`), and one that woke late may take its
    slot up to a quarter interval (at least 5 ms) early (`slack`), so a busy event loop does not cost
    throughput; a sliding window caps all sends at `rate` per second. So every 31 consecutive sends span more
    than a second plus ~25 ms at 29/s: that, and the platform's last slot per second (30 vs 29), is the margin
    for network jitter. Priority sends count in the same window, so ordinary traffic and a broadcast together
    stay at `rate` per second.
    """

    def __init__(self, rate: float, *, slack: float = 0.25, headway: float = 1.05, window: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.interval = 1.0 / (rate * headway)
        self.window = window
        self.cap = max(1, math.floor(rate * window))
        # At high rates an interval is shorter than an event-loop turn; a few milliseconds of catch-up keep a
        # busy loop from costing throughput there (the window still caps the second).
        self._slack = max(slack * self.interval, 0.005)
        self._next = 0.0
        self._blocked_until = 0.0
        self._starts: deque[float] = deque()  # start times, ascending (every taker records a later time)
        self._bulk_turn = asyncio.Lock()
        self.taken = 0

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def hold(self, seconds: float) -> None:
        """Nobody sends for `seconds` (a flood wait from the platform)."""
        self._blocked_until = max(self._blocked_until, self._now() + max(0.0, seconds))

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._now())

    def finished(self, started: float) -> None:
        """Report a send that began at `started` (monotonic) and just ended.

        One that took over `STALL_SECONDS` was almost certainly held in a flood wait inside the client library
        (python-telegram-bot's AIORateLimiter retries a 429 itself, holding every request meanwhile): the
        requests it held are reaching the platform together right now, so nobody starts another for a window,
        or that burst and our regular pace would add up to a fresh 429, and the next wait to a fresh burst."""
        if self._now() - started > STALL_SECONDS:
            self.hold(self.window)

    def _earliest(self, now: float) -> float:
        """The first moment a send may start: spacing, flood wait, and fewer than `cap` starts in the window."""
        while self._starts and self._starts[0] <= now - self.window:
            self._starts.popleft()
        slot = max(self._next, now - self._slack, self._blocked_until)
        if len(self._starts) >= self.cap:
            slot = max(slot, self._starts[-self.cap] + self.window)
        return slot

    def _take(self, slot: float, at: float) -> None:
        self._next = slot + self.interval
        self._starts.append(at)
        self.taken += 1

    async def acquire_priority(self) -> None:
        """Ordinary traffic: reserve the next slot now and wait for it (about one interval at most, bar a flood
        wait); the broadcast waits behind the reservation."""
        now = self._now()
        slot = self._earliest(now)
        self._take(slot, max(slot, now))
        if slot > now:
            await asyncio.sleep(slot - now)

    async def acquire_bulk(self, stopped: Callable[[], bool] | None = None) -> bool:
        """A broadcast's turn: wait for a slot nobody reserved; False as soon as `stopped()` says so."""
        # One bulk sender watches the clock at a time (the lock is FIFO): at 950/s, a hundred senders all waking
        # for every slot would spend the CPU the sends need.
        async with self._bulk_turn:
            while True:
                if stopped is not None and stopped():
                    return False
                now = self._now()
                slot = self._earliest(now)
                if slot <= now:
                    self._take(slot, now)
                    return True
                # Short naps: a pause, a cancel or a priority reservation is noticed within 50 ms.
                await asyncio.sleep(min(slot - now, 0.05))


class PacedSender:
    """Wraps a ChatSender so ordinary deliveries take priority slots from the platform's RateBudget."""

    def __init__(self, inner: ChatSender, budget: RateBudget) -> None:
        self.inner = inner
        self.budget = budget
        self.platform = inner.platform

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        await self.budget.acquire_priority()
        started = time.monotonic()
        try:
            return await self.inner.send(chat_id, message)
        except DeliveryError as error:
            if error.retry_after:
                self.budget.hold(error.retry_after)
            raise
        finally:
            self.budget.finished(started)


class PlatformBudgets:
    """The RateBudget each platform's sends share, and Telegram's separate budget for paid broadcasts."""

    def __init__(
        self,
        platforms: Iterable[str],
        *,
        telegram_rate: float,
        paid_rate: float,
        discord_rate: float,
        other_rate: float,
        budgets: dict[str, RateBudget] | None = None,
    ) -> None:
        if paid_rate > 1000:
            raise ValueError("Telegram's paid broadcasts allow 1000 messages per second at most")
        self.rates = {"telegram": telegram_rate, "discord": discord_rate}
        self.other_rate = other_rate
        self.paid_rate = paid_rate
        self.shared: dict[str, RateBudget] = dict(budgets or {})
        for platform in platforms:
            self.shared.setdefault(platform, RateBudget(self.rates.get(platform, other_rate)))
        self.paid = RateBudget(paid_rate)

    def rate(self, platform: str, paid: bool) -> float:
        if paid and platform == "telegram":
            return self.paid_rate
        return self.shared[platform].rate

    def budget(self, platform: str, paid: bool) -> RateBudget:
        return self.paid if paid and platform == "telegram" else self.shared[platform]

    def paced(self, senders: dict[str, ChatSender]) -> dict[str, ChatSender]:
        """The same senders for the outbox, drawing priority slots from the budgets broadcasts share."""
        return {platform: PacedSender(sender, self.shared[platform]) for platform, sender in senders.items()}
