"""A local Groq: the OpenAI-compatible chat-completions endpoint the groq SDK posts to, scripted per test."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

CHAT_PATH = "/openai/v1/chat/completions"  # the SDK appends this to its base_url
_SCHEMA_IN_PROMPT = re.compile(r"JSON schema:\s*(\{.*\})\s*$", re.DOTALL)
_PREFERRED_ENUM_VALUES = ("other", "neutral", "normal")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it, for assertions about what left the bot."""

    path: str
    model: str | None
    messages: list[dict[str, Any]]
    response_format: dict[str, Any] | None
    body: dict[str, Any]
    authorization: str | None

    def content(self, role: str) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages if m.get("role") == role)

    @property
    def system(self) -> str:
        return self.content("system")

    @property
    def user(self) -> str:
        return self.content("user")


@dataclass(frozen=True)
class _Fail:
    status: int
    retry_after: float | None
    message: str
    code: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Reply:
    content: str


_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("tokens", "rate_limit_exceeded"),
    500: ("internal_server_error", "internal_server_error"),
    503: ("internal_server_error", "service_unavailable"),
}


class FakeGroqServer:
    """`async with FakeGroqServer() as fake:` then hand `fake.url` to AsyncGroq as base_url.

    Scripted answers are used in order, one per request: `fail_next`, `invalid_json_next`, and `respond_with`
    (which without `times` keeps answering until `reset()`). Unscripted requests get a valid example of the
    requested schema. `delay` holds every answer back that many seconds; `requests` records what came in.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.delay: float = 0.0
        self.handler_seconds: list[float] = []  # time spent inside the fake per answered request
        self.usages: list[dict[str, int]] = []
        self._script: deque[_Fail | _Reply] = deque()
        self._sticky: _Reply | None = None
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- scripting -----------------------------------------------------------------------------------------

    def respond_with(self, value: Any, *, times: int | None = None) -> None:
        """Answer with `value` (a JSON-able object, or text sent as it is): `times` times, or until reset."""
        reply = _Reply(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        if times is None:
            self._sticky = reply
        else:
            self._script.extend([reply] * times)

    def fail_next(
        self,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        *,
        message: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        kind, default_code = _ERROR_TYPES.get(status, ("api_error", "api_error"))
        failure = _Fail(
            status=status,
            retry_after=retry_after,
            message=message or f"fake failure {status} ({kind})",
            code=code or default_code,
            headers=dict(headers or {}),
        )
        self._script.extend([failure] * count)

    def invalid_json_next(self, count: int = 1) -> None:
        self._script.extend([_Reply('{"intent": "other", "summary": "cut off')] * count)

    def reset(self) -> None:
        self._script.clear()
        self._sticky = None
        self.delay = 0.0

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeGroqServer:
        app = web.Application()
        app.router.add_post(CHAT_PATH, self._chat)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # Cancelling handlers on disconnect and a short shutdown keep a slow answer from delaying teardown.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- the endpoint --------------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = await request.json()
        recorded = RecordedRequest(
            path=request.path,
            model=body.get("model"),
            messages=list(body.get("messages") or []),
            response_format=body.get("response_format"),
            body=body,
            authorization=request.headers.get("Authorization"),
        )
        self.requests.append(recorded)
        action = self._script.popleft() if self._script else self._sticky
        if self.delay > 0:
            try:
                await asyncio.wait_for(self._closing.wait(), self.delay)
            except TimeoutError:
                pass
            started += self.delay  # the scripted wait is the "model's" time, not the fake's
        if isinstance(action, _Fail):
            return self._error(action)
        content = action.content if action is not None else json.dumps(_default_answer(recorded))
        answer = self._completion(recorded, content)
        self.handler_seconds.append(time.perf_counter() - started)
        return web.json_response(answer)

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": f"Unknown request URL: {request.method} {request.path}",
                    "type": "invalid_request_error",
                    "code": "unknown_url",
                }
            },
            status=404,
        )

    def _completion(self, recorded: RecordedRequest, content: str) -> dict[str, Any]:
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in recorded.messages) // 4 + 1
        completion_tokens = len(content) // 4 + 1
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        self.usages.append(usage)
        number = next(self._ids)
        return {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": recorded.model or "unknown",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                **usage,
                "queue_time": 0.001,
                "prompt_time": 0.001,
                "completion_time": 0.01,
                "total_time": 0.012,
            },
            "system_fingerprint": "fp_fake",
            "x_groq": {"id": f"req_fake_{number}"},
        }

    @staticmethod
    def _error(failure: _Fail) -> web.Response:
        kind, _ = _ERROR_TYPES.get(failure.status, ("api_error", "api_error"))
        headers = dict(failure.headers)
        if failure.retry_after is not None:
            headers["retry-after"] = f"{failure.retry_after:g}"
        return web.json_response(
            {"error": {"message": failure.message, "type": kind, "code": failure.code}},
            status=failure.status,
            headers=headers,
        )


def _default_answer(recorded: RecordedRequest) -> Any:
    """A valid example of whatever schema the request asked for (or spelled out in its prompt)."""
    response_format = recorded.response_format or {}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if schema is None:
        found = _SCHEMA_IN_PROMPT.search(recorded.system)
        schema = json.loads(found.group(1)) if found else {"type": "object", "properties": {}}
    return example_of(schema)


def example_of(schema: dict[str, Any], name: str = "value") -> Any:
    """A plausible value that satisfies `schema`; arrays get three distinct items (the drafts want three)."""
    if "enum" in schema:
        values = list(schema["enum"])
        return next((v for v in _PREFERRED_ENUM_VALUES if v in values), values[0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        if "null" in kind:
            return None
        kind = kind[0]
    if kind == "object":
        return {key: example_of(child, key) for key, child in (schema.get("properties") or {}).items()}
    if kind == "array":
        item = schema.get("items") or {"type": "string"}
        singular = name[:-1] if name.endswith("s") else name
        return [_numbered(example_of(item, singular), i) for i in range(1, 4)]
    if kind in ("number", "integer"):
        return 0
    if kind == "boolean":
        return False
    return f"Example {name.replace('_', ' ')}."


def _numbered(value: Any, number: int) -> Any:
    return f"{value.rstrip('.')} {number}." if isinstance(value, str) else value
