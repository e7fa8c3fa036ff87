"""Message templates: the built-in sets (core.messaging.template_sets) and each user's own, with `{variables}` parsed,
checked and filled in.

A template body is SMS text with placeholders such as `{name}`, `{date}` or `{code}` from a fixed vocabulary
(`VARIABLES`), so every value can be checked before anything is sent: a `{date}` must be a date, a `{code}` 4 to 8
letters or digits. Anything else in braces is refused with a message that says what is wrong and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.messaging.template_sets import (
    BUILTIN_TEMPLATES,
    SERVICE_TEMPLATES,
    Lang,
    lang_of,
)
from core.models import Message, MessageTemplate, Verification
from core.platform.clock import utc_today
from core.platform.i18n import Html, escape, t

NAME_MAX_CHARS = 40
BODY_MAX_CHARS = 600
RENDERED_MAX_CHARS = 1_000  # about seven SMS segments: a template is for short messages
VALUE_MAX_CHARS = 100
MAX_TEMPLATES_PER_USER = 50
MAX_VARIABLES = 10

Kind = Literal["text", "date", "time", "code", "amount", "reference", "percent", "url"]


class TemplateError(ValueError):
    """A template or a value that cannot be used; `reason` names the catalog text `tpl_error_<reason>`."""

    def __init__(self, reason: str, **details: object) -> None:
        super().__init__(f"{reason}: {details}" if details else reason)
        self.reason = reason
        self.details = details

    def describe(self, locale: str) -> Html:
        """The error as one or two lines the user can act on, in their language."""
        details: dict[str, object] = dict(self.details)
        if self.reason == "invalid_value":
            kind = str(details.pop("kind", "text"))
            details["hint"] = hint(locale, kind, int(str(details.get("max", VALUE_MAX_CHARS))))
        return t(locale, f"tpl_error_{self.reason}", **details)


@dataclass(frozen=True)
class Variable:
    """One placeholder of the vocabulary: how its value is checked and whether it may be left out."""

    name: str
    kind: Kind
    optional: bool = False
    max_chars: int = 60

    @property
    def placeholder(self) -> str:
        return "{" + self.name + "}"


VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        # A missing name reads naturally once removed ("Hi, your order…"); everything else would leave a hole.
        Variable("name", "text", optional=True, max_chars=40),
        Variable("date", "date"),
        Variable("time", "time"),
        Variable("code", "code"),
        Variable("amount", "amount"),
        Variable("order", "reference"),
        Variable("service", "text", max_chars=40),
        Variable("business", "text", max_chars=60),
        Variable("place", "text", max_chars=80),
        Variable("discount", "percent"),
        Variable("link", "url", max_chars=200),
    )
}


def known_variables() -> str:
    return ", ".join(v.placeholder for v in VARIABLES.values())


def hint(locale: str, kind: str, max_chars: int = VALUE_MAX_CHARS) -> Html:
    return t(locale, f"tpl_hint_{kind}", max=max_chars)


# --- built-in templates ---------------------------------------------------------------------------------------




# --- parsing and checking bodies ---------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SPACES = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    name: str  # lower-cased: {Name} and {name} are the same variable


def _tokens(body: str) -> list[_Token]:
    """Every placeholder in order; a brace that does not open or close one is refused, with where it is."""
    found: list[_Token] = []
    pos = 0
    while True:
        opening = body.find("{", pos)
        closing = body.find("}", pos)
        if opening < 0 and closing < 0:
            return found
        if closing >= 0 and (opening < 0 or closing < opening):
            raise TemplateError("malformed_brace", fragment=_around(body, closing))
        match = _PLACEHOLDER.match(body, opening)
        if match is None:
            raise TemplateError("malformed_brace", fragment=_around(body, opening))
        found.append(_Token(match.start(), match.end(), match.group(1).lower()))
        pos = match.end()


def _around(body: str, index: int) -> str:
    start = max(0, index - 12)
    end = min(len(body), index + 13)
    return ("…" if start else "") + body[start:end].replace("\n", " ") + ("…" if end < len(body) else "")


def variables_of(body: str) -> list[str]:
    """The variables a body uses, each once, in order of first use; TemplateError for bad braces or names."""
    names: list[str] = []
    for token in _tokens(body):
        if token.name not in VARIABLES:
            raise TemplateError(
                "unknown_variable", variable="{" + token.name + "}", known=known_variables()
            )
        if token.name not in names:
            names.append(token.name)
    if len(names) > MAX_VARIABLES:
        raise TemplateError("too_many_variables", max=MAX_VARIABLES)
    return names


def clean_name(name: str) -> str:
    """A template name as stored: one line, trimmed; TemplateError when empty or too long."""
    cleaned = _SPACES.sub(" ", " ".join(name.split())).strip()
    if not cleaned:
        raise TemplateError("empty_name")
    if len(cleaned) > NAME_MAX_CHARS:
        raise TemplateError("name_too_long", max=NAME_MAX_CHARS, length=len(cleaned))
    return cleaned


def clean_body(body: str) -> str:
    """A template body as stored (line breaks kept, trailing spaces dropped) after every check passes."""
    cleaned = "\n".join(line.rstrip() for line in body.strip().splitlines()).strip()
    if not cleaned:
        raise TemplateError("empty_body")
    if len(cleaned) > BODY_MAX_CHARS:
        raise TemplateError("body_too_long", max=BODY_MAX_CHARS, length=len(cleaned))
    variables_of(cleaned)
    return cleaned


# --- values ------------------------------------------------------------------------------------------------------

_MONTHS: dict[str, int] = {}
for _number, _names in enumerate(
    (
        ("january", "jan", "enero", "ene"),
        ("february", "feb", "febrero"),
        ("march", "mar", "marzo"),
        ("april", "apr", "abril", "abr"),
        ("may", "mayo"),
        ("june", "jun", "junio"),
        ("july", "jul", "julio"),
        ("august", "aug", "agosto", "ago"),
        ("september", "sep", "sept", "septiembre", "setiembre"),
        ("october", "oct", "octubre"),
        ("november", "nov", "noviembre"),
        ("december", "dec", "diciembre", "dic"),
    ),
    start=1,
):
    for _name in _names:
        _MONTHS[_name] = _number

_MONTH_NAMES: dict[Lang, tuple[str, ...]] = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"),
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
           "noviembre", "diciembre"),
}
_WEEKDAY_NAMES: dict[Lang, tuple[str, ...]] = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}
_WEEKDAYS = {name.lower() for names in _WEEKDAY_NAMES.values() for name in names} | {
    "mon", "tue", "tues", "wed", "thu", "thur", "thurs", "fri", "sat", "sun", "miercoles", "sabado",
}
_RELATIVE_DAYS = {"today": 0, "hoy": 0, "tomorrow": 1, "mañana": 1, "manana": 1}

_LEADING_WORD = re.compile(r"^([a-záéíóúñ]+)\.?,?\s+(.+)$")
_NUMERIC_DATE = re.compile(r"^(\d{1,4})[-/.](\d{1,2})[-/.](\d{1,4})$")
_DAY_MONTH = re.compile(r"^(\d{1,2})(?:st|nd|rd|th)?\s+(?:de\s+)?([a-zñ]+)\.?(?:,?\s+(?:de\s+)?(\d{4}))?$")
_MONTH_DAY = re.compile(r"^([a-zñ]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?(?:,?\s+(\d{4}))?$")
_TIME_24 = re.compile(r"^([01]?\d|2[0-3])(?:[:.]([0-5]\d)|h([0-5]\d)?)$")
_TIME_12 = re.compile(r"^(0?[1-9]|1[0-2])(?:[:.]([0-5]\d))?\s*([ap])\.?\s*m\.?$")
_CODE = re.compile(r"^[A-Za-z0-9]{4,8}$")
_AMOUNT = re.compile(
    r"^(?:(?:[$€£¥]|[A-Z]{3})\s?)?\d{1,3}(?:[,.\s]?\d{3})*(?:[.,]\d{1,2})?"
    r"(?:\s?(?:[$€£¥]|[A-Z]{3}|dollars?|euros?|d[oó]lares|pesos?))?$",
    re.IGNORECASE,
)
_REFERENCE = re.compile(r"^#?[A-Za-z0-9][A-Za-z0-9\-_/.]{0,31}$")
_PERCENT = re.compile(r"^\d{1,3}(?:[.,]\d{1,2})?\s?%$")
_URL = re.compile(r"^https?://[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::\d{1,5})?(?:[/?#]\S*)?$")


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return 1900 <= year <= 2200


def _full_year(year: int) -> int:
    return 2000 + year if year < 100 else year


def _is_date(text: str) -> bool:
    lowered = " ".join(text.lower().split())
    # "Tuesday, June 3" and "martes 3 de junio": a weekday in front changes nothing.
    leading = _LEADING_WORD.match(lowered)
    if leading and leading.group(1) in _WEEKDAYS:
        lowered = leading.group(2)
    if lowered in _RELATIVE_DAYS:
        return True
    numeric = _NUMERIC_DATE.match(lowered)
    if numeric:
        a, b, c = (int(part) for part in numeric.groups())
        if len(numeric.group(1)) == 4:
            return _real_date(a, b, c)
        if len(numeric.group(3)) not in (2, 4):
            return False
        year = _full_year(c)
        # 03/06/2025 is June 3 in most of the world and March 6 in the US; either reading is a real date.
        return _real_date(year, b, a) or _real_date(year, a, b)
    for pattern, day_group, month_group in ((_DAY_MONTH, 1, 2), (_MONTH_DAY, 2, 1)):
        match = pattern.match(lowered)
        if match:
            month = _MONTHS.get(match.group(month_group))
            year = int(match.group(3)) if match.group(3) else 2024  # a leap year lets "29 Feb" through
            return month is not None and _real_date(year, month, int(match.group(day_group)))
    return False


def _is_time(text: str) -> bool:
    lowered = text.lower().strip()
    return bool(_TIME_24.match(lowered) or _TIME_12.match(lowered))


def check_value(variable: str, value: str, locale: str = "en", *, today: date | None = None) -> str:
    """The value as it goes into the SMS, or TemplateError(invalid_value) saying what was expected.

    "today" and "tomorrow" (also in Spanish) become the date written out, since "on tomorrow" reads badly.
    """
    spec = VARIABLES.get(variable)
    if spec is None:
        raise TemplateError("unknown_variable", variable="{" + variable + "}", known=known_variables())
    cleaned = " ".join(value.split())
    shown = cleaned if len(cleaned) <= 40 else cleaned[:39] + "…"

    def refuse() -> TemplateError:
        return TemplateError(
            "invalid_value", variable=spec.placeholder, value=shown, kind=spec.kind, max=spec.max_chars
        )

    if not cleaned or len(cleaned) > spec.max_chars:
        raise refuse()
    if spec.kind == "text":
        return cleaned
    if spec.kind == "date":
        if not _is_date(cleaned):
            raise refuse()
        offset = _RELATIVE_DAYS.get(cleaned.lower())
        if offset is not None:
            return format_date((today or utc_today()) + timedelta(days=offset), locale)
        return cleaned
    valid = {
        "time": _is_time,
        "code": lambda v: bool(_CODE.match(v)),
        "amount": lambda v: bool(_AMOUNT.match(v)) and any(ch.isdigit() for ch in v),
        "reference": lambda v: bool(_REFERENCE.match(v)),
        "percent": lambda v: bool(_PERCENT.match(v) or _AMOUNT.match(v)),
        "url": lambda v: bool(_URL.match(v)),
    }[spec.kind]
    if not valid(cleaned):
        raise refuse()
    return cleaned


def format_date(day: date, locale: str) -> str:
    """A date as an SMS would say it: "Tuesday, June 3" / "martes 3 de junio"."""
    lang = lang_of(locale)
    weekday = _WEEKDAY_NAMES[lang][day.weekday()]
    month = _MONTH_NAMES[lang][day.month - 1]
    return f"{weekday}, {month} {day.day}" if lang == "en" else f"{weekday} {day.day} de {month}"


def suggestions(variable: str, locale: str, *, today: date | None = None) -> list[str]:
    """Ready-made values offered as buttons in the fill-in dialog (each passes `check_value`)."""
    spec = VARIABLES.get(variable)
    if spec is None:
        return []
    if spec.kind == "date":
        start = today or utc_today()
        return [format_date(start + timedelta(days=days), locale) for days in (0, 1, 2)]
    if spec.kind == "time":
        return ["09:00", "12:00", "15:00", "18:00"]
    return []


# --- rendering ---------------------------------------------------------------------------------------------------

_SPACE_BEFORE_MARK = re.compile(r"[ \t]+([,.!?;:])")
_COMMA_BEFORE_END = re.compile(r",([!?.])")


def missing_variables(body: str, values: Mapping[str, str], skipped: Sequence[str] = ()) -> list[str]:
    """Variables still to ask for, in order: neither filled in nor (being optional) skipped."""
    return [
        name for name in variables_of(body)
        if name not in values and not (name in skipped and VARIABLES[name].optional)
    ]


def render(body: str, values: Mapping[str, str], skipped: Sequence[str] = ()) -> str:
    """The SMS text: each placeholder replaced by its value, skipped optional ones removed with their gap.

    A required variable without a value is refused (TemplateError "missing_values", naming them all);
    values are taken as given, so check each with `check_value` first.
    """
    names = variables_of(body)
    missing = [
        VARIABLES[name].placeholder for name in names
        if not values.get(name) and not (name in skipped and VARIABLES[name].optional)
    ]
    if missing:
        raise TemplateError("missing_values", variables=", ".join(missing))
    # One pass over the original body: a value that itself contains "{date}" stays literal text.
    text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1).lower(), ""), body)
    if any(not values.get(name) for name in names):
        # "Hi {name}, …" without a name must read "Hi, …", not "Hi , …".
        text = _SPACE_BEFORE_MARK.sub(r"\1", text)
        text = _COMMA_BEFORE_END.sub(r"\1", text)
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.splitlines())
    text = text.strip()
    if len(text) > RENDERED_MAX_CHARS:
        raise TemplateError("rendered_too_long", max=RENDERED_MAX_CHARS, length=len(text))
    return text


def highlight(body: str) -> Html:
    """A body for display: escaped, with its placeholders in bold so the user sees what will be asked."""
    out: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(body):
        out.append(escape(body[pos : match.start()]))
        out.append(f"<b>{escape(match.group(0))}</b>")
        pos = match.end()
    out.append(escape(body[pos:]))
    return Html("".join(out))


# --- what a user can pick from -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A built-in or a user's own template, as the chat shows and uses it."""

    # "b.<key>" for a built-in, "s.<service>.<key>" for a service's built-in, "u.<id>" for the user's own; short
    # enough for a button's action id
    ref: str
    name: str
    body: str
    builtin: bool
    id: int | None = None
    service: str | None = None

    @property
    def variables(self) -> list[str]:
        return variables_of(self.body)


