"""Slow and greedy clients cannot hold the web server: header and body deadlines, a cap per address, keep-alive.

The first test runs `cumapp run` as its own process and counts that process's file descriptors while hundreds of
connections send half a request line and stop; the others drive the same server in-process with raw sockets.
bench/slow_clients.py runs the full 3,000 (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from core.platform.db import Database
from core.services import build_services
from tests.conftest import make_settings
from webhooks.server import SERVICES, WebServer, create_app

ROOT = Path(__file__).resolve().parents[2]
HALF_REQUEST = b"GET /heal"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _healthz_ms(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200
    return (time.perf_counter() - started) * 1000


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _half_open(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(HALF_REQUEST)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts descriptors in /proc")
def test_cumapp_run_sheds_400_half_open_connections_and_keeps_answering_health(tmp_path: Path) -> None:
    port, count, sources = _free_port(), 400, [f"127.0.0.{i}" for i in range(2, 10)]  # 50 per address
    metrics_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    env.update({"HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT),
                "HTTP_HEADER_TIMEOUT_SECONDS": "2", "HTTP_MAX_CONNECTIONS_PER_CLIENT": "60",
                "METRICS_PORT": str(metrics_port)})
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run", "--no-console"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    sockets: list[socket.socket] = []
    try:
        assert _wait_for(lambda: _healthz_ms_or_none(port) is not None, 60), "cumapp run did not answer /healthz"
        time.sleep(0.5)  # let start-up settle
        baseline = _open_fds(process.pid)
        sockets = [_half_open(port, sources[i % len(sources)]) for i in range(count)]
        assert _wait_for(lambda: _open_fds(process.pid) >= baseline + count - 5, 5), (baseline, _open_fds(process.pid))
        # While every one of them is held: /healthz on a connection of its own answers at once.
        latencies = [_healthz_ms(port) for _ in range(7)]
        assert statistics.median(latencies) < 100, latencies
        # The header deadline (2 s) closes them all and gives every descriptor back.
        assert _wait_for(lambda: _open_fds(process.pid) <= baseline + 2, 8), (baseline, _open_fds(process.pid))
        assert all(_closed_by_server(sock) for sock in sockets)
        assert _healthz_ms(port) < 1000
        # METRICS_PORT: /metrics moved off the public port.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            assert b"cumapp_webhooks_total" in response.read()
        with pytest.raises(urllib.error.HTTPError) as not_here:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert not_here.value.code == 404
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        for sock in sockets:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr[-3000:]
    # One quiet line for the flood, not 400.
    assert 1 <= stderr.count("no complete request headers") <= 2, stderr[-3000:]
    assert f"/readyz, /metrics: http://127.0.0.1:{metrics_port}" in stderr


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0


def _healthz_ms_or_none(port: int) -> float | None:
    try:
        return _healthz_ms(port)
    except OSError:
        return None


# --- in-process: the same server, short limits -------------------------------------------------------------------


async def _echo(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.4)
    return web.Response(text="slow")


@pytest.fixture
async def serve(db: Database) -> AsyncIterator[Callable[..., Any]]:
    servers: list[WebServer] = []

    async def start(**limits: Any) -> WebServer:
        services = build_services(make_settings(db.url, **limits), db=db)

        def routes(app: web.Application) -> None:
            app.router.add_post("/webhooks/echo/in", _echo)
            app.router.add_get("/webhooks/echo/slow", _slow)

        server = WebServer(create_app(services, [routes]), "127.0.0.1", 0)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def _connect(server: WebServer, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One response on a kept-alive connection: its headers, then Content-Length bytes of body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return head + await reader.readexactly(length)


async def _is_closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return data == b"" or data[:12] in (b"HTTP/1.1 408", b"HTTP/1.0 408")


async def test_connections_over_the_per_address_cap_are_closed_at_once(serve: Callable[..., Any]) -> None:
    server = await serve(http_max_connections_per_client=5)
    held = [await _connect(server, "127.0.0.3") for _ in range(5)]
    for _, writer in held:
        writer.write(HALF_REQUEST)
    extra = [await _connect(server, "127.0.0.3") for _ in range(5)]
    assert all([await _is_closed(reader, 2) for reader, _ in extra])
    assert server.guard.open_connections == 5 and server.guard.refused == 5
    # Another address is not affected, and a freed slot is given again.
    reader, writer = await _connect(server, "127.0.0.4")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    held.pop()[1].close()
    await asyncio.sleep(0.1)
    reader, writer = await _connect(server, "127.0.0.3")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    for _, writer in held:
        writer.close()


async def test_a_connection_that_sends_nothing_or_half_a_request_is_closed_after_the_header_timeout(
    serve: Callable[..., Any],
) -> None:
    server = await serve(http_header_timeout_seconds=0.3, http_keepalive_seconds=60)
    silent_reader, _ = await _connect(server)
    half_reader, half_writer = await _connect(server)
    half_writer.write(HALF_REQUEST)
    started = time.monotonic()
    assert await _is_closed(silent_reader, 3) and await _is_closed(half_reader, 3)
    assert time.monotonic() - started < 2
    assert server.guard.open_connections == 0 and server.guard.closed_slow == 2


async def test_between_requests_the_header_timeout_starts_at_the_next_requests_first_byte(
    serve: Callable[..., Any],
) -> None:
    server = await serve(http_header_timeout_seconds=0.5, http_keepalive_seconds=60)
    reader, writer = await _connect(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _read_response(reader)).startswith(b"HTTP/1.1 200")
    # Idle on keep-alive longer than the header timeout: still open (keep-alive is 60 s).
    await asyncio.sleep(0.8)
    assert server.guard.open_connections == 1
    # Half of the next request, then nothing: closed by the header deadline, not kept for the keep-alive time.
    writer.write(HALF_REQUEST)
    assert await _is_closed(reader, 3)


async def test_half_a_request_pipelined_behind_a_slow_one_gets_the_header_timeout_once_that_one_ends(
    serve: Callable[..., Any],
) -> None:
    server = await serve(http_header_timeout_seconds=0.5, http_keepalive_seconds=60)
    reader, writer = await _connect(server)
    writer.write(b"GET /webhooks/echo/slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.1)
    writer.write(HALF_REQUEST)  # while the first is still being handled
    assert (await _read_response(reader)).endswith(b"slow")
    started = time.monotonic()
    assert await _is_closed(reader, 3)
    assert time.monotonic() - started < 2


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_time(serve: Callable[..., Any]) -> None:
    server = await serve(http_keepalive_seconds=0.5, http_header_timeout_seconds=30)
    reader, writer = await _connect(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _read_response(reader)).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert await _is_closed(reader, 5)
    assert 0.3 < time.monotonic() - started < 3


async def test_a_body_that_trickles_gets_408_and_the_connection_is_closed(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(http_body_timeout_seconds=0.5)
    reader, writer = await _connect(server)
    writer.write(b"POST /webhooks/echo/in HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    started = time.monotonic()
    response = await asyncio.wait_for(reader.read(), 5)  # answered, then closed
    assert response.startswith(b"HTTP/1.1 408"), response[:60]
    assert time.monotonic() - started < 4
    assert server.guard.open_connections == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("did not arrive within" in r.getMessage() for r in caplog.records)


async def test_a_body_in_time_reaches_the_handler(serve: Callable[..., Any]) -> None:
    server = await serve(http_body_timeout_seconds=2)
    reader, writer = await _connect(server)
    writer.write(b"POST /webhooks/echo/in HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n01234")
    await asyncio.sleep(0.2)
    writer.write(b"56789")
    response = await asyncio.wait_for(reader.read(), 5)
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"\r\n\r\n10")


async def test_declared_oversize_is_413_at_once_and_a_broken_chunked_body_is_400(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(http_body_timeout_seconds=1)
    reader, writer = await _connect(server)
    writer.write(b"POST /webhooks/echo/in HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nabc")
    assert _status(await asyncio.wait_for(reader.read(), 5)) == 413
    reader, writer = await _connect(server)
    # A broken chunk after the headers were handed on: llhttp stops the body without telling the reader, so the
    # body deadline answers (408) where aiohttp alone would wait for ever.
    writer.write(b"POST /webhooks/echo/in HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.sleep(0.2)
    writer.write(b"zz\r\nabc\r\n0\r\n\r\n")
    assert _status(await asyncio.wait_for(reader.read(), 5)) in (400, 408)
    reader, writer = await _connect(server)
    writer.write(b"POST /webhooks/echo/in HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello")
    assert _status(await asyncio.wait_for(reader.read(), 5)) == 400
    metrics = server.app[SERVICES].metrics.registry
    for outcome in ("too_large", "malformed"):
        assert metrics.get_sample_value("cumapp_webhooks_total", {"provider": "echo", "outcome": outcome}) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_request_aiohttp_cannot_parse_is_a_400_logged_as_a_warning(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve()
    for raw in (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"):
        reader, writer = await _connect(server)
        writer.write(raw)
        assert _status(await asyncio.wait_for(reader.read(), 5)) == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert any(r.name == "aiohttp.server" and r.levelno == logging.WARNING for r in caplog.records)
