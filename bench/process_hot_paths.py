"""Benchmark: the hot paths of `cumapp run` measured from outside, as an operator gets them, against a bare baseline.

`cumapp run` runs as its own process (webhook mode, PostgreSQL: a throwaway database made here and dropped at
the end) against the fake Bot API with Telegram's flood limits (30 messages/s, about 1/s per chat), the fake
Twilio and the fake TextVerified of tests/fakes/, all in this process. Figures:

- ingestion: N signed inbound SMS with C in flight, accepted/s, every one stored and queued (rows counted);
  against a bare aiohttp endpoint in its own process that only checks the Twilio signature: the ratio;
- relay latency at a steady rate, from the POST leaving here to the fake Bot API receiving `sendMessage`;
- verification code: signed TextVerified webhook → the code's `sendMessage`;
- idle RSS of the `cumapp run` process, at start and after the load;
- two instances on the same PostgreSQL, webhooks alternating between them (a round-robin balancer): ingestion
  and relay latency again.

    TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/process_hot_paths.py
    .venv/bin/python bench/process_hot_paths.py --only one --skip codes    # parts; --help for the rest

Scale-out on a machine with fewer cores than the run has processes: `--cpu-quota 0.4` puts each `cumapp run` in
a cgroup of its own capped at 0.4 of a core (root, cgroup v1 `cpu`), so one instance and two are compared as if
each had its own core, where uncapped the second instance only takes CPU from the first, PostgreSQL and the load
client. Compare `--only both --skip relay --skip codes --cpu-quota 0.4` with the uncapped run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._process import (  # noqa: E402
    BALANCES,
    TEXTVERIFIED_SECRET,
    BareServer,
    BenchFleet,
    CpuQuota,
    closed_loop_elsewhere,
    cpu_seconds,
    pct,
    rss_mb,
)
from tests.fakes.textverified_api import FakeTextVerifiedServer  # noqa: E402
from tests.faults.fleet import create_database, drop_database  # noqa: E402

TARGETS = {"ratio": 0.5, "relay_p99_ms": 15.0, "code_p99_ms": 25.0, "rss_mb": 150.0, "scale": 1.6, "two_relay": 1.5}
SETTLE_SECONDS = 2.0  # until a burst's sends no longer count against the flood limits (1 s window, 1/s per chat)
SMS_TEXT = "Your WhatsApp code: {a}-{b}\n\nDon't share this code with others"


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 0.5), 1), "p90": round(pct(values, 0.9), 1), "p99": round(pct(values, 0.99), 1),
            "max": round(max(values), 1) if values else float("nan"), "n": len(values)}


async def _rows(fleet: BenchFleet, first: int, count: int) -> tuple[int, int]:
    """Messages stored and relays queued for SMS first..first+count-1 of this fleet's run."""
    from sqlalchemy import text

    from core.platform.db import Database

    db = Database(fleet.database_url)
    try:
        async with db.read() as session:
            messages = await session.scalar(text(
                "SELECT count(*) FROM messages WHERE provider = 'twilio' AND provider_message_id = ANY(:ids)"),
                {"ids": [f"SM{fleet.run}{i:026d}" for i in range(first, first + count)]})
            relays = await session.scalar(text(
                "SELECT count(*) FROM outbox_deliveries d JOIN messages m ON d.dedupe_key = 'sms:' || m.id || "
                ":suffix WHERE m.provider = 'twilio' AND m.provider_message_id = ANY(:ids)"),
                {"ids": [f"SM{fleet.run}{i:026d}" for i in range(first, first + count)], "suffix": ":telegram"})
    finally:
        await db.dispose()
    return int(messages or 0), int(relays or 0)


