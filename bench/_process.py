"""Shared pieces of the whole-process benchmarks: `cumapp run` fleets against the fakes, load, the bare baseline.

The fleet itself is tests/faults/fleet.py's (the fault tests and bench/faults.py use it too); here it talks to
the fake Bot API directly rather than through a fault proxy, with Telegram's flood limits on, and it can also
front a fake TextVerified. The bare baseline is a separate process: aiohttp checking the Twilio signature and
answering the same TwiML, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("PTB_TIMEDELTA", "true")

from core.messaging.gateway import TWILIO_SMS_PATH  # noqa: E402
from tests.fakes.textverified_api import FakeTextVerifiedServer  # noqa: E402
from tests.fakes.twilio_api import DEFAULT_AUTH_TOKEN, SignedWebhook, build_inbound_webhook  # noqa: E402
from tests.faults.cluster import free_port  # noqa: E402
from tests.faults.fleet import PUBLIC_BASE_URL, SENDER, CumappProcess, Fleet  # noqa: E402

_HERE = str(Path(__file__).resolve())
TEXTVERIFIED_SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQ="


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far: the cost of work, whatever else the machine runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CGROUP_CPU = Path("/sys/fs/cgroup/cpu")


class CpuQuota:
    """Each given process in a cgroup (v1 `cpu` controller) of its own, capped at `cores` of CPU time.

    So a run can give every `cumapp run` the same share of the machine, as if each had a core of its own: on a
    machine with fewer cores than processes (two instances, PostgreSQL and the load client on two here),
    whether instances scale out is otherwise hidden by their fight for the same cores."""

    PERIOD_US = 100_000  # the kernel's default period

    def __init__(self, cores: float, pids: list[int], tag: str, period_us: int = PERIOD_US) -> None:
        self.cores = cores
        self.pids = pids
        # Within each period a process runs until its share is spent, then waits for the next period: with 100
        # ms, 0.4 of a core is 40 ms of work then a 60 ms freeze, every request held meanwhile. A shorter period
        # makes the same share a steadier, slower core.
        self.period_us = period_us
        self.groups = [CGROUP_CPU / f"cumapp_bench_{tag}_{n}" for n in range(len(pids))]

    @staticmethod
    def available() -> str | None:
        """None when quotas can be set here; otherwise what is missing."""
        if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
            return f"no cgroup v1 cpu controller at {CGROUP_CPU}"
        if not os.access(CGROUP_CPU, os.W_OK):
            return f"{CGROUP_CPU} is not writable (needs root)"
        return None

    def __enter__(self) -> CpuQuota:
        for group, pid in zip(self.groups, self.pids, strict=True):
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(self.period_us))
            (group / "cpu.cfs_quota_us").write_text(str(int(self.cores * self.period_us)))
            (group / "cgroup.procs").write_text(str(pid))  # its threads, and those it starts later, go too
        return self

    def throttled_seconds(self) -> float:
        """How long the processes were held back by their quota so far, in all."""
        total = 0
        for group in self.groups:
            for line in (group / "cpu.stat").read_text().splitlines():
                if line.startswith("throttled_time "):
                    total += int(line.split()[1])
        return total / 1e9

    def __exit__(self, *exc: object) -> None:
        for group in self.groups:
            try:
                for pid in (group / "cgroup.procs").read_text().split():
                    (CGROUP_CPU / "cgroup.procs").write_text(pid)
                group.rmdir()
            except OSError:
                pass  # the process is gone and the group with it, or it goes when the process does


class BenchFleet(Fleet):
    """Fleet with the fake Bot API's flood limits on and reached directly; optionally a fake TextVerified."""

    def __init__(self, database_url: str, workdir: Path, *, processes: int, chats: int,
                 textverified: FakeTextVerifiedServer | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(database_url, workdir, processes=processes, chats=chats)
        self.telegram.enforce_limits = True  # 30 messages/s per bot, about 1/s per chat, as Telegram
        self.textverified = textverified
        self.extra_env = dict(env or {})

    def _env(self, process: CumappProcess) -> dict[str, str]:
        env = super()._env(process)
        # Straight to the fake: a proxy hop in this process would be measured as Telegram's time.
        env["TELEGRAM_API_BASE_URL"] = self.telegram.base_url
        if self.textverified is not None:
            env.update({
                "TEXTVERIFIED_API_KEY": self.textverified.api_key,
                "TEXTVERIFIED_API_USERNAME": self.textverified.username,
                "TEXTVERIFIED_BASE_URL": self.textverified.url,
                "TEXTVERIFIED_WEBHOOK_SECRET": TEXTVERIFIED_SECRET,
            })
        env.update(self.extra_env)
        return env

    def signed(self, index: int) -> SignedWebhook:
        """The signed inbound SMS `index`, as Fleet.post_sms sends it (tagged, to number index % chats)."""
        return build_inbound_webhook(
            DEFAULT_AUTH_TOKEN, f"{PUBLIC_BASE_URL}{TWILIO_SMS_PATH}", from_=SENDER,
            to=self.targets[index % len(self.targets)][0], body=f"hello {self.tag(index)}",
            message_sid=f"SM{self.run}{index:026d}",
        )

    def first_deliveries(self) -> dict[int, float]:
        """SMS index -> when the fake Bot API first accepted its sendMessage (time.monotonic())."""
        first: dict[int, float] = {}
        for index, _chat, at in self.deliveries():
            first.setdefault(index, at)
        return first

    async def drained(self, within: float = 180.0) -> bool:
        """Until every SMS posted so far and answered 200 reached its chat."""
        accepted = {index for index, statuses in self.posted.items() if 200 in statuses}
        return await self.wait_delivered(accepted, within) is not None


@dataclass
class LoadResult:
    sent: int
    ok: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    by_index: dict[int, int] = field(default_factory=dict)
    answer_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


BALANCES = ("round-robin", "least-outstanding")


async def closed_loop(http: aiohttp.ClientSession, urls: list[str], hooks: list[SignedWebhook],
                      concurrency: int, balance: str = "round-robin") -> LoadResult:
    """POST every hook with `concurrency` requests in flight. `balance` picks the URL as a load balancer in
    front of several instances would: round robin (hook i to urls[i % len(urls)]), or least outstanding
    requests (the URL with the fewest in flight, the lowest index on a tie: HAProxy's `leastconn`, nginx's
    `least_conn`, an AWS ALB's "least outstanding requests")."""
    if balance not in BALANCES:
        raise ValueError(f"balance must be one of {BALANCES}")
    queue = iter(enumerate(hooks))
    result = LoadResult(sent=len(hooks), ok=0, seconds=0.0)
    in_flight = [0] * len(urls)

    def pick(index: int) -> int:
        if balance == "round-robin":
            return index % len(urls)
        return min(range(len(urls)), key=in_flight.__getitem__)

    async def worker() -> None:
        for index, hook in queue:
            started = time.monotonic()
            target = pick(index)
            in_flight[target] += 1
            try:
                async with http.post(urls[target], data=hook.params, headers=hook.headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            finally:
                in_flight[target] -= 1
            result.answer_ms.append((time.monotonic() - started) * 1000)
            result.statuses[status] += 1
            result.by_index[index] = status
            if status == 200:
                result.ok += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - started
    return result


async def closed_loop_elsewhere(urls: list[str], fleet: BenchFleet, first: int, total: int,
                                concurrency: int, balance: str = "round-robin") -> LoadResult:
    """closed_loop in a child process, so the load client does not share this process (and the fake Bot API's
    event loop) with anything: the same client for our endpoint and the bare one."""
    job = {"urls": urls, "run": fleet.run, "targets": [number for number, _ in fleet.targets], "first": first,
           "total": total, "concurrency": concurrency, "balance": balance}
    child = await asyncio.create_subprocess_exec(
        sys.executable, _HERE, "--load", cwd=str(ROOT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate(json.dumps(job).encode())
    data = json.loads(out.decode().strip().splitlines()[-1])
    result = LoadResult(sent=data["sent"], ok=data["ok"], seconds=data["seconds"], answer_ms=data["answer_ms"])
    result.statuses.update({int(k): v for k, v in data["statuses"].items()})
    result.by_index = {int(k): v for k, v in data["by_index"].items()}
    return result


async def _load(job: dict[str, Any]) -> None:
    targets, run = job["targets"], job["run"]
    hooks = [
        build_inbound_webhook(
            DEFAULT_AUTH_TOKEN, f"{PUBLIC_BASE_URL}{TWILIO_SMS_PATH}", from_=SENDER, to=targets[i % len(targets)],
            body=f"hello fault-{run}-{i:06d}", message_sid=f"SM{run}{i:026d}",
        )
        for i in range(job["first"], job["first"] + job["total"])
    ]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as http:
        result = await closed_loop(http, job["urls"], hooks, job["concurrency"], job["balance"])
    print(json.dumps({"sent": result.sent, "ok": result.ok, "seconds": result.seconds,
                      "statuses": dict(result.statuses), "answer_ms": result.answer_ms,
                      "by_index": result.by_index}), flush=True)


# --- the bare baseline ------------------------------------------------------------------------------------------


def _bare_app() -> Any:
    from aiohttp import web

    from core.providers.sms import validate_twilio_signature
    from webhooks.twilio import EMPTY_TWIML

    async def sms(request: web.Request) -> web.Response:
        form = await request.post()
        url = f"{PUBLIC_BASE_URL}{request.path_qs}"
        if not validate_twilio_signature(DEFAULT_AUTH_TOKEN, url, form, request.headers.get("X-Twilio-Signature")):
            raise web.HTTPForbidden(text="invalid signature")
        return web.Response(text=EMPTY_TWIML, content_type="text/xml", charset="utf-8")

    app = web.Application()
    app.router.add_post(TWILIO_SMS_PATH, sms)
    return app


class BareServer:
    """A bare aiohttp endpoint in its own process: the Twilio signature check and an empty TwiML answer."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{TWILIO_SMS_PATH}"

    async def __aenter__(self) -> BareServer:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, _HERE, "--bare-port", str(self.port), cwd=str(ROOT),
            stdin=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/") as response:
                        await response.read()
                        return self
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        raise TimeoutError("the bare server did not start")

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


def _serve_bare(port: int) -> None:
    from aiohttp import web

    web.run_app(_bare_app(), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the bare baseline server")
    parser.add_argument("--bare-port", type=int)
    parser.add_argument("--load", action="store_true", help="run one closed-loop job read as JSON from stdin")
    parsed = parser.parse_args()
    if parsed.load:
        asyncio.run(_load(json.loads(sys.stdin.readline())))
    else:
        _serve_bare(parsed.bare_port)
