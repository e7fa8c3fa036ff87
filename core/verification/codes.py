"""Verification-code extraction from incoming SMS text, and masking of codes and phone numbers for AI calls.

``extract_code`` trusts, in order: the code the number provider already parsed (when it looks like a
code), a per-service pattern for the service the number was rented for, a WebOTP origin-bound line
(``@example.com #123456``), and finally a scoring pass over every code-shaped token. The scoring pass
first drops tokens that only look like codes -- phone numbers, dates, times, amounts, durations, URLs,
masked card numbers, order references -- and then prefers 4-8 digit tokens that sit next to a code
keyword in any of the languages services send SMS in.

Codes are returned the way a user types them: group separators are dropped (WhatsApp ``123-456`` gives
``123456``) and fixed letter prefixes that the form already shows are removed (Google ``G-123456``
gives ``123456``). Non-ASCII digits (Arabic-Indic, Persian, Devanagari, Bengali, full-width) become ASCII.

Speed matters (this runs on every inbound SMS), so the regexes are shaped for CPython's engine: the
big ones start with a digit or a literal so the engine can skip ahead instead of trying every branch
at every position, and keywords are matched on lower-cased text as plain literals.
"""

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import phonenumbers

# --- text preparation ---------------------------------------------------------------------------------

_DIGIT_BASES: Final = (0x0660, 0x06F0, 0x0966, 0x09E6, 0xFF10)
# A one-to-one character mapping keeps every offset unchanged, so spans found in the translated text
# apply to the original one (mask_codes_and_numbers relies on this).
_TO_ASCII_DIGITS: Final = str.maketrans({chr(base + i): str(i) for base in _DIGIT_BASES for i in range(10)})

_FOREIGN_DIGIT: Final = re.compile("[" + "".join(f"{chr(b)}-{chr(b + 9)}" for b in _DIGIT_BASES) + "]")
_HAS_DIGIT: Final = re.compile(r"\d")


def _ascii_digits(text: str) -> str:
    # translate() is slow on non-ASCII text, and most texts have no foreign digits at all.
    if text.isascii() or not _FOREIGN_DIGIT.search(text):
        return text
    return text.translate(_TO_ASCII_DIGITS)


# --- spans that must never be taken for a code ----------------------------------------------------------

_DURATION_UNITS = (
    r"minutes?|mins?\.?|hours?|hrs?\.?|seconds?|secs?\.?|days?|weeks?"
    r"|minutos?|horas?|segundos?|d[ií]as?|minuten|minute|stunden?|sekunden?|tagen?"
    r"|minuti|ore|secondi|giorni|heures?|secondes?|jours?"
    r"|минут[аы]?|мин\.?|час(?:а|ов)?|секунд[аы]?|дн(?:я|ей)"
    r"|dakika|dk\.?|saat|saniye|gün|menit|jam|detik|hari|phút|giây"
    r"|分钟|分鐘|分間|分|小时|小時|時間|秒|天|日間"
    r"|دقائق|دقيقة|دقيقه|ساعة|ساعات|ثانية|นาที|분|시간|초|मिनट"
)
_CURRENCY_SYMBOLS = "$€£¥₹₽₺₩₫฿₦₱円元"
_CURRENCY_CODES = (
    "USD|EUR|GBP|INR|RUB|TRY|IDR|BRL|MXN|CNY|RMB|JPY|AED|SAR|CHF|CAD|AUD|NGN|KES|PHP|VND|THB|MYR|ZAR"
    "|EGP|PLN|UAH|KZT|TL"
)