class Counter_:
    """Hands out SMS indexes, so each SMS of a fleet's run is unique."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, count: int) -> int:
        first, self.next = self.next, self.next + count
        return first


async def ingestion(fleet: BenchFleet, ids: Counter_, total: int, concurrency: int,
                    bare: BareServer | None, balance: str = "round-robin") -> dict[str, Any]:
    """One closed-loop run against the fleet (spread over its processes by `balance`) and, when given, the bare
    server."""
    assert fleet.http is not None
    first = ids.take(total)
    urls = [f"{p.url}/webhooks/twilio/sms" for p in fleet.processes]
    pids = [p.process.pid for p in fleet.processes if p.process]
    cpu = sum(cpu_seconds(pid) for pid in pids)
    ours = await closed_loop_elsewhere(urls, fleet, first, total, concurrency, balance)
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
    for offset, status in ours.by_index.items():
        fleet.posted.setdefault(first + offset, []).append(status)  # drained() waits for the accepted ones
    messages, relays = await _rows(fleet, first, total)
    result: dict[str, Any] = {
        "sent": total, "ok": ours.ok, "rate": round(ours.rate, 1), "statuses": dict(ours.statuses),
        "messages": messages, "relays": relays, "answer_ms": _ms(ours.answer_ms),
        "lost": total - min(ours.ok, messages, relays), "cpu_ms_per_sms": round(cpu * 1000 / total, 2),
    }
    if bare is not None:
        assert bare.process is not None
        cpu = cpu_seconds(bare.process.pid)
        base = await closed_loop_elsewhere([bare.url], fleet, first, total, concurrency)
        result["bare_cpu_ms"] = round((cpu_seconds(bare.process.pid) - cpu) * 1000 / total, 3)
        result["bare_rate"] = round(base.rate, 1)
        result["bare_ok"] = base.ok
        result["ratio"] = round(ours.rate / base.rate, 3) if base.rate else None
    return result


async def relay_latency(fleet: BenchFleet, ids: Counter_, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop at `rate` SMS/s (round robin over the processes): POST → the fake Bot API's sendMessage."""
    total = int(rate * seconds)
    first = ids.take(total)
    sent_at: dict[int, float] = {}
    start = time.monotonic() + 0.05
    tasks = []
    for n in range(total):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        index = first + n
        sent_at[index] = time.monotonic()
        tasks.append(asyncio.ensure_future(fleet.post_sms(index)))
    statuses = await asyncio.gather(*tasks)
    await fleet.wait_delivered(set(sent_at), within=60)
    arrived = fleet.first_deliveries()
    latencies = [(arrived[i] - at) * 1000 for i, at in sent_at.items() if i in arrived]
    summary = fleet.summary(set(sent_at))
    stored, queued, retried = await _server_side(fleet, first, total)
    return {"rate": rate, "sent": total, "statuses": {str(s): statuses.count(s) for s in set(statuses)},
            **summary, **_ms(latencies), "stored_ms": _ms(stored), "commit_to_sent_ms": _ms(queued),
            "retried": retried}


async def _server_side(fleet: BenchFleet, first: int, count: int) -> tuple[list[float], list[float], dict[str, int]]:
    """From the rows: webhook received → relay committed, and relay committed → Bot API answered."""
    from sqlalchemy import text

    from core.platform.db import Database

    db = Database(fleet.database_url)
    try:
        async with db.read() as session:
            rows = (await session.execute(text(
                "SELECT d.source_received_at, d.created_at, d.sent_at, d.attempts, d.last_error "
                "FROM outbox_deliveries d JOIN messages m "
                "ON d.dedupe_key = 'sms:' || m.id || :suffix WHERE m.provider = 'twilio' "
                "AND m.provider_message_id = ANY(:ids)"),
                {"ids": [f"SM{fleet.run}{i:026d}" for i in range(first, first + count)], "suffix": ":telegram"})).all()
    finally:
        await db.dispose()
    stored = [(c - r).total_seconds() * 1000 for r, c, _, _, _ in rows if r and c]
    queued = [(s - c).total_seconds() * 1000 for _, c, s, _, _ in rows if c and s]
    retried: dict[str, int] = {}
    for *_, attempts, error in rows:
        if attempts > 1:
            key = (error or "")[:60]
            retried[key] = retried.get(key, 0) + 1
    return stored, queued, retried


