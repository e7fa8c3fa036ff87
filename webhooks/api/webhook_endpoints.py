"""Webhook endpoints: where this account's events are also POSTed, signed with the secret shown once at creation."""

from __future__ import annotations

from core.api.endpoints import Endpoints
from core.models import ApiWebhookEndpoint
from webhooks.api import models
from webhooks.api.problems import ApiProblem
from webhooks.api.routing import Call, Result, operation

ENDPOINTS = "endpoints"


def _endpoints(call: Call) -> Endpoints:
    return call.state.extras[ENDPOINTS]


def as_model(endpoint: ApiWebhookEndpoint) -> models.WebhookEndpoint:
    return models.WebhookEndpoint(id=str(endpoint.id), url=endpoint.url, created_at=endpoint.created_at)


@operation("POST", "/webhook-endpoints", summary="Add an address that receives this account's events",
           tag="events", status=201, response=models.WebhookEndpointCreated, body=models.WebhookEndpointRequest,
           errors=(400, 409, 422),
           description="Each event is POSTed as JSON with `CumApp-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 "
           "of \"<t>.<body>\" with the secret>`; anything but a 2xx within 10 s is retried with backoff for 24 h. "
           "Only https addresses on public networks are taken, unless the operator allows private ones.")
async def create_endpoint(call: Call) -> Result:
    endpoint = await _endpoints(call).create(call.user_id, call.body.url)
    return 201, models.WebhookEndpointCreated(id=str(endpoint.id), url=endpoint.url,
                                              created_at=endpoint.created_at, secret=endpoint.secret)


@operation("GET", "/webhook-endpoints", summary="This account's webhook endpoints", tag="events",
           response=models.WebhookEndpointList)
async def list_endpoints(call: Call) -> Result:
    rows = await _endpoints(call).list(call.user_id)
    return 200, models.WebhookEndpointList(data=[as_model(row) for row in rows])


@operation("DELETE", "/webhook-endpoints/{id}", summary="Stop sending events to an endpoint", tag="events",
           status=204, errors=(404,))
async def delete_endpoint(call: Call) -> Result:
    if not await _endpoints(call).delete(call.user_id, call.ids["id"]):
        raise ApiProblem(404, "not-found", "no such resource in this account")
    return 204, None
