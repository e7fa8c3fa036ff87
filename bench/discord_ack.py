"""Benchmark: how fast `cumapp run` acknowledges Discord interactions, against a bare discord.py client.

Both bots run as their own processes against the fake Discord API and gateway of tests/fakes/discord_api.py,
one fake each, served by this process. The clock starts just before the fake sends INTERACTION_CREATE over the
gateway websocket and stops when the fake receives the interaction's first response,
`POST /interactions/{id}/{token}/callback` (the acknowledgement: a deferral or the answer itself); the final
answer is the last request the bot made with that interaction's token (a follow-up or an edit of the original).

* bare: a plain `discord.Client` that defers every interaction at once and then sends "ok" as a follow-up,
  with no database and no work: what discord.py itself costs on this machine;
* cumapp: `cumapp run --no-console` on a fresh PostgreSQL database (sandbox providers), with
  `DISCORD_BOT_TOKEN` and `DISCORD_API_BASE_URL` pointing at its fake. Each of `--users` users first types
  /start and /settings (not measured); then interactions arrive at `--rate` a second, in turn: /balance, /verify
  (the provider's service list), and a press on the /settings message's announcements button (a toggle that
  writes and edits the message).

Target: the acknowledgement's p99 ≤ 50 ms.

    TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/discord_ack.py --count 300 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

TARGET_MS = 50.0
KINDS = ("balance", "verify", "press")
# What the bot process must not inherit from the caller's environment.
_SCRUBBED = ("TELEGRAM", "DISCORD", "TWILIO", "VONAGE", "GROQ", "TEXTVERIFIED", "SANDBOX", "DATABASE_URL",
             "DATA_ENCRYPTION", "HTTP_", "PUBLIC_BASE_URL", "METRICS_", "LOG_", "ADMIN_")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the bare client (its own process) ------------------------------------------------------------------------------


async def _bare(base_url: str, token: str) -> None:
    import discord
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    Route.BASE = base_url
    client = discord.Client(intents=discord.Intents(guilds=True), max_messages=None)

    @client.event
    async def on_interaction(interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send("ok", ephemeral=True)

    await client.login(token)
    _, url, _ = await client.http.get_bot_gateway()
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
    await client.connect(reconnect=False)


# --- the driver ----------------------------------------------------------------------------------------------------


class Bot:
    """One bot process and its fake Discord; fires interactions over the gateway and times their answers."""

    def __init__(self, name: str, fake: Any, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name, self.fake, self.process, self.log = name, fake, process, log
        self.sent: dict[int, tuple[str, float]] = {}  # interaction id → (kind, sent at)

    async def connected(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while not (self.fake.gateway_connected and self.fake.identifies):
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not connect:\n{self.log.read_text(errors='replace')[-4000:]}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # READY handled

    async def fire(self, interaction: Any, kind: str) -> None:
        self.sent[interaction.id] = (kind, time.monotonic())
        await self.fake.send_event("INTERACTION_CREATE", interaction.payload)

    async def answered(self, interaction: Any, within: float = 10.0) -> Any:
        """Fires and waits until the answer is complete (the last message it made has content)."""
        await self.fire(interaction, "warm-up")
        await self.fake.answered(interaction, within)
        await self.fake.wait_for(lambda: [m for m in self.fake.produced(interaction) if not m["flags"] & 128], within)
        await asyncio.sleep(0.05)
        return self.fake.produced(interaction)[-1]

    def timings(self) -> dict[str, dict[str, list[float]]]:
        """kind → {"ack": [ms…], "final": [ms…]} over the fired (not warm-up) interactions."""
        by_token = {self.fake.interactions[i].token: i for i in self.sent}
        ack: dict[int, float] = {}
        last: dict[int, float] = {}
        for request in self.fake.requests:
            for part in request.path.split("/"):
                interaction_id = by_token.get(part)
                if interaction_id is None:
                    continue
                if request.path.endswith("/callback") and interaction_id not in ack:
                    ack[interaction_id] = request.at
                last[interaction_id] = max(last.get(interaction_id, 0.0), request.at)
        result: dict[str, dict[str, list[float]]] = {}
        for interaction_id, (kind, at) in self.sent.items():
            if kind == "warm-up":
                continue
            entry = result.setdefault(kind, {"ack": [], "final": [], "missing": []})
            if interaction_id not in ack:
                entry["missing"].append(1.0)
                continue
            entry["ack"].append((ack[interaction_id] - at) * 1000)
            entry["final"].append((last[interaction_id] - at) * 1000)
        return result

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def _start(name: str, fake: Any, command: list[str], env: dict[str, str], work: Path) -> Bot:
    log = work / f"{name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=work, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )
    bot = Bot(name, fake, process, log)
    await bot.connected()
    return bot


async def _drive(bot: Bot, count: int, rate: float, make: Callable[[int], tuple[Any, str]]) -> float:
    """Fires `count` interactions at `rate` a second (evenly spaced); waits for every answer to finish."""
    started = time.monotonic()
    pending: list[asyncio.Task[None]] = []
    for n in range(count):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        interaction, kind = make(n)
        pending.append(asyncio.create_task(bot.fire(interaction, kind)))
    await asyncio.gather(*pending)
    elapsed = time.monotonic() - started
    fired = [bot.fake.interactions[i] for i, (kind, _) in bot.sent.items() if kind != "warm-up"]
    await bot.fake.wait_for(lambda: all(i.callback_type is not None for i in fired), timeout=30)
    await asyncio.sleep(1.0)  # follow-ups and edits after the acknowledgements
    return elapsed


async def run_bare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.fakes.discord_api import FakeDiscordServer

    async with FakeDiscordServer() as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
        env["PYTHONPATH"] = str(ROOT)
        bot = await _start("bare", fake, [sys.executable, str(SCRIPT), "--bare-client",
                                          fake.base_url, fake.token], env, work)
        try:
            users = [fake.user(900_000_000_000_000_000 + n) for n in range(args.users)]

            def make(n: int) -> tuple[Any, str]:
                kind = KINDS[n % len(KINDS)]
                return fake.command(users[n % len(users)], "balance" if kind == "press" else kind), kind

            elapsed = await _drive(bot, args.count, args.rate, make)
            return {"timings": bot.timings(), "elapsed": elapsed}
        finally:
            await bot.stop()


async def run_app(args: argparse.Namespace, work: Path, database_url: str) -> dict[str, Any]:
    root = args.app_root or str(ROOT)
    from cryptography.fernet import Fernet

    from tests.fakes.discord_api import FakeDiscordServer, buttons

    async with FakeDiscordServer() as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
        env.update({
            "DATABASE_URL": database_url, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(_free_port()),
            "DISCORD_BOT_TOKEN": fake.token, "DISCORD_API_BASE_URL": fake.base_url, "SANDBOX": "true",
            "DATA_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING",
            "PYTHONPATH": root,
        })
        bot = await _start("cumapp", fake, [sys.executable, "-m", "bot.cli", "run", "--no-console"], env, work)
        try:
            users = [fake.user(910_000_000_000_000_000 + n) for n in range(args.users)]
            settings_messages: dict[int, dict[str, Any]] = {}
            for user in users:  # accounts exist and each has a /settings message to press on
                await bot.answered(fake.command(user, "start"))
                settings_messages[user.id] = await bot.answered(fake.command(user, "settings"))
            news = {uid: next(v for k, v in buttons(m).items() if v.startswith("set:news"))
                    for uid, m in settings_messages.items()}

            def make(n: int) -> tuple[Any, str]:
                kind = KINDS[n % len(KINDS)]
                user = users[n % len(users)]
                if kind == "press":
                    message = fake.messages[int(settings_messages[user.id]["id"])]
                    return fake.component(user, message, news[user.id]), kind
                return fake.command(user, kind), kind

            elapsed = await _drive(bot, args.count, args.rate, make)
            errors = [line for line in bot.log.read_text(errors="replace").splitlines()
                      if '"level": "ERROR"' in line or "Traceback" in line]
            return {"timings": bot.timings(), "elapsed": elapsed, "errors": errors[:5]}
        finally:
            await bot.stop()


async def _with_database(pg_url: str, body: Callable[[str], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"cumapp_bench_dc_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            return await body(f"{pg_url.rpartition('/')[0]}/{name}")
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def _summary(timings: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    every_ack = [v for entry in timings.values() for v in entry["ack"]]
    every_final = [v for entry in timings.values() for v in entry["final"]]
    out: dict[str, Any] = {"all": _figures(every_ack, every_final,
                                           sum(len(e["missing"]) for e in timings.values()))}
    for kind, entry in timings.items():
        out[kind] = _figures(entry["ack"], entry["final"], len(entry["missing"]))
    return out


def _figures(ack: list[float], final: list[float], missing: int) -> dict[str, Any]:
    return {"n": len(ack), "unanswered": missing,
            "ack_p50": statistics.median(ack) if ack else float("nan"), "ack_p99": _pct(ack, 0.99),
            "ack_max": max(ack) if ack else float("nan"),
            "final_p50": statistics.median(final) if final else float("nan"), "final_p99": _pct(final, 0.99)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cumapp-bench-discord."))
    bare = await run_bare(args, work)
    app = await _with_database(args.pg_url, lambda url: run_app(args, work, url))
    return {"bare": _summary(bare["timings"]), "cumapp": _summary(app["timings"]), "errors": app["errors"],
            "logs": str(work)}


def table(result: dict[str, Any]) -> str:
    lines = ["| bot | interactions | ack p50 (ms) | ack p99 (ms) | ack max (ms) | final answer p50 / p99 (ms) |",
             "|---|---|---:|---:|---:|---:|"]
    for bot in ("bare", "cumapp"):
        for kind, f in result[bot].items():
            if bot == "bare" and kind != "all":
                continue
            label = "all" if kind == "all" else {"balance": "/balance", "verify": "/verify",
                                                 "press": "button (toggle + edit)"}[kind]
            lines.append(f"| {bot} | {label} ({f['n']}{', ' + str(f['unanswered']) + ' unanswered' if f['unanswered'] else ''}) "
                         f"| {f['ack_p50']:.1f} | {f['ack_p99']:.1f} | {f['ack_max']:.1f} "
                         f"| {f['final_p50']:.1f} / {f['final_p99']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare-client":
        asyncio.run(_bare(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", default=os.environ.get("TEST_DATABASE_URL"),
                        help="PostgreSQL server URL; a database is created and dropped")
    parser.add_argument("--count", type=int, default=300, help="interactions per bot (default 300)")
    parser.add_argument("--rate", type=float, default=20.0, help="interactions a second (default 20)")
    parser.add_argument("--users", type=int, default=30, help="users the interactions come from (default 30)")
    parser.add_argument("--app-root", help="run `cumapp run` from this checkout instead (to compare two versions)")
    arguments = parser.parse_args()
    if not arguments.pg_url:
        parser.error("needs PostgreSQL: --pg-url or TEST_DATABASE_URL")
    if arguments.app_root:
        arguments.app_root = str(Path(arguments.app_root).resolve())
    outcome = asyncio.run(main(arguments))
    print(json.dumps(outcome, indent=1))
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; "
          f"{arguments.count} interactions per bot at {arguments.rate:g}/s from {arguments.users} users")
    print(table(outcome))
    bare_p99, app_p99 = outcome["bare"]["all"]["ack_p99"], outcome["cumapp"]["all"]["ack_p99"]
    print(f"ack p99: cumapp {app_p99:.1f} ms, bare discord.py {bare_p99:.1f} ms (ratio {app_p99 / bare_p99:.2f}); "
          f"target ≤ {TARGET_MS:.0f} ms: {'met' if app_p99 <= TARGET_MS else 'NOT met'}")
