"""/app: opens the Mini App. On Telegram with an https address, a web_app button (signed in by initData);
elsewhere (Discord, the terminal, plain http) a single-use sign-in link valid 10 minutes."""

from __future__ import annotations

from bot.handlers.router import Request, command
from bot.handlers.screens import Button, Screen
from core.api import sessions
from core.services import Services

APP_PATH = "/app"


async def signin_link(services: Services, user_id: int, base: str) -> str:
    """A one-time link that signs this account in to the Mini App in any browser."""
    token = await sessions.create_signin_link(services.db, user_id)
    return f"{base.rstrip('/')}{APP_PATH}?login={token}"


@command("app")
async def open_app(req: Request) -> Screen:
    """The Mini App's button (Telegram, https) or a single-use sign-in link."""
    base = req.services.settings.public_base_url.rstrip("/")
    label = req.t("app_btn_open")
    if req.contact.platform == "telegram" and base.startswith("https://"):
        return Screen(req.t("app_open"), buttons=[[Button(label, url=f"{base}{APP_PATH}", web_app=True)]])
    link = await signin_link(req.services, req.user.id, base)
    # A link button only to an https address: Telegram refuses buttons to some plain-http ones (localhost).
    buttons = [[Button(label, url=link)]] if base.startswith("https://") else []
    return Screen(req.t("app_link", link=link), buttons=buttons)
