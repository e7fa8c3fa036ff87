"""The startup heap is frozen: later full collections do not walk it (core/platform/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from core.platform.heap import YOUNG_THRESHOLD, freeze_startup_heap


@pytest.fixture
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()  # the other tests run on an ordinary heap
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("_unfrozen")
def test_what_lives_at_startup_is_kept_out_of_later_collections() -> None:
    kept = [[] for _ in range(1000)]
    assert gc.get_freeze_count() == 0
    freeze_startup_heap()
    assert gc.get_freeze_count() >= len(kept)
    tracked = len(gc.get_objects())
    assert tracked < 1000, f"{tracked} objects still walked by a full collection"
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
