"""The terminal chat's numbered choices: a number belongs to the message that shows it, keeps its meaning until that
message is replaced, and one from a replaced message is named, never pressed."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.console import ConsoleFrontEnd, divert_logs, log_file_for
from core.platform.outbox import OutButton, OutgoingMessage
from core.services import Services
from core.verification.service import build_verification_service


async def _say(console: ConsoleFrontEnd, out: io.StringIO, line: str) -> str:
    start = len(out.getvalue())
    await console.handle_line(line)
    return out.getvalue()[start:]


@pytest.fixture
async def with_verification(services: Services) -> AsyncIterator[Services]:
    services.verification = build_verification_service(
        services.settings, services.db, services.metrics, services.plan
    )
    yield services
    await services.verification.close()


async def test_numbers_stay_with_their_message(with_verification: Services) -> None:
    services = with_verification
    out = io.StringIO()
    console = ConsoleFrontEnd(services, out=out)
    await _say(console, out, "/start")
    menu = dict(console.chat.choices)
    assert sorted(menu) == list(range(1, len(menu) + 1))

    # A message that arrives by itself (a code) gets the next numbers; the menu's mean what they meant.
    code = OutgoingMessage(text="🔑 Code 123456", buttons=((OutButton("✔️ Done", action="noop"),),))
    message_id = await console.sender.send("local", code)
    done = max(menu) + 1
    assert console.chat.choices[done].label == "✔️ Done"
    assert {n: b for n, b in console.chat.choices.items() if n in menu} == menu
    # That message edited in place: its old number goes, the new buttons come after.
    edited = OutgoingMessage(
        text="✅ Code 123456", buttons=((OutButton("♻️ Same number again", action="noop"),),),
        edit_message_id=message_id,
    )
    await console.sender.send("local", edited)
    assert done not in console.chat.choices and console.chat.choices[done + 1].label == "♻️ Same number again"
    stale = await _say(console, out, str(done))
    assert f"[{done}] was “✔️ Done” on an earlier message (“🔑 Code 123456”)" in stale
    assert "changed since, so nothing was pressed" in stale and f"{done}!" not in stale

    # A screen without buttons clears every earlier number: typing one names it and presses nothing.
    await _say(console, out, "/nope")
    assert console.chat.choices == {}
    first = menu[1].label
    named = await _say(console, out, "1")
    assert f"[1] was “{first}”" in named and "There are no choices on screen now" in named
    assert "[99]" in await _say(console, out, "99")
    # …unless asked for by name: `1!` presses the earlier message's [1].
    assert menu[1].action == "cmd:verify"
    assert "WhatsApp" in await _say(console, out, "1!")
    assert "changed since" in await _say(console, out, f"{done}!")

    # A question waiting for text takes a typed number as its answer.
    services_menu = await _say(console, out, "/verify")
    search = next(n for n, b in console.chat.choices.items() if b.action == "vfq")
    assert "Search" in services_menu
    await _say(console, out, str(search))
    answer = await _say(console, out, "1")
    assert "was “" not in answer and "There is no" not in answer


def test_log_lines_go_to_the_file_beside_the_database(tmp_path: Path) -> None:
    path = log_file_for(f"sqlite+aiosqlite:///{tmp_path}/cumapp.db")
    assert path == tmp_path / "cumapp.log"
    root = logging.getLogger()
    saved = list(root.handlers)
    terminal = logging.StreamHandler()  # stderr, as configure_logging sets it up
    root.addHandler(terminal)
    try:
        divert_logs(path)
        assert terminal not in root.handlers
        logging.getLogger("cumapp.test").warning("a line for the file")
    finally:
        for handler in list(root.handlers):
            if handler not in saved:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved
        logging.captureWarnings(False)
    assert "a line for the file" in path.read_text()
