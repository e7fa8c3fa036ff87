"""Routes a command, a button press or free text to its flow, with accounts, bans, limits and errors in one place."""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from bot.handlers.screens import Button, Screen, SentRef, toast
from bot.render import plain_text
from core.models import KeyValue, OutboxDelivery, User
from core.money import accounts, ledger
from core.money.accounts import AccountError, Contact
from core.money.limits import LimitReached
from core.money.sandbox_topup import topup_available
from core.platform.clock import utcnow
from core.platform.db_faults import database_unavailable, describe
from core.platform.i18n import Html, money, t
from core.services import Services

log = logging.getLogger(__name__)

Answer = Screen | list[Screen] | None
Flow = Callable[["Request"], Awaitable[Answer]]


@dataclass(frozen=True)
class IncomingFile:
    """A picture the user sent, as the adapter downloaded it; `key` is unique per platform message, so a
    redelivered message sends (and charges) once."""

    data: bytes
    content_type: str
    key: str
    # The size the platform declared, when the adapter left a file over MEDIA_MAX_BYTES undownloaded.
    declared_size: int | None = None

    @property
    def size(self) -> int:
        return self.declared_size if self.declared_size is not None else len(self.data)


@dataclass
class Request:
    """One command, button press or text from one person, with their account loaded."""

    services: Services
    contact: Contact
    user: User
    is_admin: bool
    name: str
    args: list[str] = field(default_factory=list)
    text: str = ""
    message: SentRef | None = None  # the message whose button was pressed, or that was replied to
    reply_context: dict[str, Any] | None = None
    is_button: bool = False
    new_account: bool = False
    prompt_data: dict[str, Any] | None = None  # set when this text answers a prompt the flow asked for
    file: IncomingFile | None = None  # a picture sent with the text (its caption), e.g. in reply to a relayed SMS
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def locale(self) -> str:
        return self.user.locale

    def t(self, key: str, /, **kwargs: Any) -> Html:
        return t(self.user.locale, key, **kwargs)

    @property
    def db(self):  # type: ignore[no-untyped-def]
        return self.services.db


@dataclass(frozen=True)
class CommandSpec:
    name: str
    flow: Flow
    admin: bool
    help_key: str
    private: bool  # shows numbers, codes or money: on Discord answered to the user alone (groups get none at all)


COMMANDS: dict[str, CommandSpec] = {}
ACTIONS: dict[str, tuple[Flow, bool]] = {}
REPLY_KINDS: dict[str, Flow] = {}
ERROR_MAPPERS: list[Callable[[Request, Exception], Screen | None]] = []


def command(name: str, *, admin: bool = False, private: bool = True) -> Callable[[Flow], Flow]:
    """Register a flow as `/name`; its help line is the text `help_<name>`."""

    def register(flow: Flow) -> Flow:
        COMMANDS[name] = CommandSpec(name, flow, admin, f"help_{name}", private)
        return flow

    return register


def action(prefix: str, *, admin: bool = False) -> Callable[[Flow], Flow]:
    """Register a flow for buttons whose action id is `prefix:arg:arg…`."""

    def register(flow: Flow) -> Flow:
        ACTIONS[prefix] = (flow, admin)
        return flow

    return register


def on_reply(kind: str) -> Callable[[Flow], Flow]:
    """Register a flow for text written as a reply to a message whose reply context has this `kind`."""

    def register(flow: Flow) -> Flow:
        REPLY_KINDS[kind] = flow
        return flow

    return register


def maps_errors(mapper: Callable[[Request, Exception], Screen | None]) -> Callable[[Request, Exception], Screen | None]:
    """Register a function that turns an expected exception of some flow into a short answer."""
    ERROR_MAPPERS.append(mapper)
    return mapper


def user_commands() -> list[CommandSpec]:
    return [spec for spec in COMMANDS.values() if not spec.admin]


def admin_commands() -> list[CommandSpec]:
    return [spec for spec in COMMANDS.values() if spec.admin]


# --- pending prompts: "send me the text" steps of a dialog -------------------------------------------------

