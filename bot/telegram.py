"""The Telegram front end: turns updates into handler calls and renders Screens; polling or webhook mode."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import uuid
from typing import Any

from aiohttp import web
from telegram import (
    BotCommand,
    BotCommandScopeChat,
    BotCommandScopeDefault,
    CopyTextButton,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaPhoto,
    LabeledPrice,
    MenuButtonWebApp,
    Message,
    Update,
    WebAppInfo,
)
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    PreCheckoutQueryHandler,
    TypeHandler,
    filters,
)

from bot.handlers import router, subscribe, topup
from bot.handlers.registry import load_flows
from bot.handlers.screens import Button, Screen, SentRef
from bot.render import plain_text as _plain
from bot.telegram_transport import AiohttpRequest, BudgetRateLimiter
from core.money import subscriptions
from core.money.accounts import Contact
from core.platform import updates
from core.platform.i18n import t
from core.platform.leader import Leadership
from core.platform.outbox import DeliveryError, OutgoingMessage
from core.platform.pacing import BotBudget
from core.services import Services

log = logging.getLogger(__name__)

PLATFORM = "telegram"
MAX_TEXT = 4096
WEBHOOK_PATH = "/webhooks/telegram"
SLOW_ANSWER_SECONDS = 0.8  # after this, a button press is answered empty and the work goes on
PLACEHOLDER_SECONDS = 1.2  # after this, a command gets a placeholder message that the answer then replaces


def keyboard(rows: list[list[Button]]) -> InlineKeyboardMarkup | None:
    """Inline buttons: callback data, links or copy-to-clipboard."""
    if not rows:
        return None
    markup: list[list[InlineKeyboardButton]] = []
    for row in rows:
        line = []
        for button in row:
            if button.url and button.web_app:
                line.append(InlineKeyboardButton(button.label, web_app=WebAppInfo(button.url)))
            elif button.url:
                line.append(InlineKeyboardButton(button.label, url=button.url))
            elif button.copy_text:
                line.append(InlineKeyboardButton(button.label, copy_text=CopyTextButton(button.copy_text[:256])))
            else:
                line.append(InlineKeyboardButton(button.label, callback_data=button.action or "noop"))
        if line:
            markup.append(line)
    return InlineKeyboardMarkup(markup) if markup else None


def split_html(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split long HTML at line breaks, never inside a tag or an entity, closing and reopening open tags."""
    if len(text) <= limit:
        return [text]
    import re

    parts: list[str] = []
    tokens = re.split(r"(<[^>]+>|&[#a-zA-Z0-9]+;|\n)", text)
    current, open_tags = "", []  # type: ignore[var-annotated]
    for token in tokens:
        if not token:
            continue
        reopen = "".join(f"<{tag}>" for tag in open_tags)
        closing = "".join(f"</{tag.split()[0]}>" for tag in reversed(open_tags))
        if len(current) + len(token) + len(closing) > limit and current:
            parts.append(current + closing)
            current = reopen
        while len(token) > limit - len(current) - len(closing) - 1 and not token.startswith(("<", "&")):
            room = max(1, limit - len(current) - len(closing) - 1)
            parts.append(current + token[:room] + closing)
            current, token = reopen, token[room:]
        current += token
        if token.startswith("</"):
            name = token[2:-1].strip()
            for index in range(len(open_tags) - 1, -1, -1):
                if open_tags[index].split()[0] == name:
                    del open_tags[index]
                    break
        elif token.startswith("<") and not token.endswith("/>"):
            open_tags.append(token[1:-1])
    if current.strip():
        parts.append(current)
    return parts


def _plain_screen(screen: Screen) -> bool:
    """A screen that can replace a text message in place (no file, photo or invoice)."""
    return screen.photo is None and screen.document is None and screen.invoice is None and bool(screen.text)


