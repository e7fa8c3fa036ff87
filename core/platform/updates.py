"""Chat updates handled once: each platform's update or interaction id is claimed before it runs, across instances."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete

from core.models import ChatUpdate
from core.platform.clock import utcnow
from core.platform.db import Database, dialect_insert

log = logging.getLogger(__name__)

# Telegram redelivers an unanswered update for about a day at most; Discord never resends an interaction after
# its token dies (15 minutes). A day covers both and keeps the table small.
KEEP = timedelta(days=1)
SWEEP_SECONDS = 3600.0


async def claim(db: Database, platform: str, update_id: str | int) -> bool:
    """True for the first delivery of this update, False for every later one, whichever instance received it.

    The claim commits on its own before the update runs: a crash between the two loses that update (the user sends
    it again) instead of charging twice, which a redelivery after a timeout would otherwise do."""
    async with db.transaction() as session:
        insert: Any = dialect_insert(session.bind.dialect.name)
        claimed = await session.scalar(
            insert(ChatUpdate)
            .values(platform=platform, update_id=str(update_id)[:64], seen_at=utcnow())
            .on_conflict_do_nothing(index_elements=["platform", "update_id"])
            .returning(ChatUpdate.update_id)
        )
    if claimed is None:
        log.info("%s update %s delivered again: ignored", platform, update_id)
    return claimed is not None


async def sweep(db: Database, now: datetime | None = None) -> int:
    """Forget claims older than KEEP; returns how many went."""
    cutoff = (now or utcnow()) - KEEP
    async with db.transaction() as session:
        result = await session.execute(delete(ChatUpdate).where(ChatUpdate.seen_at < cutoff))
    return int(result.rowcount or 0)


def start_jobs(scheduler: Any, db: Database) -> None:
    """Register the hourly sweep with the database-leased scheduler (core.platform.scheduler.Scheduler)."""

    async def run() -> None:
        await sweep(db)

    scheduler.add_periodic("chat-update-sweep", run, SWEEP_SECONDS)
