"""Account flows: /balance, /history with CSV export, /link across platforms, /settings."""

from __future__ import annotations

from sqlalchemy import select

from bot.handlers.args import arg_offset
from bot.handlers.router import Request, action, command
from bot.handlers.screens import Button, Screen, toast
from core.models import User
from core.money import accounts, history, limits
from core.money.sandbox_topup import topup_available
from core.platform.i18n import LANGUAGES, Html, money, t
from core.platform.phone import InvalidPhoneNumber, format_international

HISTORY_PAGE = 10
PURPOSES = ("verification", "sms", "number", "subscription")
GIVEN_BACK = ("released", "refunded")


@command("balance")
async def balance(req: Request) -> Screen:
    """Available, held, tier and today's use against each limit."""
    async with req.db.read() as session:
        user = await session.get(User, req.user.id)
        assert user is not None
        use = await limits.usage(session, req.services.settings, user)
    lim = use.limits
    text = req.t(
        "balance", available=money(user.available_cents), held=money(user.held_cents), tier=user.tier,
        v_today=use.verifications_today, v_day=lim.verifications_per_day, v_open=use.verifications_open,
        v_once=lim.verifications_at_once,
        v_refunded=req.t("balance_refunded", count=use.verifications_refunded) if use.verifications_refunded else "",
        sms_today=use.sms_today, sms_day=lim.sms_per_day,
        numbers=use.numbers_owned, numbers_max=lim.numbers_owned, ai_today=f"{use.ai_tokens_today:,}",
        ai_day=f"{lim.ai_tokens_per_day:,}",
    )
    return Screen(
        text,
        buttons=[[
            *([Button(req.t("btn_topup"), action="cmd:topup")]
              if topup_available(req.services.settings, req.services.plan, req.contact.platform) else []),
            Button(req.t("btn_history"), action="hist:0"),
        ]],
        edit=req.is_button,
    )


@command("history")
async def history_command(req: Request) -> Screen:
    """The newest entries first, a page at a time."""
    return await _history_page(req, 0)


@action("hist")
async def history_page(req: Request) -> Screen:
    offset = arg_offset(req.args, 0, default=0)
    if offset is None:
        return toast(req.t("error_stale_button"))
    return await _history_page(req, offset)


async def _history_page(req: Request, offset: int) -> Screen:
    async with req.db.read() as session:
        entries, total = await history.page(session, req.user.id, offset=offset, limit=HISTORY_PAGE)
    if total == 0:
        return Screen(req.t("history_empty"), edit=req.is_button)
    lines = [req.t("history_title", first=offset + 1, last=offset + len(entries), total=total)]
    for line in entries:
        when = line.created_at.strftime("%Y-%m-%d %H:%M")
        note = f" · {line.note}" if line.note else ""
        if line.kind == "purchase":
            # One line per purchase: its price, and whether it is still held, charged or given back.
            what = req.t(f"purpose_{line.purpose}" if line.purpose in PURPOSES else "kind_purchase")
            detail = f" {_shown_detail(line.purpose, line.detail)}" if line.detail else ""
            lines.append(req.t(
                "history_purchase_line", when=when, what=what, detail=detail,
                # Struck through when the money came back: the line then changed nothing.
                amount=Html(f"<s>{money(line.amount_cents)}</s>") if line.outcome in GIVEN_BACK
                else money(line.amount_cents),
                outcome=req.t(f"outcome_{line.outcome}"),
            ))
            continue
        if line.kind == "renewal" and line.detail:
            lines.append(req.t(
                "history_renewal_line", when=when, number=_shown_detail("number", line.detail),
                amount=money(line.amount_cents),
            ))
            continue
        lines.append(
            req.t("history_line", when=when, kind=req.t(f"kind_{line.kind}"), amount=money(line.amount_cents), note=note)
        )
    nav: list[Button] = []
    if offset > 0:
        nav.append(Button(req.t("btn_prev"), action=f"hist:{max(0, offset - HISTORY_PAGE)}"))
    if offset + HISTORY_PAGE < total:
        nav.append(Button(req.t("btn_next"), action=f"hist:{offset + HISTORY_PAGE}"))
    buttons = [nav] if nav else []
    buttons.append([Button(req.t("btn_export_csv"), action="histcsv")])
    return Screen(Html("\n".join(lines)), buttons=buttons, edit=req.is_button)


