"""Tests for phone-number normalisation and display (core.platform.phone)."""

import pytest

from core.platform.phone import InvalidPhoneNumber, country_name, format_international, normalize, region_of


@pytest.mark.parametrize(
    "raw",
    [
        "+14155550100",
        "+1 415 555 0100",
        "+1 (415) 555-0100",
        "(415) 555-0100",
        "415-555-0100",
        "415.555.0100",
        "4155550100",
        "1 415 555 0100",
        "  415 555 0100\n",
        "tel: +1-415-555-0100",
        "+1\u00a0415\u00a0555\u00a00100",
        "011 1 415 555 0100",
    ],
)
def test_us_formats_normalise_to_e164(raw: str) -> None:
    assert normalize(raw) == "+14155550100"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("020 7946 0958", "GB", "+442079460958"),
        ("07911 123456", "GB", "+447911123456"),
        ("01512 3456789", "DE", "+4915123456789"),
        ("01512 3456789", "de", "+4915123456789"),  # region codes are case-insensitive
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("8 (912) 345-67-89", "RU", "+79123456789"),
        ("0532 123 45 67", "TR", "+905321234567"),
        ("(11) 91234-5678", "BR", "+5511912345678"),
        ("098765 43210", "IN", "+919876543210"),
    ],
)
def test_national_formats_use_default_region(raw: str, region: str, expected: str) -> None:
    assert normalize(raw, region) == expected


def test_international_number_ignores_default_region() -> None:
    assert normalize("+44 20 7946 0958", "US") == "+442079460958"
    assert normalize("+1 415 555 0100", "GB") == "+14155550100"


def test_00_international_prefix_works_from_any_region() -> None:
    assert normalize("0044 20 7946 0958") == "+442079460958"
    assert normalize("0049 1512 3456789", "FR") == "+4915123456789"


@pytest.mark.parametrize(
    "raw",
    [
        "+1 800 555 0100",  # toll free: can be text-enabled in the US
        "+44 56 1234 5678",  # VoIP
        "+1 500 234 5678",  # personal number
        "+800 1234 5678",  # international freephone
        "1-800-FLOWERS",  # vanity letters are dialable
    ],
)
def test_sms_capable_types_are_accepted(raw: str) -> None:
    assert normalize(raw).startswith("+")


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        ("", "enter a phone number"),
        ("   ", "enter a phone number"),
        ("hello", "doesn't look like a phone number"),
        ("+", "doesn't look like a phone number"),
        ("12", "too short"),
        ("+1 415 555 01000", "too long"),
        ("+999 1234 5678", "Unknown country code"),
        ("555-0100", "area code"),
        ("+1 123 555 0100", "isn't valid"),  # NANP area codes never start with 1
        ("+376 712 3457", "wrong number of digits"),  # Andorra has 6-, 8- and 9-digit numbers
        ("+1 415 555 0100 ext. 12", "Extensions"),
        ("+1 900 555 0100", "Premium-rate"),
        ("+44 901 234 5678", "Premium-rate"),
        ("+33 8 84 01 23 45", "Shared-cost"),
        ("+44 55 1234 5678", "switchboard"),
        ("+44 7640 123456", "Pager"),
        ("+49 177 991234567", "Voicemail"),
    ],
)
def test_unusable_numbers_are_rejected_with_a_reason(raw: str, reason_part: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as excinfo:
        normalize(raw)
    assert reason_part.lower() in excinfo.value.reason.lower()
    assert str(excinfo.value) == excinfo.value.reason


def test_national_number_without_region_cannot_be_placed() -> None:
    with pytest.raises(InvalidPhoneNumber, match="country code"):
        normalize("4155550100", "ZZ")


def test_invalid_phone_number_is_a_value_error() -> None:
    assert issubclass(InvalidPhoneNumber, ValueError)
    with pytest.raises(ValueError):
        normalize("not a number")


@pytest.mark.parametrize(
    ("e164", "expected"),
    [
        ("+14155550100", "+1 415-555-0100"),
        ("+442079460958", "+44 20 7946 0958"),
        ("+4915123456789", "+49 1512 3456789"),
        ("+79123456789", "+7 912 345-67-89"),
    ],
)
def test_format_international(e164: str, expected: str) -> None:
    assert format_international(e164) == expected


def test_format_international_round_trips_through_normalize() -> None:
    assert normalize(format_international("+447911123456")) == "+447911123456"


def test_format_international_rejects_garbage() -> None:
    with pytest.raises(InvalidPhoneNumber):
        format_international("call me")


@pytest.mark.parametrize(
    ("e164", "region"),
    [
        ("+14155550100", "US"),
        ("+16045550123", "CA"),  # shares +1 with the US
        ("+442079460958", "GB"),
        ("+4915123456789", "DE"),
        ("+5511912345678", "BR"),
        ("+80012345678", "001"),  # non-geographic
    ],
)
def test_region_of(e164: str, region: str) -> None:
    assert region_of(e164) == region


def test_region_of_rejects_national_format() -> None:
    with pytest.raises(InvalidPhoneNumber):
        region_of("4155550100")


@pytest.mark.parametrize(
    ("region", "locale", "expected"),
    [
        ("US", "en", "United States"),
        ("us", "en", "United States"),
        ("GB", "en", "United Kingdom"),
        ("DE", "de", "Deutschland"),
        ("BR", "pt_BR", "Brasil"),
        ("BR", "pt-BR", "Brasil"),
        ("RU", "ru", "Россия"),
        ("US", "xx", "United States"),  # unknown language falls back to English
        ("XK", "en", "Kosovo"),  # not in libphonenumber's table
        ("QQ", "en", "QQ"),  # unknown region falls back to its code
    ],
)
def test_country_name(region: str, locale: str, expected: str) -> None:
    assert country_name(region, locale) == expected


def test_country_name_default_locale_is_english() -> None:
    assert country_name(region_of(normalize("+33 6 12 34 56 78"))) == "France"
