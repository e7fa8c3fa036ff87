"""Garbage collection for a long-running server: the heap built at startup is frozen, so full collections stay
short.

Why
---
After startup a `cumapp run` process holds several hundred thousand long-lived objects (SQLAlchemy's mappers,
python-telegram-bot, discord.py, the translations). Every full collection walked all of them: measured under the
relay benchmark, pauses of 110-175 ms every few seconds, during which no SMS was relayed and every message
behind them waited. `gc.freeze()` moves what exists now to a generation the collector never scans (CPython's
advice for servers), so a full collection walks only what was made since: a few milliseconds.

A young collection ran every 700 new objects, CPython's default: under a burst of webhooks every few requests,
each finding most of what it walked still in use by a request in flight. At 20,000 it runs a few times a second
and walks 20,000 objects (well under a millisecond); the ingestion benchmark, one run each: 0.73 ms of CPU
per SMS against 0.79 ms.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 20_000  # new objects between young collections (CPython's default: 700)


def freeze_startup_heap() -> None:
    """Collect once, keep everything that survived out of later collections, and space young collections out."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    log.debug("startup heap frozen: %d objects, %.0f ms", gc.get_freeze_count(), (time.perf_counter() - started) * 1000)
