"""What the front end keeps between interactions: the messages it answered with, and the interactions in hand.

A message's menu times out and disables its buttons with the interaction's token, which the outbox may also use
to edit the message later; stopping waits for the interactions still being handled.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

import discord

from bot.discord.components import TextBox, TimedView
from bot.discord.limits import TOKEN_LIFETIME, Editor


class ShownMessages:
    """Open menus and text boxes, and each answered message's editor for as long as its token lives."""

    def __init__(self) -> None:
        self._views: dict[int, discord.ui.View] = {}
        self._boxes: set[TextBox] = set()
        self._editors: dict[int, tuple[float, Editor]] = {}

    def record(self, message_id: int, view: discord.ui.View | None, editor: Editor) -> None:
        """A message we answered with: its menu's timeout can now edit it, and the outbox may edit it later."""
        now = time.monotonic()
        # Every token lives as long, so insertion order is expiry order: expired ones are at the front.
        self._editors.pop(message_id, None)
        self._editors[message_id] = (now + TOKEN_LIFETIME, editor)
        while next(iter(self._editors.values()))[0] <= now:  # stops at the latest entry at the latest
            del self._editors[next(iter(self._editors))]
        old = self._views.pop(message_id, None)
        if old is not None and old is not view:
            old.stop()
        if isinstance(view, TimedView) and view.timeout is not None and not view.is_finished():
            view.editor = editor
            self._views[message_id] = view

    def add_box(self, box: TextBox) -> None:
        self._boxes.add(box)

    def editor_of(self, message_id: int) -> Editor | None:
        entry = self._editors.get(message_id)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def forget_view_of(self, message_id: int) -> None:
        view = self._views.pop(message_id, None)
        if view is not None:
            view.stop()

    def forget_view(self, view: discord.ui.View) -> None:
        if isinstance(view, TextBox):
            self._boxes.discard(view)
            return
        for message_id, known in list(self._views.items()):
            if known is view:
                del self._views[message_id]

    def stop_all(self) -> None:
        for view in [*self._views.values(), *self._boxes]:
            view.stop()
        self._views.clear()
        self._boxes.clear()


class InFlight:
    """The tasks handling interactions now (and disabling timed-out menus), so stopping can wait for them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def track_current(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.track(task)

    async def idle(self, seconds: float = 5.0) -> None:
        """Waits (at most `seconds`) until every interaction being handled now has been answered."""
        deadline = time.monotonic() + seconds
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class SeenInteractions:
    """The interaction ids this process has taken on lately, so that a repeat (a gateway resume replaying
    INTERACTION_CREATE) is dropped before anything is sent or read; another instance's copy is refused by Discord
    itself (a second acknowledgement fails with 40060) and by the database claim after it."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._ids: OrderedDict[int, None] = OrderedDict()

    def first(self, interaction_id: int) -> bool:
        if interaction_id in self._ids:
            return False
        self._ids[interaction_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True