PROMPT_TTL = timedelta(minutes=30)


def _prompt_key(contact: Contact) -> str:
    return f"prompt:{contact.platform}:{contact.platform_user_id}"


async def set_prompt(req: Request, action_id: str, **data: Any) -> None:
    """The user's next plain text goes to `action_id` (with `data`), for half an hour."""
    async with req.db.transaction() as session:
        row = await session.get(KeyValue, _prompt_key(req.contact))
        value = {"action": action_id, "data": data}
        if row is None:
            session.add(KeyValue(key=_prompt_key(req.contact), value=value, expires_at=utcnow() + PROMPT_TTL))
        else:
            row.value = value
            row.expires_at = utcnow() + PROMPT_TTL


async def has_prompt(services: Services, contact: Contact) -> bool:
    """A question waits for this user's next text (the terminal then takes a typed number as the answer)."""
    async with services.db.read() as session:
        row = await session.get(KeyValue, _prompt_key(contact))
        return row is not None and (row.expires_at is None or row.expires_at >= utcnow())


async def pop_prompt(services: Services, contact: Contact) -> dict[str, Any] | None:
    async with services.db.transaction() as session:
        row = await session.get(KeyValue, _prompt_key(contact))
        if row is None:
            return None
        await session.delete(row)
        if row.expires_at is not None and row.expires_at < utcnow():
            return None
        return dict(row.value)


async def remember_reply_context(services: Services, ref: SentRef, context: dict[str, Any]) -> None:
    """Direct answers that can be replied to (an AI draft to edit) are remembered like outbox messages."""
    key = f"reply:{ref.platform}:{ref.chat_id}:{ref.message_id}"
    async with services.db.transaction() as session:
        if await session.get(KeyValue, key) is None:
            session.add(KeyValue(key=key, value=context, expires_at=utcnow() + timedelta(days=30)))


async def _reply_context(services: Services, ref: SentRef) -> dict[str, Any] | None:
    async with services.db.read() as session:
        row = await session.get(KeyValue, f"reply:{ref.platform}:{ref.chat_id}:{ref.message_id}")
        if row is not None:
            return dict(row.value)
        payload = await session.scalar(
            select(OutboxDelivery.payload).where(
                OutboxDelivery.platform == ref.platform,
                OutboxDelivery.chat_id == ref.chat_id,
                OutboxDelivery.platform_message_id == ref.message_id,
            )
        )
        if payload:
            context = payload.get("reply_context")
            return dict(context) if context else None
    return None


# --- the per-user command limit -----------------------------------------------------------------------------


class CommandLimiter:
    """A sliding window per user; per process, which is what a person typing can reach."""

    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window = window_seconds
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, key: str) -> float | None:
        """None when allowed; otherwise seconds until the next command is."""
        now = time.monotonic()
        hits = self._hits[key]
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return self.window - (now - hits[0])
        hits.append(now)
        return None


_LIMITERS: dict[int, CommandLimiter] = {}


def _limiter(services: Services) -> CommandLimiter:
    limiter = _LIMITERS.get(id(services))
    if limiter is None:
        s = services.settings
        limiter = _LIMITERS[id(services)] = CommandLimiter(s.command_rate_limit, s.command_rate_window_seconds)
    return limiter


# --- dispatch ------------------------------------------------------------------------------------------------


async def _load(services: Services, contact: Contact) -> tuple[User, bool, bool]:
    async with services.db.transaction() as session:
        account = await accounts.get_or_create(session, contact, signup_bonus_cents=services.signup_bonus_cents)
        return account.user, await accounts.is_admin(session, services.settings, account.user), account.created


