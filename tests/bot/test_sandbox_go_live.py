"""`cumapp` as real processes: a sandbox behind a real Telegram token says so and takes no Stars; its database then
refuses SANDBOX=false until `cumapp reset-sandbox-balances` has taken the sandbox credit back."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
from sqlalchemy import select

from core.models import LedgerEntry, User
from core.platform.db import Database
from tests.fakes.telegram_api import FakeTelegramServer

ROOT = Path(__file__).resolve().parents[2]
LIVE = {
    "SANDBOX": "false", "TEXTVERIFIED_API_KEY": "tv-test-key-0123456789", "TEXTVERIFIED_API_USERNAME": "tv-user",
    "TEXTVERIFIED_BASE_URL": "http://127.0.0.1:9", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "twilio-test-token", "TWILIO_API_BASE_URL": "http://127.0.0.1:9",
    "GROQ_API_KEY": "gsk_live_test_key", "GROQ_BASE_URL": "http://127.0.0.1:9",
}
_OURS = ("TELEGRAM", "DISCORD", "TWILIO", "GROQ", "TEXTVERIFIED", "VONAGE", "SANDBOX", "DATA_ENCRYPTION", "SIGNUP")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env.update({"HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


async def _cumapp(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


class Running:
    """`cumapp run` in the background, its log in a file, until stop()."""

    def __init__(self, cwd: Path, env: dict[str, str], port: int) -> None:
        self.cwd, self.env, self.port = cwd, env, port
        self.log = cwd / f"run-{port}.log"

    async def start(self) -> None:
        with self.log.open("w") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "run", "--no-console", cwd=self.cwd, env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        async with aiohttp.ClientSession() as client:
            for _ in range(150):
                assert self.process.returncode is None, self.log.read_text()
                try:
                    async with client.get(f"http://127.0.0.1:{self.port}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"cumapp run did not answer /healthz:\n{self.log.read_text()}")

    async def stop(self) -> str:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.log.read_text()


async def test_sandbox_with_a_real_token_then_going_live(tmp_path: Path) -> None:
    fake = FakeTelegramServer()
    await fake.start()
    port = _free_port()
    sandbox = Running(
        tmp_path, _env(port, TELEGRAM_BOT_TOKEN=fake.token, TELEGRAM_API_BASE_URL=fake.base_url), port
    )
    try:
        await sandbox.start()
        ann = fake.user(501)
        ann.send("/start")
        await fake.wait_for(
            lambda c: c.method == "sendMessage" and c.chat_id == 501 and "$5.00" in c.params.get("text", ""), 15
        )
        ann.send("/topup")
        topup = await fake.wait_for(
            lambda c: c.method == "sendMessage" and c.chat_id == 501 and "Sandbox" in c.params.get("text", ""), 15
        )
        # Simulated credit, never a Stars invoice.
        assert "Sandbox credit" in topup.params["text"] and "pay:" not in str(topup.params.get("reply_markup"))
        ann.send("/verify whatsapp")
        price = await fake.wait_for(
            lambda c: c.method == "sendMessage" and c.chat_id == 501 and "WhatsApp" in c.params.get("text", ""), 15
        )
        assert "Sandbox" in price.params["text"]
    finally:
        log = await sandbox.stop()
        await fake.stop()
    assert sandbox.process.returncode == 0, log
    assert not fake.calls_of("sendInvoice")
    warnings = [line for line in log.splitlines() if " WARNING " in line and "simulated" in line]
    assert len(warnings) == 1 and "verification, sms, ai simulated" in warnings[0], log

    # Going live on the same database: refused, in one line that names the way out.
    key_file = tmp_path / "cumapp.db.key"
    live = _env(port, **LIVE)
    if key_file.exists():  # the operator carries the sandbox's data key over
        live["DATA_ENCRYPTION_KEYS"] = key_file.read_text().strip()
    code, out, err = await _cumapp(tmp_path, live, "run", "--no-console")
    assert code == 2, err
    assert err.strip().splitlines() == [
        "cumapp: SANDBOX=false, but this database holds $5.00 of credit handed out while providers were simulated "
        "(1 account(s)); run `cumapp reset-sandbox-balances` first"
    ]

    code, out, err = await _cumapp(tmp_path, live, "reset-sandbox-balances")
    assert code == 0, err
    assert out.startswith("took back $5.00 of sandbox credit from 1 account(s)"), out
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cumapp.db'}")
    try:
        async with db.read() as session:
            user = await session.scalar(select(User))
            entries = (await session.scalars(select(LedgerEntry).where(LedgerEntry.user_id == user.id))).all()
    finally:
        await db.dispose()
    assert user is not None and user.balance_cents == 0
    assert [(e.kind, e.amount_cents) for e in entries] == [("signup_bonus", 500), ("grant", -500)]

    code, out, err = await _cumapp(tmp_path, live, "reset-sandbox-balances")
    assert code == 0 and out.startswith("took back $0.00 of sandbox credit from 0 account(s)"), err

    running = Running(tmp_path, live, port)
    try:
        await running.start()
    finally:
        log = await running.stop()
    assert running.process.returncode == 0, log
    assert "reset-sandbox-balances" not in log and "simulated" not in log, log


async def test_help_lists_the_reset_command(tmp_path: Path) -> None:
    code, out, _ = await _cumapp(tmp_path, _env(_free_port()), "--help")
    assert code == 0 and "reset-sandbox-balances" in out
