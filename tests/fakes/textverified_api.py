"""A local TextVerified API v2 stand-in (aiohttp on 127.0.0.1) with hooks to script SMS, errors and delays."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import ClientSession, web
from multidict import CIMultiDict

from core.providers.verification import sign_webhook

API = "/api/pub/v2"

DEFAULT_SERVICES: dict[str, tuple[str, float]] = {
    "whatsapp": ("WhatsApp", 1.15),
    "google": ("Google / Gmail / Youtube", 0.95),
    "telegram": ("Telegram", 1.40),
    "facebook": ("Facebook", 0.29),
    "discord": ("Discord", 0.60),
}


@dataclass
class RecordedRequest:
    """One request the fake received (auth included), in arrival order."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    json: Any
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeSms:
    id: str
    verification_id: str
    to: str
    text: str
    parsed_code: str | None
    created_at: datetime
    sender: str = "22000"


@dataclass
class FakeVerification:
    """Server-side state of one verification; tests may edit the fields directly."""

    id: str
    service: str
    number: str
    cost: float
    created_at: datetime
    ends_at: datetime
    state: str = "verificationPending"
    can_cancel: bool = True
    can_report: bool = True
    can_reactivate: bool = False
    reusable_until: datetime | None = None
    sms: list[FakeSms] = field(default_factory=list)


@dataclass
class _Rule:
    path_contains: str
    method: str | None
    count: int
    status: int = 0
    headers: dict[str, str] | None = None
    body: Any = None
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.count > 0 and self.path_contains in path and (self.method is None or self.method == method)
        )