# Only numbers that could become a candidate (a run of 3+ digits) need a rule: "10 minutes", "12:30",
# "9 PM", "5€" or "May 1" can never be picked, so they are left alone. Month-name dates and amounts
# with the currency first are recognised from the words before a candidate (_context_penalty).
#
# Every branch continues after one shared leading digit that starts a run of digits; the lookbehinds
# look two characters back because the first of those two is the character before that digit. With
# the digit hoisted out, the engine jumps from digit to digit instead of trying ~20 branches at every
# position, and the shared check stops it at the first digit of each run. Possessive quantifiers
# (*+) spare it backtracking into digit runs that cannot match differently.
_NUMBER_NOT_A_CODE: Final = re.compile(
    r"\d(?<!\d\d)(?:"
    + "|".join(
        (
            # phones: 415-555-0100, 1-800-555-0100, 0800 555 0199
            r"(?<![\d-]\d)\d{2}[\s.-]\d{3}[\s.-]\d{4}(?!\d)",
            r"(?<![\d-]\d)(?<=1)[\s.-]\d{3}[\s.-]\d{3}[\s.-]\d{4}(?!\d)",
            r"(?<![\d-]\d)(?<=0)\d{1,3}[\s-]\d{3,4}[\s-]\d{3,4}(?!\d)",
            # dates: 2024-05-01, 05/01/2024, 1.5.2024, 2024年5月1日 (more below)
            r"(?<!\d\d)\d{3}[-/.]\d{1,2}[-/.]\d{1,2}(?!\d)",
            r"(?<!\d\d)\d?[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})(?!\d)",
            r"(?<!\d\d)\d{1,3}\s*年\s*\d{1,2}\s*月(?:\s*\d{1,2}\s*[日号])?",
            # three or more dash-joined numbers are ids (Amazon orders: 402-1234567-1234567)
            r"(?<![\d-]\d)\d*(?:-\d+){2,}(?![\d-])",
            # amounts written with the currency after: 100 USD, 1 000 €, 500 руб
            rf"(?<![\d.,]\d)[\d.,]{{2,}}+\s?(?:[{_CURRENCY_SYMBOLS}]|(?:{_CURRENCY_CODES})\b"
            r"|(?i:руб(?:лей|ля|\.)?|р\.|dollars?|euros?|reais|pesos?|rupees?|lira|yuan))",
            r"(?<![\d.,]\d)\d{0,2}(?:[\s\u00a0\u202f]\d{3})+(?:[.,]\d+)?\s?[€₽]",
            r"(?<![\d.,]\d)\d{2,}+(?:[.,]\d+)?\s?%",
            # numbers with separators are quantities or versions (1,000 / 12.50), never typed codes
            r"(?<![\d.,]\d)\d*(?:[.,]\d+)+(?!\d)",
            # durations: "valid for 120 minutes", 180分钟, 1440min
            rf"(?<![A-Za-z0-9.,]\d)\d{{2,}}+(?i:\s?(?:{_DURATION_UNITS})(?![a-z]))",
            r"(?<![A-Za-z0-9.,]\d)\d{2,}+[hmsdHMSD](?![A-Za-z0-9])",
        )
    )
    + ")"
)
# "+1 415 555 0100", "(415) 555-0100": both start with a literal, which the engine also skips to.
_PUNCTUATED_PHONE: Final = re.compile(
    r"\+\d(?:[\s.()-]{0,2}\d){6,14}(?!\d)|\((?<!\d\()\d{2,4}\)\s*\d{3,4}[\s.-]?\d{3,4}(?!\d)"
)
# IBANs (DE89 3704 0044 ...), which German and Spanish bank SMS quote next to the TAN. Starting with
# a bare character class (the lookbehind comes after it) lets the engine skip to capital letters.
_IBAN: Final = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d\d(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)
_URL: Final = re.compile(
    r"https?://\S+|www\.\S+|(?<![\w.-])[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}/\S*"
)
# The lookbehind makes attempts start only at word starts, which keeps long words linear.
_EMAIL: Final = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")

# --- code keywords in the languages services send SMS in ---------------------------------------------------

