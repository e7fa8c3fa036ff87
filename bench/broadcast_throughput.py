"""Benchmark: broadcast throughput against the fake Bot API enforcing Telegram's limits, as a ratio of the limit.

Scenarios (each a fresh broadcast to freshly seeded users, sent by core.broadcast.service.BroadcastRunner):
* free: the real Telegram front end's sender (python-telegram-bot over httpx, every request through the bot's
  flood budget, `bot.telegram_transport.BudgetRateLimiter`) at 30/s; the fake allows 30 sends per second overall
  and answers 429 above that. Target: >= 0.95 of 30/s, zero 429s;
* mix: the whole app as `cumapp run` wires it (`bot.app.Application`: front end, outbox, broadcast runner, webhook
  server) sending a free broadcast while signed Twilio SMS arrive for 10 users and other users type /help. The
  rate counts every message the bot sent while the broadcast ran; relay delay is from the webhook's POST to the
  fake Bot API accepting the relayed SMS, answer delay from the update to the answer. Target: >= 0.97 of 30/s,
  zero 429s, every relay within about 1 s;
* paid: `allow_paid_broadcast` on every message, the runner at its paid rate (950/s); the fake allows 1000/s.
  Run twice: with python-telegram-bot's default httpx transport, and with the aiohttp transport the front end
  ships when TELEGRAM_ALLOW_PAID_BROADCAST is on (`bot/telegram_transport.py`), which shows the HTTP client's
  CPU cost apart from our pacing. Target: >= 0.9 of 1000/s, zero 429s.

The fake Bot API runs in a child process (`--fake`) so its work does not share the runner's event loop and CPU
time; it reports arrival times of accepted sends and its 429 count. The rate is measured at the fake, from the
first to the last accepted message of the broadcast.

    TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/broadcast_throughput.py --free-users 1500 --paid-users 12000 --mix-users 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("PTB_TIMEDELTA", "true")

FREE_LIMIT = 30.0
PAID_LIMIT = 1000.0
FIRST_CHAT = 10_000_001


# --- the child process: the fake Bot API ---------------------------------------------------------------------------


async def _fake() -> None:
    from tests.fakes.telegram_api import FakeTelegramServer, _is_send_method

    fake = FakeTelegramServer(enforce_limits=True)
    await fake.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(payload: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    reply({"base_url": fake.base_url, "token": fake.token})
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "reset":
                fake.calls.clear()
                fake._sent.clear()  # the fake keeps every message; a 12,000-message run would only slow it down
                fake._messages.clear()
                fake.too_many_requests = 0
                reply({"ok": True})
            elif command["cmd"] == "stats":
                accepted = [c for c in fake.calls if c.ok and c.method in ("sendMessage", "sendPhoto")]
                per_chat: dict[Any, int] = {}
                for call in accepted:
                    per_chat[call.chat_id] = per_chat.get(call.chat_id, 0) + 1
                reply({"times": [c.at for c in accepted], "too_many_requests": fake.too_many_requests,
                       "duplicates": sum(1 for n in per_chat.values() if n > 1)})
            elif command["cmd"] == "send":
                # A user writes to the bot: queued for the app's getUpdates, like Telegram does.
                fake.user(command["user"]).send(command["text"])
                reply({"at": time.monotonic()})
            elif command["cmd"] == "sends":
                # Every accepted message with its arrival (this machine's monotonic clock, as the caller's).
                reply({"sends": [[c.at, c.chat_id, str(c.params.get("text") or "")[:80]] for c in fake.calls
                                 if c.ok and _is_send_method(c.method)]})
            elif command["cmd"] == "quit":
                break
    finally:
        await fake.stop()


class FakeProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls) -> tuple[FakeProcess, dict[str, Any]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--fake", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=str(ROOT), limit=64 * 1024 * 1024,
        )
        fake = cls(process)
        return fake, await fake.read()

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError("the fake Bot API process ended")
        return json.loads(line)

    async def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        return await self.read()

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b'{"cmd": "quit"}\n')
        await self.process.stdin.drain()
        await self.process.wait()




# --- the runner side -------------------------------------------------------------------------------------------------


async def _database(pg_url: str | None) -> tuple[Any, Any]:
    """A fresh schema: a new PostgreSQL database (dropped at the end) or a temporary SQLite file."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from core.models import Base
    from core.platform.db import Database

    if pg_url is None:
        path = Path(tempfile.mkdtemp()) / "bench.db"
        db = Database(f"sqlite+aiosqlite:///{path}")
        async with db.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)

        async def cleanup() -> None:
            await db.dispose()

        return db, cleanup
    name = f"cumapp_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(pg_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{pg_url.rpartition('/')[0]}/{name}"
    db = Database(url, pool_size=20)
    async with db.engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)

    async def cleanup_pg() -> None:
        await db.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()

    return db, cleanup_pg


