"""The Mini App in headless Chromium (Debian's package, driven by Playwright) against `cumapp run` as its own
process, with the fake Bot API and the fake Twilio: sign-in by initData and by a one-time link, the dashboard's
balance against /balance, a verification bought with the code live and in the chat, a number bought and renewed
(paid once, Auto-renew switched), a live conversation with one SMS sent and its state changing in place, forged and
stale initData refused, two users apart, and the dashboard's first meaningful paint and bytes. With
MINIAPP_SCREENSHOTS=1 it also writes docs/miniapp/*.png.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
from cryptography.fernet import Fernet

from tests.fakes.telegram_api import FakeTelegramServer, FakeUser
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FakeTwilioServer

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "docs" / "miniapp"
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the playwright package is missing: pip install -e '.[test]'"
)
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing: apt-get install -y chromium"
)

SCRUBBED = ("TELEGRAM", "DISCORD", "TWILIO", "VONAGE", "GROQ", "TEXTVERIFIED", "SANDBOX", "DATABASE_URL",
            "DATA_ENCRYPTION", "HTTP_", "PUBLIC_BASE_URL", "METRICS_", "LOG_", "ADMIN_", "SIGNUP_")
PEER = "+14155550100"
LIGHT = {"bg_color": "#ffffff", "secondary_bg_color": "#f1f1f4", "text_color": "#000000", "hint_color": "#6d6d72",
         "link_color": "#2481cc", "button_color": "#2481cc", "button_text_color": "#ffffff",
         "destructive_text_color": "#d14e4e"}
DARK = {"bg_color": "#17212b", "secondary_bg_color": "#232e3c", "text_color": "#f5f5f5", "hint_color": "#9ba6b2",
        "link_color": "#6ab3f3", "button_color": "#5288c1", "button_text_color": "#ffffff",
        "destructive_text_color": "#ff7b7b"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_data(token: str, user_id: int, first_name: str, *, age_seconds: int = 0, forge: bool = False) -> str:
    """initData as Telegram makes it, written out here from Telegram's documentation (not our code)."""
    fields = {
        "query_id": f"AAH{user_id}", "auth_date": str(int(time.time()) - age_seconds),
        "user": json.dumps({"id": user_id, "first_name": first_name, "language_code": "en"}, separators=(",", ":")),
    }
    check = "\n".join(f"{key}={fields[key]}" for key in sorted(fields))
    secret = hmac.new(b"WebAppData", token.encode(), hashlib.sha256).digest()
    fields["hash"] = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    if forge:
        fields["user"] = fields["user"].replace(str(user_id), str(user_id + 1))  # someone else, same hash
    return urlencode(fields)


def launch_url(base: str, data: str, theme: dict[str, str] = LIGHT) -> str:
    """Where Telegram points the web view: the launch data in the fragment."""
    return (f"{base}/app#tgWebAppData={quote(data, safe='')}&tgWebAppVersion=8.0&tgWebAppPlatform=tdesktop"
            f"&tgWebAppThemeParams={quote(json.dumps(theme), safe='')}")


@dataclass
class Running:
    base: str
    telegram: FakeTelegramServer
    twilio: FakeTwilioServer
    log: Path


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    telegram = await FakeTelegramServer().start()
    twilio = FakeTwilioServer()
    await twilio.__aenter__()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
    env.update({
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cumapp.db'}", "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port), "PUBLIC_BASE_URL": base, "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_API_BASE_URL": telegram.base_url, "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN, "TWILIO_API_BASE_URL": twilio.base_url,
        "DATA_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "SIGNUP_BONUS_CENTS": "2000",
        "SANDBOX_CODE_DELAY_SECONDS": "0.5", "LOG_FORMAT": "json", "PTB_TIMEDELTA": "true",
        "PYTHONPATH": str(ROOT),
    })
    log = tmp_path / "cumapp.log"
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "run", "--no-console", cwd=tmp_path, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while "started" not in log.read_text(errors="replace"):
                assert process.returncode is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                await asyncio.sleep(0.05)
            async with http.get(f"{base}/readyz") as ready:
                assert ready.status == 200
        yield Running(base, telegram, twilio, log)
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 20)
        await twilio.__aexit__(None, None, None)
        await telegram.stop()


