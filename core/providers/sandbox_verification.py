"""In-memory stand-in for TextVerified: fictional 555-01xx numbers whose SMS code arrives after a delay."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from core.providers.textverified_parse import parse_webhook_body
from core.providers.verification import (
    InsufficientBalance,
    NotAllowed,
    NotFound,
    PriceChanged,
    PriceQuote,
    ProviderError,
    ProviderSms,
    ProviderVerification,
    ServiceInfo,
    Unavailable,
    VerificationState,
    WebhookEvent,
)

log = logging.getLogger("cumapp.providers.sandbox_verification")

EventCallback = Callable[[WebhookEvent], Awaitable[None]]

# code, display name, price in cents: roughly what TextVerified charged for US non-VoIP numbers.
SANDBOX_SERVICES: tuple[tuple[str, str, int], ...] = (
    ("whatsapp", "WhatsApp", 115),
    ("google", "Google / Gmail / YouTube", 95),
    ("telegram", "Telegram", 140),
    ("facebook", "Facebook", 60),
    ("instagram", "Instagram", 75),
    ("microsoft", "Microsoft / Outlook", 50),
    ("apple", "Apple ID", 90),
    ("amazon", "Amazon", 55),
    ("uber", "Uber", 45),
    ("paypal", "PayPal", 100),
    ("discord", "Discord", 60),
    ("tiktok", "TikTok", 70),
    ("twitter", "X (Twitter)", 65),
    ("snapchat", "Snapchat", 50),
    ("tinder", "Tinder", 150),
    ("coinbase", "Coinbase", 125),
    ("binance", "Binance", 110),
    ("netflix", "Netflix", 40),
    ("airbnb", "Airbnb", 55),
    ("signal", "Signal", 85),
)

# How each service words its code SMS; {code} is six digits, {a}/{b} its two halves.
_TEMPLATES: dict[str, str] = {
    "whatsapp": "Your WhatsApp code: {a}-{b}\n\nDon't share this code with others",
    "google": "G-{code} is your Google verification code.",
    "telegram": (
        "Telegram code: {code}\n\nDo not give this code to anyone, even if they say they are from Telegram!"
    ),
    "facebook": "{code} is your Facebook confirmation code",
    "instagram": "{code} is your Instagram code. Don't share it.",
    "microsoft": "Use {code} as Microsoft account security code",
    "apple": "Your Apple ID Code is: {code}. Don't share it with anyone.",
    "amazon": "{code} is your Amazon OTP. Don't share it with anyone.",
    "uber": "Your Uber code is {code}. Never share this code.",
    "paypal": "PayPal: Your security code is {code}. Your code expires in 10 minutes. Please don't reply.",
    "discord": "Your Discord security code is: {code}",
    "tiktok": (
        "[TikTok] {code} is your verification code, valid for 5 minutes. "
        "To keep your account safe, never forward this code."
    ),
    "twitter": "Your X verification code is {code}.",
    "snapchat": "Snapchat code: {code}. Happy Snapping!",
    "tinder": "Your Tinder code is {code}. Don't share",
    "coinbase": (
        "Your Coinbase verification code is: {code}. "
        "Don't share this code with anyone; our employees will never ask for the code."
    ),
    "binance": "[Binance] Your verification code is {code}. Never share this code with anyone.",
    "netflix": "Netflix: Your code is {code}. Don't share it with anyone.",
    "airbnb": "Your Airbnb verification code is: {code}. Don't share this code with anyone.",
    "signal": "Your Signal code: {a}-{b}\nDo not share this code",
}

# Real area codes; with a 555-01xx line the number is reserved for fiction and reaches nobody.
_AREA_CODES = ("202", "212", "305", "312", "415", "512", "617", "702", "718", "786", "917", "206")

_REUSE_WINDOW = timedelta(minutes=5)


@dataclass
class _Rental:
    verification: ProviderVerification
    completed_at: datetime | None = None
    # Set once the number has moved on to a reuse/reactivation; the offers then stay off for good.
    moved_on: bool = False
    messages: list[ProviderSms] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class SandboxVerificationProvider:
    """The VerificationProvider interface in memory, for development and tests.

    Every rental gets a fictional US number; `code_delay_seconds` later an SMS with a six-digit code is
    visible in `sms()`/`details()` and `on_event` (if given) is awaited as a webhook would be. Services in
    `unavailable_services` cannot be rented; those in `timeout_services` never get an SMS and time out at
    `ends_at`. With `balance_cents` set, rentals are paid from it and fail with InsufficientBalance when it
    runs out. The same `seed` gives the same numbers and codes; ids (rentals, SMS, events) also carry a token
    unique to this instance, so a restarted process never hands out an id the database already holds.
    """

    name = "sandbox"

    def __init__(
        self,
        *,
        code_delay_seconds: float = 2.0,
        ttl_seconds: float = 900.0,
        on_event: EventCallback | None = None,
        unavailable_services: Iterable[str] = (),
        timeout_services: Iterable[str] = (),
        balance_cents: int | None = None,
        seed: int | None = 0,
        run_id: str | None = None,
    ) -> None:
        self.code_delay_seconds = code_delay_seconds
        self.ttl_seconds = ttl_seconds
        self.on_event = on_event
        self.unavailable_services: set[str] = set(unavailable_services)
        self.timeout_services: set[str] = set(timeout_services)
        self._balance_cents = balance_cents
        self._random = random.Random(seed)
        # Not from the seeded generator: two runs with the same seed must still give different ids.
        self.run_id = run_id or secrets.token_hex(4)
        self._services = {code: ServiceInfo(code=code, name=name) for code, name, _ in SANDBOX_SERVICES}
        self._prices = {code: cents for code, _, cents in SANDBOX_SERVICES}
        self._rentals: dict[str, _Rental] = {}
        self._by_key: dict[str, str] = {}
        self._numbers_in_use: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counter = 0
        self._closed = False

    # ---- interface --------------------------------------------------------------------------------------

    async def list_services(self) -> list[ServiceInfo]:
        return list(self._services.values())

    async def price(self, service: str) -> PriceQuote:
        self._check_service(service)
        return PriceQuote(service=service, cost_cents=self._prices[service])

    async def create(
        self, service: str, idempotency_key: str, *, max_cost_cents: int | None = None
    ) -> ProviderVerification:
        self._check_open()
        key = idempotency_key.strip()
        if not 1 <= len(key) <= 256:
            raise ValueError("idempotency_key must be 1 to 256 characters")
        if key in self._by_key:
            return self._rentals[self._by_key[key]].verification
        self._check_service(service)
        if service in self.unavailable_services:
            raise Unavailable(f"sandbox: {service} is configured as unavailable")
        cost = self._prices[service]
        if max_cost_cents is not None and cost > max_cost_cents:
            raise PriceChanged(f"sandbox: {service} costs {cost}, more than {max_cost_cents}")
        self._charge(cost)
        rental = self._open_rental(service, self._new_number(), cost)
        self._by_key[key] = rental.verification.id
        return rental.verification

    async def details(self, verification_id: str) -> ProviderVerification:
        return self._rental(verification_id).verification

    async def sms(self, verification_id: str) -> list[ProviderSms]:
        return list(self._rental(verification_id).messages)

    async def cancel(self, verification_id: str) -> ProviderVerification:
        rental = self._rental(verification_id)
        if not rental.verification.can_cancel:
            raise NotAllowed(f"sandbox: {verification_id} can no longer be cancelled")
        self._refund(rental.verification.cost_cents)
        self._close_rental(rental, "cancelled")
        return rental.verification

    async def report(self, verification_id: str) -> ProviderVerification:
        rental = self._rental(verification_id)
        if not rental.verification.can_report:
            raise NotAllowed(f"sandbox: {verification_id} can no longer be reported")
        if rental.verification.state == "active":
            # A report before any code arrived is the "code not received" case, which TextVerified refunds.
            self._refund(rental.verification.cost_cents)
        self._close_rental(rental, "reported")
        return rental.verification

    async def reactivate(self, verification_id: str) -> ProviderVerification:
        rental = self._rental(verification_id)
        if not self._current(rental).can_reactivate:
            raise NotAllowed(f"sandbox: {verification_id} is not eligible for reactivation")
        return self._reopen(rental)

    async def reuse(self, verification_id: str) -> ProviderVerification:
        rental = self._rental(verification_id)
        if not self._current(rental).can_reuse:
            raise NotAllowed(f"sandbox: {verification_id} is not eligible for reuse")
        return self._reopen(rental)

    async def balance_cents(self) -> int | None:
        return self._balance_cents

    def parse_webhook(self, raw_body: bytes) -> WebhookEvent:
        # The sandbox mimics TextVerified, webhooks included.
        return parse_webhook_body(raw_body)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # ---- internals --------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderError("sandbox verification provider is closed")

    def _check_service(self, service: str) -> None:
        if service not in self._services:
            raise ProviderError(f"sandbox: unknown service {service!r}", user_message="Unknown service.")

    def _rental(self, verification_id: str) -> _Rental:
        rental = self._rentals.get(verification_id)
        if rental is None:
            raise NotFound(f"sandbox: no verification {verification_id!r}")
        rental.verification = self._current(rental)
        return rental

    def _current(self, rental: _Rental) -> ProviderVerification:
        """Reuse and reactivation depend on how long ago the code arrived, so they are worked out on read."""
        verification = rental.verification
        if verification.state != "completed" or rental.completed_at is None or rental.moved_on:
            return verification
        reusable = datetime.now(UTC) < rental.completed_at + _REUSE_WINDOW
        return replace(verification, can_reuse=reusable, can_reactivate=not reusable)

    def _charge(self, cents: int) -> None:
        if self._balance_cents is None:
            return
        if self._balance_cents < cents:
            raise InsufficientBalance(f"sandbox: balance {self._balance_cents} is below {cents}")
        self._balance_cents -= cents

    def _refund(self, cents: int) -> None:
        if self._balance_cents is not None:
            self._balance_cents += cents

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self.run_id}_{self._counter:04d}"

    def _new_number(self) -> str:
        for _ in range(1000):
            number = f"+1{self._random.choice(_AREA_CODES)}55501{self._random.randrange(100):02d}"
            if number not in self._numbers_in_use:
                return number
        raise Unavailable("sandbox: every fictional number is in use")

    def _open_rental(self, service: str, number: str, cost: int) -> _Rental:
        verification = ProviderVerification(
            id=self._next_id("sbx_ver_"),
            service=service,
            number=number,
            state="active",
            ends_at=datetime.now(UTC) + timedelta(seconds=self.ttl_seconds),
            cost_cents=cost,
            can_cancel=True,
            can_report=True,
            can_reactivate=False,
            can_reuse=False,
        )
        rental = _Rental(verification=verification)
        self._rentals[verification.id] = rental
        self._numbers_in_use.add(number)
        deliver = service not in self.timeout_services
        rental.task = self._spawn(self._lifecycle(rental, deliver=deliver), verification.id)
        return rental

    def _reopen(self, rental: _Rental) -> ProviderVerification:
        self._check_open()
        old = rental.verification
        self._charge(old.cost_cents)
        rental.moved_on = True
        rental.verification = replace(old, can_reuse=False, can_reactivate=False, can_report=False)
        self._numbers_in_use.discard(old.number)
        return self._open_rental(old.service, old.number, old.cost_cents).verification

    def _close_rental(self, rental: _Rental, state: VerificationState) -> None:
        rental.verification = replace(
            rental.verification,
            state=state,
            can_cancel=False,
            can_report=False,
            can_reactivate=False,
            can_reuse=False,
        )
        self._numbers_in_use.discard(rental.verification.number)
        if rental.task is not None and rental.task is not asyncio.current_task():
            rental.task.cancel()

    def _spawn(self, coroutine: Coroutine[Any, Any, None], verification_id: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            coroutine, name=f"sandbox-verification-{verification_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _lifecycle(self, rental: _Rental, *, deliver: bool) -> None:
        verification_id = rental.verification.id
        if deliver and self.code_delay_seconds < self.ttl_seconds:
            await asyncio.sleep(self.code_delay_seconds)
            if rental.verification.state == "active":
                sms = self._receive_sms(rental)
                await self._emit(
                    WebhookEvent(self._next_id("sbx_evt_"), "sms_received", verification_id, sms)
                )
            return
        await asyncio.sleep(self.ttl_seconds)
        if rental.verification.state == "active":
            self._close_rental(rental, "timed_out")
            self._refund(rental.verification.cost_cents)
            await self._emit(
                WebhookEvent(self._next_id("sbx_evt_"), "verification_changed", verification_id, None)
            )

    def _receive_sms(self, rental: _Rental) -> ProviderSms:
        code = f"{self._random.randrange(1_000_000):06d}"
        template = _TEMPLATES.get(rental.verification.service, "Your {name} verification code is {code}.")
        text = template.format(
            code=code, a=code[:3], b=code[3:], name=self._services[rental.verification.service].name
        )
        now = datetime.now(UTC)
        sms = ProviderSms(
            id=self._next_id("sbx_sms_"),
            verification_id=rental.verification.id,
            text=text,
            parsed_code=code,
            received_at=now,
        )
        rental.messages.append(sms)
        rental.completed_at = now
        rental.verification = replace(
            rental.verification, state="completed", can_cancel=False, can_reuse=True
        )
        self._numbers_in_use.discard(rental.verification.number)
        return sms

    async def _emit(self, event: WebhookEvent) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A failing consumer must not kill the sandbox; a real webhook would simply be retried.
            log.exception("sandbox on_event callback failed for %s", event.event_key)
