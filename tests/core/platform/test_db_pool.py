"""The PostgreSQL pool hands a quiet moment's work to the connection used last, whose prepared statements are warm."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from core.platform.db import Database


async def test_after_a_burst_quiet_work_stays_on_one_warm_connection(pg_url: str) -> None:
    """First in, first out sent each quiet transaction to another of the burst's connections, and each one
    prepared every statement again on its first use (the slowest verification codes of bench/process_hot_paths.py)."""
    db = Database(pg_url)
    try:
        release = asyncio.Event()

        async def hold_one() -> int:
            async with db.read() as session:
                pid = int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)
                await release.wait()
                return pid

        burst = [asyncio.ensure_future(hold_one()) for _ in range(8)]
        await asyncio.sleep(0.5)
        release.set()
        assert len(set(await asyncio.gather(*burst))) == 8  # eight connections now wait in the pool
        quiet = set()
        for _ in range(8):
            async with db.read() as session:
                quiet.add(int(await session.scalar(text("SELECT pg_backend_pid()")) or 0))
        assert len(quiet) == 1
    finally:
        await db.dispose()
