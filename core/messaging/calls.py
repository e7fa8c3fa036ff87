"""Calls to owned numbers: the TwiML answer by the number's call setting (voicemail, off, forward), the "Missed
call" notice at once, and the voicemail sent to the chat as audio, once per recording."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.messaging.errors import MessagingError, phone_reason
from core.messaging.gateway import SmsGateway
from core.messaging.numbers import owned_active_number
from core.messaging.relay import RELAY_PRIORITY, display_number
from core.messaging.storage import conversation_between
from core.models import CALL_MODES, Call, Conversation, OutboxDelivery, PhoneNumber, User
from core.platform import outbox
from core.platform.db import Database, dialect_insert
from core.platform.i18n import Html, escape, t
from core.platform.phone import InvalidPhoneNumber, mask_number, normalize
from core.platform.settings import Settings
from core.providers.sms import SmsProviderError
from core.providers.twilio_voice import (
    IncomingCall,
    RecordingReport,
    forward_twiml,
    hangup_twiml,
    reject_twiml,
    voicemail_twiml,
)

log = logging.getLogger(__name__)

# Our routes, here so the URLs given to Twilio and the routes served cannot drift apart (as in gateway.py).
TWILIO_VOICE_PATH = "/webhooks/twilio/voice"
TWILIO_RECORDING_PATH = "/webhooks/twilio/recording"
# A minute of Twilio's MP3 is about 1 MB; anything far larger is not a voicemail of ours.
VOICEMAIL_MAX_BYTES = 8 * 1024 * 1024


class InvalidForwardNumber(MessagingError):
    """What the user typed is no number calls can be forwarded to; `reason` is core.platform.phone's."""

    def __init__(self, number: str, reason: str) -> None:
        super().__init__("call_forward_invalid", number=number)
        self.reason = reason

    def text(self, locale: str) -> Html:
        return t(locale, self.key, number=self.details["number"], reason=phone_reason(locale, self.reason))


@dataclass(frozen=True)
class CallAnswer:
    """The TwiML for Twilio and what happened, for the webhook metrics."""

    twiml: str
    outcome: str


def duration_text(seconds: int) -> str:
    return f"{seconds // 60}:{seconds % 60:02d}"


