"""The outbox sends every delivery exactly once when all goes well, in order per chat, and survives failures."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from core.models import ChatIdentity, OutboxDelivery, User
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.metrics import Metrics
from core.platform.outbox import (
    DeliveryError,
    OutboxDispatcher,
    OutButton,
    OutgoingMessage,
    enqueue,
    enqueue_for_user,
    outbox_health,
    wake,
)
from tests.fakes.chat_sender import RecordingSender, rate_limited, server_error


@pytest.fixture(autouse=True)
def _no_waker_left_behind() -> Iterator[None]:
    yield
    assert wake._wakers == [], "a dispatcher was not stopped"


def _message(text: str) -> OutgoingMessage:
    return OutgoingMessage(text=text)


async def _enqueue(db: Database, chat_id: str, texts: list[str], **options: Any) -> list[int]:
    async with db.transaction() as session:
        ids = []
        for text in texts:
            delivery = await enqueue(
                session, platform="telegram", chat_id=chat_id, kind="sms", message=_message(text), **options
            )
            assert delivery is not None
            ids.append(delivery.id)
        return ids


async def _rows(db: Database) -> dict[int, OutboxDelivery]:
    async with db.read() as session:
        return {row.id: row for row in (await session.scalars(select(OutboxDelivery))).all()}


def _dispatcher(db: Database, sender: RecordingSender, **options: Any) -> OutboxDispatcher:
    options.setdefault("base_backoff", 0.01)
    options.setdefault("max_backoff", 0.05)
    return OutboxDispatcher(db, {sender.platform: sender}, **options)


@asynccontextmanager
async def _running(*dispatchers: OutboxDispatcher, grace: float = 2.0) -> AsyncIterator[None]:
    started: list[OutboxDispatcher] = []
    try:
        for dispatcher in dispatchers:
            await dispatcher.start()
            started.append(dispatcher)
        yield
    finally:
        for dispatcher in started:
            await dispatcher.stop(grace=grace)


async def _wait_rows(db: Database, condition: Any, within: float = 5.0) -> dict[int, OutboxDelivery]:
    """For states written by the dispatcher after the sender returned; polls the database briefly."""
    deadline = time.monotonic() + within
    while True:
        rows = await _rows(db)
        if condition(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"rows never reached the expected state: {[(r.id, r.state) for r in rows.values()]}")
        await asyncio.sleep(0.01)


async def _new_user(db: Database, *identities: tuple[str, str | None, bool]) -> int:
    """A user with (platform, chat_id, unreachable) identities."""
    async with db.transaction() as session:
        user = User()
        session.add(user)
        await session.flush()
        for number, (platform, chat_id, unreachable) in enumerate(identities):
            session.add(
                ChatIdentity(
                    user_id=user.id, platform=platform, platform_user_id=f"{user.id}-{number}", chat_id=chat_id,
                    unreachable_at=utcnow() if unreachable else None,
                )
            )
        return user.id


# --- The message ------------------------------------------------------------------------------------------------


def test_message_payload_round_trips_through_json() -> None:
    message = OutgoingMessage(
        text="<b>Code</b> 123456",
        buttons=(
            (OutButton("Copy", copy_text="123456"), OutButton("Open", url="https://example.org")),
            (OutButton("Reply", action="reply:5"),),
        ),
        photo_url="https://example.org/p.png",
        reply_context={"kind": "sms", "conversation_id": 5},
        disable_preview=False,
        paid_broadcast=True,
        edit_message_id="77",
    )
    payload = json.loads(json.dumps(message.to_payload()))
    assert OutgoingMessage.from_payload(payload) == message
    assert OutgoingMessage.from_payload({"text": "plain"}) == OutgoingMessage(text="plain")
    with pytest.raises(ValueError):
        OutButton("Nothing")


# --- Enqueueing -------------------------------------------------------------------------------------------------


async def test_enqueue_and_dispatch(db: Database) -> None:
    metrics = Metrics()
    received = utcnow() - timedelta(milliseconds=20)
    ids = await _enqueue(db, "100", ["one", "two", "three"], source_received_at=received)
    sender = RecordingSender()
    dispatcher = _dispatcher(db, sender, metrics=metrics)

    # One per chat per claim: "two" waits for "one" to be recorded as sent.
    assert await dispatcher.run_once() == 1
    assert await dispatcher.run_once() == 1
    assert await dispatcher.run_once() == 1
    assert await dispatcher.run_once() == 0

    assert sender.texts("100") == ["one", "two", "three"]
    rows = await _rows(db)
    for delivery_id, sent in zip(ids, sender.sent, strict=True):
        row = rows[delivery_id]
        assert (row.state, row.attempts, row.platform_message_id) == ("sent", 1, sent.message_id)
        assert row.sent_at is not None and row.sent_at >= received and row.claimed_until is None
    assert metrics.registry.get_sample_value("cumapp_relay_latency_seconds_count", {"kind": "sms"}) == 3
    assert metrics.registry.get_sample_value(
        "cumapp_delivery_attempts_total", {"platform": "telegram", "outcome": "sent"}
    ) == 3
    assert await outbox_health(db) == {"pending": 0, "sending": 0, "oldest_pending_seconds": 0.0, "parked": 0}


async def test_dedupe_key_makes_a_second_enqueue_a_no_op(db: Database) -> None:
    async with db.transaction() as session:
        first = await enqueue(
            session, platform="telegram", chat_id="7", kind="code", message=_message("123"), dedupe_key="code:9"
        )
        again = await enqueue(
            session, platform="telegram", chat_id="7", kind="code", message=_message("123"), dedupe_key="code:9"
        )
    async with db.transaction() as session:
        later = await enqueue(
            session, platform="telegram", chat_id="7", kind="code", message=_message("123"), dedupe_key="code:9"
        )
    assert first is not None and again is None and later is None
    assert list(await _rows(db)) == [first.id]


async def test_rolled_back_enqueue_leaves_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await enqueue(session, platform="telegram", chat_id="7", kind="sms", message=_message("x"))
            raise RuntimeError("the caller's work failed")
    assert await _rows(db) == {}


async def test_enqueue_for_user_reaches_every_reachable_chat_once(db: Database) -> None:
    user_id = await _new_user(
        db, ("telegram", "10", False), ("discord", "20", False), ("telegram", "30", True), ("discord", None, False)
    )
    async with db.transaction() as session:
        created = await enqueue_for_user(
            session, user_id, kind="code", message=_message("Your code is 1"), dedupe_key="verification:5"
        )
        repeated = await enqueue_for_user(
            session, user_id, kind="code", message=_message("Your code is 1"), dedupe_key="verification:5"
        )
    assert sorted((d.platform, d.chat_id, d.dedupe_key) for d in created) == [
        ("discord", "20", "verification:5:discord"),
        ("telegram", "10", "verification:5:telegram"),
    ]
    assert repeated == []
    assert all(d.user_id == user_id for d in created)


# --- Waking -----------------------------------------------------------------------------------------------------


async def test_commit_wakes_the_dispatcher_in_process(db: Database) -> None:
    sender = RecordingSender()
    # A poll this long means only the after-commit wake-up can explain a quick send.
    dispatcher = _dispatcher(db, sender, poll_interval=30)
    delays = []
    async with _running(dispatcher):
        for n in range(5):
            await _enqueue(db, f"chat-{n}", [f"m{n}"])
            committed = time.monotonic()
            await sender.wait_for(n + 1, within=2)
            delays.append(sender.sent[-1].at - committed)
    assert max(delays) < 0.1, delays
    assert statistics.median(delays) < 0.05, delays


async def test_wake_waits_for_the_real_commit(db: Database) -> None:
    calls: list[int] = []
    unregister = outbox.register_waker(lambda: calls.append(1), engine=db.engine.sync_engine)
    try:
        async with db.transaction() as session:
            async with session.begin_nested():
                await enqueue(session, platform="telegram", chat_id="1", kind="sms", message=_message("a"))
            assert calls == []  # a savepoint released is not a commit
            await enqueue(session, platform="telegram", chat_id="1", kind="sms", message=_message("b"))
            assert calls == []
        assert calls == [1]
        with pytest.raises(RuntimeError):
            async with db.transaction() as session:
                await enqueue(session, platform="telegram", chat_id="1", kind="sms", message=_message("c"))
                raise RuntimeError("rolled back")
        async with db.transaction() as session:
            await session.scalar(select(OutboxDelivery.id).limit(1))
        assert calls == [1]
    finally:
        unregister()
    assert sorted(row.payload["text"] for row in (await _rows(db)).values()) == ["a", "b"]


def test_wakers_can_be_scoped_to_one_engine() -> None:
    calls: list[str] = []
    engine_a, engine_b = object(), object()
    unregister_a = outbox.register_waker(lambda: calls.append("a"), engine=engine_a)  # type: ignore[arg-type]
    unregister_all = outbox.register_waker(lambda: calls.append("all"))
    try:
        wake._fire_wakers(engine_b)  # type: ignore[arg-type]
        wake._fire_wakers(engine_a)  # type: ignore[arg-type]
    finally:
        unregister_a()
        unregister_all()
    assert calls == ["all", "a", "all"]


# --- Failures ---------------------------------------------------------------------------------------------------


async def test_retry_after_is_honoured(db: Database) -> None:
    sender = RecordingSender()
    sender.fail_next(1, lambda: rate_limited(0.3))
    metrics = Metrics()
    dispatcher = _dispatcher(db, sender, metrics=metrics, poll_interval=30)
    (delivery_id,) = await _enqueue(db, "5", ["hello"])
    async with _running(dispatcher):
        await sender.wait_for(1, within=3)
    first, second = sender.attempts
    assert first.error is not None and second.error is None
    gap = second.started_at - first.at
    # Exactly what the platform asked for: not earlier, and not left to the (30 s) poll either.
    assert 0.3 <= gap < 0.45, gap
    row = (await _rows(db))[delivery_id]
    assert (row.state, row.attempts) == ("sent", 2)
    assert metrics.registry.get_sample_value(
        "cumapp_delivery_attempts_total", {"platform": "telegram", "outcome": "retry"}
    ) == 1


async def test_flaky_platform_delivers_everything_once_and_in_order_per_chat(db: Database) -> None:
    sender = RecordingSender(latency=0.001)
    kinds = iter(range(10**6))

    def flaky() -> DeliveryError:
        return rate_limited(0.02) if next(kinds) % 2 else server_error()

    sender.fail_for(0.15, error_factory=flaky)  # an outage first, then intermittent trouble
    sender.fail_randomly(0.3, flaky, seed=11)
    chats = {f"chat-{c}": [f"c{c}-m{m:02d}" for m in range(20)] for c in range(3)}
    ids: dict[str, list[int]] = {}
    for chat_id, texts in chats.items():
        ids[chat_id] = await _enqueue(db, chat_id, texts)

    dispatcher = _dispatcher(db, sender, max_attempts=40, base_backoff=0.005, max_backoff=0.03)
    async with _running(dispatcher):
        await sender.wait_for(60, within=15)
        rows = await _wait_rows(db, lambda rows: all(row.state == "sent" for row in rows.values()))

    assert Counter(sender.texts()).most_common(1)[0][1] == 1  # nothing twice
    for chat_id, texts in chats.items():
        assert sender.texts(chat_id) == texts
    assert len(rows) == 60
    assert sum(1 for attempt in sender.attempts if attempt.error is not None) > 20
    assert sender.overlaps == 0  # one chat never had two sends at once
    assert sender.max_in_flight > 1  # different chats did


async def test_parked_after_max_attempts_and_the_chat_moves_on(db: Database) -> None:
    metrics = Metrics()
    parked: list[OutboxDelivery] = []
    done = asyncio.Event()

    async def on_parked(delivery: OutboxDelivery) -> None:
        parked.append(delivery)
        done.set()

    sender = RecordingSender()
    sender.fail_next(3)
    first, second = await _enqueue(db, "9", ["doomed", "next"])
    dispatcher = _dispatcher(db, sender, metrics=metrics, max_attempts=3, on_parked=on_parked)
    async with _running(dispatcher):
        await asyncio.wait_for(done.wait(), timeout=5)
        await sender.wait_for(1)
    assert [d.id for d in parked] == [first]
    assert (parked[0].state, parked[0].attempts) == ("parked", 3)
    assert len(sender.attempts) == 4 and sender.texts() == ["next"]
    rows = await _rows(db)
    assert (rows[first].state, rows[first].attempts) == ("parked", 3)
    assert "500" in (rows[first].last_error or "")
    assert rows[second].state == "sent"
    assert metrics.registry.get_sample_value("cumapp_deliveries_parked_total", {"platform": "telegram"}) == 1
    health = await outbox_health(db)
    assert (health["parked"], health["pending"]) == (1, 0)


async def test_permanent_error_parks_at_once(db: Database) -> None:
    parked: list[OutboxDelivery] = []

    async def on_parked(delivery: OutboxDelivery) -> None:
        parked.append(delivery)

    sender = RecordingSender()
    sender.fail_next(1, lambda: DeliveryError("400 Bad Request: can't parse entities", permanent=True))
    (delivery_id,) = await _enqueue(db, "9", ["<b>broken"])
    dispatcher = _dispatcher(db, sender, on_parked=on_parked)
    assert await dispatcher.run_once() == 1
    assert [(d.id, d.attempts) for d in parked] == [(delivery_id, 1)]
    assert (await _rows(db))[delivery_id].state == "parked"


async def test_blocked_user_is_parked_at_once_and_marked_unreachable(db: Database) -> None:
    parked: list[OutboxDelivery] = []

    async def on_parked(delivery: OutboxDelivery) -> None:
        parked.append(delivery)

    metrics = Metrics()
    user_id = await _new_user(db, ("telegram", "42", False))
    other_user = await _new_user(db, ("telegram", "43", False))
    async with db.transaction() as session:
        (blocked,) = await enqueue_for_user(session, user_id, kind="sms", message=_message("hi"))
        (fine,) = await enqueue_for_user(session, other_user, kind="sms", message=_message("hi"))
    sender = RecordingSender()
    sender.fail_for(60, blocked=True, chat_id="42")
    dispatcher = _dispatcher(db, sender, metrics=metrics, on_parked=on_parked)
    assert await dispatcher.run_once() == 2

    rows = await _rows(db)
    assert (rows[blocked.id].state, rows[blocked.id].attempts) == ("parked", 1)
    assert rows[fine.id].state == "sent"
    async with db.read() as session:
        marks = dict((await session.execute(select(ChatIdentity.chat_id, ChatIdentity.unreachable_at))).all())
    assert marks["42"] is not None and marks["43"] is None
    # Blocking a bot is the user's choice, not an incident: no alert, no parked count.
    assert parked == []
    assert metrics.registry.get_sample_value("cumapp_deliveries_parked_total", {"platform": "telegram"}) is None
    async with db.transaction() as session:
        assert await enqueue_for_user(session, user_id, kind="sms", message=_message("again")) == []


async def test_unexpected_exception_is_retried_and_logged_with_its_trace(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    sender = RecordingSender()
    sender.fail_next(1, lambda: RuntimeError("adapter bug"))
    sender.fail_next(1, server_error)
    (delivery_id,) = await _enqueue(db, "3", ["x"])
    dispatcher = _dispatcher(db, sender, base_backoff=0.0, max_backoff=0.0)
    with caplog.at_level(logging.WARNING, logger="core.platform.outbox"):
        while await dispatcher.run_once() or not sender.sent:
            pass
    assert (await _rows(db))[delivery_id].attempts == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(errors) == 1 and errors[0].exc_info is not None and "adapter bug" in str(errors[0].exc_info[1])
    assert len(warnings) == 1 and warnings[0].exc_info is None and "500" in warnings[0].getMessage()


async def test_priority_first_but_never_ahead_of_its_own_chat(db: Database) -> None:
    low_first, low_second = await _enqueue(db, "A", ["a1", "a2"])
    (urgent,) = await _enqueue(db, "B", ["b1"], priority=5)
    (late_urgent,) = await _enqueue(db, "A", ["a3"], priority=9)
    sender = RecordingSender()
    dispatcher = _dispatcher(db, sender, batch_size=2, concurrency=1)
    assert await dispatcher.run_once() == 2
    assert sender.texts() == ["b1", "a1"]
    while await dispatcher.run_once():
        pass
    assert sender.texts() == ["b1", "a1", "a2", "a3"]
    assert {low_first, low_second, urgent, late_urgent} == set(await _rows(db))


# --- Stopping and crashing --------------------------------------------------------------------------------------


async def test_stop_lets_sends_finish_or_releases_them(db: Database) -> None:
    ids = await _enqueue(db, "1", ["a"]) + await _enqueue(db, "2", ["b"])
    slow = RecordingSender(latency=0.1)
    async with _running(_dispatcher(db, slow), grace=2.0):
        await slow.wait_until(lambda s: s.in_flight == 2)
    rows = await _rows(db)
    assert [rows[i].state for i in ids] == ["sent", "sent"]

    more = await _enqueue(db, "1", ["c"]) + await _enqueue(db, "2", ["d"])
    stuck = RecordingSender(latency=3600)
    async with _running(_dispatcher(db, stuck), grace=0.05):
        await stuck.wait_until(lambda s: s.in_flight == 2)
    rows = await _rows(db)
    assert [(rows[i].state, rows[i].claimed_until) for i in more] == [("pending", None)] * 2

    sender = RecordingSender()
    async with _running(_dispatcher(db, sender)):
        await sender.wait_for(2)
    assert sorted(sender.texts()) == ["c", "d"]


async def test_deliveries_left_claimed_by_a_dead_process_go_out_after_restart(db: Database) -> None:
    ids = [i for n in range(4) for i in await _enqueue(db, f"chat-{n}", [f"m{n}", f"n{n}"])]
    hung = RecordingSender(latency=3600)
    crashed = _dispatcher(db, hung, claim_seconds=0.3)
    # The process "dies" mid-send: its batch is abandoned with the rows claimed and nothing released.
    run = asyncio.create_task(crashed.run_once())
    await hung.wait_until(lambda s: s.in_flight == 4)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    rows = await _rows(db)
    assert sorted(row.state for row in rows.values()) == ["pending"] * 4 + ["sending"] * 4

    sender = RecordingSender()
    # A live claim is respected by others...
    assert await _dispatcher(db, sender).run_once() == 0
    await asyncio.sleep(0.35)
    # ...an expired one is recovered when the next dispatcher starts.
    async with _running(_dispatcher(db, sender, poll_interval=30)):
        await sender.wait_for(8)
        rows = await _wait_rows(db, lambda rows: all(row.state == "sent" for row in rows.values()))
    assert Counter(sender.texts()).most_common(1)[0][1] == 1
    for n in range(4):
        assert sender.texts(f"chat-{n}") == [f"m{n}", f"n{n}"]
    assert sorted(rows) == sorted(ids)
    assert {rows[i].attempts for i in ids[::2]} == {2}


async def test_an_overrunning_send_cannot_overwrite_the_next_claim(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    (delivery_id,) = await _enqueue(db, "1", ["late"])
    slow = RecordingSender(latency=0.4)
    overrunning = _dispatcher(db, slow, claim_seconds=0.1, send_timeout=5)
    first = asyncio.create_task(overrunning.run_once())
    await slow.wait_until(lambda s: s.in_flight == 1)
    await asyncio.sleep(0.15)
    sender = RecordingSender()
    async with _running(_dispatcher(db, sender)):  # recovers the expired claim and sends again
        await sender.wait_for(1)
        await _wait_rows(db, lambda rows: rows[delivery_id].state == "sent")
    with caplog.at_level(logging.WARNING, logger="core.platform.outbox"):
        assert await first == 1
    # At least once: both sent it, but the row keeps the second claim's result.
    assert slow.texts() == ["late"] and sender.texts() == ["late"]
    row = (await _rows(db))[delivery_id]
    assert (row.state, row.attempts, row.platform_message_id) == ("sent", 2, sender.sent[0].message_id)
    assert any("lost its claim" in record.getMessage() for record in caplog.records)


async def test_recovery_runs_periodically(db: Database) -> None:
    (delivery_id,) = await _enqueue(db, "1", ["a"])
    sender = RecordingSender()
    dispatcher = _dispatcher(db, sender, claim_seconds=0.2, poll_interval=30)
    async with _running(dispatcher):
        await sender.wait_for(1)
        # Another process claimed this one and vanished after the dispatcher started.
        (orphan,) = await _enqueue(db, "2", ["b"])
        await sender.wait_for(2)
        await _wait_rows(db, lambda rows: rows[orphan].state == "sent")
        async with db.transaction() as session:
            await session.execute(
                update(OutboxDelivery)
                .where(OutboxDelivery.id == delivery_id)
                .values(state="sending", claimed_until=utcnow() + timedelta(seconds=0.1), sent_at=None)
            )
        await sender.wait_for(3, within=3)
    assert sender.texts() == ["a", "b", "a"]


# --- Index ------------------------------------------------------------------------------------------------------


class _Explain(Executable, ClauseElement):
    inherit_cache = False

    def __init__(self, statement: Any) -> None:
        self.statement = statement


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: Any, **kw: Any) -> str:
    prefix = "EXPLAIN QUERY PLAN" if compiler.dialect.name == "sqlite" else "EXPLAIN"
    return f"{prefix} {compiler.process(element.statement, **kw)}"


async def _claim_plan(db: Database, dispatcher: OutboxDispatcher) -> str:
    async with db.transaction() as session:
        await outbox.prepare_claim_plan(session)
        plan = (await session.execute(_Explain(dispatcher.claim_statement(utcnow(), 50)))).all()
    return "\n".join(str(line[-1]) for line in plan)


async def test_claim_plan_does_not_grow_with_the_sent_history(db: Database) -> None:
    """The per-chat order check must never scan a chat's history, or the table, once per candidate.

    SQLite probes ix_outbox_deliveries_chat per candidate. PostgreSQL is held to a hash anti-join over the
    active rows, with or without statistics; a nested loop there is what made claims take seconds.
    """
    now = utcnow()
    rows = [
        dict(
            platform="telegram", chat_id=f"chat-{n % 200}", kind="sms", payload={"text": "x"}, priority=0,
            attempts=0, state="sent" if n < 4800 else "pending", next_attempt_at=now, created_at=now,
        )
        for n in range(5000)
    ]
    async with db.engine.begin() as connection:
        await connection.execute(insert(OutboxDelivery.__table__), rows)
    dispatcher = _dispatcher(db, RecordingSender())
    before_statistics = await _claim_plan(db, dispatcher)
    async with db.engine.begin() as connection:
        await connection.exec_driver_sql("ANALYZE")
    plan = await _claim_plan(db, dispatcher)
    if db.is_sqlite:
        assert "SEARCH earlier USING INDEX ix_outbox_deliveries_chat" in plan, plan
        return
    for shown in (before_statistics, plan):
        assert "Hash Anti Join" in shown and "Nested Loop" not in shown, shown
    assert "Seq Scan" not in plan, plan


# --- Several dispatchers on PostgreSQL --------------------------------------------------------------------------


@pytest.mark.postgres_only
async def test_two_dispatchers_never_send_a_delivery_twice(db: Database) -> None:
    texts_by_chat = {f"chat-{c}": [f"c{c}-m{m}" for m in range(5)] for c in range(100)}
    async with db.transaction() as session:
        for m in range(5):
            for chat_id, texts in texts_by_chat.items():
                await enqueue(session, platform="telegram", chat_id=chat_id, kind="sms", message=_message(texts[m]))
    id_by_text = {row.payload["text"]: row.id for row in (await _rows(db)).values()}
    assert len(id_by_text) == 500

    other_db = Database(db.url)
    try:
        one, two = RecordingSender(latency=0.002), RecordingSender(latency=0.002)
        first = _dispatcher(db, one, instance_id="one")
        second = _dispatcher(other_db, two, instance_id="two")
        async with _running(first, second):
            rows = await _wait_rows(db, lambda rows: all(row.state == "sent" for row in rows.values()), within=15)
    finally:
        await other_db.dispose()

    sent_ids = Counter(id_by_text[sent.message.text] for sent in one.sent + two.sent)
    assert len(sent_ids) == 500 and set(sent_ids.values()) == {1}
    assert len(one.sent) > 0 and len(two.sent) > 0, (len(one.sent), len(two.sent))
    assert all(row.attempts == 1 for row in rows.values())
    merged = sorted(one.sent + two.sent, key=lambda sent: sent.at)
    for chat_id, texts in texts_by_chat.items():
        assert [sent.message.text for sent in merged if sent.chat_id == chat_id] == texts


@pytest.mark.postgres_only
async def test_commit_in_another_connection_wakes_the_dispatcher_through_notify(db: Database) -> None:
    other_db = Database(db.url)
    sender = RecordingSender()
    dispatcher = _dispatcher(db, sender, poll_interval=30)
    delays = []
    try:
        async with _running(dispatcher):
            for n in range(3):
                # Another Database is another pool: only PostgreSQL's NOTIFY links it to the dispatcher.
                await _enqueue(other_db, f"chat-{n}", [f"m{n}"])
                committed = time.monotonic()
                await sender.wait_for(n + 1, within=2)
                delays.append(sender.sent[-1].at - committed)
    finally:
        await other_db.dispose()
    assert dispatcher.notifications_received >= 3
    assert max(delays) < 0.2, delays


@pytest.mark.postgres_only
async def test_listen_connection_comes_back_after_being_killed(db: Database) -> None:
    other_db = Database(db.url)
    sender = RecordingSender()
    dispatcher = _dispatcher(db, sender, poll_interval=30, instance_id="reconnect-test")
    try:
        async with _running(dispatcher):
            assert dispatcher.listen_connects == 1
            async with other_db.engine.begin() as connection:
                killed = await connection.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'cumapp-outbox reconnect-test'"
                    )
                )
            assert killed == 1
            deadline = time.monotonic() + 5
            while dispatcher.listen_connects < 2:
                assert time.monotonic() < deadline, "LISTEN never reconnected"
                await asyncio.sleep(0.01)
            await _enqueue(other_db, "after", ["again"])
            committed = time.monotonic()
            await sender.wait_for(1, within=2)
            assert sender.sent[0].at - committed < 0.2
    finally:
        await other_db.dispose()