_KEYWORD_WORDS: Final = (
    "otp", "pin", "tan", "mtan", "smstan", "pushtan", "2fa", "mfa",
    "code", "codigo", "código", "codice", "kod", "код", "пароль",
    "passcode", "password", "passwort", "kennwort", "senha", "clave", "contraseña", "contrasena",
    "mot de passe", "şifre", "sifre", "parola", "hasło", "haslo",
    "verif", "vérif", "bestätigung", "bestatigung", "подтвержд", "confirm", "login", "log in", "log-in",
    "sign in", "signin", "sign-in", "authenticat", "autentica", "token",
    "验证码", "驗證碼", "校验码", "校驗碼", "动态码", "动态密码", "确认码", "確認碼", "认证码", "密码", "口令",
    "認証", "確認コード", "コード", "인증", "코드", "رمز", "كود", "التحقق", "تحقق", "کد", "mã", "รหัส", "कोड", "ओटीपी",
)  # fmt: skip
# Short Latin keywords hide inside words ("shipping", "Pakistan"), so they must stand alone.
_SHORT_KEYWORDS: Final = frozenset({"otp", "pin", "tan", "2fa", "mfa"})


_Trie = dict[str, "_Trie"]


def _literal_trie(words: tuple[str, ...]) -> str:
    """A regex matching any of ``words``, nested by shared prefix so each position tries few branches."""
    trie: _Trie = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: _Trie) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


# Case-sensitive literals on lower-cased text let the engine skip to positions where a keyword can
# start (IGNORECASE would disable that); the case-insensitive twin is for the rare text whose length
# lower() changes (Turkish İ), where offsets in the lowered copy would be wrong.
_KEYWORD_LOWER: Final = re.compile(_literal_trie(_KEYWORD_WORDS))
_KEYWORD_ANYCASE: Final = re.compile(_KEYWORD_LOWER.pattern, re.IGNORECASE)

# --- candidate tokens ---------------------------------------------------------------------------------

_CANDIDATE: Final = re.compile(
    r"""
    (?<![A-Za-z0-9])
    (?:
        (?P<prefix>[A-Z]{1,3})-(?P<prefixed>\d{4,8})          # G-123456, FB-12345: the form shows the prefix
      | (?P<a3>\d{3})[ \u00a0-](?P<b3>\d{3})                   # 123-456, 123 456
      | (?P<a4>\d{4})[ \u00a0-](?P<b4>\d{4})                   # 1234 5678
      | (?P<digits>\d{3,10})
      | (?P<alnum>(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]{4,10})
    )
    (?![A-Za-z0-9])
    """,
    re.VERBOSE,
)
# Tokens that look alphanumeric but are a masked card (XX1234) or a quantity (2nd, 64GB, 10am).
_ALNUM_NOT_A_CODE: Final = re.compile(
    r"(?i)x+\d+|\d+(?:st|nd|rd|th|am|pm|gb|mb|kb|mp|px|hz|kg|km|cm|mm|ml|x|k|g|p)"
)

# Words just before a number that say what it is (checked on the last words, lower-cased).
_TAIL_TOKEN: Final = re.compile(r"[^\W\d_]+(?:/[^\W\d_]+)?|\d+|[^\w\s]")
_REFERENCE_WORDS: Final = frozenset(
    "order ref reference invoice ticket tracking booking shipment parcel pedido commande bestellung заказ"
    " sipariş pesanan balance saldo total room seat gate customer member account acct a/c card id box suite"
    " apt unit store flight".split()
)
_REFERENCE_FILLERS: Final = frozenset(
    {"no", "number", "nr", "nº", "n°", "is", "was", "of", "#", ":", "：", ".", "-"}
)
_CJK_REFERENCE_SUFFIXES: Final = ("订单", "订单号", "訂單", "訂單號", "单号", "單號")
_CONTACT_WORDS: Final = frozenset({"to", "call", "dial", "text", "txt", "sms", "at", "or"})
_MONTH_WORDS: Final = frozenset(
    "jan january feb february mar march apr april may jun june jul july aug august sep sept september"
    " oct october nov november dec december".split()
)
_ORDINAL_SUFFIXES: Final = frozenset({"st", "nd", "rd", "th"})
_CURRENCY_PREFIXES: Final = frozenset(_CURRENCY_CODES.split("|")) | {"Rp", "Rs"}
# Marketing texts carry codes too, but not ones anybody needs to sign in with.
_PROMO_WORDS: Final = (
    "promo", "coupon", "discount", "voucher", "% off", "cupom", "cupon", "cupón", "descuento", "desconto",
    "rabatt", "gutschein", "скидк", "промо", "优惠",
)  # fmt: skip