async def chat(running: Running, user: FakeUser, text: str, pattern: str, timeout: float = 8) -> str:
    """Send `text` in the Telegram chat; the first message of the bot to this user matching `pattern`."""
    since = len(running.telegram.calls)
    running.telegram.queue_update(user.send(text))
    call = await running.telegram.wait_for(
        lambda c: c.method == "sendMessage" and str(c.params.get("chat_id")) == str(user.id)
        and re.search(pattern, str(c.params.get("text", ""))) is not None, timeout=timeout, since=since,
    )
    return str(call.params["text"]) + "\n" + json.dumps(call.params.get("reply_markup") or {})


async def post_twilio(http: aiohttp.ClientSession, hook: Any) -> None:
    async with http.post(hook.url, data=hook.body, headers={
            **hook.headers, "Content-Type": "application/x-www-form-urlencoded"}) as response:
        assert response.status == 200, await response.text()


async def test_miniapp_journeys(running: Running) -> None:
    telegram, twilio, base = running.telegram, running.twilio, running.base
    alice, bob = telegram.user(7001, "Alice"), telegram.user(7002, "Bob")
    balance = await chat(running, alice, "/balance", r"Available:")
    chat_available = re.search(r"Available: (\$[0-9,]+\.[0-9]{2})", balance)
    assert chat_available is not None, balance

    async with playwright_api.async_playwright() as pw, aiohttp.ClientSession() as http:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 360, "height": 740})
            await context.route("https://telegram.org/**", lambda route: route.abort())
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            # Dashboard: the chat's /balance.
            await page.goto(launch_url(base, init_data(telegram.token, alice.id, "Alice")))
            available = page.locator("#available")
            await playwright_api.expect(available).to_have_text(f"Available: {chat_available.group(1)}")
            await playwright_api.expect(page.get_by_role("link", name="Balance")).to_have_attribute(
                "aria-current", "page")

            # Verify: search "whats", Confirm; the code appears live, and in the chat.
            await page.get_by_role("link", name="Verify").click()
            await page.get_by_label("Search services").fill("whats")
            await page.get_by_role("button", name=re.compile("^WhatsApp")).click()
            await page.get_by_role("button", name="Confirm").click()
            code_node = page.locator("#verifications .code").first
            await playwright_api.expect(code_node).to_have_text(re.compile(r"^[0-9]{4,8}$"), timeout=6000)
            code = await code_node.inner_text()
            await playwright_api.expect(page.get_by_role("button", name="Copy")).to_be_visible()
            await telegram.wait_for(lambda c: c.method in ("sendMessage", "editMessageText")
                                    and str(c.params.get("chat_id")) == str(alice.id)
                                    and code in str(c.params.get("text", "")).replace("-", ""), timeout=6)

            # Numbers: Buy, Confirm.
            await page.get_by_role("link", name="Numbers").click()
            await page.get_by_role("button", name="Buy").click()
            await page.get_by_role("button", name="Confirm").click()
            bought = page.locator("#numbers li[data-nid] strong")
            await playwright_api.expect(bought).to_have_count(1)
            number = await bought.inner_text()
            assert len(twilio.requests_to("IncomingPhoneNumbers.json", "POST")) == 1

            # Renew now, Confirm (the price shown): the month is paid once; Auto-renew is a switch that sticks.
            rental = page.locator("#numbers li[data-nid]")
            await playwright_api.expect(rental.locator(".renews")).to_have_text(re.compile(r"^Renews \d{4}-\d\d-\d\d$"))
            first_date = await rental.locator(".renews").inner_text()
            read_available = "fetch('/api/v1/account').then(r => r.json()).then(a => a.available_cents)"
            price = await page.evaluate("fetch('/api/v1/numbers').then(r => r.json())"
                                        ".then(b => b.data[0].monthly_price_cents)")
            before = await page.evaluate(read_available)
            await page.get_by_role("button", name="Renew now").click()
            await playwright_api.expect(rental).to_contain_text(f"${price // 100}.{price % 100:02d}")
            await page.get_by_role("button", name="Confirm").click()
            await playwright_api.expect(page.get_by_role("button", name="Renew now")).to_have_count(0)
            await playwright_api.expect(rental.locator(".renews")).not_to_have_text(first_date)
            assert await page.evaluate(read_available) == before - price
            switch = page.get_by_role("switch", name="Auto-renew")
            await playwright_api.expect(switch).to_be_checked()
            await switch.uncheck()
            await playwright_api.expect(rental.locator(".renews")).to_contain_text("Auto-renew is off")
            assert await page.evaluate("fetch('/api/v1/numbers').then(r => r.json()).then(b => b.data[0].auto_renew)"
                                       ) is False
            await switch.check()
            await playwright_api.expect(rental.locator(".renews")).to_have_text(re.compile(r"^Renews "))

            # Inbox: an inbound SMS appears live, in the list and then in the open conversation.
            await page.get_by_role("link", name="Inbox").click()
            await playwright_api.expect(page.locator("#conversations")).to_contain_text("No texts yet")
            await post_twilio(http, twilio.signed_inbound(f"{base}/webhooks/twilio/sms", from_=PEER, to=number,
                                                          body="Hi from the web"))
            await page.get_by_role("button", name=re.compile(re.escape(PEER))).click()
            messages = page.locator("#messages")
            await playwright_api.expect(messages).to_contain_text("Hi from the web")
            await post_twilio(http, twilio.signed_inbound(f"{base}/webhooks/twilio/sms", from_=PEER, to=number,
                                                          body="Are you there?"))
            await playwright_api.expect(messages.locator("li.inbound")).to_have_count(2)

            # Type and Send: one SMS out; its state then changes in place.
            await page.get_by_label("Message").fill("Yes, replying from the app")
            await page.get_by_role("button", name="Send").click()
            outbound = messages.locator("li.outbound")
            await playwright_api.expect(outbound).to_have_count(1)
            sent = twilio.requests_to("Messages.json", "POST")
            assert len(sent) == 1 and sent[0].form["Body"] == "Yes, replying from the app"
            assert sent[0].form["To"] == PEER and sent[0].form["From"] == number
            item = await outbound.element_handle()
            sid = next(iter(twilio.messages))
            callback = twilio.messages[sid]["_status_callback"]
            await playwright_api.expect(outbound.locator(".word")).to_have_text(re.compile("^(sending|sent)$"))
            await post_twilio(http, twilio.signed_status(callback, message_sid=sid, status="delivered"))
            await playwright_api.expect(outbound.locator(".word")).to_have_text("delivered")
            assert await item.evaluate("node => node.isConnected"), "the message was redrawn, not changed in place"
            assert errors == [], errors

            if os.environ.get("MINIAPP_SCREENSHOTS"):
                await screenshots(browser, base, telegram.token, alice.id, number)

            # Forged and 25-hour-old initData: 401, no cookie, no data.
            for data in (init_data(telegram.token, alice.id, "Alice", forge=True),
                         init_data(telegram.token, alice.id, "Alice", age_seconds=25 * 3600)):
                stranger = await browser.new_context()
                await stranger.route("https://telegram.org/**", lambda route: route.abort())
                refused = await stranger.request.post(f"{base}/app/session", data={"init_data": data})
                assert refused.status == 401 and "set-cookie" not in refused.headers
                assert (await stranger.request.get(f"{base}/api/v1/account")).status == 401
                view = await stranger.new_page()
                await view.goto(launch_url(base, data))
                await playwright_api.expect(view.get_by_role("heading", name="Sign in")).to_be_visible()
                assert await view.locator("#available").inner_text() == "Available: $—.——"  # no data came
                await stranger.close()

            # Two users: Bob sees his own account only; Alice's verification is not found for him.
            await chat(running, bob, "/balance", r"Available: \$20\.00")  # he opens the app from the chat
            other = await browser.new_context(viewport={"width": 360, "height": 740})
            await other.route("https://telegram.org/**", lambda route: route.abort())
            bob_page = await other.new_page()
            await bob_page.goto(launch_url(base, init_data(telegram.token, bob.id, "Bob")))
            await playwright_api.expect(bob_page.locator("#available")).to_have_text("Available: $20.00")
            # Bob's first visit (an empty browser cache) is the one measured: the dashboard's first meaningful
            # paint, when the balance and activity are drawn, and every byte the page fetched.
            # A promise the page resolves, not wait_for_function: Playwright evals that predicate's text inside the
            # page, which the Mini App's Content-Security-Policy (no 'unsafe-eval') rightly refuses.
            await asyncio.wait_for(bob_page.evaluate("""() => new Promise(resolve => {
                const ready = () => performance.getEntriesByName('dashboard-ready').length > 0
                    ? resolve(true) : requestAnimationFrame(ready);
                ready();
            })"""), timeout=10)
            paint_ms, transferred = await bob_page.evaluate("""() => [
                performance.getEntriesByName('dashboard-ready')[0].startTime,
                [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
                    .reduce((sum, e) => sum + (e.transferSize || 0), 0)]""")
            print(f"\nMini App dashboard: first meaningful paint {paint_ms:.0f} ms, {transferred / 1024:.1f} KB")
            assert paint_ms <= 1000 and transferred <= 200 * 1024, (paint_ms, transferred)
            await playwright_api.expect(bob_page.locator("#activity")).to_contain_text("Nothing yet")
            alice_verification = await page.evaluate(
                "fetch('/api/v1/verifications').then(r => r.json()).then(b => b.data[0].id)")
            assert (await other.request.get(f"{base}/api/v1/verifications/{alice_verification}")).status == 404
            bob_numbers = await (await other.request.get(f"{base}/api/v1/numbers")).json()
            assert bob_numbers == {"data": []}
            await other.close()

            # Anywhere but Telegram over https, /app sends a sign-in link: it works once.
            answer = await chat(running, alice, "/app", r"/app\?login=")
            link = re.search(r"http://[^\s\"<]+/app\?login=[A-Za-z0-9_-]+", answer)
            assert link is not None, answer
            for attempt in range(2):
                visitor = await browser.new_context()
                view = await visitor.new_page()
                await view.goto(link.group())
                target = view.locator("#available") if attempt == 0 else view.get_by_role("heading", name="Sign in")
                await playwright_api.expect(target).to_be_visible()
                if attempt == 0:
                    await playwright_api.expect(target).not_to_have_text("Available: $—.——")
                    assert "login=" not in view.url
                await visitor.close()
        finally:
            await browser.close()


