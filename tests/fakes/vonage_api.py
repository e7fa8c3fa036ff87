"""A local fake of Vonage's SMS, Numbers and Account REST APIs plus builders for signed Vonage webhooks."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from core.platform.clock import utcnow
from core.providers.sms import VonageSignatureMethod, compute_vonage_signature, is_gsm7, segment_count

DEFAULT_API_KEY = "abcd1234"
DEFAULT_API_SECRET = "fake-vonage-secret"
DEFAULT_SIGNATURE_SECRET = "fake-vonage-signature-secret"
PRICE_PER_PART = "0.00750000"

# (country, E.164 prefix digits) → fictional ranges: NANP 555-01xx and Ofcom's 07700 900xxx drama range.
RANGES: dict[str, list[str]] = {
    "US": ["1415555", "1212555"],
    "CA": ["1416555"],
    "GB": ["447700900"],
}
MONTHLY_COST = {"US": "0.90", "CA": "0.90", "GB": "1.00"}


def _pool(country: str) -> list[str]:
    numbers = []
    for prefix in RANGES.get(country, []):
        if country == "GB":
            numbers += [f"{prefix}{n:03d}" for n in range(100, 200)]
        else:
            numbers += [f"{prefix}{n:04d}" for n in range(100, 200)]
    return numbers


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    authorized: bool
    basic_auth: bool


@dataclass
class SentSms:
    message_ids: list[str]
    params: dict[str, str]


@dataclass
class _Failure:
    path_contains: str
    http_status: int
    vonage_status: str | None
    error_text: str
    remaining: int


@dataclass
class FakeVonageServer:
    """Vonage's REST wire format on 127.0.0.1 at a free port; use `async with FakeVonageServer() as vonage:`.

    Set `whitelist` to a set of msisdns to behave like a trial account (status 29 for anyone else)."""

    api_key: str = DEFAULT_API_KEY
    api_secret: str = DEFAULT_API_SECRET
    signature_secret: str = DEFAULT_SIGNATURE_SECRET
    signature_method: VonageSignatureMethod = "md5hash"
    balance: float = 10.28
    whitelist: set[str] | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    sent: list[SentSms] = field(default_factory=list)
    owned: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    _failures: list[_Failure] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _client: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FakeVonageServer:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/sms/json", self._send)
        app.router.add_get("/number/search", self._search)
        app.router.add_post("/number/buy", self._buy)
        app.router.add_post("/number/update", self._update)
        app.router.add_post("/number/cancel", self._cancel)
        app.router.add_get("/account/get-balance", self._balance)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- hooks for tests -------------------------------------------------------------------------------------

    def fail_next(
        self,
        path_contains: str,
        *,
        http_status: int = 200,
        vonage_status: str | None = None,
        error_text: str = "Error",
        count: int = 1,
    ) -> None:
        """Fail the next `count` matching requests: with an SMS API `status` when `vonage_status` is set (HTTP 200,
        as Vonage does), else with `http_status` and a Numbers-API error body."""
        self._failures.append(_Failure(path_contains, http_status, vonage_status, error_text, count))

    def requests_to(self, path_contains: str) -> list[RecordedRequest]:
        return [r for r in self.requests if path_contains in r.path]

    def sign(self, params: Mapping[str, str]) -> dict[str, str]:
        return sign_params(self.signature_secret, params, self.signature_method)

    def signed_inbound(self, *, to: str, msisdn: str, text: str, message_id: str | None = None) -> dict[str, str]:
        return build_inbound(self.signature_secret, to=to, msisdn=msisdn, text=text, message_id=message_id,
                             api_key=self.api_key, method=self.signature_method)

    def signed_concat_inbound(self, *, to: str, msisdn: str, parts: list[str]) -> list[dict[str, str]]:
        return build_concat_inbound(self.signature_secret, to=to, msisdn=msisdn, parts=parts,
                                    api_key=self.api_key, method=self.signature_method)

    def signed_dlr(self, *, message_id: str, status: str, err_code: str = "0", msisdn: str | None = None,
                   to: str | None = None) -> dict[str, str]:
        sent = next((s for s in self.sent if message_id in s.message_ids), None)
        return build_dlr(
            self.signature_secret, message_id=message_id, status=status, err_code=err_code,
            msisdn=msisdn or (sent.params.get("to", "") if sent else ""),
            to=to or (sent.params.get("from", "") if sent else ""),
            api_key=self.api_key, method=self.signature_method,
        )

    async def deliver_dlr(self, message_id: str, status: str, err_code: str = "0") -> int:
        """GET a signed delivery receipt to the `callback` the message was sent with; returns HTTP status."""
        sent = next(s for s in self.sent if message_id in s.message_ids)
        callback = sent.params.get("callback")
        if not callback:
            raise ValueError(f"message {message_id} was sent without a callback")
        return await self._get(callback, self.signed_dlr(message_id=message_id, status=status, err_code=err_code))

    async def deliver_inbound(self, to: str, msisdn: str, text: str) -> int:
        """GET a signed inbound SMS to the moHttpUrl of the owned number `to` (digits); returns HTTP status."""
        number = self.owned.get(to.lstrip("+"))
        if number is None or not number.get("moHttpUrl"):
            raise ValueError(f"{to} is not an owned number with a moHttpUrl")
        return await self._get(number["moHttpUrl"], self.signed_inbound(to=to.lstrip("+"), msisdn=msisdn, text=text))

    async def _get(self, url: str, params: Mapping[str, str]) -> int:
        if self._client is None:
            self._client = aiohttp.ClientSession()
        async with self._client.get(url, params=dict(params)) as response:
            await response.read()
            return response.status

    # --- plumbing --------------------------------------------------------------------------------------------

    def _credentials(self, request: web.Request, form: Mapping[str, str]) -> tuple[bool, bool]:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False, True
            return (secrets.compare_digest(key, self.api_key) and secrets.compare_digest(secret, self.api_secret)), True
        key = form.get("api_key") or request.query.get("api_key", "")
        secret = form.get("api_secret") or request.query.get("api_secret", "")
        return (secrets.compare_digest(key, self.api_key) and secrets.compare_digest(secret, self.api_secret)), False

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        form = await _form(request)
        authorized, basic = self._credentials(request, form)
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.query), form, authorized, basic))
        is_sms = request.path == "/sms/json"
        if not authorized:
            if is_sms:
                return _sms_error("4", "Bad Credentials")
            return web.json_response({"error-code": "401", "error-code-label": "authentication failed"}, status=401)
        for failure in self._failures:
            if failure.remaining > 0 and failure.path_contains in request.path:
                failure.remaining -= 1
                if failure.vonage_status is not None:
                    return _sms_error(failure.vonage_status, failure.error_text)
                return web.json_response(
                    {"error-code": str(failure.http_status), "error-code-label": failure.error_text},
                    status=failure.http_status,
                )
        return await handler(request)

    # --- handlers --------------------------------------------------------------------------------------------

    async def _send(self, request: web.Request) -> web.Response:
        form = await _form(request)
        to, sender, text = form.get("to", ""), form.get("from", ""), form.get("text", "")
        if not to:
            return _sms_error("2", "Missing to param")
        if not sender:
            return _sms_error("2", "Missing from param")
        if not text:
            return _sms_error("2", "Missing text param")
        if not to.isdigit() or not 7 <= len(to) <= 15:
            return _sms_error("3", "Invalid to address")
        if self.whitelist is not None and to not in self.whitelist:
            return _sms_error("29", "Non White-listed Destination - rejected")
        if form.get("type", "text") == "text" and not is_gsm7(text):
            # Vonage would garble it rather than refuse; a test should notice the missing type=unicode.
            return _sms_error("3", "Invalid text param: non-GSM characters without type=unicode")
        parts = segment_count(text)
        ids = [secrets.token_hex(8).upper() for _ in range(parts)]
        self.sent.append(SentSms(ids, form))
        self.balance -= float(PRICE_PER_PART) * parts
        messages = [
            {
                "to": to,
                "message-id": message_id,
                "status": "0",
                "remaining-balance": f"{self.balance:.8f}",
                "message-price": PRICE_PER_PART,
                "network": "310260",
            }
            for message_id in ids
        ]
        return web.json_response({"message-count": str(parts), "messages": messages})

    async def _search(self, request: web.Request) -> web.Response:
        country = request.query.get("country", "").upper()
        pool = [n for n in _pool(country) if n not in self.owned]
        pattern = request.query.get("pattern", "")
        mode = request.query.get("search_pattern", "0")
        if pattern:
            if mode == "0":
                pool = [n for n in pool if n.startswith(pattern)]
            elif mode == "1":
                pool = [n for n in pool if pattern in n]
            else:
                pool = [n for n in pool if n.endswith(pattern)]
        size = int(request.query.get("size", "10"))
        numbers = [
            {"country": country, "msisdn": n, "type": "mobile-lvn", "cost": MONTHLY_COST[country], "features": ["SMS", "VOICE"]}
            for n in pool[:size]
        ]
        return web.json_response({"count": len(pool), "numbers": numbers})

    async def _buy(self, request: web.Request) -> web.Response:
        form = await _form(request)
        msisdn, country = form.get("msisdn", ""), form.get("country", "").upper()
        if msisdn in self.owned or msisdn not in _pool(country):
            return _method_failed()
        self.owned[msisdn] = {"country": country, "msisdn": msisdn, "moHttpUrl": None, "type": "mobile-lvn"}
        return web.json_response({"error-code": "200", "error-code-label": "success"})

    async def _update(self, request: web.Request) -> web.Response:
        form = await _form(request)
        number = self.owned.get(form.get("msisdn", ""))
        if number is None:
            return _method_failed()
        if "moHttpUrl" in form:
            number["moHttpUrl"] = form["moHttpUrl"] or None
        return web.json_response({"error-code": "200", "error-code-label": "success"})

    async def _cancel(self, request: web.Request) -> web.Response:
        form = await _form(request)
        msisdn = form.get("msisdn", "")
        if self.owned.pop(msisdn, None) is None:
            return _method_failed()
        self.cancelled.append(msisdn)
        return web.json_response({"error-code": "200", "error-code-label": "success"})

    async def _balance(self, request: web.Request) -> web.Response:
        return web.json_response({"value": round(self.balance, 8), "autoReload": False})


async def _form(request: web.Request) -> dict[str, str]:
    if request.method not in ("POST", "PUT"):
        return {}
    if request.content_type == "application/json":
        data = await request.json()
        return {k: str(v) for k, v in data.items()}
    return {k: str(v) for k, v in (await request.post()).items()}


def _sms_error(status: str, text: str) -> web.Response:
    return web.json_response({"message-count": "1", "messages": [{"status": status, "error-text": text}]})


def _method_failed() -> web.Response:
    return web.json_response({"error-code": "420", "error-code-label": "method failed"}, status=420)


# --- signed webhooks, usable without a running server --------------------------------------------------------


def sign_params(secret: str, params: Mapping[str, str], method: VonageSignatureMethod = "md5hash") -> dict[str, str]:
    """Add `timestamp` (if missing), `nonce` and `sig` the way Vonage signs webhooks."""
    signed = dict(params)
    signed.setdefault("timestamp", str(int(time.time())))
    signed.setdefault("nonce", secrets.token_hex(8))
    signed["sig"] = compute_vonage_signature(secret, signed, method)
    return signed


def _timestamp() -> str:
    return utcnow().strftime("%Y-%m-%d %H:%M:%S")


def build_inbound(
    secret: str,
    *,
    to: str,
    msisdn: str,
    text: str,
    message_id: str | None = None,
    api_key: str = DEFAULT_API_KEY,
    method: VonageSignatureMethod = "md5hash",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Vonage's inbound SMS webhook params (to = our number, msisdn = sender, both digits without "+")."""
    params = {
        "msisdn": msisdn.lstrip("+"),
        "to": to.lstrip("+"),
        "messageId": message_id or secrets.token_hex(8).upper(),
        "text": text,
        "type": "text" if is_gsm7(text) else "unicode",
        "keyword": (text.split() or [""])[0].upper(),
        "api-key": api_key,
        "message-timestamp": _timestamp(),
        **(extra or {}),
    }
    return sign_params(secret, params, method)


