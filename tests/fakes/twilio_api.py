"""A local fake of Twilio's REST API (the calls CumApp makes) plus builders for signed Twilio webhooks."""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from core.platform.clock import utcnow

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token"
API_VERSION = "2010-04-01"

# Twilio's documented magic "To" numbers for test credentials, with the error each one triggers.
MAGIC_TO_ERRORS: dict[str, int] = {
    "+15005550001": 21211,
    "+15005550002": 21612,
    "+15005550003": 21408,
    "+15005550004": 21610,
    "+15005550009": 21614,
}

ERROR_MESSAGES: dict[int, str] = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    21211: "Invalid 'To' Phone Number",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number",
    21422: "PhoneNumber provided is not available",
    21602: "Message body is required.",
    21608: "The number is unverified. Trial accounts cannot send messages to unverified numbers.",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number is not currently reachable via SMS",
    21614: "'To' number is not a valid mobile number",
}

AREA_CODES: dict[str, list[tuple[str, str, str]]] = {
    # (area code, locality, region); 555-01xx numbers are reserved as fictional.
    "US": [("415", "San Francisco", "CA"), ("212", "New York", "NY"), ("312", "Chicago", "IL")],
    "CA": [("416", "Toronto", "ON"), ("604", "Vancouver", "BC")],
}
LOCAL_PRICES = {"US": "1.15", "CA": "1.15"}

MEDIA_STORAGE = "/media-storage"  # where media URLs redirect to, as Twilio's redirect to its storage
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


async def _form(request: web.Request) -> dict[str, str]:
    # aiohttp caches the parsed body, so the middleware and the handler can both read it.
    return {k: str(v) for k, v in (await request.post()).items()}


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _rfc2822_now() -> str:
    return format_datetime(utcnow(), usegmt=True)


