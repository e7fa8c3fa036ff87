"""Groq as the AI engine: structured JSON answers through the async SDK, bounded in time and retries."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import groq
from groq import AsyncGroq
from groq.types.chat import ChatCompletion
from pydantic import SecretStr, ValidationError

from core.providers import ai_prompts
from core.providers.ai import (
    AiEngineError,
    AiOutputInvalid,
    AiResult,
    AiUnavailable,
    Analysis,
    ChatTurn,
    Drafts,
    TemplateDraft,
)

log = logging.getLogger(__name__)

# The SDK logs every request body at DEBUG, i.e. the (masked) SMS text; keep that out of our logs even when an
# operator turns DEBUG on, unless the SDK's logging was configured on purpose (GROQ_LOG sets a level).
if logging.getLogger("groq").level == logging.NOTSET:
    logging.getLogger("groq").setLevel(logging.INFO)

DEFAULT_MODEL = "openai/gpt-oss-20b"
# Groq's structured-outputs docs list these two for `strict: true` (constrained decoding, output always fits
# the schema); other models get best-effort json_schema.
STRICT_SCHEMA_MODELS = frozenset({"openai/gpt-oss-20b", "openai/gpt-oss-120b"})
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_FIRST_BACKOFF_SECONDS = 0.25

M = TypeVar("M", Analysis, Drafts, TemplateDraft)


class GroqEngine:
    """The primary AI engine. `name` is "groq:<model>"; the API key is never logged or shown in repr."""

    def __init__(
        self,
        api_key: SecretStr | str,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        timeout_seconds: float = 3.0,
        *,
        max_retries: int = 1,
        max_retry_wait_seconds: float = 1.0,
        max_completion_tokens: int = 1024,
        temperature: float = 0.4,
    ) -> None:
        secret = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not secret.get_secret_value().strip():
            raise ValueError("GroqEngine needs a non-empty API key")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._model = model
        self._base_url = base_url
        self._max_retries = max(0, max_retries)
        self._max_retry_wait = max(0.0, max_retry_wait_seconds)
        self._max_completion_tokens = max_completion_tokens
        self._temperature = temperature
        self._use_json_schema = True
        # Retries are ours, not the SDK's: the SDK sleeps for any retry-after up to 60 s, whereas an answer
        # is due within seconds, so a wait that does not fit is better spent on the fallback right away.
        # base_url None lets the SDK read GROQ_BASE_URL itself, as the contract promises operators.
        self._client = AsyncGroq(
            api_key=secret.get_secret_value(), base_url=base_url, timeout=timeout_seconds, max_retries=0
        )

    @property
    def name(self) -> str:
        return f"groq:{self._model}"

    @property
    def model(self) -> str:
        return self._model

    def __repr__(self) -> str:
        return f"GroqEngine(model={self._model!r}, base_url={self._base_url!r})"

    async def close(self) -> None:
        await self._client.close()

    # --- the AiEngine interface -----------------------------------------------------------------------------

    async def analyze(self, text: str) -> AiResult[Analysis]:
        return await self._complete(
            ai_prompts.analysis_messages(text),
            ai_prompts.ANALYSIS_SCHEMA_NAME,
            ai_prompts.ANALYSIS_SCHEMA,
            Analysis,
        )

    async def draft_replies(self, history: Sequence[ChatTurn], locale: str) -> AiResult[Drafts]:
        return await self._complete(
            ai_prompts.drafts_messages(history, locale),
            ai_prompts.DRAFTS_SCHEMA_NAME,
            ai_prompts.DRAFTS_SCHEMA,
            Drafts,
        )

    async def draft_template(self, description: str, locale: str) -> AiResult[TemplateDraft]:
        return await self._complete(
            ai_prompts.template_messages(description, locale),
            ai_prompts.TEMPLATE_SCHEMA_NAME,
            ai_prompts.TEMPLATE_SCHEMA,
            TemplateDraft,
        )

    # --- one structured answer -----------------------------------------------------------------------------

    async def _complete(
        self, messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any], model_cls: type[M]
    ) -> AiResult[M]:
        """Ask, check the answer against `model_cls`, ask once more if it does not fit, then give up."""
        tokens = 0
        problem = ""
        for attempt in (1, 2):
            try:
                completion = await self._create(messages, schema_name, schema)
                tokens += _total_tokens(completion)
                return AiResult(parse_output(model_cls, _content(completion), self.name), tokens)
            except AiEngineError as exc:
                exc.tokens += tokens
                raise
            except ValueError as exc:  # JSON syntax, pydantic validation and Groq's own schema check alike
                problem = _describe(exc)
                log.warning("groq answer for %s did not fit (attempt %d): %s", schema_name, attempt, problem)
        raise AiOutputInvalid(f"{schema_name}: {problem}", tokens=tokens)

    async def _create(
        self, messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any]
    ) -> ChatCompletion:
        retries = 0
        while True:
            started = time.monotonic()
            try:
                return await self._client.chat.completions.create(
                    **self._request(messages, schema_name, schema)
                )
            except groq.BadRequestError as exc:
                if _error_field(exc, "code") == "json_validate_failed":
                    # Groq checked the output against the schema and refused it: a bad answer, not a bad call.
                    raise _OutputRefused("groq could not produce output that fits the schema") from exc
                if self._use_json_schema and _rejects_json_schema(exc):
                    # A model without structured outputs still has JSON mode; the schema goes in the prompt.
                    log.warning(
                        "model %s does not take json_schema; using json_object from now on", self._model
                    )
                    self._use_json_schema = False
                    continue
                raise _error(exc, defect=True) from exc
            except groq.APITimeoutError as exc:
                # Another attempt would not fit the answer budget either.
                raise AiUnavailable(f"no answer within {time.monotonic() - started:.1f} s") from exc
            except groq.APIStatusError as exc:
                wait = self._retry_wait(exc.response.status_code, exc.response.headers, retries)
                if wait is None:
                    raise _error(exc, defect=exc.status_code == 422) from exc
            except groq.APIConnectionError as exc:
                if retries >= self._max_retries:
                    raise AiUnavailable(f"connection failed: {type(exc.__cause__ or exc).__name__}") from exc
                wait = self._backoff(retries)
            retries += 1
            log.info("retrying groq in %.2f s (retry %d)", wait, retries)
            await asyncio.sleep(wait)

    def _request(
        self, messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any]
    ) -> dict[str, Any]:
        response_format: dict[str, Any]
        if self._use_json_schema:
            response_format = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema_name,
                    "schema": schema,
                    "strict": self._model in STRICT_SCHEMA_MODELS,
                },
            }
        else:
            response_format = {"type": "json_object"}
            messages = [messages[0], ai_prompts.json_object_instruction(schema), *messages[1:]]
        request: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "response_format": response_format,
            "temperature": self._temperature,
            "max_completion_tokens": self._max_completion_tokens,
        }
        if self._model.startswith("openai/gpt-oss"):
            # Short classifying and drafting gain nothing from long reasoning, which costs time and tokens.
            request["reasoning_effort"] = "low"
            request["include_reasoning"] = False
        return request

    def _retry_wait(self, status: int, headers: Mapping[str, str], retries: int) -> float | None:
        """Seconds to wait before another try, or None to give up now."""
        should_retry = headers.get("x-should-retry")
        if retries >= self._max_retries or should_retry == "false":
            return None
        if should_retry != "true" and status not in _RETRYABLE_STATUSES and status < 500:
            return None
        retry_after = parse_retry_after(headers)
        if retry_after is None:
            return self._backoff(retries)
        return retry_after if retry_after <= self._max_retry_wait else None

    def _backoff(self, retries: int) -> float:
        return min(self._max_retry_wait, _FIRST_BACKOFF_SECONDS * 2**retries) * (1 - 0.25 * random.random())


def parse_output(model_cls: type[M], content: str | None, engine: str) -> M:
    """The model's JSON answer as `model_cls`, labelled with `engine`; ValueError when it does not fit."""
    if not content or not content.strip():
        raise ValueError("empty answer")
    data = json.loads(content)
    if not isinstance(data, dict):
        raise ValueError("answer is not a JSON object")
    # Best-effort models add stray keys now and then; only the engine label must never come from the model.
    fields = {key: value for key, value in data.items() if key in model_cls.model_fields and key != "engine"}
    return model_cls.model_validate({**fields, "engine": engine})


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds asked for by `retry-after-ms` or `retry-after` (seconds or HTTP date), read as the SDK does."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) * scale
        except ValueError:
            parsed = email.utils.parsedate_tz(raw) if scale == 1.0 else None
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        return max(0.0, seconds)
    return None


