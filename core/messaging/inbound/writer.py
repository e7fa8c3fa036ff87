"""InboundRelay: takes inbound SMS from webhooks and the sandbox, analyses them first where the owner asked, and
writes them one per transaction or, for webhooks, together in group commits."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.messaging.inbound.batch import PendingInbound, store_batch
from core.messaging.inbound.parts import collect_part, relay_stale_parts
from core.messaging.inbound.store import NEEDS_NOTE, Notes, store_inbound
from core.messaging.results import InboundOutcome
from core.models import Message, PhoneNumber, User
from core.platform.db import Database
from core.platform.settings import Settings
from core.providers.sms import InboundSms

log = logging.getLogger(__name__)


class InboundRelay:
    """Inbound SMS in, relays to the owner's chats out; `ai` (core.ai.service.AiService) enables analysis.

    One writer by default: a process under a burst is bound by its CPU, not by the database's answer, and one
    writer's batches are twice the size of two writers', so each SMS carries half the per-batch cost (measured:
    0.78-1.02 ms of CPU per ingested SMS against 0.99-1.13 ms with two, docs/perf/process.md). A lone SMS is still
    written at once, since the writer is idle then."""

    def __init__(self, db: Database, settings: Settings, *, max_batch: int = 64, max_writers: int = 1) -> None:
        self.db = db
        self.settings = settings
        self.max_batch = max_batch
        self.max_writers = max_writers
        self._pending: list[PendingInbound] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._writing = 0  # writers still inside their loop; a finished task may linger in _writers a moment
        self._analyses: set[asyncio.Task[None]] = set()
        self.ai: Any = None  # core.ai.service.AiService, set by the composition root for automatic analysis
        self._notes: Notes = {}

    async def close(self) -> None:
        # An analysis queues its SMS for a writer when it ends, so wait until neither kind is left running.
        while running := [task for task in (*self._writers, *self._analyses) if not task.done()]:
            await asyncio.gather(*running, return_exceptions=True)

    async def receive_inbound(self, sms: InboundSms, received_at: datetime | None = None) -> InboundOutcome:
        """Store an inbound SMS and queue its relay to the owner's chats, all in one transaction.

        A retried webhook is stored and relayed once; parts of a long text wait until all have come."""
        received_at = received_at or sms.received_at
        await self._prepare_note(sms)
        async with self.db.transaction() as session:
            if sms.part is not None and sms.part[1] > 1:
                joined = await collect_part(session, sms)
                if joined is None:
                    return InboundOutcome("part_stored")
                sms = joined
            return await store_inbound(session, self.settings, self._notes, sms, received_at)

    async def submit_inbound(self, sms: InboundSms, received_at: datetime | None = None) -> InboundOutcome:
        """receive_inbound for webhooks: SMS arriving together share one transaction (group commit).

        Returns once this SMS and its relay are committed, like receive_inbound. A batch that fails is retried
        one SMS per transaction, so a bad message only fails itself."""
        received_at = received_at or sms.received_at
        if sms.part is not None and sms.part[1] > 1:
            return await self.receive_inbound(sms, received_at)
        future: asyncio.Future[InboundOutcome] = asyncio.get_running_loop().create_future()
        # Whether the owner wants automatic analysis is learnt in the batch's own owner query, so an SMS costs
        # no read of its own; only those owners' SMS come back NEEDS_NOTE, to be analysed and written then.
        self._queue(PendingInbound(sms, received_at, future, analysed=self.ai is None))
        return await future

    def _queue(self, item: PendingInbound) -> None:
        self._pending.append(item)
        # Counted by _writing, not by the tasks: a writer that has just found nothing pending is done with the
        # queue, though its task stays in _writers until its done callback runs; the SMS queued in that moment
        # would otherwise wait for the next one to come.
        if self._writing < self.max_writers:
            self._writing += 1
            writer = asyncio.create_task(self._write_pending(), name="inbound-sms-writer")
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)

    async def _analyse_then_queue(self, item: PendingInbound) -> None:
        try:
            await self._prepare_note(item.sms)
        except Exception:  # the note is a nicety: the SMS is relayed without it rather than not at all
            log.warning("automatic analysis of %s SMS %s failed; relaying it without a note", item.sms.provider,
                        item.sms.provider_message_id, exc_info=True)
        self._queue(replace(item, analysed=True))

    async def relay_stale_parts(self, session: AsyncSession, now: datetime) -> int:
        """The sweeper's share of inbound: long texts whose missing parts will not come any more."""
        return await relay_stale_parts(session, self.settings, self._notes, now)

    async def _prepare_note(self, sms: InboundSms) -> None:
        """Automatic analysis for owners who turned it on, done before the transaction: the model may take up to
        2 s and no lock may wait on it. The note is picked up when the relay is built."""
        if self.ai is None or (sms.part is not None and sms.part[1] > 1):
            return
        async with self.db.read() as session:
            owner = await session.scalar(
                select(User).join(PhoneNumber, PhoneNumber.user_id == User.id)
                .where(PhoneNumber.e164 == sms.to_e164, PhoneNumber.state == "active", User.auto_analyze.is_(True))
                .order_by(PhoneNumber.id.desc()).limit(1)
            )
            if owner is None:
                return
            # A retried webhook is relayed once; it must not be analysed (and cost tokens) again either.
            if await session.scalar(select(Message.id).where(
                    Message.provider == sms.provider, Message.provider_message_id == sms.provider_message_id)):
                return
        from core.ai.notes import relay_note

        analysis = await self.ai.auto_analysis(owner, sms.body)
        if analysis is not None:
            self._notes[(sms.provider, sms.provider_message_id)] = str(relay_note(owner.locale, analysis))

    async def _write_pending(self) -> None:
        # No waiting for a batch to fill: a lone SMS is written at once, and under load batches grow by themselves.
        try:
            await self._write_batches()
        finally:
            self._writing -= 1  # with no await since the loop found nothing pending

    async def _write_batches(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            try:
                outcomes = await self._store_batch(batch)
            except Exception:
                log.warning("inbound batch of %d failed; writing them one by one", len(batch), exc_info=True)
                for item in batch:
                    try:
                        outcome = await self.receive_inbound(item.sms, item.received_at)
                    except Exception as error:
                        if not item.future.done():
                            item.future.set_exception(error)
                    else:
                        if not item.future.done():
                            item.future.set_result(outcome)
                continue
            for item, outcome in zip(batch, outcomes, strict=True):
                if outcome.outcome == NEEDS_NOTE:
                    task = asyncio.create_task(self._analyse_then_queue(item), name="inbound-sms-analysis")
                    self._analyses.add(task)
                    task.add_done_callback(self._analyses.discard)
                elif not item.future.done():
                    item.future.set_result(outcome)

    async def _store_batch(self, batch: list[PendingInbound]) -> list[InboundOutcome]:
        async with self.db.transaction() as session:
            return await store_batch(session, self.settings, self._notes, batch, defer_auto=self.ai is not None)
