"""The terminal chat for sandbox mode: commands typed at a prompt, buttons shown as numbered choices."""

from __future__ import annotations

import asyncio
import html
import logging
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bot.handlers import router
from bot.handlers.registry import load_flows
from bot.handlers.screens import Button, Screen, SentRef
from core.money.accounts import Contact
from core.platform.outbox import OutgoingMessage
from core.services import Services

log = logging.getLogger(__name__)

PLATFORM = "console"
LOCAL_ID = "local"
HELP_LINE = "Type /help for commands, a number to press a button, '> text' to reply to the last SMS, /quit to leave."


def to_plain(text: str) -> str:
    """HTML as a terminal shows it: code in backticks, links with their address, the rest unescaped."""
    text = re.sub(r"<code>(.*?)</code>", r"`\1`", text, flags=re.DOTALL)
    text = re.sub(r'<a href="([^"]*)">(.*?)</a>', r"\2 (\1)", text, flags=re.DOTALL)
    text = re.sub(r"<[^>]+>", "", text)
    return html.unescape(text)


def private_folder(base: Path | None = None) -> Path:
    """A folder only this OS user can open (0700) for files with personal data, e.g. the /history export.

    The temp folder is shared by every local user: the folder is per user, and one that somebody else made (or a
    symlink planted in its place) is never written to; a fresh private one is made instead."""
    uid = os.getuid()
    base = base or Path(tempfile.gettempdir())
    folder = base / f"cumapp-console-{uid}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
        log.warning("%s is not a folder of this user; exports go to a new private folder", folder)
        return Path(tempfile.mkdtemp(prefix=f"cumapp-console-{uid}-", dir=base))  # mkdtemp makes it 0700
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)  # made by an older version, 0755
    return folder


def write_private_file(folder: Path, name: str, data: bytes) -> Path:
    """`data` in `folder` as a file only this user can read (0600), also when a 0644 file of that name exists."""
    base_name = Path(name).name
    path = folder / (base_name if base_name not in ("", ".", "..") else "file")  # never outside the folder
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, 0o600)
        handle.write(data)
    return path


class ConsoleChat:
    """Keeps what is on screen: the numbered buttons and the last message one can reply to."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.choices: dict[int, Button] = {}
        self.next_message_id = 1
        self.last_reply_ref: SentRef | None = None

    def show(self, text: str, buttons: list[list[Button]], *, label: str = "") -> SentRef:
        message_id = str(self.next_message_id)
        self.next_message_id += 1
        lines = [f"{label}{to_plain(text)}"] if text else []
        if buttons:
            self.choices = {}
            rendered = []
            for row in buttons:
                cells = []
                for button in row:
                    number = len(self.choices) + 1
                    self.choices[number] = button
                    extra = f" → {button.url}" if button.url else (f" → {button.copy_text}" if button.copy_text else "")
                    cells.append(f"[{number}] {button.label}{extra}")
                rendered.append("  ".join(cells))
            lines.extend(rendered)
        self.out.write("\n".join(lines) + "\n\n")
        self.out.flush()
        return SentRef(PLATFORM, LOCAL_ID, message_id)


class ConsoleSender:
    """The outbox's way into the terminal: relayed SMS and codes are printed as they arrive."""

    platform = PLATFORM

    def __init__(self, chat: ConsoleChat) -> None:
        self.chat = chat

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        buttons = [
            [Button(b.label, action=b.action, url=b.url, copy_text=b.copy_text) for b in row] for row in message.buttons
        ]
        ref = self.chat.show(message.text, buttons, label="📨 ")
        if message.reply_context:
            self.chat.last_reply_ref = ref
        return ref.message_id


class ConsoleFrontEnd:
    """Reads lines from a terminal (or any line source in tests) and renders the handlers' Screens."""

    name = "console"

    def __init__(
        self, services: Services, *, out: TextIO | None = None, lines: asyncio.Queue[str | None] | None = None
    ) -> None:
        load_flows()
        self.services = services
        self.chat = ConsoleChat(out or sys.stdout)
        self.sender = ConsoleSender(self.chat)
        self.contact = Contact(PLATFORM, LOCAL_ID, chat_id=LOCAL_ID, display_name="you", language_code="en")
        self._lines = lines
        self._task: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] | None = None
        self._files: Path | None = None  # made on the first file, private to this OS user

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        if self._lines is None:
            self._lines = asyncio.Queue()
            _start_stdin_thread(loop, self._lines.put_nowait)
        self.chat.out.write(f"\nCumApp terminal chat (sandbox). {HELP_LINE}\n\n")
        self._task = asyncio.create_task(self._loop(), name="console-chat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        assert self._lines is not None and self.done is not None
        try:
            while True:
                line = await self._lines.get()
                if line is None or line.strip() in ("/quit", "/exit"):
                    break
                try:
                    await self.handle_line(line.strip())
                except Exception:
                    log.exception("terminal chat failed on %r", line)
        finally:
            if not self.done.done():
                self.done.set_result(None)

    async def handle_line(self, line: str) -> None:
        """One line typed by the user: a command, a button number, a reply or text."""
        if not line:
            return
        if line.startswith("/"):
            head, _, rest = line[1:].partition(" ")
            screens = await router.handle_command(self.services, self.contact, head, rest)
        elif line.isdigit() and int(line) in self.chat.choices:
            button = self.chat.choices[int(line)]
            if button.action is None:
                self.chat.out.write(f"{button.url or button.copy_text}\n\n")
                return
            screens = await router.handle_action(self.services, self.contact, button.action)
        elif line.startswith(">"):
            screens = await router.handle_text(
                self.services, self.contact, line[1:].strip(), reply_to=self.chat.last_reply_ref
            )
        else:
            screens = await router.handle_text(self.services, self.contact, line)
        await self.render(screens)

    async def render(self, screens: list[Screen]) -> None:
        for screen in screens:
            if screen.toast and not screen.text:
                self.chat.out.write(f"({to_plain(screen.toast)})\n\n")
                continue
            text = screen.text
            if screen.invoice is not None:
                text = f"{screen.invoice.title}: {screen.invoice.description} (payments work in Telegram only)"
            for data, name in ((screen.photo, screen.photo_name), (screen.document, screen.document_name)):
                if data is not None:
                    if self._files is None:
                        self._files = private_folder()
                    path = write_private_file(self._files, name, data)
                    text = f"{text}\n[file saved: {path}]"
            ref = self.chat.show(text, screen.buttons, label="(updated) " if screen.edit else "")
            if screen.reply_context is not None:
                self.chat.last_reply_ref = ref
                await router.remember_reply_context(self.services, ref, screen.reply_context)
            if screen.on_sent is not None:
                await screen.on_sent(ref)


def _start_stdin_thread(loop: asyncio.AbstractEventLoop, put: Callable[[str | None], None]) -> None:
    """Blocking reads on a daemon thread, so shutting down never waits for the Enter key."""

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(put, line)
        loop.call_soon_threadsafe(put, None)

    threading.Thread(target=read, name="console-stdin", daemon=True).start()
