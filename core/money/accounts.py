"""Accounts: created on first contact, one per person across platforms (joined with link codes), roles and bans."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.admin import audit
from core.models import (
    ChatIdentity,
    KeyValue,
    LedgerEntry,
    LinkCode,
    PhoneNumber,
    User,
    Verification,
)
from core.money import ledger
from core.platform.clock import utcnow
from core.platform.settings import TIER_NAMES, Settings

LINK_CODE_TTL = timedelta(minutes=10)
LINK_CODES_PER_HOUR = 5
# No 0/O or 1/I/L: people copy these codes by eye as well as by tap.
LINK_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
LINK_CODE_LENGTH = 8


class AccountError(Exception):
    """A rule of accounts refused the request; `reason` is a message key for the user-facing text."""

    def __init__(self, reason: str, **details: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


@dataclass(frozen=True)
class Contact:
    """Who sent a command, as the front end knows them."""

    platform: str
    platform_user_id: str
    chat_id: str | None = None
    username: str | None = None
    display_name: str | None = None
    language_code: str | None = None


@dataclass(frozen=True)
class Account:
    user: User
    identity: ChatIdentity
    created: bool


def _locale_from(language_code: str | None) -> str:
    if language_code and language_code.lower().startswith("es"):
        return "es"
    return "en"


def is_listed_admin(settings: Settings, platform: str, platform_user_id: str) -> bool:
    if platform == "console":
        # The terminal chat is the operator's own keyboard on the machine that runs CumApp.
        return True
    try:
        numeric = int(platform_user_id)
    except ValueError:
        return False
    if platform == "telegram":
        return numeric in settings.admin_telegram_ids
    if platform == "discord":
        return numeric in settings.admin_discord_ids
    return False


async def is_admin(session: AsyncSession, settings: Settings, user: User) -> bool:
    """Admins come from the database role and from ADMIN_TELEGRAM_IDS / ADMIN_DISCORD_IDS."""
    if user.role == "admin":
        return True
    identities = (await session.scalars(select(ChatIdentity).where(ChatIdentity.user_id == user.id))).all()
    return any(is_listed_admin(settings, i.platform, i.platform_user_id) for i in identities)


async def find_identity(session: AsyncSession, platform: str, platform_user_id: str) -> ChatIdentity | None:
    return await session.scalar(
        select(ChatIdentity).where(
            ChatIdentity.platform == platform, ChatIdentity.platform_user_id == platform_user_id
        )
    )


async def get_or_create(session: AsyncSession, contact: Contact, *, signup_bonus_cents: int = 0) -> Account:
    """The account behind a chat identity, created (with the sign-up bonus, once) on first contact."""
    identity = await find_identity(session, contact.platform, contact.platform_user_id)
    now = utcnow()
    if identity is not None:
        user = await session.get(User, identity.user_id)
        assert user is not None
        changes: dict[str, object] = {}
        if contact.chat_id and identity.chat_id != contact.chat_id:
            changes["chat_id"] = contact.chat_id
        if contact.username and identity.username != contact.username:
            changes["username"] = contact.username
        if identity.unreachable_at is not None:
            # They wrote to us, so the chat works again.
            changes["unreachable_at"] = None
        for key, value in changes.items():
            setattr(identity, key, value)
        user.last_seen_at = now
        return Account(user, identity, created=False)

    try:
        async with session.begin_nested():
            user = User(
                locale=_locale_from(contact.language_code), display_name=contact.display_name,
                created_at=now, last_seen_at=now,
            )
            session.add(user)
            await session.flush()
            identity = ChatIdentity(
                user_id=user.id, platform=contact.platform, platform_user_id=contact.platform_user_id,
                chat_id=contact.chat_id, username=contact.username, language_code=contact.language_code,
                created_at=now,
            )
            session.add(identity)
            await session.flush()
    except IntegrityError:
        # Two first messages raced; the other one created the account.
        identity = await find_identity(session, contact.platform, contact.platform_user_id)
        assert identity is not None
        user = await session.get(User, identity.user_id)
        assert user is not None
        return Account(user, identity, created=False)

    if signup_bonus_cents > 0:
        await ledger.post(
            session, user.id, signup_bonus_cents, kind="signup_bonus", idempotency_key=f"signup:{user.id}",
            note="sign-up bonus",
        )
        await session.refresh(user)
    return Account(user, identity, created=True)


MAX_ACCOUNT_ID = 2**31 - 1  # users.id is INTEGER
# More identities than this behind one reference is not a name worth listing; the admin uses an account id.
AMBIGUOUS_LISTED = 10


async def _one_account(session: AsyncSession, reference: str, identities: list[ChatIdentity]) -> User | None:
    """The account behind the matching identities; AccountError("user_ambiguous") when they are several people."""
    if not identities:
        return None
    user_ids = sorted({identity.user_id for identity in identities})
    if len(user_ids) > 1:
        # A Discord @alice and a Telegram @alice are different people: acting on either could be the wrong one.
        listed = sorted(identities, key=lambda i: (i.user_id, i.platform, i.platform_user_id))[:AMBIGUOUS_LISTED]
        raise AccountError(
            "user_ambiguous", reference=reference, example=f"#{user_ids[0]}",
            matches="\n".join(f"• {i.platform} {i.platform_user_id} → #{i.user_id}" for i in listed),
        )
    return await session.get(User, user_ids[0])


async def resolve_user(session: AsyncSession, reference: str) -> User | None:
    """Find an account by platform user id, @username or account id (`#12` or `12`).

    A name or platform id that belongs to accounts of more than one person raises AccountError("user_ambiguous")
    listing them, so that the admin picks one by account id and nothing is done to either."""
    text = reference.strip()
    if not text:
        return None
    if text.startswith("@"):
        by_name = await session.scalars(
            select(ChatIdentity).where(func.lower(ChatIdentity.username) == text[1:].lower())
            .order_by(ChatIdentity.id).limit(AMBIGUOUS_LISTED * 2)
        )
        return await _one_account(session, text, list(by_name))
    bare = text.removeprefix("#")
    if not text.startswith("#"):
        by_id = await session.scalars(
            select(ChatIdentity).where(ChatIdentity.platform_user_id == bare)
            .order_by(ChatIdentity.id).limit(AMBIGUOUS_LISTED * 2)
        )
        found = await _one_account(session, text, list(by_id))
        if found is not None:
            return found
    # ASCII digits only ("٣".isdigit() is True) and within the column's type, or the driver raises.
    if bare.isascii() and bare.isdigit() and len(bare) <= 10 and 0 < int(bare) <= MAX_ACCOUNT_ID:
        user = await session.get(User, int(bare))
        if user is not None and user.merged_into_id is not None:
            return await session.get(User, user.merged_into_id)
        return user
    return None


# --- linking accounts across platforms -----------------------------------------------------------------


def _hash_code(code: str) -> str:
    return hashlib.sha256(code.strip().upper().encode()).hexdigest()


async def create_link_code(session: AsyncSession, user_id: int) -> tuple[str, LinkCode]:
    """A fresh single-use code valid for 10 minutes; at most a few per hour per account."""
    now = utcnow()
    recent = await session.scalar(
        select(func.count()).select_from(LinkCode).where(
            LinkCode.user_id == user_id, LinkCode.created_at > now - timedelta(hours=1)
        )
    )
    if (recent or 0) >= LINK_CODES_PER_HOUR:
        raise AccountError("link_rate_limited", limit=LINK_CODES_PER_HOUR)
    code = "".join(secrets.choice(LINK_ALPHABET) for _ in range(LINK_CODE_LENGTH))
    row = LinkCode(user_id=user_id, code_hash=_hash_code(code), expires_at=now + LINK_CODE_TTL, created_at=now)
    session.add(row)
    await session.flush()
    return code, row


async def _has_history(session: AsyncSession, user_id: int) -> bool:
    """Anything beyond the sign-up bonus: money moved, a verification, a number."""
    return bool(
        await session.scalar(
            select(
                or_(
                    exists().where(LedgerEntry.user_id == user_id, LedgerEntry.kind != "signup_bonus"),
                    exists().where(Verification.user_id == user_id),
                    exists().where(PhoneNumber.user_id == user_id),
                )
            )
        )
    )


async def _absorb(session: AsyncSession, survivor: User, absorbed: User) -> None:
    """Move `absorbed`'s identities to `survivor`; its sign-up bonus is dropped so it never counts twice."""
    bonus = absorbed.balance_cents - absorbed.held_cents
    if bonus > 0:
        await ledger.post(
            session, absorbed.id, -bonus, kind="merge", idempotency_key=f"merge:{absorbed.id}:drop-bonus",
            note=f"sign-up bonus dropped on joining account {survivor.id}",
        )
    await session.execute(
        update(ChatIdentity).where(ChatIdentity.user_id == absorbed.id).values(user_id=survivor.id)
    )
    await session.execute(update(User).where(User.id == absorbed.id).values(merged_into_id=survivor.id))
    if absorbed.role == "admin" and survivor.role != "admin":
        survivor.role = "admin"


