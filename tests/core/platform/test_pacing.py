"""The bot's one flood budget: ranks served in order, the window counted until answers come back, per-chat limits,
flood waits, withdrawal, and the share of several instances."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.platform.pacing import (
    BotBudget,
    ChatLimits,
    ChatPacer,
    InstanceShare,
    Rank,
    RateBudget,
    Traffic,
    Withdrawn,
    current_traffic,
    rank_for_priority,
    traffic,
)


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + 1.0) for start in times)


async def test_personal_traffic_goes_first_then_notices_then_bulk_and_the_rate_holds() -> None:
    budget = RateBudget(40)
    starts: list[float] = []
    waits: dict[Rank, list[float]] = {rank: [] for rank in Rank}
    stop = time.monotonic() + 2.5

    async def send(rank: Rank) -> None:
        asked = time.monotonic()
        ticket = await budget.acquire(None, Traffic(rank))
        waits[rank].append(time.monotonic() - asked)
        starts.append(time.monotonic())
        await asyncio.sleep(0.003)  # the round trip
        budget.finished(ticket)

    async def bulk_lane() -> None:
        running: set[asyncio.Task[None]] = set()
        while time.monotonic() < stop:
            while len(running) < 8:
                task = asyncio.create_task(send(Rank.BULK))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.sleep(0.005)
        await asyncio.gather(*running)

    async def every(rank: Rank, pause: float) -> None:
        while time.monotonic() < stop:
            await send(rank)
            await asyncio.sleep(pause)

    await asyncio.gather(bulk_lane(), every(Rank.PERSONAL, 0.11), every(Rank.NOTICE, 0.13))
    assert busiest_second(starts) <= 40
    assert len(starts) >= 0.9 * 40 * 2.5
    # A person's own traffic waits for one slot at most (25 ms at 40/s), bulk takes what is left.
    assert max(waits[Rank.PERSONAL]) < 0.06 and len(waits[Rank.PERSONAL]) >= 15
    assert max(waits[Rank.NOTICE]) < 0.1
    assert len(waits[Rank.BULK]) >= 40


async def test_a_send_counts_until_its_answer_comes_back() -> None:
    """Wherever a slow request reached the platform between its start and its answer, the window holds."""
    budget = RateBudget(5, headway=10.0)  # spacing out of the way: the window alone decides
    slow = [await budget.acquire() for _ in range(5)]
    asked = time.monotonic()
    sixth = asyncio.create_task(budget.acquire())
    await asyncio.sleep(1.3)
    assert not sixth.done(), "five sends have not answered yet: they may still be arriving"
    budget.finished(slow[2])
    answered = time.monotonic()
    ticket = await asyncio.wait_for(sixth, 2.0)
    assert ticket.start >= answered + 0.95 and ticket.start - asked < 2.5


async def test_chat_limits_pace_one_chat_without_holding_up_the_others() -> None:
    chats = ChatPacer(ChatLimits(rate=4.0, burst=2, group_cap=3, group_period=1.0))
    budget = RateBudget(100, chats=chats)
    started = time.monotonic()
    private = [await budget.acquire("42") for _ in range(4)]
    offsets = [ticket.start - started for ticket in private]
    # A burst of two, then one every 1/4 s.
    assert offsets[1] < 0.05 and 0.2 < offsets[2] < 0.35 and 0.45 < offsets[3] < 0.6
    # A chat waiting for its own limit does not block another chat's send.
    waiting = asyncio.create_task(budget.acquire("42"))
    await asyncio.sleep(0.01)
    other = await asyncio.wait_for(budget.acquire("43"), 0.1)
    assert not waiting.done() and other.start - time.monotonic() < 0.1
    await waiting
    # A group: at most three in any second, counted until answered.
    group = []
    for _ in range(4):
        ticket = await budget.acquire(-1001)
        budget.finished(ticket)
        group.append(ticket.start)
    assert group[3] - group[0] >= 1.0


async def test_a_flood_wait_holds_everyone_and_a_stopped_broadcast_gives_its_place_up() -> None:
    budget = RateBudget(30)
    budget.hold(0.4)
    asked = time.monotonic()
    ticket = await budget.acquire()
    assert ticket.start - asked >= 0.39
    budget.hold(5.0)
    stopped = False
    with traffic(Rank.BULK, stopped=lambda: stopped) as flow:
        waiting = asyncio.create_task(budget.acquire())
        await asyncio.sleep(0.1)
        stopped = True
        with pytest.raises(Withdrawn):
            await asyncio.wait_for(waiting, 0.5)
    assert flow.requests == 0 and budget.taken == 1 and budget.waiting == 0


async def test_traffic_is_personal_unless_said_and_outbox_priorities_map_to_ranks() -> None:
    assert current_traffic().rank is Rank.PERSONAL and current_traffic().wait_out_floods
    with traffic(Rank.BULK) as flow:
        assert current_traffic() is flow and not flow.wait_out_floods

        async def inner() -> Rank:
            return current_traffic().rank

        assert await asyncio.create_task(inner()) is Rank.BULK  # tasks started inside inherit it
    assert current_traffic().rank is Rank.PERSONAL
    assert rank_for_priority(10) is Rank.PERSONAL and rank_for_priority(5) is Rank.NOTICE
    assert rank_for_priority(0) is Rank.NOTICE


async def test_several_instances_share_the_bot_budget() -> None:
    bot = BotBudget.telegram()
    alive = [3]

    async def count() -> int | None:
        return alive[0]

    share = InstanceShare([bot], count, every=0.05)
    await share.start()
    try:
        assert bot.shared.rate == 10.0 and bot.shared.cap == 10 and bot.paid is not None
        assert bot.paid.rate == pytest.approx(950 / 3)
        alive[0] = 1
        await asyncio.sleep(0.15)
        assert bot.shared.rate == 30.0 and bot.shared.cap == 30
    finally:
        await share.stop()


async def test_a_share_keeps_its_window_but_spaces_a_persons_sends_at_the_bots_rate() -> None:
    """Two instances at 30/s: each may start 15 sends in a second, and a person's relays leave 1/30 s apart, not
    1/15 s, while its broadcasts keep to 15/s."""
    budget = RateBudget(30)
    budget.share(2)

    async def starts(rank: Rank, count: int) -> list[float]:
        times = []
        for _ in range(count):
            ticket = await budget.acquire(None, Traffic(rank))
            times.append(ticket.start)
            budget.finished(ticket)
        return times

    personal = await starts(Rank.PERSONAL, 12)
    spacing = (personal[-1] - personal[0]) / 11
    assert 0.8 / 31.5 < spacing < 1.3 / 31.5, spacing  # the bot's rate, not this instance's half of it
    more = await starts(Rank.PERSONAL, 6)  # 18 asked for: the window lets 15 start in any second
    assert busiest_second(personal + more) <= 15
    await asyncio.sleep(1.1)
    bulk = await starts(Rank.BULK, 8)
    assert (bulk[-1] - bulk[1]) / 6 > 0.9 / 15.75  # after the first two (a send may come one interval early)
