"""The Telegram Mini App at /app: its page and static files, sign-in (Telegram initData or a single-use link) into a
short-lived HttpOnly session cookie, and that session as a second way into the integrator API (/api/v1), so the
page uses the same endpoints, limits and ownership checks as integrators and the chat."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from core.api import sessions
from core.api.keys import KeyOwner
from core.money.accounts import Contact, get_or_create
from core.services import Services
from webhooks.api.problems import ApiProblem
from webhooks.api.routing import API_STATE, SESSION_AUTH, ApiState
from webhooks.miniapp import initdata

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "cumapp_session"
BODY_MAX = 8192
# The page's own header on every call it makes: a cross-site form cannot send it, a cross-site script would need
# a CORS preflight we never grant.
APP_HEADER = "X-CumApp-App"
CSP = (
    "default-src 'self'; script-src 'self' https://telegram.org; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors https://web.telegram.org https://*.telegram.org 'self'; "
    "base-uri 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _problem(status: int, slug: str, detail: str) -> web.Response:
    return ApiProblem(status, slug, detail).response()


async def page(request: web.Request) -> web.StreamResponse:
    """The single page; everything else comes from /app/static and /api/v1."""
    return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def _telegram_user_id(services: Services, raw: str) -> int | None:
    token = services.settings.telegram_bot_token
    if token is None or not token.get_secret_value():
        return None
    user = initdata.check(raw, token.get_secret_value())
    if user is None:
        return None
    contact = Contact("telegram", str(user.id), chat_id=str(user.id), username=user.username,
                      display_name=user.display_name, language_code=user.language_code)
    async with services.db.transaction() as session:
        account = await get_or_create(session, contact, signup_bonus_cents=services.signup_bonus_cents)
        return account.user.id if account.user.status == "active" else None


async def sign_in(request: web.Request) -> web.Response:
    """POST /app/session `{"init_data": …}` (Telegram) or `{"login": …}` (a link from /app): 204 and the cookie,
    or 401 and nothing."""
    services: Services = request.app[API_STATE].services
    try:
        raw = await request.read()
        body = json.loads(raw or b"{}") if len(raw) <= BODY_MAX else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return _problem(400, "invalid-body", 'send {"init_data": …} or {"login": …}')
    user_id: int | None = None
    if isinstance(body.get("init_data"), str):
        user_id = await _telegram_user_id(services, body["init_data"])
    elif isinstance(body.get("login"), str):
        user_id = await sessions.redeem_signin_link(services.db, body["login"])
    if user_id is None:
        log.warning("Mini App sign-in refused from %s", request.remote)
        return _problem(401, "unauthorized", "sign-in refused: open the app again from the chat (/app)")
    token = await sessions.create_session(services.db, user_id)
    response = web.Response(status=204)
    https = services.settings.public_base_url.startswith("https://")
    # Telegram Web shows the app in a frame of web.telegram.org, where a SameSite=Strict cookie is never sent: over
    # https the cookie is SameSite=None and Partitioned (kept per top-level site). Cross-site writes stay refused by
    # the X-CumApp-App header and the Origin check.
    response.set_cookie(
        COOKIE, token, max_age=int(sessions.SESSION_TTL.total_seconds()), path="/", httponly=True,
        samesite="None" if https else "Strict", secure=https, partitioned=https or None,
    )
    return response


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


async def session_owner(request: web.Request, state: ApiState) -> KeyOwner | None:
    """The API's other way in: the Mini App's session cookie, from the page itself. Rate limits are per account
    (negative ids keep them apart from keys' buckets)."""
    token = request.cookies.get(COOKIE)
    if not token or not _same_origin(request):
        return None
    if request.method != "GET" and request.headers.get(APP_HEADER) != "1":
        return None
    user_id = await sessions.session_owner(state.services.db, token)
    if user_id is None:
        return None
    return KeyOwner(key_id=-user_id, user_id=user_id, prefix="session")


def add_routes(app: web.Application) -> None:
    """/app, /app/static and /app/session; the API learns to accept the session."""
    app[API_STATE].extras[SESSION_AUTH] = session_owner
    app.router.add_get("/app", page)
    app.router.add_get("/app/", page)
    app.router.add_post("/app/session", sign_in)
    app.router.add_static("/app/static", STATIC, append_version=False)
