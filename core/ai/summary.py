"""Short summaries of an SMS for the offline analysis: who, what, the action asked and the numbers, never an echo.

Known kinds of SMS (phishing, codes, deliveries, appointments, promotions) get a sentence built from what was found
in them, in the reader's language; anything else is compressed: greetings, courtesies, lead-ins and articles go,
the remaining sentences are joined and counted. Codes and full phone numbers never reach a summary.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from core.ai.phishing import BRANDS, Verdict
from core.platform.i18n import catalog
from core.providers.ai import SUMMARY_MAX_CHARS, Intent, one_line

Lang = Literal["en", "es"]

# A summary well under the 160 allowed reads at a glance in the chat.
TARGET_CHARS = 110
# Only this much of each sentence, and this many sentences, are read: a summary shows less, and the patterns
# must not cost more than a few milliseconds on a 2,000-character wall of one symbol.
SENTENCE_CHARS = 300
SENTENCES_READ = 8

_SPANISH_HINTS = re.compile(
    r"\b(el|la|los|las|que|de|del|por|para|con|una?|tu|su|est[aá]|es|hola|gracias|c[oó]digo|usted|no|s[ií]|"
    r"mi|pero|como|cuenta|hoy|ma[nñ]ana)\b|[¿¡ñáéíóú]",
    re.IGNORECASE,
)
_ENGLISH_HINTS = re.compile(
    r"\b(the|is|are|you|your|to|and|of|for|with|this|that|it|hi|thanks|code|please|will|can|my)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")
_COURTESY = re.compile(
    r"^\W*(thanks( a lot| so much)?|thank you( so much)?|thx|ty|cheers|see you( there| soon| then| later)?|"
    r"miss you( guys| all)?|love you|take care|bye|xx+|gracias|muchas gracias|saludos|un saludo|nos vemos|"
    r"besos|un abrazo|disculpe las molestias|hasta luego)\W*$",
    re.IGNORECASE,
)
_SALUTATION = re.compile(
    r"^\W*(hi|hello|hey|hiya|dear|good (morning|afternoon|evening)|hola|buenas( tardes| noches)?|buenos d[ií]as|"
    r"querid[oa]s?|estimad[oa]s?)\b[^,!:.]{0,25}[,!:.]\s*",
    re.IGNORECASE,
)
_LEAD_IN = re.compile(
    r"^((i )?(just )?(wanted|want) to (let you know|tell you|say)( that)?|this is a reminder( that)?|"
    r"please note( that)?|fyi|just a (quick )?reminder( that)?|quick reminder( that)?|"
    r"te escribo para (decirte|avisarte)( de)?( que)?|quer[ií]a (decirte|avisarte)( de)?( que)?|"
    r"te recuerdo que|solo (quer[ií]a|era para) (decirte|avisarte)( que)?)[\s:,]*",
    re.IGNORECASE,
)
_FILLERS = re.compile(r"\b(please|just|really|actually|basically|kindly|por favor|la verdad)\b,?\s*", re.IGNORECASE)
_ARTICLES: dict[Lang, re.Pattern[str]] = {
    "en": re.compile(r"\b(the|an?)\s+", re.IGNORECASE),
    "es": re.compile(r"\b(el|la|los|las|unos?|unas?)\s+(?!\d)", re.IGNORECASE),
}
_SENDER = re.compile(r"^\s*([A-Z][\w&.'-]*(?: (?:de |del |of )?[A-Z][\w&.'-]*){0,3}):\s")
_NOT_A_SENDER = re.compile(
    r"^(reminder|recordatorio|notice|aviso|urgent|urgente|important|importante|alert|alerta|delivered|entregado|"
    r"final notice|[uú]ltimo aviso|flash sale|sale|rebajas|hi|hola|note|nota|fyi|update|job offer|"
    r"oferta de empleo|rebajas de verano)$",
    re.IGNORECASE,
)
_INTRODUCTION = re.compile(
    r"\b(?:this is|it'?s|soy)\s+([A-Z][\w'-]+(?:\s+(?:from|de|el|la)\s+(?:[A-Z][\w'&-]*|the \w+|\w+)"
    r"(?:\s+[A-Z][\w'&-]*)*)?)"
)
_DOCTOR = re.compile(r"\b((?:Dr|Dra|Doctor|Doctora)\.?\s+[A-Z][\w-]+)")
_DAY = re.compile(
    r"\b(today|tonight|tomorrow|this weekend|(?:mon|tues|wednes|thurs|fri|satur|sun)day|hoy|esta noche|"
    r"ma[nñ]ana|este finde|(?:el )?(?:lunes|martes|mi[eé]rcoles|jueves|viernes|s[aá]bado|domingo)|"
    r"\d{1,2}/\d{1,2}(?:/\d{2,4})?|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d{1,2}|"
    r"\d{1,2} de (?:enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre))\b",
    re.IGNORECASE,
)
_TIME = re.compile(
    r"(?:\b(?:at|by|a las|sobre las)\s+)?\b\d{1,2}(?::\d{2})?\s?(?:am|pm|a\.m\.|p\.m\.|h)\b|"
    r"(?:\b(?:at|by|a las|sobre las)\s+)?\b\d{1,2}:\d{2}\b",
    re.IGNORECASE,
)
_AMOUNT = re.compile(r"[$€£]\s?\d[\d.,]*\d|[$€£]\s?\d|\b\d[\d.,]*\s?(?:€|euros?\b|usd\b|mxn\b)", re.IGNORECASE)
_OFFER = re.compile(r"\b\d{1,2}\s?%(?:\s?(?:off|de descuento|dto))?", re.IGNORECASE)
_UNTIL = re.compile(
    r"\b(today only|only today|this weekend|solo hoy|este finde|(?:until|till|ends|hasta(?: el)?) "
    r"(?:tomorrow|tonight|midnight|sunday|monday|friday|saturday|ma[nñ]ana|domingo|lunes|viernes|s[aá]bado|"
    r"\d{1,2}/\d{1,2}|\d{1,2} de \w+))\b",
    re.IGNORECASE,
)
_CONFIRM = re.compile(r"\b(confirm|confirmar|responda s[ií]|reply (yes|y|c)\b)", re.IGNORECASE)
_STATUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("delayed", re.compile(r"\b(delay|delayed|retras|retraso)\w*", re.IGNORECASE)),
    ("delivered", re.compile(r"\b(was delivered|has been delivered|delivered:|ha sido entregad|entregado)\w*",
                             re.IGNORECASE)),
    ("pickup", re.compile(r"\b(ready for pick.?up|pick.?up point|listo para recoger|para recoger)", re.IGNORECASE)),
    ("on_way", re.compile(r"\b(on (its|the) way|out for delivery|shipped|dispatched|en camino|enviado)",
                          re.IGNORECASE)),
    ("scheduled", re.compile(r"\b(scheduled|will arrive|arrives|se entregar[aá]|llegar[aá])", re.IGNORECASE)),
)
# Which actions a phishing summary names, from the signs found; the first three found are shown.
_ACTIONS: tuple[tuple[str, Callable[[Verdict], bool]], ...] = (
    ("relative", lambda v: "new_number" in v.signs or "lost_phone" in v.signs),
    ("code", lambda v: v.code_request),
    ("pay", lambda v: "payment" in v.signs),
    ("money", lambda v: "money_request" in v.signs and "payment" not in v.signs),
    ("data", lambda v: "data_request" in v.signs),
    ("login", lambda v: "verify" in v.signs),
    ("claim", lambda v: "prize" in v.signs or "refund" in v.signs),
    ("job", lambda v: "job" in v.signs),
    ("offer", lambda v: "scam_offer" in v.signs),
    ("call", lambda v: "callback" in v.signs),
    ("threat", lambda v: "threat" in v.signs),
    ("alert", lambda v: "unusual" in v.signs),
    ("chat", lambda v: "chat_app" in v.signs),
)


def guess_language(text: str) -> Lang:
    spanish = len(_SPANISH_HINTS.findall(text))
    return "es" if spanish > len(_ENGLISH_HINTS.findall(text)) else "en"


def _text(lang: Lang, key: str, **values: str) -> str:
    return catalog(lang)[key].format(**values)


def _join(lang: Lang, parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + _text(lang, "ai_rules_and") + parts[-1]


def sign_list(lang: Lang, verdict: Verdict) -> str:
    """"a fake or unknown link and threats and hurry": the groups of signs a warning names (two at most)."""
    return _join(lang, [_text(lang, f"ai_rules_sign_{group}") for group in verdict.groups[:2]])


def warning(lang: Lang, verdict: Verdict) -> str:
    if verdict.code_request:  # the most specific advice there is
        return _text(lang, "ai_rules_warn_code")
    return _text(lang, "ai_rules_warn_phishing", signs=sign_list(lang, verdict))


def summarize(text: str, lang: Lang, intent: Intent, verdict: Verdict, mask: Callable[[str], str]) -> str:
    """One line in `lang` about `text`; `mask` hides codes and phone numbers in what is quoted from it."""
    if not text.strip():
        return _text(lang, "ai_rules_sum_empty")
    summary = _by_intent(text, lang, intent, verdict, mask)
    return one_line(summary, SUMMARY_MAX_CHARS)


def _by_intent(text: str, lang: Lang, intent: Intent, verdict: Verdict, mask: Callable[[str], str]) -> str:
    if intent == "spam_phishing":
        return _phishing(text, lang, verdict)
    if intent == "opt_out":
        return _text(lang, "ai_rules_sum_opt_out")
    who = verdict.brand or _sender(text)
    if intent == "verification_code":
        return _text(lang, "ai_rules_sum_code", source=_source(lang, "from", who))
    if intent == "delivery_notice":
        status = next((name for name, pattern in _STATUSES if pattern.search(text)), "update")
        return _text(lang, "ai_rules_sum_delivery", source=_source(lang, "from", who),
                     status=_text(lang, f"ai_rules_status_{status}"), when=_when(text, ", "))
    doctor = _DOCTOR.search(text)
    if (intent == "appointment" and not (who or doctor)) or (intent == "marketing" and not (who or _OFFER.search(text))):
        return compress(mask(text), lang)  # "Appointment tomorrow." would say less than the SMS
    if intent == "appointment":
        source = _source(lang, "with", doctor.group(1)) if doctor else _source(lang, "from", who)
        confirm = _text(lang, "ai_rules_sum_confirm") if _CONFIRM.search(text) else ""
        return _text(lang, "ai_rules_sum_appointment", source=source, when=_when(text, " "), confirm=confirm)
    if intent == "marketing":
        offer = _OFFER.search(text)
        until = _UNTIL.search(text)
        return _text(lang, "ai_rules_sum_marketing", source=_source(lang, "from", who),
                     offer=f": {offer.group(0)}" if offer else "", when=f" {until.group(0)}" if until else "")
    return compress(mask(text), lang, question=intent == "question")


def _phishing(text: str, lang: Lang, verdict: Verdict) -> str:
    amount_match = _AMOUNT.search(text)
    amount = f" {amount_match.group(0).strip()}" if amount_match else ""
    actions = []
    for name, applies in _ACTIONS:
        if applies(verdict):
            actions.append(_text(lang, f"ai_rules_act_{name}", amount=amount))
            amount = ""  # an amount is named once, with the first action it belongs to
    actions = actions[:2]
    strangers = [host for host in verdict.hosts if host.registered not in _brand_domains(verdict)]
    if strangers:
        # Defanged ("bit[.]ly"), so that the chat does not turn the scam's host into a link to tap.
        actions.append(_text(lang, "ai_rules_act_link", host=strangers[0].host.replace(".", "[.]")))
    if not actions:
        actions.append(_text(lang, "ai_rules_act_threat"))
    posing = _text(lang, "ai_rules_sum_posing", brand=verdict.brand) if verdict.brand else ""
    return _text(lang, "ai_rules_sum_phishing", posing=posing, actions=_join(lang, actions))


def _brand_domains(verdict: Verdict) -> frozenset[str]:
    return next((brand.official for brand in BRANDS if brand.name == verdict.brand), frozenset())


def _sender(text: str) -> str | None:
    """"Renfe" in "Renfe: Su tren…", "Dave from Dave's Plumbing" in "this is Dave from…"; None when unsaid."""
    match = _SENDER.match(text)
    if match and not _NOT_A_SENDER.match(match.group(1)):
        return match.group(1)
    introduced = _INTRODUCTION.search(text)
    return introduced.group(1) if introduced else None


def _source(lang: Lang, kind: str, who: str | None) -> str:
    return _text(lang, f"ai_rules_sum_{kind}", who=who) if who else ""


def _when(text: str, lead: str) -> str:
    """", tomorrow 10:30 AM": the first day and the first time the SMS names, as it names them."""
    parts = [match.group(0).strip() for match in (_DAY.search(text), _TIME.search(text)) if match]
    return lead + " ".join(parts) if parts else ""


def compress(text: str, lang: Lang, *, question: bool = False) -> str:
    """The sentences that carry content, shortened headline-style and joined; what does not fit is counted."""
    source_lang = guess_language(text)
    who = _sender(text)
    body = _SENDER.sub("", text, count=1) if _SENDER.match(text) and who else text
    sentences = [part.strip() for part in _SENTENCE_END.split(body.strip()) if re.search(r"\w", part)]
    if not sentences:
        return one_line(text, TARGET_CHARS)
    kept = [
        _shorten(sentence, source_lang) for sentence in (part[:SENTENCE_CHARS] for part in sentences[:SENTENCES_READ])
        if not _COURTESY.match(sentence[:60]) and not _INTRODUCTION_ONLY.match(_SALUTATION.sub("", sentence))
    ]
    kept = [sentence for sentence in kept if sentence] or [_shorten(sentences[0], source_lang) or sentences[0]]
    shown: list[str] = []
    for sentence in kept:
        if shown and len(" · ".join([*shown, sentence])) > TARGET_CHARS:
            break
        shown.append(sentence)
    summary = " · ".join(shown)
    summary = summary[:1].upper() + summary[1:]
    left = len(kept) - len(shown) + max(0, len(sentences) - SENTENCES_READ)
    if left:
        summary = one_line(summary, TARGET_CHARS) + " " + _text(lang, "ai_rules_sum_more", count=str(left))
    if who:
        return _text(lang, "ai_rules_sum_who_asks" if question else "ai_rules_sum_who_says", who=who, text=summary)
    if question:
        return _text(lang, "ai_rules_sum_asks", text=summary)
    if len(sentences) > 1 and _is_prefix_copy(summary, text):
        return _text(lang, "ai_rules_sum_says", text=summary)
    return summary


_INTRODUCTION_ONLY = re.compile(_INTRODUCTION.pattern + r"\W*$")
_LINK = re.compile(r"(?:https?://\S+|\b[\w-]+(?:\.[\w-]+)+/\S*)")
_COPULA = re.compile(
    r"\b(?:is|are|was|were|has been|have been)\s+(?=\w+ed\b|ready\b|due\b|available\b|on (?:its|the) way\b)",
    re.IGNORECASE,
)
_OWNER = re.compile(r"^(your|tu|su|sus|tus)\s+", re.IGNORECASE)


def _shorten(sentence: str, lang: Lang) -> str:
    shorter = _SALUTATION.sub("", sentence)
    shorter = _LEAD_IN.sub("", shorter)
    unlinked = _LINK.sub("", shorter)
    if unlinked != shorter:
        # "Track it: https://…" says nothing once the link is gone; "Sign up at <link> for…" keeps its point.
        unlinked = re.sub(r"\s+(at|on|in|here|en|aqu[ií])\b\s*(?=[-–,;:]|$)", " ", unlinked).strip(" :-–")
        if len(unlinked.split()) <= 3:
            return ""
    shorter = unlinked
    shorter = _OWNER.sub("", shorter)
    shorter = _FILLERS.sub("", shorter)
    shorter = _ARTICLES[lang].sub("", shorter)
    if lang == "en":
        shorter = _COPULA.sub("", shorter)
    shorter = re.sub(r"\s+([,;:!?])", r"\1", re.sub(r"\s{2,}", " ", shorter)).strip(" ,;:-")
    shorter = re.sub(r"([!?])\1+", r"\1", shorter)
    if shorter.endswith(".") and not shorter.endswith(".."):
        shorter = shorter[:-1]
    return shorter


def _is_prefix_copy(summary: str, text: str) -> bool:
    """True when the summary, read without punctuation and case, is only the start of the text again."""
    def letters(value: str) -> str:
        return re.sub(r"\W+", "", value.rstrip("…")).casefold()

    return letters(text).startswith(letters(summary))
