"""Benchmark (diagnostic, in-process): the time one outbox claim takes on PostgreSQL, by the backlog's size and shape.

A claim picks due deliveries whose chat has nothing earlier waiting or being sent (core/platform/outbox/
claim_plan.py). The dispatcher claims several times a second while a backlog drains at Telegram's pace, so a claim
that reads the whole backlog costs PostgreSQL a core's share for as long as the drain lasts. For each shape this
times the claim the dispatcher runs (`outbox.store.claim`, 15 deliveries, rolled back) and, in the same run, the
claim before it: the same SELECT as a join (no OFFSET 0) with `enable_nestloop` off, which is what the code before
claim_plan.py ran. Each shape has 50,000 sent rows of history; the first chats (up to 30) have a delivery being sent,
as while a drain runs.

    .venv/bin/python bench/claim_backlog.py               # TEST_DATABASE_URL or the local PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from core.platform.db import Database  # noqa: E402
from core.platform.migrate import upgrade_to_head  # noqa: E402
from core.platform.outbox import store  # noqa: E402
from tests.faults.fleet import create_database, drop_database  # noqa: E402

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
LIMIT = 15
# (waiting deliveries, chats they are spread over)
SHAPES = ((3_000, 100), (30_000, 100), (3_000, 3), (30_000, 3), (30_000, 30_000))

_FILL = text("""
INSERT INTO outbox_deliveries (platform, chat_id, kind, payload, state, priority, attempts, next_attempt_at, created_at)
SELECT 'telegram', 'history-' || (g % 100), 'sms', '{}', 'sent', 0, 1, now(), now() FROM generate_series(1, 50000) g;
""")
_BACKLOG = text("""
INSERT INTO outbox_deliveries (platform, chat_id, kind, payload, state, priority, attempts, next_attempt_at, created_at)
SELECT 'telegram', 'chat-' || (g % :chats), 'sms', '{}', CASE WHEN g < LEAST(:chats, 30) THEN 'sending' ELSE 'pending' END,
       0, 0, now() - interval '1 second', now()
FROM generate_series(0, :rows - 1) g
""")
# The claim before claim_plan.py: the per-chat check as a join, hashed (enable_nestloop off).
_JOIN_CLAIM = text("""
SELECT d.id FROM outbox_deliveries d
WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND d.platform IN ('telegram')
  AND NOT EXISTS (SELECT 1 FROM outbox_deliveries earlier WHERE earlier.platform = d.platform
                  AND earlier.chat_id = d.chat_id AND earlier.id < d.id AND earlier.state IN ('pending', 'sending'))
  AND (d.origin IS NULL OR d.origin = 1 OR d.next_attempt_at <= now() - interval '10 seconds')
ORDER BY d.priority DESC, d.id LIMIT :limit FOR UPDATE OF d SKIP LOCKED
""")


async def _timed(db: Database, claim: str, budget: float) -> tuple[float, int]:
    """The median milliseconds of one claim (rolled back) over repeats within `budget` seconds, at least two."""
    times: list[float] = []
    claimed = 0
    started = time.perf_counter()
    while len(times) < 2 or (time.perf_counter() - started < budget and len(times) < 25):
        async with db.transaction() as session:
            begun = time.perf_counter()
            if claim == "now":
                rows = await store.claim(session, ["telegram"], LIMIT, claim_seconds=60, lock_rows=True,
                                         claimed_by=1, mine_first=True)
            else:
                await session.execute(text("SET LOCAL enable_nestloop = off"))
                rows = list(await session.scalars(_JOIN_CLAIM, {"limit": LIMIT}))
            times.append((time.perf_counter() - begun) * 1000)
            claimed = len(rows)
            await session.rollback()
    return statistics.median(times), claimed


async def main(args: argparse.Namespace) -> None:
    name = f"cumapp_bench_claim_{uuid.uuid4().hex[:8]}"
    url = await create_database(ADMIN_URL, name)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        db = Database(url)
        print("| waiting | chats | claim now (ms) | claim before (ms) | before / now |\n|---|---|---|---|---|")
        for rows, chats in SHAPES:
            async with db.engine.begin() as connection:
                await connection.execute(text("TRUNCATE outbox_deliveries"))
                await connection.execute(_FILL)
                await connection.execute(_BACKLOG, {"rows": rows, "chats": chats})
            async with db.engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("VACUUM ANALYZE outbox_deliveries"))
            now, got = await _timed(db, "now", args.budget)
            before, got_before = await _timed(db, "before", args.budget)
            assert got == got_before, (got, got_before)  # the same deliveries' count either way
            print(f"| {rows:,} | {chats:,} | {now:.2f} | {before:.2f} | {before / now:,.0f}× |", flush=True)
        await db.dispose()
    finally:
        await drop_database(ADMIN_URL, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per figure (2; at least two)")
    asyncio.run(main(parser.parse_args()))
