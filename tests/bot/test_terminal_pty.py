"""`cumapp run` in a pseudo-terminal, as a newcomer meets it: the banner in one piece with the log file named, a
verification, a code that arrives while the menu is shown (and changes nothing the menu's numbers do), an older
number that is named instead of pressed, sandbox credit, then a restart in the same folder that verifies again with
nothing left held."""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_VARIABLES = ("TELEGRAM", "DISCORD", "TWILIO", "GROQ", "TEXTVERIFIED", "VONAGE", "DATABASE_URL", "SANDBOX")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal (pty)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Terminal:
    """`cumapp run` on the slave side of a pty (so its stdin is a terminal and the chat starts); we type on the
    master side and read what it prints."""

    def __init__(self, folder: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(PROVIDER_VARIABLES)}
        env.update({
            "HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT),
            "SANDBOX_CODE_DELAY_SECONDS": "1.0",
        })
        master, slave = pty.openpty()
        self.master = master
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run"], cwd=folder, env=env, stdin=slave, stdout=slave, stderr=slave,
            close_fds=True,
        )
        os.close(slave)
        self.output = ""
        self.mark = 0

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.output += os.read(self.master, 65536).decode(errors="replace").replace("\r\n", "\n")
            except OSError:  # the process ended: the slave side is closed
                time.sleep(timeout)

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Waits until `pattern` shows up after the last typed line; the output from there on is searched."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output[self.mark :])
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in:\n{self.output[self.mark :]}")
            self._read(0.05)

    def type(self, line: str, until: str, timeout: float = 10.0) -> str:
        """Types `line`, then waits for `until`; returns what was printed since."""
        self.mark = len(self.output)
        os.write(self.master, f"{line}\n".encode())
        self.expect(until, timeout)
        return self.output[self.mark :]

    def quit(self) -> int:
        os.write(self.master, b"/quit\n")
        deadline = time.monotonic() + 20
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.05)
        if self.process.poll() is None:
            self.process.kill()
        os.close(self.master)
        return self.process.wait()


def _number_of(block: str, label: str) -> int:
    found = re.search(rf"\[(\d+)\] {re.escape(label)}", block)
    assert found, f"no button {label!r} in:\n{block}"
    return int(found.group(1))


def test_a_newcomer_at_the_terminal_verifies_restarts_and_verifies_again(tmp_path: Path) -> None:
    port = _free_port()
    first = Terminal(tmp_path, port)
    try:
        # The banner in one piece: the start-up line, where the logs go, how to use the chat; no log line around it.
        first.expect(r"started \| front ends: console[^\n]*\nLog lines go to [^\n]*cumapp\.log\n\nCumApp terminal chat",
                     timeout=30)
        assert str(tmp_path.resolve() / "cumapp.log") in first.output

        price = first.type("/verify whatsapp", r"\[\d+\] Cancel")
        status = first.type(str(_number_of(price, "Confirm")), r"Waiting for the SMS.*\n(.*\n)*?.*Refresh")
        assert "went wrong" not in status
        menu = first.type("/start", r"\[\d+\] [^\n]*Help")
        third = re.search(r"\[3\] ([^\[\n]+?)(?:  |\n)", menu)
        assert third, menu
        last_on_menu = max(int(n) for n in re.findall(r"\[(\d+)\]", menu))
        # The code arrives while the menu is on screen: its buttons get the next numbers, the menu's stay as they were.
        first.expect(r"Same number again")
        same_number = _number_of(first.output[first.mark :], "♻️ Same number again")
        assert same_number > last_on_menu
        pressed = first.type("3", r"\n\n")
        assert "♻️" not in pressed and "WhatsApp" not in pressed and "There is no" not in pressed, (third, pressed)
        # Now that a newer answer replaced it, the code's "Same number again" number is named, not pressed.
        named = first.type(str(same_number), "nothing was pressed")
        assert "Same number again" in named and "earlier message" in named

        offer = first.type("/topup", r"\$25\.00")
        assert "Sandbox credit" in offer
        credited = first.type(str(_number_of(offer, "➕ $10.00")), r"sandbox credit added")
        assert "$10.00 of sandbox credit added" in credited
        terminal_output = first.output
    finally:
        assert first.quit() == 0
    assert not re.search(r"\b(INFO|WARNING|ERROR)\b", terminal_output), terminal_output

    # The same folder again: new provider ids, so Confirm works and nothing from the last run blocks it.
    second = Terminal(tmp_path, port)
    try:
        second.expect(r"CumApp terminal chat", timeout=30)
        price = second.type("/verify whatsapp", r"\[\d+\] Cancel")
        status = second.type(str(_number_of(price, "Confirm")), r"Waiting for the SMS|went wrong")
        assert "went wrong" not in status and "Traceback" not in status
        second.expect(r"WhatsApp code")
    finally:
        assert second.quit() == 0

    with sqlite3.connect(tmp_path / "cumapp.db") as db:
        verifications = db.execute("SELECT state, provider_verification_id FROM verifications").fetchall()
        held = db.execute("SELECT count(*) FROM holds WHERE state = 'held'").fetchone()[0]
        credit = db.execute(
            "SELECT amount_cents, note FROM ledger_entries WHERE reference = 'sandbox_topup'"
        ).fetchall()
        verify_count = len(verifications)
    assert verify_count == 2 and {state for state, _ in verifications} == {"code_received"}, verifications
    assert len({pid for _, pid in verifications}) == 2
    assert held == 0
    assert credit == [(1000, "sandbox top-up (simulated credit)")]
    log = (tmp_path / "cumapp.log").read_text()
    assert log.count("started | front ends: console") == 2