def builtin_templates(locale: str) -> list[Template]:
    """The built-ins every user has, whatever the service."""
    return [Template(f"b.{b.key}", b.name(locale), b.body(locale), True) for b in BUILTIN_TEMPLATES.values()]


def service_templates(service: str, locale: str) -> list[Template]:
    """The built-in set of one service (empty for a service without one)."""
    found = SERVICE_TEMPLATES.get(service)
    if found is None:
        return []
    return [
        Template(f"s.{service}.{b.key}", b.name(locale), b.body(locale), True, service=service)
        for b in found.templates
    ]


_ALIASES = {alias: s.service for s in SERVICE_TEMPLATES.values() for alias in s.aliases}
_WORDS = re.compile(r"[a-z]+")


def services_in(text: str) -> list[str]:
    """The services with a template set that a text names ("G-123456 is your Google code" → google)."""
    found: list[str] = []
    for word in _WORDS.findall(text.lower()):
        service = _ALIASES.get(word)
        if service is not None and service not in found:
            found.append(service)
    return found


async def services_of_number(session: AsyncSession, user_id: int, e164: str, *, scan: int = 100) -> list[str]:
    """The services a number is used with: those its recent texts name, in order of first mention."""
    bodies = await session.scalars(
        select(Message.body)
        .where(Message.user_id == user_id, or_(Message.from_e164 == e164, Message.to_e164 == e164))
        .order_by(Message.id.desc())
        .limit(scan)
    )
    found: list[str] = []
    for body in bodies:
        found += [service for service in services_in(body or "") if service not in found]
    return found