def contact_of(update: Update) -> Contact:
    user = update.effective_user
    chat = update.effective_chat
    assert user is not None
    return Contact(
        platform=PLATFORM,
        platform_user_id=str(user.id),
        chat_id=str(chat.id) if chat is not None and chat.type == ChatType.PRIVATE else None,
        username=user.username,
        display_name=user.full_name,
        language_code=user.language_code,
    )


# Bot API refusals that mean "this message can no longer be edited" rather than "this edit is wrong".
EDIT_GONE = ("message to edit not found", "message can't be edited", "message_id_invalid")


class TelegramSender:
    """The outbox's way into Telegram: HTML messages with buttons; errors mapped to retry, park or blocked.

    Given the `budget` its application's rate limiter draws from (as the front end does), it paces itself: the
    outbox and the broadcast runner then share that budget with the front end's answers. Without one (a bare
    Application) they wrap it to take a slot per message."""

    platform = PLATFORM

    def __init__(self, application: Application, budget: BotBudget | None = None) -> None:  # type: ignore[type-arg]
        self.application = application
        self.budget = budget

    async def send(self, chat_id: str, message: OutgoingMessage) -> str:
        bot = self.application.bot
        rows = [
            [Button(b.label, action=b.action, url=b.url, copy_text=b.copy_text) for b in row] for row in message.buttons
        ]
        try:
            edit_id = getattr(message, "edit_message_id", None)
            if edit_id:
                try:
                    await bot.edit_message_text(
                        chat_id=int(chat_id), message_id=int(edit_id), text=message.text, parse_mode=ParseMode.HTML,
                        reply_markup=keyboard(rows), disable_web_page_preview=message.disable_preview,
                    )
                    return str(edit_id)
                except BadRequest as error:
                    reason = str(error).lower()
                    if "not modified" in reason:
                        return str(edit_id)
                    if not any(gone in reason for gone in EDIT_GONE):
                        raise
                # The message to update was deleted or is too old to edit: the news comes as a new message.
            paid = True if message.paid_broadcast else None
            sent: Message | None = None
            if message.attachments:
                return await self._send_files(int(chat_id), message, rows)
            if message.photo_url:
                caption = message.text if len(message.text) <= 1024 else None
                sent = await bot.send_photo(
                    chat_id=int(chat_id), photo=message.photo_url, caption=caption, parse_mode=ParseMode.HTML,
                    reply_markup=keyboard(rows) if caption is not None else None, allow_paid_broadcast=paid,
                )
                if caption is not None:
                    return str(sent.message_id)
            chunks = split_html(message.text)
            for index, chunk in enumerate(chunks):
                sent = await bot.send_message(
                    chat_id=int(chat_id), text=chunk, parse_mode=ParseMode.HTML,
                    reply_markup=keyboard(rows) if index == len(chunks) - 1 else None,
                    disable_web_page_preview=message.disable_preview, allow_paid_broadcast=paid,
                )
            assert sent is not None
            return str(sent.message_id)
        except RetryAfter as error:
            retry = error.retry_after
            seconds = retry.total_seconds() if hasattr(retry, "total_seconds") else float(retry)
            raise DeliveryError(f"flood control: retry after {seconds}s", retry_after=seconds) from None
        except Forbidden as error:
            raise DeliveryError(str(error), blocked=True) from None
        except BadRequest as error:
            text = str(error).lower()
            blocked = "chat not found" in text or "user is deactivated" in text
            raise DeliveryError(str(error), permanent=True, blocked=blocked) from None
        except (TimedOut, NetworkError) as error:
            raise DeliveryError(f"network: {error}") from None


    async def _send_files(self, chat_id: int, message: OutgoingMessage, rows: list[list[Button]]) -> str:
        """Files (a voicemail as audio, pictures, documents), the text as the first one's caption and the buttons
        under the last; a text too long for a caption (1024) goes first, on its own."""
        bot = self.application.bot
        if 2 <= len(message.attachments) <= 10 and all(a.kind == "photo" for a in message.attachments):
            return await self._send_album(chat_id, message, rows)
        caption: str | None = message.text if len(message.text) <= 1024 else None
        if caption is None:
            for chunk in split_html(message.text):
                await bot.send_message(chat_id=chat_id, text=chunk, parse_mode=ParseMode.HTML,
                                       disable_web_page_preview=True)
        sent: Message | None = None
        last = len(message.attachments) - 1
        for index, attachment in enumerate(message.attachments):
            file = InputFile(attachment.data, filename=attachment.filename)
            common: dict[str, Any] = {
                "chat_id": chat_id, "caption": caption if index == 0 else None, "parse_mode": ParseMode.HTML,
                "reply_markup": keyboard(rows) if index == last else None,
            }
            if attachment.kind == "audio":
                sent = await bot.send_audio(audio=file, title=attachment.title, **common)
            elif attachment.kind == "photo":
                sent = await bot.send_photo(photo=file, **common)
            else:
                sent = await bot.send_document(document=file, **common)
        assert sent is not None
        return str(sent.message_id)

    async def _send_album(self, chat_id: int, message: OutgoingMessage, rows: list[list[Button]]) -> str:
        """Pictures of one MMS as an album (sendMediaGroup), then the text with the buttons, which an album
        cannot carry; the text's message is the one a reply answers."""
        bot = self.application.bot
        await bot.send_media_group(chat_id=chat_id, media=[
            InputMediaPhoto(InputFile(attachment.data, filename=attachment.filename, attach=True))
            for attachment in message.attachments
        ])
        sent: Message | None = None
        chunks = split_html(message.text)
        for index, chunk in enumerate(chunks):
            sent = await bot.send_message(
                chat_id=chat_id, text=chunk, parse_mode=ParseMode.HTML,
                reply_markup=keyboard(rows) if index == len(chunks) - 1 else None, disable_web_page_preview=True,
            )
        assert sent is not None
        return str(sent.message_id)


