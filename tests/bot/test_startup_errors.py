"""The common start-up failures end `cumapp` with one line naming the setting to change, a non-zero exit code and no
traceback: a port in use, a database that cannot be reached, a DATABASE_URL that does not parse."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main

PROVIDER_VARIABLES = ("TELEGRAM", "DISCORD", "TWILIO", "GROQ", "TEXTVERIFIED", "VONAGE", "SANDBOX", "METRICS")


@pytest.fixture(autouse=True)
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh folder without .env, no provider credentials, and the root logger given back as it was."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(PROVIDER_VARIABLES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HTTP_HOST", "127.0.0.1")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("cumapp: ")]
    assert len(lines) == 1, err
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_port_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/cumapp.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("HTTP_PORT", str(port))
        assert main(["run", "--no-console"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"HTTP_PORT: port {port} is already in use" in line and "set HTTP_PORT to a free port" in line


def test_a_database_that_cannot_be_reached(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    port = _closed_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://cumapp:hunter2-log-canary@127.0.0.1:{port}/cumapp")
    monkeypatch.setenv("HTTP_PORT", str(_closed_port()))
    for command in (["run", "--no-console"], ["migrate"]):
        assert main(command) == 1
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("cumapp: DATABASE_URL: cannot reach the database at postgresql+asyncpg://cumapp:***@")
        assert "hunter2" not in line and "set DATABASE_URL" in line


def test_a_database_url_that_does_not_parse(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://cumapp@db:five/cumapp")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--no-console"])
    assert exit_.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert "DATABASE_URL: postgresql+asyncpg://cumapp@db:five/cumapp is not a valid database URL" in line
