"""Two `cumapp run` processes on one PostgreSQL; one is killed with SIGKILL while relaying SMS.

The killed process had deliveries claimed and in flight (its proxy holds them, as a slow network would). While
it lives they stay its own; once it is dead the survivor takes them over within seconds, and every SMS reaches
the chat exactly once, in each chat's order.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.faults.fleet import Fleet, eventually
from tests.faults.proxy import HOLD, PASS

TAKEOVER_TARGET = 5.0
CHATS = 20


async def test_sigkill_mid_relay_the_survivor_delivers_the_backlog_once_within_seconds(
    tmp_path: Path, fault_db: str
) -> None:
    async with Fleet(fault_db, tmp_path, processes=2, chats=CHATS) as fleet:
        warm = set(range(CHATS))
        await fleet.post_in_chat_order(sorted(warm))
        assert await fleet.wait_delivered(warm, within=15) is not None

        # Both processes' sends leave but get no answer yet: whatever each claims stays in flight.
        for process in fleet.processes:
            process.proxy.set_mode(HOLD)
        held_since = time.monotonic()
        # Two per chat: Telegram takes about one message a second per chat, so a deeper backlog per chat would
        # measure the flood limit rather than the takeover (bench/faults.py runs 100).
        burst = set(range(CHATS, CHATS * 3))
        await fleet.post_in_chat_order(sorted(burst))  # alternately to each process, as a balancer would
        assert all(statuses == [200] for index, statuses in fleet.posted.items() if index in burst)
        # Until what is in flight stops growing (the flood budget lets sends out a few at a time).
        seen: list[int] = []

        def settled() -> bool:
            seen.append(sum(process.proxy.held for process in fleet.processes))
            return len(seen) > 10 and seen[-1] > 0 and seen[-1] == seen[-11]

        assert await eventually(settled, within=2.5), seen[-1:]
        victim, survivor = sorted(fleet.processes, key=lambda process: -process.proxy.held)
        survivor.proxy.set_mode(PASS)

        # The victim lives: its claims stay its own, and the chats it holds wait, past the takeover delay
        # (1 s seen dead, checked every 0.5 s).
        await asyncio.sleep(1.7)
        held = victim.proxy.held
        blocked = burst - set(fleet.counts())
        assert held >= 1 and len(blocked) >= held
        # python-telegram-bot gives up on a request after 5 s; the kill must come first, so nothing was retried.
        assert time.monotonic() - held_since < 4.5, "too slow to kill before the sends time out"

        killed = time.monotonic()
        victim.kill()
        first = await fleet.wait_delivered({min(blocked)}, within=30)
        done = await fleet.wait_delivered(burst, within=30)
        assert first is not None and done is not None, fleet.summary(burst)

        await asyncio.sleep(1.0)  # anything sent twice would have shown up by now
        summary = fleet.summary(warm | burst)
        assert summary == {"sms": CHATS * 3, "lost": 0, "duplicated": 0}, summary
        assert fleet.out_of_order() == []
        assert done - killed <= TAKEOVER_TARGET, (
            f"backlog of {len(blocked)} took {done - killed:.1f} s after the kill (first after {first - killed:.1f} s)"
        )
        assert victim.proxy.dropped == held  # what it had in flight never reached Telegram
        assert any("gone" in record.get("message", "") for record in survivor.records())
        assert survivor.errors() == [], survivor.errors()
