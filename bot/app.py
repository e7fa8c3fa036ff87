"""The composition root: builds settings, database, providers and services, then runs every part in one loop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.admin.alerts import alert_admins
from core.ai.service import AiService, build_ai_assistant
from core.api import delivery as api_delivery
from core.api import events as api_events
from core.broadcast.service import BroadcastRunner
from core.messaging.service import build_messaging_service
from core.money import sandbox_credit, subscriptions
from core.platform import updates
from core.platform.heap import freeze_startup_heap
from core.platform.i18n import escape
from core.platform.migrate import upgrade_to_head_async
from core.platform.outbox import InstanceLiveness, OutboxDispatcher
from core.platform.pacing import InstanceShare
from core.platform.scheduler import Scheduler
from core.platform.settings import Settings, mask_url
from core.providers.plan import simulated_for_real_users
from core.services import Services, build_services
from core.verification.service import build_verification_service
from core.version import __version__
from webhooks import textverified
from webhooks import twilio as twilio_webhooks
from webhooks import voice as voice_webhooks
from webhooks import vonage as vonage_webhooks
from webhooks.server import RouteAdder, WebServer, create_app

log = logging.getLogger("cumapp")


class Component(Protocol):
    """Something with a life: started in order, stopped in reverse order."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def _health_alerts(services: Services) -> None:
    """Low provider balances, repeated provider failures and parked deliveries, told to admins once."""
    from core.admin.health import check_and_alert, refresh_gauges

    await check_and_alert(services, await refresh_gauges(services, max_age=0))


@dataclass
class _Named:
    """Gives a plain start/stop object the name the shutdown log uses."""

    name: str
    inner: Any

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()