async def _seed(db: Any, count: int, first_chat: int) -> None:
    """`count` Telegram users in two INSERT … SELECT statements; earlier users leave the segment (tier)."""
    from sqlalchemy import text

    from core.platform.clock import utcnow

    now = utcnow()
    if db.is_sqlite:
        series = "WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i + 1 < :n) "
        source, stamp, chat = "g", now.strftime("%Y-%m-%d %H:%M:%S.%f"), "CAST(:first + i AS TEXT)"
    else:
        series, source, stamp, chat = "", "generate_series(0, :n - 1) AS g(i)", now, "(:first + i)::text"
    async with db.transaction() as session:
        await session.execute(text("UPDATE users SET tier = 'business'"))
        await session.execute(
            text(
                f"{series}INSERT INTO users (role, status, tier, locale, display_name, balance_cents, held_cents, "
                "ai_opt_in, auto_analyze, announcements, created_at, last_seen_at) "
                f"SELECT 'user', 'active', 'free', 'en', 'bench:' || {chat}, 0, 0, false, false, true, :now, :now "
                f"FROM {source}"
            ),
            {"n": count, "first": first_chat, "now": stamp},
        )
        await session.execute(
            text(
                "INSERT INTO chat_identities (user_id, platform, platform_user_id, chat_id, created_at) "
                "SELECT id, 'telegram', substr(display_name, 7), substr(display_name, 7), created_at FROM users "
                "WHERE display_name LIKE 'bench:%' AND id NOT IN (SELECT user_id FROM chat_identities)"
            )
        )


async def _scenario(
    name: str, db: Any, fake: FakeProcess, sender: Any, users: int, first_chat: int, *, paid: bool, limit: float,
    concurrency: int | None,
) -> dict[str, Any]:
    from core.broadcast import service as bc
    from core.platform.metrics import Metrics

    await _seed(db, users, first_chat)
    await fake.ask(cmd="reset")
    runner = bc.BroadcastRunner(db, {"telegram": sender}, Metrics(), concurrency=concurrency)
    async with db.transaction() as session:
        draft = await bc.create_draft(session, created_by_user_id=1, text="📣 Bench <b>broadcast</b>",
                                      segment=bc.Segment("tier", "free"), paid=paid)
    started = time.monotonic()
    await runner.start()
    await bc.start(db, draft.id)
    while True:
        await asyncio.sleep(0.25)
        async with db.read() as session:
            current = await bc.get(session, draft.id)
        if current is not None and current.state == "finished":
            break
        if time.monotonic() - started > users / (limit * 0.5) + 120:
            raise RuntimeError(f"{name}: not finished in time ({current.sent if current else 0}/{users})")
    await runner.stop()
    stats = await fake.ask(cmd="stats")
    times = sorted(stats["times"])
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return {
        "scenario": name, "users": users, "sent": current.sent, "failed": current.failed, "limit": limit,
        "rate": rate, "ratio": rate / limit, "too_many_requests": stats["too_many_requests"],
        "duplicates": stats["duplicates"], "seconds": times[-1] - times[0] if times else 0.0,
    }