async def redeem_link_code(session: AsyncSession, code: str, current: User) -> User:
    """Join the account that showed `code` with `current`; returns the account both identities now share."""
    now = utcnow()
    owner_id = await session.scalar(
        update(LinkCode)
        .where(LinkCode.code_hash == _hash_code(code), LinkCode.used_at.is_(None), LinkCode.expires_at > now)
        .values(used_at=now)
        .returning(LinkCode.user_id)
        .execution_options(synchronize_session=False)
    )
    if owner_id is None:
        raise AccountError("link_code_invalid")
    owner = await session.get(User, owner_id, with_for_update=True)
    assert owner is not None
    if owner.id == current.id:
        raise AccountError("link_same_account")
    platforms_owner = set(
        (await session.scalars(select(ChatIdentity.platform).where(ChatIdentity.user_id == owner.id))).all()
    )
    platforms_current = set(
        (await session.scalars(select(ChatIdentity.platform).where(ChatIdentity.user_id == current.id))).all()
    )
    if platforms_owner & platforms_current:
        raise AccountError("link_same_platform")
    owner_history = await _has_history(session, owner.id)
    current_history = await _has_history(session, current.id)
    if owner_history and current_history:
        raise AccountError("link_both_have_history")
    if current_history:
        survivor, absorbed = current, owner
    else:
        survivor, absorbed = owner, current
    await session.refresh(absorbed)
    await _absorb(session, survivor, absorbed)
    await audit.record(
        session, actor_user_id=current.id, action="link", target_user_id=survivor.id,
        before={"accounts": [owner.id, current.id]}, after={"account": survivor.id, "absorbed": absorbed.id},
    )
    await session.refresh(survivor)
    return survivor


