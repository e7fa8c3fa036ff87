"""An in-memory ChatSender for tests: records every message it would have sent and fails on cue."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.platform.outbox import DeliveryError, OutgoingMessage

ErrorFactory = Callable[[], BaseException]


def server_error() -> DeliveryError:
    return DeliveryError("500 Internal Server Error")


def rate_limited(retry_after: float = 0.05) -> DeliveryError:
    return DeliveryError(f"429 Too Many Requests: retry after {retry_after}", retry_after=retry_after)


@dataclass(frozen=True)
class SentMessage:
    """A message the platform accepted; `at` is time.monotonic() when it was accepted."""

    chat_id: str
    message: OutgoingMessage
    at: float
    message_id: str


@dataclass(frozen=True)
class Attempt:
    """Every call to send(), in the order they finished; `error` is None when it was accepted."""

    chat_id: str
    message: OutgoingMessage
    started_at: float
    at: float
    error: BaseException | None


@dataclass
class _Failure:
    factory: ErrorFactory
    chat_id: str | None
    remaining: int | None = None
    until: float | None = None
    probability: float | None = None
    rng: random.Random | None = None

    def live(self, now: float) -> bool:
        if self.remaining is not None:
            return self.remaining > 0
        if self.until is not None:
            return now < self.until
        return True

    def fires(self, chat_id: str, now: float) -> bool:
        if self.chat_id is not None and self.chat_id != chat_id:
            return False
        if not self.live(now):
            return False
        if self.probability is not None:
            assert self.rng is not None
            return self.rng.random() < self.probability
        if self.remaining is not None:
            self.remaining -= 1
        return True


class RecordingSender:
    """Implements core.platform.outbox.ChatSender without a network.

    `sent` holds accepted messages in order, `attempts` every call. `overlaps` counts sends that started while
    another send to the same chat was still running (a dispatcher must never do that), `max_in_flight` the
    highest number of sends running at once.
    """

    def __init__(self, platform: str = "telegram", *, latency: float = 0.0) -> None:
        self.platform = platform
        self.latency = latency
        self.sent: list[SentMessage] = []
        self.attempts: list[Attempt] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.overlaps = 0
        self._chats_in_flight: set[str] = set()
        self._failures: list[_Failure] = []
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    # -- scripting --

    def fail_next(self, n: int, error_factory: ErrorFactory = server_error, *, chat_id: str | None = None) -> None:
        """The next `n` sends (to `chat_id`, if given) raise what `error_factory` returns."""
        self._failures.append(_Failure(error_factory, chat_id, remaining=n))

    def fail_for(
        self,
        seconds: float,
        retry_after: float | None = None,
        permanent: bool = False,
        blocked: bool = False,
        *,
        chat_id: str | None = None,
        error_factory: ErrorFactory | None = None,
    ) -> None:
        """Every send (to `chat_id`, if given) in the next `seconds` fails with a DeliveryError of that kind."""

        def default() -> DeliveryError:
            reason = "403 Forbidden: bot was blocked by the user" if blocked else (
                "429 Too Many Requests" if retry_after is not None else (
                    "400 Bad Request" if permanent else "502 Bad Gateway"
                )
            )
            return DeliveryError(reason, retry_after=retry_after, permanent=permanent, blocked=blocked)

        self._failures.append(
            _Failure(error_factory or default, chat_id, until=time.monotonic() + seconds)
        )

    def fail_randomly(
        self,
        probability: float,
        error_factory: ErrorFactory = server_error,
        *,
        seed: int = 0,
        chat_id: str | None = None,
    ) -> None:
        """Each send fails with `probability`, from a seeded generator so a failing run can be repeated."""
        self._failures.append(
            _Failure(error_factory, chat_id, probability=probability, rng=random.Random(seed))
        )

    def heal(self) -> None:
        """Forget every scripted failure."""
        self._failures.clear()

    # -- ChatSender --

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        started = time.monotonic()
        if chat_id in self._chats_in_flight:
            self.overlaps += 1
        self._chats_in_flight.add(chat_id)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._notify()
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            now = time.monotonic()
            self._failures = [failure for failure in self._failures if failure.live(now)]
            for failure in self._failures:
                if failure.fires(chat_id, now):
                    error = failure.factory()
                    self.attempts.append(Attempt(chat_id, message, started, now, error))
                    raise error
            message_id = str(next(self._ids))
            self.sent.append(SentMessage(chat_id, message, now, message_id))
            self.attempts.append(Attempt(chat_id, message, started, now, None))
            return message_id
        finally:
            self.in_flight -= 1
            self._chats_in_flight.discard(chat_id)
            self._notify()

    # -- reading --

    def texts(self, chat_id: str | None = None) -> list[str]:
        return [sent.message.text for sent in self.sent if chat_id is None or sent.chat_id == chat_id]

    async def wait_until(self, condition: Callable[[RecordingSender], bool], within: float = 5.0) -> None:
        """Return as soon as `condition(self)` holds, without polling; TimeoutError after `within` seconds."""
        async with asyncio.timeout(within):
            while not condition(self):
                changed = self._changed
                await changed.wait()

    async def wait_for(self, count: int, within: float = 5.0) -> None:
        """Until at least `count` messages were accepted."""
        await self.wait_until(lambda sender: len(sender.sent) >= count, within)

    def _notify(self) -> None:
        # A fresh event per change: waiters wake, re-check their condition and wait on the new one.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
