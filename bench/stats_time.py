"""Benchmark: how long /stats takes on PostgreSQL with 100,000 messages and 10,000 verifications.

A fresh database is filled with INSERT … SELECT generate_series: 10,000 users, 100,000 SMS in and out spread over
the last 30 days, 10,000 verifications (about 70% with a code, with code-to-chat latencies), and the holds and
ledger entries (captures and some refunds) that go with them. Then, for each period (24 h, 7 days, 30 days):
* `stats.collect` alone: the database aggregates;
* `stats.render_charts` alone: the four PNG charts;
* the whole `/stats` command through the router, as an admin: account load, aggregates and charts, ready to send
  (the chat platform's upload is not included). Target: p95 ≤ 300 ms. Nothing is cached between runs: every run
  queries the database and draws the charts afresh ("cold"); only the process's one-time costs (importing
  Pillow, loading the font) are paid before the first run, as a running bot pays them at its first /stats.

    TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/stats_time.py --runs 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_SECONDS = 0.3
SEED = [
    # 10,000 users, created over 60 days, seen over the last 30.
    """INSERT INTO users (role, status, tier, locale, balance_cents, held_cents, ai_opt_in, auto_analyze,
           announcements, created_at, last_seen_at)
       SELECT 'user', 'active', 'free', 'en', 0, 0, false, false, true,
              now() - random() * interval '60 days', now() - random() * interval '30 days'
       FROM generate_series(1, :users)""",
    # 100,000 SMS, a third inbound.
    """INSERT INTO messages (user_id, direction, provider, provider_message_id, from_e164, to_e164, body, media_urls,
           status, segments, encoding, cost_cents, price_cents, created_at, updated_at)
       SELECT 1 + (i % :users), CASE WHEN i % 3 = 0 THEN 'inbound' ELSE 'outbound' END, 'twilio', 'SM' || i,
              '+15550000001', '+15550000002', 'bench message ' || i, '[]', 'delivered', 1, 'GSM-7',
              (i % 3), 5, now() - random() * interval '30 days', now()
       FROM generate_series(1, :messages) AS i""",
    # 10,000 verifications: 70% got a code 0.2-5 s to chat, the rest cancelled, expired, failed or still open.
    """INSERT INTO verifications (user_id, provider, provider_verification_id, service, service_name, state,
           price_cents, provider_cost_cents, idempotency_key, created_at, updated_at, code_received_at,
           code_delivered_at)
       SELECT v.user_id, 'textverified', 'tv' || v.i, 'whatsapp', 'WhatsApp', v.state, 130, 100, 'bench-v' || v.i,
              v.created, v.created,
              CASE WHEN v.state IN ('completed', 'code_received') THEN v.created + interval '40 seconds' END,
              CASE WHEN v.state IN ('completed', 'code_received')
                   THEN v.created + interval '40 seconds' + (0.2 + random() * 4.8) * interval '1 second' END
       FROM (SELECT i, 1 + (i % :users) AS user_id, now() - random() * interval '30 days' AS created,
                    (ARRAY['completed','completed','completed','completed','completed','code_received',
                           'completed','cancelled','expired','failed'])[1 + (i % 10)] AS state
             FROM generate_series(1, :verifications) AS i) AS v""",
    # Their holds, captured for the ones with a code; one in twenty captured holds refunded.
    """INSERT INTO holds (user_id, amount_cents, state, purpose, reference, idempotency_key, created_at, settled_at)
       SELECT user_id, price_cents, 'captured', 'verification', 'verification:' || id, 'bench-h' || id,
              created_at, code_received_at
       FROM verifications WHERE state IN ('completed', 'code_received')""",
    """INSERT INTO ledger_entries (user_id, kind, amount_cents, held_delta_cents, idempotency_key, hold_id,
           created_at)
       SELECT user_id, 'capture', -amount_cents, -amount_cents, 'bench-c' || id, id, settled_at FROM holds""",
    """INSERT INTO ledger_entries (user_id, kind, amount_cents, held_delta_cents, idempotency_key, hold_id,
           created_at)
       SELECT user_id, 'refund', amount_cents, 0, 'bench-r' || id, id, settled_at + interval '1 hour'
       FROM holds WHERE id % 20 = 0""",
    "ANALYZE",
]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import func, select, text
    from sqlalchemy.ext.asyncio import create_async_engine

    import bot.handlers.stats  # noqa: F401  (registers /stats)
    from bot.handlers import router
    from core.admin import stats
    from core.models import Base, Message, Verification
    from core.money.accounts import Contact
    from core.platform.db import Database
    from core.platform.settings import Settings
    from core.services import build_services

    name = f"cumapp_bench_{uuid.uuid4().hex[:8]}"
    admin_engine = create_async_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    async with admin_engine.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{args.pg_url.rpartition('/')[0]}/{name}"
    db = Database(url)
    results: dict[str, Any] = {"periods": {}}
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        started = time.monotonic()
        params = {"users": args.users, "messages": args.messages, "verifications": args.verifications}
        async with db.engine.connect() as connection:
            for statement in SEED:
                await connection.execute(text(statement), params if ":" in statement else {})
            await connection.commit()
        results["seed_seconds"] = time.monotonic() - started
        async with db.read() as session:
            results["messages"] = await session.scalar(select(func.count()).select_from(Message))
            results["verifications"] = await session.scalar(select(func.count()).select_from(Verification))

        settings = Settings(_env_file=None, database_url=url, sandbox="true", admin_telegram_ids="999")  # type: ignore[call-arg]
        services = build_services(settings, db=db)
        admin = Contact(platform="telegram", platform_user_id="999", chat_id="999", display_name="Bench admin")
        await router.handle_command(services, admin, "start")  # the admin's account exists, as in real use
        stats.render_charts((await stats.collect(db, "7d"))[1])  # one-time: Pillow's import and the font
        for period in stats.PERIODS:
            collect_times, chart_times, command_times = [], [], []
            for _ in range(args.runs):
                began = time.perf_counter()
                summary, series = await stats.collect(db, period)
                collect_times.append(time.perf_counter() - began)
                began = time.perf_counter()
                charts = stats.render_charts(series)
                chart_times.append(time.perf_counter() - began)
                began = time.perf_counter()
                screens = await router.handle_command(services, admin, "stats", period)
                command_times.append(time.perf_counter() - began)
            assert len(screens) == 5 and all(s.photo for s in screens[1:]), "the command did not answer with charts"
            results["periods"][period] = {
                "collect_ms": [statistics.median(collect_times) * 1000, _pct(collect_times, 0.95) * 1000],
                "charts_ms": [statistics.median(chart_times) * 1000, _pct(chart_times, 0.95) * 1000],
                "command_ms": [statistics.median(command_times) * 1000, _pct(command_times, 0.95) * 1000],
                "png_bytes": sum(len(png) for _, png in charts),
                "sms_in_out": [summary.sms_in, summary.sms_out],
                "verifications": summary.verifications_total,
            }
    finally:
        await db.dispose()
        async with admin_engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin_engine.dispose()
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| period | aggregates p50 / p95 (ms) | 4 charts p50 / p95 (ms) | whole /stats p50 / p95 (ms) | "
        "SMS in / out counted | verifications counted |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for period, r in results["periods"].items():
        lines.append(
            f"| {period} | {r['collect_ms'][0]:.0f} / {r['collect_ms'][1]:.0f} | {r['charts_ms'][0]:.0f} / "
            f"{r['charts_ms'][1]:.0f} | {r['command_ms'][0]:.0f} / {r['command_ms'][1]:.0f} | "
            f"{r['sms_in_out'][0]:,} / {r['sms_in_out'][1]:,} | {r['verifications']:,} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", default=os.environ.get("TEST_DATABASE_URL"),
                        help="PostgreSQL server URL; a database is created and dropped")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--verifications", type=int, default=10_000)
    arguments = parser.parse_args()
    if not arguments.pg_url:
        parser.error("needs PostgreSQL: --pg-url or TEST_DATABASE_URL")
    outcome = asyncio.run(main(arguments))
    print(json.dumps(outcome, indent=1))
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; "
          f"{outcome['messages']:,} messages, {outcome['verifications']:,} verifications "
          f"(seeded in {outcome['seed_seconds']:.1f} s)")
    print(table(outcome))
    worst = max(r["command_ms"][1] for r in outcome["periods"].values())
    print(f"target: /stats p95 ≤ {TARGET_SECONDS * 1000:.0f} ms — worst p95 {worst:.0f} ms: "
          f"{'met' if worst <= TARGET_SECONDS * 1000 else 'NOT met'}")