async def services_of_user(session: AsyncSession, user_id: int, *, scan: int = 50) -> list[str]:
    """The services with a template set the user has verified with lately, newest first."""
    codes = await session.scalars(
        select(Verification.service).where(Verification.user_id == user_id).order_by(Verification.id.desc()).limit(scan)
    )
    found: list[str] = []
    for code in codes:
        service = code if code in SERVICE_TEMPLATES else _ALIASES.get(code.lower())
        if service is not None and service not in found:
            found.append(service)
    return found


def _own(row: MessageTemplate) -> Template:
    return Template(f"u.{row.id}", row.name, row.body, False, row.id)


async def list_templates(session: AsyncSession, user_id: int) -> list[Template]:
    """The user's own templates, by name."""
    rows = await session.scalars(
        select(MessageTemplate).where(MessageTemplate.user_id == user_id).order_by(func.lower(MessageTemplate.name))
    )
    return [_own(row) for row in rows]


async def _row(session: AsyncSession, user_id: int, template_id: int, *, lock: bool = False) -> MessageTemplate:
    statement = select(MessageTemplate).where(MessageTemplate.id == template_id, MessageTemplate.user_id == user_id)
    if lock:
        statement = statement.with_for_update()
    row = await session.scalar(statement)
    if row is None:
        raise TemplateError("not_found")
    return row


