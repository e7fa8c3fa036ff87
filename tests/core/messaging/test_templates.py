"""Message templates: variables parsed and checked with clear refusals, built-ins, CRUD per user, rendering."""

from __future__ import annotations

import asyncio
import re
from datetime import date

import pytest
from sqlalchemy import func, select

from core.messaging import templates
from core.messaging.templates import TemplateError
from core.models import Message, MessageTemplate, User, Verification
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.i18n import catalog

TODAY = date(2025, 6, 3)  # a Tuesday


def plain(html_text: str) -> str:
    return re.sub(r"<[^>]+>", "", html_text)


async def make_user(db: Database, locale: str = "en") -> int:
    async with db.transaction() as session:
        user = User(locale=locale)
        session.add(user)
        await session.flush()
        return user.id


# --- parsing bodies ---------------------------------------------------------------------------------------------


def test_variables_are_found_in_order_once_each_and_any_case() -> None:
    body = "Hi {name}, see you {date} at {time}. {Name}, bring {code}!"
    assert templates.variables_of(body) == ["name", "date", "time", "code"]
    assert templates.variables_of("No variables here.") == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("Hi {name, see you", "Hi {name, see"),
        ("Hi name}, see you", "Hi name}, see"),
        ("Hi {}, see you", "Hi {}, see"),
        ("Total {{amount}}", "Total {{amount"),
        ("Hi { name }", "Hi { name }"),
        ("Code {1code}", "Code {1code}"),
        ("Ends with {", "Ends with {"),
    ],
)
def test_malformed_braces_are_refused_with_where_they_are(body: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as caught:
        templates.variables_of(body)
    assert caught.value.reason == "malformed_brace"
    message = plain(caught.value.describe("en"))
    assert "brace that is not part of a variable" in message
    assert fragment in message
    assert "{name}" in message  # the example of what braces are for


def test_unknown_variables_are_refused_naming_the_known_ones() -> None:
    with pytest.raises(TemplateError) as caught:
        templates.clean_body("Hi {nombre}, your {colour} order")
    message = plain(caught.value.describe("en"))
    assert message.startswith("{nombre} is not a variable I know.")
    assert "{name}" in message and "{date}" in message and "{code}" in message
    assert "no es una variable que conozca" in plain(caught.value.describe("es"))


def test_body_and_name_limits() -> None:
    with pytest.raises(TemplateError, match="empty_body"):
        templates.clean_body("   \n ")
    with pytest.raises(TemplateError) as long_body:
        templates.clean_body("x" * (templates.BODY_MAX_CHARS + 1))
    assert f"at most {templates.BODY_MAX_CHARS}" in plain(long_body.value.describe("en"))
    with pytest.raises(TemplateError, match="empty_name"):
        templates.clean_name("  ")
    with pytest.raises(TemplateError, match="name_too_long"):
        templates.clean_name("n" * (templates.NAME_MAX_CHARS + 1))
    assert templates.clean_name("  Pickup   reminder ") == "Pickup reminder"
    assert templates.clean_body("Line one  \n\nLine two\n") == "Line one\n\nLine two"
    many = " ".join("{" + name + "}" for name in templates.VARIABLES)
    assert len(templates.VARIABLES) > templates.MAX_VARIABLES
    with pytest.raises(TemplateError, match="too_many_variables"):
        templates.variables_of(many)


# --- values -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("date", "2025-06-30", "2025-06-30"),
        ("date", "30/06/2025", "30/06/2025"),
        ("date", "12/31/25", "12/31/25"),
        ("date", "June 30", "June 30"),
        ("date", "30 de junio de 2025", "30 de junio de 2025"),
        ("date", "Tuesday, June 3", "Tuesday, June 3"),
        ("date", "tomorrow", "Wednesday, June 4"),
        ("date", "today", "Tuesday, June 3"),
        ("time", "14:30", "14:30"),
        ("time", "2:30 pm", "2:30 pm"),
        ("time", "9am", "9am"),
        ("time", "10h30", "10h30"),
        ("code", "A1B2C3", "A1B2C3"),
        ("code", "4821", "4821"),
        ("amount", "$25", "$25"),
        ("amount", "25.50 EUR", "25.50 EUR"),
        ("amount", "1,250.00", "1,250.00"),
        ("order", "#A-1234", "#A-1234"),
        ("discount", "20%", "20%"),
        ("link", "https://example.com/track?id=5", "https://example.com/track?id=5"),
        ("name", "  Ann   Lee ", "Ann Lee"),
    ],
)
def test_good_values_are_accepted(variable: str, value: str, expected: str) -> None:
    assert templates.check_value(variable, value, "en", today=TODAY) == expected


