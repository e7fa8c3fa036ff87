"""Two-way SMS: owned numbers, sending (routed by cost, charged via the ledger), delivery status, inbound relay.

MessagingService is the one object handlers and webhooks hold; the work is done by the parts it composes
(numbers, sending, status, inbound, conversations), each usable on its own."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from core.messaging.calls import TWILIO_VOICE_PATH, CallDesk
from core.messaging.conversations import Conversations
from core.messaging.gateway import SmsGateway
from core.messaging.inbound.writer import InboundRelay
from core.messaging.media import MmsSender, register_fetchers
from core.messaging.numbers import NumberShop
from core.messaging.renewals import NumberRenewals
from core.messaging.sending import SmsSender
from core.messaging.status import DeliveryStatus
from core.messaging.storage import kv_delete_expired
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.metrics import Metrics
from core.platform.settings import Settings
from core.providers.plan import ProviderPlan
from core.providers.sms import InboundSms, SmsProvider


class MessagingService:
    """Numbers, sending, status and inbound relay. Every method runs its own transactions; provider calls are
    always made outside a transaction so a slow provider never holds a row lock."""

    def __init__(
        self, db: Database, providers: dict[str, SmsProvider], settings: Settings, metrics: Metrics | None = None,
        *, max_batch: int = 64, max_writers: int = 1,
    ) -> None:
        if not providers:
            raise ValueError("MessagingService needs at least one SMS provider")
        self.db = db
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.gateway = SmsGateway(providers, settings, self.metrics)
        self.providers = self.gateway.providers
        self.numbers = NumberShop(db, self.gateway)
        self.renewals = NumberRenewals(db, self.gateway)  # monthly renewal; its job is started by bot/app.py
        self.sender = SmsSender(db, self.gateway)
        self.mms = MmsSender(db, self.gateway, self.sender)
        register_fetchers(self.gateway)  # the outbox fetches inbound MMS pictures with these when it relays them
        self.status = DeliveryStatus(db, self.gateway.providers)
        self.inbound = InboundRelay(db, settings, max_batch=max_batch, max_writers=max_writers)
        self.threads = Conversations(db)
        self.calls = CallDesk(db, settings, self.gateway)
        # Callers keep using one object: its methods are the parts' own, with their signatures.
        self.inbound_url = self.gateway.inbound_url
        self.status_url = self.gateway.status_url
        self.segment_cost = self.gateway.segment_cost
        self.cheapest_provider = self.gateway.cheapest_provider
        self.search_numbers = self.numbers.search_numbers
        self.check_can_buy = self.numbers.check_can_buy
        self.quote_number = self.numbers.quote_number
        self.quoted_number = self.numbers.quoted_number
        self.buy_number = self.numbers.buy_number
        self.list_numbers = self.numbers.list_numbers
        self.owned_number = self.numbers.owned_number
        self.release_number = self.numbers.release_number
        self.send_sms = self.sender.send_sms
        self.quote_sms = self.sender.quote
        self.send_mms = self.mms.send_mms
        self.remember_status_message = self.status.remember_status_message
        self.apply_status = self.status.apply_status
        self.receive_inbound = self.inbound.receive_inbound
        self.submit_inbound = self.inbound.submit_inbound
        self.conversations = self.threads.conversations
        self.conversation = self.threads.conversation
        self.history = self.threads.history
        self.block = self.threads.block
        self.message = self.threads.message
        self.usage = self.threads.usage

    @property
    def ai(self) -> Any:
        """core.ai.service.AiService, set by the composition root for automatic analysis of inbound SMS."""
        return self.inbound.ai

    @ai.setter
    def ai(self, ai: Any) -> None:
        self.inbound.ai = ai

    async def close(self) -> None:
        await self.inbound.close()
        await self.gateway.close()

    # --- housekeeping ----------------------------------------------------------------------------------------

    def start_jobs(self, scheduler: Any) -> None:
        """Register the sweeper with the database-leased scheduler (core.platform.scheduler.Scheduler)."""

        async def sweep() -> None:
            await self.sweep()

        scheduler.add_periodic("messaging-sweep", sweep, 60.0)

    async def sweep(self, now: datetime | None = None) -> int:
        """Run every minute or so (the scheduler): expired offers, quotes and status notes are deleted, and a long
        text whose parts are still incomplete after PARTS_WAIT is relayed as it is, "[…]" marking what is missing,
        rather than never. Returns how many such texts were relayed."""
        now = now or utcnow()
        async with self.db.transaction() as session:
            await kv_delete_expired(session, now)
            relayed = await self.inbound.relay_stale_parts(session, now)
        return relayed


def build_messaging_service(
    settings: Settings, db: Database, metrics: Metrics | None, plan: ProviderPlan
) -> MessagingService:
    """Providers per the plan: Twilio and/or Vonage with credentials, else the sandbox twin, whose simulated
    delivery reports and replies go through the same status and inbound paths as real webhooks."""
    providers: dict[str, SmsProvider] = {}
    if "twilio" in plan.sms:
        from core.providers.twilio import TwilioProvider

        assert settings.twilio_account_sid and settings.twilio_auth_token
        providers["twilio"] = TwilioProvider(
            settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value(), settings.twilio_api_base_url,
            voice_url=f"{settings.public_base_url}{TWILIO_VOICE_PATH}",
        )
    if "vonage" in plan.sms:
        from core.providers.vonage import VonageProvider

        assert settings.vonage_api_key and settings.vonage_api_secret
        providers["vonage"] = VonageProvider(settings.vonage_api_key, settings.vonage_api_secret.get_secret_value())
    sandbox = None
    if not providers:
        from core.providers.sandbox_sms import SandboxSmsProvider

        sandbox = SandboxSmsProvider(success_rate=settings.sandbox_sms_success_rate)
        providers["sandbox"] = sandbox
    service = MessagingService(db, providers, settings, metrics)
    if sandbox is not None:
        sandbox.on_status = service.apply_status

        async def sandbox_inbound(sms: InboundSms) -> None:
            await service.receive_inbound(sms, utcnow())

        sandbox.on_inbound = sandbox_inbound
    return service
