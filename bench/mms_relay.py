"""MMS relay speed of `cumapp run` as its own process: a signed Twilio MMS webhook carrying a 1 MB picture → the
process fetches it from the fake Twilio (basic auth, then the redirect to storage) → `sendPhoto` (multipart upload)
reaches the fake Bot API. Target: at most 300 ms on top of the download.

In the same run, two baselines against the same fakes: the bare download of the same picture (aiohttp here, with
the account's credentials, following the redirect) and the relay of a plain text SMS. Rounds run one at a time,
each to its own chat, so Telegram's per-chat flood limit (on in the fake) never waits. Times are from the POST
leaving here to the fake Bot API receiving the call (its arrival time, same clock).

    .venv/bin/python bench/mms_relay.py [--rounds 20] [--mb 1]

Writes docs/perf/mms_relay.md. Needs PostgreSQL (TEST_DATABASE_URL, else postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._process import BenchFleet, pct  # noqa: E402
from core.messaging.gateway import TWILIO_SMS_PATH  # noqa: E402
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, build_inbound_webhook  # noqa: E402
from tests.faults.fleet import PUBLIC_BASE_URL, SENDER, create_database, drop_database  # noqa: E402

TARGET_MS = 300.0
REPORT = ROOT / "docs" / "perf" / "mms_relay.md"


async def _download(http: aiohttp.ClientSession, url: str) -> float:
    token = base64.b64encode(f"{DEFAULT_ACCOUNT_SID}:{DEFAULT_AUTH_TOKEN}".encode()).decode()
    started = time.monotonic()
    async with http.get(url, headers={"Authorization": f"Basic {token}"}) as response:
        assert response.status == 200, response.status
        await response.read()
    return time.monotonic() - started


async def _relay(fleet: BenchFleet, index: int, method: str, media: list[tuple[str, str]]) -> float:
    """POST one signed webhook to the process; seconds until the fake Bot API received `method` for it."""
    assert fleet.http is not None
    number, chat = fleet.targets[index % len(fleet.targets)]
    tag = fleet.tag(index)
    hook = build_inbound_webhook(
        DEFAULT_AUTH_TOKEN, f"{PUBLIC_BASE_URL}{TWILIO_SMS_PATH}", from_=SENDER, to=number, body=f"bench {tag}",
        media=media, message_sid=f"{'MM' if media else 'SM'}{fleet.run}{index:026d}",
    )
    since = len(fleet.telegram.calls)
    started = time.monotonic()
    async with fleet.http.post(f"{fleet.processes[0].url}{TWILIO_SMS_PATH}", data=hook.params,
                               headers=hook.headers) as response:
        assert response.status == 200, await response.text()
    field = "caption" if method == "sendPhoto" else "text"
    call = await fleet.telegram.wait_for(
        lambda c: c.method == method and c.ok and tag in str(c.params.get(field, "")), timeout=30, since=since
    )
    return call.at - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = os.environ.get("TEST_DATABASE_URL") or "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    work = Path(tempfile.mkdtemp(prefix="cumapp-bench-mms."))
    name = f"cumapp_bench_mms_{os.getpid()}"
    url = await create_database(admin_url, name)
    picture = b"\xff\xd8\xff\xe0" + os.urandom(int(args.mb * 1024 * 1024) - 4)
    try:
        async with BenchFleet(url, work, processes=1, chats=args.rounds * 2 + 2) as fleet:
            media_url = fleet.twilio.add_media(picture, "image/jpeg")
            local_url = fleet.twilio.base_url + media_url.removeprefix("https://api.twilio.com")
            assert fleet.http is not None
            # Warm-up: connections, caches and the first upload of each kind.
            await _relay(fleet, 0, "sendMessage", [])
            await _relay(fleet, 1, "sendPhoto", [(media_url, "image/jpeg")])
            downloads, texts, mms = [], [], []
            for round_ in range(args.rounds):
                downloads.append(await _download(fleet.http, local_url))
                texts.append(await _relay(fleet, 2 + 2 * round_, "sendMessage", []))
                mms.append(await _relay(fleet, 3 + 2 * round_, "sendPhoto", [(media_url, "image/jpeg")]))
            uploads = [c for c in fleet.telegram.calls if c.method == "sendPhoto" and c.ok]
            assert all(c.files["photo"].content == picture for c in uploads), "the picture changed on the way"
    finally:
        await drop_database(admin_url, name)
    ms = {key: [v * 1000 for v in values] for key, values in
          (("download", downloads), ("text", texts), ("mms", mms))}
    extra = [m - statistics.median(ms["download"]) for m in ms["mms"]]
    return {"rounds": args.rounds, "mb": args.mb, "ms": ms, "extra": extra}


def report(result: dict[str, Any], command: str) -> str:
    ms, extra = result["ms"], result["extra"]

    def line(label: str, values: list[float]) -> str:
        return f"| {label} | {pct(values, 0.5):.0f} | {pct(values, 0.95):.0f} | {max(values):.0f} |"

    verdict = "met" if pct(extra, 0.95) <= TARGET_MS else "NOT met"
    return "\n".join([
        "# MMS relay", "",
        f"`{command}` — {result['rounds']} rounds, a {result['mb']:g} MB picture, one `cumapp run` process on "
        "PostgreSQL, fake Twilio and fake Bot API (flood limits on) in the benchmark's process.", "",
        "| what | p50 ms | p95 ms | max ms |", "|---|---|---|---|",
        line("bare download of the picture (basic auth + redirect), no CumApp", ms["download"]),
        line("text SMS: webhook POST → `sendMessage`", ms["text"]),
        line("MMS: webhook POST → `sendPhoto` (fetch + multipart upload)", ms["mms"]),
        line("MMS on top of the download (MMS − median download)", extra), "",
        f"Target: the MMS relay at most {TARGET_MS:.0f} ms on top of the download (p95): **{verdict}**. "
        f"Ratio MMS / text relay at p50: {pct(ms['mms'], 0.5) / max(pct(ms['text'], 0.5), 0.001):.2f}.", "",
        "The MMS path differs from the text path by the fetch at send time (the picture is not stored: the outbox "
        "fetches it with the account's credentials when it sends, so a failed fetch is retried like a failed send) "
        "and the upload of the bytes to Telegram.", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--mb", type=float, default=1.0)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    command = "python bench/mms_relay.py" + (f" --rounds {args.rounds}" if args.rounds != 20 else "") + (
        f" --mb {args.mb:g}" if args.mb != 1.0 else "")
    text = report(result, command)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