class FakeTextVerifiedServer:
    """Speaks the TextVerified v2 wire format on 127.0.0.1:<free port>.

    `async with FakeTextVerifiedServer() as fake:` then point a client at `fake.url` with
    `fake.api_key` / `fake.username`. Money on the wire is float dollars, numbers are 10 US digits,
    lists are paginated with `data`, `hasNext` and `links.next`, exactly like the real API.
    """

    def __init__(
        self,
        *,
        api_key: str = "tv-test-key-0123456789",
        username: str = "bot@example.com",
        token_ttl: float = 900.0,
        page_size: int = 20,
        balance: float = 12.34,
        services: dict[str, tuple[str, float]] | None = None,
        unavailable_services: set[str] | None = None,
        verification_ttl: float = 900.0,
        reuse_window: float = 300.0,
        reactivate_after_reuse: bool = True,
    ) -> None:
        self.api_key = api_key
        self.username = username
        self.token_ttl = token_ttl
        self.page_size = page_size
        self.balance = balance
        self.services = dict(services or DEFAULT_SERVICES)
        self.unavailable_services = set(unavailable_services or ())
        self.verification_ttl = verification_ttl
        self.reuse_window = reuse_window
        # As on TextVerified: once a completed verification can no longer be reused, it can be reactivated.
        self.reactivate_after_reuse = reactivate_after_reuse
        # Seconds added before every answer (after the work is done, as when a response is lost in transit).
        self.delay = 0.0
        self.requests: list[RecordedRequest] = []
        self.verifications: dict[str, FakeVerification] = {}
        self.idempotency: dict[str, str] = {}
        self.tokens: dict[str, datetime] = {}
        self.unauthorized_count = 0
        self._rules: list[_Rule] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- lifecycle --------------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeTextVerifiedServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(f"{API}/auth", self._auth)
        app.router.add_get(f"{API}/account/me", self._account)
        app.router.add_get(f"{API}/services", self._services)
        app.router.add_post(f"{API}/pricing/verifications", self._pricing)
        app.router.add_post(f"{API}/verifications", self._create)
        app.router.add_get(f"{API}/verifications/{{id}}", self._details)
        app.router.add_post(f"{API}/verifications/{{id}}/cancel", self._cancel)
        app.router.add_post(f"{API}/verifications/{{id}}/report", self._report)
        app.router.add_post(f"{API}/verifications/{{id}}/reactivate", self._reactivate)
        app.router.add_post(f"{API}/verifications/{{id}}/reuse", self._reuse)
        app.router.add_get(f"{API}/sms", self._sms)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- test hooks -------------------------------------------------------------------------------------

    def fail_next(
        self,
        path_contains: str,
        status: int,
        count: int = 1,
        headers: dict[str, str] | None = None,
        body: Any = None,
        *,
        method: str | None = None,
    ) -> None:
        """The next `count` requests whose path contains `path_contains` get `status` instead of being served.

        `body` may be a dict/list (sent as JSON), a str (sent as text) or None (empty body).
        """
        self._rules.append(_Rule(path_contains, method, count, status=status, headers=headers, body=body))

    def delay_next(
        self, path_contains: str, seconds: float, count: int = 1, *, method: str | None = None
    ) -> None:
        """Serve the next `count` matching requests normally but hold the answer back for `seconds`."""
        self._rules.append(_Rule(path_contains, method, count, delay=seconds))

    def revoke_tokens(self) -> None:
        """Invalidate every issued bearer token (the next call answers 401)."""
        self.tokens.clear()

    def deliver_sms(self, verification_id: str, text: str, parsed_code: str | None = None) -> FakeSms:
        """An SMS arrives on the verification's number; a pending verification becomes completed."""
        verification = self.verifications[verification_id]
        now = self._now()
        if verification.sms and now <= verification.sms[-1].created_at:
            now = verification.sms[-1].created_at + timedelta(microseconds=1)
        sms = FakeSms(
            id=f"sms_{next(self._ids):06d}",
            verification_id=verification_id,
            to=verification.number,
            text=text,
            parsed_code=parsed_code,
            created_at=now,
        )
        verification.sms.append(sms)
        if verification.state == "verificationPending":
            verification.state = "verificationCompleted"
            verification.can_cancel = False
            verification.reusable_until = now + timedelta(seconds=self.reuse_window)
        return sms

    def set_state(self, verification_id: str, state: str, **flags: Any) -> None:
        """Force a TextVerified state (e.g. "verificationTimedOut"); `flags` override can_cancel, can_report,
        can_reactivate or reusable_until, otherwise they follow the state."""
        verification = self.verifications[verification_id]
        verification.state = state
        open_state = state == "verificationPending"
        verification.can_cancel = open_state and not verification.sms
        verification.can_report = open_state or state == "verificationCompleted"
        verification.can_reactivate = False
        verification.reusable_until = None
        for name, value in flags.items():
            if not hasattr(verification, name):
                raise AttributeError(name)
            setattr(verification, name, value)

    def requests_to(self, path_contains: str, method: str | None = None) -> list[RecordedRequest]:
        return [
            r for r in self.requests if path_contains in r.path and (method is None or r.method == method)
        ]

    @staticmethod
    def sign(secret: str, body: bytes) -> str:
        """The `X-Webhook-Signature` header value TextVerified would send for `body`."""
        return sign_webhook(secret, body)

    def webhook_payload(
        self,
        verification_id: str,
        text: str,
        parsed_code: str | None = None,
        *,
        event_id: str | None = None,
        attempt: int = 1,
        to: str | None = None,
        created_at: datetime | None = None,
    ) -> bytes:
        """Raw body of a `v2.sms.received` webhook for `verification_id` (no running server needed)."""
        verification = self.verifications.get(verification_id)
        moment = created_at or self._now()
        event_id = event_id or f"evt_{secrets.token_hex(8)}"
        envelope = {
            "attempt": attempt,
            "occurredAt": _iso(moment),
            "data": {
                "from": "22000",
                "to": to or (verification.number if verification else "2025550123"),
                "createdAt": _iso(moment),
                "smsContent": text,
                "parsedCode": parsed_code,
                "encrypted": False,
                "reservationId": verification_id,
            },
            "event": "v2.sms.received",
            "id": event_id,
            "idempotencyKey": f"whk_{event_id}",
        }
        return json.dumps(envelope, separators=(",", ":")).encode("utf-8")

    @staticmethod
    async def post_webhook(url: str, secret: str, body: bytes) -> int:
        """POST a signed webhook body to a local endpoint the way TextVerified would; returns the status."""
        headers = {"Content-Type": "application/json", "X-Webhook-Signature": sign_webhook(secret, body)}
        async with ClientSession() as session, session.post(url, data=body, headers=headers) as response:
            return response.status

    # ---- plumbing ---------------------------------------------------------------------------------------

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC)

    def _take_rule(self, method: str, path: str, *, delay: bool) -> _Rule | None:
        for rule in self._rules:
            if (rule.delay > 0) == delay and rule.matches(method, path):
                rule.count -= 1
                return rule
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=CIMultiDict(request.headers),
                json=body,
            )
        )
        failure = self._take_rule(request.method, request.path, delay=False)
        delayed = self._take_rule(request.method, request.path, delay=True)
        if failure is not None:
            response = _scripted_response(failure)
        elif request.path != f"{API}/auth" and not self._authorized(request):
            self.unauthorized_count += 1
            response = web.Response(status=401)
        else:
            response = await handler(request)
        pause = self.delay + (delayed.delay if delayed else 0.0)
        if pause > 0:
            await asyncio.sleep(pause)
        return response

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        expires = self.tokens.get(header[len("Bearer ") :])
        return expires is not None and expires > self._now()

    def _verification_or_404(self, request: web.Request) -> FakeVerification:
        verification = self.verifications.get(request.match_info["id"])
        if verification is None:
            raise web.HTTPNotFound()
        return verification

    def _link(self, path: str, method: str = "GET") -> dict[str, str]:
        # Absolute, like the real API, so clients must handle full URLs.
        return {"method": method, "href": f"{self.url}{path}"}

    def _expanded(self, verification: FakeVerification) -> dict[str, Any]:
        base = f"{API}/verifications/{verification.id}"
        return {
            "number": verification.number,
            "sms": self._link(f"{API}/sms?reservationId={verification.id}"),
            "calls": self._link(f"{API}/calls?reservationId={verification.id}"),
            "createdAt": _iso(verification.created_at),
            "endsAt": _iso(verification.ends_at),
            "id": verification.id,
            "cancel": {"canCancel": verification.can_cancel, "link": self._link(f"{base}/cancel", "POST")},
            "reactivate": {
                "canReactivate": self._can_reactivate(verification),
                "link": self._link(f"{base}/reactivate", "POST"),
            },
            "report": {"canReport": verification.can_report, "link": self._link(f"{base}/report", "POST")},
            "reuse": {
                "link": self._link(f"{base}/reuse", "POST"),
                "reusableUntil": _iso(verification.reusable_until) if verification.reusable_until else None,
            },
            "sale": self._link(f"{API}/sales/sale_{verification.id}"),
            "serviceName": verification.service,
            "state": verification.state,
            "totalCost": verification.cost,
        }

    def _can_reactivate(self, verification: FakeVerification) -> bool:
        expired_reuse = verification.reusable_until is not None and verification.reusable_until <= self._now()
        return verification.can_reactivate or (
            self.reactivate_after_reuse and verification.state == "verificationCompleted" and expired_reuse
        )

    def _new_verification(self, service: str, number: str | None = None) -> FakeVerification:
        n = next(self._ids)
        now = self._now()
        verification = FakeVerification(
            id=f"lr_{n:012d}",
            service=service,
            number=number or f"20255501{n % 100:02d}",
            cost=self.services[service][1],
            created_at=now,
            ends_at=now + timedelta(seconds=self.verification_ttl),
        )
        self.verifications[verification.id] = verification
        return verification

    def _created(self, verification: FakeVerification) -> web.Response:
        link = self._link(f"{API}/verifications/{verification.id}")
        return web.json_response(link, status=201, headers={"Location": link["href"]})

    # ---- handlers ---------------------------------------------------------------------------------------

    async def _auth(self, request: web.Request) -> web.Response:
        if (
            request.headers.get("X-API-KEY") != self.api_key
            or request.headers.get("X-API-USERNAME") != self.username
        ):
            return web.Response(status=401)
        token = "eyJh" + secrets.token_urlsafe(24)
        expires_at = self._now() + timedelta(seconds=self.token_ttl)
        self.tokens[token] = expires_at
        return web.json_response({"token": token, "expiresIn": self.token_ttl, "expiresAt": _iso(expires_at)})

    async def _account(self, request: web.Request) -> web.Response:
        return web.json_response({"username": self.username, "currentBalance": self.balance})

    async def _services(self, request: web.Request) -> web.Response:
        if not request.query.get("numberType") or not request.query.get("reservationType"):
            return _error(400, "InvalidRequest", "numberType and reservationType are required.")
        return web.json_response(
            [
                {"serviceName": code, "description": name, "capability": "sms"}
                for code, (name, _price) in self.services.items()
            ]
        )

    async def _pricing(self, request: web.Request) -> web.Response:
        body = await request.json()
        required = ("serviceName", "areaCode", "carrier", "numberType", "capability")
        if not isinstance(body, dict) or any(body.get(key) is None for key in required):
            return _error(
                400,
                "InvalidRequest",
                "serviceName, areaCode, carrier, numberType and capability are required.",
            )
        if body["serviceName"] not in self.services:
            return _error(400, "InvalidService", "Unsupported service and option combination.")
        return web.json_response(
            {"serviceName": body["serviceName"], "price": self.services[body["serviceName"]][1]}
        )

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or not body.get("serviceName") or not body.get("capability"):
            return _error(400, "InvalidRequest", "serviceName and capability are required.")
        key = (request.headers.get("Idempotency-Key") or "").strip()
        if key and key in self.idempotency:
            return self._created(self.verifications[self.idempotency[key]])
        service = body["serviceName"]
        if service not in self.services:
            return _error(400, "InvalidService", "Unsupported service.")
        if service in self.unavailable_services:
            return _error(400, "Unavailable", "No numbers are available for this service right now.")
        price = self.services[service][1]
        if body.get("maxPrice") is not None and float(body["maxPrice"]) < price:
            return _error(400, "PricingFailure", "The price exceeds maxPrice.")
        if self.balance < price:
            return _error(400, "InsufficientBalance", "Insufficient balance.")
        self.balance = round(self.balance - price, 2)
        verification = self._new_verification(service)
        if key:
            self.idempotency[key] = verification.id
        return self._created(verification)

    async def _details(self, request: web.Request) -> web.Response:
        return web.json_response(self._expanded(self._verification_or_404(request)))

    async def _cancel(self, request: web.Request) -> web.Response:
        verification = self._verification_or_404(request)
        if not verification.can_cancel:
            return _error(400, "ProcessingError", "This verification does not allow cancellation.")
        self.set_state(verification.id, "verificationCanceled")
        self.balance = round(self.balance + verification.cost, 2)
        return web.Response(status=200)

    async def _report(self, request: web.Request) -> web.Response:
        verification = self._verification_or_404(request)
        if not verification.can_report:
            return _error(400, "ProcessingError", "This verification does not allow reporting.")
        self.set_state(verification.id, "verificationReported")
        return web.Response(status=200)

    async def _reactivate(self, request: web.Request) -> web.Response:
        verification = self._verification_or_404(request)
        if not self._can_reactivate(verification):
            return _error(400, "ProcessingError", "This verification is not eligible for reactivation.")
        return self._again(verification, "verificationReactivated")

    async def _reuse(self, request: web.Request) -> web.Response:
        verification = self._verification_or_404(request)
        if verification.reusable_until is None or verification.reusable_until <= self._now():
            return _error(400, "ProcessingError", "This verification is not eligible for reuse.")
        return self._again(verification, "verificationReused")

    def _again(self, verification: FakeVerification, state: str) -> web.Response:
        """Reuse or reactivation: the number moves to a new verification, paid like a new one."""
        price = self.services[verification.service][1]
        if self.balance < price:
            return _error(400, "InsufficientBalance", "Insufficient balance.")
        self.balance = round(self.balance - price, 2)
        self.set_state(verification.id, state)
        return self._created(self._new_verification(verification.service, verification.number))

    async def _sms(self, request: web.Request) -> web.Response:
        reservation_id = request.query.get("reservationId")
        to = request.query.get("to")
        messages = [
            sms
            for verification in self.verifications.values()
            for sms in verification.sms
            if (reservation_id is None or sms.verification_id == reservation_id)
            and (to is None or sms.to == to)
        ]
        # "Your latest SMS": newest first.
        messages.sort(key=lambda sms: sms.created_at, reverse=True)
        page = int(request.query.get("page", "1"))
        start = (page - 1) * self.page_size
        chunk = messages[start : start + self.page_size]
        has_next = start + self.page_size < len(messages)

        def page_link(number: int) -> dict[str, str]:
            query = "&".join(f"{k}={v}" for k, v in request.query.items() if k != "page")
            return self._link(f"{API}/sms?{query}&page={number}" if query else f"{API}/sms?page={number}")

        return web.json_response(
            {
                "data": [
                    {
                        "id": sms.id,
                        "from": sms.sender,
                        "to": sms.to,
                        "createdAt": _iso(sms.created_at),
                        "smsContent": sms.text,
                        "parsedCode": sms.parsed_code,
                        "encrypted": False,
                    }
                    for sms in chunk
                ],
                "hasNext": has_next,
                "hasPrevious": page > 1,
                "count": len(messages),
                "links": {
                    "current": page_link(page),
                    "previous": page_link(page - 1) if page > 1 else None,
                    "next": page_link(page + 1) if has_next else None,
                },
            }
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _error(status: int, code: str, description: str) -> web.Response:
    return web.json_response({"errorCode": code, "errorDescription": description}, status=status)


def _scripted_response(rule: _Rule) -> web.Response:
    headers = dict(rule.headers or {})
    if rule.body is None:
        return web.Response(status=rule.status, headers=headers)
    if isinstance(rule.body, str):
        return web.Response(status=rule.status, text=rule.body, headers=headers)
    return web.json_response(rule.body, status=rule.status, headers=headers)
