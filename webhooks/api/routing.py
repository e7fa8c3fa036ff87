"""The route table: each operation declares its models once, and both the aiohttp route and the OpenAPI document
are made from that declaration. Every request passes the same gate: key, rate limit, input, idempotency."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from core.api.idempotency import IdempotencyStore, request_hash
from core.api.keys import KeyChecker, KeyOwner
from core.api.ratelimit import KeyRateLimiter
from core.platform import db_faults
from core.services import Services
from webhooks.api.problems import ApiProblem, from_error

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX = 128
ID_MAX = 2**62


@dataclass
class ApiState:
    """What every API request needs, built once per web app."""

    services: Services
    keys: KeyChecker
    limiter: KeyRateLimiter
    idempotency: IdempotencyStore
    extras: dict[str, Any] = field(default_factory=dict)


API_STATE = web.AppKey("api_state", ApiState)
# extras[SESSION_AUTH]: `async (request, state) -> KeyOwner | None`, another way in than a key (the Mini App's).
SESSION_AUTH = "session_auth"


@dataclass
class Call:
    """One authenticated API request, its input parsed."""

    request: web.Request
    state: ApiState
    owner: KeyOwner
    body: Any = None
    query: Any = None
    ids: dict[str, int] = field(default_factory=dict)
    idempotency_key: str | None = None

    @property
    def services(self) -> Services:
        return self.state.services

    @property
    def user_id(self) -> int:
        return self.owner.user_id

    def request_key(self, scope: str) -> str:
        """What core's own double-click protection is keyed on: the Idempotency-Key when given, so even a retry
        that outlives the stored answer buys once; otherwise a fresh key (a new request)."""
        if self.idempotency_key is None:
            return f"api:{scope}:{uuid.uuid4().hex}"
        digest = hashlib.sha256(self.idempotency_key.encode()).hexdigest()[:32]
        return f"api:{scope}:{digest}"


Result = tuple[int, BaseModel | None]
Handler = Callable[[Call], Awaitable[Result]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # below PREFIX, with {id} placeholders
    handler: Handler
    summary: str
    tag: str
    status: int
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    idempotent: bool = False
    description: str = ""
    body_optional: bool = False  # no body (or an empty one) reads as `{}`


OPERATIONS: list[Operation] = []


def operation(method: str, path: str, *, summary: str, tag: str, status: int = 200,
              response: type[BaseModel] | None = None, body: type[BaseModel] | None = None,
              query: type[BaseModel] | None = None, errors: tuple[int, ...] = (), idempotent: bool = False,
              description: str = "", body_optional: bool = False) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        OPERATIONS.append(Operation(method, path, handler, summary, tag, status, response, body, query, errors,
                                    idempotent, description, body_optional))
        return handler

    return register


def path_ids(operation: Operation) -> list[str]:
    return [part[1:-1] for part in operation.path.split("/") if part.startswith("{")]


def json_response(status: int, model: BaseModel | None) -> web.Response:
    if model is None:
        return web.Response(status=status)
    return web.Response(status=status, text=model.model_dump_json(by_alias=True), content_type="application/json")


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="cumapp"'})


async def authenticate(request: web.Request, state: ApiState) -> KeyOwner:
    """The key's owner, after its rate limit; 401 or 429 otherwise."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    session_auth = state.extras.get(SESSION_AUTH)
    if scheme.lower() != "bearer" or not secret.strip():
        # The Mini App's session cookie (webhooks.miniapp): the same limits and ownership checks as a key.
        owner = await session_auth(request, state) if session_auth is not None else None
        if owner is None:
            raise _unauthorized("send Authorization: Bearer <API key> (make one with /apikey in the chat)")
    else:
        owner = await state.keys.owner(secret.strip())
    if owner is None:
        raise _unauthorized("the API key is wrong or was revoked")
    wait = state.limiter.take(owner.key_id)
    if wait > 0:
        raise ApiProblem(429, "rate-limited", "too many requests for this key",
                         headers={"Retry-After": KeyRateLimiter.retry_after_header(wait)})
    return owner