async def code_latency(fleet: BenchFleet, count: int, rate: float, warm: int) -> dict[str, Any]:
    """Verifications opened here (as the bot would), then each code's signed webhook → its sendMessage.

    The first `warm` codes warm the path (each pooled connection prepares a statement on its first use, once in
    a process's life) and are reported apart, as `cold`; the figures are the `count` codes after them."""
    from core.money import accounts
    from core.money.accounts import Contact
    from core.platform.settings import Settings
    from core.providers.verification import sign_webhook
    from core.services import build_services
    from core.verification.service import build_verification_service

    tv = fleet.textverified
    assert tv is not None and fleet.http is not None
    tv.balance = 1_000_000.0
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=fleet.database_url, http_port=0, textverified_api_key=tv.api_key,
        textverified_api_username=tv.username, textverified_base_url=tv.url,
        textverified_webhook_secret=TEXTVERIFIED_SECRET, data_encryption_keys=fleet.key,
        verification_poll_seconds=3600,
    )
    services = build_services(settings)
    verification = build_verification_service(settings, services.db, services.metrics, services.plan)
    opened = []
    try:
        for index in range(warm + count):
            chat = str(900_000 + index)
            async with services.db.transaction() as session:
                user = (await accounts.get_or_create(session, Contact("telegram", chat, chat_id=chat),
                                                     signup_bonus_cents=10_000)).user
            opened.append((await verification.start(user.id, "whatsapp", f"bench-{uuid.uuid4().hex}"), chat))
    finally:
        await verification.close()
        await services.close()
    await asyncio.sleep(2.0)  # the "number ready" screens go out first (1 per chat per second at Telegram)
    rng = random.Random(7)
    latencies: list[float] = []
    cold: list[float] = []

    async def one(item: Any, n: int, at: float) -> None:
        record, chat = item
        code = f"{rng.randrange(1_000_000):06d}"
        body = tv.webhook_payload(record.provider_verification_id or "", SMS_TEXT.format(a=code[:3], b=code[3:]),
                                  event_id=f"evt_bench_{record.id}")
        headers = {"Content-Type": "application/json", "X-Webhook-Signature": sign_webhook(TEXTVERIFIED_SECRET, body)}
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        since = len(fleet.telegram.calls)
        process = fleet.processes[n % len(fleet.processes)]
        started = time.monotonic()
        async with fleet.http.post(f"{process.url}/webhooks/textverified", data=body, headers=headers) as response:
            assert response.status == 200, response.status
        call = await fleet.telegram.wait_for(
            lambda c: c.method == "sendMessage" and str(c.params.get("chat_id")) == chat
            and code[:3] in str(c.params.get("text", "")) and code[3:] in str(c.params.get("text", "")),
            timeout=30, since=since)
        (cold if n < warm else latencies).append((call.at - started) * 1000)

    moment = time.monotonic() + 0.1
    schedule = []
    for _ in opened:
        moment += 1.0 / rate
        schedule.append(moment)
    await asyncio.gather(*(one(item, n, at) for n, (item, at) in enumerate(zip(opened, schedule, strict=True))))
    stored, queued = await _code_rows(fleet, [record.id for record, _ in opened[warm:]])
    return {"rate": rate, **_ms(latencies), "stored_ms": _ms(stored), "commit_to_sent_ms": _ms(queued),
            "cold": _ms(cold)}


async def _code_rows(fleet: BenchFleet, verification_ids: list[int]) -> tuple[list[float], list[float]]:
    """From the code messages' rows: webhook received → committed, and committed → Bot API answered."""
    from sqlalchemy import text

    from core.platform.db import Database

    db = Database(fleet.database_url)
    try:
        async with db.read() as session:
            rows = (await session.execute(text(
                "SELECT source_received_at, created_at, sent_at FROM outbox_deliveries "
                "WHERE kind = 'code' AND dedupe_key LIKE ANY(:keys)"),
                {"keys": [f"vf:{v}:sms:%" for v in verification_ids]})).all()
    finally:
        await db.dispose()
    return ([(c - r).total_seconds() * 1000 for r, c, _ in rows if r and c],
            [(s - c).total_seconds() * 1000 for _, c, s in rows if c and s])


