"""The same number again, for a verification whose code came: reuse it or reactivate it, after its price and Confirm.

The provider decides which is possible (TextVerified v2: reuse shortly after the code, reactivation later), so the
button asks it first and offers only what would work; a card whose chance has passed loses the button.
"""

from __future__ import annotations

from bot.handlers.router import Request, action
from bot.handlers.screens import Button, Screen
from bot.handlers.selling import with_sandbox_notice
from bot.handlers.verify import _service, _status_screen, _verification_id
from bot.render import plain_text
from core.money import offers
from core.platform.i18n import money
from core.verification.purchase import OFFER_TTL
from core.verification.service import ACTION_SAME_NUMBER

OFFER_KIND = "vfsame"
ACTION_CONFIRM = "vfsok"  # vfsok:<offer token>
ACTION_BACK_OUT = "vfsx"  # vfsx:<offer token>


@action(ACTION_SAME_NUMBER)
async def same_number(req: Request) -> Screen:
    """Asks the provider how the number can be had again and shows that, with its price, Confirm and Cancel."""
    verification_id = _verification_id(req)
    offer = await _service(req).same_number_offer(req.user.id, verification_id)
    if offer is None:
        # Its time has passed: the card is shown again without the button, so it is not offered twice.
        verification = await _service(req).get(req.user.id, verification_id)
        screen = _status_screen(req, verification, edit=True, same_number=None)
        screen.toast = plain_text(req.t("vf_same_gone"))[:190]
        return screen
    v = offer.verification
    token = await offers.make(
        req.db, OFFER_KIND, req.user.id, {"verification": v.id, "way": offer.way}, OFFER_TTL
    )
    text = req.t(
        f"vf_same_{offer.way}_price", service=v.service_name, number=v.phone_number or "",
        price=money(offer.quote.price_cents),
    )
    return Screen(
        with_sandbox_notice(req, "verification", text),
        buttons=[[
            Button(req.t("btn_confirm"), action=f"{ACTION_CONFIRM}:{token}"),
            Button(req.t("btn_cancel"), action=f"{ACTION_BACK_OUT}:{token}"),
        ]],
    )


@action(ACTION_CONFIRM)
async def confirm(req: Request) -> Screen:
    """Rents the number again once per offer; the new verification's live status replaces the offer."""
    token = req.args[0] if req.args else ""
    async with offers.redeem(req.db, OFFER_KIND, req.user.id, token) as offer:
        verification_id, service = int(offer["verification"]), _service(req)
        if offer.get("way") == "reactivate":
            verification = await service.reactivate(req.user.id, verification_id, f"offer:{token}")
        else:
            verification = await service.reuse(req.user.id, verification_id)
    return _status_screen(req, verification, edit=True)


@action(ACTION_BACK_OUT)
async def back_out(req: Request) -> Screen:
    """Cancel on the offer: nothing was bought, and its Confirm does nothing from now on."""
    if not req.args or not await offers.withdraw(req.db, OFFER_KIND, req.user.id, req.args[0]):
        raise offers.OfferGone()
    text = req.t("vf_purchase_cancelled")
    return Screen(text, edit=True, toast=plain_text(text)[:190])
