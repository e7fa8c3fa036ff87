"""GET /api/v1/account and GET /api/v1/services."""

from __future__ import annotations

import asyncio

from core.models import User
from core.verification.catalogue import Quote
from webhooks.api import models
from webhooks.api.routing import Call, Result, operation

# Each price is read from the provider now (never cached across users), so a list asks for at most this many.
SERVICES_MAX = 20


async def load_user(call: Call) -> User:
    async with call.services.db.read() as session:
        user = await session.get(User, call.user_id)
    assert user is not None  # the key check joined the account
    return user


@operation("GET", "/account", summary="The key's account: tier and money", tag="account", response=models.Account)
async def get_account(call: Call) -> Result:
    user = await load_user(call)
    return 200, models.Account(id=str(user.id), tier=user.tier, available_cents=user.available_cents,
                               held_cents=user.held_cents)


@operation("GET", "/services", summary="Services a verification can be bought for, with this account's price",
           tag="verifications", response=models.ServiceList, query=models.ServicesQuery, errors=(422, 502),
           description=f"The popular services, or with `search` the best {SERVICES_MAX} matches of a name or id.")
async def list_services(call: Call) -> Result:
    verification = call.services.verification
    search = (call.query.search or "").strip()
    found = await (verification.search_services(search) if search else verification.popular_services())
    user = await load_user(call)
    quotes: list[Quote | BaseException] = await asyncio.gather(
        *(verification.quote(user, service.code) for service in found[:SERVICES_MAX]), return_exceptions=True
    )
    data = [models.Service(id=quote.service, name=quote.name, price_cents=quote.price_cents)
            for quote in quotes if isinstance(quote, Quote)]
    return 200, models.ServiceList(data=data)
