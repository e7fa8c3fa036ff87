"""Benchmark: 3,000 connections that send half a request line and stop, against `cumapp run` in its own process.

For each scenario the bench starts `cumapp run --no-console` (sandbox, SQLite, 127.0.0.1) with the settings as
shipped unless told otherwise, then:
* counts the server's open file descriptors (/proc/<pid>/fd) and times /healthz at rest;
* opens the half-open connections (each sends "GET /heal" and nothing more) from loopback addresses 127.0.0.2…;
* while they are held, times /healthz (a new connection each time, from 127.0.0.1) and notes the peak of
  descriptors and the server's memory;
* waits until the server has closed them all and its descriptors are back where they started.

Scenarios: `spread` puts the connections on enough addresses to stay under HTTP_MAX_CONNECTIONS_PER_CLIENT, so the
header deadline (HTTP_HEADER_TIMEOUT_SECONDS) is what frees them; `one-address` sends them all from one address,
so the per-address cap refuses all but the first ones at once.

    .venv/bin/python bench/slow_clients.py --connections 3000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HALF_REQUEST = b"GET /heal"


@dataclass
class Result:
    scenario: str
    connections: int
    addresses: int
    header_timeout_s: float
    cap_per_address: int
    open_seconds: float
    fds_before: int
    fds_peak: int
    fds_held: int
    closed_by_server: int
    rss_mib_before: float
    rss_mib_peak: float
    healthz_idle_p50_ms: float
    healthz_held_p50_ms: float
    healthz_held_p99_ms: float
    healthz_held_max_ms: float
    healthz_slowest_probe: int
    drained_after_s: float
    fds_after: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _healthz_ms(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            sys.exit(f"ulimit -n hard limit {hard} is below the {needed} descriptors this run needs")


def _start(port: int, folder: str, env_overrides: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM", "DISCORD", "TWILIO", "GROQ"))}
    env.update({"HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port), "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"})
    env.update(env_overrides)
    log = Path(folder) / "cumapp.log"
    with log.open("wb") as stderr:  # a file, not a pipe nobody reads: a full pipe would stall the server
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run", "--no-console"], cwd=folder, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            _healthz_ms(port)
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    sys.exit(f"cumapp run did not answer /healthz:\n{log.read_text(errors='replace')[-3000:]}")


def _closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of the client's sockets have seen the server close (EOF or reset), without waiting on each."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in sockets}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    closed = 0
    for fd, _ in poller.poll(1000):
        try:
            closed += by_fd[fd].recv(1) == b""
        except (ConnectionResetError, BlockingIOError):
            closed += 1
    return closed


def _settle(pid: int, seconds: float = 1.0) -> int:
    """The descriptor count once it has stopped moving."""
    last, stable_since = _fds(pid), time.monotonic()
    while time.monotonic() - stable_since < seconds:
        time.sleep(0.1)
        now = _fds(pid)
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


def run(scenario: str, connections: int, addresses: int, env_overrides: dict[str, str]) -> Result:
    from core.platform.settings import Settings

    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env_overrides.items()})  # type: ignore[arg-type]
    # getattr: the same bench runs against a checkout from before these settings existed (for the "before" row).
    header_timeout = float(getattr(settings, "http_header_timeout_seconds", 0))
    cap = int(getattr(settings, "http_max_connections_per_client", 0))
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        process = _start(port, folder, env_overrides)
        sockets: list[socket.socket] = []
        try:
            time.sleep(1.0)
            fds_before, rss_before = _settle(process.pid), _rss_mib(process.pid)
            idle = [_healthz_ms(port) for _ in range(20)]
            fds_before = _settle(process.pid)
            sources = [f"127.0.0.{2 + i}" for i in range(addresses)]
            started = time.perf_counter()
            for i in range(connections):
                sock = socket.socket()
                sock.bind((sources[i % len(sources)], 0))
                sock.connect(("127.0.0.1", port))
                try:
                    sock.sendall(HALF_REQUEST)
                except OSError:
                    pass  # refused at once (per-address cap): counted below
                sockets.append(sock)
            opened = time.perf_counter() - started
            all_open_at = time.monotonic()
            peak, rss_peak = _fds(process.pid), _rss_mib(process.pid)
            # Until the server has accepted the last of them (its descriptors stop moving): then they are "held".
            steady = _settle(process.pid, 0.3)
            peak = max(peak, steady)
            held: list[float] = []
            for _ in range(100):
                held.append(_healthz_ms(port))
                peak, rss_peak = max(peak, _fds(process.pid)), max(rss_peak, _rss_mib(process.pid))
                time.sleep(0.02)
            deadline = all_open_at + header_timeout + 30
            while _fds(process.pid) > fds_before + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            drained = time.monotonic() - all_open_at
            fds_after = _settle(process.pid)
            closed = _closed_by_server(sockets)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        finally:
            for sock in sockets:
                sock.close()
            if process.poll() is None:
                process.kill()
                process.wait()
    return Result(
        scenario=scenario, connections=connections, addresses=addresses,
        header_timeout_s=header_timeout, cap_per_address=cap,
        open_seconds=round(opened, 2), fds_before=fds_before, fds_peak=peak, fds_held=steady,
        closed_by_server=closed, rss_mib_before=round(rss_before, 1), rss_mib_peak=round(rss_peak, 1),
        healthz_idle_p50_ms=round(statistics.median(idle), 2), healthz_held_p50_ms=round(statistics.median(held), 2),
        healthz_held_p99_ms=round(_percentile(held, 0.99), 2), healthz_held_max_ms=round(max(held), 2),
        healthz_slowest_probe=held.index(max(held)),
        drained_after_s=round(drained, 2), fds_after=fds_after,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--scenarios", default="spread,one-address")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for cumapp run, e.g. --set HTTP_HEADER_TIMEOUT_SECONDS=5 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from core.platform.settings import Settings

    overrides = dict(item.split("=", 1) for item in args.set)
    shipped = Settings(_env_file=None, **{k.lower(): v for k, v in overrides.items()})  # type: ignore[arg-type]
    cap = int(getattr(shipped, "http_max_connections_per_client", 0))
    _raise_fd_limit(args.connections * 2 + 512)  # the client's sockets and the server's, which inherits the limit
    print(f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"ulimit -n {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, settings {overrides or 'as shipped'}")
    results = []
    for scenario in args.scenarios.split(","):
        # Spread: enough addresses to stay under the cap, so that only the header deadline frees the connections.
        addresses = 1 if scenario == "one-address" else max(1, -(-args.connections // max(cap - 8, 1)) if cap else 1)
        result = run(scenario, args.connections, addresses, overrides)
        results.append(result)
        print(
            f"{scenario:12} {result.connections} half-open from {result.addresses} address(es) in "
            f"{result.open_seconds} s | server fds {result.fds_before} → peak {result.fds_peak}, held "
            f"{result.fds_held} → {result.fds_after} after, RSS {result.rss_mib_before} → {result.rss_mib_peak} MiB | "
            f"/healthz idle p50 {result.healthz_idle_p50_ms} ms, held p50 {result.healthz_held_p50_ms} / p99 "
            f"{result.healthz_held_p99_ms} / max {result.healthz_held_max_ms} ms (probe {result.healthz_slowest_probe} of 100) | all closed by the server after "
            f"{result.drained_after_s} s ({result.closed_by_server}/{result.connections} saw the close)"
        )
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
