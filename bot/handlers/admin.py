"""Admin flows: /grant, /ban, /unban, /tier, /user (with action buttons), /audit, /refund, /health."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.handlers.account import find_user, user_by_id
from bot.handlers.apikey import admin_key_section
from bot.handlers.args import arg_id, arg_offset, parse_id
from bot.handlers.router import Request, action, command
from bot.handlers.screens import Button, Screen, toast
from bot.render import plain_text
from core.admin import audit, users
from core.models import ChatIdentity, Message, Payment, User, Verification
from core.money import accounts, ledger, limits, payments
from core.money.accounts import AccountError
from core.platform.i18n import AmountOutOfRange, Html, escape, money, parse_dollars
from core.platform.settings import TIER_NAMES


async def _target(req: Request, usage_key: str, minimum_args: int) -> User | Screen:
    if len(req.args) < minimum_args:
        return Screen(req.t("admin_usage", usage=Html(req.t(usage_key).split(": ", 1)[-1])))
    user = await find_user(req, req.args[0])
    if user is None:
        return Screen(req.t("admin_user_not_found", reference=req.args[0]))
    return user


@command("grant", admin=True)
async def grant(req: Request) -> Screen:
    """Credit (or debit, with a negative amount) an account at once, with the reason audited."""
    target = await _target(req, "help_grant", 2)
    if isinstance(target, Screen):
        return target
    try:
        cents = parse_dollars(req.args[1])
    except AmountOutOfRange as error:
        return Screen(req.t("admin_amount_too_large", limit=money(error.limit_cents)))
    except ValueError:
        return Screen(req.t("admin_bad_amount"))
    if cents == 0:
        return Screen(req.t("admin_bad_amount"))
    reason = " ".join(req.args[2:]) or None
    return await _grant(req, target.id, cents, reason, req.request_id)


class _CardUsed(Exception):
    """The card's button already acted (False) or the card is unknown (None); raised to roll the transaction back."""

    def __init__(self, claimed: bool | None) -> None:
        super().__init__("admin card")
        self.claimed = claimed


async def _claim(session: AsyncSession, card: tuple[str, str] | None, user_id: int) -> None:
    """Claim the card button `card` = (nonce, button) in this transaction, or raise _CardUsed."""
    if card is not None:
        claimed = await accounts.claim_admin_card(session, card[0], user_id, card[1])
        if not claimed:
            raise _CardUsed(claimed)


async def _grant(
    req: Request, user_id: int, cents: int, reason: str | None, key: str, card: tuple[str, str] | None = None
) -> Screen:
    async with req.db.transaction() as session:
        await _claim(session, card, user_id)
        actor = await session.get(User, req.user.id)
        target = await session.get(User, user_id)
        assert actor is not None and target is not None
        await accounts.grant(session, actor, target, cents, reason, key)
        view = await ledger.balance(session, user_id)
    return Screen(
        req.t(
            "grant_done", amount=money(abs(cents)), direction=req.t("grant_to" if cents > 0 else "grant_from"),
            user=user_id, balance=money(view.balance_cents),
        )
    )


async def _set_status(req: Request, user_id: int, status: str, card: tuple[str, str] | None = None) -> Screen:
    async with req.db.transaction() as session:
        await _claim(session, card, user_id)
        actor = await session.get(User, req.user.id)
        target = await session.get(User, user_id, with_for_update=True)
        assert actor is not None and target is not None
        changed = await users.set_status(session, req.services.settings, actor, target, status)
    if status == "banned":
        return Screen(req.t("ban_done" if changed else "ban_already", user=user_id))
    return Screen(req.t("unban_done" if changed else "unban_already", user=user_id))


@command("ban", admin=True)
async def ban(req: Request) -> Screen:
    """Block an account at once; every command and button of theirs gets one refusal."""
    target = await _target(req, "help_ban", 1)
    return target if isinstance(target, Screen) else await _set_status(req, target.id, "banned")


@command("unban", admin=True)
async def unban(req: Request) -> Screen:
    target = await _target(req, "help_unban", 1)
    return target if isinstance(target, Screen) else await _set_status(req, target.id, "active")


async def _set_tier(req: Request, user_id: int, tier: str, card: tuple[str, str] | None = None) -> Screen:
    async with req.db.transaction() as session:
        await _claim(session, card, user_id)
        actor = await session.get(User, req.user.id)
        target = await session.get(User, user_id, with_for_update=True)
        assert actor is not None and target is not None
        changed = await accounts.set_tier(session, actor, target, tier.lower())
    return Screen(req.t("tier_done" if changed else "tier_already", user=user_id, tier=tier.lower()))


