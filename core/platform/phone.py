"""Phone-number parsing, validation and display, built on Google's libphonenumber (``phonenumbers``).

Policy for ``normalize``: a number is accepted when libphonenumber says it is valid for its country and
its type could plausibly receive SMS. Fixed lines, toll-free and VoIP numbers are accepted because in
many countries (the US among them) they can be text-enabled, and libphonenumber often cannot tell a
fixed line from a mobile anyway. Premium-rate, shared-cost, UAN (corporate switchboard), pager and
voicemail numbers are rejected: they never receive verification SMS and entering one is a mistake.
"""

import re
from functools import lru_cache
from typing import Final

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType, ValidationResult


class InvalidPhoneNumber(ValueError):
    """A number that cannot be used; ``reason`` is short and safe to show to the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_PARSE_REASONS: Final[dict[int, str]] = {
    NumberParseException.INVALID_COUNTRY_CODE: "Unknown country code. Start with + and the country code.",
    NumberParseException.NOT_A_NUMBER: "That doesn't look like a phone number.",
    NumberParseException.TOO_SHORT_AFTER_IDD: "The number is too short.",
    NumberParseException.TOO_SHORT_NSN: "The number is too short.",
    NumberParseException.TOO_LONG: "The number is too long.",
}

_POSSIBILITY_REASONS: Final[dict[int, str]] = {
    ValidationResult.INVALID_COUNTRY_CODE: "Unknown country code. Start with + and the country code.",
    ValidationResult.TOO_SHORT: "The number is too short.",
    ValidationResult.TOO_LONG: "The number is too long.",
    ValidationResult.INVALID_LENGTH: "The number has the wrong number of digits for its country.",
    # Dialable only from within the same area, e.g. a US number without its area code.
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "The number is too short; include the area code.",
}

_REJECTED_TYPES: Final[dict[int, str]] = {
    PhoneNumberType.PREMIUM_RATE: "Premium-rate numbers can't be used.",
    PhoneNumberType.SHARED_COST: "Shared-cost numbers can't be used.",
    PhoneNumberType.UAN: "Company switchboard numbers can't be used.",
    PhoneNumberType.PAGER: "Pager numbers can't be used.",
    PhoneNumberType.VOICEMAIL: "Voicemail access numbers can't be used.",
}

# Regions libphonenumber knows but has no display name for.
_EXTRA_COUNTRY_NAMES: Final[dict[str, str]] = {
    "AC": "Ascension Island",
    "TA": "Tristan da Cunha",
    "XK": "Kosovo",
}


def _parse(raw: str, region: str | None) -> phonenumbers.PhoneNumber:
    try:
        return phonenumbers.parse(raw, region)
    except NumberParseException as exc:
        raise InvalidPhoneNumber(
            _PARSE_REASONS.get(exc.error_type, "That doesn't look like a phone number.")
        ) from exc


def normalize(raw: str, default_region: str = "US") -> str:
    """Return ``raw`` in E.164 (``+14155550100``); national formats are read as ``default_region``.

    Raises InvalidPhoneNumber for anything unparsable, impossible, invalid, carrying an extension, or of
    a type that cannot receive SMS (see the module docstring).
    """
    text = raw.strip()
    if not text:
        raise InvalidPhoneNumber("Please enter a phone number.")
    # Much of the world dials 00 for international calls; outside those regions (e.g. from the US,
    # whose prefix is 011) libphonenumber would read it as a national number and reject it.
    if text.startswith("00"):
        text = "+" + text[2:]
    number = _parse(text, default_region.upper())
    if number.extension:
        raise InvalidPhoneNumber("Extensions aren't supported; enter the number without one.")
    possibility = phonenumbers.is_possible_number_with_reason(number)
    if possibility != ValidationResult.IS_POSSIBLE:
        raise InvalidPhoneNumber(_POSSIBILITY_REASONS.get(possibility, "That isn't a possible phone number."))
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber("That number isn't valid for its country.")
    rejected = _REJECTED_TYPES.get(phonenumbers.number_type(number))
    if rejected is not None:
        raise InvalidPhoneNumber(rejected)
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def format_international(e164: str) -> str:
    """Human-readable international form, e.g. ``+1 415-555-0100``; raises InvalidPhoneNumber if unparsable."""
    return phonenumbers.format_number(_parse(e164, None), PhoneNumberFormat.INTERNATIONAL)


def mask_number(e164: str) -> str:
    """``+13125550111`` → ``+1•••0111``: for log lines, which must not hold a person's full number.

    The country code and last four digits are enough for an operator to tell their own numbers apart."""
    digits = "".join(ch for ch in e164 if ch.isdigit())
    try:
        code = str(phonenumbers.parse("+" + digits, None).country_code)
    except NumberParseException:
        code = ""
    return f"+{code}•••{digits[-4:]}" if len(digits) > 6 else "•••"


_E164_IN_TEXT: Final = re.compile(r"\+[1-9][0-9]{6,14}(?![0-9])")


def mask_numbers(text: str) -> str:
    """`text` with every E.164 number in it masked like ``mask_number`` (an alert key, a provider's message)."""
    return _E164_IN_TEXT.sub(lambda match: mask_number(match.group()), text)


def region_of(e164: str) -> str:
    """ISO 3166-1 alpha-2 region of a number (``"US"``).

    Non-geographic numbers (e.g. +800) give ``"001"``; numbers libphonenumber cannot place give ``"ZZ"``.
    """
    return phonenumbers.region_code_for_number(_parse(e164, None)) or "ZZ"


@lru_cache(maxsize=1024)
def country_name(region: str, locale: str = "en") -> str:
    """Display name of ``region`` in ``locale`` (``"pt_BR"`` and ``"pt-BR"`` use ``"pt"``).

    Falls back to English, then to the region code itself, so callers always get something to show.
    """
    # Imported lazily: the geocoding tables take ~0.2 s to load and most processes never need them.
    from phonenumbers.geodata.locale import LOCALE_DATA

    code = region.upper()
    names = LOCALE_DATA.get(code)
    if names is None:
        return _EXTRA_COUNTRY_NAMES.get(code, code)
    lang = locale.replace("-", "_").split("_", 1)[0].lower()
    for candidate in (lang, "en"):
        name = names.get(candidate, "")
        # "*xx" means "same as the name in language xx"; the table never chains these.
        if name.startswith("*"):
            name = names.get(name[1:], "")
        if name:
            return name
    return _EXTRA_COUNTRY_NAMES.get(code, code)
