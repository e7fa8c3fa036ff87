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
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bot.handlers import router
from bot.handlers.registry import load_flows
from bot.handlers.screens import Button, Screen, SentRef
from core.money.accounts import Contact
from core.platform.crypto import sandbox_key_path
from core.platform.outbox import OutgoingMessage
from core.services import Services

log = logging.getLogger(__name__)

PLATFORM = "console"
LOCAL_ID = "local"
HELP_LINE = "Type /help for commands, a number to press a button, '> text' to reply to the last SMS, /quit to leave."
NO_CHOICES = "There are no choices on screen now: /start shows the menu."
SOMETHING_WENT_WRONG = "Sorry, that went wrong; the details are in the log file."
LOG_FILE_NAME = "cumapp.log"
SHOWN_KEPT = 200  # messages whose text an edit can be compared with


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


@dataclass
class _Choice:
    """A numbered button and the message it belongs to."""

    button: Button
    message_id: str
    message_title: str
    changed: bool = False  # its message was edited since, so this button is no longer on it


def _title(text: str) -> str:
    """A message's first line, short, to name it when one of its old numbers is typed."""
    first = next((line.strip() for line in to_plain(text).splitlines() if line.strip()), "")
    return first if len(first) <= 48 else first[:47] + "…"


class ConsoleChat:
    """What is on screen: the numbered choices of the messages still current, and the last message to reply to.

    Numbers belong to the message that shows them and keep their meaning until that message is replaced: the answer
    to what the user typed replaces everything before it (its numbers start again at 1); a message that arrives by
    itself (a code, an SMS, a status edit) gets the next free numbers, so a number on screen never changes what it
    presses. A number from an earlier message is not pressed: the chat says what it was, and `N!` presses it there
    (unless that message has changed since)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._live: dict[int, _Choice] = {}
        self._earlier: dict[int, _Choice] = {}
        self._next_number = 1
        self.next_message_id = 1
        self.last_reply_ref: SentRef | None = None
        # What each recent message showed (plain text, button labels), so an edit can print only what changed.
        self._shown: dict[str, tuple[str, list[Button]]] = {}

    @property
    def choices(self) -> dict[int, Button]:
        """The numbers that press a button now."""
        return {number: choice.button for number, choice in self._live.items()}

    def earlier(self, number: int) -> _Choice | None:
        """What `number` pressed on a message that has since been replaced, if anything."""
        return self._earlier.get(number)

    def new_answer(self) -> None:
        """The answer to the user's own line replaces every earlier message's choices; numbers start at 1 again."""
        self._earlier.update(self._live)
        self._live = {}
        self._next_number = 1

    def retire(self, message_id: str) -> None:
        """That message was replaced (an edit in place): its numbers no longer press anything."""
        for number in [n for n, choice in self._live.items() if choice.message_id == message_id]:
            self._earlier[number] = self._live.pop(number)
            self._earlier[number].changed = True

    def describe_choices(self) -> str:
        if not self._live:
            return NO_CHOICES
        return "The choices now: " + "  ".join(f"[{n}] {c.button.label}" for n, c in sorted(self._live.items()))

    def show(self, text: str, buttons: list[list[Button]], *, label: str = "") -> SentRef:
        message_id = str(self.next_message_id)
        self.next_message_id += 1
        lines = [f"{label}{to_plain(text)}"] if text else []
        title = _title(text)
        for row in buttons:
            cells = []
            for button in row:
                number = self._next_number
                self._next_number += 1
                self._earlier.pop(number, None)
                self._live[number] = _Choice(button, message_id, title)
                extra = f" → {button.url}" if button.url else (f" → {button.copy_text}" if button.copy_text else "")
                cells.append(f"[{number}] {button.label}{extra}")
            lines.append("  ".join(cells))
        self.write("\n".join(lines) + "\n\n")
        self._shown[message_id] = (to_plain(text), [b for row in buttons for b in row])
        if len(self._shown) > SHOWN_KEPT:
            del self._shown[next(iter(self._shown))]
        return SentRef(PLATFORM, LOCAL_ID, message_id)

    def update(self, message_id: str, text: str, buttons: list[list[Button]]) -> bool:
        """An edit in place as one line: the message's first line, then what changed in it (a status card going
        queued → sent → delivered stays one message). False when that message is not known here or its buttons
        changed: the caller shows it anew."""
        shown = self._shown.get(message_id)
        same = [b for row in buttons for b in row]
        if shown is None or shown[1] != same:  # the same labels and targets: the numbers on screen stay right
            return False
        before, after = shown[0], to_plain(text)
        old_lines = set(before.splitlines())
        changed = [line.strip() for line in after.splitlines() if line.strip() and line not in old_lines]
        self._shown[message_id] = (after, same)
        if changed:
            self.write(f"↻ {_title(before)}: {' / '.join(changed)}\n\n")
        return True

    def write(self, text: str) -> None:
        """One piece of output in one write, so lines of two messages never interleave."""
        self.out.write(text)
        self.out.flush()


class ConsoleSender:
    """The outbox's way into the terminal: relayed SMS and codes are printed as they arrive."""

    platform = PLATFORM

    def __init__(self, chat: ConsoleChat) -> None:
        self.chat = chat

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        buttons = [
            [Button(b.label, action=b.action, url=b.url, copy_text=b.copy_text) for b in row] for row in message.buttons
        ]
        if message.edit_message_id is not None and self.chat.update(message.edit_message_id, message.text, buttons):
            return message.edit_message_id
        if message.edit_message_id is not None:
            # A status card edited in place: its old numbers go; the new ones come after those on screen.
            self.chat.retire(message.edit_message_id)
        ref = self.chat.show(message.text, buttons, label="(updated) " if message.edit_message_id else "📨 ")
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
        self._task = asyncio.create_task(self._loop(), name="console-chat")

    def announce(self, banner: str, log_path: Path | None) -> None:
        """The start-up banner, where the log lines go, and how to use the chat, in one piece."""
        logs = f"Log lines go to {log_path}\n" if log_path is not None else ""
        self.chat.write(f"\n{banner}\n{logs}\nCumApp terminal chat (sandbox). {HELP_LINE}\n\n")

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
                    self.chat.write(f"{SOMETHING_WENT_WRONG}\n\n")
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
                self.chat.write(f"{button.url or button.copy_text}\n\n")
                return
            screens = await router.handle_action(self.services, self.contact, button.action)
        elif line.isdigit() and not await router.has_prompt(self.services, self.contact):
            # Not a number on screen, and no question waits for a number: never guess which button was meant.
            self._not_on_screen(int(line))
            return
        elif line.endswith("!") and line[:-1].isdigit():
            earlier = self.chat.earlier(int(line[:-1]))
            if earlier is None or earlier.changed or earlier.button.action is None:
                self._not_on_screen(int(line[:-1]))
                return
            screens = await router.handle_action(self.services, self.contact, earlier.button.action)
        elif line.startswith(">"):
            screens = await router.handle_text(
                self.services, self.contact, line[1:].strip(), reply_to=self.chat.last_reply_ref
            )
        else:
            screens = await router.handle_text(self.services, self.contact, line)
        await self.render(screens)

    def _not_on_screen(self, number: int) -> None:
        earlier = self.chat.earlier(number)
        if earlier is None:
            said = f"There is no [{number}] on screen."
        elif earlier.changed or earlier.button.action is None:
            said = (
                f"[{number}] was “{earlier.button.label}” on an earlier message (“{earlier.message_title}”), which has "
                "changed since, so nothing was pressed."
            )
        else:
            said = (
                f"[{number}] was “{earlier.button.label}” on an earlier message (“{earlier.message_title}”), so nothing "
                f"was pressed. Type {number}! to press it there."
            )
        self.chat.write(f"{said} {self.chat.describe_choices()}\n\n")

    async def render(self, screens: list[Screen]) -> None:
        """The answer to one line: its first message replaces the choices of everything shown before."""
        replaced = False
        for screen in screens:
            if screen.toast and not screen.text:
                self.chat.write(f"({to_plain(screen.toast)})\n\n")
                continue
            if not replaced:
                self.chat.new_answer()
                replaced = True
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


def log_file_for(database_url: str) -> Path:
    """Where the log lines go while the terminal chat runs: beside the SQLite database, else in this folder."""
    key = sandbox_key_path(database_url)
    folder = key.parent if key is not None else Path.cwd()
    return (folder / LOG_FILE_NAME).resolve()


def divert_logs(path: Path) -> None:
    """Log lines to `path` instead of the terminal, where they would land in the middle of the chat. Handlers that
    write elsewhere (a test's log scan) stay; the format stays as configured."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    for old in list(root.handlers):
        if isinstance(old, logging.StreamHandler) and getattr(old, "stream", None) in (sys.stderr, sys.stdout):
            if old.formatter is not None:
                handler.setFormatter(old.formatter)
            root.removeHandler(old)
    if handler.formatter is None:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    logging.captureWarnings(True)  # warnings too: they print to stderr otherwise


def _start_stdin_thread(loop: asyncio.AbstractEventLoop, put: Callable[[str | None], None]) -> None:
    """Blocking reads on a daemon thread, so shutting down never waits for the Enter key."""

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(put, line)
        loop.call_soon_threadsafe(put, None)

    threading.Thread(target=read, name="console-stdin", daemon=True).start()