@dataclass
class RecordedRequest:
    """One request the fake received, as the test may want to inspect it."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    host: str
    authorized: bool


@dataclass
class SignedWebhook:
    """A webhook request exactly as Twilio would make it: POST form params plus X-Twilio-Signature."""

    url: str
    params: dict[str, str]
    headers: dict[str, str]
    method: str = "POST"

    @property
    def body(self) -> bytes:
        return urlencode(self.params).encode()

    @property
    def signature(self) -> str:
        return self.headers["X-Twilio-Signature"]


@dataclass
class _Failure:
    path_contains: str
    status: int
    code: int | None
    remaining: int
    message: str | None


@dataclass
class FakeTwilioServer:
    """Twilio's REST wire format on 127.0.0.1 at a free port; use `async with FakeTwilioServer() as twilio:`.

    Set `verified_numbers` to a set to behave like a trial account (21608 for anyone else), and
    `message_price` (e.g. "-0.00790") to have created messages carry a price, which real Twilio rarely does."""

    account_sid: str = DEFAULT_ACCOUNT_SID
    auth_token: str = DEFAULT_AUTH_TOKEN
    balance: str = "20.00"
    currency: str = "USD"
    verified_numbers: set[str] | None = None
    message_price: str | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    incoming_numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    released_numbers: list[str] = field(default_factory=list)
    # Media of inbound MMS by media sid: (content, content type), served behind the account's auth (add_media).
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    # Voicemail recordings by RecordingSid: MP3 bytes served at Recordings/<sid>.mp3, behind basic auth.
    recordings: dict[str, bytes] = field(default_factory=dict)
    _failures: list[_Failure] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _client: aiohttp.ClientSession | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeTwilioServer:
        app = web.Application(middlewares=[self._middleware])
        prefix = f"/{API_VERSION}/Accounts/{{account}}"
        app.router.add_post(f"{prefix}/Messages.json", self._create_message)
        app.router.add_get(f"{prefix}/Messages/{{sid}}.json", self._fetch_message)
        app.router.add_get(f"{prefix}/AvailablePhoneNumbers/{{country}}/Local.json", self._available_local)
        app.router.add_post(f"{prefix}/IncomingPhoneNumbers.json", self._buy_number)
        app.router.add_get(f"{prefix}/IncomingPhoneNumbers.json", self._list_numbers)
        app.router.add_delete(f"{prefix}/IncomingPhoneNumbers/{{sid}}.json", self._release_number)
        app.router.add_post(f"{prefix}/IncomingPhoneNumbers/{{sid}}.json", self._update_number)
        app.router.add_get(f"{prefix}/Recordings/{{sid}}.mp3", self._recording_mp3)
        app.router.add_get(f"{prefix}/Balance.json", self._balance)
        app.router.add_get(f"{prefix}/Messages/{{sid}}/Media/{{media}}", self._media_redirect)
        app.router.add_get(f"{MEDIA_STORAGE}/{{media}}", self._media_content)
        app.router.add_get("/v1/PhoneNumbers/Countries/{country}", self._pricing)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
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
        self, path_contains: str, status: int, code: int | None = None, count: int = 1, message: str | None = None
    ) -> None:
        """Answer the next `count` requests whose path contains `path_contains` with a Twilio error body."""
        self._failures.append(_Failure(path_contains, status, code, count, message))

    def add_media(self, content: bytes, content_type: str = "image/jpeg") -> str:
        """Media of an inbound MMS; returns the URL Twilio puts in MediaUrl<N> (api.twilio.com: the client rebases
        it onto this server). Fetching it needs the account's basic auth and is redirected, as at Twilio, to
        storage that needs none."""
        media_sid = _sid("ME")
        self.media[media_sid] = (content, content_type)
        return f"https://api.twilio.com/{API_VERSION}/Accounts/{self.account_sid}/Messages/{_sid('MM')}/Media/{media_sid}"

    def requests_to(self, path_contains: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if path_contains in r.path and (method is None or r.method == method)]

    def signed_inbound(
        self,
        url: str,
        *,
        from_: str,
        to: str,
        body: str,
        media: Iterable[tuple[str, str]] = (),
        message_sid: str | None = None,
    ) -> SignedWebhook:
        return build_inbound_webhook(
            self.auth_token, url, account_sid=self.account_sid, from_=from_, to=to, body=body, media=media,
            message_sid=message_sid,
        )

    def signed_status(
        self,
        url: str,
        *,
        message_sid: str,
        status: str,
        error_code: int | str | None = None,
        from_: str | None = None,
        to: str | None = None,
    ) -> SignedWebhook:
        message = self.messages.get(message_sid, {})
        return build_status_webhook(
            self.auth_token, url, account_sid=self.account_sid, message_sid=message_sid, status=status,
            error_code=error_code, from_=from_ or message.get("from", "+15550000000"), to=to or message.get("to", ""),
        )

    async def deliver_status(self, message_sid: str, status: str, error_code: int | str | None = None) -> int:
        """POST a signed status callback to the StatusCallback the message was created with; returns HTTP status."""
        message = self.messages[message_sid]
        callback = message["_status_callback"]
        if not callback:
            raise ValueError(f"message {message_sid} was created without a StatusCallback")
        message["status"] = status
        return await self._post(self.signed_status(callback, message_sid=message_sid, status=status, error_code=error_code))

    async def deliver_inbound(
        self, to: str, from_: str, body: str, media: Iterable[tuple[str, str]] = ()
    ) -> int:
        """POST a signed incoming-message webhook to the SmsUrl of the owned number `to`; returns HTTP status."""
        number = next((n for n in self.incoming_numbers.values() if n["phone_number"] == to), None)
        if number is None or not number.get("sms_url"):
            raise ValueError(f"{to} is not an owned number with an SmsUrl")
        return await self._post(self.signed_inbound(number["sms_url"], from_=from_, to=to, body=body, media=media))

    # --- calls and voicemail ----------------------------------------------------------------------------------

    def signed_call(self, url: str, *, from_: str, to: str, call_sid: str | None = None) -> SignedWebhook:
        return build_call_webhook(self.auth_token, url, account_sid=self.account_sid, from_=from_, to=to,
                                  call_sid=call_sid)

    def signed_recording(
        self, url: str, *, call_sid: str, recording_sid: str, duration: int, status: str | None = "completed"
    ) -> SignedWebhook:
        return build_recording_webhook(
            self.auth_token, url, account_sid=self.account_sid, call_sid=call_sid, recording_sid=recording_sid,
            duration=duration, status=status,
        )

    def add_recording(self, audio: bytes) -> str:
        """Store a voicemail; returns its RecordingSid (served at Recordings/<sid>.mp3)."""
        sid = _sid("RE")
        self.recordings[sid] = audio
        return sid

    async def deliver_call(self, to: str, from_: str, call_sid: str | None = None) -> tuple[int, str]:
        """POST a signed voice webhook to the VoiceUrl of the owned number `to`; returns (HTTP status, TwiML)."""
        number = next((n for n in self.incoming_numbers.values() if n["phone_number"] == to), None)
        if number is None or not number.get("voice_url"):
            raise ValueError(f"{to} is not an owned number with a VoiceUrl")
        return await self.post_text(self.signed_call(number["voice_url"], from_=from_, to=to, call_sid=call_sid))

    async def post_text(self, hook: SignedWebhook) -> tuple[int, str]:
        """POST any webhook; returns (HTTP status, body)."""
        if self._client is None:
            self._client = aiohttp.ClientSession()
        async with self._client.post(hook.url, data=hook.params, headers=hook.headers) as response:
            return response.status, await response.text()

    async def _post(self, hook: SignedWebhook) -> int:
        if self._client is None:
            self._client = aiohttp.ClientSession()
        async with self._client.post(hook.url, data=hook.params, headers=hook.headers) as response:
            await response.read()
            return response.status

    # --- plumbing --------------------------------------------------------------------------------------------

    def _error(self, status: int, code: int | None, message: str | None = None) -> web.Response:
        code = code if code is not None else status
        return web.json_response(
            {
                "code": code,
                "message": message or ERROR_MESSAGES.get(code, "Error"),
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status=status,
        )

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(password, self.auth_token)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        form: dict[str, str] = {}
        if request.method in ("POST", "PUT") and request.content_type == "application/x-www-form-urlencoded":
            form = await _form(request)
        authorized = self._authorized(request)
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), form, request.host, authorized)
        )
        if not authorized and not request.path.startswith(f"{MEDIA_STORAGE}/"):
            return self._error(401, 20003)
        account = request.match_info.get("account")
        if account is not None and account != self.account_sid:
            return self._error(404, 20404)
        for failure in self._failures:
            if failure.remaining > 0 and failure.path_contains in request.path:
                failure.remaining -= 1
                return self._error(failure.status, failure.code, failure.message)
        return await handler(request)

    def _message_json(self, message: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in message.items() if not k.startswith("_")}

    # --- handlers --------------------------------------------------------------------------------------------

    async def _create_message(self, request: web.Request) -> web.Response:
        form = await _form(request)
        to, from_, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not _E164.match(to):
            return self._error(400, 21211)
        if to in MAGIC_TO_ERRORS:
            return self._error(400, MAGIC_TO_ERRORS[to])
        if self.verified_numbers is not None and to not in self.verified_numbers:
            return self._error(400, 21608)
        media_urls = [str(url) for url in (await request.post()).getall("MediaUrl", [])]
        if not body and not media_urls:
            return self._error(400, 21602)
        if len(body) > 1600:
            return self._error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        sid = _sid("SM")
        now = _rfc2822_now()
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        message = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": self.message_price,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": to,
            "uri": uri,
            "_status_callback": form.get("StatusCallback"),
            # Twilio fetches each MediaUrl when the message is created; so does the fake, to prove it fetchable.
            "_media": [await self._fetch_media_url(url) for url in media_urls],
        }
        message["num_media"] = str(len(media_urls))
        self.messages[sid] = message
        return web.json_response(self._message_json(message), status=201)

    async def _fetch_media_url(self, url: str) -> dict[str, Any]:
        if self._client is None:
            self._client = aiohttp.ClientSession()
        try:
            async with self._client.get(url) as response:
                return {"url": url, "status": response.status, "content": await response.read(),
                        "content_type": response.content_type}
        except aiohttp.ClientError as error:
            return {"url": url, "status": 0, "content": b"", "content_type": "", "error": repr(error)}

    async def _media_redirect(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["media"] not in self.media:
            return self._error(404, 20404)
        raise web.HTTPTemporaryRedirect(f"{MEDIA_STORAGE}/{request.match_info['media']}")

    async def _media_content(self, request: web.Request) -> web.Response:
        found = self.media.get(request.match_info["media"])
        if found is None:
            return web.Response(status=404)
        return web.Response(body=found[0], content_type=found[1])

    async def _fetch_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["sid"])
        if message is None:
            return self._error(404, 20404)
        return web.json_response(self._message_json(message))

    def _pool(self, country: str) -> list[dict[str, Any]]:
        owned = {n["phone_number"] for n in self.incoming_numbers.values()}
        pool = []
        for area, locality, region in AREA_CODES.get(country, []):
            for line in range(100, 200):
                e164 = f"+1{area}555{line:04d}"
                if e164 in owned:
                    continue
                pool.append(
                    {
                        "friendly_name": f"({area}) 555-{line:04d}",
                        "phone_number": e164,
                        "lata": None,
                        "locality": locality,
                        "rate_center": locality.upper(),
                        "latitude": None,
                        "longitude": None,
                        "region": region,
                        "postal_code": None,
                        "iso_country": country,
                        "address_requirements": "none",
                        "beta": False,
                        "capabilities": {"voice": True, "SMS": True, "MMS": True, "fax": False},
                    }
                )
        return pool

    async def _available_local(self, request: web.Request) -> web.Response:
        country = request.match_info["country"].upper()
        if country not in AREA_CODES:
            return self._error(404, 20404)
        pool = self._pool(country)
        area = request.query.get("AreaCode")
        if area:
            pool = [n for n in pool if n["phone_number"].startswith(f"+1{area}")]
        contains = re.sub(r"[^0-9A-Za-z]", "", request.query.get("Contains", ""))
        if contains:
            pool = [n for n in pool if contains in n["phone_number"]]
        size = int(request.query.get("PageSize", "50"))
        uri = request.path_qs
        return web.json_response({"available_phone_numbers": pool[:size], "uri": uri})

    async def _buy_number(self, request: web.Request) -> web.Response:
        form = await _form(request)
        e164 = form.get("PhoneNumber", "")
        owned = {n["phone_number"] for n in self.incoming_numbers.values()}
        if not _E164.match(e164) or e164 in owned:
            return self._error(400, 21422)
        sid = _sid("PN")
        now = _rfc2822_now()
        number = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
            "date_created": now,
            "date_updated": now,
            "friendly_name": e164,
            "phone_number": e164,
            "origin": "twilio",
            "sid": sid,
            "sms_method": form.get("SmsMethod", "POST"),
            "sms_url": form.get("SmsUrl", ""),
            "voice_method": form.get("VoiceMethod", "POST"),
            "voice_url": form.get("VoiceUrl", ""),
            "status_callback": form.get("StatusCallback", ""),
            "status_callback_method": form.get("StatusCallbackMethod", "POST"),
            "status": "in-use",
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}.json",
        }
        self.incoming_numbers[sid] = number
        return web.json_response(number, status=201)

    async def _list_numbers(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"incoming_phone_numbers": list(self.incoming_numbers.values()), "uri": request.path_qs}
        )

    async def _update_number(self, request: web.Request) -> web.Response:
        number = self.incoming_numbers.get(request.match_info["sid"])
        if number is None:
            return self._error(404, 20404)
        fields = {"VoiceUrl": "voice_url", "VoiceMethod": "voice_method", "SmsUrl": "sms_url",
                  "SmsMethod": "sms_method", "StatusCallback": "status_callback"}
        for name, value in (await _form(request)).items():
            if name in fields:
                number[fields[name]] = value
        number["date_updated"] = _rfc2822_now()
        return web.json_response(number)

    async def _recording_mp3(self, request: web.Request) -> web.Response:
        audio = self.recordings.get(request.match_info["sid"])
        if audio is None:
            return self._error(404, 20404)
        return web.Response(body=audio, content_type="audio/mpeg")

    async def _release_number(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if self.incoming_numbers.pop(sid, None) is None:
            return self._error(404, 20404)
        self.released_numbers.append(sid)
        return web.Response(status=204)

    async def _balance(self, request: web.Request) -> web.Response:
        return web.json_response({"account_sid": self.account_sid, "balance": self.balance, "currency": self.currency})

    async def _pricing(self, request: web.Request) -> web.Response:
        country = request.match_info["country"].upper()
        if country not in LOCAL_PRICES:
            return self._error(404, 20404)
        price = LOCAL_PRICES[country]
        return web.json_response(
            {
                "country": {"US": "United States", "CA": "Canada"}[country],
                "iso_country": country,
                "phone_number_prices": [
                    {"number_type": "local", "base_price": price, "current_price": price},
                    {"number_type": "toll free", "base_price": "2.15", "current_price": "2.15"},
                ],
                "price_unit": "USD",
                "url": f"https://pricing.twilio.com/v1/PhoneNumbers/Countries/{country}",
            }
        )


# --- signed webhooks, usable without a running server --------------------------------------------------------


def _sign(auth_token: str, url: str, params: Mapping[str, str]) -> dict[str, str]:
    return {
        "X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, dict(params)),
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "TwilioProxy/1.1",
        "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
    }


def build_inbound_webhook(
    auth_token: str,
    url: str,
    *,
    from_: str,
    to: str,
    body: str,
    media: Iterable[tuple[str, str]] = (),
    message_sid: str | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
) -> SignedWebhook:
    """Twilio's incoming-message webhook; `media` is (url, content type) pairs, which makes the sid an MM…"""
    media = list(media)
    sid = message_sid or _sid("MM" if media else "SM")
    params = {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": sid,
        "NumMedia": str(len(media)),
        "ToCity": "SAN FRANCISCO",
        "FromZip": "",
        "SmsSid": sid,
        "FromState": "",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": body,
        "FromCountry": "US",
        "To": to,
        "ToZip": "",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": API_VERSION,
    }
    for index, (media_url, content_type) in enumerate(media):
        params[f"MediaUrl{index}"] = media_url
        params[f"MediaContentType{index}"] = content_type
    return SignedWebhook(url=url, params=params, headers=_sign(auth_token, url, params))