async def _database_pids(fleet: BenchFleet) -> list[int]:
    """The PostgreSQL backends serving the fleet's database (this machine's cluster): their CPU is the
    database's share of the work."""
    from sqlalchemy import text

    from core.platform.db import Database

    db = Database(fleet.database_url)
    try:
        async with db.read() as session:
            return list(await session.scalars(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")))
    finally:
        await db.dispose()


async def drain_cost(fleet: BenchFleet, seconds: float) -> dict[str, Any]:
    """While the backlog of an ingestion burst drains at Telegram's pace: relays sent per second, and the CPU
    `cumapp run` and its database backends spend per relay sent."""
    database = await _database_pids(fleet)
    ours = [p.process.pid for p in fleet.processes if p.process]

    def cpu(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    sent, app, db, started = len(fleet.deliveries()), cpu(ours), cpu(database), time.monotonic()
    await asyncio.sleep(seconds)
    sent = len(fleet.deliveries()) - sent
    elapsed = time.monotonic() - started
    app, db = cpu(ours) - app, cpu(database) - db
    return {"seconds": round(elapsed, 1), "sent": sent, "rate": round(sent / elapsed, 1),
            "app_cpu_ms_per_relay": round(app * 1000 / sent, 2) if sent else None,
            "db_cpu_ms_per_relay": round(db * 1000 / sent, 2) if sent else None,
            "app_core_share": round(app / elapsed, 3), "db_core_share": round(db / elapsed, 3)}


async def one_fleet(admin_url: str, work: Path, args: argparse.Namespace, processes: int) -> dict[str, Any]:
    name = f"cumapp_bench_hot_{uuid.uuid4().hex[:8]}"
    url = await create_database(admin_url, name)
    result: dict[str, Any] = {"processes": processes}
    env = dict(item.split("=", 1) for item in args.env)
    try:
        async with FakeTextVerifiedServer() as tv, BenchFleet(url, work / f"x{processes}", processes=processes,
                                                             chats=args.chats, textverified=tv, env=env) as fleet:
            with contextlib.ExitStack() as stack:  # the CPU quota's cgroups go before the processes
                ids = Counter_()
                if args.cpu_quota:
                    pids = [p.process.pid for p in fleet.processes if p.process]
                    quota = stack.enter_context(CpuQuota(args.cpu_quota, pids, fleet.run, args.cpu_period_ms * 1000))
                    result["cpu_quota"] = args.cpu_quota
                    result["cpu_period_ms"] = args.cpu_period_ms
                await asyncio.sleep(args.idle)
                result["rss_idle_start_mb"] = [round(rss_mb(p.process.pid), 1) for p in fleet.processes if p.process]
                # Warm-up: connections, prepared statements, the first import of every path.
                await fleet.post_in_chat_order(list(range(ids.take(args.chats))))
                await fleet.drained(60)
                for _ in range(5):
                    await ingestion(fleet, ids, 40, 8, None)
                await fleet.drained(60)
                # The warm-up's last sends still count in the bot's flood window (a second after their answers)
                # and in their chats' (a message a second): measured at once, the first relays waited for them.
                await asyncio.sleep(SETTLE_SECONDS)
                skip = set(args.skip)
                if "relay" not in skip:
                    result["relay"] = await relay_latency(fleet, ids, args.rate, args.seconds)
                    await fleet.drained(60)
                    await asyncio.sleep(SETTLE_SECONDS)
                if "codes" not in skip and processes == 1:
                    result["codes"] = await code_latency(fleet, args.codes, args.code_rate, args.warm_codes)
                if "ingest" not in skip:
                    runs = []
                    async with BareServer() as bare:
                        for _ in range(args.repeats):
                            runs.append(await ingestion(fleet, ids, args.sms, args.concurrency, bare, args.balance))
                    result["ingestion"] = runs
                    if "drain" not in skip:
                        result["drain"] = await drain_cost(fleet, args.drain_seconds)
                    if not args.leave_backlog:  # left for a burst too large to send at 30/s within the run
                        await fleet.drained(args.sms * args.repeats / 25 + 60)
                await asyncio.sleep(args.idle)
                result["rss_idle_after_mb"] = [round(rss_mb(p.process.pid), 1) for p in fleet.processes if p.process]
                result["telegram_429"] = fleet.telegram.too_many_requests
                result["errors"] = sum(len(p.errors()) for p in fleet.processes)
                result["duplicated"] = sum(n - 1 for n in fleet.counts().values() if n > 1)
                if args.cpu_quota:
                    result["throttled_s"] = round(quota.throttled_seconds(), 1)
    finally:
        await drop_database(admin_url, name)
    return result


def _best(runs: list[dict[str, Any]], key: str) -> float:
    return max((r[key] for r in runs if r.get(key) is not None), default=float("nan"))


def report(results: dict[int, dict[str, Any]], command: str) -> str:
    one, two = results.get(1), results.get(2)
    rows = []

    def row(figure: str, target: str, measured: str, met: bool | None) -> None:
        rows.append(f"| {figure} | {target} | {measured} | {'met' if met else 'NOT met' if met is not None else '–'} |")

    quota = (one or two or {}).get("cpu_quota")
    period = (one or two or {}).get("cpu_period_ms", 100)
    capped = f", each `cumapp run` capped at {quota:g} of a core every {period} ms" if quota else ""
    if one and "ingestion" in one:
        runs = one["ingestion"]
        lost = sum(r["lost"] for r in runs)
        ratio = _best(runs, "ratio")
        # Capped, the ratio to an uncapped bare endpoint is no measure of the target: shown, not judged.
        row(f"ingestion, {runs[0]['sent']:,} signed SMS at {results['args']['concurrency']} in flight{capped}",
            f"≥ {TARGETS['ratio']} × bare, nothing lost",
            f"{_best(runs, 'rate'):,.0f}/s vs bare {_best(runs, 'bare_rate'):,.0f}/s: **{ratio:.2f}**; lost {lost}",
            None if quota else ratio >= TARGETS["ratio"] and lost == 0)
    if one and "relay" in one:
        r = one["relay"]
        row(f"relay at {r['rate']:g} SMS/s, POST → `sendMessage`", f"p99 ≤ {TARGETS['relay_p99_ms']:g} ms",
            f"p50 {r['p50']} ms, p99 {r['p99']} ms ({r['n']}/{r['sent']}, lost {r['lost']})",
            r["p99"] <= TARGETS["relay_p99_ms"] and r["lost"] == 0)
    if one and "codes" in one:
        c = one["codes"]
        row(f"verification code webhook → chat, {c['rate']:g}/s", f"p99 ≤ {TARGETS['code_p99_ms']:g} ms",
            f"p50 {c['p50']} ms, p99 {c['p99']} ms ({c['n']} codes, after {c['cold']['n']} that warmed the path: "
            f"p50 {c['cold']['p50']} ms, max {c['cold']['max']} ms)", c["p99"] <= TARGETS["code_p99_ms"])
    if one:
        worst = max(one["rss_idle_start_mb"] + one["rss_idle_after_mb"])
        row("idle RSS of `cumapp run`", f"≤ {TARGETS['rss_mb']:g} MB",
            f"{one['rss_idle_start_mb'][0]} MB at start, {one['rss_idle_after_mb'][0]} MB after the load",
            worst <= TARGETS["rss_mb"])
    if one and two and "ingestion" in one and "ingestion" in two:
        scale = _best(two["ingestion"], "rate") / _best(one["ingestion"], "rate")
        lost = sum(r["lost"] for r in two["ingestion"])
        balance = results["args"]["balance"]
        row(f"two instances, ingestion{capped}, {balance} balancing", f"≥ {TARGETS['scale']} × one instance",
            f"{_best(two['ingestion'], 'rate'):,.0f}/s: **{scale:.2f}×**; lost {lost}", scale >= TARGETS["scale"])
    if one and two and "relay" in one and "relay" in two:
        a, b = one["relay"], two["relay"]
        worst = max(b["p50"] / a["p50"], b["p99"] / a["p99"])
        row(f"two instances, relay at {b['rate']:g}/s", f"p50 and p99 ≤ {TARGETS['two_relay']} × one instance",
            f"p50 {b['p50']} ms, p99 {b['p99']} ms ({worst:.2f}×; lost {b['lost']})",
            worst <= TARGETS["two_relay"] and b["lost"] == 0)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.node()} ({os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average at the start {results['args']['load']}).",
        "",
        "```",
        command,
        "```",
        "",
        "| figure | target | measured | |",
        "|---|---|---|---|",
        *rows,
    ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("TEST_DATABASE_URL") or "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    work = Path(tempfile.mkdtemp(prefix="cumapp-bench-hot."))
    results: dict[Any, Any] = {"args": {"concurrency": args.concurrency, "load": args.load, "balance": args.balance}}
    for processes in ([1, 2] if args.only == "both" else [1] if args.only == "one" else [2]):
        results[processes] = await one_fleet(admin_url, work, args, processes)
        print(json.dumps(results[processes]), flush=True)
    print()
    command = " ".join([".venv/bin/python", "bench/process_hot_paths.py", *sys.argv[1:]])
    print(report(results, command))
    print(f"\nprocess logs: {work}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.write:
        args.write.write_text(f"# Hot paths of `cumapp run`, measured as a whole process\n\n{report(results, command)}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["one", "two", "both"], default="both", help="instances to measure")
    parser.add_argument("--skip", action="append", default=[], choices=["relay", "codes", "ingest", "drain"])
    parser.add_argument("--sms", type=int, default=1200, help="SMS per ingestion run (default 1,200)")
    parser.add_argument("--concurrency", type=int, default=48, help="requests in flight when ingesting (48)")
    parser.add_argument("--balance", choices=BALANCES, default="round-robin",
                        help="how the ingestion's requests are spread over two instances (round-robin)")
    parser.add_argument("--repeats", type=int, default=3, help="ingestion runs, each ours then bare (3)")
    parser.add_argument("--rate", type=float, default=25.0, help="SMS/s in the relay latency run (25)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the relay latency run (20 s)")
    parser.add_argument("--drain-seconds", type=float, default=15.0,
                        help="after the ingestion runs, how long the backlog's drain is measured (15 s)")
    parser.add_argument("--leave-backlog", action="store_true",
                        help="after the drain's measurement, stop without waiting for the backlog to be sent")
    parser.add_argument("--codes", type=int, default=100, help="verification codes (100)")
    parser.add_argument("--code-rate", type=float, default=5.0, help="codes per second (5)")
    parser.add_argument("--warm-codes", type=int, default=25, help="codes first sent to warm the path, apart (25)")
    parser.add_argument("--chats", type=int, default=100, help="users, one number and chat each (100)")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before each RSS reading (3)")
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the cumapp processes")
    parser.add_argument("--cpu-quota", type=float, metavar="CORES",
                        help="cap each cumapp process at this much CPU (a cgroup each; root): a core of its own each")
    parser.add_argument("--cpu-period-ms", type=int, default=100, metavar="MS",
                        help="the quota's period (100, the kernel's default; 10 makes the share a steadier core)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--write", type=Path, help="write the Markdown table here (e.g. docs/perf/process.md)")
    parsed = parser.parse_args()
    if parsed.cpu_quota and (missing := CpuQuota.available()):
        parser.error(f"--cpu-quota: {missing}")
    parsed.load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    asyncio.run(main(parsed))