def _validation_detail(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ())) or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


async def _parse(request: web.Request, operation: Operation, call: Call) -> Any:
    """Path ids, query and body into the call; returns the JSON body (for the idempotency hash)."""
    for name in path_ids(operation):
        raw = request.match_info.get(name, "")
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) >= ID_MAX:
            raise ApiProblem(404, "not-found", "no such resource in this account")
        call.ids[name] = int(raw)
    if operation.query is not None:
        try:
            call.query = operation.query.model_validate({k: v for k, v in request.query.items()})
        except ValidationError as error:
            raise ApiProblem(422, "invalid-query", _validation_detail(error)) from None
    raw_body: Any = None
    if operation.body is not None:
        raw = await request.read()
        try:
            raw_body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiProblem(400, "invalid-json", "the body is not JSON") from None
        try:
            call.body = operation.body.model_validate({} if not raw and operation.body_optional else raw_body)
        except ValidationError as error:
            raise ApiProblem(422, "invalid-body", _validation_detail(error)) from None
    return raw_body


def _handler(operation: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[API_STATE]
        try:
            owner = await authenticate(request, state)
            call = Call(request, state, owner)
            raw_body = await _parse(request, operation, call)
            key = request.headers.get(IDEMPOTENCY_HEADER) if operation.idempotent else None
            if key is not None:
                if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
                    raise ApiProblem(422, "invalid-idempotency-key",
                                     f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters")
                call.idempotency_key = key
                return await _idempotent(call, operation, raw_body)
            status, model = await operation.handler(call)
            return json_response(status, model)
        except web.HTTPException:
            raise
        except Exception as error:
            return _problem_for(request, error).response()

    handle.__name__ = operation.handler.__name__
    return handle


async def _idempotent(call: Call, operation: Operation, raw_body: Any) -> web.Response:
    """The first request with this key runs and its answer is kept (errors included); a repeat gets it back."""
    store = call.state.idempotency
    assert call.idempotency_key is not None
    digest = request_hash(operation.method, call.request.path, raw_body)
    claimed = await store.claim(call.user_id, call.idempotency_key, digest)
    if not isinstance(claimed, int):
        body = claimed.body
        if claimed.status >= 400:
            response = web.Response(status=claimed.status, text=json.dumps(body), content_type="application/problem+json")
        elif body is None:
            response = web.Response(status=claimed.status)
        else:
            response = web.Response(status=claimed.status, text=json.dumps(body), content_type="application/json")
        response.headers["Idempotent-Replayed"] = "true"
        return response
    try:
        status, model = await operation.handler(call)
    except Exception as error:
        problem = from_error(error)
        if problem is None or problem.status >= 500 or problem.status in (409, 429):
            # Not an answer to keep (our defect, the provider, a conflict of the moment): a retry runs again,
            # and core's own request key still keeps it from buying twice.
            await store.release(claimed)
            raise
        await store.finish(claimed, problem.status, problem.body())
        return problem.response()
    body = None if model is None else json.loads(model.model_dump_json(by_alias=True))
    await store.finish(claimed, status, body)
    return json_response(status, model)


def _problem_for(request: web.Request, error: Exception) -> ApiProblem:
    problem = from_error(error)
    if problem is not None:
        return problem
    if db_faults.database_unavailable(error):
        log.warning("%s %s answered 503: the database is unavailable (%s)", request.method, request.path,
                    db_faults.describe(error))
        return ApiProblem(503, "unavailable", "temporarily unavailable; retry", headers={"Retry-After": "5"},
                          title="Service unavailable")
    error_id = uuid.uuid4().hex[:12]
    log.error("API %s %s failed (error id %s)", request.method, request.path, error_id, exc_info=error)
    return ApiProblem(500, "internal-error", f"an error on our side (error id {error_id})",
                      title="Internal server error")


def add_operation_routes(app: web.Application) -> None:
    for op in OPERATIONS:
        app.router.add_route(op.method, PREFIX + op.path, _handler(op))