@command("tier", admin=True)
async def tier(req: Request) -> Screen:
    """Move an account to another tier (free, pro, business)."""
    target = await _target(req, "help_tier", 2)
    return target if isinstance(target, Screen) else await _set_tier(req, target.id, req.args[1])


@command("user", admin=True)
async def user_card(req: Request) -> Screen:
    """One account's full picture, with buttons to act on it."""
    target = await _target(req, "help_user", 1)
    if isinstance(target, Screen):
        return target
    async with req.db.transaction() as session:
        nonce = await accounts.open_admin_card(session, req.user.id, target.id)
    return await _card(req, target.id, nonce)


async def _card(req: Request, user_id: int, nonce: str, *, edit: bool = False) -> Screen:
    """The /user card; its acting buttons carry `nonce`, so each acts once for this card (not per press)."""
    async with req.db.read() as session:
        user = await session.get(User, user_id)
        assert user is not None
        identities = (await session.scalars(select(ChatIdentity).where(ChatIdentity.user_id == user_id))).all()
        use = await limits.usage(session, req.services.settings, user)
        recent_v = (
            await session.scalars(
                select(Verification).where(Verification.user_id == user_id).order_by(Verification.id.desc()).limit(5)
            )
        ).all()
        recent_m = (
            await session.scalars(
                select(Message).where(Message.user_id == user_id).order_by(Message.id.desc()).limit(5)
            )
        ).all()
        key_lines, key_buttons = await admin_key_section(req, session, user_id)
    who = ", ".join(
        f"{i.platform} {i.platform_user_id}" + (f" @{i.username}" if i.username else "") for i in identities
    )
    text = req.t(
        "user_card", id=user.id, name=user.display_name or "", role=user.role, status=user.status, tier=user.tier,
        identities=who or "-", balance=money(user.balance_cents), held=money(user.held_cents),
        available=money(user.available_cents), v_today=use.verifications_today, sms_today=use.sms_today,
        numbers=use.numbers_owned, last_seen=user.last_seen_at.strftime("%Y-%m-%d %H:%M UTC"),
        created=user.created_at.strftime("%Y-%m-%d"),
    )
    if recent_v:
        lines = "\n".join(
            f"#{v.id} {escape(v.service_name)} · {v.state} · {money(v.price_cents)}" for v in recent_v
        )
        text = Html(text + req.t("user_recent_verifications", lines=Html(lines)))
    if recent_m:
        lines = "\n".join(f"#{m.id} {m.direction} {escape(m.to_e164 if m.direction == 'outbound' else m.from_e164)}"
                          f" · {m.status}" for m in recent_m)
        text = Html(text + req.t("user_recent_messages", lines=Html(lines)))
    text = Html(text + key_lines)
    next_tier = TIER_NAMES[(TIER_NAMES.index(user.tier) + 1) % len(TIER_NAMES)]
    status_button = (
        Button(req.t("btn_user_unban"), action=f"adm:unban:{user_id}:{nonce}")
        if user.status == "banned"
        else Button(req.t("btn_user_ban"), action=f"adm:ban:{user_id}:{nonce}")
    )
    buttons = [
        [status_button,
         Button(req.t("btn_user_tier", tier=next_tier), action=f"adm:tier:{user_id}:{next_tier}:{nonce}")],
        [Button(req.t("btn_user_grant"), action=f"adm:grant:{user_id}:{nonce}"),
         Button(req.t("btn_user_audit"), action=f"adm:audit:{user_id}")],
        *key_buttons,
    ]
    return Screen(text, buttons=buttons, edit=edit)


CARD_GRANT_CENTS = 500