class CallDesk:
    """Answers calls to owned numbers and delivers their voicemail; the call settings of a number."""

    def __init__(self, db: Database, settings: Settings, gateway: SmsGateway) -> None:
        self.db = db
        self.settings = settings
        self.gateway = gateway

    @property
    def recording_url(self) -> str:
        return f"{self.settings.public_base_url}{TWILIO_RECORDING_PATH}"

    # --- a call comes in ---------------------------------------------------------------------------------------

    async def answer(self, call: IncomingCall, received_at: datetime) -> CallAnswer:
        """The number's setting decides the TwiML; the chat is told in the same transaction that records the call,
        so a repeated webhook (same CallSid) answers alike and tells nobody twice."""
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    select(PhoneNumber, User.locale)
                    .join(User, User.id == PhoneNumber.user_id)
                    .where(PhoneNumber.e164 == call.to_e164, PhoneNumber.state == "active")
                    .order_by(PhoneNumber.id.desc())
                    .limit(1)
                )
            ).first()
            if row is None:
                log.warning("call %s to %s: no active number owns it", call.call_sid, mask_number(call.to_e164))
                return CallAnswer(reject_twiml(), "unknown_destination")
            number, locale = row
            conversation = (
                await conversation_between(session, number.user_id, number.id, call.from_e164)
                if call.from_e164 else None
            )
            mode = number.call_mode if number.call_mode in CALL_MODES else "voicemail"
            if mode == "forward" and not number.call_forward_to:
                mode = "voicemail"
            if conversation is not None and conversation.blocked:
                log.info("call %s from a blocked sender to %s refused", call.call_sid, mask_number(call.to_e164))
                return CallAnswer(reject_twiml(), "blocked")
            forwarded_to = number.call_forward_to if mode == "forward" else None
            inserted = await session.scalar(
                dialect_insert(session.bind.dialect.name)(Call)
                .values(provider="twilio", call_sid=call.call_sid, user_id=number.user_id, phone_number_id=number.id,
                        from_e164=call.from_e164, mode=mode, forwarded_to=forwarded_to, received_at=received_at)
                .on_conflict_do_nothing(index_elements=["call_sid"])
                .returning(Call.id)
            )
            if inserted is not None:
                await self._tell(session, number, locale, call, conversation, mode, received_at)
            twiml = (
                forward_twiml(forwarded_to) if forwarded_to
                else reject_twiml() if mode == "off"
                else voicemail_twiml(html.unescape(t(locale, "call_greeting", number=_spoken(number.e164))), locale,
                                     self.recording_url)
            )
        log.info("call %s from %s to %s answered: %s", call.call_sid, mask_number(call.from_e164 or "-"),
                 mask_number(call.to_e164), mode)
        return CallAnswer(twiml, mode if inserted is not None else "duplicate")

    async def _tell(
        self, session: AsyncSession, number: PhoneNumber, locale: str, call: IncomingCall,
        conversation: Conversation | None, mode: str, received_at: datetime,
    ) -> None:
        sender = _caller(locale, call.from_e164)
        own = display_number(number.e164)
        if mode == "forward":
            text = t(locale, "call_forwarded", sender=sender, to=own,
                     forward=display_number(number.call_forward_to or ""))
        else:
            text = t(locale, "call_missed", sender=sender, to=own)
        await outbox.enqueue_for_user(
            session, number.user_id, kind="call", message=_card(locale, text, conversation),
            dedupe_key=f"call:{call.call_sid}"[:160], priority=RELAY_PRIORITY, source_received_at=received_at,
        )

    # --- its voicemail ---------------------------------------------------------------------------------------

    async def recording(self, report: RecordingReport, received_at: datetime) -> CallAnswer:
        """<Record>'s action request gets the hang-up; a completed recording is fetched and sent as audio, once
        per RecordingSid. A fetch that fails raises (the webhook answers 503, Twilio tries again)."""
        if report.status is None:
            return CallAnswer(hangup_twiml(), "recording_action")
        if report.status != "completed":
            log.info("recording %s of call %s: %s, nothing to send", report.recording_sid, report.call_sid,
                     report.status)
            return CallAnswer(hangup_twiml(), "recording_absent")
        async with self.db.read() as session:
            found = (
                await session.execute(
                    select(Call, PhoneNumber.e164, User.locale)
                    .join(PhoneNumber, PhoneNumber.id == Call.phone_number_id)
                    .join(User, User.id == Call.user_id)
                    .where(Call.call_sid == report.call_sid)
                )
            ).first()
        if found is None:
            log.warning("recording %s names call %s, which we did not answer", report.recording_sid,
                        report.call_sid)
            return CallAnswer(hangup_twiml(), "unknown_call")
        call, own_e164, locale = found
        if call.recording_sid is not None:
            return CallAnswer(hangup_twiml(), "duplicate")
        provider = self.gateway.providers.get(call.provider)
        fetch = getattr(provider, "fetch_recording", None)
        if provider is None or fetch is None:
            log.warning("recording %s: provider %s is not configured to fetch it", report.recording_sid, call.provider)
            return CallAnswer(hangup_twiml(), "unfetchable")
        audio: bytes | None
        try:
            audio = await self.gateway.call(provider, fetch(report.recording_url, VOICEMAIL_MAX_BYTES))
        except SmsProviderError as error:
            if error.retryable:
                raise
            # Refused for good (too large, not at Twilio): the owner still hears of it, without the audio.
            log.warning("recording %s could not be fetched: %s", report.recording_sid, error.code)
            audio = None
        async with self.db.transaction() as session:
            claimed = await session.execute(
                update(Call)
                .where(Call.id == call.id, Call.recording_sid.is_(None))
                .values(recording_sid=report.recording_sid, recording_seconds=report.duration_seconds)
                .execution_options(synchronize_session=False)
            )
            if not claimed.rowcount:  # the same callback, twice at once: the other one sends it
                return CallAnswer(hangup_twiml(), "duplicate")
            conversation = (
                await conversation_between(session, call.user_id, call.phone_number_id, call.from_e164)
                if call.from_e164 else None
            )
            message = self._voicemail_message(locale, call, own_e164, report, conversation, audio)
            await outbox.enqueue_for_user(
                session, call.user_id, kind="voicemail", message=message,
                dedupe_key=f"voicemail:{report.recording_sid}"[:160], priority=RELAY_PRIORITY,
                source_received_at=received_at,
            )
        log.info("voicemail %s (%s s, %s bytes) of call %s queued for user %s", report.recording_sid,
                 report.duration_seconds, len(audio or b""), report.call_sid, call.user_id)
        return CallAnswer(hangup_twiml(), "voicemail" if audio is not None else "voicemail_unfetched")

    def _voicemail_message(
        self, locale: str, call: Call, own_e164: str, report: RecordingReport, conversation: Conversation | None,
        audio: bytes | None,
    ) -> outbox.OutgoingMessage:
        sender = _caller(locale, call.from_e164)
        key = "call_voicemail" if audio is not None else "call_voicemail_unfetched"
        text = t(locale, key, sender=sender, to=display_number(own_e164),
                 duration=duration_text(report.duration_seconds))
        card = _card(locale, text, conversation)
        if audio is None:
            return card
        title = str(t(locale, "call_voicemail_title", sender=_caller(locale, call.from_e164)))
        attachment = outbox.Attachment(
            kind="audio", data=audio, filename=f"voicemail-{report.recording_sid}.mp3", content_type="audio/mpeg",
            title=title,
        )
        return outbox.OutgoingMessage(
            text=card.text, buttons=card.buttons, reply_context=card.reply_context, attachments=(attachment,)
        )

    # --- a number's call setting --------------------------------------------------------------------------------

    async def set_call_mode(self, user_id: int, number_id: int, mode: str, forward_to: str | None = None) -> PhoneNumber:
        """Voicemail, off, or forward to `forward_to` (typed by the user: checked with libphonenumber, read in the
        number's country when it has no country code). Twilio numbers get their voice URL pointed at us."""
        if mode not in CALL_MODES:
            raise ValueError(f"unknown call mode {mode!r}")
        number = await owned_active_number(self.db, user_id, number_id)
        target: str | None = None
        if mode == "forward":
            try:
                target = normalize(forward_to or "", number.country or "US")
            except InvalidPhoneNumber as error:
                raise InvalidForwardNumber((forward_to or "")[:40], error.reason) from error
            if target == number.e164:
                raise MessagingError("call_forward_self")
        await self._point_voice_url(number)
        async with self.db.transaction() as session:
            await session.execute(
                update(PhoneNumber).where(PhoneNumber.id == number_id)
                .values(call_mode=mode, call_forward_to=target if mode == "forward" else number.call_forward_to)
                .execution_options(synchronize_session=False)
            )
            changed = await session.get(PhoneNumber, number_id, populate_existing=True)
            assert changed is not None
        log.info("number %s: calls now %s", mask_number(number.e164), mode)
        return changed

    async def _point_voice_url(self, number: PhoneNumber) -> None:
        """Numbers bought before calls were handled have no voice URL of ours; setting it again is harmless."""
        provider = self.gateway.providers.get(number.provider)
        set_voice_url = getattr(provider, "set_voice_url", None)
        if provider is None or set_voice_url is None:
            return
        try:
            await self.gateway.call(provider, set_voice_url(number.provider_sid))
        except SmsProviderError as error:
            log.warning("voice URL of %s not updated at %s: %s", mask_number(number.e164), number.provider,
                        error.code)


