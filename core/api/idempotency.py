"""`Idempotency-Key`: the first request with a key is answered and its answer kept; a retry with the same body gets
that answer again and does nothing, one with another body is refused. Two retries racing take turns on the row."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from core.models import ApiIdempotency
from core.platform.clock import utcnow
from core.platform.db import Database, dialect_insert

KEY_MAX = 128
# A retry that finds the first request still being answered waits this long for its answer.
WAIT_SECONDS = 10.0


class KeyReused(Exception):
    """The key was used before with another request: 422."""


class StillRunning(Exception):
    """The first request with this key has not been answered yet: 409, try again."""


@dataclass(frozen=True)
class Stored:
    status: int
    body: dict[str, Any] | None


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyStore:
    """Claims keys, keeps answers, and replays them."""

    def __init__(self, db: Database, *, wait_seconds: float = WAIT_SECONDS) -> None:
        self.db = db
        self.wait_seconds = wait_seconds

    async def claim(self, user_id: int, key: str, digest: str) -> Stored | int:
        """The stored answer of an earlier request with this key, or the id of our claim on it (go ahead)."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            claimed = await self._insert(user_id, key, digest)
            if claimed is not None:
                return claimed
            async with self.db.read() as session:
                row = await session.scalar(
                    select(ApiIdempotency).where(ApiIdempotency.user_id == user_id, ApiIdempotency.key == key)
                )
            if row is None:
                continue  # released by a failed first attempt between our insert and our read: claim it now
            if row.request_hash != digest:
                raise KeyReused()
            if row.status_code is not None:
                return Stored(row.status_code, row.response)
            if time.monotonic() >= deadline:
                raise StillRunning()
            await asyncio.sleep(0.05)

    async def _insert(self, user_id: int, key: str, digest: str) -> int | None:
        async with self.db.transaction() as session:
            insert = dialect_insert(session.bind.dialect.name)
            try:
                return await session.scalar(
                    insert(ApiIdempotency)
                    .values(user_id=user_id, key=key, request_hash=digest, created_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["user_id", "key"])
                    .returning(ApiIdempotency.id)
                )
            except IntegrityError:
                return None

    async def finish(self, claim_id: int, status: int, body: dict[str, Any] | None) -> None:
        """Keep the answer; retries get it from now on."""
        async with self.db.transaction() as session:
            await session.execute(
                update(ApiIdempotency).where(ApiIdempotency.id == claim_id)
                .values(status_code=status, response=body).execution_options(synchronize_session=False)
            )

    async def release(self, claim_id: int) -> None:
        """The request failed on our side (nothing kept): a retry may try again."""
        async with self.db.transaction() as session:
            await session.execute(
                delete(ApiIdempotency).where(ApiIdempotency.id == claim_id)
                .execution_options(synchronize_session=False)
            )
