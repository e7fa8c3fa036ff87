"""Automatic analysis of inbound SMS: the warning appears on the relayed message itself, without Groq unless opted in."""

from __future__ import annotations

from sqlalchemy import select, update

from core.ai.service import AiService, build_ai_assistant
from core.messaging.service import MessagingService
from core.models import OutboxDelivery, User
from core.platform.clock import utcnow
from core.platform.db import Database
from core.providers.sandbox_sms import SandboxSmsProvider
from core.providers.sms import InboundSms
from core.services import build_services
from tests.core.messaging.test_service import give_number, new_user, sms_settings

OWN = "+12125550100"
PHISHING = "URGENT: your account is suspended. Verify your account now at http://bit.ly/x1 or lose access"


async def _relayed_texts(db: Database, auto: bool) -> list[str]:
    services = build_services(sms_settings(db), db=db)
    messaging = MessagingService(db, {"sandbox": SandboxSmsProvider()}, services.settings, services.metrics)
    messaging.ai = AiService(db, build_ai_assistant(services.settings, services.plan), services.settings,
                             services.metrics)
    user = await new_user(db, "77")
    await give_number(db, user.id, OWN)
    async with db.transaction() as session:
        await session.execute(update(User).where(User.id == user.id).values(auto_analyze=auto))
    sms = InboundSms("twilio", "SM-auto-1", "+14155550199", OWN, PHISHING, received_at=utcnow())
    await messaging.receive_inbound(sms, utcnow())
    await messaging.receive_inbound(sms, utcnow())  # a provider retry: relayed once, analysed once
    await messaging.close()
    async with db.read() as session:
        payloads = (await session.scalars(select(OutboxDelivery.payload).where(OutboxDelivery.kind == "sms"))).all()
    return [p["text"] for p in payloads]


async def test_auto_analysis_puts_the_warning_on_the_relayed_sms(db: Database) -> None:
    texts = await _relayed_texts(db, auto=True)
    assert len(texts) == 1
    assert "Possible scam:" in texts[0] and "(offline rules)" in texts[0]


async def test_without_auto_analysis_the_relay_is_plain(db: Database) -> None:
    texts = await _relayed_texts(db, auto=False)
    assert len(texts) == 1
    assert "Possible scam" not in texts[0] and "offline rules" not in texts[0]
