"""The OpenAPI 3.1 document, generated from the route table and its pydantic models (so it cannot drift from the
code), and GET /api/docs, a page shipped in this package that renders it without any outside asset."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from core.version import __version__
from webhooks.api import models
from webhooks.api.problems import PROBLEM_TYPE, TITLES
from webhooks.api.routing import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_MAX,
    OPERATIONS,
    PREFIX,
    Operation,
    path_ids,
)

REF = "#/components/schemas/{model}"
DESCRIPTION = (
    "Your CumApp account from code. Make a key with /apikey in the chat and send it as "
    "`Authorization: Bearer <key>`. Money is in integer cents (`…_cents`), times are RFC 3339 UTC, ids are "
    "strings. Errors are application/problem+json (RFC 9457). Every POST that buys or sends takes "
    "`Idempotency-Key`: the same key with the same body returns the first answer and does nothing again; with "
    "another body, 422. Events (verification.code, verification.closed, message.received, message.status) come "
    "on the WebSocket GET /api/v1/events (`?after=<event id>` replays the last 24 hours) and at your webhook "
    "endpoints."
)


def _problem(status: int, *, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": TITLES.get(status, "Error"),
        "content": {PROBLEM_TYPE: {"schema": {"$ref": REF.format(model="Problem")}}},
    }
    if retry_after:
        answer["headers"] = {"Retry-After": {"description": "seconds to wait", "required": True,
                                             "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    return answer


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model=ref)}}}}


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def _operation(op: Operation, names: dict[tuple[type[BaseModel], str], str], schemas: dict[str, Any]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in path_ids(op)
    ]
    if op.query is not None:
        parameters += _query_parameters(op.query, schemas)
    if op.idempotent:
        parameters.append({
            "name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
            "description": "Makes a retry safe: the first answer is returned again and nothing is done twice.",
            "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX},
        })
    responses: dict[str, Any] = {}
    if op.response is not None:
        responses[str(op.status)] = _json(names[(op.response, "serialization")], "OK")
    else:
        responses[str(op.status)] = {"description": "Done; no content"}
    statuses = {401, 429, 500, 503, *op.errors}
    if path_ids(op):
        statuses.add(404)
    if op.idempotent:
        statuses |= {409, 422}
    for status in sorted(statuses):
        responses[str(status)] = _problem(status, retry_after=status in (429, 503))
    spec: dict[str, Any] = {
        "operationId": op.handler.__name__, "summary": op.summary, "tags": [op.tag], "responses": responses,
    }
    if op.description:
        spec["description"] = op.description
    if parameters:
        spec["parameters"] = parameters
    if op.body is not None:
        spec["requestBody"] = {"required": not op.body_optional, "content": {"application/json": {
            "schema": {"$ref": REF.format(model=names[(op.body, "validation")])}}}}
    return spec


@cache
def document() -> dict[str, Any]:
    """The whole document (built once per process: the routes do not change at run time)."""
    wanted: set[tuple[type[BaseModel], str]] = {(models.Problem, "serialization"), (models.Event, "serialization")}
    for op in OPERATIONS:
        if op.response is not None:
            wanted.add((op.response, "serialization"))
        if op.body is not None:
            wanted.add((op.body, "validation"))
    ordered = sorted(wanted, key=lambda pair: (pair[0].__name__, pair[1]))
    keyed, defs = models_json_schema(ordered, ref_template=REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    names = {pair: keyed[pair]["$ref"].rsplit("/", 1)[-1] for pair in ordered}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(PREFIX + op.path, {})[op.method.lower()] = _operation(op, names, schemas)
    paths[PREFIX + "/events"] = {"get": {
        "operationId": "events", "tags": ["events"],
        "summary": "WebSocket of this account's events (connect with a WebSocket client)",
        "description": "Each message is one event as JSON (schema Event). `?after=<event id>` first replays the "
                       "stored events after it.",
        "parameters": [{"name": "after", "in": "query", "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]+$"}}],
        "responses": {
            "101": {"description": "Switching to the WebSocket protocol"},
            **{str(status): _problem(status, retry_after=status in (429, 503)) for status in (400, 401, 422, 429,
                                                                                              500, 503)},
        },
    }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "CumApp integrator API", "version": __version__, "description": DESCRIPTION},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key made with /apikey in the chat"}},
        },
    }


async def openapi_json(_request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(document()), content_type="application/json")


async def docs_page(_request: web.Request) -> web.Response:
    page = resources.files("webhooks.api").joinpath("assets/docs.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                 "script-src 'unsafe-inline'"})