def _expected_error(req: Request, error: Exception) -> Screen | None:
    if isinstance(error, AccountError):
        return Screen(req.t(f"error_{error.reason}", **{k: str(v) for k, v in error.details.items()}))
    if isinstance(error, LimitReached):
        return Screen(
            req.t(
                "error_limit", limit=req.t(f"limit_{error.limit}"), used=error.used, allowed=error.allowed,
                resets=error.resets_in_words(req.locale),
            )
        )
    if isinstance(error, ledger.InsufficientFunds):
        return Screen(
            req.t("error_insufficient_funds", needed=money(error.needed_cents), available=money(error.available_cents)),
            buttons=[[Button(req.t("btn_topup"), action="cmd:topup")]]
            if topup_available(req.services.settings, req.services.plan, req.contact.platform) else [],
        )
    for mapper in ERROR_MAPPERS:
        answer = mapper(req, error)
        if answer is not None:
            return answer
    return None


async def _run(req: Request, flow: Flow) -> list[Screen]:
    try:
        answer = await flow(req)
    except Exception as error:
        expected = _expected_error(req, error)
        if expected is not None:
            if req.is_button:
                expected.toast = expected.toast or plain_text(expected.text)[:190]
            return [expected]
        if database_unavailable(error):
            return [_unavailable(req.contact, req.name, error)]
        error_id = uuid.uuid4().hex[:8]
        req.services.metrics.handler_errors.inc()
        log.exception("error %s in %s for %s:%s", error_id, req.name, req.contact.platform, req.contact.platform_user_id)
        return [Screen(req.t("error_unexpected", error_id=error_id), toast=req.t("error_unexpected_toast"))]
    if answer is None:
        return []
    return answer if isinstance(answer, list) else [answer]


def _unavailable(contact: Contact, name: str, error: Exception) -> Screen:
    """The database is down or restarting: a short "try again shortly", a WARNING, no error id, no trace."""
    log.warning("%s for %s:%s answered 'temporarily unavailable': the database is unavailable (%s)", name,
                contact.platform, contact.platform_user_id, describe(error))
    locale = "es" if (contact.language_code or "").lower().startswith("es") else "en"
    text = t(locale, "error_unavailable")
    return Screen(text, toast=plain_text(text)[:190])


def _private_only(req: Request, private_chat_url: str | None) -> Screen:
    """What a group gets instead of an answer: a pointer to the private chat, nothing about the account."""
    if req.is_button:
        return toast(req.t("group_use_private"), alert=True)
    buttons = [[Button(req.t("btn_open_private"), url=private_chat_url)]] if private_chat_url else []
    return Screen(req.t("group_use_private"), buttons=buttons)


async def _gate(
    services: Services, contact: Contact, name: str, *, is_button: bool, in_group: bool = False,
    private_chat_url: str | None = None,
) -> tuple[Request | None, list[Screen]]:
    """Load the account and apply the rules every request passes: rate limit, groups, ban."""
    try:
        user, is_admin, created = await _load(services, contact)
    except Exception as error:
        if not database_unavailable(error):
            raise
        return None, [_unavailable(contact, name, error)]
    req = Request(
        services=services, contact=contact, user=user, is_admin=is_admin, name=name, is_button=is_button,
        new_account=created,
    )
    wait = _limiter(services).allow(f"{contact.platform}:{contact.platform_user_id}")
    if wait is not None and not is_admin:
        text = req.t("error_rate_limited", seconds=max(1, round(wait)))
        return None, [Screen(text, toast=plain_text(text))]
    if in_group:
        # Groups see nothing private, whatever the command or button (/start once posted the balance there):
        # one rule here, so no flow has to remember it. Before the ban check: a ban is private too.
        return None, [_private_only(req, private_chat_url)]
    if user.status == "banned":
        text = req.t("error_banned")
        return None, [Screen(text, toast=plain_text(text))]
    services.metrics.commands.labels(contact.platform, name).inc()
    return req, []


async def handle_command(
    services: Services, contact: Contact, name: str, text: str = "", *, in_group: bool = False,
    private_chat_url: str | None = None,
) -> list[Screen]:
    """A `/command` with its argument text."""
    name = name.lower()
    spec = COMMANDS.get(name)
    req, refusal = await _gate(
        services, contact, name if spec else "unknown", is_button=False, in_group=in_group,
        private_chat_url=private_chat_url,
    )
    if req is None:
        return refusal
    req.text = text.strip()
    req.args = req.text.split()
    if spec is None:
        return [Screen(req.t("unknown_command", command=f"/{name}"))]
    if spec.admin and not req.is_admin:
        return [Screen(req.t("error_admin_only"))]
    if name != "cancel":
        await _clear_prompt(services, contact)
    return await _run(req, spec.flow)


