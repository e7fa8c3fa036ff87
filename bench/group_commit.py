"""Benchmark (diagnostic, in-process): the CPU of the inbound group commit alone, per SMS, on PostgreSQL.

What an operator gets is measured by bench/process_hot_paths.py; this isolates one piece of it, the transaction
InboundRelay writes for a batch of webhooks (owners, threads, messages, unread counts, API events, relays), so a
change to it can be compared with the code before it in the same minute, where the whole-process figures move
with the machine's load. Batches of 48 (the whole-process bench's webhooks in flight) to 100 numbers from one
sender, as there; the process's CPU time and the wall time per SMS, over --rounds batches after 20 that warm up.

    .venv/bin/python bench/group_commit.py                # TEST_DATABASE_URL or the local PostgreSQL
    .venv/bin/python bench/group_commit.py --profile      # and where the time goes (cProfile)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402

from core.messaging.inbound.batch import PendingInbound  # noqa: E402
from core.messaging.inbound.writer import InboundRelay  # noqa: E402
from core.platform.clock import utcnow  # noqa: E402
from core.platform.crypto import Keyring  # noqa: E402
from core.platform.db import Database  # noqa: E402
from core.platform.outbox.wake import register_waker  # noqa: E402
from core.platform.settings import Settings  # noqa: E402
from core.providers.sms import InboundSms  # noqa: E402
from tests.faults.fleet import create_database, drop_database, seed  # noqa: E402

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
SENDER = "+12025550100"
BODY = "Your WhatsApp code: 123-456\n\nDon't share this code with others"


async def main(args: argparse.Namespace) -> None:
    name = f"cumapp_bench_commit_{uuid.uuid4().hex[:8]}"
    url = await create_database(ADMIN_URL, name)
    try:
        targets = await seed(url, 100)
        db = Database(url, keyring=Keyring([Fernet.generate_key().decode()]))
        relay = InboundRelay(db, Settings(_env_file=None, database_url=url))  # type: ignore[call-arg]
        # As in `cumapp run`, this process's dispatcher sends what it enqueues (`origin`): no NOTIFY per batch.
        unregister = register_waker(lambda: None, engine=db.engine.sync_engine, origin=1)
        loop = asyncio.get_running_loop()
        sent = 0

        def batch() -> list[PendingInbound]:
            nonlocal sent
            items = []
            for n in range(sent, sent + args.batch):
                sms = InboundSms("twilio", f"SMBENCH{n:026d}", SENDER, targets[n % len(targets)][0], BODY)
                items.append(PendingInbound(sms, utcnow(), loop.create_future(), analysed=True))
            sent += args.batch
            return items

        for _ in range(20):
            await relay._store_batch(batch())
        profile = cProfile.Profile() if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profile:
            profile.enable()
        for _ in range(args.rounds):
            await relay._store_batch(batch())
        if profile:
            profile.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        count = args.rounds * args.batch
        print(f"{count} SMS in batches of {args.batch}: CPU {cpu * 1000 / count:.3f} ms per SMS, "
              f"wall {wall * 1000 / count:.3f} ms per SMS")
        if profile:
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        unregister()
        await db.dispose()
    finally:
        await drop_database(ADMIN_URL, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=150, help="measured batches (150)")
    parser.add_argument("--batch", type=int, default=48, help="SMS per batch (48)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the measured batches")
    asyncio.run(main(parser.parse_args()))
