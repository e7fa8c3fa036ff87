"""An admin sends parked deliveries again from /health, through the real Telegram front end."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

import bot.handlers.health  # noqa: F401  (registers /health and its buttons)
from core.admin import health
from core.models import AuditLog, ChatIdentity, OutboxDelivery, User
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.outbox import OutgoingMessage
from core.services import Services
from tests.harness import ADMIN_ID, buttons, telegram_app


async def test_retry_on_health_sends_the_parked_deliveries_once(db: Database) -> None:
    async with telegram_app(db) as h:
        admin, user = h.user(ADMIN_ID), h.user(4242)
        async with db.transaction() as session:
            parked = await outbox.enqueue(session, platform="telegram", chat_id="4242", kind="sms",
                                          message=OutgoingMessage(text="the SMS Telegram lost"))
            assert parked is not None
            parked.state, parked.last_error = "parked", "failed for 24.0 h (8640 attempts): 502 Bad Gateway"
        answer = await h.command(admin, "/health", timeout=15)
        assert "· 1 parked" in answer["text"]
        if not db.is_sqlite:  # the harness's dispatcher holds its liveness lock: one instance alive
            assert "Instances alive: 1" in answer["text"]
        assert buttons(answer) == {"📤 Retry 1 parked": "hl:retry", "🔄 Refresh": "hl:refresh"}

        since = len(h.fake.calls)
        query = await h.press(admin, answer, "hl:retry", timeout=15)
        assert query.params.get("text") == "1 parked deliveries queued again."
        sent = await h.fake.wait_for(lambda c: c.method == "sendMessage" and c.chat_id == user.id, since=since)
        assert sent.params["text"] == "the SMS Telegram lost"
        edited = await h.fake.wait_for(
            lambda c: c.method == "editMessageText" and c.chat_id == ADMIN_ID, since=since, timeout=15
        )
        assert "hl:retry" not in str(edited.params.get("reply_markup"))

        # The old keyboard pressed again (a second tap, another admin's client): nothing is queued twice.
        again = await h.press(admin, answer, "hl:retry", strict=False, timeout=15)
        assert again.params.get("text") == "Nothing parked to retry."
        async with db.read() as session:
            rows = (await session.scalars(select(OutboxDelivery).where(OutboxDelivery.chat_id == "4242"))).all()
            audit = (await session.scalars(select(AuditLog).where(AuditLog.action == "retry parked"))).all()
        assert [(row.state, row.failing_since) for row in rows] == [("sent", None)]
        assert len(audit) == 1 and audit[0].after == {"deliveries": 1}
        assert [m["text"] for m in h.fake.sent_messages(user.id)] == ["the SMS Telegram lost"]


async def test_a_stalled_outbox_alerts_the_admins_once(services: Services) -> None:
    """Transient failures are retried for a day without a word; a delivery waiting 10 minutes tells the admins."""
    db = services.db
    async with db.transaction() as session:
        admin = User(role="admin")
        session.add(admin)
        await session.flush()
        session.add(ChatIdentity(user_id=admin.id, platform="telegram", platform_user_id="1", chat_id="1"))
        waiting = await outbox.enqueue(session, platform="telegram", chat_id="77", kind="sms",
                                       message=OutgoingMessage(text="held up by an outage"))
        assert waiting is not None
    assert await health.check_and_alert(services) == []
    async with db.transaction() as session:
        row = await session.get(OutboxDelivery, waiting.id)
        assert row is not None
        row.created_at = utcnow() - timedelta(minutes=11)
    assert await health.check_and_alert(services) == ["outbox stalled"]
    assert await health.check_and_alert(services) == []  # told once, not every minute
    async with db.read() as session:
        alerts = (await session.scalars(select(OutboxDelivery).where(OutboxDelivery.kind == "alert"))).all()
    assert len(alerts) == 1 and "waited 11 min" in alerts[0].payload["text"]
