"""Benchmark: the time CumApp adds on top of Groq's own answer time for a reply draft and an analysis.

Everything runs on 127.0.0.1: the fake Groq API (tests/fakes/groq_api.py) answered through the real `groq` SDK,
the real GroqEngine, AiAssistant and AiService on a real database (a seeded conversation, opt-in read, token use
recorded). For each request the fake's own time (its handler plus the scripted model delay) is subtracted from the
end-to-end time of `AiService.drafts_for_message` / `analyze_message`; what is left is the database read (message,
thread, opt-in and today's tokens), masking, prompt building, the SDK and loopback HTTP, parsing and validation.
The token count is written after the answer is handed back, so it is not part of what the user waits for. The
fallback rows time the same calls for a user who has not opted in: the whole answer from the offline rules.

    python -m bench.ai_overhead --runs 300 --pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from core.ai.service import AiService, build_ai_assistant
from core.models import Base, Conversation, Message, PhoneNumber, User
from core.platform.db import Database
from core.platform.metrics import Metrics
from core.platform.settings import Settings
from core.providers.plan import plan_providers
from tests.fakes.groq_api import FakeGroqServer

TARGET_ADDED_MS = 20.0
TARGET_FALLBACK_MS = 50.0
THREAD = [
    ("outbound", "Hi Dana, this is Bright Dental: your cleaning is booked for Thursday 10:30."),
    ("inbound", "Thanks! Could I move it to Friday? Call me on +1 415 555 0199 if easier."),
    ("outbound", "Let me check the calendar and get back to you."),
    ("inbound", "Also the portal sent me code 482913, is that from you? Friday afternoon would be best."),
]


class TimedGroq(FakeGroqServer):
    """The fake Groq, also clocking each answer as the client sees it served (the model delay as really slept)."""

    def __init__(self) -> None:
        super().__init__()
        self.served_seconds: list[float] = []

    async def _chat(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            return await super()._chat(request)
        finally:
            self.served_seconds.append(time.perf_counter() - started)


@dataclass
class Result:
    engine: str
    scenario: str
    values_ms: list[float]
    target_ms: float

    def pct(self, p: float) -> float:
        values = sorted(self.values_ms)
        return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]  # nearest rank

    def row(self) -> str:
        verdict = "yes" if self.pct(95) < self.target_ms else "NO"
        return (
            f"| {self.engine} | {self.scenario} | {len(self.values_ms)} | {statistics.median(self.values_ms):.2f} | "
            f"{self.pct(95):.2f} | {max(self.values_ms):.2f} | < {self.target_ms:.0f} | {verdict} |"
        )


HEADER = (
    "| database | measured | runs | median ms | p95 ms | max ms | target | p95 within |\n"
    "|---|---|---|---|---|---|---|---|"
)


@asynccontextmanager
async def database(engine: str, pg_url: str | None) -> AsyncIterator[str]:
    """A fresh schema: a temporary SQLite file, or a PostgreSQL database created and dropped for the run."""
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


async def seed(db: Database, *, opted_in: bool) -> tuple[User, int]:
    """A user with one number and a four-message thread; returns the user and the last inbound SMS's id."""
    async with db.transaction() as session:
        user = User(locale="en", ai_opt_in=opted_in)
        session.add(user)
        await session.flush()
        number = PhoneNumber(user_id=user.id, provider="twilio", provider_sid=f"PN{user.id}", e164="+14155550100",
                             country="US", monthly_price_cents=150)
        session.add(number)
        await session.flush()
        conversation = Conversation(user_id=user.id, phone_number_id=number.id, remote_e164="+14155550142")
        session.add(conversation)
        await session.flush()
        last = 0
        for direction, body in THREAD:
            message = Message(
                conversation_id=conversation.id, user_id=user.id, direction=direction, provider="twilio",
                from_e164="+14155550100", to_e164="+14155550142", body=body,
                status="delivered" if direction == "outbound" else "received",
            )
            session.add(message)
            await session.flush()
            last = message.id
    return user, last


async def measure(
    runs: int, call: Callable[[], Awaitable[Any]], fake_seconds: Callable[[], float], settle: Callable[[], Awaitable[None]]
) -> list[float]:
    """Milliseconds per call minus the fake's own time, after a short warm-up.

    Between calls the previous call's token count is left to finish writing (untimed): people do not press
    buttons back to back within milliseconds, so one answer's write never slows the next in practice.
    """
    for _ in range(10):
        await call()
    values: list[float] = []
    for _ in range(runs):
        await settle()
        started = time.perf_counter()
        await call()
        values.append((time.perf_counter() - started - fake_seconds()) * 1000)
    return values


async def bench(engine: str, url: str, runs: int, delay: float) -> list[Result]:
    db = Database(url)
    results: list[Result] = []
    try:
        async with TimedGroq() as fake:
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None, database_url=url, sandbox="auto", groq_api_key="gsk_bench", groq_base_url=fake.url,
                # The day's token allowance must not run out in the middle of the runs.
                tier_limits=json.dumps({"free": {"ai_tokens_per_day": 10**9}}),
            )
            ai = AiService(db, build_ai_assistant(settings, plan_providers(settings)), settings, Metrics())
            opted_in, message_id = await seed(db, opted_in=True)
            opted_out, other_id = await seed(db, opted_in=False)

            def groq_time() -> float:
                return fake.served_seconds[-1]

            async def draft() -> None:
                answer = await ai.drafts_for_message(opted_in, message_id)
                assert answer.from_model, "Groq should have answered"

            async def analysis() -> None:
                answer = await ai.analyze_message(opted_in, message_id)
                assert answer.from_model, "Groq should have answered"

            for label, delay_s in (("at once", 0.0), (f"after {delay * 1000:.0f} ms", delay)):
                fake.delay = delay_s
                results.append(Result(engine, f"added to a draft, Groq answering {label}",
                                      await measure(runs, draft, groq_time, ai.settle), TARGET_ADDED_MS))
                results.append(Result(engine, f"added to an analysis, Groq answering {label}",
                                      await measure(runs, analysis, groq_time, ai.settle), TARGET_ADDED_MS))
            fake.delay = 0.0
            before = len(fake.requests)

            async def fallback_draft() -> None:
                await ai.drafts_for_message(opted_out, other_id)

            async def fallback_analysis() -> None:
                await ai.analyze_message(opted_out, other_id)

            results.append(Result(engine, "fallback draft, whole answer",
                                  await measure(runs, fallback_draft, lambda: 0.0, ai.settle), TARGET_FALLBACK_MS))
            results.append(Result(engine, "fallback analysis, whole answer",
                                  await measure(runs, fallback_analysis, lambda: 0.0, ai.settle), TARGET_FALLBACK_MS))
            assert len(fake.requests) == before, "a user who has not opted in must never reach Groq"
            await ai.close()  # also waits for the token counts still being written
    finally:
        await db.dispose()
    return results


async def main(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    for engine in ["sqlite"] + (["postgresql"] if args.pg_url else []):
        async with database(engine, args.pg_url) as url:
            results += await bench(engine, url, args.runs, args.delay_ms / 1000)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=300, help="measured calls per row (default 300)")
    parser.add_argument("--delay-ms", type=float, default=200.0, help="the fake model's fixed answer time")
    parser.add_argument("--pg-url", default=None, help="PostgreSQL server URL; the bench creates its own database")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args: Any = parse_args(argv)
    results = asyncio.run(main(args))
    print(HEADER)
    for result in results:
        print(result.row())


if __name__ == "__main__":
    run()