_STREET_AFTER: Final = re.compile(
    r"(?i:\s+(?:[nsew]\.?\s+)?(?:[a-z]+\s+)?"
    r"(?:st|street|ave|avenue|rd|road|blvd|dr|drive|ln|lane|way|pkwy|parkway|hwy|highway|ct|court|pl|place)\b)"
)
_SENTENCE_BREAK: Final = re.compile(r"[.!?]\s|[。！？\n]")  # CJK full stops take no space after them
_YEAR: Final = re.compile(r"(?:19|20)\d\d")

# WebOTP / origin-bound codes (a final "@example.com #123456" line) are unambiguous by design.
_WEBOTP: Final = re.compile(
    r"(?m)^[ \t]*@[A-Za-z0-9.-]+\.[A-Za-z]{2,}[ \t]+#([A-Za-z0-9]{3,10})(?:[ \t]+%[A-Za-z0-9.-]+)?[ \t]*$"
)

_PROVIDER_CODE: Final = re.compile(r"[A-Za-z0-9]+(?:[- ][A-Za-z0-9]+)?")
_PROVIDER_PLACEHOLDERS: Final = frozenset({"null", "none", "nil", "undefined", "nan", "empty", "unknown"})

_MIN_SCORE: Final = 2

# --- per-service patterns -------------------------------------------------------------------------------

# Each pattern's groups are concatenated to form the code. Only shapes a service really uses go here;
# anything else falls through to the general pass.
_SERVICE_PATTERNS: Final[dict[str, tuple[re.Pattern[str], ...]]] = {
    "whatsapp": (re.compile(r"(?<![\d-])(\d{3})-(\d{3})(?![\d-])"),),
    "google": (re.compile(r"(?<![A-Za-z0-9])G-(\d{4,8})(?!\d)"),),
    "facebook": (
        re.compile(r"(?<![A-Za-z0-9])FB-(\d{4,8})(?!\d)"),
        re.compile(r"(?<!\d)(\d{5,8})(?!\d)[^\n\d]{0,40}?facebook", re.IGNORECASE),
    ),
    "instagram": (re.compile(r"(?<![\d-])(\d{3})\s(\d{3})(?![\d-])"),),
    "telegram": (re.compile(r"(?i:code|код|código|codice|kod)[^\d\n]{0,30}?(?<!\d)(\d{5,6})(?!\d)"),),
    "microsoft": (
        re.compile(r"(?i)security code\s*(?:is)?\s*:?\s*(\d{4,8})(?!\d)"),
        re.compile(r"(?i)\buse\s+(\d{4,8})\s+as\b"),
    ),
    "apple": (
        re.compile(
            r"(?i)apple(?:\s+id|\s+account)?\s+(?:verification\s+)?code\s*(?:is)?\s*:?\s*(\d{6})(?!\d)"
        ),
    ),
    "amazon": (re.compile(r"(?<!\d)(\d{6})(?!\d)\s+is\s+your\s+amazon", re.IGNORECASE),),
    "uber": (re.compile(r"(?i)uber\s+code\s*:?\s*(\d{4})(?!\d)"),),
    "discord": (re.compile(r"(?i)discord[^\d\n]{0,40}?code[^\d\n]{0,12}?(\d{6})(?!\d)"),),
    "tiktok": (re.compile(r"(?i)\[tiktok\]\s*(\d{4,6})(?!\d)"),),
    "twitter": (
        re.compile(r"(?<!\d)(\d{6,8})(?!\d)\s+is\s+your\s+(?:x|twitter)\b", re.IGNORECASE),
        re.compile(
            r"(?i)\b(?:x|twitter)\s+(?:confirmation|verification|login)\s+code\s+is\s+([a-z0-9]{6,8})\b"
        ),
    ),
    "paypal": (re.compile(r"(?i)paypal\s*:\s*(?:your\s+(?:security\s+)?code\s+is\s+)?(\d{6})(?!\d)"),),
}
_SERVICE_ALIASES: Final[dict[str, str]] = {
    "x": "twitter",
    "gmail": "google",
    "youtube": "google",
    "googlevoice": "google",
    "fb": "facebook",
    "meta": "facebook",
    "messenger": "facebook",
    "ig": "instagram",
    "whatsappbusiness": "whatsapp",
    "wa": "whatsapp",
    "msft": "microsoft",
    "outlook": "microsoft",
    "hotmail": "microsoft",
    "skype": "microsoft",
    "appleid": "apple",
    "icloud": "apple",
    "ubereats": "uber",
}
_SLUG_JUNK: Final = re.compile(r"[^a-z0-9]")


