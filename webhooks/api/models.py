"""Request and response bodies of the integrator API; the OpenAPI document is generated from these models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool

# No NUL characters anywhere: PostgreSQL cannot store them, and no phone number or service has one.
Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]
Id = Annotated[str, Field(pattern=r"^[0-9]+$", examples=["42"])]
Phone = Annotated[str, Field(min_length=3, max_length=24, pattern=r"^\+?[0-9][0-9 ().-]{1,22}$",
                             examples=["+15550100001"])]


class Body(BaseModel):
    """A request body: unknown fields are refused, so a typo is a 422, not a silent default."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Answer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Problem(Answer):
    """An error, as RFC 9457 application/problem+json."""

    type: str = Field(examples=["https://cumapp.dev/problems/not-found"])
    title: str
    status: int
    detail: str | None = None


class Account(Answer):
    id: Id
    tier: str
    available_cents: int
    held_cents: int


class Service(Answer):
    id: str
    name: str
    price_cents: int


class ServiceList(Answer):
    data: list[Service]


class VerificationRequest(Body):
    service: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$", examples=["whatsapp"])]


class Verification(Answer):
    id: Id
    service: str
    number: str | None
    state: Literal["requested", "active", "code_received", "completed", "cancelled", "expired", "failed"]
    price_cents: int
    code: str | None
    expires_at: datetime | None
    created_at: datetime


class VerificationList(Answer):
    data: list[Verification]


class NumberRequest(Body):
    """Buy a number: a given `number` (from a search), or any number in `country`, optionally in `area_code`."""

    country: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$", examples=["US"])] | None = None
    area_code: Annotated[str, Field(pattern=r"^[0-9]{2,5}$", examples=["415"])] | None = None
    number: Phone | None = None


class PhoneNumber(Answer):
    id: Id
    number: str
    country: str
    state: Literal["active", "released"]
    monthly_price_cents: int
    renews_at: datetime | None
    auto_renew: bool = Field(description="Renewed from the balance on `renews_at` (on by default).")
    created_at: datetime


class PhoneNumberList(Answer):
    data: list[PhoneNumber]


class RenewRequest(Body):
    """Renew now. `renews_at` names the period to pay (the one starting then) as the number showed it, so a repeat
    pays nothing; without it, the period starting at the number's renewal date at the time of the call."""

    renews_at: AwareDatetime | None = Field(default=None, examples=["2026-12-31T12:00:00Z"])


class NumberUpdate(Body):
    auto_renew: StrictBool


class MessageRequest(Body):
    from_: Phone = Field(alias="from")
    to: Phone
    text: Annotated[str, Field(min_length=1, max_length=1600, pattern=r"^[^\x00]*$")]


class MessageAccepted(Answer):
    id: Id
    state: str


class Message(Answer):
    id: Id
    direction: Literal["inbound", "outbound"]
    from_: str = Field(alias="from")
    to: str
    text: str
    state: str
    conversation_id: Id | None
    created_at: datetime


class MessageList(Answer):
    data: list[Message]


class Conversation(Answer):
    id: Id
    number: str
    peer: str
    unread_count: int
    blocked: bool
    last_message_at: datetime


class ConversationList(Answer):
    data: list[Conversation]


class WebhookEndpointRequest(Body):
    url: Annotated[str, Field(min_length=8, max_length=2048, pattern=r"^https?://[^\x00\s]+$",
                              examples=["https://example.com/cumapp-events"])]


class WebhookEndpoint(Answer):
    id: Id
    url: str
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpoint):
    secret: str = Field(description="Signs each delivery (CumApp-Signature); shown only in this answer.")


class WebhookEndpointList(Answer):
    data: list[WebhookEndpoint]


class Event(Answer):
    """What the WebSocket sends and webhook endpoints receive."""

    id: Id
    type: Literal["verification.code", "verification.closed", "message.received", "message.status"]
    created_at: datetime
    data: dict[str, Any]


class ServicesQuery(Body):
    search: Annotated[str, Field(max_length=64, pattern=r"^[^\x00]*$")] | None = None


class MessagesQuery(Body):
    number: Phone | None = None
    peer: Phone | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 50


class EventsQuery(Body):
    after: Id | None = None