def test_relative_dates_are_written_out_in_spanish_too() -> None:
    assert templates.check_value("date", "mañana", "es", today=TODAY) == "miércoles 4 de junio"


@pytest.mark.parametrize(
    ("variable", "value", "expected_hint"),
    [
        ("date", "next week sometime", "a date such as"),
        ("date", "31/02/2025", "a date such as"),
        ("date", "2025-13-01", "a date such as"),
        ("time", "25:00", "a time such as"),
        ("time", "half past", "a time such as"),
        ("code", "123", "4 to 8 letters or digits"),
        ("code", "123456789", "4 to 8 letters or digits"),
        ("code", "12-34", "4 to 8 letters or digits"),
        ("amount", "lots", "an amount such as"),
        ("link", "example.com", "a link starting with https://"),
        ("order", "a b c", "an order or reference number"),
        ("name", "x" * 41, "at most 40 characters"),
        ("name", "   ", "any short text"),
    ],
)
def test_bad_values_are_refused_saying_what_was_expected(variable: str, value: str, expected_hint: str) -> None:
    with pytest.raises(TemplateError) as caught:
        templates.check_value(variable, value, "en", today=TODAY)
    assert caught.value.reason == "invalid_value"
    message = plain(caught.value.describe("en"))
    assert f"doesn't fit {{{variable}}}" in message
    assert expected_hint in message


def test_suggested_values_pass_their_own_checks() -> None:
    for name in templates.VARIABLES:
        for locale in ("en", "es"):
            for value in templates.suggestions(name, locale, today=TODAY):
                assert templates.check_value(name, value, locale, today=TODAY) == value
    assert templates.suggestions("date", "en", today=TODAY)[:2] == ["Tuesday, June 3", "Wednesday, June 4"]


# --- rendering --------------------------------------------------------------------------------------------------


def test_render_fills_every_variable_once_and_leaves_values_literal() -> None:
    body = "Hi {name}, your code is {code}. Again: {CODE}."
    text = templates.render(body, {"name": "Eve {date}", "code": "X9Y8"})
    assert text == "Hi Eve {date}, your code is X9Y8. Again: X9Y8."


def test_missing_values_are_refused_naming_each() -> None:
    body = "Hi {name}, your appointment is on {date} at {time}."
    with pytest.raises(TemplateError) as caught:
        templates.render(body, {"date": "June 3"})
    assert caught.value.reason == "missing_values"
    message = plain(caught.value.describe("en"))
    assert message == "Missing value for {name}, {time}. Fill in every variable before sending."
    assert templates.missing_variables(body, {"date": "June 3"}) == ["name", "time"]


def test_a_skipped_optional_variable_leaves_no_gap() -> None:
    assert templates.render("Hi {name}, see you {date}.", {"date": "today"}, skipped=["name"]) == "Hi, see you today."
    assert templates.render("¡Hola {name}! Gracias.", {}, skipped=["name"]) == "¡Hola! Gracias."
    assert templates.render("Welcome, {name}!", {}, skipped=["name"]) == "Welcome!"
    # Only optional variables can be skipped.
    with pytest.raises(TemplateError, match="missing_values"):
        templates.render("Code {code}", {}, skipped=["code"])
    assert templates.missing_variables("Hi {name} {code}", {}, skipped=["name", "code"]) == ["code"]


def test_rendered_text_has_a_length_limit() -> None:
    body = "{link} " * 6
    link = "https://example.com/" + "a" * 180
    with pytest.raises(TemplateError) as caught:
        templates.render(body, {"link": templates.check_value("link", link)})
    assert f"at most {templates.RENDERED_MAX_CHARS}" in plain(caught.value.describe("en"))


def test_highlight_escapes_and_bolds_placeholders() -> None:
    assert templates.highlight("<b>5 & {code}</b>") == "&lt;b&gt;5 &amp; <b>{code}</b>&lt;/b&gt;"


