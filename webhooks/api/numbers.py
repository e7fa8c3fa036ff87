"""Owned numbers: list, buy (by number, or any in a country and area code), release, and the rental's Renew now
and Auto-renew (core.messaging.renewals, the same calls as the chat's number screen), as the chat's /numbers."""

from __future__ import annotations

from core.messaging.errors import MessagingError
from core.messaging.renewals import period_id
from core.models import PhoneNumber
from core.providers.sms import country_of
from webhooks.api import models
from webhooks.api.messages import plain_e164
from webhooks.api.problems import ApiProblem
from webhooks.api.routing import Call, Result, operation


def as_model(number: PhoneNumber) -> models.PhoneNumber:
    return models.PhoneNumber(
        id=str(number.id), number=number.e164, country=number.country,
        state=number.state,  # type: ignore[arg-type]
        monthly_price_cents=number.monthly_price_cents, renews_at=number.renews_at, auto_renew=number.auto_renew,
        created_at=number.purchased_at,
    )


@operation("GET", "/numbers", summary="This account's active numbers", tag="numbers", response=models.PhoneNumberList)
async def list_numbers(call: Call) -> Result:
    numbers = await call.services.messaging.list_numbers(call.user_id)
    return 200, models.PhoneNumberList(data=[as_model(number) for number in numbers])


@operation("POST", "/numbers", summary="Buy a number for a month", tag="numbers", status=201,
           response=models.PhoneNumber, body=models.NumberRequest, errors=(400, 402, 403, 409, 422, 502),
           idempotent=True, description="Give `number` (as found for sale) or `country` and optionally "
           "`area_code`. The month is paid from the balance at once, as in the chat.")
async def buy_number(call: Call) -> Result:
    messaging = call.services.messaging
    request: models.NumberRequest = call.body
    await messaging.check_can_buy(call.user_id)
    if request.number is not None:
        e164 = plain_e164(request.number)
        if country_of(e164) == "ZZ":
            raise ApiProblem(422, "invalid-number", "not a phone number in international format")
    else:
        if request.country is None:
            raise ApiProblem(422, "invalid-body", "give `number`, or `country` (and optionally `area_code`)")
        found = await messaging.search_numbers(request.country.upper(), request.area_code, limit=1)
        if not found:
            raise ApiProblem(409, "no-numbers", "no number for sale there right now")
        e164 = found[0].e164
    try:
        number = await messaging.buy_number(call.user_id, e164, call.request_key("num"))
    except MessagingError as error:
        if error.key == "num_gone":
            raise ApiProblem(409, "num-gone", "that number is not for sale (any more)") from error
        raise
    return 201, as_model(number)


@operation("DELETE", "/numbers/{id}", summary="Release a number (no refund of the month paid)", tag="numbers",
           response=models.PhoneNumber, errors=(404, 409, 502))
async def release_number(call: Call) -> Result:
    return 200, as_model(await call.services.messaging.release_number(call.user_id, call.ids["id"]))


# --- rentals: an extension beside the contract's endpoints (the chat's Renew now and Auto-renew) ------------------


@operation("POST", "/numbers/{id}/renew", summary="Renew now: pay the next month from the balance", tag="numbers",
           response=models.PhoneNumber, body=models.RenewRequest, body_optional=True, errors=(400, 402, 409, 422),
           idempotent=True, description="Pays the period starting at `renews_at` (send the `renews_at` the number "
           "showed; without a body, the number's renewal date now) and moves `renews_at` on a month. A repeat for "
           "a period already paid (by this call or the monthly renewal) answers with the number as it is and "
           "charges nothing. At most one month ahead can be paid; 402 when the balance does not cover it.")
async def renew_number(call: Call) -> Result:
    request: models.RenewRequest = call.body
    renews_at = request.renews_at
    if renews_at is None:
        renews_at = (await call.services.messaging.owned_number(call.user_id, call.ids["id"])).renews_at
    period = period_id(renews_at) if renews_at is not None else 0
    outcome = await call.services.messaging.renewals.renew_now(call.user_id, call.ids["id"], period)
    return 200, as_model(outcome.number)


@operation("PATCH", "/numbers/{id}", summary="Turn Auto-renew on or off", tag="numbers",
           response=models.PhoneNumber, body=models.NumberUpdate, errors=(400, 409, 422),
           description="With `auto_renew` off the number is not renewed on `renews_at`; it is kept 7 days unpaid "
           "(Renew now still pays it), then released.")
async def update_number(call: Call) -> Result:
    request: models.NumberUpdate = call.body
    number = await call.services.messaging.renewals.set_auto_renew(call.user_id, call.ids["id"], request.auto_renew)
    return 200, as_model(number)
