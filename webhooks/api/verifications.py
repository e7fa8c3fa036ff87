"""Verifications: buy (201, with Idempotency-Key), list, read and cancel, through the chat's VerificationService."""

from __future__ import annotations

from core.models import Verification
from webhooks.api import models
from webhooks.api.routing import Call, Result, operation

LIST_MAX = 50


def as_model(verification: Verification) -> models.Verification:
    return models.Verification(
        id=str(verification.id), service=verification.service, number=verification.phone_number,
        state=verification.state,  # type: ignore[arg-type]
        price_cents=verification.price_cents, code=verification.code, expires_at=verification.ends_at,
        created_at=verification.created_at,
    )


@operation("POST", "/verifications", summary="Buy a number for one service's code", tag="verifications",
           status=201, response=models.Verification, body=models.VerificationRequest,
           errors=(400, 402, 403, 409, 422, 502), idempotent=True,
           description="The price is held from the balance and captured by the first SMS; every other end "
           "(cancel, expiry) releases it. The code arrives as a `verification.code` event.")
async def buy(call: Call) -> Result:
    verification = await call.services.verification.start(
        call.user_id, call.body.service, call.request_key("vf")
    )
    return 201, as_model(verification)


@operation("GET", "/verifications", summary="This account's verifications, newest first", tag="verifications",
           response=models.VerificationList)
async def list_verifications(call: Call) -> Result:
    rows, _ = await call.services.verification.history(call.user_id, 0, LIST_MAX)
    return 200, models.VerificationList(data=[as_model(row) for row in rows])


@operation("GET", "/verifications/{id}", summary="One verification", tag="verifications",
           response=models.Verification, errors=(404,))
async def get_verification(call: Call) -> Result:
    return 200, as_model(await call.services.verification.get(call.user_id, call.ids["id"]))


@operation("POST", "/verifications/{id}/cancel", summary="Cancel before the code comes (refunded once)",
           tag="verifications", response=models.Verification, errors=(404, 409, 502))
async def cancel_verification(call: Call) -> Result:
    return 200, as_model(await call.services.verification.cancel(call.user_id, call.ids["id"]))