def _content(completion: ChatCompletion) -> str | None:
    if not completion.choices:
        return None
    return completion.choices[0].message.content


def _total_tokens(completion: ChatCompletion) -> int:
    usage = completion.usage
    return int(usage.total_tokens) if usage is not None and usage.total_tokens else 0


class _OutputRefused(ValueError):
    """Groq's own check of the output against the schema failed (HTTP 400 json_validate_failed)."""


def _error_field(exc: groq.APIStatusError, field: str) -> str:
    # Only named fields: the whole body can hold `failed_generation`, the model's output quoting the SMS.
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    value = error.get(field) if isinstance(error, dict) else None
    return value if isinstance(value, str) else ""


def _rejects_json_schema(exc: groq.BadRequestError) -> bool:
    text = f"{_error_field(exc, 'code')} {_error_field(exc, 'message')}".lower()
    return "json_schema" in text or "response_format" in text or "response format" in text


def _error(exc: groq.APIStatusError, *, defect: bool = False) -> AiUnavailable:
    retry_after = parse_retry_after(exc.response.headers)
    return AiUnavailable(
        f"groq answered HTTP {exc.status_code} ({type(exc).__name__})",
        status=exc.status_code,
        retry_after=retry_after,
        defect=defect,
    )


def _describe(exc: ValueError) -> str:
    # Never the offending input: the model's output may quote the SMS, and logs must not carry it.
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors(include_input=False)
        )
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at position {exc.pos}"
    return str(exc)
