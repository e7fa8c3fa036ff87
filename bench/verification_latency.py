"""Benchmark: a verification code's trip from TextVerified to the chat platform, by webhook and by polling.

Everything runs on 127.0.0.1: the fake TextVerified API, the real webhook server (aiohttp), the real
TextVerifiedProvider, the VerificationService, the outbox dispatcher (started as in production) and a timing
ChatSender standing in for Telegram. Latency is measured from just before the signed webhook POST leaves the
client (webhook path) or from the moment the SMS lands at the fake provider (polling path) to the moment the
sender's `send` is called with the code message. Webhooks are sent one at a time, as a Poisson stream (`--rate`)
and in bursts that all arrive at the same instant (`--burst`); each scenario gets a fresh database.

    python -m bench.verification_latency --count 200 \\
        --pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from core.models import Base, Verification
from core.money import accounts
from core.money.accounts import Contact
from core.platform.db import Database
from core.platform.outbox import OutboxDispatcher, OutgoingMessage
from core.platform.scheduler import Scheduler
from core.platform.settings import Settings
from core.providers.verification import sign_webhook
from core.services import Services, build_services
from core.verification.service import build_verification_service
from tests.fakes.textverified_api import FakeTextVerifiedServer
from webhooks.server import WebServer, create_app
from webhooks.textverified import PATH, add_routes

SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQ="
SMS_TEXT = "Your WhatsApp code: {a}-{b}\n\nDon't share this code with others"
WARM_UP = 5


class TimingSender:
    """A ChatSender that notes when each chat's code message reached it (time.monotonic)."""

    platform = "telegram"

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.events: dict[str, asyncio.Event] = {}

    def expect(self, chat_id: str) -> asyncio.Event:
        return self.events.setdefault(chat_id, asyncio.Event())

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        now = time.monotonic()
        if chat_id not in self.arrived:
            self.arrived[chat_id] = now
            self.expect(chat_id).set()
        return str(len(self.arrived))


@dataclass
class Result:
    engine: str
    path: str
    latencies_ms: list[float]

    def row(self) -> str:
        values = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]  # nearest rank

        return (
            f"| {self.engine} | {self.path} | {len(values)} | {pct(50):.1f} | {pct(90):.1f} | {pct(99):.1f} | "
            f"{values[-1]:.1f} | {statistics.fmean(values):.1f} |"
        )


HEADER = "| database | path | n | p50 ms | p90 ms | p99 ms | max ms | mean ms |\n|---|---|---|---|---|---|---|---|"


@asynccontextmanager
async def database(engine: str, pg_url: str | None) -> AsyncIterator[str]:
    """A fresh, empty schema: a temporary SQLite file, or a PostgreSQL database created and dropped for the run."""
    if engine == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
            db = Database(url)
            async with db.engine.begin() as connection:
                await connection.run_sync(Base.metadata.create_all)
            await db.dispose()
            yield url
        return
    assert pg_url is not None
    name = f"cumapp_bench_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(pg_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{pg_url.rpartition('/')[0]}/{name}"
    schema = create_async_engine(url)
    async with schema.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await schema.dispose()
    try:
        yield url
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@asynccontextmanager
async def running_app(url: str, fake: FakeTextVerifiedServer, poll_seconds: int) -> AsyncIterator[
    tuple[Services, TimingSender, str]
]:
    fake.balance = 1_000_000.0  # our account at the provider pays for every rental of the run
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url, sandbox="auto", http_host="127.0.0.1", http_port=0,
        textverified_api_key=fake.api_key, textverified_api_username=fake.username, textverified_base_url=fake.url,
        textverified_webhook_secret=SECRET, verification_poll_seconds=poll_seconds,
        # One account per verification keeps the numbers realistic; the limits must not get in the way.
        tier_limits={"free": {"verifications_per_day": 10_000, "verifications_at_once": 10_000}},
    )
    services = build_services(settings)
    services.verification = build_verification_service(settings, services.db, services.metrics, services.plan)
    sender = TimingSender()
    dispatcher = OutboxDispatcher(services.db, {"telegram": sender}, metrics=services.metrics)
    services.outbox = dispatcher
    server = WebServer(create_app(services, [add_routes]), "127.0.0.1", 0)
    await server.start()
    await dispatcher.start()
    try:
        yield services, sender, f"http://127.0.0.1:{server.port}{PATH}"
    finally:
        await dispatcher.stop()
        await server.stop()
        await services.verification.close()
        await services.close()


async def open_verifications(services: Services, count: int, offset: int = 0) -> list[tuple[Verification, str]]:
    """One account (with its own chat) and one open verification per account."""
    opened: list[tuple[Verification, str]] = []
    for index in range(offset, offset + count):
        chat = str(10_000 + index)
        async with services.db.transaction() as session:
            user = (await accounts.get_or_create(session, Contact("telegram", chat, chat_id=chat), signup_bonus_cents=1_000)).user
        opened.append((await services.verification.start(user.id, "whatsapp", f"bench-{index}"), chat))
    return opened


