"""How the Telegram front end reaches the Bot API: every request through the bot's flood budget (a
python-telegram-bot rate limiter), over an aiohttp transport, which costs a fraction of httpx's CPU per call."""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import certifi
from aiohttp.helpers import get_env_proxy_for_url
from telegram._utils.defaultvalue import DefaultValue
from telegram.error import NetworkError, RetryAfter, TimedOut
from telegram.ext import BaseRateLimiter
from telegram.request import BaseRequest, RequestData
from yarl import URL

from core.platform.pacing import BotBudget, current_traffic

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0  # connect, read and write, as python-telegram-bot's own httpx request
ANSWER_RETRIES = 3  # flood waits a direct answer waits out before the 429 reaches the handler


def counts_as_message(endpoint: str) -> bool:
    """The requests Telegram's message limits count: sending, copying and forwarding (not chat actions, edits,
    button answers or reads)."""
    lower = endpoint.lower()
    return lower.startswith(("send", "copymessage", "forwardmessage")) and lower != "sendchataction"


def retry_seconds(error: RetryAfter) -> float:
    retry = error.retry_after
    return retry.total_seconds() if hasattr(retry, "total_seconds") else float(retry)


class BudgetRateLimiter(BaseRateLimiter[int]):
    """python-telegram-bot's hook into every Bot API request, taking each message's slot from the bot's budget.

    A message waits for a slot by the rank of the traffic it belongs to (`core.platform.pacing.traffic`): answers
    first, then relays and codes, alerts, broadcasts; `allow_paid_broadcast` ones take the paid budget. A 429 holds
    the budget for its `retry_after`; a direct answer then tries again (up to `max_retries` times, or the
    `rate_limit_args` of the call), while the outbox and the broadcast runner get the error back and retry in
    their own way. Requests that are not messages pass at once.
    """

    def __init__(self, budget: BotBudget, max_retries: int = ANSWER_RETRIES) -> None:
        self.budget = budget
        self.max_retries = max_retries

    async def initialize(self) -> None:
        """Nothing to set up: the budget lives as long as the front end."""

    async def shutdown(self) -> None:
        """Nothing to release."""

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        flow = current_traffic()
        budget = self.budget.budget(paid=bool(data.get("allow_paid_broadcast")))
        message = counts_as_message(endpoint)
        retries = (rate_limit_args if rate_limit_args is not None else self.max_retries) if flow.wait_out_floods else 0
        for attempt in itertools.count():
            ticket = await budget.acquire(data.get("chat_id"), flow) if message else None
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as error:
                seconds = retry_seconds(error)
                budget.hold(seconds)
                if attempt >= retries:
                    raise
                log.info("telegram: flood wait of %.1f s on %s; trying again after it", seconds, endpoint)
                if not message:
                    await asyncio.sleep(seconds)
            finally:
                if ticket is not None:
                    budget.finished(ticket)
        raise AssertionError("unreachable")


class AiohttpRequest(BaseRequest):
    """python-telegram-bot's BaseRequest over one aiohttp session.

    httpx spends about 1.3 ms of CPU per message here, which holds one process near 700 messages/s where Telegram's
    paid broadcasts allow 1000/s; a backlog of relays sent at 30/s cost `cumapp run` 7.1-7.9 ms of CPU per relay
    on httpx and 5.4-6.5 ms on this (bench/process_hot_paths.py, "drain"). getUpdates (polling mode) keeps
    python-telegram-bot's own httpx request, with its long-poll timeouts."""

    def __init__(self, connections: int = 256, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._connections = connections
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    @property
    def read_timeout(self) -> float | None:
        return self._timeout

    async def initialize(self) -> None:
        if self._session is None:
            # As httpx did: certifi's CA bundle (and HTTPS_PROXY, see _proxy_for).
            tls = ssl.create_default_context(cafile=certifi.where())
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=tls),
                headers={"User-Agent": self.USER_AGENT},
            )

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _proxy_for(self, url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """HTTPS_PROXY/NO_PROXY for the url's host, read once per host: aiohttp's own trust_env reads them, and
        ~/.netrc, in a worker thread on every request, two thread hops per message."""
        target = URL(url)
        key = (target.scheme, target.host or "")
        if key not in self._proxies:
            try:
                self._proxies[key] = get_env_proxy_for_url(target)
            except LookupError:
                self._proxies[key] = (None, None)
        return self._proxies[key]

    def _seconds(self, value: Any, default: float) -> float | None:
        return default if isinstance(value, DefaultValue) else value

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if self._session is None:
            raise RuntimeError("AiohttpRequest is not initialized")
        data: Any = None
        files = request_data is not None and request_data.contains_files
        if request_data is not None:
            if files:
                form = aiohttp.FormData()
                # The files are only the file parts: every other parameter (chat_id, caption, ...) is a field too.
                for name, field in request_data.json_parameters.items():
                    form.add_field(name, field)
                for name, value in request_data.multipart_data.items():
                    filename, content, mime = value if isinstance(value, tuple) else (None, value, None)
                    form.add_field(name, content, filename=filename, content_type=mime)
                data = form
            else:
                data = request_data.json_parameters
        # aiohttp starts the read timeout once the body is written, as httpx's read timeout: an answer that does
        # not come within it (Telegram hanging) fails the send in 5 s, and the outbox retries it.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._seconds(connect_timeout, self._timeout),
            sock_read=self._seconds(read_timeout, self._timeout),
        )
        try:
            proxy, proxy_auth = self._proxy_for(url)
            async with self._session.request(
                method, url, data=data, timeout=timeout, proxy=proxy, proxy_auth=proxy_auth
            ) as response:
                return response.status, await response.read()
        except TimeoutError as error:
            raise TimedOut from error
        except aiohttp.ClientError as error:
            raise NetworkError(f"aiohttp.{error.__class__.__name__}: {error}") from error