async def screenshots(browser: Any, base: str, token: str, user_id: int, number: str) -> None:
    """docs/miniapp/<page>-<theme>.png: every page at 360 px in Telegram's light and dark themes."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, theme, scheme in (("light", LIGHT, "light"), ("dark", DARK, "dark")):
        context = await browser.new_context(viewport={"width": 360, "height": 640}, color_scheme=scheme,
                                            device_scale_factor=1)
        await context.route("https://telegram.org/**", lambda route: route.abort())
        page = await context.new_page()
        await page.goto(launch_url(base, init_data(token, user_id, "Alice"), theme))
        await playwright_api.expect(page.locator("#activity li").first).not_to_have_text("Loading…")
        await page.screenshot(path=str(SHOTS / f"dashboard-{name}.png"))
        await page.get_by_role("link", name="Verify").click()
        await page.get_by_label("Search services").fill("whats")
        await page.get_by_role("button", name=re.compile("^WhatsApp")).click()
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(SHOTS / f"verify-{name}.png"))
        await page.get_by_role("button", name="Cancel").first.click()
        await page.get_by_role("link", name="Numbers").click()
        await playwright_api.expect(page.locator("#numbers li[data-nid]")).to_have_count(1)
        await page.screenshot(path=str(SHOTS / f"numbers-{name}.png"))
        await page.get_by_role("link", name="Inbox").click()
        await playwright_api.expect(page.locator("#conversations li button")).to_have_count(1)
        await page.screenshot(path=str(SHOTS / f"inbox-{name}.png"))
        await page.locator("#conversations li button").first.click()
        await playwright_api.expect(page.locator("#messages li.outbound")).to_have_count(1)
        await page.screenshot(path=str(SHOTS / f"conversation-{name}.png"))
        await context.close()