def build_concat_inbound(
    secret: str,
    *,
    to: str,
    msisdn: str,
    parts: list[str],
    api_key: str = DEFAULT_API_KEY,
    method: VonageSignatureMethod = "md5hash",
) -> list[dict[str, str]]:
    """One signed webhook per part of a long inbound text, sharing a concat-ref, as Vonage delivers them."""
    ref = str(secrets.randbelow(250) + 1)
    return [
        build_inbound(
            secret, to=to, msisdn=msisdn, text=part, api_key=api_key, method=method,
            extra={"concat": "true", "concat-ref": ref, "concat-total": str(len(parts)), "concat-part": str(index)},
        )
        for index, part in enumerate(parts, start=1)
    ]


def build_dlr(
    secret: str,
    *,
    message_id: str,
    status: str,
    msisdn: str,
    to: str,
    err_code: str = "0",
    price: str = PRICE_PER_PART,
    api_key: str = DEFAULT_API_KEY,
    method: VonageSignatureMethod = "md5hash",
) -> dict[str, str]:
    """Vonage's delivery receipt params (msisdn = the recipient, to = our sending number)."""
    params = {
        "msisdn": msisdn.lstrip("+"),
        "to": to.lstrip("+"),
        "network-code": "310260",
        "messageId": message_id,
        "price": price,
        "status": status,
        "scts": utcnow().strftime("%y%m%d%H%M"),
        "err-code": err_code,
        "api-key": api_key,
        "message-timestamp": _timestamp(),
    }
    return sign_params(secret, params, method)