@dataclass
class Application:
    """One CumApp process: the webhook server, the scheduler and each enabled front end."""

    settings: Settings
    console: bool | None = None  # None: the terminal chat runs when no chat token is set and stdin is a terminal
    migrate: bool = True
    services: Services | None = None
    web: WebServer | None = None
    scheduler: Scheduler | None = None
    front_ends: list[Component] = field(default_factory=list)
    log_path: Path | None = None  # where log lines go while the terminal chat runs
    _started: list[Component] = field(default_factory=list)

    def _wants_console(self) -> bool:
        if self.console is not None:
            return self.console
        no_tokens = not self.settings.telegram_bot_token and not self.settings.discord_bot_token
        return no_tokens and sys.stdin is not None and sys.stdin.isatty()

    def _build_front_ends(self, services: Services) -> tuple[list[Component], list[RouteAdder], dict[str, Any]]:
        """Each enabled chat front end, the web routes it owns and the outbox sender it registers."""
        components: list[Component] = []
        routes: list[RouteAdder] = []
        senders: dict[str, Any] = {}
        if self.settings.telegram_bot_token:
            from bot.telegram import TelegramFrontEnd

            telegram = TelegramFrontEnd(services)
            components.append(telegram)
            routes.append(telegram.add_routes)
            senders["telegram"] = telegram.sender
        if self.settings.discord_bot_token:
            from bot.discord import DiscordFrontEnd

            discord_front = DiscordFrontEnd(services)
            components.append(discord_front)
            senders["discord"] = discord_front.sender
        if self._wants_console():
            from bot.console import ConsoleFrontEnd

            console = ConsoleFrontEnd(services)
            components.append(console)
            senders["console"] = console.sender
        return components, routes, senders

    def banner(self) -> str:
        assert self.services is not None
        plan = self.services.plan
        fronts = ", ".join(c.name for c in self.front_ends) or "none (webhook server only)"
        sandbox = "on" if plan.any_sandbox else "off"
        host, port = self.settings.http_host, self.web.port if self.web else self.settings.http_port
        metrics = f" | /readyz, /metrics: http://{self.web.metrics_host}:{self.web.metrics_port}" if (
            self.web and self.web.metrics_port is not None) else ""
        return (
            f"CumApp {__version__} started | front ends: {fronts} | providers: {plan.describe()} | "
            f"sandbox: {sandbox} | webhook server: http://{host}:{port}{metrics} | database: {self._safe_db_url()}"
        )

    def _safe_db_url(self) -> str:
        return mask_url(self.settings.database_url)

    async def start(self) -> None:
        if self._wants_console():
            from bot.console import divert_logs, log_file_for

            # Log lines would land in the middle of the terminal chat: they go to a file, named in the banner.
            self.log_path = log_file_for(self.settings.database_url)
            divert_logs(self.log_path)
        if self.migrate:
            await upgrade_to_head_async(self.settings.database_url)
        self.services = services = build_services(self.settings)
        if services.plan.any_sandbox:
            await sandbox_credit.note_sandbox_run(services.db)  # credit handed out from now on is sandbox credit
        simulated = simulated_for_real_users(self.settings, services.plan)
        if simulated:
            log.warning(
                "sandbox with a real chat: %s simulated; screens that sell say sandbox and Telegram Stars top-ups "
                "are refused. Set the credentials and SANDBOX=false to go live (docs/DEPLOY.md)", ", ".join(simulated),
            )
        # This process's proof of life: what it claims (deliveries, job leases) is taken over within seconds
        # by another instance, or by itself restarted, once it dies.
        liveness = InstanceLiveness(services.db)
        self.scheduler = Scheduler(services.db, liveness=liveness)
        services.verification = build_verification_service(self.settings, services.db, services.metrics, services.plan)
        services.verification.start_jobs(self.scheduler)
        services.messaging = build_messaging_service(self.settings, services.db, services.metrics, services.plan)
        services.messaging.start_jobs(self.scheduler)
        services.messaging.renewals.start_jobs(self.scheduler)  # number rentals, once across instances
        services.ai = AiService(
            services.db, build_ai_assistant(self.settings, services.plan), self.settings, services.metrics
        )
        services.messaging.ai = services.ai
        self.front_ends, routes, senders = self._build_front_ends(services)
        # One rate budget per platform, shared by ordinary deliveries (first) and broadcasts (what is left), so
        # a broadcast runs at the platform's limit without ever starving codes and relayed SMS.
        broadcasts = BroadcastRunner(services.db, senders, services.metrics)
        # Integrators' webhook endpoints are one more outbox platform, outside the chats' flood budgets.
        outbox_senders = {**broadcasts.paced_senders(), **api_delivery.senders(self.settings, services.db)}
        dispatcher = OutboxDispatcher(
            services.db, outbox_senders, metrics=services.metrics, on_parked=self._delivery_parked,
            liveness=liveness,
        )
        services.outbox = dispatcher
        self.scheduler.add_periodic("health-alerts", lambda: _health_alerts(services), 60)
        updates.start_jobs(self.scheduler, services.db)  # forgets handled chat update ids after a day
        api_events.start_jobs(self.scheduler, services.db)  # API events and idempotency answers kept a day
        subscriptions.start_jobs(self.scheduler, services.db, self.settings)  # tier renewals and lapses
        self.web = WebServer(
            create_app(
                services,
                [textverified.add_routes, twilio_webhooks.add_routes, voice_webhooks.add_routes,
                 vonage_webhooks.add_routes, *routes],
            ),
            self.settings.http_host,
            self.settings.http_port,
        )
        await liveness.start()
        self._started.append(_Named("instance liveness", liveness))  # stopped last: claims stay ours till then
        await self.web.start()
        self._started.append(_Named("webhook server", self.web))
        for component in self.front_ends:
            await component.start()
            self._started.append(component)
        # Last to start, first to stop: the dispatcher needs the front ends' senders.
        await dispatcher.start()
        self._started.append(_Named("outbox dispatcher", dispatcher))
        # Each bot's flood budget is the bot's, not this process's: N live instances take 1/N of it each.
        share = InstanceShare(broadcasts.budgets.values(), liveness.instances_alive)
        await share.start()
        self._started.append(share)
        await broadcasts.start()
        self._started.append(_Named("broadcast runner", broadcasts))
        self.scheduler.start()
        freeze_startup_heap()
        log.info(self.banner())
        for component in self.front_ends:
            announce = getattr(component, "announce", None)
            if announce is not None:
                # The terminal chat prints it in one piece, with its own Mini App sign-in link (never logged).
                announce(self.banner() + await self._miniapp_line(component), self.log_path)

    async def _miniapp_line(self, component: Any) -> str:
        """`| Mini App: <single-use sign-in link>` for the terminal chat's account, to open /app in a browser."""
        contact = getattr(component, "contact", None)
        if contact is None or self.services is None or self.web is None:
            return ""
        from bot.handlers.miniapp import signin_link
        from core.money.accounts import get_or_create

        services = self.services
        async with services.db.transaction() as session:
            user_id = (await get_or_create(session, contact, signup_bonus_cents=services.signup_bonus_cents)).user.id
        host = self.settings.http_host if self.settings.http_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        link = await signin_link(services, user_id, f"http://{host}:{self.web.port}")
        return f" | Mini App: {link} (works once, for 10 minutes; /app makes another)"

    async def _delivery_parked(self, delivery: Any) -> None:
        """A chat message could not be delivered after every retry: admins hear about it once per chat."""
        assert self.services is not None
        if delivery.kind == "alert":
            return  # an undeliverable alert must not raise another alert
        async with self.services.db.transaction() as session:
            await alert_admins(
                session, self.settings, kind="delivery parked", key=f"{delivery.platform}:{delivery.chat_id}",
                text=escape(f"{delivery.kind} to {delivery.platform} chat {delivery.chat_id}: {delivery.last_error}"),
            )

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None
        for component in reversed(self._started):
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", getattr(component, "name", component))
        self._started.clear()
        if self.services is not None:
            await self.services.close()

    async def run_until_signalled(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            await self.start()
            for component in self.front_ends:
                done = getattr(component, "done", None)
                if done is not None:
                    # The terminal chat ends the app when its user quits.
                    done.add_done_callback(lambda _f: stop.set())
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):
                    pass
