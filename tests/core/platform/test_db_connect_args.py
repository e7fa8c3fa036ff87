"""The PostgreSQL connection options: no TLS attempt on loopback, the URL (or PGSSLMODE) decides anywhere else."""

from __future__ import annotations

import pytest

from core.platform.db import STATEMENT_CACHE_SIZE, asyncpg_connect_args


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_skips_tls(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    args = asyncpg_connect_args(f"postgresql+asyncpg://cumapp@{host}:5432/cumapp")
    assert args == {"prepared_statement_cache_size": STATEMENT_CACHE_SIZE, "ssl": False}


def test_a_unix_socket_skips_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    assert asyncpg_connect_args("postgresql+asyncpg://cumapp@/cumapp?host=/var/run/postgresql")["ssl"] is False


@pytest.mark.parametrize("url", [
    "postgresql+asyncpg://cumapp@db.example.com/cumapp",  # asyncpg's default ("prefer") stays
    "postgresql+asyncpg://cumapp@db.example.com/cumapp?ssl=require",
    "postgresql+asyncpg://cumapp@127.0.0.1/cumapp?ssl=require",  # the URL asked for it: loopback too
])
def test_elsewhere_the_url_decides(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    assert "ssl" not in asyncpg_connect_args(url)


def test_pgsslmode_is_respected_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLMODE", "require")
    assert "ssl" not in asyncpg_connect_args("postgresql+asyncpg://cumapp@127.0.0.1/cumapp")