async def _drop_other_prompt(services: Services, contact: Contact, prefix: str) -> None:
    """A button of another flow abandons a pending question, so the next text is never taken as its answer
    (an abandoned "Reply" step must not turn a later message into an SMS)."""
    async with services.db.transaction() as session:
        row = await session.get(KeyValue, _prompt_key(contact))
        if row is not None and str(row.value.get("action", "")).partition(":")[0] != prefix:
            await session.delete(row)


async def _clear_prompt(services: Services, contact: Contact) -> None:
    async with services.db.transaction() as session:
        row = await session.get(KeyValue, _prompt_key(contact))
        if row is not None:
            await session.delete(row)


async def handle_action(
    services: Services, contact: Contact, data: str, message: SentRef | None = None, *, in_group: bool = False
) -> list[Screen]:
    """A button press: `data` is the button's action id."""
    prefix, _, rest = data.partition(":")
    entry = ACTIONS.get(prefix)
    req, refusal = await _gate(
        services, contact, prefix if entry else "unknown_button", is_button=True, in_group=in_group
    )
    if req is None:
        return refusal
    req.message = message
    req.args = rest.split(":") if rest else []
    await _drop_other_prompt(services, contact, prefix)
    if entry is None:
        return [toast(req.t("error_stale_button"))]
    flow, admin_only = entry
    if admin_only and not req.is_admin:
        return [toast(req.t("error_admin_only"), alert=True)]
    return await _run(req, flow)


async def handle_edited_command(
    services: Services, contact: Contact, *, in_group: bool = False, private_chat_url: str | None = None
) -> list[Screen]:
    """An edited message that carries a command: never run (the original already was, or was refused), only
    answered with "send it again", so an edit can neither repeat a purchase nor issue a second /link code."""
    req, refusal = await _gate(
        services, contact, "edited", is_button=False, in_group=in_group, private_chat_url=private_chat_url
    )
    if req is None:
        return refusal
    return [Screen(req.t("edit_not_run"))]


async def handle_text(
    services: Services, contact: Contact, text: str, *, reply_to: SentRef | None = None, in_group: bool = False,
    file: IncomingFile | None = None,
) -> list[Screen]:
    """Plain text: an answer to a pending prompt, a reply to a relayed message, or a hint to /help. With a `file`
    (a picture, `text` its caption) only a reply kind registered as `<kind>:file` takes it."""
    if in_group:
        return []
    req, refusal = await _gate(services, contact, "text", is_button=False)
    if req is None:
        return refusal
    req.text = text.strip()
    req.args = req.text.split()
    if file is not None:
        req.file = file
        context = await _reply_context(services, reply_to) if reply_to is not None else None
        flow = REPLY_KINDS.get(f"{context.get('kind')}:file") if context is not None else None
        if context is None or flow is None:
            return [Screen(req.t("mms_needs_reply"))]
        req.message, req.reply_context = reply_to, context
        return await _run(req, flow)
    if reply_to is not None:
        context = await _reply_context(services, reply_to)
        if context is not None and context.get("kind") in REPLY_KINDS:
            req.message = reply_to
            req.reply_context = context
            return await _run(req, REPLY_KINDS[str(context["kind"])])
    pending = await pop_prompt(services, contact)
    if pending is not None:
        prefix, _, rest = str(pending["action"]).partition(":")
        entry = ACTIONS.get(prefix)
        if entry is not None and (not entry[1] or req.is_admin):
            req.args = rest.split(":") if rest else []
            req.prompt_data = dict(pending.get("data") or {})
            return await _run(req, entry[0])
    return [Screen(req.t("unknown_text"))]