@action("adm", admin=True)
async def user_card_action(req: Request) -> Screen:
    """Buttons on the /user card; the target is re-read from the database, and each button acts once per card
    (`adm:<what>:<user>[:<tier>]:<nonce>`): a double tap or a redelivered press must not grant $5 twice."""
    what, user_id = (req.args[0] if req.args else ""), arg_id(req.args, 1)
    if user_id is None or await user_by_id(req, user_id) is None:
        return toast(req.t("error_stale_button"))
    if what == "audit":
        return await _audit(req, user_id)
    shape = {"ban": 3, "unban": 3, "grant": 3, "tier": 4}.get(what)
    if shape is None or len(req.args) != shape or (what == "tier" and req.args[2] not in TIER_NAMES):
        return toast(req.t("error_stale_button"))
    nonce = req.args[-1]
    card = (nonce, ":".join(req.args[:-1]))
    try:
        if what in ("ban", "unban"):
            answer = await _set_status(req, user_id, "banned" if what == "ban" else "active", card)
        elif what == "tier":
            answer = await _set_tier(req, user_id, req.args[2], card)
        else:
            answer = await _grant(req, user_id, CARD_GRANT_CENTS, "from /user card", f"card:{nonce}", card)
    except AccountError as refused:
        # A refused ban (one's own account, the last admin) leaves the card as it is, with the reason.
        return toast(plain_text(req.t(f"error_{refused.reason}", **{k: str(v) for k, v in refused.details.items()})),
                     alert=True)
    except _CardUsed as used:
        if used.claimed is None:
            return toast(req.t("admin_card_expired"), alert=True)
        refreshed = await _card(req, user_id, nonce, edit=True)
        refreshed.toast = plain_text(req.t("admin_card_already_done"))[:190]
        return refreshed
    refreshed = await _card(req, user_id, nonce, edit=True)
    refreshed.toast = plain_text(answer.text)[:190]
    return refreshed


@command("audit", admin=True)
async def audit_log(req: Request) -> Screen:
    """The newest admin actions, optionally for one user."""
    target_id = None
    if req.args:
        target = await find_user(req, req.args[0])
        if target is None:
            return Screen(req.t("admin_user_not_found", reference=req.args[0]))
        target_id = target.id
    return await _audit(req, target_id)


async def _audit(req: Request, target_id: int | None, offset: int = 0) -> Screen:
    async with req.db.read() as session:
        rows = await audit.page(session, target_user_id=target_id, offset=offset, limit=15)
    if not rows:
        return Screen(req.t("audit_empty"))
    lines = [req.t("audit_title", target=f" #{target_id}" if target_id else "")]
    for row in rows:
        lines.append(
            req.t(
                "audit_line", when=row.created_at.strftime("%Y-%m-%d %H:%M"), actor=row.actor_user_id or "-",
                action=row.action, target=row.target_user_id or "-",
                before=json.dumps(row.before, ensure_ascii=False), after=json.dumps(row.after, ensure_ascii=False),
                reason=f" ({row.reason})" if row.reason else "",
            )
        )
    nav = [Button(req.t("btn_next"), action=f"audp:{target_id or 0}:{offset + 15}")] if len(rows) == 15 else []
    return Screen(Html("\n".join(lines)), buttons=[nav] if nav else [], edit=req.is_button)


@action("audp", admin=True)
async def audit_page(req: Request) -> Screen:
    # Target 0 is "everyone's actions" (the /audit without a user).
    target = 0 if req.args[:1] == ["0"] else arg_id(req.args, 0)
    offset = arg_offset(req.args, 1)
    if target is None or offset is None:
        return toast(req.t("error_stale_button"))
    return await _audit(req, target or None, offset)


@command("refund", admin=True)
async def refund(req: Request) -> Screen:
    """Refund a Stars payment: the credit is reversed once and Telegram returns the Stars."""
    payment_id = parse_id(req.args[0].removeprefix("#")) if req.args else None
    if payment_id is None:
        return Screen(req.t("admin_usage", usage=Html(req.t("help_refund").split(": ", 1)[-1])))
    refunder = req.services.stars_refunder
    if refunder is None:
        return Screen(req.t("topup_only_telegram"))
    try:
        async with req.db.transaction() as session:
            actor = await session.get(User, req.user.id)
            assert actor is not None
            payment = await session.get(Payment, payment_id)
            if payment is None:
                raise payments.PaymentError("payment_not_found")
            identity = await session.scalar(
                select(ChatIdentity).where(ChatIdentity.user_id == payment.user_id, ChatIdentity.platform == "telegram")
            )
            payer = identity.platform_user_id if identity else ""
            done = await payments.refund_payment(session, actor, payment_id, refunder, payer)
    except payments.PaymentError as error:
        return Screen(req.t(error.reason))
    except Exception as error:
        if type(error).__module__.startswith("telegram"):
            return Screen(req.t("refund_failed", reason=str(error)))
        raise
    return Screen(req.t("refund_done", payment=done.id, amount=money(done.credited_cents), user=done.user_id))
