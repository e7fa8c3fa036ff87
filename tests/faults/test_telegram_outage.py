"""The Bot API failing for a while (5xx, then requests that time out), then recovering, under `cumapp run`.

Nothing is parked (the old rule gave up after 8 tries, about two minutes), and once Telegram answers again every
SMS reaches its chat once, in order, within seconds (the backoff is capped at 10 s). The issue's outage lasted
3 minutes: FAULTS_TELEGRAM_OUTAGE_SECONDS sets the window (30 s here to keep the suite short; bench/faults.py
runs 180 s).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tests.faults.fleet import Fleet, outbox_states
from tests.faults.proxy import ERROR, HANG, PASS

OUTAGE_SECONDS = float(os.environ.get("FAULTS_TELEGRAM_OUTAGE_SECONDS", "30"))
RECOVERY_TARGET = 15.0


async def run_outage(fleet: Fleet, window: float) -> dict[str, float | int]:
    """Warm up, fail the Bot API for `window` seconds (first half 5xx, second half timeouts) while SMS keep
    arriving, heal it, and measure; shared with bench/faults.py."""
    chats = len(fleet.targets)
    warm = list(range(chats))
    await fleet.post_in_chat_order(warm)
    assert await fleet.wait_delivered(set(warm), within=15) is not None
    proxy = fleet.processes[0].proxy
    during = list(range(chats, chats * 5))  # four more per chat, spread over the outage
    started = time.monotonic()
    proxy.set_mode(ERROR)
    posting = asyncio.create_task(fleet.post_in_chat_order(during, pause=window / 5))
    await asyncio.sleep(window / 2)
    proxy.set_mode(HANG)
    await asyncio.sleep(max(0.0, started + window - time.monotonic()))
    proxy.set_mode(PASS)
    healed = time.monotonic()
    await posting
    everything = set(warm) | set(during)
    done = await fleet.wait_delivered(everything, within=60)
    await asyncio.sleep(1.0)
    summary = fleet.summary(everything)
    return {
        **summary,
        "out_of_order_chats": len(fleet.out_of_order()),
        "recovery_seconds": (done - healed) if done is not None else float("inf"),
        "failed_5xx": proxy.failed,
        "timed_out": proxy.dropped,
        "parked": (await outbox_states(fleet.database_url)).get("parked", 0),
    }


async def test_telegram_failing_for_a_while_parks_nothing_and_delivers_everything_once_in_order(
    tmp_path: Path, fault_db: str
) -> None:
    async with Fleet(fault_db, tmp_path, processes=1, chats=5) as fleet:
        result = await run_outage(fleet, OUTAGE_SECONDS)
        process = fleet.processes[0]
    assert result["failed_5xx"] > 0 and result["timed_out"] > 0, result  # both kinds of failure happened
    assert (result["lost"], result["duplicated"], result["parked"], result["out_of_order_chats"]) == (0, 0, 0, 0), result
    assert result["recovery_seconds"] <= RECOVERY_TARGET, result
    assert process.errors() == [], process.errors()