# --- built-ins --------------------------------------------------------------------------------------------------


def test_built_ins_exist_per_use_in_both_languages_and_parse() -> None:
    for locale in ("en", "es"):
        builtins = templates.builtin_templates(locale)
        assert [b.ref for b in builtins] == ["b.appt", "b.delivery", "b.verify", "b.followup"]
        for template in builtins:
            assert template.builtin and template.name and template.variables is not None
            templates.clean_body(template.body)
    names = [b.name for b in templates.builtin_templates("en")]
    assert names == ["Appointment reminder", "Delivery update", "Verification notice", "Follow-up"]
    assert templates.builtin_templates("es")[0].name == "Recordatorio de cita"


def test_a_built_in_renders_to_a_ready_sms() -> None:
    appt = templates.builtin_templates("en")[0]
    values = {
        "name": templates.check_value("name", "Sam", "en"),
        "date": templates.check_value("date", "tomorrow", "en", today=TODAY),
        "time": templates.check_value("time", "10:30", "en"),
    }
    assert templates.render(appt.body, values) == (
        "Hi Sam, this is a reminder of your appointment on Wednesday, June 4 at 10:30. "
        "Reply YES to confirm or call us to reschedule."
    )
    verify = templates.builtin_templates("es")[2]
    assert templates.render(verify.body, {"service": "Acme", "code": "884211"}).startswith(
        "Tu código de verificación de Acme es 884211."
    )


POPULAR = ("whatsapp", "google", "telegram", "facebook", "instagram", "amazon", "uber", "paypal")


def test_popular_services_have_their_own_set_in_both_languages_and_each_parses() -> None:
    assert set(POPULAR) <= set(templates.SERVICE_TEMPLATES)
    for service in POPULAR:
        for locale in ("en", "es"):
            found = templates.service_templates(service, locale)
            assert len(found) >= 2 and all(t.ref.startswith(f"s.{service}.") and t.builtin for t in found)
            for template in found:
                templates.clean_name(template.name)
                templates.clean_body(template.body)
                assert len(f"tpl:use:{template.ref}:9223372036854775807") <= 64  # fits a button's action id
    assert templates.service_templates("no-such-service", "en") == []


def test_services_are_recognised_in_texts_and_refs_resolve() -> None:
    assert templates.services_in("G-123456 is your Google verification code") == ["google"]
    assert templates.services_in("Your WhatsApp code: 123-456. Gmail too") == ["whatsapp", "google"]
    assert templates.services_in("Ubered home, no service named here") == []


async def test_service_templates_are_found_by_ref_and_the_services_a_number_or_user_uses(db: Database) -> None:
    user_id = await make_user(db, "es")
    async with db.transaction() as session:
        late = await templates.get_template(session, user_id, "s.uber.late", "es")
        assert late.name == "Llego tarde" and late.variables == ["name", "place", "time"]
        with pytest.raises(TemplateError):
            await templates.get_template(session, user_id, "s.uber.nope", "es")
        now = utcnow()
        session.add(Message(
            user_id=user_id, direction="inbound", provider="sandbox", from_e164="+14155550199",
            to_e164="+14155550100", body="Your Amazon OTP is 123456", status="received", created_at=now,
        ))
        session.add(Verification(
            user_id=user_id, provider="sandbox", service="instagram", service_name="Instagram", state="completed",
            price_cents=75, provider_cost_cents=75, idempotency_key="tpl-test", created_at=now, updated_at=now,
        ))
    async with db.read() as session:
        assert await templates.services_of_number(session, user_id, "+14155550100") == ["amazon"]
        assert await templates.services_of_number(session, user_id, "+14155550111") == []
        assert await templates.services_of_user(session, user_id) == ["instagram"]


def test_every_error_and_hint_has_text_in_both_languages() -> None:
    reasons = {
        "empty_name", "name_too_long", "name_taken", "empty_body", "body_too_long", "too_many_templates",
        "too_many_variables", "malformed_brace", "unknown_variable", "missing_values", "invalid_value",
        "rendered_too_long", "not_found",
    }
    kinds = {v.kind for v in templates.VARIABLES.values()}
    for language in ("en", "es"):
        texts = catalog(language)
        assert {f"tpl_error_{r}" for r in reasons} <= set(texts)
        assert {f"tpl_hint_{k}" for k in kinds} <= set(texts)