async def get_template(session: AsyncSession, user_id: int, ref: str, locale: str) -> Template:
    """A template by its ref; someone else's template reads as not found."""
    kind, _, key = ref.partition(".")
    if kind == "b" and key in BUILTIN_TEMPLATES:
        b = BUILTIN_TEMPLATES[key]
        return Template(ref, b.name(locale), b.body(locale), True)
    if kind == "u" and key.isdigit():
        return _own(await _row(session, user_id, int(key)))
    if kind == "s":
        found = next((t for t in service_templates(key.partition(".")[0], locale) if t.ref == ref), None)
        if found is not None:
            return found
    raise TemplateError("not_found")


async def name_taken(session: AsyncSession, user_id: int, name: str, *, except_id: int | None = None) -> bool:
    statement = select(MessageTemplate.id).where(
        MessageTemplate.user_id == user_id, func.lower(MessageTemplate.name) == name.lower()
    )
    if except_id is not None:
        statement = statement.where(MessageTemplate.id != except_id)
    return await session.scalar(statement.limit(1)) is not None


async def free_name(session: AsyncSession, user_id: int, name: str) -> str:
    """`name`, or "name (2)", "name (3)"… when the user already has a template of that name."""
    base = clean_name(name)
    candidate = base
    for number in range(2, MAX_TEMPLATES_PER_USER + 2):
        if not await name_taken(session, user_id, candidate):
            return candidate
        suffix = f" ({number})"
        candidate = base[: NAME_MAX_CHARS - len(suffix)].rstrip() + suffix
    return candidate