# --- admin actions on accounts ----------------------------------------------------------------------------


async def set_status(session: AsyncSession, actor: User, target: User, status: str, reason: str | None = None) -> bool:
    """Ban or unban; False when the account was already in that state."""
    if target.status == status:
        return False
    before = target.status
    target.status = status
    await audit.record(
        session, actor_user_id=actor.id, action="ban" if status == "banned" else "unban", target_user_id=target.id,
        before={"status": before}, after={"status": status}, reason=reason,
    )
    return True


async def set_tier(session: AsyncSession, actor: User, target: User, tier: str) -> bool:
    if tier not in TIER_NAMES:
        raise AccountError("unknown_tier", tier=tier, allowed=", ".join(TIER_NAMES))
    if target.tier == tier:
        return False
    before = target.tier
    target.tier = tier
    await audit.record(
        session, actor_user_id=actor.id, action="tier", target_user_id=target.id,
        before={"tier": before}, after={"tier": tier},
    )
    return True


async def grant(
    session: AsyncSession, actor: User, target: User, amount_cents: int, reason: str | None, request_key: str
) -> bool:
    """Credit (or debit, when negative) an account with the reason in the audit log; once per request key."""
    before = await ledger.balance(session, target.id)
    applied = await ledger.post(
        session, target.id, amount_cents, kind="grant", idempotency_key=f"grant:{request_key}",
        note=reason, actor_user_id=actor.id,
    )
    if applied:
        after = await ledger.balance(session, target.id)
        await audit.record(
            session, actor_user_id=actor.id, action="grant", target_user_id=target.id,
            before={"balance_cents": before.balance_cents}, after={"balance_cents": after.balance_cents,
                                                                  "amount_cents": amount_cents},
            reason=reason,
        )
    return applied


# --- admin cards: each button acts once per card ----------------------------------------------------------

ADMIN_CARD_TTL = timedelta(days=7)
_CARD_PREFIX = "admcard:"


def _card_key(nonce: str) -> str:
    return f"{_CARD_PREFIX}{nonce}"


async def open_admin_card(session: AsyncSession, actor_user_id: int, target_user_id: int) -> str:
    """A fresh card for `target_user_id`: the nonce its buttons carry, remembered for ADMIN_CARD_TTL."""
    now = utcnow()
    # Old cards are dropped here rather than by a job: one row per /user, a few a day.
    await session.execute(
        delete(KeyValue).where(KeyValue.key.like(f"{_CARD_PREFIX}%"), KeyValue.expires_at < now)
    )
    nonce = secrets.token_urlsafe(9)
    session.add(
        KeyValue(
            key=_card_key(nonce), value={"target": target_user_id, "actor": actor_user_id, "done": []},
            expires_at=now + ADMIN_CARD_TTL,
        )
    )
    await session.flush()
    return nonce


async def claim_admin_card(session: AsyncSession, nonce: str, target_user_id: int, button: str) -> bool | None:
    """Mark `button` of the card `nonce` as used, in the caller's transaction (so a failed action frees it).

    True: claimed now, go ahead. False: this card's button already acted. None: no such card for this account
    (expired, forged, or another account's). The card's row is locked, so two presses at once act once."""
    if not nonce or len(nonce) > 32:
        return None
    row = await session.get(KeyValue, _card_key(nonce), with_for_update=True)
    if row is None or (row.expires_at is not None and row.expires_at < utcnow()):
        return None
    value = dict(row.value)
    if value.get("target") != target_user_id:
        return None
    done = list(value.get("done") or [])
    if button in done:
        return False
    row.value = {**value, "done": [*done, button]}
    await session.flush()
    return True
