"""Local fake of Discord's REST API and gateway (the real wire format) for driving discord.py in tests.

Point discord.py at it by setting `discord.http.Route.BASE` to `fake.base_url` (the Discord front end does this
from `DISCORD_API_BASE_URL`); `GET /gateway/bot` then names the fake's own gateway websocket.

What it serves: login (`GET /users/@me`, `GET /oauth2/applications/@me`), the gateway address and a minimal
gateway (HELLO, IDENTIFY → READY, heartbeats, dispatched events), command sync (`PUT …/commands`, global and per
guild, payloads recorded), interaction callbacks (types 4 message, 5 deferred, 6 deferred update, 7 update,
8 autocomplete, 9 modal), follow-ups and edits through the interaction webhook, DM channels and their messages,
and the CDN for files users upload in a modal's file upload (`modal_submit(files=…)`: `resolved.attachments`).
Message bodies are checked against Discord's limits (2,000 characters of content, five action rows of five
buttons, unique custom ids, 25 select options…) and refused with Discord's `50035 Invalid Form Body`.

Failures are injected with `fail()`: a 429 carries Discord's JSON (`message`, `retry_after`, `global`) and headers
(`Retry-After`, `X-RateLimit-*`, and `Via`, without which discord.py takes a 429 for a Cloudflare ban), a 403 is
`50007 Cannot send messages to this user`. Every answer has rate-limit headers.

Interactions are built with `command()`, `autocomplete()`, `component()` and `modal_submit()` (realistic
INTERACTION_CREATE payloads for a user in a guild or in their DM with the bot) and handed to the client with
`dispatch()`, which is what discord.py does with a gateway event (`ConnectionState.parse_interaction_create`), or
sent over the gateway with `send_event()`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import WSMsgType, web

JSONDict = dict[str, Any]

DEFAULT_TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.fake.discord-test-token"
APPLICATION_ID = 1100000000000000001
DISCORD_EPOCH_MS = 1420070400000
API_PREFIX = "/api/v10"

_NAME = re.compile(r"^[-_\w]{1,32}$")
_MESSAGE_ROUTES = ("/channels/", "/webhooks/")


class DiscordApiError(Exception):
    """An error answer in Discord's shape: `{"message": …, "code": …}` (and `errors` for form bodies)."""

    def __init__(self, status: int, code: int, message: str, errors: JSONDict | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def body(self) -> JSONDict:
        data: JSONDict = {"message": self.message, "code": self.code}
        if self.errors:
            data["errors"] = self.errors
        return data


def _invalid(errors: list[str]) -> DiscordApiError:
    return DiscordApiError(400, 50035, "Invalid Form Body", {"_errors": [{"code": "INVALID", "message": e} for e in errors]})


@dataclass
class UploadedFile:
    field: str
    filename: str
    content: bytes


@dataclass
class Request:
    """One request as the fake saw it; `status` is what it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    files: list[UploadedFile]
    at: float
    status: int = 0


@dataclass
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    locale: str = "en-US"

    def payload(self) -> JSONDict:
        return {
            "id": str(self.id), "username": self.username, "discriminator": "0", "global_name": self.global_name,
            "avatar": None, "bot": False, "public_flags": 0,
        }


@dataclass
class Interaction:
    """One interaction the fake built, and what the bot answered to it."""

    id: int
    token: str
    type: int
    user: FakeUser
    payload: JSONDict
    guild_id: int | None
    channel_id: int
    message_id: int | None = None  # the message whose component was used (or whose button opened the modal)
    callback_type: int | None = None
    callback: JSONDict | None = None
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    choices: list[JSONDict] | None = None
    modal: JSONDict | None = None
    answered_at: float | None = None

    @property
    def ephemeral_original(self) -> bool:
        return bool(self.callback and (self.callback.get("data") or {}).get("flags", 0) & 64)


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    retry_after: float | None
    is_global: bool
    code: int | None
    message: str | None
    via: bool


class FakeDiscordServer:
    """Discord's REST API and a minimal gateway on 127.0.0.1 (a free port), used as `async with`."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, application_id: int = APPLICATION_ID) -> None:
        self.token = token
        self.application_id = application_id
        self.bot_user = {
            "id": str(application_id), "username": "cumapp", "discriminator": "0", "global_name": "CumApp",
            "avatar": None, "bot": True, "public_flags": 0, "flags": 0, "verified": True, "mfa_enabled": False,
        }
        self.requests: list[Request] = []
        self.interactions: dict[int, Interaction] = {}
        self.messages: dict[int, JSONDict] = {}
        self.dm_channels: dict[int, int] = {}  # user id → DM channel id
        self.synced: dict[int | None, list[JSONDict]] = {}  # guild id (None: global) → commands as stored
        self.sync_payloads: list[tuple[int | None, list[JSONDict]]] = []
        self.identifies: list[JSONDict] = []
        self.gateway_queries: list[dict[str, str]] = []
        self._failures: list[_Failure] = []
        self.cdn: dict[str, tuple[bytes, str]] = {}  # path → (content, content type): files users uploaded
        self.cdn_requests: list[str] = []
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._sockets: list[web.WebSocketResponse] = []
        self._sequence = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- life -------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscordServer:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._route)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for socket in list(self._sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # --- ids -----------------------------------------------------------------------------------------------------

    def snowflake(self) -> int:
        """Realistic ids: discord.py reads the creation time out of them."""
        millis = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (millis << 22) | (next(self._ids) % (1 << 22))

    def dm_channel_id(self, user_id: int) -> int:
        if user_id not in self.dm_channels:
            self.dm_channels[user_id] = self.snowflake()
        return self.dm_channels[user_id]

    # --- failures ------------------------------------------------------------------------------------------------

    def fail(self, method: str, path: str, *, status: int, times: int = 1, retry_after: float | None = None,
             is_global: bool = False, code: int | None = None, message: str | None = None, via: bool = True) -> None:
        """The next `times` requests matching `method` and the `path` regex (below /api/v10) fail with `status`."""
        self._failures.append(_Failure(method.upper(), re.compile(path), status, times, retry_after, is_global, code,
                                       message, via))

    def _injected(self, method: str, path: str) -> web.Response | None:
        for failure in self._failures:
            if failure.remaining > 0 and failure.method == method and failure.pattern.search(path):
                failure.remaining -= 1
                if failure.status == 429:
                    retry = failure.retry_after if failure.retry_after is not None else 1.0
                    headers = {
                        "Retry-After": str(math.ceil(retry)), "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": f"{time.time() + retry:.3f}", "X-RateLimit-Reset-After": f"{retry:.3f}",
                        "X-RateLimit-Bucket": _bucket(method, path),
                        "X-RateLimit-Scope": "global" if failure.is_global else "user",
                    }
                    if failure.is_global:
                        headers["X-RateLimit-Global"] = "true"
                    if failure.via:
                        headers["Via"] = "1.1 google"
                    body = {"message": failure.message or "You are being rate limited.", "retry_after": retry,
                            "global": failure.is_global, "code": failure.code or 0}
                    return _json(body, status=429, headers=headers)
                defaults = {403: (50007, "Cannot send messages to this user"), 404: (10003, "Unknown Channel"),
                            500: (0, "500: Internal Server Error"), 401: (0, "401: Unauthorized")}
                code, text = defaults.get(failure.status, (0, "Bad Request"))
                body = {"message": failure.message or text, "code": failure.code if failure.code is not None else code}
                return _json(body, status=failure.status)
        return None

    # --- HTTP plumbing -------------------------------------------------------------------------------------------

    async def _route(self, request: web.Request) -> web.Response:
        """Every REST request: recorded, failed on cue, answered, and given rate-limit headers."""
        body, files = await _read_body(request)
        path = request.path.removeprefix(API_PREFIX)
        record = Request(request.method, path, dict(request.query), dict(request.headers), body, files, time.monotonic())
        self.requests.append(record)
        response = self._injected(request.method, path)
        if response is None:
            response = await self._respond(request, record)
        record.status = response.status
        if response.status != 429:
            response.headers.update({
                "X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "49", "X-RateLimit-Reset-After": "1.000",
                "X-RateLimit-Reset": f"{time.time() + 1:.3f}", "X-RateLimit-Bucket": _bucket(request.method, path),
            })
        self._changed.set()
        return response

    async def _respond(self, request: web.Request, record: Request) -> web.Response:
        if request.method == "GET" and request.path in self.cdn:  # the CDN: signed query (ex, is, hm) not checked
            self.cdn_requests.append(request.path)
            content, content_type = self.cdn[request.path]
            return web.Response(body=content, content_type=content_type)
        if not request.path.startswith(API_PREFIX):
            return _json({"message": "404: Not Found", "code": 0}, status=404)
        try:
            result = await self._handle(request.method, record.path, record, request)
        except DiscordApiError as error:
            return _json(error.body(), status=error.status)
        if result is None:
            return web.Response(status=204)
        return _json(result)

    async def _handle(self, method: str, path: str, record: Request, request: web.Request) -> Any:
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["interactions"] and len(parts) == 4 and parts[3] == "callback" and method == "POST":
            return self._callback(int(parts[1]), parts[2], record)
        if parts[:1] == ["webhooks"]:
            return self._webhook(method, parts, record)
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordApiError(401, 0, "401: Unauthorized")
        key = (method, tuple("{}" if p.isdigit() else p for p in parts))
        if key == ("GET", ("users", "@me")):
            return self.bot_user
        if key in (("GET", ("oauth2", "applications", "@me")), ("GET", ("applications", "@me"))):
            return self._application()
        if key == ("GET", ("gateway", "bot")):
            return {"url": self.gateway_url, "shards": 1,
                    "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}}
        if key == ("GET", ("gateway",)):
            return {"url": self.gateway_url}
        if key == ("PUT", ("applications", "{}", "commands")):
            return self._sync(None, record.json)
        if key == ("PUT", ("applications", "{}", "guilds", "{}", "commands")):
            return self._sync(int(parts[3]), record.json)
        if key == ("POST", ("users", "@me", "channels")):
            return self._open_dm(record.json)
        if key == ("POST", ("channels", "{}", "messages")):
            return self._create_message(int(parts[1]), record)
        if key == ("PATCH", ("channels", "{}", "messages", "{}")):
            return self._edit_message(int(parts[3]), record, channel_id=int(parts[1]))
        if key == ("GET", ("channels", "{}", "messages", "{}")):
            return self._message(int(parts[3]), channel_id=int(parts[1]))
        raise DiscordApiError(404, 0, "404: Not Found")

    # --- login and commands ----------------------------------------------------------------------------------------

    def _application(self) -> JSONDict:
        owner = {"id": "1000", "username": "owner", "discriminator": "0", "global_name": None, "avatar": None}
        return {
            "id": str(self.application_id), "name": "CumApp", "description": "", "icon": None, "bot_public": True,
            "bot_require_code_grant": False, "owner": owner, "verify_key": "0" * 64, "flags": 0, "team": None,
            "summary": "", "bot": self.bot_user,
        }

    def _sync(self, guild_id: int | None, payload: Any) -> list[JSONDict]:
        if not isinstance(payload, list):
            raise _invalid(["a list of commands is required"])
        errors = _command_errors(payload)
        if errors:
            raise _invalid(errors)
        self.sync_payloads.append((guild_id, payload))
        stored = []
        for command in payload:
            item = {"id": str(self.snowflake()), "application_id": str(self.application_id), "version": "1",
                    "type": 1, "default_member_permissions": None, "nsfw": False, **command}
            if item["default_member_permissions"] is not None:
                item["default_member_permissions"] = str(item["default_member_permissions"])  # Discord answers a string
            if guild_id is not None:
                item["guild_id"] = str(guild_id)
            stored.append(item)
        self.synced[guild_id] = stored
        return stored

    def command_names(self, guild_id: int | None = None) -> set[str]:
        return {command["name"] for command in self.synced.get(guild_id, [])}

    def synced_command(self, name: str, guild_id: int | None = None) -> JSONDict:
        for command in self.synced.get(guild_id, []):
            if command["name"] == name:
                return command
        raise KeyError(name)

    # --- messages -----------------------------------------------------------------------------------------------------

    def _open_dm(self, payload: Any) -> JSONDict:
        try:
            user_id = int(payload["recipient_id"])
        except (KeyError, TypeError, ValueError):
            raise _invalid(["recipient_id is required"]) from None
        recipient = {"id": str(user_id), "username": f"user{user_id}", "discriminator": "0", "global_name": None,
                     "avatar": None}
        return {"id": str(self.dm_channel_id(user_id)), "type": 1, "recipients": [recipient], "last_message_id": None,
                "flags": 0}

    def _store(self, channel_id: int, body: JSONDict, files: list[UploadedFile], *, flags: int = 0,
               message_id: int | None = None, interaction: Interaction | None = None) -> JSONDict:
        errors = _message_errors(body, files, creating=True)
        if errors:
            raise _invalid(errors)
        message_id = message_id or self.snowflake()
        message = {
            "id": str(message_id), "channel_id": str(channel_id), "type": 0, "content": body.get("content") or "",
            "author": self.bot_user, "embeds": body.get("embeds") or [], "components": body.get("components") or [],
            "attachments": _attachments(files), "flags": flags | int(body.get("flags") or 0),
            "timestamp": datetime.now(UTC).isoformat(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "pinned": False,
            "application_id": str(self.application_id),
        }
        if interaction is not None:
            message["webhook_id"] = str(self.application_id)
            message["interaction_metadata"] = {"id": str(interaction.id), "type": interaction.type,
                                               "user": interaction.user.payload()}
            if interaction.guild_id is not None:
                message["guild_id"] = str(interaction.guild_id)
        self.messages[message_id] = message
        return message

    def _create_message(self, channel_id: int, record: Request) -> JSONDict:
        if channel_id not in self.dm_channels.values():
            raise DiscordApiError(404, 10003, "Unknown Channel")
        return self._store(channel_id, record.json or {}, record.files)

    def _edit(self, message_id: int, body: JSONDict, files: list[UploadedFile]) -> JSONDict:
        message = self.messages.get(message_id)
        if message is None:
            raise DiscordApiError(404, 10008, "Unknown Message")
        errors = _message_errors(body, files, creating=False)
        if errors:
            raise _invalid(errors)
        for key in ("content", "embeds", "components"):
            if key in body:
                message[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        if files:
            message["attachments"] = [*message["attachments"], *_attachments(files)]
        message["flags"] = int(message["flags"]) & ~128  # an edit ends the "thinking…" state
        message["edited_timestamp"] = datetime.now(UTC).isoformat()
        if not (message["content"] or message["embeds"] or message["attachments"] or message["components"]):
            raise DiscordApiError(400, 50006, "Cannot send an empty message")
        return message

    def _edit_message(self, message_id: int, record: Request, *, channel_id: int) -> JSONDict:
        message = self.messages.get(message_id)
        if message is None or int(message["channel_id"]) != channel_id:
            raise DiscordApiError(404, 10008, "Unknown Message")
        if int(message["flags"]) & 64:
            raise DiscordApiError(404, 10008, "Unknown Message")  # an ephemeral message is not in the channel
        if "interaction_metadata" in message:
            # An answer to an interaction is the application's webhook message: only its token edits it.
            raise DiscordApiError(403, 50005, "Cannot edit a message authored by another user")
        return self._edit(message_id, record.json or {}, record.files)

    def _message(self, message_id: int, *, channel_id: int) -> JSONDict:
        message = self.messages.get(message_id)
        if message is None or int(message["channel_id"]) != channel_id or int(message["flags"]) & 64:
            raise DiscordApiError(404, 10008, "Unknown Message")
        return message

    # --- interactions: callbacks and webhook ------------------------------------------------------------------------

    def _callback(self, interaction_id: int, token: str, record: Request) -> JSONDict | None:
        interaction = self.interactions.get(interaction_id)
        if interaction is None or interaction.token != token:
            raise DiscordApiError(404, 10062, "Unknown interaction")
        if interaction.callback_type is not None:
            raise DiscordApiError(400, 40060, "Interaction has already been acknowledged.")
        body = record.json or {}
        kind = int(body.get("type", 0))
        data = body.get("data") or {}
        allowed = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}[interaction.type]
        if kind not in allowed or (kind in (6, 7) and interaction.message_id is None):
            raise DiscordApiError(400, 40043, f"Interaction callback type {kind} is not valid here")
        resource: JSONDict | None = None
        if kind == 4:
            message = self._store(interaction.channel_id, data, record.files, interaction=interaction)
            interaction.original_id = int(message["id"])
            resource = {"type": 4, "message": message}
        elif kind == 5:
            flags = 128 | (int(data.get("flags") or 0) & 64)  # "thinking…", ephemeral when asked
            placeholder = self._store(interaction.channel_id, {"flags": flags}, [], interaction=interaction)
            interaction.original_id = int(placeholder["id"])
        elif kind in (6, 7):
            interaction.original_id = interaction.message_id
            if kind == 7:
                assert interaction.message_id is not None
                resource = {"type": 7, "message": self._edit(interaction.message_id, data, record.files)}
        elif kind == 8:
            choices = data.get("choices")
            if not isinstance(choices, list) or len(choices) > 25:
                raise _invalid(["choices: at most 25"])
            interaction.choices = choices
        elif kind == 9:
            errors = _modal_errors(data)
            if errors:
                raise _invalid(errors)
            interaction.modal = data
        interaction.callback_type = kind
        interaction.callback = body
        interaction.answered_at = time.monotonic()
        if record.query.get("with_response") not in ("1", "true", "True"):
            return None
        ephemeral = bool(int(data.get("flags") or 0) & 64) if kind in (4, 5) else False
        answer: JSONDict = {"interaction": {
            "id": str(interaction.id), "type": interaction.type, "response_message_loading": kind == 5,
            "response_message_ephemeral": ephemeral,
        }}
        if interaction.original_id is not None and kind in (4, 5, 7):
            answer["interaction"]["response_message_id"] = str(interaction.original_id)
        if resource is not None:
            answer["resource"] = resource
        elif kind in (5, 6, 9):
            answer["resource"] = {"type": kind}
        return answer

    def _by_token(self, application_id: str, token: str) -> Interaction:
        if application_id != str(self.application_id):
            raise DiscordApiError(404, 10015, "Unknown Webhook")
        for interaction in self.interactions.values():
            if interaction.token == token and interaction.callback_type in (4, 5, 6, 7):
                return interaction
        raise DiscordApiError(404, 10015, "Unknown Webhook")

    def _webhook(self, method: str, parts: list[str], record: Request) -> JSONDict | None:
        if len(parts) < 3:
            raise DiscordApiError(404, 0, "404: Not Found")
        interaction = self._by_token(parts[1], parts[2])
        body = record.json or {}
        if len(parts) == 3 and method == "POST":
            placeholder = self.messages.get(interaction.original_id or -1)
            if placeholder is not None and int(placeholder["flags"]) & 128:
                # The first follow-up after a deferral becomes the deferred ("thinking…") message.
                message = self._edit(int(placeholder["id"]), body, record.files)
            else:
                flags = int(body.get("flags") or 0) & 64
                message = self._store(interaction.channel_id, body, record.files, flags=flags, interaction=interaction)
                interaction.followup_ids.append(int(message["id"]))
            return message if record.query.get("wait") in ("1", "true", "True") else None
        if len(parts) == 5 and parts[3] == "messages":
            target = parts[4]
            if target == "@original":
                if interaction.original_id is None:
                    raise DiscordApiError(404, 10008, "Unknown Message")
                message_id = interaction.original_id
            else:
                message_id = int(target)
                if message_id not in (*interaction.followup_ids, interaction.original_id):
                    raise DiscordApiError(404, 10008, "Unknown Message")
            if method == "GET":
                return self.messages[message_id]
            if method == "PATCH":
                return self._edit(message_id, body, record.files)
        raise DiscordApiError(405, 0, "405: Method Not Allowed")

    # --- gateway -----------------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.gateway_queries.append(dict(request.query))
        self._sockets.append(socket)
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        try:
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                if message.get("op") == 2:
                    identify = message.get("d") or {}
                    self.identifies.append(identify)
                    if identify.get("token") != self.token:
                        await socket.close(code=4004, message=b"Authentication failed.")
                        break
                    self._sequence += 1
                    await socket.send_json({"op": 0, "t": "READY", "s": self._sequence, "d": {
                        "v": 10, "user": self.bot_user, "guilds": [], "session_id": "fake-session",
                        "resume_gateway_url": self.gateway_url, "private_channels": [], "relationships": [],
                        "application": {"id": str(self.application_id), "flags": 0}, "shard": [0, 1],
                    }})
                elif message.get("op") == 1:
                    await socket.send_json({"op": 11, "d": None, "s": None, "t": None})
                elif message.get("op") == 6:
                    self._sequence += 1
                    await socket.send_json({"op": 0, "t": "RESUMED", "s": self._sequence, "d": {}})
                self._changed.set()
        finally:
            self._sockets.remove(socket)
        return socket

    @property
    def gateway_connected(self) -> bool:
        return bool(self._sockets)

    async def send_event(self, name: str, data: JSONDict) -> None:
        """A dispatch event (e.g. INTERACTION_CREATE) to every connected gateway client."""
        for socket in self._sockets:
            self._sequence += 1
            await socket.send_json({"op": 0, "t": name, "s": self._sequence, "d": data})

    # --- interaction payloads -----------------------------------------------------------------------------------------

    def user(self, user_id: int, username: str | None = None, *, global_name: str | None = None,
             locale: str = "en-US") -> FakeUser:
        return FakeUser(user_id, username or f"user{user_id}", global_name, locale)

    def _base(self, kind: int, user: FakeUser, data: JSONDict | None, *, guild_id: int | None,
              message: JSONDict | None = None, admin: bool = False) -> Interaction:
        interaction_id = self.snowflake()
        token = f"aW50ZXJhY3Rpb24.{interaction_id}.token"
        payload: JSONDict = {
            "id": str(interaction_id), "application_id": str(self.application_id), "type": kind, "token": token,
            "version": 1, "locale": user.locale, "entitlements": [], "attachment_size_limit": 10485760,
            "app_permissions": "2248473465835073",
        }
        if data is not None:
            payload["data"] = data
        if guild_id is not None:
            channel_id = int(message["channel_id"]) if message else guild_id + 1
            payload.update({
                "guild_id": str(guild_id), "guild_locale": "en-US", "context": 0,
                "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
                "channel": {"id": str(channel_id), "type": 0, "guild_id": str(guild_id), "name": "general",
                            "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None},
                "member": {"user": user.payload(), "roles": [], "joined_at": "2024-01-01T00:00:00+00:00",
                           "deaf": False, "mute": False, "flags": 0, "pending": False, "nick": None, "avatar": None,
                           "permissions": "8" if admin else "1024"},
                "authorizing_integration_owners": {"0": str(guild_id)},
            })
        else:
            channel_id = self.dm_channel_id(user.id)
            payload.update({
                "context": 1, "user": user.payload(),
                "channel": {"id": str(channel_id), "type": 1, "recipients": [user.payload()], "flags": 0,
                            "last_message_id": None},
                "authorizing_integration_owners": {"0": "0"},
            })
        payload["channel_id"] = str(channel_id)
        if message is not None:
            payload["message"] = message
        interaction = Interaction(interaction_id, token, kind, user, payload, guild_id, channel_id,
                                  int(message["id"]) if message else None)
        self.interactions[interaction_id] = interaction
        return interaction

    def command(self, user: FakeUser, name: str, options: JSONDict | None = None, *, guild_id: int | None = None,
                admin: bool = False) -> Interaction:
        """A slash command (APPLICATION_COMMAND) as Discord sends it; options are name → value."""
        data: JSONDict = {"id": self._command_id(name, guild_id), "name": name, "type": 1,
                          "options": [_option(key, value) for key, value in (options or {}).items() if value is not None]}
        if guild_id is not None and guild_id in self.synced:
            data["guild_id"] = str(guild_id)
        return self._base(2, user, data, guild_id=guild_id, admin=admin)

    def autocomplete(self, user: FakeUser, name: str, options: JSONDict, focused: str, *,
                     guild_id: int | None = None) -> Interaction:
        """An APPLICATION_COMMAND_AUTOCOMPLETE while the user types the `focused` option."""
        listed = []
        for key, value in options.items():
            option = _option(key, value)
            if key == focused:
                option["focused"] = True
                option["type"] = 3
            listed.append(option)
        data: JSONDict = {"id": self._command_id(name, guild_id), "name": name, "type": 1, "options": listed}
        if guild_id is not None and guild_id in self.synced:
            data["guild_id"] = str(guild_id)
        return self._base(4, user, data, guild_id=guild_id)

    def component(self, user: FakeUser, message: JSONDict, custom_id: str, *, values: list[str] | None = None
                  ) -> Interaction:
        """A press on a button (or a choice in a select menu) of a message the bot sent (MESSAGE_COMPONENT)."""
        stored = self.messages[int(message["id"])]
        component = _find_component(stored, custom_id)
        if component is None:
            raise KeyError(f"no component {custom_id!r} in message {stored['id']}")
        data: JSONDict = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] == 3:
            data["values"] = values or []
        guild_id = int(stored["guild_id"]) if stored.get("guild_id") else None
        return self._base(3, user, data, guild_id=guild_id, message=stored)

    def modal_submit(self, user: FakeUser, opened_by: Interaction, text: str,
                     files: list[tuple[str, bytes, str]] | None = None) -> Interaction:
        """The user fills the modal `opened_by` answered with and submits it (MODAL_SUBMIT). `files`
        (filename, content, content type) go into its file upload: uploaded to the CDN, which this server
        serves at the attachment's URL, and named in `resolved.attachments` as Discord does."""
        modal = opened_by.modal
        if modal is None:
            raise ValueError("that interaction was not answered with a modal")
        components = []
        resolved: JSONDict = {}
        for component in modal["components"]:
            if component["type"] == 18 and component["component"]["type"] == 19:
                inner = component["component"]
                uploaded = [self._upload(opened_by.channel_id, *file) for file in files or []]
                if uploaded:
                    resolved.setdefault("attachments", {}).update({a["id"]: a for a in uploaded})
                components.append({"type": 18, "id": component.get("id", 0), "component": {
                    "type": 19, "id": inner.get("id", 0), "custom_id": inner["custom_id"],
                    "values": [a["id"] for a in uploaded]}})
            elif component["type"] == 18:
                inner = component["component"]
                components.append({"type": 18, "id": component.get("id", 0),
                                   "component": {"type": inner["type"], "custom_id": inner["custom_id"], "value": text}})
            elif component["type"] == 1:
                inner = component["components"][0]
                components.append({"type": 1, "components": [{"type": 4, "custom_id": inner["custom_id"], "value": text}]})
        if files and "attachments" not in resolved:
            raise ValueError("that modal has no file upload")
        data: JSONDict = {"custom_id": modal["custom_id"], "components": components}
        if resolved:
            data["resolved"] = resolved
        message = self.messages.get(opened_by.message_id) if opened_by.message_id else None
        return self._base(5, user, data, guild_id=opened_by.guild_id, message=message)

    def redelivered(self, interaction: Interaction) -> Interaction:
        """The same interaction again under a new id and token, its data (attachments included) unchanged: a
        double submit, or a retry on the client's side."""
        message = self.messages.get(interaction.message_id) if interaction.message_id else None
        return self._base(interaction.type, interaction.user, dict(interaction.payload.get("data") or {}),
                          guild_id=interaction.guild_id, message=message)

    def _upload(self, channel_id: int, filename: str, content: bytes, content_type: str) -> JSONDict:
        """A file a user uploaded in a modal: an ephemeral attachment whose signed CDN URL this server serves."""
        attachment_id = str(self.snowflake())
        path = f"/ephemeral-attachments/{channel_id}/{attachment_id}/{filename}"
        self.cdn[path] = (content, content_type)
        expires = f"{int(time.time()) + 86400:x}"
        url = f"http://127.0.0.1:{self.port}{path}?ex={expires}&is={int(time.time()):x}&hm={'0' * 64}&"
        return {"id": attachment_id, "filename": filename, "size": len(content), "url": url, "proxy_url": url,
                "content_type": content_type, "ephemeral": True}

    def _command_id(self, name: str, guild_id: int | None) -> str:
        for key in (guild_id, None):
            for command in self.synced.get(key, []):
                if command["name"] == name:
                    return str(command["id"])
        return str(self.snowflake())

    def dispatch(self, client: Any, interaction: Interaction) -> None:
        """Hands the payload to discord.py as its gateway reader does with an INTERACTION_CREATE event."""
        client._connection.parse_interaction_create(interaction.payload)

    # --- reading what happened ---------------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Waits until `predicate()` returns something truthy, and returns it."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the fake Discord server did not see what the test waited for")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.05))
            except TimeoutError:
                pass

    async def answered(self, interaction: Interaction, timeout: float = 5.0) -> Interaction:
        await self.wait_for(lambda: interaction.callback_type is not None, timeout)
        return interaction

    def produced(self, interaction: Interaction) -> list[JSONDict]:
        """The messages this interaction's answer created or changed, as they look now, in order."""
        ids = [interaction.original_id] if interaction.original_id is not None else []
        ids += [message_id for message_id in interaction.followup_ids if message_id not in ids]
        return [self.messages[message_id] for message_id in ids if message_id in self.messages]

    def dm_messages(self, user_id: int) -> list[JSONDict]:
        """Messages the bot posted to the user's DM channel itself (not answers to interactions)."""
        channel_id = str(self.dm_channels.get(user_id, -1))
        return [m for m in self.messages.values() if m["channel_id"] == channel_id and "interaction_metadata" not in m]

    def calls(self, method: str, path: str) -> list[Request]:
        pattern = re.compile(path)
        return [r for r in self.requests if r.method == method and pattern.search(r.path)]


# --- wire-format helpers ---------------------------------------------------------------------------------------------


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json", as Discord sends it: discord.py reads any other content type as text.
    return web.Response(body=json.dumps(body).encode(), status=status,
                        headers={"Content-Type": "application/json", **(headers or {})})


def _bucket(method: str, path: str) -> str:
    shape = re.sub(r"/\d+", "/{id}", path)
    return f"{abs(hash((method, shape))):x}"[:12]


def _option(name: str, value: Any) -> JSONDict:
    kind = 5 if isinstance(value, bool) else 4 if isinstance(value, int) else 10 if isinstance(value, float) else 3
    return {"name": name, "type": kind, "value": value}


async def _read_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        body: Any = None
        files: list[UploadedFile] = []
        async for part in reader:
            if part.name == "payload_json":  # type: ignore[union-attr]
                body = json.loads(await part.text())  # type: ignore[union-attr]
            elif part.name:
                files.append(UploadedFile(part.name, part.filename or "", bytes(await part.read())))  # type: ignore[union-attr]
        return body, files
    raw = await request.read()
    if not raw:
        return None, []
    try:
        return json.loads(raw), []
    except ValueError:
        return raw.decode(errors="replace"), []


def _attachments(files: list[UploadedFile]) -> list[JSONDict]:
    return [{"id": str(index + 1), "filename": f.filename, "size": len(f.content),
             "url": f"https://cdn.example/{f.filename}", "proxy_url": f"https://cdn.example/{f.filename}"}
            for index, f in enumerate(files)]


def walk_components(components: list[JSONDict]) -> list[JSONDict]:
    found = []
    for component in components:
        found.append(component)
        found += walk_components(component.get("components") or [])
        if "component" in component:
            found += walk_components([component["component"]])
    return found


def _find_component(message: JSONDict, custom_id: str) -> JSONDict | None:
    for component in walk_components(message.get("components") or []):
        if component.get("custom_id") == custom_id and component.get("type") in (2, 3):
            return component
    return None


def _message_errors(body: JSONDict, files: list[UploadedFile], *, creating: bool) -> list[str]:
    errors = []
    content = body.get("content") or ""
    if len(content) > 2000:
        errors.append(f"content: must be 2000 or fewer in length ({len(content)})")
    embeds = body.get("embeds") or []
    if len(embeds) > 10:
        errors.append("embeds: at most 10")
    total = 0
    for embed in embeds:
        title, description = embed.get("title") or "", embed.get("description") or ""
        if len(title) > 256:
            errors.append("embeds.title: must be 256 or fewer in length")
        if len(description) > 4096:
            errors.append("embeds.description: must be 4096 or fewer in length")
        total += len(title) + len(description)
    if total > 6000:
        errors.append("embeds: 6000 characters in all at most")
    errors += _component_errors(body.get("components") or [])
    if creating and not (content or embeds or files or body.get("components") or body.get("flags")):
        errors.append("Cannot send an empty message")
    return errors


def _component_errors(rows: list[JSONDict]) -> list[str]:
    errors = []
    if len(rows) > 5:
        errors.append(f"components: at most 5 action rows ({len(rows)})")
    seen: set[str] = set()
    for row in rows:
        if row.get("type") != 1:
            errors.append("components: top level must be action rows")
            continue
        children = row.get("components") or []
        selects = [c for c in children if c.get("type") == 3]
        if not children or len(children) > 5 or (selects and len(children) != 1):
            errors.append("components: a row holds 1 to 5 buttons or one select menu")
        for child in children:
            custom_id = child.get("custom_id")
            if child.get("type") == 2:
                label = child.get("label") or ""
                if not label and not child.get("emoji"):
                    errors.append("button: a label or an emoji is required")
                if len(label) > 80:
                    errors.append("button.label: must be 80 or fewer in length")
                if child.get("style") == 5:
                    if not child.get("url") or custom_id:
                        errors.append("link button: url and no custom_id")
                    continue
            elif child.get("type") == 3:
                options = child.get("options") or []
                if not 1 <= len(options) <= 25:
                    errors.append("select: 1 to 25 options")
                values = [o.get("value") for o in options]
                if len(set(values)) != len(values):
                    errors.append("select: option values must be unique")
                for option in options:
                    if not 1 <= len(option.get("label") or "") <= 100 or not 1 <= len(option.get("value") or "") <= 100:
                        errors.append("select option: label and value of 1 to 100 characters")
            if not custom_id or len(custom_id) > 100:
                errors.append("custom_id: 1 to 100 characters")
            elif custom_id in seen:
                errors.append(f"custom_id: duplicate {custom_id!r}")
            seen.add(custom_id or "")
    return errors


def _modal_errors(data: JSONDict) -> list[str]:
    errors = []
    if not 1 <= len(data.get("title") or "") <= 45:
        errors.append("modal.title: 1 to 45 characters")
    if not 1 <= len(data.get("custom_id") or "") <= 100:
        errors.append("modal.custom_id: 1 to 100 characters")
    components = data.get("components") or []
    if not 1 <= len(components) <= 5:
        errors.append("modal: 1 to 5 components")
    for component in components:
        if component.get("type") == 18:
            if not 1 <= len(component.get("label") or "") <= 45:
                errors.append("label.label: 1 to 45 characters")
            if len(component.get("description") or "") > 100:
                errors.append("label.description: at most 100 characters")
            inner = component.get("component") or {}
            if inner.get("type") == 19:  # a file upload
                if not inner.get("custom_id"):
                    errors.append("file upload: custom_id required")
                if not 0 <= int(inner.get("min_values", 1)) <= 10 or not 1 <= int(inner.get("max_values", 1)) <= 10:
                    errors.append("file upload: min_values 0 to 10, max_values 1 to 10")
                continue
            if inner.get("type") != 4 or not inner.get("custom_id"):
                errors.append("label: holds a text input or a file upload with a custom_id")
            if len(inner.get("placeholder") or "") > 100 or int(inner.get("max_length") or 0) > 4000:
                errors.append("text input: placeholder ≤ 100, max_length ≤ 4000")
        elif component.get("type") == 10:
            if not 1 <= len(component.get("content") or "") <= 4000:
                errors.append("text display: 1 to 4000 characters")
        elif component.get("type") != 1:
            errors.append(f"modal: unsupported component type {component.get('type')}")
    return errors


def _command_errors(commands: list[JSONDict]) -> list[str]:
    errors = []
    if len(commands) > 100:
        errors.append("at most 100 commands")
    names = [c.get("name") for c in commands]
    if len(set(names)) != len(names):
        errors.append("command names must be unique")
    for command in commands:
        name = command.get("name") or ""
        errors += _named_errors(command, name)
        options = command.get("options") or []
        if len(options) > 25:
            errors.append(f"{name}: at most 25 options")
        optional_seen = False
        for option in options:
            option_name = option.get("name") or ""
            errors += _named_errors(option, f"{name}.{option_name}")
            if option.get("required"):
                if optional_seen:
                    errors.append(f"{name}: required options must come before optional ones")
            else:
                optional_seen = True
            if len(option.get("choices") or []) > 25:
                errors.append(f"{name}.{option_name}: at most 25 choices")
        for localized in (command.get("description_localizations") or {}).values():
            if not 1 <= len(localized) <= 100:
                errors.append(f"{name}: localized description of 1 to 100 characters")
    return errors


def _named_errors(item: JSONDict, where: str) -> list[str]:
    """Command and option names: lower-case words of at most 32 characters; descriptions of 1 to 100."""
    errors = []
    name = item.get("name") or ""
    if not _NAME.match(name) or name != name.lower():
        errors.append(f"{where}: invalid name {name!r}")
    if not 1 <= len(item.get("description") or "") <= 100:
        errors.append(f"{where}: description of 1 to 100 characters")
    return errors


def text_of(message: JSONDict) -> str:
    """What a reader sees: the content, then each embed's title and description."""
    parts = [message.get("content") or ""]
    for embed in message.get("embeds") or []:
        parts += [embed.get("title") or "", embed.get("description") or ""]
    return "\n".join(part for part in parts if part)


def buttons(message: JSONDict) -> dict[str, str]:
    """Label → custom id (or url) of every button, and label → value of every select-menu option."""
    found: dict[str, str] = {}
    for component in walk_components(message.get("components") or []):
        if component.get("type") == 2:
            found[component.get("label") or ""] = component.get("custom_id") or component.get("url") or ""
        elif component.get("type") == 3:
            for option in component.get("options") or []:
                found[option["label"]] = option["value"]
    return found


def disabled(message: JSONDict) -> list[bool]:
    return [bool(c.get("disabled")) for c in walk_components(message.get("components") or []) if c.get("type") in (2, 3)]
