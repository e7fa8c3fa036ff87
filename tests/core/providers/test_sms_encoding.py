"""Tests for SMS encoding detection and segment counting (core.providers.sms_encoding)."""

import dataclasses

import pytest

from core.providers.sms_encoding import SmsParts, sms_parts

GSM_BASIC_SAMPLE = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡AZÄÖÑÜ§¿azäöñüà"


def test_empty_body_is_one_gsm_segment() -> None:
    assert sms_parts("") == SmsParts(encoding="GSM-7", segments=1, characters=0)


def test_plain_ascii() -> None:
    assert sms_parts("Your code is 123456") == SmsParts("GSM-7", 1, 19)


def test_whole_basic_charset_is_gsm7() -> None:
    parts = sms_parts(GSM_BASIC_SAMPLE)
    assert parts.encoding == "GSM-7"
    assert parts.characters == len(GSM_BASIC_SAMPLE)


@pytest.mark.parametrize("char", list("^{}\\[~]|€\f"))
def test_extension_characters_cost_two_septets(char: str) -> None:
    assert sms_parts(char) == SmsParts("GSM-7", 1, 2)
    assert sms_parts("a" + char + "a") == SmsParts("GSM-7", 1, 4)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (159, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_segment_boundaries(length: int, segments: int) -> None:
    assert sms_parts("a" * length) == SmsParts("GSM-7", segments, length)


def test_extension_characters_count_towards_the_160_limit() -> None:
    assert sms_parts("€" * 80) == SmsParts("GSM-7", 1, 160)
    assert sms_parts("€" * 80 + "a") == SmsParts("GSM-7", 2, 161)
    assert sms_parts("a" * 159 + "€") == SmsParts("GSM-7", 2, 161)


def test_escape_sequence_is_never_split_across_segments() -> None:
    # 306 septets would fit two segments of 153, but the euro sign cannot straddle the boundary:
    # segment 1 holds 152 letters, segment 2 the euro sign and 151 letters, segment 3 the last letter.
    body = "a" * 152 + "€" + "a" * 152
    assert sms_parts(body) == SmsParts("GSM-7", 3, 306)


def test_escape_sequence_that_fits_exactly_stays_in_segment() -> None:
    body = "a" * 151 + "€" + "a" * 153  # 153 + 153 septets
    assert sms_parts(body) == SmsParts("GSM-7", 2, 306)


@pytest.mark.parametrize("char", ["ç", "ş", "ı", "Ж", "中", "é\u0301", "\x1b", "`", "’", "“"])
def test_characters_outside_gsm7_force_ucs2(char: str) -> None:
    assert sms_parts("Hello " + char).encoding == "UCS-2"


def test_cedilla_capital_is_gsm_but_lowercase_is_not() -> None:
    assert sms_parts("Ç").encoding == "GSM-7"
    assert sms_parts("ç").encoding == "UCS-2"


def test_one_non_gsm_character_switches_the_whole_message() -> None:
    body = "a" * 100 + "ş"
    assert sms_parts(body) == SmsParts("UCS-2", 2, 101)


def test_extension_characters_count_once_in_ucs2() -> None:
    assert sms_parts("€ş") == SmsParts("UCS-2", 1, 2)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (69, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_segment_boundaries(length: int, segments: int) -> None:
    assert sms_parts("Ж" * length) == SmsParts("UCS-2", segments, length)


def test_emoji_counts_two_code_units() -> None:
    assert sms_parts("😀") == SmsParts("UCS-2", 1, 2)
    assert sms_parts("👍🏽") == SmsParts("UCS-2", 1, 4)  # emoji + skin-tone modifier


def test_emoji_fill_a_single_segment_exactly() -> None:
    assert sms_parts("😀" * 35) == SmsParts("UCS-2", 1, 70)
    # 36 emoji: 33 fit in 66 of the 67 units of segment 1 (a 34th would split a surrogate pair).
    assert sms_parts("😀" * 36) == SmsParts("UCS-2", 2, 72)
    assert sms_parts("😀" * 67) == SmsParts("UCS-2", 3, 134)


def test_surrogate_pair_is_never_split_across_segments() -> None:
    # 134 units would fit two segments of 67, but the emoji sits on the boundary and moves whole.
    body = "a" * 66 + "😀" + "a" * 66
    assert sms_parts(body) == SmsParts("UCS-2", 3, 134)


def test_surrogate_pair_that_fits_exactly_stays_in_segment() -> None:
    body = "a" * 65 + "😀" + "a" * 67  # 67 + 67 units
    assert sms_parts(body) == SmsParts("UCS-2", 2, 134)


def test_bmp_only_text_at_boundary() -> None:
    assert sms_parts("Ж" * 69 + "😀") == SmsParts("UCS-2", 2, 71)


def test_realistic_messages() -> None:
    assert sms_parts("Your CumApp code is 482913. It expires in 10 minutes.") == SmsParts("GSM-7", 1, 53)
    assert sms_parts("Ваш код: 4821") == SmsParts("UCS-2", 1, 13)
    assert sms_parts("您的验证码是837261") == SmsParts("UCS-2", 1, 12)


def test_result_is_frozen() -> None:
    parts = sms_parts("hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parts.segments = 3  # type: ignore[misc]