MIX_TEXT = "📣 Mix <b>broadcast</b>"
PUBLIC_BASE_URL = "https://cumapp.bench"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def _mix(
    db: Any, fake: FakeProcess, hello: dict[str, Any], users: int, first_chat: int, *, relays: int, commands: int,
) -> dict[str, Any]:
    """The whole app sends a free broadcast while relays arrive by webhook and users type commands."""
    import aiohttp
    from cryptography.fernet import Fernet

    from bot.app import Application
    from core.broadcast import service as bc
    from core.messaging.gateway import TWILIO_SMS_PATH
    from core.models import PhoneNumber
    from core.money.accounts import Contact, get_or_create
    from core.platform.clock import utcnow
    from core.platform.settings import Settings
    from tests.fakes.twilio_api import (
        DEFAULT_ACCOUNT_SID,
        DEFAULT_AUTH_TOKEN,
        FakeTwilioServer,
        build_inbound_webhook,
    )

    await _seed(db, users, first_chat)
    relay_chats = [first_chat + users + index for index in range(10)]
    command_users = [first_chat + users + 100 + index for index in range(commands)]
    numbers: dict[int, str] = {}
    async with db.transaction() as session:
        for index, chat in enumerate(relay_chats):
            account = await get_or_create(session, Contact("telegram", str(chat), chat_id=str(chat)))
            numbers[chat] = f"+1415{(first_chat + index) % 10_000_000:07d}"
            session.add(PhoneNumber(user_id=account.user.id, provider="twilio", provider_sid=f"PNmix{chat:028d}",
                                    e164=numbers[chat], country="US", monthly_price_cents=115, purchased_at=utcnow()))
    await fake.ask(cmd="reset")
    posted: dict[str, float] = {}
    asked: dict[int, float] = {}
    async with FakeTwilioServer() as twilio, aiohttp.ClientSession() as http:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, database_url=db.url, sandbox="auto", http_host="127.0.0.1", http_port=0,
            public_base_url=PUBLIC_BASE_URL, telegram_bot_token=hello["token"],
            telegram_api_base_url=hello["base_url"], twilio_account_sid=DEFAULT_ACCOUNT_SID,
            twilio_auth_token=DEFAULT_AUTH_TOKEN, twilio_api_base_url=twilio.base_url,
            data_encryption_keys=Fernet.generate_key().decode(),
        )
        app = Application(settings, console=False, migrate=False)
        await app.start()
        assert app.web is not None
        url = f"http://127.0.0.1:{app.web.port}{TWILIO_SMS_PATH}"
        try:
            async with db.transaction() as session:
                draft = await bc.create_draft(session, created_by_user_id=1, text=MIX_TEXT,
                                              segment=bc.Segment("tier", "free"))
            started = await bc.start(db, draft.id)
            assert started is not None
            await asyncio.sleep(1.0)  # the broadcast is at full speed
            for index in range(relays):
                chat = relay_chats[index % len(relay_chats)]
                tag = f"relay-{index:05d}"
                hook = build_inbound_webhook(
                    DEFAULT_AUTH_TOKEN, f"{PUBLIC_BASE_URL}{TWILIO_SMS_PATH}", from_="+14155550111",
                    to=numbers[chat], body=f"hello {tag}", message_sid=f"SMmix{first_chat}{index:020d}",
                )
                posted[tag] = time.monotonic()
                async with http.post(url, data=hook.params, headers=hook.headers) as response:
                    assert response.status == 200, response.status
                if index % 2 == 0 and index // 2 < commands:
                    user = command_users[index // 2]
                    asked[user] = (await fake.ask(cmd="send", user=user, text="/help"))["at"]
                await asyncio.sleep(1 / 3)
            deadline = time.monotonic() + users / 15 + 60
            while True:
                async with db.read() as session:
                    current = await bc.get(session, draft.id)
                if current is not None and current.state == "finished":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mix: not finished in time ({current.sent if current else 0}/{started.total})")
                await asyncio.sleep(0.25)
            await asyncio.sleep(1.0)
        finally:
            await app.stop()
    sends = (await fake.ask(cmd="sends"))["sends"]
    stats = await fake.ask(cmd="stats")
    bulk = sorted(at for at, _, text in sends if text == MIX_TEXT)
    first, last = bulk[0], bulk[-1]
    during = sum(1 for at, _, _ in sends if first <= at <= last)
    relay_delays = [min((at for at, _, text in sends if tag in text), default=float("inf")) - when
                    for tag, when in posted.items()]
    answer_delays = [min((at for at, chat, _ in sends if chat == user and at >= when), default=float("inf")) - when
                     for user, when in asked.items()]
    rate = (during - 1) / (last - first)
    return {
        "scenario": "mix: broadcast + relays + commands (the whole app)", "users": started.total,
        "relays": relays, "commands": len(asked), "limit": FREE_LIMIT, "rate": rate, "ratio": rate / FREE_LIMIT,
        "broadcast_rate": (len(bulk) - 1) / (last - first), "too_many_requests": stats["too_many_requests"],
        "relay_p50_ms": 1000 * _percentile(relay_delays, 0.5), "relay_max_ms": 1000 * max(relay_delays),
        "answer_p50_ms": 1000 * _percentile(answer_delays, 0.5), "answer_max_ms": 1000 * max(answer_delays),
        "seconds": last - first, "sent": current.sent,
    }


async def _bot(base_url: str, token: str, *, transport: str) -> Any:
    """A python-telegram-bot Application configured like bot/telegram.py's front end: every request through the
    bot's one flood budget, which the sender carries so the runner shares it."""
    from telegram.ext import ApplicationBuilder

    from bot.telegram import TelegramSender
    from bot.telegram_transport import BudgetRateLimiter
    from core.platform.pacing import BotBudget

    budget = BotBudget.telegram()
    builder = (
        ApplicationBuilder().token(token).base_url(base_url).rate_limiter(BudgetRateLimiter(budget)).updater(None)
    )
    if transport == "aiohttp":
        from bot.telegram_transport import AiohttpRequest

        # What the front end ships when TELEGRAM_ALLOW_PAID_BROADCAST is on.
        builder = builder.request(AiohttpRequest())
    application = builder.build()
    await application.initialize()
    return application, TelegramSender(application, budget)


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    fake, hello = await FakeProcess.start()
    db, cleanup = await _database(args.pg_url)
    results: list[dict[str, Any]] = []
    try:
        async with db.transaction() as session:
            from core.models import User

            session.add(User(role="admin", display_name="bench admin"))
        first = FIRST_CHAT
        plans = [("free, httpx (as shipped)", "httpx", False, FREE_LIMIT, args.free_users, None)]
        if args.paid_users:
            plans += [
                ("paid, httpx (the default transport)", "httpx", True, PAID_LIMIT, args.paid_users, 8),
                ("paid, aiohttp (as shipped for paid broadcasts)", "aiohttp", True, PAID_LIMIT, args.paid_users, 16),
            ]
        if args.mix_users:
            result = await _mix(db, fake, hello, args.mix_users, first, relays=args.relays, commands=args.commands)
            result["database"] = "PostgreSQL" if args.pg_url else "SQLite"
            results.append(result)
            print(json.dumps(result), flush=True)
            first += args.mix_users + 1000
        for name, transport, paid, limit, users, concurrency in plans:
            application, sender = await _bot(hello["base_url"], hello["token"], transport=transport)
            try:
                result = await _scenario(name, db, fake, sender, users, first, paid=paid, limit=limit,
                                         concurrency=concurrency)
            finally:
                await application.shutdown()
            result["database"] = "PostgreSQL" if args.pg_url else "SQLite"
            results.append(result)
            print(json.dumps(result), flush=True)
            first += users
    finally:
        await cleanup()
        await fake.close()
    return results


def mix_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| database | users | relays | commands | all messages (msg/s) | ratio of 30/s | broadcast alone (msg/s) | "
        "429s | relay p50 / max (ms) | answer p50 / max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['database']} | {r['users']:,} | {r['relays']} | {r['commands']} | {r['rate']:.2f} | "
            f"{r['ratio']:.3f} | {r['broadcast_rate']:.2f} | {r['too_many_requests']} | "
            f"{r['relay_p50_ms']:.0f} / {r['relay_max_ms']:.0f} | {r['answer_p50_ms']:.0f} / {r['answer_max_ms']:.0f} |"
        )
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | database | users | limit (msg/s) | achieved (msg/s) | ratio | 429s | duplicates | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['scenario']} | {r['database']} | {r['users']:,} | {r['limit']:.0f} | {r['rate']:.1f} | "
            f"{r['ratio']:.3f} | {r['too_many_requests']} | {r['duplicates']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if "--fake" in sys.argv:
        asyncio.run(_fake())
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--free-users", type=int, default=1500)
    parser.add_argument("--paid-users", type=int, default=12000, help="0 skips the paid scenarios")
    parser.add_argument("--mix-users", type=int, default=1000, help="0 skips the mixed scenario")
    parser.add_argument("--relays", type=int, default=60, help="SMS relayed during the mixed scenario (3/s)")
    parser.add_argument("--commands", type=int, default=30, help="commands typed during the mixed scenario")
    parser.add_argument("--pg-url", default=os.environ.get("TEST_DATABASE_URL"),
                        help="PostgreSQL server URL (a database is created and dropped); SQLite when absent")
    arguments = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    outcome = asyncio.run(main(arguments))
    print()
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    mixed = [r for r in outcome if r["scenario"].startswith("mix")]
    print(table([r for r in outcome if r not in mixed]))
    if mixed:
        print()
        print(mix_table(mixed))
