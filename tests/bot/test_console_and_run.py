"""The terminal chat journey, and `cumapp run` as a real process: sandbox start, health, clean shutdown."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bot.console import ConsoleFrontEnd
from core.platform.outbox import OutgoingMessage
from core.services import Services

ROOT = Path(__file__).resolve().parents[2]


async def _say(console: ConsoleFrontEnd, out: io.StringIO, line: str) -> str:
    start = len(out.getvalue())
    await console.handle_line(line)
    return out.getvalue()[start:]


async def test_terminal_chat_journey(services: Services) -> None:
    out = io.StringIO()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    console = ConsoleFrontEnd(services, out=out, lines=lines)
    await console.start()
    try:
        start = await _say(console, out, "/start")
        assert "Welcome to CumApp" in start and "$5.00" in start
        assert "[1] 📲 Verify" in start or "Balance" in start
        number = next(n for n, b in console.chat.choices.items() if b.action == "cmd:balance")
        balance = await _say(console, out, str(number))
        assert "Available: $5.00" in balance and "<b>" not in balance
        unknown = await _say(console, out, "/nope")
        assert "/help" in unknown
        settings = await _say(console, out, "/settings")
        assert "AI assistance: off" in settings
        choice = next(n for n, b in console.chat.choices.items() if b.action == "set:ai")
        toggled = await _say(console, out, str(choice))
        assert "AI assistance: on" in toggled
        # The console is the operator's own keyboard: admin commands work there.
        grant = await _say(console, out, "/grant #1 1")
        assert "credited" in grant
        # Outbox messages (relayed SMS, codes) are printed as they arrive.
        await console.sender.send("local", OutgoingMessage(text="<b>Code</b> 123 &amp; more"))
        assert "Code 123 & more" in out.getvalue()
        lines.put_nowait("/quit")
        assert console.done is not None
        await asyncio.wait_for(console.done, 2)
    finally:
        await console.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cumapp_run_in_sandbox_answers_health_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    env.update({"HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT),
                "PYTHONWARNINGS": "default"})
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        body = b""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    body = response.read()
                    break
            except OSError:
                time.sleep(0.2)
        assert b'"status": "ok"' in body
        assert (tmp_path / "cumapp.db").exists()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "sandbox: on" in stderr and "verification=sandbox" in stderr
    assert "Task was destroyed" not in stderr and "Traceback" not in stderr, stderr
    assert "Unclosed" not in stderr and "unclosed" not in stderr