def _spoken(e164: str) -> str:
    """Digits spaced out, so <Say> reads a number digit by digit rather than as billions."""
    return " ".join(e164.lstrip("+"))


def _caller(locale: str, from_e164: str) -> Html:
    """The caller as the card shows them: their number, or "Unknown caller" when withheld."""
    return t(locale, "call_unknown_caller") if not from_e164 else escape(display_number(from_e164))


def _card(locale: str, text: Html, conversation: Conversation | None) -> outbox.OutgoingMessage:
    """Like a relayed SMS: with the caller's thread, Reply (an SMS back) and Block."""
    if conversation is None:
        return outbox.OutgoingMessage(text=str(text))
    buttons = ((
        outbox.OutButton(t(locale, "sms_btn_reply"), action=f"sms_reply:{conversation.id}"),
        outbox.OutButton(t(locale, "sms_btn_block"), action=f"sms_block:{conversation.id}"),
    ),)
    return outbox.OutgoingMessage(
        text=str(text), buttons=buttons, reply_context={"kind": "sms", "conversation_id": conversation.id}
    )


async def _drop_sent_audio(session: AsyncSession, delivered: list[tuple[OutboxDelivery, datetime]]) -> None:
    """Once a voicemail reached the chat its bytes leave the outbox row (the chat has them; the row keeps the card,
    which replies are routed by), so recordings do not pile up in the database."""
    for delivery, _at in delivered:
        payload = dict(delivery.payload or {})
        if not payload.get("attachments"):
            continue
        payload["attachments"] = [{**item, "data": ""} for item in payload["attachments"]]
        await session.execute(
            update(OutboxDelivery).where(OutboxDelivery.id == delivery.id).values(payload=payload)
            .execution_options(synchronize_session=False)
        )


outbox.register_sent_hook("voicemail", _drop_sent_audio)
