"""In-memory SMS provider for running CumApp with no account: fictional numbers, simulated delivery and replies."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import phonenumbers

from core.platform.clock import utcnow
from core.providers.sms import (
    AvailableNumber,
    InboundSms,
    InvalidRecipient,
    NotSmsCapable,
    PurchasedNumber,
    RecipientOptedOut,
    SendResult,
    SmsProviderError,
    StatusUpdate,
    segment_count,
)

log = logging.getLogger("cumapp.providers.sandbox_sms")

StatusCallback = Callable[[StatusUpdate], Awaitable[None] | None]
InboundCallback = Callable[[InboundSms], Awaitable[None] | None]

MONTHLY_COST_CENTS = 100
COST_PER_SEGMENT_CENTS = 1

# Numbers reserved for fiction, so nothing the sandbox hands out can ever text a real person:
# NANP 555-0100..0199 in any area code, and the UK's 07700 900000..900999 drama range.
_AREAS: dict[str, list[tuple[str, str]]] = {
    "US": [("415", "San Francisco"), ("212", "New York"), ("312", "Chicago"), ("206", "Seattle"), ("305", "Miami")],
    "CA": [("416", "Toronto"), ("604", "Vancouver"), ("514", "Montreal")],
}
_NANP_FICTIONAL = re.compile(r"^\+1(\d{3})5550(1\d\d)$")
_UK_FICTIONAL = re.compile(r"^\+447700900\d{3}$")

# Mirrors Twilio's magic test numbers so the error paths can be tried without an account.
MAGIC_RECIPIENTS: dict[str, type[SmsProviderError]] = {
    "+15005550001": InvalidRecipient,
    "+15005550004": RecipientOptedOut,
    "+15005550009": NotSmsCapable,
}

_QUESTION_REPLIES = (
    "Yes, sounds good!",
    "Hmm, not sure. Let me check and get back to you.",
    "Sure, what time works for you?",
    "No, sorry, I can't make it.",
    "Yep! 👍",
)
_GREETING_REPLIES = ("Hey! Who's this?", "Hi there 👋", "Hello! What's up?")
_OTHER_REPLIES = ("Thanks!", "Got it.", "👍", "OK, talk soon.", "Haha nice", "Cool, thanks for letting me know.")
_GREETING = re.compile(r"^\s*(hi|hey|hello|yo|hiya|good (morning|afternoon|evening))\b", re.IGNORECASE)

# Twilio's codes for the two ways a carrier loses a message, so sandbox logs read like real ones.
UNDELIVERED_ERROR = "30003"
FAILED_ERROR = "30008"


@dataclass
class _Owned:
    provider_sid: str
    e164: str
    country: str
    sms_url: str
    status_url: str


def _fictional(e164: str) -> str | None:
    """The country of a sandbox-issued number, or None when the number is not one of ours."""
    if _NANP_FICTIONAL.match(e164):
        area = e164[2:5]
        return next((c for c, areas in _AREAS.items() if any(a == area for a, _ in areas)), "US")
    if _UK_FICTIONAL.match(e164):
        return "GB"
    return None


class SandboxSmsProvider:
    """SmsProvider that never leaves the process.

    After `send`, `on_status` gets "sent" then "delivered" (or "undelivered"/"failed" with probability
    1 - success_rate). A delivered message is answered by the recipient through `on_inbound` when its body
    ends with "?", or otherwise with probability `reply_probability`."""

    name = "sandbox"

    def __init__(
        self,
        success_rate: float = 0.95,
        seed: int | None = None,
        on_status: StatusCallback | None = None,
        on_inbound: InboundCallback | None = None,
        reply_delay_seconds: float = 1.0,
        *,
        reply_probability: float = 0.25,
        status_delay_seconds: float = 0.3,
    ) -> None:
        if not 0 <= success_rate <= 1 or not 0 <= reply_probability <= 1:
            raise ValueError("success_rate and reply_probability must be between 0 and 1")
        self.success_rate = success_rate
        self.reply_probability = reply_probability
        self.reply_delay_seconds = reply_delay_seconds
        self.status_delay_seconds = status_delay_seconds
        self.on_status = on_status
        self.on_inbound = on_inbound
        self._random = random.Random(seed)
        self._owned: dict[str, _Owned] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- numbers ---------------------------------------------------------------------------------------------

    def _pool(self, country: str, area_code: str | None) -> list[tuple[str, str | None]]:
        taken = {owned.e164 for owned in self._owned.values()}
        pool: list[tuple[str, str | None]] = []
        if country in _AREAS:
            areas: list[tuple[str, str | None]] = list(_AREAS[country])
            if area_code:
                known = dict(_AREAS[country])
                areas = [(area_code, known.get(area_code))]
            for area, locality in areas:
                pool += [(f"+1{area}555{line:04d}", locality) for line in range(100, 200)]
        elif country == "GB" and not area_code:
            pool = [(f"+447700900{line:03d}", "London") for line in range(100, 1000)]
        return [(e164, locality) for e164, locality in pool if e164 not in taken]

    async def search_numbers(
        self, country: str, area_code: str | None = None, contains: str | None = None, limit: int = 10
    ) -> list[AvailableNumber]:
        country = country.upper()
        if area_code and not re.fullmatch(r"[2-9]\d\d", area_code):
            return []
        digits = re.sub(r"\D", "", contains or "")
        found = [
            AvailableNumber(e164=e164, country=country, locality=locality, monthly_cost_cents=MONTHLY_COST_CENTS,
                            provider=self.name)
            for e164, locality in self._pool(country, area_code)
            if not digits or digits in e164
        ]
        return found[: max(limit, 0)]

    async def buy_number(self, e164: str, sms_url: str, status_url: str) -> PurchasedNumber:
        country = _fictional(e164)
        if country is None or any(owned.e164 == e164 for owned in self._owned.values()):
            raise SmsProviderError("That number is no longer available. Search again and pick another.",
                                   code="not-available")
        sid = "SBPN" + secrets.token_hex(12)
        self._owned[sid] = _Owned(sid, e164, country, sms_url, status_url)
        return PurchasedNumber(provider_sid=sid, e164=e164, country=country, monthly_cost_cents=MONTHLY_COST_CENTS)

    async def release_number(self, provider_sid: str) -> None:
        self._owned.pop(provider_sid, None)

    @property
    def owned_numbers(self) -> list[str]:
        return [owned.e164 for owned in self._owned.values()]

    # --- messages --------------------------------------------------------------------------------------------

    async def send(self, from_e164: str, to_e164: str, body: str, status_callback_url: str) -> SendResult:
        if self._closed:
            raise SmsProviderError("The SMS sandbox has been shut down.", code="closed")
        if to_e164 in MAGIC_RECIPIENTS:
            raise MAGIC_RECIPIENTS[to_e164](code="sandbox")
        try:
            parsed = phonenumbers.parse(to_e164)
        except phonenumbers.NumberParseException as exc:
            raise InvalidRecipient(code="sandbox") from exc
        if not to_e164.startswith("+") or not phonenumbers.is_possible_number(parsed):
            raise InvalidRecipient(code="sandbox")
        if not body:
            raise SmsProviderError("The message is empty.", code="sandbox")
        message_id = "SBSM" + secrets.token_hex(12)
        self._spawn(self._lifecycle(message_id, from_e164, to_e164, body))
        return SendResult(
            provider_message_id=message_id, status="queued", cost_cents=segment_count(body) * COST_PER_SEGMENT_CENTS
        )

    async def send_mms(
        self, from_e164: str, to_e164: str, body: str, media_urls: list[str], status_callback_url: str
    ) -> SendResult:
        """An MMS in the sandbox: the text goes as an SMS would; nobody fetches the pictures."""
        return await self.send(from_e164, to_e164, body or "📎", status_callback_url)

    async def balance_cents(self) -> int | None:
        return None  # Nothing is ever charged by the sandbox.

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # --- simulation ------------------------------------------------------------------------------------------

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _emit(self, callback: Callable[[Any], Awaitable[None] | None] | None, event: object) -> None:
        if callback is None:
            return
        try:
            result = callback(event)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            # A failing consumer must not kill the simulation of other messages.
            log.exception("sandbox SMS callback failed for %s", type(event).__name__)

    async def _lifecycle(self, message_id: str, from_e164: str, to_e164: str, body: str) -> None:
        await asyncio.sleep(self.status_delay_seconds)
        await self._emit(self.on_status, StatusUpdate(message_id, "sent", provider=self.name))
        await asyncio.sleep(self.status_delay_seconds)
        if self._random.random() >= self.success_rate:
            failed = self._random.random() < 0.5
            await self._emit(
                self.on_status,
                StatusUpdate(
                    message_id,
                    "failed" if failed else "undelivered",
                    error_code=FAILED_ERROR if failed else UNDELIVERED_ERROR,
                    provider=self.name,
                ),
            )
            return
        await self._emit(self.on_status, StatusUpdate(message_id, "delivered", provider=self.name))
        if body.rstrip().endswith("?") or self._random.random() < self.reply_probability:
            await asyncio.sleep(self.reply_delay_seconds)
            reply = InboundSms(
                provider=self.name,
                provider_message_id="SBSM" + secrets.token_hex(12),
                from_e164=to_e164,
                to_e164=from_e164,
                body=self.reply_for(body),
                media_urls=(),
                received_at=utcnow(),
            )
            await self._emit(self.on_inbound, reply)

    def reply_for(self, body: str) -> str:
        """A short, plausible answer from the recipient."""
        if body.rstrip().endswith("?"):
            return self._random.choice(_QUESTION_REPLIES)
        if _GREETING.match(body):
            return self._random.choice(_GREETING_REPLIES)
        return self._random.choice(_OTHER_REPLIES)