@dataclass(frozen=True, slots=True)
class _Candidate:
    value: str
    start: int
    end: int
    score: int


class _Spans:
    """Half-open spans, merged and sorted once so that each overlap test is a binary search."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(spans):
            if self._ends and start <= self._ends[-1]:
                self._ends[-1] = max(self._ends[-1], end)
            else:
                self._starts.append(start)
                self._ends.append(end)

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect_left(self._starts, end) - 1
        return i >= 0 and self._ends[i] > start


def _excluded_spans(text: str) -> _Spans:
    spans = [m.span() for m in _NUMBER_NOT_A_CODE.finditer(text)]
    spans.extend(m.span() for m in _PUNCTUATED_PHONE.finditer(text))
    spans.extend(m.span() for m in _IBAN.finditer(text))
    # The cheap `in` tests spare most texts the two regexes that cannot skip ahead.
    if "/" in text or "www." in text:
        spans.extend(m.span() for m in _URL.finditer(text))
    if "@" in text:
        spans.extend(m.span() for m in _EMAIL.finditer(text))
    return _Spans(spans)


def _keyword_spans(text: str) -> tuple[list[int], list[int]]:
    """Starts and ends of the code keywords in ``text``; both ascending, as matches never overlap."""
    lowered = text.lower()
    if len(lowered) == len(text):
        matches = _KEYWORD_LOWER.finditer(lowered)
    else:
        matches = _KEYWORD_ANYCASE.finditer(text)
    starts: list[int] = []
    ends: list[int] = []
    for m in matches:
        start, end = m.span()
        if m.group().lower() in _SHORT_KEYWORDS and (
            (start > 0 and text[start - 1].isalpha()) or (end < len(text) and text[end].isalpha())
        ):
            continue
        starts.append(start)
        ends.append(end)
    return starts, ends


def _proximity(text: str, start: int, end: int, keywords: tuple[list[int], list[int]]) -> int:
    # Only the nearest keyword on each side matters: a farther one has a longer gap that contains
    # every sentence break the nearer one's gap does.
    k_starts, k_ends = keywords
    best = 0
    i = bisect_right(k_ends, start) - 1
    if i >= 0:
        gap = start - k_ends[i]
        # "code: 1234", "验证码是123456" -- adjacent, whatever the joining characters are
        if gap <= 3:
            return 6
        best = 5 if gap <= 12 else 4 if gap <= 25 else 2 if gap <= 50 else 1 if gap <= 100 else 0
        # A keyword in another sentence ("... Never share this code.") says less about this number.
        if best and _SENTENCE_BREAK.search(text, k_ends[i], start):
            best = max(best - 2, 0)
    j = bisect_left(k_starts, end)
    if j < len(k_starts):
        gap = k_starts[j] - end
        # "123456 is your verification code"
        score = 5 if gap <= 3 else 4 if gap <= 25 else 2 if gap <= 50 else 0
        if score and gap > 3 and _SENTENCE_BREAK.search(text, end, k_starts[j]):
            score = max(score - 2, 0)
        best = max(best, score)
    return best


def _digit_score(length: int) -> int:
    if length == 6:
        return 3
    if 4 <= length <= 8:
        return 2
    return 0 if length in (3, 9) else -1


def _context_penalty(text: str, start: int) -> int | None:
    """Penalty from the words before a token, or None when they show it is not a code at all."""
    if start == 0:
        return 0
    tail = text[max(0, start - 30) : start]
    last_char = tail.rstrip()[-1:]
    if tail[-1] in "*•" or (last_char and last_char in _CURRENCY_SYMBOLS):
        return None  # ****1234, $ 1500
    tokens = _TAIL_TOKEN.findall(tail)
    if tokens and tokens[-1] == ".":
        tokens.pop()  # "Rs.5000"
    if tokens and tokens[-1] in _CURRENCY_PREFIXES:
        return None
    words = [t.lower() for t in tokens if t[0].isalnum()]
    if words and words[-1] in _ORDINAL_SUFFIXES and len(words) > 1 and words[-2].isdigit():
        words.pop()
    if words:
        last = words[-1]
        before_last = words[-2] if len(words) > 1 else ""
        # "May 2024", "May 1, 2024", "card ending in 1234"
        if last in _MONTH_WORDS or (last.isdigit() and len(last) <= 2 and before_last in _MONTH_WORDS):
            return None
        if last in ("ending", "ends") or (last in ("in", "with") and before_last in ("ending", "ends")):
            return None
    penalty = 0
    while tokens and tokens[-1] in (":", "-"):
        tokens.pop()
    if tokens and tokens[-1].lower() in _CONTACT_WORDS:
        penalty -= 5  # "Reply STOP to 12345", "call 0800 ..."
    meaningful = [t.lower() for t in tokens if t.lower() not in _REFERENCE_FILLERS]
    if meaningful:
        last = meaningful[-1]
        flight_number = len(meaningful) > 1 and meaningful[-2] == "flight" and len(last) <= 2
        if last in _REFERENCE_WORDS or flight_number or last.endswith(_CJK_REFERENCE_SUFFIXES):
            penalty -= 5  # "Order #12345", "Ref: 12345", "flight UA 1234"
    lowered_tail = tail.lower()
    if any(word in lowered_tail for word in _PROMO_WORDS):
        penalty -= 8
    return penalty


def _candidates(text: str, excluded: _Spans) -> list[_Candidate]:
    """Tokens that pass as a code (score of at least _MIN_SCORE), in text order."""
    found: list[_Candidate] = []
    keywords: tuple[list[int], list[int]] | None = None
    for m in _CANDIDATE.finditer(text):
        start, end = m.span()
        alnum = m["alnum"]
        # Alphanumeric codes are one case throughout; mixed case is an app hash or a random id.
        if alnum is not None and (
            not (alnum.isupper() or alnum.islower()) or _ALNUM_NOT_A_CODE.fullmatch(alnum)
        ):
            continue
        if excluded.overlaps(start, end):
            continue
        if keywords is None:
            keywords = _keyword_spans(text)
        proximity = _proximity(text, start, end, keywords)
        if alnum is not None:
            if proximity < 4:
                continue  # letters and digits mean a code only right next to a keyword
            value, score = alnum, 1 + proximity
        else:
            if m["prefixed"] is not None:
                value = m["prefixed"]
            elif m["a3"] is not None:
                value = m["a3"] + m["b3"]
            elif m["a4"] is not None:
                value = m["a4"] + m["b4"]
            else:
                value = m["digits"]
            score = _digit_score(len(value)) + proximity
            if len(value) == 4 and _YEAR.fullmatch(value):
                score -= 2
            if _STREET_AFTER.match(text, end):
                score -= 4
        # Context only ever lowers the score, so the costlier look at it is skipped for losers.
        if score < _MIN_SCORE:
            continue
        penalty = _context_penalty(text, start)
        if penalty is None or score + penalty < _MIN_SCORE:
            continue
        found.append(_Candidate(value, start, end, score + penalty))
    return found


def _service_code(text: str, service: str, excluded: _Spans) -> str | None:
    slug = _SLUG_JUNK.sub("", service.lower())
    patterns = _SERVICE_PATTERNS.get(_SERVICE_ALIASES.get(slug, slug))
    if not patterns:
        return None
    for pattern in patterns:
        for m in pattern.finditer(text):
            last = m.lastindex or 0
            if not last or excluded.overlaps(m.start(1), m.end(last)):
                continue
            return "".join(m.groups())
    return None


def _plausible_provider_code(code: str) -> bool:
    if not _PROVIDER_CODE.fullmatch(code) or code.lower() in _PROVIDER_PLACEHOLDERS:
        return False
    return 3 <= sum(ch.isalnum() for ch in code) <= 10


def _webotp(text: str) -> re.Match[str] | None:
    return _WEBOTP.search(text) if "#" in text and "@" in text else None


def extract_code(text: str, service: str | None = None, provider_code: str | None = None) -> str | None:
    """The verification code in an SMS, as the user must type it, or None when there is none.

    ``service`` is the slug the number was rented for (``"whatsapp"``, ``"google"``...); ``provider_code``
    is the provider's own parse, used as given (surrounding whitespace stripped) when it looks like a code.
    """
    if provider_code is not None:
        code = provider_code.strip()
        if _plausible_provider_code(code):
            return code
    if not text:
        return None
    text = _ascii_digits(text)
    if not _HAS_DIGIT.search(text):
        return None
    webotp = _webotp(text)
    if webotp:
        return webotp.group(1)
    excluded = _excluded_spans(text)
    if service:
        code = _service_code(text, service, excluded)
        if code is not None:
            return code
    best: _Candidate | None = None
    for candidate in _candidates(text, excluded):
        # Ties go to the earlier token: services put the code first and repeat or explain it later.
        if best is None or candidate.score > best.score:
            best = candidate
    return best.value if best else None


# --- masking --------------------------------------------------------------------------------------------

_E164_LIKE: Final = re.compile(r"\+[1-9](?:[\s.()-]?\d){6,14}(?!\d)")


def _phone_spans(text: str) -> list[tuple[int, int]]:
    matcher = phonenumbers.PhoneNumberMatcher(text, "US", leniency=phonenumbers.Leniency.VALID)
    spans = [(m.start, m.end) for m in matcher]
    spans.extend(m.span() for m in _E164_LIKE.finditer(text))
    return spans


def _disjoint(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The earliest (then longest) of each group of overlapping spans, in text order."""
    chosen: list[tuple[int, int]] = []
    for start, end in sorted(spans, key=lambda span: (span[0], -span[1])):
        if not chosen or start >= chosen[-1][1]:
            chosen.append((start, end))
    return chosen