async def bench_webhook(engine: str, url: str, count: int, *, mode: str, rate: float = 20.0, burst: int = 20) -> Result:
    """Signed webhooks POSTed to the running server: one at a time, at `rate` per second (Poisson), or in bursts."""
    async with FakeTextVerifiedServer() as fake, running_app(url, fake, poll_seconds=3600) as (services, sender, hook):
        opened = await open_verifications(services, count + WARM_UP)
        rng = random.Random(1)
        latencies: list[float] = []
        async with ClientSession() as http:

            async def one(verification: Verification, chat: str, at: float = 0.0) -> None:
                code = f"{rng.randrange(1_000_000):06d}"
                body = fake.webhook_payload(
                    verification.provider_verification_id or "", SMS_TEXT.format(a=code[:3], b=code[3:]),
                    event_id=f"evt_{verification.id}",
                )
                headers = {"Content-Type": "application/json", "X-Webhook-Signature": sign_webhook(SECRET, body)}
                arrived = sender.expect(chat)
                if at:
                    await asyncio.sleep(max(0.0, at - time.monotonic()))
                started = time.monotonic()
                async with http.post(hook, data=body, headers=headers) as response:
                    assert response.status == 200, response.status
                await asyncio.wait_for(arrived.wait(), 30)
                latencies.append((sender.arrived[chat] - started) * 1000)

            # Warm-up: connection pools, prepared statements, the provider's token.
            for verification, chat in opened[:WARM_UP]:
                await one(verification, chat)
            latencies.clear()
            measured = opened[WARM_UP:]
            if mode == "sequential":
                for verification, chat in measured:
                    await one(verification, chat)
                label = "webhook, one at a time"
            elif mode == "rate":
                moment, schedule = time.monotonic() + 0.1, []
                for _ in measured:
                    moment += rng.expovariate(rate)
                    schedule.append(moment)
                await asyncio.gather(*(one(v, chat, at) for (v, chat), at in zip(measured, schedule, strict=True)))
                label = f"webhook, Poisson {rate:g}/s"
            else:
                for first in range(0, len(measured), burst):
                    await asyncio.gather(*(one(v, chat) for v, chat in measured[first : first + burst]))
                label = f"webhook, bursts of {burst} at once"
        return Result(engine, label, latencies)


async def bench_polling(engine: str, url: str, count: int, *, open_at_once: int, spread_seconds: float) -> Result:
    """Webhooks never arrive: the scheduler's 1 s poll finds each SMS at the fake provider.

    Verifications are opened in waves of `open_at_once`; each wave's SMS land at random moments within
    `spread_seconds`, so the latency shows where in the poll interval an SMS happens to arrive."""
    async with FakeTextVerifiedServer() as fake, running_app(url, fake, poll_seconds=1) as (services, sender, _hook):
        scheduler = Scheduler(services.db)
        services.verification.start_jobs(scheduler)
        scheduler.start()
        rng = random.Random(2)
        delivered_at: dict[str, float] = {}
        try:
            for first in range(0, count, open_at_once):
                wave = await open_verifications(services, min(open_at_once, count - first), offset=first)

                async def deliver(verification: Verification, chat: str) -> None:
                    await asyncio.sleep(rng.uniform(0, spread_seconds))
                    code = f"{rng.randrange(1_000_000):06d}"
                    delivered_at[chat] = time.monotonic()
                    fake.deliver_sms(
                        verification.provider_verification_id or "", SMS_TEXT.format(a=code[:3], b=code[3:])
                    )

                await asyncio.gather(*(deliver(v, chat) for v, chat in wave))
                await asyncio.wait_for(asyncio.gather(*(sender.expect(chat).wait() for _, chat in wave)), timeout=30)
        finally:
            await scheduler.stop()
        latencies = [(sender.arrived[chat] - at) * 1000 for chat, at in delivered_at.items()]
        return Result(engine, f"polling, 1 s interval, {open_at_once} open", latencies)


async def main(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    engines = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    for engine in engines:
        for scenario in scenarios:
            async with database(engine, args.pg_url) as url:
                if scenario == "polling":
                    results.append(
                        await bench_polling(
                            engine, url, args.count, open_at_once=args.poll_open, spread_seconds=args.spread
                        )
                    )
                else:
                    results.append(
                        await bench_webhook(engine, url, args.count, mode=scenario, rate=args.rate, burst=args.burst)
                    )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=200, help="verifications per scenario (default 200)")
    parser.add_argument("--pg-url", default=None, help="PostgreSQL server URL; the bench creates its own database")
    parser.add_argument("--rate", type=float, default=20.0, help="webhooks per second in the Poisson run")
    parser.add_argument("--burst", type=int, default=20, help="webhooks sent at the same instant in the burst run")
    parser.add_argument("--poll-open", type=int, default=20, help="verifications open at once in the polling run")
    parser.add_argument("--spread", type=float, default=2.0, help="seconds over which a wave's polled SMS arrive")
    parser.add_argument(
        "--scenarios", default="sequential,rate,burst,polling",
        help="comma-separated, from: sequential, rate, burst, polling",
    )
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    # The access log would print one line per webhook.
    logging.getLogger("cumapp.access").setLevel(logging.WARNING)
    args: Any = parse_args(argv)
    results = asyncio.run(main(args))
    print(HEADER)
    for result in results:
        print(result.row())


if __name__ == "__main__":
    run()