def build_status_webhook(
    auth_token: str,
    url: str,
    *,
    message_sid: str,
    status: str,
    from_: str,
    to: str,
    error_code: int | str | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
) -> SignedWebhook:
    """Twilio's message status callback, as sent to the StatusCallback URL given at creation."""
    params = {
        "SmsSid": message_sid,
        "SmsStatus": status,
        "MessageStatus": status,
        "To": to,
        "MessageSid": message_sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": API_VERSION,
    }
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    if status == "delivered":
        params["RawDlrDoneDate"] = utcnow().strftime("%y%m%d%H%M")
    return SignedWebhook(url=url, params=params, headers=_sign(auth_token, url, params))


def build_call_webhook(
    auth_token: str, url: str, *, from_: str, to: str, call_sid: str | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
) -> SignedWebhook:
    """Twilio's voice webhook for an incoming call, as sent to the number's VoiceUrl."""
    params = {
        "AccountSid": account_sid,
        "ApiVersion": API_VERSION,
        "CallSid": call_sid or _sid("CA"),
        "CallStatus": "ringing",
        "Called": to,
        "Caller": from_,
        "Direction": "inbound",
        "From": from_,
        "FromCountry": "US",
        "To": to,
        "ToCountry": "US",
    }
    return SignedWebhook(url=url, params=params, headers=_sign(auth_token, url, params))


def build_recording_webhook(
    auth_token: str, url: str, *, call_sid: str, recording_sid: str, duration: int, status: str | None = "completed",
    account_sid: str = DEFAULT_ACCOUNT_SID,
) -> SignedWebhook:
    """Twilio's recording status callback (`status` set) or <Record>'s action request (`status=None`)."""
    params = {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "RecordingSid": recording_sid,
        "RecordingUrl": f"https://api.twilio.com/{API_VERSION}/Accounts/{account_sid}/Recordings/{recording_sid}",
        "RecordingDuration": str(duration),
    }
    if status is not None:
        params.update({"RecordingStatus": status, "RecordingChannels": "1", "RecordingSource": "RecordVerb"})
    return SignedWebhook(url=url, params=params, headers=_sign(auth_token, url, params))