def mask_codes_and_numbers(text: str) -> str:
    """``text`` with phone numbers replaced by ``[PHONE]`` and verification codes by ``[CODE]``.

    Meant for text about to leave for an AI provider, so it errs towards masking: every token that
    would pass as a code is masked (not only the best one), and so is every repeat of a code elsewhere,
    e.g. inside a login link. Where a phone number and a code overlap, the phone number wins.
    """
    if not text:
        return text
    normalized = _ascii_digits(text)
    if not _HAS_DIGIT.search(normalized):
        return text
    phone_spans = _phone_spans(normalized)
    phones = _Spans(phone_spans)

    codes: set[str] = set()
    code_spans: list[tuple[int, int]] = []
    webotp = _webotp(normalized)
    if webotp:
        codes.add(webotp.group(1))
        code_spans.append(webotp.span(1))
    for candidate in _candidates(normalized, _excluded_spans(normalized)):
        codes.add(candidate.value)
        code_spans.append((candidate.start, candidate.end))
    for code in codes:
        code_spans.extend(
            m.span() for m in re.finditer(rf"(?<![A-Za-z0-9]){re.escape(code)}(?![A-Za-z0-9])", normalized)
        )

    labelled = [(start, end, "[PHONE]") for start, end in _disjoint(phone_spans)]
    labelled += [(s, e, "[CODE]") for s, e in _disjoint(code_spans) if not phones.overlaps(s, e)]
    labelled.sort()
    out: list[str] = []
    pos = 0
    for start, end, label in labelled:
        out.append(text[pos:start])
        out.append(label)
        pos = end
    out.append(text[pos:])
    return "".join(out)