class StarsSubscriptions:
    """The Bot API calls of Stars subscriptions that /subscribe needs (subscriptions.StarsSubscriptionApi)."""

    def __init__(self, application: Application) -> None:  # type: ignore[type-arg]
        self.application = application

    async def invoice_link(self, *, title: str, description: str, label: str, payload: str, stars: int) -> str:
        try:
            return await self.application.bot.create_invoice_link(
                title=_plain(title)[:32], description=_plain(description)[:255], payload=payload,
                currency="XTR", prices=[LabeledPrice(_plain(label)[:32], stars)], provider_token="",
                subscription_period=subscriptions.PERIOD_SECONDS,
            )
        except TelegramError as error:
            log.warning("telegram refused a Stars subscription invoice link: %s", error)
            raise subscriptions.SubscriptionError("sub_unavailable") from error

    async def set_canceled(self, platform_user_id: str, charge_id: str, canceled: bool) -> None:
        try:
            await self.application.bot.edit_user_star_subscription(
                user_id=int(platform_user_id), telegram_payment_charge_id=charge_id, is_canceled=canceled
            )
        except TelegramError as error:
            log.warning("telegram refused editUserStarSubscription: %s", error)
            raise subscriptions.SubscriptionError("sub_unavailable") from error


class TelegramFrontEnd:
    """python-telegram-bot's Application, fed by long polling or by our aiohttp webhook route."""

    name = "telegram"

    def __init__(self, services: Services) -> None:
        load_flows()
        self.services = services
        settings = services.settings
        assert settings.telegram_bot_token is not None
        self.webhook_mode = settings.telegram_mode.value == "webhook"
        # The bot's one flood budget: every message it sends, answers, outbox and broadcasts alike, takes a slot.
        self.budget = BotBudget.telegram()
        builder = (
            ApplicationBuilder()
            .token(settings.telegram_bot_token.get_secret_value())
            .base_url(settings.telegram_api_base_url)
            .base_file_url(settings.telegram_api_base_url.replace("/bot", "/file/bot"))
            .rate_limiter(BudgetRateLimiter(self.budget))
            .concurrent_updates(64)
            # Every call but getUpdates goes through aiohttp: httpx's CPU per message capped paid broadcasts near
            # 700/s and made every relay dearer (see AiohttpRequest).
            .request(AiohttpRequest())
        )
        if self.webhook_mode:
            builder = builder.updater(None)
        self.application: Application = builder.build()  # type: ignore[type-arg]
        # Update ids count per bot: a new token (a new bot) must not find the old bot's ids already claimed.
        self._bot_id = settings.telegram_bot_token.get_secret_value().partition(":")[0]
        self.sender = TelegramSender(self.application, self.budget)
        # Polling: one instance per bot calls getUpdates (Telegram answers 409 to a second); the others wait.
        self.polling: Leadership | None = None
        self._register()

    # --- wiring ------------------------------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.application
        # Before any other handler (group -1): an update delivered again is dropped here, in polling and webhook mode.
        app.add_handler(TypeHandler(Update, self._claim), group=-1)
        new = filters.UpdateType.MESSAGE  # only new messages act; edits are answered by _on_edited
        app.add_handler(PreCheckoutQueryHandler(self._on_pre_checkout))
        app.add_handler(MessageHandler(new & filters.SUCCESSFUL_PAYMENT, self._on_payment))
        app.add_handler(MessageHandler(new & filters.COMMAND, self._on_command))
        app.add_handler(CallbackQueryHandler(self._on_button))
        app.add_handler(MessageHandler(new & filters.TEXT & ~filters.COMMAND, self._on_text))
        app.add_handler(MessageHandler(new & filters.PHOTO, self._on_photo))
        app.add_handler(MessageHandler(filters.UpdateType.EDITED_MESSAGE & filters.TEXT, self._on_edited))
        app.add_error_handler(self._on_error)

    def add_routes(self, web_app: web.Application) -> None:
        """Our aiohttp server serves the webhook route (no second web server)."""
        if self.webhook_mode:
            web_app.router.add_post(WEBHOOK_PATH, self._webhook)

    async def start(self) -> None:
        app = self.application
        await app.initialize()
        self.services.stars_refunder = self._refund_stars
        self.services.stars_subscriptions = StarsSubscriptions(app)
        await self._set_commands()
        await app.start()
        settings = self.services.settings
        if self.webhook_mode:
            assert settings.telegram_webhook_secret is not None
            await app.bot.set_webhook(
                url=f"{settings.public_base_url}{WEBHOOK_PATH}",
                secret_token=settings.telegram_webhook_secret.get_secret_value(),
                allowed_updates=Update.ALL_TYPES,
            )
        else:
            self.polling = Leadership(
                self.services.db, f"telegram-polling:{self._bot_id}", on_elected=self._start_polling,
                on_deposed=self._stop_polling, name="telegram polling",
            )
            await self.polling.start()

    async def _start_polling(self) -> None:
        updater = self.application.updater
        assert updater is not None
        if not updater.running:
            await updater.start_polling(allowed_updates=Update.ALL_TYPES, drop_pending_updates=False)

    async def _stop_polling(self) -> None:
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()

    async def stop(self) -> None:
        app = self.application
        if self.polling is not None:
            await self.polling.stop()  # stops polling before another instance may start
            self.polling = None
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()

    async def _set_commands(self) -> None:
        """The command menu: the user list for everyone, the admin list in each admin's chat."""
        bot = self.application.bot
        users = [BotCommand(s.name, _plain(t("en", s.help_key))[:256]) for s in router.user_commands()]
        admins = users + [BotCommand(s.name, _plain(t("en", s.help_key))[:256]) for s in router.admin_commands()]
        try:
            await bot.set_my_commands(users, scope=BotCommandScopeDefault())
            for lang in ("es",):
                localized = [BotCommand(s.name, _plain(t(lang, s.help_key))[:256]) for s in router.user_commands()]
                await bot.set_my_commands(localized, scope=BotCommandScopeDefault(), language_code=lang)
            for admin_id in self.services.settings.admin_telegram_ids:
                with contextlib.suppress(BadRequest, Forbidden):
                    await bot.set_my_commands(admins, scope=BotCommandScopeChat(chat_id=admin_id))
        except TelegramError as error:
            log.warning("setting the command menu failed: %s", error)
        base = self.services.settings.public_base_url.rstrip("/")
        if base.startswith("https://"):
            # The chat's menu button opens the Mini App; Telegram refuses web apps on plain http (/app sends a link).
            try:
                await bot.set_chat_menu_button(menu_button=MenuButtonWebApp("App", WebAppInfo(f"{base}/app")))
            except TelegramError as error:
                log.warning("setting the Mini App menu button failed: %s", error)

    async def _refund_stars(self, platform_user_id: str, charge_id: str) -> None:
        await self.application.bot.refund_star_payment(
            user_id=int(platform_user_id), telegram_payment_charge_id=charge_id
        )

    async def _webhook(self, request: web.Request) -> web.Response:
        """POST /webhooks/telegram: the secret token is checked in constant time, then the update is queued."""
        secret = self.services.settings.telegram_webhook_secret
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        metrics = self.services.metrics.webhooks
        if secret is None or not hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
            metrics.labels("telegram", "forbidden").inc()
            log.warning("telegram webhook with a wrong secret token from %s", request.remote)
            return web.Response(status=403)
        limit = self.services.settings.http_max_body_bytes
        try:
            if request.content_length is not None and request.content_length > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
            data = await request.json()
            update = Update.de_json(data, self.application.bot)
        except web.HTTPRequestEntityTooLarge:
            metrics.labels("telegram", "too_large").inc()
            log.warning("telegram webhook body over HTTP_MAX_BODY_BYTES (%d) from %s", limit, request.remote)
            return web.Response(status=413)
        except Exception:
            metrics.labels("telegram", "malformed").inc()
            return web.Response(status=400)
        await self.application.update_queue.put(update)
        metrics.labels("telegram", "accepted").inc()
        return web.Response(status=200)

    # --- updates -------------------------------------------------------------------------------------------------

    def _private_url(self) -> str | None:
        username = self.application.bot.username if self.application.bot else None
        return f"https://t.me/{username}" if username else None

    async def _typing_after(self, chat_id: int, delay: float = 0.5) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(TelegramError):
            await self.application.bot.send_chat_action(chat_id=chat_id, action=ChatAction.TYPING)

    async def _claim(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Telegram resends an update it thinks was not received, to whichever instance it reaches: the first
        claim runs it, every other delivery stops here."""
        if not await updates.claim(self.services.db, PLATFORM, f"{self._bot_id}:{update.update_id}"):
            raise ApplicationHandlerStop

    def _for_another_bot(self, mention: str) -> bool:
        username = self.application.bot.username
        return bool(mention and username and mention.lower() != username.lower())

    async def _on_edited(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An edited message never runs anything; an edited command is told to be sent again, other edits pass."""
        message = update.edited_message
        if message is None or message.text is None or update.effective_user is None:
            return
        if not message.text.startswith("/"):
            return
        _, _, mention = message.text.partition(" ")[0][1:].partition("@")
        if self._for_another_bot(mention):
            return
        in_group = message.chat.type != ChatType.PRIVATE
        screens = await router.handle_edited_command(
            self.services, contact_of(update), in_group=in_group, private_chat_url=self._private_url()
        )
        await self._render(message.chat_id, screens, reply_to=message)

    async def _on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or message.text is None or update.effective_user is None:
            return
        head, _, rest = message.text.partition(" ")
        name, _, mention = head[1:].partition("@")
        if self._for_another_bot(mention):
            return  # a command for another bot in a group
        in_group = message.chat.type != ChatType.PRIVATE
        typing = asyncio.create_task(self._typing_after(message.chat_id))
        work = asyncio.create_task(
            router.handle_command(
                self.services, contact_of(update), name, rest, in_group=in_group, private_chat_url=self._private_url()
            )
        )
        placeholder: Message | None = None
        try:
            done, _ = await asyncio.wait({work}, timeout=PLACEHOLDER_SECONDS)
            if not done:
                # Slow outside calls: a placeholder now, edited in place with the answer when it is ready.
                user = update.effective_user
                locale = "es" if (user.language_code or "").startswith("es") else "en"
                with contextlib.suppress(TelegramError):
                    placeholder = await message.reply_html(t(locale, "working"), do_quote=False)
            screens = await work
        finally:
            typing.cancel()
        if placeholder is not None and screens and _plain_screen(screens[0]):
            screens[0].edit = True
        await self._render(
            message.chat_id, screens, reply_to=message if in_group else None, editing=placeholder
        )

    async def _on_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A picture, fetched here (getFile, then the file path), handed on with its caption: in reply to a
        relayed SMS it goes out as an MMS."""
        message = update.effective_message
        if message is None or not message.photo or update.effective_user is None:
            return
        if message.chat.type != ChatType.PRIVATE:
            return  # pictures in groups are people talking to each other
        reply_to = None
        if message.reply_to_message is not None:
            reply_to = SentRef(PLATFORM, str(message.chat_id), str(message.reply_to_message.message_id))
        largest = message.photo[-1]  # Telegram lists the sizes smallest first; photos are always JPEG
        data = bytes(await (await largest.get_file()).download_as_bytearray())
        picture = router.IncomingFile(data, "image/jpeg", key=f"{message.chat_id}:{message.message_id}")
        screens = await router.handle_text(
            self.services, contact_of(update), message.caption or "", reply_to=reply_to, file=picture
        )
        await self._render(message.chat_id, screens)

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or message.text is None or update.effective_user is None:
            return
        in_group = message.chat.type != ChatType.PRIVATE
        reply_to = None
        if message.reply_to_message is not None:
            reply_to = SentRef(PLATFORM, str(message.chat_id), str(message.reply_to_message.message_id))
        screens = await router.handle_text(
            self.services, contact_of(update), message.text, reply_to=reply_to, in_group=in_group
        )
        await self._render(message.chat_id, screens)

    async def _on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or update.effective_user is None:
            return
        message = query.message
        chat_id = message.chat.id if message is not None else update.effective_user.id
        in_group = message is not None and message.chat.type != ChatType.PRIVATE
        ref = SentRef(PLATFORM, str(chat_id), str(message.message_id)) if message is not None else None
        work = asyncio.create_task(
            router.handle_action(self.services, contact_of(update), query.data or "", ref, in_group=in_group)
        )
        done, _ = await asyncio.wait({work}, timeout=SLOW_ANSWER_SECONDS)
        answered = False
        if not done:
            # Telegram shows a spinner until the query is answered: answer now, render when the work is done.
            with contextlib.suppress(TelegramError):
                await query.answer()
            answered = True
        screens = await work
        toast = next((s for s in screens if s.toast is not None), None)
        if not answered:
            with contextlib.suppress(TelegramError):
                await query.answer(
                    text=_plain(toast.toast)[:200] if toast and toast.toast else None,
                    show_alert=bool(toast and toast.alert),
                )
        await self._render(chat_id, [s for s in screens if s.text or s.photo or s.document or s.invoice],
                           editing=message if isinstance(message, Message) else None)

    async def _on_pre_checkout(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.pre_checkout_query
        if query is None:
            return
        flow = subscribe if subscriptions.is_subscription_payload(query.invoice_payload) else topup
        refusal = await flow.pre_checkout(
            self.services, contact_of(update), query.invoice_payload, query.currency, query.total_amount
        )
        if refusal is None:
            await query.answer(ok=True)
        else:
            await query.answer(ok=False, error_message=_plain(refusal))

    async def _on_payment(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or message.successful_payment is None:
            return
        payment = message.successful_payment
        if subscriptions.is_subscription_payload(payment.invoice_payload):
            # A Stars subscription: the first payment or a renewal (is_recurring), each with its own charge id.
            screens = await subscribe.payment_received(
                self.services, contact_of(update), charge_id=payment.telegram_payment_charge_id,
                payload=payment.invoice_payload, currency=payment.currency, amount=payment.total_amount,
                expires_at=payment.subscription_expiration_date,
                is_first=not payment.is_recurring or bool(payment.is_first_recurring),
            )
            await self._render(message.chat_id, screens)
            return
        screens = await topup.payment_received(
            self.services, contact_of(update), charge_id=payment.telegram_payment_charge_id,
            payload=payment.invoice_payload, currency=payment.currency, amount=payment.total_amount,
        )
        await self._render(message.chat_id, screens)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The one error handler: an apology with an id for the user, the trace with the same id in the log."""
        error = context.error
        if isinstance(error, Forbidden | RetryAfter | TimedOut | NetworkError):
            log.warning("telegram: %s", error)
            return
        error_id = uuid.uuid4().hex[:8]
        log.error("error %s while handling an update", error_id, exc_info=error)
        self.services.metrics.handler_errors.inc()
        if isinstance(update, Update) and update.effective_chat is not None:
            locale = "es" if (update.effective_user and (update.effective_user.language_code or "").startswith("es")) else "en"
            with contextlib.suppress(TelegramError):
                await context.bot.send_message(
                    update.effective_chat.id, t(locale, "error_unexpected", error_id=error_id),
                    parse_mode=ParseMode.HTML,
                )

    # --- rendering -------------------------------------------------------------------------------------------------

    async def _render(
        self, chat_id: int, screens: list[Screen], *, editing: Message | None = None, reply_to: Message | None = None
    ) -> None:
        bot = self.application.bot
        for screen in screens:
            sent: Message | None = None
            markup: Any = keyboard(screen.buttons)
            if screen.prompt is not None and markup is None:
                markup = ForceReply(input_field_placeholder=_plain(screen.prompt)[:64])
            if screen.invoice is not None:
                inv = screen.invoice
                sent = await bot.send_invoice(
                    chat_id=chat_id, title=_plain(inv.title)[:32], description=_plain(inv.description)[:255],
                    payload=inv.payload, currency=inv.currency, prices=[LabeledPrice(_plain(inv.label)[:32], inv.amount)],
                    provider_token="",
                )
            elif screen.photo is not None:
                sent = await bot.send_photo(
                    chat_id=chat_id, photo=screen.photo, caption=screen.text[:1024] or None, parse_mode=ParseMode.HTML,
                    reply_markup=markup, filename=screen.photo_name,
                )
            elif screen.document is not None:
                sent = await bot.send_document(
                    chat_id=chat_id, document=screen.document, filename=screen.document_name,
                    caption=screen.text[:1024] or None, parse_mode=ParseMode.HTML, reply_markup=markup,
                )
            elif screen.edit and editing is not None and len(screen.text) <= MAX_TEXT:
                try:
                    edited = await bot.edit_message_text(
                        chat_id=chat_id, message_id=editing.message_id, text=screen.text, parse_mode=ParseMode.HTML,
                        reply_markup=markup if isinstance(markup, InlineKeyboardMarkup) else None,
                        disable_web_page_preview=True,
                    )
                    sent = edited if isinstance(edited, Message) else editing
                except BadRequest as error:
                    if "not modified" not in str(error).lower():
                        raise
                    sent = editing
            else:
                chunks = split_html(screen.text)
                for index, chunk in enumerate(chunks):
                    sent = await bot.send_message(
                        chat_id=chat_id, text=chunk, parse_mode=ParseMode.HTML,
                        reply_markup=markup if index == len(chunks) - 1 else None, disable_web_page_preview=True,
                        reply_to_message_id=reply_to.message_id if reply_to is not None and index == 0 else None,
                    )
            if sent is not None:
                ref = SentRef(PLATFORM, str(chat_id), str(sent.message_id))
                if screen.reply_context is not None:
                    await router.remember_reply_context(self.services, ref, screen.reply_context)
                if screen.on_sent is not None:
                    await screen.on_sent(ref)

