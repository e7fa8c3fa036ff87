"""What one slow or greedy client may hold on the web server: header and body deadlines, connections per address.

aiohttp reads request headers with no deadline of its own (a connection that sends half a request line is kept
for the whole keep-alive time, an hour by default) and never times out a slowly sent body. So every connection
goes through a `ConnectionGuard`: a protocol wrapped around aiohttp's `RequestHandler` that closes a connection
which has not completed its request headers in time and refuses connections beyond the per-address cap, and a
middleware that reads each body within its deadline before the handler runs. Keep-alive is aiohttp's own timer,
set from HTTP_KEEPALIVE_SECONDS (it also closes a connection that stalls in the middle of its next request).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from core.platform.settings import Settings

log = logging.getLogger("cumapp.http")

# After an early answer (408, 413) aiohttp keeps reading the unread body this long so that the client sees the
# answer rather than a reset; bounded so that a slow sender cannot use it to stay connected.
LINGER_SECONDS = 2.0
# A burst of connections from everywhere must not all wait in the kernel's queue behind the first 128.
LISTEN_BACKLOG = 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits, in seconds and connections; `max_per_client` 0 means no cap."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive: float = 75.0
    max_per_client: int = 128

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.http_header_timeout_seconds,
            body_timeout=settings.http_body_timeout_seconds,
            keepalive=settings.http_keepalive_seconds,
            max_per_client=settings.http_max_connections_per_client,
        )


class QuietWarnings:
    """One WARNING per kind per minute, saying how many more were held back: a flood must not become a log flood."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._log = logger
        self._interval = interval
        self._next: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._held[kind] += 1
            return
        held = self._held.pop(kind, 0)
        self._next[kind] = now + self._interval
        if held:
            message += f" (and {held} more like it in the last minute)"
        self._log.warning(message, *args)


def _peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