async def _flush_unique(session: AsyncSession, name: str) -> None:
    # Two chats saving the same name at once: the unique constraint decides, the loser gets a clear error.
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise TemplateError("name_taken", name=name) from None


async def create_template(session: AsyncSession, user_id: int, name: str, body: str) -> Template:
    name, body = clean_name(name), clean_body(body)
    count = await session.scalar(
        select(func.count()).select_from(MessageTemplate).where(MessageTemplate.user_id == user_id)
    )
    if (count or 0) >= MAX_TEMPLATES_PER_USER:
        raise TemplateError("too_many_templates", max=MAX_TEMPLATES_PER_USER)
    if await name_taken(session, user_id, name):
        raise TemplateError("name_taken", name=name)
    row = MessageTemplate(user_id=user_id, name=name, body=body)
    session.add(row)
    await _flush_unique(session, name)
    return _own(row)


async def update_template(
    session: AsyncSession, user_id: int, template_id: int, *, name: str | None = None, body: str | None = None
) -> Template:
    row = await _row(session, user_id, template_id, lock=True)
    if name is not None:
        cleaned = clean_name(name)
        if await name_taken(session, user_id, cleaned, except_id=row.id):
            raise TemplateError("name_taken", name=cleaned)
        row.name = cleaned
    if body is not None:
        row.body = clean_body(body)
    await _flush_unique(session, row.name)
    return _own(row)


async def delete_template(session: AsyncSession, user_id: int, template_id: int) -> Template:
    row = await _row(session, user_id, template_id, lock=True)
    gone = _own(row)
    await session.delete(row)
    return gone