def _shown_detail(purpose: str | None, detail: str) -> str:
    """A service's name as it is; a number as people write it (+1 415-555-0100). Plain text: `t` escapes it."""
    if purpose in ("sms", "number"):
        try:
            return format_international(detail)
        except InvalidPhoneNumber:
            pass
    return detail


@action("histcsv")
async def history_csv(req: Request) -> Screen:
    """The whole history as a CSV file."""
    async with req.db.read() as session:
        data = await history.export_csv(session, req.user.id)
    return Screen(req.t("history_csv_caption"), document=data, document_name=f"cumapp-history-{req.user.id}.csv")


@command("link")
async def link(req: Request) -> Screen:
    """Without a code: show a one-time code. With one: join this identity to the account that showed it."""
    if req.args:
        async with req.db.transaction() as session:
            current = await session.get(User, req.user.id)
            assert current is not None
            joined = await accounts.redeem_link_code(session, req.args[0], current)
            available = money(joined.available_cents)
        return Screen(req.t("link_done", available=available))
    async with req.db.transaction() as session:
        code, _ = await accounts.create_link_code(session, req.user.id)
    return Screen(req.t("link_code", code=code), buttons=[[Button(req.t("btn_copy_code"), copy_text=f"/link {code}")]])


def _settings_screen(req: Request, user: User, *, edit: bool) -> Screen:
    def state(flag: bool) -> str:
        return t(user.locale, "state_on" if flag else "state_off")

    next_language = LANGUAGES[(LANGUAGES.index(user.locale) + 1) % len(LANGUAGES)] if user.locale in LANGUAGES else "en"
    return Screen(
        t(user.locale, "settings_title"),
        buttons=[
            [Button(t(user.locale, "btn_language", language=t(user.locale, "language_name")),
                    action=f"set:lang:{next_language}")],
            [Button(t(user.locale, "btn_ai", state=state(user.ai_opt_in)), action="set:ai")],
            [Button(t(user.locale, "btn_auto_analyze", state=state(user.auto_analyze)), action="set:auto")],
            [Button(t(user.locale, "btn_announcements", state=state(user.announcements)), action="set:news")],
        ],
        edit=edit,
    )


@command("settings")
async def settings(req: Request) -> Screen:
    """Language, AI opt-in, automatic analysis of inbound SMS and announcements."""
    return _settings_screen(req, req.user, edit=req.is_button)


@action("set")
async def change_setting(req: Request) -> Screen:
    what = req.args[0] if req.args else ""
    async with req.db.transaction() as session:
        user = await session.get(User, req.user.id, with_for_update=True)
        assert user is not None
        if what == "lang" and len(req.args) > 1 and req.args[1] in LANGUAGES:
            user.locale = req.args[1]
        elif what == "ai":
            user.ai_opt_in = not user.ai_opt_in
        elif what == "auto":
            # Without AI opt-in, automatic analysis uses the offline engine: no text leaves for the model.
            user.auto_analyze = not user.auto_analyze
        elif what == "news":
            user.announcements = not user.announcements
        else:
            return toast(req.t("error_stale_button"))
    screen = _settings_screen(req, user, edit=True)
    screen.toast = t(user.locale, "settings_saved")
    return screen


async def find_user(req: Request, reference: str) -> User | None:
    async with req.db.read() as session:
        return await accounts.resolve_user(session, reference)


async def user_by_id(req: Request, user_id: int) -> User | None:
    async with req.db.read() as session:
        return await session.scalar(select(User).where(User.id == user_id))
