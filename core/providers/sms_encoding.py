"""SMS encoding and segment counting (GSM 03.38 / 3GPP TS 23.038), so users see what a message will cost."""

from dataclasses import dataclass
from typing import Final, Literal

# GSM 03.38 basic character set. ESC (0x1B) is deliberately absent: it is the escape to the
# extension table, not a character a sender can put in a message.
_GSM7_BASIC: Final[frozenset[str]] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension-table characters are sent as ESC + char, so each costs two septets.
_GSM7_EXTENSION: Final[frozenset[str]] = frozenset("\f^{}\\[~]|€")

_GSM7_SINGLE: Final = 160
_GSM7_MULTI: Final = 153  # 7 septets per segment go to the user data header
_UCS2_SINGLE: Final = 70
_UCS2_MULTI: Final = 67


@dataclass(frozen=True)
class SmsParts:
    """How a body would be sent.

    ``characters`` counts in the unit the limits are expressed in: septets for GSM-7 (extension
    characters count 2) and UTF-16 code units for UCS-2 (characters outside the BMP count 2). That is
    the number to show next to "160" or "70" in a counter.
    """

    encoding: Literal["GSM-7", "UCS-2"]
    segments: int
    characters: int


def _unit_costs(body: str) -> tuple[Literal["GSM-7", "UCS-2"], list[int]]:
    costs: list[int] = []
    for ch in body:
        if ch in _GSM7_BASIC:
            costs.append(1)
        elif ch in _GSM7_EXTENSION:
            costs.append(2)
        else:
            # One character outside GSM-7 forces the whole message to UTF-16.
            return "UCS-2", [2 if ord(c) > 0xFFFF else 1 for c in body]
    return "GSM-7", costs


def _count_segments(costs: list[int], per_segment: int) -> int:
    # Walking character by character (instead of dividing) keeps an escape sequence or a surrogate
    # pair whole: if it does not fit in the current segment, it starts the next one, as handsets do.
    segments = 1
    used = 0
    for cost in costs:
        if used + cost > per_segment:
            segments += 1
            used = 0
        used += cost
    return segments


def sms_parts(body: str) -> SmsParts:
    """Encoding, segment count and length (in encoding units) of ``body``; an empty body is one segment."""
    if _GSM7_BASIC.issuperset(body):
        # The usual text, every character one septet: counted in C, where the loop below takes a few
        # microseconds per SMS on the inbound hot path. Segments then hold exactly 153 septets each.
        total = len(body)
        segments = 1 if total <= _GSM7_SINGLE else -(-total // _GSM7_MULTI)
        return SmsParts(encoding="GSM-7", segments=segments, characters=total)
    encoding, costs = _unit_costs(body)
    total = sum(costs)
    single, multi = (_GSM7_SINGLE, _GSM7_MULTI) if encoding == "GSM-7" else (_UCS2_SINGLE, _UCS2_MULTI)
    segments = 1 if total <= single else _count_segments(costs, multi)
    return SmsParts(encoding=encoding, segments=segments, characters=total)
