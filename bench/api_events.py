"""Benchmark: the integrator API against `cumapp run` as its own process.

(1) Event fan-out latency: a signed Twilio inbound-SMS webhook is POSTed to the process, and the clock stops when
    the `message.received` event for it arrives on an open WebSocket of /api/v1/events (p50, p99; target p99 ≤ 25 ms).
(2) Throughput of GET /api/v1/account, against a bare aiohttp endpoint in a process of its own doing the same key
    check (core.api.keys.KeyChecker: one indexed read by hash) and the same account read, driven by the same client
    in the same run (target ratio ≥ 0.5).

    .venv/bin/python bench/api_events.py                                  # SQLite file in a temporary folder
    .venv/bin/python bench/api_events.py --database postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \\
        --write docs/perf/api_events.md                                   # a fresh database is made beside it
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from core.api import keys  # noqa: E402
from core.models import PhoneNumber, User  # noqa: E402
from core.platform.db import Database  # noqa: E402
from tests.fakes.twilio_api import (  # noqa: E402
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    FakeTwilioServer,
    build_inbound_webhook,
)

HERE = str(Path(__file__).resolve())
OWN_NUMBER = "+14155550142"
PEER = "+14155552671"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the bare baseline, run as `api_events.py --bare PORT DATABASE_URL` ----------------------------------------


def run_bare(port: int, database_url: str) -> None:
    """aiohttp answering the account after the same key check, with nothing else: no middleware, no models."""
    from aiohttp import web

    from core.api.keys import KeyChecker

    db = Database(database_url)
    checker = KeyChecker(db)

    async def account(request: web.Request) -> web.Response:
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        owner = await checker.owner(secret.strip()) if scheme.lower() == "bearer" else None
        if owner is None:
            return web.json_response({"status": 401}, status=401)
        async with db.read() as session:
            user = await session.get(User, owner.user_id)
        assert user is not None
        return web.json_response({"id": str(user.id), "tier": user.tier, "available_cents": user.available_cents,
                                  "held_cents": user.held_cents})

    app = web.Application()
    app.router.add_get("/account", account)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- setting up ---------------------------------------------------------------------------------------------------


async def fresh_postgres(url: str) -> tuple[str, str]:
    """A new empty database beside the one `url` names; returns (its URL, its name) to drop later."""
    import asyncpg

    name = f"cumapp_bench_api_{uuid.uuid4().hex[:8]}"
    parsed = make_url(url)
    admin = await asyncpg.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return parsed.set(database=name).render_as_string(hide_password=False), name


async def drop_postgres(url: str, name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def seed(database_url: str) -> str:
    """An account with a key and a Twilio number, written straight to the database the process uses."""
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            user = User(locale="en", balance_cents=10_000)
            session.add(user)
            await session.flush()
            session.add(PhoneNumber(user_id=user.id, provider="twilio", provider_sid="PN" + uuid.uuid4().hex,
                                    e164=OWN_NUMBER, country="US", state="active", monthly_price_cents=115))
            return (await keys.create(session, user.id, "bench")).secret
    finally:
        await db.dispose()


async def wait_ready(http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process,
                     within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                if response.status in (200, 401):
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {within} s")


# --- the two measurements -------------------------------------------------------------------------------------------


async def fan_out_latency(http: aiohttp.ClientSession, base: str, secret: str, events: int,
                          interval: float) -> tuple[list[float], list[float], list[float]]:
    """Seconds from each webhook's POST to its event on the WebSocket, to the webhook's own 200, and from that 200
    to the event (negative: the event came first)."""
    headers = {"Authorization": f"Bearer {secret}"}
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    answered: list[float] = []
    answered_at: dict[str, float] = {}
    arrived_at: dict[str, float] = {}
    async with http.ws_connect(f"{base}/api/v1/events", headers=headers) as ws:
        done = asyncio.Event()

        async def read() -> None:
            async for message in ws:
                arrived = time.perf_counter()
                event = json.loads(message.data)
                if event["type"] != "message.received":
                    continue
                tag = event["data"]["text"]
                if tag in sent_at:
                    latencies.append(arrived - sent_at.pop(tag))
                    arrived_at[tag] = arrived
                if len(latencies) >= events:
                    done.set()
                    return

        reader = asyncio.create_task(read())
        url = f"{base}/webhooks/twilio/sms"
        for index in range(events + 20):  # the first 20 warm up and are not counted
            tag = f"bench {index} {uuid.uuid4().hex[:6]}"
            webhook = build_inbound_webhook(DEFAULT_AUTH_TOKEN, url, from_=PEER, to=OWN_NUMBER, body=tag,
                                            account_sid=DEFAULT_ACCOUNT_SID)
            started = time.perf_counter()
            if index >= 20:
                sent_at[tag] = started
            async with http.post(url, data=webhook.body, headers={
                **webhook.headers, "Content-Type": "application/x-www-form-urlencoded"}) as response:
                assert response.status == 200, await response.text()
            if index >= 20:
                answered.append(time.perf_counter() - started)
                answered_at[tag] = time.perf_counter()
            await asyncio.sleep(interval)
        await asyncio.wait_for(done.wait(), 30)
        reader.cancel()
    after_answer = [arrived_at[tag] - answered_at[tag] for tag in arrived_at if tag in answered_at]
    return latencies, answered, after_answer


async def throughput(http: aiohttp.ClientSession, url: str, secret: str, seconds: float, workers: int) -> float:
    """Requests a second answered 200 with `workers` concurrent clients for `seconds`."""
    headers = {"Authorization": f"Bearer {secret}"}
    count = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            async with http.get(url, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
                count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return count / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cumapp-bench-api-"))
    dropped: tuple[str, str] | None = None
    if args.database:
        database_url, name = await fresh_postgres(args.database)
        dropped = (args.database, name)
    else:
        database_url = f"sqlite+aiosqlite:///{workdir / 'cumapp.db'}"
    port, bare_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    processes: list[asyncio.subprocess.Process] = []
    try:
        async with FakeTwilioServer() as twilio, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0)) as http:
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ", "VONAGE", "TEXTVERIFIED"))}
            env.update({
                "DATABASE_URL": database_url, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port),
                "PUBLIC_BASE_URL": base, "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN, "TWILIO_API_BASE_URL": twilio.base_url,
                "DATA_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "LOG_LEVEL": "WARNING",
                "API_RATE_PER_SECOND": "1000000", "API_RATE_BURST": "1000000", "PYTHONPATH": str(ROOT),
            })
            log = (workdir / "cumapp.log").open("ab")
            server = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "run", "--no-console", cwd=workdir, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
            processes.append(server)
            await wait_ready(http, f"{base}/readyz", server)
            secret = await seed(database_url)
            bare = await asyncio.create_subprocess_exec(
                sys.executable, HERE, "--bare", str(bare_port), database_url, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
            processes.append(bare)
            await wait_ready(http, f"http://127.0.0.1:{bare_port}/account", bare)

            latencies, answered, after_answer = await fan_out_latency(http, base, secret, args.events, args.interval)
            # Alternate the two targets so neither gets a warmer machine.
            ours: list[float] = []
            baseline: list[float] = []
            for _ in range(args.rounds):
                ours.append(await throughput(http, f"{base}/api/v1/account", secret, args.seconds, args.workers))
                baseline.append(await throughput(http, f"http://127.0.0.1:{bare_port}/account", secret,
                                                 args.seconds, args.workers))
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 20)
                except TimeoutError:
                    process.kill()
        if dropped is not None:
            await drop_postgres(*dropped)
    api_rps, bare_rps = max(ours), max(baseline)
    return {
        "database": "postgresql" if args.database else "sqlite",
        "events": len(latencies), "p50_ms": pct(latencies, 0.5) * 1000, "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000, "answer_p50_ms": pct(answered, 0.5) * 1000,
        "answer_p99_ms": pct(answered, 0.99) * 1000, "after_answer_p50_ms": pct(after_answer, 0.5) * 1000,
        "after_answer_p99_ms": pct(after_answer, 0.99) * 1000, "api_rps": api_rps, "bare_rps": bare_rps, "ratio": api_rps / bare_rps,
        "workers": args.workers, "seconds": args.seconds, "rounds": args.rounds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }


def report(result: dict[str, Any], command: str) -> str:
    return "\n".join([
        "# Integrator API: event fan-out and throughput",
        "",
        f"Measured by `{command}` ({result['machine']}; database: {result['database']}). `cumapp run` is its own "
        "process; the load client and the baseline are other processes on the same machine.",
        "",
        "| what | result | target |",
        "|---|---|---|",
        f"| provider webhook → WebSocket `message.received`, p50 ({result['events']} events) | "
        f"{result['p50_ms']:.1f} ms | |",
        f"| same, p99 | {result['p99_ms']:.1f} ms | ≤ 25 ms |",
        f"| of which the webhook's own answer (stored, committed), p50 / p99 | {result['answer_p50_ms']:.1f} / "
        f"{result['answer_p99_ms']:.1f} ms | |",
        f"| event on the WebSocket minus the webhook's 200 at the client, p50 / p99 (negative: the event came "
        f"first) | {result['after_answer_p50_ms']:.1f} / {result['after_answer_p99_ms']:.1f} ms | |",
        f"| `GET /api/v1/account` ({result['workers']} concurrent clients, best of {result['rounds']} × "
        f"{result['seconds']:.0f} s) | {result['api_rps']:.0f} req/s | |",
        f"| bare aiohttp endpoint, same key check and account read | {result['bare_rps']:.0f} req/s | |",
        f"| ratio | {result['ratio']:.2f} | ≥ 0.5 |",
        "",
    ])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        run_bare(int(sys.argv[2]), sys.argv[3])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", help="a PostgreSQL URL; a fresh database is made beside it (default SQLite)")
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between webhooks")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--write", help="also write the Markdown report to this file")
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    shown = "bench/api_events.py" + (" --database <PostgreSQL URL>" if arguments.database else "")
    text = report(outcome, ".venv/bin/python " + shown)
    print(text)
    print(json.dumps(outcome))
    if arguments.write:
        Path(arguments.write).write_text(text, encoding="utf-8")
