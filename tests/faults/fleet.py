"""`cumapp run` as real processes on one PostgreSQL database, for the fault tests and bench/faults.py.

The fake Bot API and the fake Twilio run in the calling process; each `cumapp run` reaches the fake Bot API
through its own FaultProxy. Signed Twilio inbound SMS are posted to the processes' webhook ports as a load
balancer would (PUBLIC_BASE_URL is the balancer's address, which Twilio signs). Every SMS body carries a tag,
so what reached the fake Bot API can be counted per SMS: lost, delivered once, duplicated, in order per chat.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from core.messaging.gateway import TWILIO_SMS_PATH
from core.models import OutboxDelivery, PhoneNumber
from core.money.accounts import Contact, get_or_create
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.migrate import upgrade_to_head_async
from core.platform.outbox.liveness import NAMESPACE
from tests.fakes.telegram_api import FakeTelegramServer
from tests.fakes.twilio_api import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    FakeTwilioServer,
    build_inbound_webhook,
)
from tests.faults.cluster import free_port
from tests.faults.proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_BASE_URL = "https://cumapp.test"  # the load balancer's address: Telegram wants https
WEBHOOK_SECRET = "fault-webhook-secret"
SENDER = "+14155550111"
_TAG = re.compile(r"fault-([0-9a-f]{6})-(\d{6})")
# What a process must not inherit from the caller's environment.
_SCRUBBED = ("TELEGRAM", "DISCORD", "TWILIO", "VONAGE", "GROQ", "TEXTVERIFIED", "SANDBOX", "DATABASE_URL",
             "DATA_ENCRYPTION", "HTTP_", "PUBLIC_BASE_URL", "METRICS_", "LOG_", "ADMIN_")


async def eventually(check: Callable[[], bool], within: float, step: float = 0.02) -> bool:
    """Poll `check` until it holds (True) or `within` seconds pass (False)."""
    deadline = time.monotonic() + within
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)


async def create_database(admin_url: str, name: str) -> str:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    return f"{admin_url.rpartition('/')[0]}/{name}"


async def drop_database(admin_url: str, name: str) -> None:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


async def seed(url: str, chats: int) -> list[tuple[str, int]]:
    """The schema, and `chats` users with one Twilio number each: (number, Telegram chat id) pairs."""
    await upgrade_to_head_async(url)
    db = Database(url)
    targets: list[tuple[str, int]] = []
    try:
        async with db.transaction() as session:
            for i in range(chats):
                chat = 810_000 + i
                account = await get_or_create(session, Contact("telegram", str(chat), chat_id=str(chat)))
                e164 = f"+1415555{1000 + i:04d}"
                session.add(PhoneNumber(user_id=account.user.id, provider="twilio", provider_sid=f"PNfault{i:026d}",
                                        e164=e164, country="US", monthly_price_cents=115, purchased_at=utcnow()))
                targets.append((e164, chat))
    finally:
        await db.dispose()
    return targets


async def outbox_states(url: str) -> dict[str, int]:
    """Deliveries per state (no payload is read, so no key is needed)."""
    db = Database(url)
    try:
        async with db.read() as session:
            rows = (await session.execute(
                select(OutboxDelivery.state, func.count()).group_by(OutboxDelivery.state))).all()
    finally:
        await db.dispose()
    return {state: int(count) for state, count in rows}


async def unrecorded_claims_of_the_dead(url: str) -> int:
    """Deliveries still claimed by instances whose liveness lock is gone: sends a dead process started and did not
    record. Each may have reached Telegram and is sent once more by the instance that takes it over."""
    db = Database(url)
    try:
        async with db.read() as session:
            count = await session.scalar(text(
                "SELECT count(*) FROM outbox_deliveries WHERE state = 'sending' AND claimed_by NOT IN ("
                "SELECT objid::integer FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = :ns "
                "AND objsubid = 2)"
            ), {"ns": NAMESPACE})
    finally:
        await db.dispose()
    return int(count or 0)


@dataclass
class CumappProcess:
    """One `cumapp run`, its webhook port, its proxy to the Bot API and its JSON log."""

    name: str
    env: dict[str, str]
    workdir: Path
    proxy: FaultProxy
    port: int
    process: asyncio.subprocess.Process | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "run", "--no-console", "--no-migrate", cwd=self.workdir,
                env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )

    async def wait_ready(self, http: aiohttp.ClientSession, within: float = 60.0) -> None:
        """Until /readyz answers 200 (the database answers and every part started)."""
        deadline = time.monotonic() + within
        while True:
            assert self.process is not None
            if self.process.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            try:
                async with http.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200 and "started" in self.log_text():
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {within} s:\n{self.log_text()[-4000:]}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no shutdown, no release of anything."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                found.append({"level": "RAW", "message": line})
                continue
            if isinstance(record, dict):
                found.append(record)
        return found

    def errors(self) -> list[dict[str, Any]]:
        """ERROR and CRITICAL records, and anything printed outside the log format (a bare traceback)."""
        return [r for r in self.records() if r.get("level") in ("ERROR", "CRITICAL", "RAW")]

    def tracebacks(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("exc_info")]


class Fleet:
    """Fake Bot API and Twilio here, N `cumapp run` processes there, one PostgreSQL database between them."""

    def __init__(self, database_url: str, workdir: Path, *, processes: int = 2, chats: int = 10) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.count = processes
        self.chat_count = chats
        self.run = os.urandom(3).hex()
        self.telegram = FakeTelegramServer()
        self.twilio = FakeTwilioServer()
        self.processes: list[CumappProcess] = []
        self.targets: list[tuple[str, int]] = []
        self.http: aiohttp.ClientSession | None = None
        self.key = Fernet.generate_key().decode()
        self.posted: dict[int, list[int]] = {}  # SMS index -> HTTP statuses of each post (0: no answer)

    async def __aenter__(self) -> Fleet:
        await self.telegram.start()
        await self.twilio.__aenter__()
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        self.targets = await seed(self.database_url, self.chat_count)
        for n in range(self.count):
            proxy = await FaultProxy(self.telegram.url, seed=n).start()
            self.processes.append(CumappProcess(f"cumapp-{n + 1}", {}, self.workdir / f"p{n + 1}", proxy, free_port()))
        for process in self.processes:
            process.env = self._env(process)
        await asyncio.gather(*(process.start() for process in self.processes))
        await asyncio.gather(*(process.wait_ready(self.http) for process in self.processes))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(process.stop() for process in self.processes), return_exceptions=True)
        for process in self.processes:
            await process.proxy.stop()
        if self.http is not None:
            await self.http.close()
        await self.twilio.__aexit__(None, None, None)
        await self.telegram.stop()

    def _env(self, process: CumappProcess) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
        env.update({
            "DATABASE_URL": self.database_url, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(process.port),
            "PUBLIC_BASE_URL": PUBLIC_BASE_URL, "TELEGRAM_BOT_TOKEN": self.telegram.token,
            "TELEGRAM_API_BASE_URL": process.proxy.base_url, "TELEGRAM_MODE": "webhook",
            "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET, "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN, "TWILIO_API_BASE_URL": self.twilio.base_url,
            "DATA_ENCRYPTION_KEYS": self.key, "LOG_FORMAT": "json", "PYTHONPATH": str(ROOT),
            "PTB_TIMEDELTA": "true",
        })
        return env

    # -- SMS in --

    def tag(self, index: int) -> str:
        return f"fault-{self.run}-{index:06d}"

    def chat_of(self, index: int) -> int:
        return self.targets[index % len(self.targets)][1]

    async def post_sms(self, index: int, process: int | None = None, *, timeout: float = 20.0) -> int:
        """POST SMS `index` (to number index % chats) to one process's webhook; the HTTP status, 0 if none came."""
        assert self.http is not None
        target = self.processes[index % self.count if process is None else process]
        number = self.targets[index % len(self.targets)][0]
        hook = build_inbound_webhook(
            DEFAULT_AUTH_TOKEN, f"{PUBLIC_BASE_URL}{TWILIO_SMS_PATH}", from_=SENDER, to=number,
            body=f"hello {self.tag(index)}", message_sid=f"SM{self.run}{index:026d}",
        )
        try:
            async with self.http.post(f"{target.url}{TWILIO_SMS_PATH}", data=hook.params, headers=hook.headers,
                                      timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.posted.setdefault(index, []).append(status)
        return status

    async def post_until_accepted(self, index: int, process: int | None = None, *, pause: float = 0.5) -> None:
        """What a provider does with a webhook that did not get 200: try again until it does."""
        for _attempt in range(1200):
            if await self.post_sms(index, process) == 200:
                return
            await asyncio.sleep(pause)
        raise TimeoutError(f"SMS {index} never accepted")

    async def post_in_chat_order(self, indexes: list[int], *, process: int | None = None, pause: float = 0.0,
                                 until_accepted: bool = False) -> None:
        """Post SMS one chat at a time in index order (each waits for the one before it in its chat), all chats
        at once, so each chat's queue order is its index order. `until_accepted` re-posts a refused one, as a
        provider retries a webhook that did not get 200."""
        by_chat: dict[int, list[int]] = {}
        for index in indexes:
            by_chat.setdefault(self.chat_of(index), []).append(index)

        async def one_chat(chat_indexes: list[int]) -> None:
            for index in chat_indexes:
                if until_accepted:
                    await self.post_until_accepted(index, process)
                else:
                    await self.post_sms(index, process)
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(one_chat(chat_indexes) for chat_indexes in by_chat.values()))

    # -- what reached the chats --

    def deliveries(self) -> list[tuple[int, int, float]]:
        """(SMS index, chat, time) of every relayed SMS the fake Bot API accepted, in the order it did."""
        found = []
        for call in self.telegram.calls:
            if call.method != "sendMessage" or not call.ok:
                continue
            match = _TAG.search(str(call.params.get("text", "")))
            if match and match.group(1) == self.run:
                found.append((int(match.group(2)), int(call.params.get("chat_id", 0)), call.at))
        return found

    def counts(self) -> Counter[int]:
        return Counter(index for index, _, _ in self.deliveries())

    async def wait_delivered(self, indexes: set[int], within: float) -> float | None:
        """Until each of `indexes` reached the chat at least once; the monotonic time it happened, None if not."""
        if await eventually(lambda: indexes <= set(self.counts()), within):
            return time.monotonic()
        return None

    def out_of_order(self) -> list[int]:
        """Chats whose SMS arrived in another order than they were posted (posted with post_in_chat_order)."""
        bad = []
        per_chat: dict[int, list[int]] = {}
        for index, chat, _ in self.deliveries():
            per_chat.setdefault(chat, []).append(index)
        for chat, seen in per_chat.items():
            firsts = list(dict.fromkeys(seen))
            if firsts != sorted(firsts):
                bad.append(chat)
        return bad

    def summary(self, indexes: set[int]) -> dict[str, int]:
        counts = self.counts()
        return {
            "sms": len(indexes),
            "lost": sum(1 for index in indexes if counts[index] == 0),
            "duplicated": sum(counts[index] - 1 for index in indexes if counts[index] > 1),
        }
