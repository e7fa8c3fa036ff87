"""Automatic analysis on the webhook path: group commits, and a read of its own only for owners who asked."""

from __future__ import annotations

import asyncio

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


async def _submitted_texts(db: Database, auto: bool) -> list[str]:
    """The webhook path: SMS submitted together share group commits; only auto-analysis owners wait for a note."""
    services = build_services(sms_settings(db), db=db)
    messaging = MessagingService(db, {"sandbox": SandboxSmsProvider()}, services.settings, services.metrics)
    messaging.ai = AiService(db, build_ai_assistant(services.settings, services.plan), services.settings,
                             services.metrics)
    analysing = await new_user(db, "78")
    await give_number(db, analysing.id, OWN)
    plain = await new_user(db, "79")
    await give_number(db, plain.id, "+12125550101")
    async with db.transaction() as session:
        await session.execute(update(User).where(User.id == analysing.id).values(auto_analyze=auto))
    sms = [InboundSms("twilio", f"SM-batch-{i}", "+14155550199", OWN if i % 2 else "+12125550101", PHISHING,
                      received_at=utcnow()) for i in range(6)]
    outcomes = await asyncio.gather(*(messaging.submit_inbound(s, utcnow()) for s in [*sms, sms[1]]))
    await messaging.submit_inbound(sms[1], utcnow())  # a provider retry after the fact: relayed once
    await messaging.close()
    assert sorted(o.outcome for o in outcomes).count("relayed") == 6
    async with db.read() as session:
        payloads = (await session.scalars(select(OutboxDelivery.payload).where(OutboxDelivery.kind == "sms")
                                          .order_by(OutboxDelivery.user_id, OutboxDelivery.id))).all()
    return [p["text"] for p in payloads]


async def test_submitted_sms_get_the_warning_only_for_owners_who_asked(db: Database) -> None:
    texts = await _submitted_texts(db, auto=True)
    assert len(texts) == 6
    assert sum("Possible scam:" in text for text in texts) == 3
    texts = [text for text in texts if "Possible scam:" not in text]
    assert all("offline rules" not in text for text in texts)
