"""Proves tests/fakes/telegram_api.py speaks the Bot API well enough to drive the real python-telegram-bot."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import html
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, web
from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    Update,
)
from telegram.constants import ParseMode
from telegram.error import BadRequest, Conflict, Forbidden, NetworkError, RetryAfter
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ExtBot,
    MessageHandler,
    PreCheckoutQueryHandler,
    filters,
)
from telegram.helpers import mention_html

from tests.fakes.telegram_api import EntityParseError, FakeTelegramServer, parse_html

KEYBOARD = InlineKeyboardMarkup([[InlineKeyboardButton("Go", callback_data="go")]])


@pytest.fixture(autouse=True)
def _timedelta_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without this, every RetryAfter built by python-telegram-bot 22 emits a PTBDeprecationWarning.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer() as server:
        yield server


def make_bot(fake: FakeTelegramServer, **kwargs: object) -> ExtBot:
    urls = {"base_url": fake.base_url, "base_file_url": fake.file_base_url}
    return ExtBot(fake.token, **urls, **kwargs)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def polling(app: Application) -> AsyncIterator[Application]:
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        try:
            yield app
        finally:
            await app.updater.stop()
            await app.stop()


async def test_start_command_and_button_press_through_polling(fake: FakeTelegramServer) -> None:
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.effective_user is not None
        name = html.escape(update.effective_user.first_name)
        await update.message.reply_text(
            f"Hello, <b>{name}</b>! 1 &lt; 2", parse_mode=ParseMode.HTML, reply_markup=KEYBOARD
        )

    async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        await query.answer("Done")
        data = html.escape(query.data or "")
        await query.edit_message_text(f"Pressed <i>{data}</i>", parse_mode=ParseMode.HTML)

    app = ApplicationBuilder().token(fake.token).base_url(fake.base_url).build()
    app.add_handler(CommandHandler("start", start))
    app.add_handler(CallbackQueryHandler(on_button))

    async with polling(app):
        assert app.bot.username == fake.bot_username  # getMe answered during initialize()
        ann = fake.user(42, first_name="Ann <&>")
        ann.send("/start")
        await fake.wait_for("sendMessage")
        message = fake.last_message(42)
        assert message["text"] == "Hello, Ann <&>! 1 < 2"
        assert message["entities"] == [{"offset": 7, "length": 7, "type": "bold"}]
        assert message["reply_markup"] == {"inline_keyboard": [[{"text": "Go", "callback_data": "go"}]]}
        assert fake.calls_of("sendMessage")[0].params["chat_id"] == 42

        with pytest.raises(ValueError, match="no button"):
            ann.press(message, "nope")
        ann.press(message, "go")
        edit = await fake.wait_for("editMessageText")
        assert edit.ok

        # /cmd@botname in a group reaches the same handler.
        since = len(fake.calls)
        ann.send_in_group(f"/start@{fake.bot_username}", -1001234)
        group_call = await fake.wait_for(lambda c: c.method == "sendMessage", since=since)
        assert group_call.params["chat_id"] == -1001234

    answer = fake.calls_of("answerCallbackQuery")[0]
    assert answer.ok and answer.params["text"] == "Done"
    current = fake.messages_by_id(42)[message["message_id"]]
    assert current["text"] == "Pressed go"
    assert "reply_markup" not in current  # an edit without reply_markup drops the keyboard, as on Telegram
    assert "edit_date" in current
    assert fake.sent_messages(42)[0]["text"] == "Hello, Ann <&>! 1 < 2"  # sent_messages keeps the original


async def test_html_validation_rejects_what_telegram_rejects(fake: FakeTelegramServer) -> None:
    async with make_bot(fake) as bot:
        # python-telegram-bot strips "Bad Request: " and str.capitalize()s the rest, lowering later capitals.
        with pytest.raises(BadRequest, match='Can\'t parse entities: can\'t find end tag .* start tag "b"'):
            await bot.send_message(42, "<b>unclosed", parse_mode=ParseMode.HTML)
        with pytest.raises(BadRequest, match='unsupported start tag "" at byte offset 18'):
            await bot.send_message(42, "<b>Tom</b> says 1 < 2", parse_mode=ParseMode.HTML)
        with pytest.raises(BadRequest, match="character '&' at byte offset 7"):  # stricter than Telegram
            await bot.send_message(42, "<b>Tom & Jerry</b>", parse_mode=ParseMode.HTML)

        hostile = "Tom & Jerry <script>alert('x')</script> \"quoted\""
        text = f"<b>{html.escape(hostile)}</b> from {mention_html(7, 'Bob <Admin>')}"
        sent = await bot.send_message(42, text, parse_mode=ParseMode.HTML)
        assert sent.text == f"{hostile} from Bob <Admin>"
        assert sent.entities[0].type == "bold"
        assert sent.entities[1].type == "text_mention"

    rejected = [c for c in fake.calls_of("sendMessage") if not c.ok]
    assert [c.status for c in rejected] == [400, 400, 400]
    assert rejected[0].error is not None
    assert rejected[0].error.startswith("Bad Request: can't parse entities:")


@pytest.mark.parametrize(
    "text",
    ["<b>x", "a < b", "AT&T", "<br>", "<b><i>x</b></i>", "</b>", "<span>x</span>", '<a href="x>y</a>'],
)
def test_parse_html_rejects(text: str) -> None:
    with pytest.raises(EntityParseError):
        parse_html(text)


def test_parse_html_entities_use_utf16_offsets() -> None:
    plain, entities = parse_html(
        '😀 <b>bold</b> <a href="https://e.com/?a=1&amp;b=2">link</a> <blockquote expandable>q</blockquote>'
        ' <pre><code class="language-python">x</code></pre> &#x27;&#128512;&quot;'
    )
    assert plain == "😀 bold link q x '😀\""
    assert entities == [
        {"offset": 3, "length": 4, "type": "bold"},
        {"offset": 8, "length": 4, "type": "text_link", "url": "https://e.com/?a=1&b=2"},
        {"offset": 13, "length": 1, "type": "expandable_blockquote"},
        {"offset": 15, "length": 1, "type": "pre", "language": "python"},
    ]
    assert parse_html("AT&T", strict_ampersand=False) == ("AT&T", [])


async def test_edit_identical_text_is_not_modified(fake: FakeTelegramServer) -> None:
    async with make_bot(fake) as bot:
        sent = await bot.send_message(42, "same", reply_markup=KEYBOARD)
        with pytest.raises(BadRequest, match="Message is not modified"):
            await bot.edit_message_text("same", chat_id=42, message_id=sent.message_id, reply_markup=KEYBOARD)
        await bot.edit_message_reply_markup(chat_id=42, message_id=sent.message_id)
        assert "reply_markup" not in fake.messages_by_id(42)[sent.message_id]
        assert await bot.delete_message(42, sent.message_id)
        with pytest.raises(BadRequest, match="Message to delete not found"):
            await bot.delete_message(42, sent.message_id)
        with pytest.raises(BadRequest, match="Message to be replied not found"):
            await bot.send_message(42, "re", reply_to_message_id=sent.message_id)

        ann = fake.user(42, first_name="Ann", username="ann")
        question = await bot.send_message(42, "Your phone number?")
        answer = Update.de_json(ann.reply(question.to_dict(), "+15550100"), bot)
        assert answer.message is not None and answer.message.reply_to_message is not None
        assert answer.message.reply_to_message.message_id == question.message_id
        assert answer.message.message_id == question.message_id + 1  # one id sequence per private chat
        threaded = await bot.send_message(42, "Thanks", reply_to_message_id=answer.message.message_id)
        assert threaded.reply_to_message is not None and threaded.reply_to_message.text == "+15550100"
        chat = await bot.get_chat(42)
        assert (chat.type, chat.username) == ("private", "ann")
        with pytest.raises(BadRequest, match="Chat not found"):
            await bot.get_chat(999)


async def test_429_raises_retry_after(fake: FakeTelegramServer) -> None:
    fake.fail_next("sendMessage", status=429, retry_after=3)
    async with make_bot(fake) as bot:
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(42, "hi")
        assert caught.value.retry_after == dtm.timedelta(seconds=3)
        await bot.send_message(42, "hi again")  # the injected failure is used up
        fake.fail_next("*", status=500)
        with pytest.raises(NetworkError, match="Internal Server Error"):
            await bot.get_me()
        fake.fail_for(0.3, status=429, methods=["sendMessage"], retry_after=None)
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(42, "during the flood wait")
        assert caught.value.retry_after == dtm.timedelta(seconds=1)  # remaining window, rounded up
        await bot.get_me()  # other methods are unaffected
        await asyncio.sleep(0.35)
        await bot.send_message(42, "after it")
    assert fake.too_many_requests == 2
    assert [c.status for c in fake.calls_of("sendMessage")] == [429, 200, 429, 200]


async def test_aio_rate_limiter_retries_through_429(fake: FakeTelegramServer) -> None:
    fake.fail_next("sendMessage", status=429, retry_after=1)
    async with make_bot(fake, rate_limiter=AIORateLimiter(max_retries=2)) as bot:
        started = time.monotonic()
        message = await bot.send_message(42, "eventually")
        elapsed = time.monotonic() - started
    assert message.text == "eventually"
    assert elapsed >= 1.0  # waits retry_after + 0.1 s before the retry
    assert [c.status for c in fake.calls_of("sendMessage")] == [429, 200]


async def test_blocked_user_is_forbidden(fake: FakeTelegramServer) -> None:
    fake.block(7)
    async with make_bot(fake) as bot:
        with pytest.raises(Forbidden, match="bot was blocked by the user"):
            await bot.send_message(7, "hello?")
        fake.unblock(7)
        await bot.send_message(7, "hello!")


async def test_enforced_limits_per_chat_and_global() -> None:
    async with FakeTelegramServer(enforce_limits=True, global_rate=5) as fake:
        async with make_bot(fake) as bot:
            for _ in range(3):  # burst allowance
                await bot.send_message(1, "x")
            with pytest.raises(RetryAfter):
                await bot.send_message(1, "x")
            await bot.send_message(2, "x")
            await bot.send_message(3, "x")
            with pytest.raises(RetryAfter):  # 6th send within one second overall
                await bot.send_message(4, "x")
            # Paid broadcasts get a far higher overall ceiling.
            await bot.send_message(4, "x", allow_paid_broadcast=True)
    assert fake.too_many_requests == 2


async def test_enforced_global_limit_defaults_to_30_per_second() -> None:
    async with FakeTelegramServer(enforce_limits=True) as fake:
        async with make_bot(fake) as bot:
            results = await asyncio.gather(
                *(bot.send_message(1000 + i, "news") for i in range(35)), return_exceptions=True
            )
    assert sum(isinstance(r, RetryAfter) for r in results) == 5
    assert fake.too_many_requests == 5
    assert len(fake.sent_messages()) == 30


async def test_document_upload_and_download(fake: FakeTelegramServer) -> None:
    async with make_bot(fake) as bot:
        sent = await bot.send_document(
            42, document=b"a,b\n1,2\n", filename="report.csv", caption="<i>report</i>", parse_mode="HTML"
        )
        assert sent.document is not None and sent.document.file_name == "report.csv"
        assert sent.caption == "report"
        file = await bot.get_file(sent.document.file_id)
        assert await file.download_as_bytearray() == bytearray(b"a,b\n1,2\n")
        photo = await bot.send_photo(42, photo=b"\x89PNG fake", caption="pic")
        assert photo.photo[-1].width == 800
    call = fake.calls_of("sendDocument")[0]
    assert call.files["document"].filename == "report.csv"
    assert call.params["document"] == b"a,b\n1,2\n"
    assert call.params["caption"] == "<i>report</i>"
    assert [m.get("caption") for m in fake.sent_messages(42)] == ["report", "pic"]


async def test_star_payment_flow(fake: FakeTelegramServer) -> None:
    async def precheckout(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.pre_checkout_query is not None
        await update.pre_checkout_query.answer(ok=True)

    async def paid(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.message.successful_payment is not None
        payment = update.message.successful_payment
        await context.bot.refund_star_payment(update.message.chat_id, payment.telegram_payment_charge_id)

    app = ApplicationBuilder().token(fake.token).base_url(fake.base_url).build()
    app.add_handler(PreCheckoutQueryHandler(precheckout))
    app.add_handler(MessageHandler(filters.SUCCESSFUL_PAYMENT, paid))
    async with polling(app):
        await app.bot.send_invoice(42, "Credits", "10 credits", "order-1", "XTR", [LabeledPrice("10", 10)])
        assert fake.last_message(42)["invoice"]["total_amount"] == 10
        with pytest.raises(BadRequest, match="Stars_invoice_invalid"):
            await app.bot.send_invoice(
                42, "Credits", "x", "order-2", "XTR", [LabeledPrice("a", 1), LabeledPrice("b", 2)]
            )
        _, payment = await fake.user(42).pay("order-1", 10)
        assert payment is not None
        refund = await fake.wait_for("refundStarPayment")
    assert refund.ok
    charge_id = payment["message"]["successful_payment"]["telegram_payment_charge_id"]
    assert fake.charges[charge_id]["refunded"] is True
    assert fake.invoices[0]["payload"] == "order-1"


async def test_commands_webhook_and_wire_format(fake: FakeTelegramServer) -> None:
    received: list[tuple[dict, str | None]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((await request.json(), request.headers.get("X-Telegram-Bot-Api-Secret-Token")))
        return web.Response()

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with make_bot(fake) as bot:
            await bot.set_my_commands([("start", "Start"), ("help", "Help")], language_code="en")
            assert [c.command for c in await bot.get_my_commands(language_code="en")] == ["start", "help"]
            assert await bot.get_my_commands() == ()
            with pytest.raises(BadRequest, match="Bot_command_invalid"):
                await bot.set_my_commands([("Start", "bad")])

            await bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token="s3cret")
            with pytest.raises(Conflict):
                await bot.get_updates()
            update = fake.user(9, username="nine").send("/start@cumapp_test_bot ref")
            assert (await bot.get_webhook_info()).pending_update_count == 1
            assert await fake.deliver_webhook() == [200]
            assert received == [(update, "s3cret")]
            parsed = Update.de_json(update, bot)
            assert parsed.message is not None
            assert parsed.message.entities[0].length == len("/start@cumapp_test_bot")
            await bot.delete_webhook()

        # Raw wire format: long poll wakes as soon as an update is queued; offset confirms.
        async with ClientSession() as http:
            url = f"{fake.base_url}{fake.token}"
            asyncio.get_running_loop().call_later(0.1, fake.user(5).send, "hi")
            started = time.monotonic()
            async with http.post(f"{url}/getUpdates", data={"timeout": "5"}) as response:
                body = await response.json()
            assert time.monotonic() - started < 1.0
            first = body["result"][-1]["update_id"]
            async with http.post(f"{url}/getUpdates", json={"offset": first + 1, "timeout": 0}) as response:
                assert (await response.json()) == {"ok": True, "result": []}
            form = {"x": '{"a": 1}', "text": "123"}
            async with http.post(f"{url}/someFutureMethod", data=form) as response:
                assert (await response.json()) == {"ok": True, "result": True}
            assert fake.calls_of("someFutureMethod")[0].params == {"x": {"a": 1}, "text": "123"}
            async with http.post(f"{fake.base_url}wrong:token/getMe") as response:
                assert response.status == 401
    finally:
        await runner.cleanup()