class _GuardedConnection(asyncio.Protocol):
    """One connection: forwards everything to aiohttp's handler and runs the header deadline around it.

    States: waiting for headers (deadline running), busy with a request (no deadline: the body has its own in the
    middleware, the handler may take its time), idle between requests (aiohttp's keep-alive timer; the header
    deadline starts again at the next request's first byte, or as the request in hand ends when bytes of the next
    one came in meanwhile). Bytes of the next request that share a packet with the end of the body are only seen
    by aiohttp's parser: such a connection is closed by the keep-alive timer instead."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._admitted = False
        self._busy = False
        self._body_done = False  # busy, and the request's body is all in: any byte now belongs to the next request
        self._next_started = False
        self._deadline: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes, but they have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        self._peer = _peer_address(transport)
        if not self._guard._admit(self._peer):
            transport.abort()  # aiohttp never hears of it
            return
        self._admitted = True
        self._guard._connections[transport] = self
        self._start_deadline()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if not self._busy and self._deadline is None:
            self._start_deadline()  # the first byte of the next request on a kept-alive connection
        elif self._body_done:
            self._next_started = True  # pipelined behind the request in hand: its deadline starts when that ends
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if not self._admitted:
            return
        self._admitted = False
        if self._transport is not None:
            self._guard._connections.pop(self._transport, None)
        self._guard._release(self._peer)
        self._inner.connection_lost(exc)

    # --- called by the guard's middleware ------------------------------------------------------------------

    def request_started(self) -> None:
        self._busy = True
        self._body_done = self._next_started = False
        self._cancel_deadline()

    def body_read(self) -> None:
        self._body_done = True

    def request_finished(self) -> None:
        self._busy = self._body_done = False
        if self._next_started:
            self._next_started = False
            self._start_deadline()

    # --- the header deadline -------------------------------------------------------------------------------

    def _start_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.limits.header_timeout, self._headers_too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._busy or self._transport is None:
            return
        self._guard.warnings.warning(
            "header-timeout", "closed a connection from %s: no complete request headers within %g s",
            self._peer, self._guard.limits.header_timeout,
        )
        self._guard.closed_slow += 1
        self._transport.abort()


class ConnectionGuard:
    """The limits of one server: wraps its protocol factory (header deadline, per-address cap) and gives the
    middleware that reads bodies within their deadline."""

    def __init__(self, limits: ConnectionLimits, count: Callable[[str, str], None] | None = None) -> None:
        self.limits = limits
        self._count = count  # (provider, outcome) into the webhook metrics
        self.warnings = QuietWarnings(log)
        self._connections: dict[asyncio.BaseTransport, _GuardedConnection] = {}
        self._per_client: Counter[str] = Counter()
        self.refused = 0  # connections over the per-address cap, since start (tests and benchmarks read these)
        self.closed_slow = 0  # connections closed by the header deadline

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def protocol_factory(self, make_handler: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """What `loop.create_server` calls for each connection, in place of aiohttp's `Server`."""

        def factory() -> asyncio.Protocol:
            return _GuardedConnection(self, make_handler())

        return factory

    def _admit(self, peer: str) -> bool:
        cap = self.limits.max_per_client
        if cap and self._per_client[peer] >= cap:
            self.refused += 1
            self.warnings.warning(
                "too-many-connections", "refused a connection from %s: it already holds %d (HTTP_MAX_CONNECTIONS_PER_CLIENT)",
                peer, cap,
            )
            return False
        self._per_client[peer] += 1
        return True

    def _release(self, peer: str) -> None:
        self._per_client[peer] -= 1
        if self._per_client[peer] <= 0:
            del self._per_client[peer]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """Marks the connection busy, then reads the body within HTTP_BODY_TIMEOUT_SECONDS before the handler
        runs (the handler's own `read()`, `post()` and `json()` then return the cached body)."""
        connection = self._connections.get(request.transport) if request.transport is not None else None
        if connection is not None:
            connection.request_started()
        try:
            if request.body_exists:
                await self._read_body(request)
            if connection is not None:
                connection.body_read()
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            if connection is not None:
                connection.request_finished()

    async def _read_body(self, request: web.Request) -> None:
        limit = request.client_max_size
        declared = request.content_length
        if limit and declared is not None and declared > limit:
            self._refuse(request, "too_large", "a body of %d bytes declared, over HTTP_MAX_BODY_BYTES (%d)",
                         declared, limit)
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=declared, headers={"Connection": "close"})
        try:
            # No timer when the whole body came with the headers, as a webhook's usually does: only a body still on
            # its way can be slow.
            async with asyncio.timeout(None if request.content.is_eof() else self.limits.body_timeout):
                await request.read()
        except TimeoutError:
            self._refuse(request, "timeout", "the body did not arrive within %g s", self.limits.body_timeout)
            raise web.HTTPRequestTimeout(text="request body too slow", headers={"Connection": "close"}) from None
        except web.HTTPRequestEntityTooLarge:
            self._refuse(request, "too_large", "a body over HTTP_MAX_BODY_BYTES (%d)", limit)
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1,
                                                headers={"Connection": "close"}) from None
        except ConnectionResetError:
            if request.transport is not None and not request.transport.is_closing():
                raise  # not the client going away: let it show
            raise web.HTTPBadRequest(text="connection lost") from None  # nobody is left to read the answer
        except (RequestPayloadError, HttpProcessingError) as error:
            # A broken chunked encoding, a Content-Encoding that does not decode: the client's fault.
            self._refuse(request, "malformed", "an unreadable body (%s)", error)
            raise web.HTTPBadRequest(text="unreadable request body", headers={"Connection": "close"}) from None

    def _refuse(self, request: web.Request, outcome: str, reason: str, *args: Any) -> None:
        # Webhook paths are named by provider (/webhooks/<provider>/…): counted where the routes count theirs.
        parts = request.path.split("/")
        if self._count is not None and len(parts) > 2 and parts[1] == "webhooks" and parts[2]:
            self._count(parts[2][:32], outcome)
        self.warnings.warning(f"body-{outcome}", f"%s %s from %s refused: {reason}", request.method, request.path,
                              request.remote, *args)


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, with the client's faults at WARNING.

    aiohttp logs a request it cannot parse (a bad header, an over-long line) with a traceback at ERROR, and so it
    does a body that fails to decode while it drains what is left of it after the answer. That is bad input, not our
    defect: one quiet WARNING line. Everything else (an exception from a handler) stays an ERROR with its
    traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.quiet = QuietWarnings(self.logger)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, HttpProcessingError | RequestPayloadError):
            self.quiet.warning(f"client-{type(error).__name__}", f"{msg}: %s", *args, _describe(error))
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


def _describe(error: BaseException) -> str:
    text = str(error).replace("\n", " ")
    return f"{type(error).__name__}: {text[:200]}"