# --- the user's own templates ------------------------------------------------------------------------------------


async def test_crud_of_own_templates(db: Database) -> None:
    ann, bob = await make_user(db), await make_user(db)
    async with db.transaction() as session:
        created = await templates.create_template(session, ann, " Pickup ", "Hi {name}, your order {order} is ready.")
    assert (created.name, created.ref, created.variables) == ("Pickup", f"u.{created.id}", ["name", "order"])

    async with db.transaction() as session:
        with pytest.raises(TemplateError, match="name_taken"):
            await templates.create_template(session, ann, "PICKUP", "Another")
        # Bob may use the same name: names are unique per user.
        await templates.create_template(session, bob, "Pickup", "Bob's")
        with pytest.raises(TemplateError, match="unknown_variable"):
            await templates.create_template(session, ann, "Bad", "Hi {nom}")

    async with db.transaction() as session:
        updated = await templates.update_template(session, ann, created.id or 0, name="Ready", body="Ready: {order}")
    assert (updated.name, updated.body) == ("Ready", "Ready: {order}")

    async with db.read() as session:
        assert [t.name for t in await templates.list_templates(session, ann)] == ["Ready"]
        mine = await templates.get_template(session, ann, updated.ref, "en")
        assert mine.body == "Ready: {order}"
        # Someone else's template reads as missing, for reading and for changing.
        with pytest.raises(TemplateError, match="not_found"):
            await templates.get_template(session, bob, updated.ref, "en")
        builtin = await templates.get_template(session, bob, "b.verify", "es")
        assert builtin.builtin and builtin.name == "Aviso de verificación"
        for bad_ref in ("b.nope", "u.abc", "x.1", ""):
            with pytest.raises(TemplateError, match="not_found"):
                await templates.get_template(session, ann, bad_ref, "en")
    async with db.transaction() as session:
        with pytest.raises(TemplateError, match="not_found"):
            await templates.delete_template(session, bob, created.id or 0)
        gone = await templates.delete_template(session, ann, created.id or 0)
    assert gone.name == "Ready"
    async with db.read() as session:
        assert await templates.list_templates(session, ann) == []
        assert await session.scalar(select(func.count()).select_from(MessageTemplate)) == 1


async def test_free_name_and_the_per_user_cap(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    ann = await make_user(db)
    async with db.transaction() as session:
        await templates.create_template(session, ann, "Reminder", "One")
        assert await templates.free_name(session, ann, "reminder") == "reminder (2)"
        await templates.create_template(session, ann, "Reminder (2)", "Two")
        assert await templates.free_name(session, ann, "Reminder") == "Reminder (3)"
        assert await templates.free_name(session, ann, "Other") == "Other"
    monkeypatch.setattr(templates, "MAX_TEMPLATES_PER_USER", 2)
    async with db.transaction() as session:
        with pytest.raises(TemplateError) as caught:
            await templates.create_template(session, ann, "Third", "Three")
    assert "You have 2 templates, the most allowed" in plain(caught.value.describe("en"))


async def test_renaming_onto_an_existing_name_is_refused(db: Database) -> None:
    ann = await make_user(db)
    async with db.transaction() as session:
        first = await templates.create_template(session, ann, "First", "1")
        await templates.create_template(session, ann, "Second", "2")
    async with db.transaction() as session:
        with pytest.raises(TemplateError) as caught:
            await templates.update_template(session, ann, first.id or 0, name="second")
    assert "already have a template called" in plain(caught.value.describe("en"))
    async with db.transaction() as session:
        same = await templates.update_template(session, ann, first.id or 0, name="FIRST")
    assert same.name == "FIRST"


async def test_saving_the_same_name_at_once_keeps_one(db: Database) -> None:
    ann = await make_user(db)

    async def save(body: str) -> str:
        try:
            async with db.transaction() as session:
                await templates.create_template(session, ann, "Same", body)
            return "saved"
        except TemplateError as error:
            return error.reason

    outcomes = await asyncio.gather(*(save(f"body {i}") for i in range(5)))
    assert sorted(outcomes) == ["name_taken"] * 4 + ["saved"]
    async with db.read() as session:
        assert len(await templates.list_templates(session, ann)) == 1
