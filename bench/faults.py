"""Benchmark: real faults under real `cumapp run` processes; prints lost / duplicated / time to recover per fault.

Scenarios (each on its own database; the fake Bot API and Twilio run in this process, see tests/faults/):

- kill:     two processes share one PostgreSQL; one is killed with SIGKILL while its sends are in flight
            (held by its network); time from the kill until the backlog reached the chats.
- kill-fast: the same kill with nothing held, mid-backlog at full speed with Telegram answering in 50 ms: a send
            in flight reached Telegram before the process died and is sent again by the survivor; the duplicates
            this costs are counted (at most one per send in flight at the kill).
- restart:  PostgreSQL (a throwaway cluster made here with initdb/pg_ctl, never the shared one) stopped for
            --down seconds under a steady SMS stream; 503s while down, time until webhooks answer 200 again and
            until everything accepted was delivered.
- telegram: the Bot API failing for --window seconds (first half 5xx, second half timeouts) while SMS arrive;
            time from its recovery until everything was delivered; nothing may be parked.

    TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/faults.py                       # all four, the Telegram outage for 180 s
    .venv/bin/python bench/faults.py --only kill --window 30   # one scenario
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PTB_TIMEDELTA", "true")

from tests.faults.cluster import ThrowawayCluster  # noqa: E402
from tests.faults.fleet import (  # noqa: E402
    Fleet,
    create_database,
    drop_database,
    eventually,
    outbox_states,
    unrecorded_claims_of_the_dead,
)
from tests.faults.proxy import HOLD, PASS  # noqa: E402
from tests.faults.test_telegram_outage import run_outage  # noqa: E402


async def kill(admin_url: str, work: Path, *, held: bool, sms: int, chats: int) -> dict[str, Any]:
    name = f"cumapp_bench_kill_{uuid.uuid4().hex[:8]}"
    url = await create_database(admin_url, name)
    try:
        async with Fleet(url, work, processes=2, chats=chats) as fleet:
            warm = set(range(chats))
            await fleet.post_in_chat_order(sorted(warm))
            await fleet.wait_delivered(warm, within=30)
            burst = set(range(chats, chats + sms))
            if held:
                # Both processes' sends get no answer: each keeps what it claimed in flight (16 each at most).
                for process in fleet.processes:
                    process.proxy.set_mode(HOLD)
                await fleet.post_in_chat_order(sorted(burst))
                await eventually(lambda: sum(p.proxy.held for p in fleet.processes) >= min(chats, 32), 2)
                victim, survivor = sorted(fleet.processes, key=lambda p: -p.proxy.held)
                survivor.proxy.set_mode(PASS)
                # Under python-telegram-bot's 5 s timeout in all: a request it gave up on and the proxy forwarded
                # anyway would be a duplicate of the timeout kind, not of the kill.
                await asyncio.sleep(1.0)
                in_flight = victim.proxy.held
            else:
                # Telegram at a realistic 50 ms per call; kill the busier process a third of the way through,
                # whatever it has in flight: those sends reach Telegram although it dies before recording them.
                fleet.telegram.latency = 0.05
                await fleet.post_in_chat_order(sorted(burst))
                await eventually(lambda: len(set(fleet.counts()) & burst) >= sms // 3, 120, step=0.005)
                victim = fleet.processes[0]
                in_flight = 0  # nothing held: whatever it had started reaches Telegram
            waiting = burst - set(fleet.counts())
            killed = time.monotonic()
            victim.kill()
            await victim.process.wait()
            await asyncio.sleep(0.2)  # its session ends; the survivor needs over a second to take over
            unrecorded = await unrecorded_claims_of_the_dead(url)
            first = await fleet.wait_delivered({min(waiting)}, within=120) if waiting else killed
            done = await fleet.wait_delivered(burst, within=120)
            await asyncio.sleep(2.0)
            summary = fleet.summary(warm | burst)
            return {
                "scenario": "kill -9 of one of two instances, " + (
                    "its sends held in flight" if held else "mid-backlog with Telegram at 50 ms"),
                **summary, "held_in_flight_at_kill": in_flight, "claimed_unrecorded_at_kill": unrecorded,
                "waiting_at_kill": len(waiting),
                "takeover_seconds": round(first - killed, 2) if first else None,
                "recovery_seconds": round(done - killed, 2) if done else None,
                "out_of_order_chats": len(fleet.out_of_order()),
            }
    finally:
        await drop_database(admin_url, name)


async def restart(work: Path, *, down: float) -> dict[str, Any]:
    cluster = ThrowawayCluster()
    cluster.start()
    try:
        url = await create_database(cluster.url, "bench")
        async with Fleet(url, work, processes=2, chats=10) as fleet:
            answered: list[tuple[int, int, float]] = []
            stop = asyncio.Event()

            async def post() -> None:
                index = 0
                while not stop.is_set():
                    answered.append((index, await fleet.post_sms(index, timeout=10), time.monotonic()))
                    index += 1
                    await asyncio.sleep(0.05)

            poster = asyncio.create_task(post())
            await asyncio.sleep(3.0)
            down_at = cluster.stop()
            await asyncio.sleep(down)
            up_at = cluster.start()
            # Recovered: a webhook answered 200 again, and that SMS reached its chat (the whole path works).
            await eventually(lambda: any(s == 200 and at > up_at for _, s, at in answered), 60)
            first_index, first_200 = min(((i, at) for i, s, at in answered if s == 200 and at > up_at),
                                         key=lambda pair: pair[1])
            done = await fleet.wait_delivered({first_index}, within=60)
            await asyncio.sleep(3.0)
            stop.set()
            await poster
            accepted = {i for i, s, _ in answered if s == 200}
            await fleet.wait_delivered(accepted, within=60)
            refused = [i for i, s, _ in answered if s != 200]
            for index in refused:  # the provider's retry
                await fleet.post_until_accepted(index)
            everything = {i for i, _, _ in answered}
            await fleet.wait_delivered(everything, within=60)
            await asyncio.sleep(2.0)
            statuses: dict[int, int] = {}
            for _, s, _ in answered:
                statuses[s] = statuses.get(s, 0) + 1
            errors = sum(len([r for r in p.errors() if r.get("logger") != "core.broadcast.runner"])
                         for p in fleet.processes)
            return {
                "scenario": f"PostgreSQL stopped for {down:g} s under two instances",
                **fleet.summary(everything), "statuses": statuses, "answered_200_lost": len(accepted - set(fleet.counts())),
                "accepting_again_seconds": round(first_200 - up_at, 2),
                "recovery_seconds": round(max(0.0, done - up_at), 2) if done else None,
                "error_log_lines": errors, "down_seconds_measured": round(up_at - down_at, 2),
            }
    finally:
        cluster.destroy()


async def telegram(admin_url: str, work: Path, *, window: float) -> dict[str, Any]:
    name = f"cumapp_bench_tg_{uuid.uuid4().hex[:8]}"
    url = await create_database(admin_url, name)
    try:
        async with Fleet(url, work, processes=1, chats=5) as fleet:
            result = await run_outage(fleet, window)
            result["pending_left"] = (await outbox_states(url)).get("pending", 0)
            return {"scenario": f"Telegram failing for {window:g} s (5xx, then timeouts)", **result}
    finally:
        await drop_database(admin_url, name)


async def main(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("TEST_DATABASE_URL") or "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    work = Path(tempfile.mkdtemp(prefix="cumapp-bench-faults."))
    wanted = args.only or ["kill", "kill-fast", "restart", "telegram"]
    results = []
    for scenario in wanted:
        started = time.monotonic()
        if scenario == "kill":
            result = await kill(admin_url, work / "kill", held=True, sms=args.sms, chats=args.chats)
        elif scenario == "kill-fast":
            result = await kill(admin_url, work / "kill-fast", held=False, sms=args.sms, chats=args.chats)
        elif scenario == "restart":
            result = await restart(work / "restart", down=args.down)
        else:
            result = await telegram(admin_url, work / "telegram", window=args.window)
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(result), flush=True)
        results.append(result)
    print()
    print("| fault | SMS | lost | duplicated | time to recover |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scenario']} | {r['sms']} | {r['lost']} | {r['duplicated']} | {r['recovery_seconds']} s |")
    print(f"\nprocess logs: {work}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=["kill", "kill-fast", "restart", "telegram"])
    parser.add_argument("--window", type=float, default=180.0, help="seconds the Bot API fails (default 180)")
    parser.add_argument("--down", type=float, default=3.0, help="seconds PostgreSQL stays stopped (default 3)")
    parser.add_argument("--sms", type=int, default=100, help="SMS in the backlog of the kill scenarios")
    parser.add_argument("--chats", type=int, default=50, help="chats the kill scenarios' SMS go to (Telegram takes "
                        "about one message a second per chat, so few chats measure the flood limit)")
    asyncio.run(main(parser.parse_args()))
