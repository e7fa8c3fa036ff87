"""/apikey: create (shown once, ready to copy), list by prefix and name, and revoke keys for the integrator API."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot.handlers.args import arg_id
from bot.handlers.router import Request, action, command
from bot.handlers.screens import Button, Screen, toast
from bot.render import plain_text
from core.admin import audit
from core.api import keys
from core.models import ApiKey
from core.platform.i18n import Html


def _line(req: Request, key: ApiKey) -> Html:
    used = (req.t("ak_used", when=key.last_used_at.strftime("%Y-%m-%d %H:%M")) if key.last_used_at
            else req.t("ak_never_used"))
    return req.t("ak_line", prefix=key.prefix, name=key.name, created=key.created_at.strftime("%Y-%m-%d"),
                 used=used)


async def _list(req: Request, *, edit: bool = False) -> Screen:
    async with req.db.read() as session:
        live = await keys.list_keys(session, req.user.id)
    base = req.services.settings.public_base_url.rstrip("/")
    lines = [req.t("ak_title", base=base), *(_line(req, key) for key in live)] if live else [
        req.t("ak_title", base=base), req.t("ak_none")]
    buttons = [[Button(req.t("ak_btn_create"), action="ak:new")]]
    buttons += [[Button(req.t("ak_btn_revoke", prefix=key.prefix), action=f"ak:rev:{key.id}")] for key in live]
    return Screen(Html("\n".join(lines)), buttons=buttons, edit=edit)


async def _create(req: Request, name: str | None) -> Screen:
    try:
        async with req.db.transaction() as session:
            made = await keys.create(session, req.user.id, name)
    except keys.KeyLimitReached:
        return Screen(req.t("ak_too_many", count=keys.MAX_KEYS_PER_ACCOUNT))
    return Screen(req.t("ak_created", name=made.name, key=made.secret),
                  buttons=[[Button(req.t("ak_btn_copy"), copy_text=made.secret)]])


@command("apikey")
async def apikey(req: Request) -> Screen:
    """Without arguments the list; `new [name]` makes a key; `revoke <prefix>` revokes one."""
    if not req.args:
        return await _list(req)
    verb, rest = req.args[0].lower(), req.args[1:]
    if verb in ("new", "create"):
        return await _create(req, " ".join(rest) or None)
    if verb == "revoke" and len(rest) == 1:
        prefix = rest[0].rstrip(".…")
        async with req.db.transaction() as session:
            matching = [key for key in await keys.list_keys(session, req.user.id) if key.prefix.startswith(prefix)]
            if len(matching) != 1 or len(prefix) < 6:
                return Screen(req.t("ak_not_found", prefix=prefix))
            await keys.revoke(session, matching[0].id, user_id=req.user.id)
        return Screen(req.t("ak_revoked", prefix=matching[0].prefix))
    return Screen(req.t("ak_usage"))


@action("ak")
async def apikey_button(req: Request) -> Screen:
    """Create key, and Revoke on one key of the list (`ak:rev:<key id>`)."""
    if req.args[:1] == ["new"]:
        return await _create(req, None)
    key_id = arg_id(req.args, 1) if req.args[:1] == ["rev"] else None
    if key_id is None:
        return toast(req.t("error_stale_button"))
    async with req.db.transaction() as session:
        revoked = await keys.revoke(session, key_id, user_id=req.user.id)
    if revoked is None:
        return toast(req.t("error_stale_button"))
    screen = await _list(req, edit=True)
    screen.toast = plain_text(req.t("ak_revoked", prefix=revoked.prefix))[:190]
    return screen


# --- what admins see and do on the /user card ----------------------------------------------------------------------


async def admin_key_section(req: Request, session: AsyncSession, user_id: int) -> tuple[Html, list[list[Button]]]:
    """The account's live keys as lines for the card, and a Revoke button for each."""
    live = await keys.list_keys(session, user_id)
    if not live:
        return Html(""), []
    lines = Html("\n".join(_line(req, key) for key in live))
    buttons = [[Button(req.t("btn_user_revoke_key", prefix=key.prefix), action=f"admkey:{user_id}:{key.id}")]
               for key in live]
    return req.t("user_api_keys", lines=lines), buttons


@action("admkey", admin=True)
async def admin_revoke(req: Request) -> Screen:
    """An admin revokes one of an account's keys from its /user card (`admkey:<user id>:<key id>`)."""
    user_id, key_id = arg_id(req.args, 0), arg_id(req.args, 1)
    if user_id is None or key_id is None:
        return toast(req.t("error_stale_button"))
    async with req.db.transaction() as session:
        revoked = await keys.revoke(session, key_id, user_id=user_id)
        if revoked is not None:
            await audit.record(session, actor_user_id=req.user.id, action="api_key_revoke", target_user_id=user_id,
                               before={"prefix": revoked.prefix})
    if revoked is None:
        return toast(req.t("error_stale_button"))
    return Screen(req.t("admin_key_revoked", prefix=revoked.prefix, id=user_id))
