"""The offline AI engine: keyword rules and VADER sentiment, answering in well under 5 ms when Groq cannot.

Phishing is scored in core/ai/phishing.py and summaries are written in core/ai/summary.py, in the reader's language.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from core.ai import phishing, summary
from core.ai.summary import guess_language
from core.providers.ai import (
    SUMMARY_MAX_CHARS,
    AiResult,
    Analysis,
    ChatTurn,
    Drafts,
    Intent,
    Sentiment,
    TemplateDraft,
    Urgency,
    language_of,
    one_line,
)

log = logging.getLogger(__name__)

Lang = Literal["en", "es"]

# A ten-part SMS is ~1,530 characters; reading further only costs time (the rules grow linearly with length).
RULES_MAX_CHARS = 2_000

# VADER only knows English; these valences (its -4..4 scale) keep Spanish replies from all reading neutral.
_SPANISH_LEXICON: dict[str, float] = {
    "gracias": 1.9,
    "genial": 2.5,
    "excelente": 3.0,
    "perfecto": 2.7,
    "bien": 1.5,
    "bueno": 1.9,
    "buena": 1.9,
    "encanta": 2.8,
    "feliz": 2.4,
    "contento": 2.2,
    "contenta": 2.2,
    "amable": 1.9,
    "maravilloso": 3.0,
    "mal": -2.0,
    "malo": -2.2,
    "mala": -2.2,
    "terrible": -2.9,
    "horrible": -2.9,
    "odio": -3.0,
    "enojado": -2.4,
    "enojada": -2.4,
    "molesto": -2.0,
    "molesta": -2.0,
    "triste": -2.1,
    "problema": -1.5,
    "queja": -1.8,
    "decepcionado": -2.3,
    "decepcionada": -2.3,
    "tarde": -0.8,
    "nunca": -0.6,
    "fraude": -3.0,
    "estafa": -3.0,
    "urgente": -0.7,
    "cancelado": -1.2,
    "lamentablemente": -1.6,
    "desafortunadamente": -1.6,
}

_OPT_OUT_WORDS = frozenset(
    {
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "OPTOUT",
        "OPT-OUT",
        "REVOKE",
        "BAJA",
        "ALTO",
        "PARAR",
        "DETENER",
        "CANCELAR",
        "DESUSCRIBIR",
    }
)
# Words that opt out even with a little text around them ("STOP please"); CANCEL or END alone in a sentence
# usually means something else ("cancel my appointment").
_OPT_OUT_LEADERS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "OPTOUT", "BAJA"})
_OPT_OUT_PHRASES = re.compile(
    r"\b(stop (texting|messaging|sending|contacting)|unsubscribe me|remove me from|take me off|opt me out|"
    r"no more (texts|messages)|dejen? de (escribir|enviar|mandar)|darme de baja|"
    r"no (me )?(escriban|env[ií]en) m[aá]s)\b",
    re.IGNORECASE,
)

_URGENT = re.compile(
    r"\b(urgent(ly)?|immediately|asap|right away|right now|act now|final notice|last chance|"
    r"expires? (today|soon|"
    r"in)|within (24|48) ?h(ours)?|today|tonight|emergency|as soon as possible|urgente|inmediatamente|"
    r"ahora mismo|hoy|esta noche|emergencia|cuanto antes|lo antes posible|[uú]ltimo aviso)\b",
    re.IGNORECASE,
)
_MARKETING = re.compile(
    r"(?<!\d)\d+\s?% (off|de descuento)|\bsale\b|\b(promo|promotion|discount|coupon|deal|offer|limited time|shop now|"
    r"buy now|free shipping|newsletter|black friday|clearance|rebajas|oferta|descuento|promoci[oó]n|cup[oó]n|"
    r"env[ií]o gratis)s?\b",
    re.IGNORECASE,
)
_VERIFICATION_WORDS = re.compile(
    r"\b(verification|verify|one.?time|otp|passcode|log ?in|sign ?in|security code|confirmation code|"
    r"authentication|2fa|c[oó]digo de (verificaci[oó]n|seguridad|acceso)|verificaci[oó]n)\b",
    re.IGNORECASE,
)
_APPOINTMENT = re.compile(
    r"\b(appointment|appt|reschedul\w*|booking|booked|reservation|your visit|scheduled for|see you (at|on)|"
    r"dentist|doctor|clinic|meeting|check.?up|cita|reserva|consulta|turno|agendad[ao]|reprogramar)\b",
    re.IGNORECASE,
)
_DELIVERY = re.compile(
    r"\b(package|parcel|deliver(y|ed|ing)?|shipped|shipment|shipping|tracking|courier|out for delivery|"
    r"your order|order #|dispatched|pick.?up point|paquete|env[ií]o|entrega(do|da)?|pedido|repartidor|"
    r"mensajer[ií]a)\b",
    re.IGNORECASE,
)
_GREETING = re.compile(
    r"^\W*(hi|hello|hey|hiya|yo|good (morning|afternoon|evening)|thanks|thank you|thx|ty|"
    r"hola|buen(os|as) (d[ií]as|tardes|noches)|buenas|gracias|qu[eé] tal|saludos)\b",
    re.IGNORECASE,
)
_QUESTION_END = re.compile(r"\?[^\w]*$")  # "Free tonight? 🙂" still ends with a question
_INSTRUCTION_LEAD = re.compile(
    r"^(please )?((tell|remind|inform|notify|ask) (my |our |the )?"
    r"(customers|clients|patients|people|users|guests|them|everyone|everybody)( that| about| of| to)?|"
    r"let (my |our |the )?(customers|clients|patients|people|users|guests|them|everyone) know( that| about)?|"
    r"(av[ií]sa|recu[eé]rda|informa|dile|dec[ií])(les)? a (mis |los |las )?"
    r"(clientes|pacientes|usuarios|todos)( que| de)?)\s+",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")

_DRAFTS: dict[Lang, dict[str, tuple[str, str, str]]] = {
    "en": {
        "verification_code": (
            "Thanks, got it.",
            "Received, thank you!",
            "I didn't request this code. Please don't send me more.",
        ),
        "question": (
            "Let me check and get back to you shortly.",
            "Good question! I'll have an answer for you later today.",
            "Could you tell me a bit more so I can answer properly?",
        ),
        "appointment": (
            "Confirmed, see you then. Thanks!",
            "Thanks for the reminder. Could we move it to another time?",
            "Sorry, I need to cancel. I'll get in touch to rebook.",
        ),
        "delivery_notice": (
            "Thanks for the update!",
            "Please leave the package at the door. Thank you!",
            "I won't be home today. Could you deliver it another day?",
        ),
        "marketing": ("No thanks.", "Not interested, thank you.", "STOP"),
        "greeting": (
            "Hi! Good to hear from you.",
            "Hello! How are you?",
            "Hey, thanks for the message! What's up?",
        ),
        "opt_out": (
            "Understood, you won't get more messages from me.",
            "Sorry for the trouble. I've removed you from my list.",
            "Got it. Take care!",
        ),
        "spam_phishing": (
            "STOP",
            "Please don't contact me again.",
            "I don't open links from unknown numbers. I'll contact the company directly.",
        ),
        "other": ("Thanks for your message!", "Got it, thanks.", "Could you tell me a bit more?"),
    },
    "es": {
        "verification_code": (
            "Gracias, recibido.",
            "¡Recibido, muchas gracias!",
            "No he pedido este código. Por favor, no me envíes más.",
        ),
        "question": (
            "Déjame revisarlo y te respondo en breve.",
            "¡Buena pregunta! Te respondo hoy mismo.",
            "¿Me das un poco más de detalle para responderte bien?",
        ),
        "appointment": (
            "Confirmado, nos vemos. ¡Gracias!",
            "Gracias por el recordatorio. ¿Podemos cambiarla a otra hora?",
            "Lo siento, tengo que cancelar. Te escribo para reprogramar.",
        ),
        "delivery_notice": (
            "¡Gracias por el aviso!",
            "Por favor, deja el paquete en la puerta. ¡Gracias!",
            "Hoy no estaré en casa. ¿Podéis entregarlo otro día?",
        ),
        "marketing": ("No, gracias.", "No me interesa, gracias.", "BAJA"),
        "greeting": (
            "¡Hola! Qué gusto saber de ti.",
            "¡Hola! ¿Qué tal estás?",
            "¡Hola, gracias por escribir! ¿Qué tal?",
        ),
        "opt_out": (
            "Entendido, no recibirás más mensajes míos.",
            "Perdona las molestias. Ya te he quitado de mi lista.",
            "De acuerdo. ¡Cuídate!",
        ),
        "spam_phishing": (
            "BAJA",
            "Por favor, no vuelvas a contactarme.",
            "No abro enlaces de números desconocidos. Contactaré con la empresa directamente.",
        ),
        "other": ("¡Gracias por tu mensaje!", "Entendido, gracias.", "¿Me cuentas un poco más?"),
    },
}

# (keywords, {lang: (name, body)}), first match wins; placeholders in braces are filled in when sending.
_TEMPLATES: list[tuple[re.Pattern[str], dict[Lang, tuple[str, str]]]] = [
    (
        re.compile(r"\b(payment|invoice|bill|due|rent|pay|pago|factura|recibo|cobro|pagar)\b", re.I),
        {
            "en": (
                "Payment reminder",
                "Hi {name}, a friendly reminder that {amount} is due on {date}. Thank you!",
            ),
            "es": (
                "Recordatorio de pago",
                "Hola {name}, te recordamos que el pago de {amount} vence el {date}. ¡Gracias!",
            ),
        },
    ),
    (
        re.compile(
            r"\b(appointment|appt|reminder|booking|reservation|visit|cita|recordatorio|reserva)\b", re.I
        ),
        {
            "en": (
                "Appointment reminder",
                "Hi {name}, this is a reminder of your appointment on {date} at {time}. "
                "Reply YES to confirm or call us to reschedule.",
            ),
            "es": (
                "Recordatorio de cita",
                "Hola {name}, te recordamos tu cita el {date} a las {time}. "
                "Responde SÍ para confirmar o llámanos para cambiarla.",
            ),
        },
    ),
    (
        re.compile(
            r"\b(deliver\w*|shipping|shipped|order|package|parcel|pedido|env[ií]o|entrega|paquete)\b", re.I
        ),
        {
            "en": (
                "Delivery update",
                "Hi {name}, your order {order} is on its way and should arrive on {date}.",
            ),
            "es": ("Aviso de entrega", "Hola {name}, tu pedido {order} está en camino y llegará el {date}."),
        },
    ),
    (
        re.compile(r"\b(promo\w*|sale|discount|offer|deal|coupon|oferta|descuento|rebajas|cup[oó]n)\b", re.I),
        {
            "en": ("Promotion", "Hi {name}! Enjoy {discount} off until {date}. Reply STOP to opt out."),
            "es": (
                "Promoción",
                "¡Hola {name}! Disfruta de un {discount} de descuento hasta el {date}. Responde BAJA para no "
                "recibir más mensajes.",
            ),
        },
    ),
    (
        re.compile(r"\b(code|verification|verify|otp|pin|c[oó]digo|verificaci[oó]n)\b", re.I),
        {
            "en": ("Verification code", "Your {service} code is {code}. Don't share it with anyone."),
            "es": ("Código de verificación", "Tu código de {service} es {code}. No lo compartas con nadie."),
        },
    ),
    (
        re.compile(r"\b(welcome|onboard\w*|new customer|bienvenid[ao]s?|nuevo cliente)\b", re.I),
        {
            "en": (
                "Welcome",
                "Welcome, {name}! Thanks for joining {business}. Reply to this number any time.",
            ),
            "es": (
                "Bienvenida",
                "¡Bienvenido/a, {name}! Gracias por unirte a {business}. Escríbenos cuando quieras.",
            ),
        },
    ),
    (
        re.compile(r"\b(thank\w*|thanks|gracias|agradec\w*)\b", re.I),
        {
            "en": (
                "Thank you",
                "Hi {name}, thank you for choosing {business}! We hope to see you again soon.",
            ),
            "es": ("Agradecimiento", "Hola {name}, ¡gracias por elegir {business}! Esperamos verte pronto."),
        },
    ),
]


def _load_codes() -> tuple[Callable[..., str | None] | None, Callable[[str], str] | None]:
    """`extract_code` and `mask_codes_and_numbers` from core.verification.codes when that module is present."""
    try:
        from core.verification import codes
    except ImportError:
        return None, None
    return getattr(codes, "extract_code", None), getattr(codes, "mask_codes_and_numbers", None)


def first_sentence(text: str) -> str:
    for part in _SENTENCE_END.split(text.strip()):
        if part.strip():
            return one_line(part, SUMMARY_MAX_CHARS)
    return ""


class FallbackEngine:
    """Answers every AI question locally; `engine` is "rules". Build it once: loading takes ~20 ms."""

    name = "rules"

    def __init__(self) -> None:
        self._vader = SentimentIntensityAnalyzer()
        self._vader.lexicon.update(_SPANISH_LEXICON)
        _load_codes()  # its first import (phonenumbers) takes milliseconds; pay them here, not in an answer

    # --- the AiEngine interface -----------------------------------------------------------------------------

    async def analyze(self, text: str, locale: str | None = None) -> AiResult[Analysis]:
        return AiResult(self.analyze_now(text, locale))

    async def draft_replies(self, history: Sequence[ChatTurn], locale: str) -> AiResult[Drafts]:
        return AiResult(self.drafts_now(history, locale))

    async def draft_template(self, description: str, locale: str) -> AiResult[TemplateDraft]:
        return AiResult(self.template_now(description, locale))

    async def close(self) -> None:
        return None

    # --- synchronous cores, also handy where no event loop runs ---------------------------------------------

    def analyze_now(self, text: str, locale: str | None = None) -> Analysis:
        """The analysis of `text`, written in the reader's language (`locale`; the text's own when None)."""
        text = text[:RULES_MAX_CHARS]
        lang: Lang = language_of(locale) if locale else guess_language(text)
        verdict = phishing.assess(text)
        intent = self._intent(text, verdict)
        sentiment, score = self.sentiment(text)
        warning = None
        if intent == "spam_phishing":
            # A scam's cheerful "You've won!" is not a positive message for the reader.
            sentiment, score = "negative", min(score, -0.6)
            warning = summary.warning(lang, verdict)
        _, mask = _load_codes()
        return Analysis(
            intent=intent,
            sentiment=sentiment,
            sentiment_score=score,
            urgency=self.urgency(text, intent),
            summary=summary.summarize(text, lang, intent, verdict, mask or _unmasked),
            warning=warning,
            engine=self.name,
        )

    def drafts_now(self, history: Sequence[ChatTurn], locale: str) -> Drafts:
        last_inbound = next((turn.text for turn in reversed(history) if turn.direction == "inbound"), "")
        last_inbound = last_inbound[:RULES_MAX_CHARS]
        intent = self._intent(last_inbound, phishing.assess(last_inbound)) if last_inbound.strip() else "other"
        return Drafts(drafts=list(_DRAFTS[language_of(locale)][intent]), engine=self.name)

    def template_now(self, description: str, locale: str) -> TemplateDraft:
        description = description[:RULES_MAX_CHARS]
        lang = language_of(locale)
        for pattern, texts in _TEMPLATES:
            if pattern.search(description):
                name, body = texts[lang]
                return TemplateDraft(name=name, body=body, engine=self.name)
        topic = first_sentence(description).rstrip(".!?…") or ("Message" if lang == "en" else "Mensaje")
        # "Remind clients that we close on Monday" describes the SMS; what follows the lead-in is the SMS.
        message = _INSTRUCTION_LEAD.sub("", topic) or topic
        greeting = "Hi {name}, " if lang == "en" else "Hola {name}, "
        body = greeting + message[:1].lower() + message[1:] + "."
        return TemplateDraft(name=topic[:1].upper() + topic[1:], body=body, engine=self.name)

    # --- the rules ------------------------------------------------------------------------------------------

    def sentiment(self, text: str) -> tuple[Sentiment, float]:
        compound = float(self._vader.polarity_scores(text)["compound"])
        # ±0.05 are VADER's own recommended cut-offs for neutral.
        label: Sentiment = "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
        return label, round(compound, 4)

    def intent(self, text: str, locale: str | None = None) -> tuple[Intent, str | None]:
        """The intent, and a warning for the reader (in `locale`, else the text's language) when it is a scam."""
        verdict = phishing.assess(text)
        intent = self._intent(text, verdict)
        if intent != "spam_phishing":
            return intent, None
        return intent, summary.warning(language_of(locale) if locale else guess_language(text), verdict)

    def _intent(self, text: str, verdict: phishing.Verdict) -> Intent:
        if self.is_opt_out(text):
            return "opt_out"
        extract_code, _ = _load_codes()
        if verdict.is_phishing and not _gives_a_code(text, verdict, extract_code):
            return "spam_phishing"
        marketing = bool(_MARKETING.search(text))
        verification = bool(_VERIFICATION_WORDS.search(text))
        # A tracking number reads like a code to the extractor; a delivery notice names no code words.
        if extract_code is not None and (verification or not (marketing or _DELIVERY.search(text))):
            if _safe_extract(extract_code, text):
                return "verification_code"
        stripped = text.strip()
        question = bool(_QUESTION_END.search(stripped)) or stripped.startswith("¿")
        if marketing and not question:  # "Is the car still for sale?" asks; it does not advertise
            return "marketing"
        if _DELIVERY.search(text):  # "scheduled for delivery" is a delivery, not an appointment
            return "delivery_notice"
        if _APPOINTMENT.search(text):
            return "appointment"
        if question:
            return "question"
        if _GREETING.search(text) and len(stripped.split()) <= 12:
            return "greeting"
        return "other"

    @staticmethod
    def is_opt_out(text: str) -> bool:
        words = re.findall(r"[A-Za-zÁÉÍÓÚáéíóúÑñ-]+", text.upper())
        if not words:
            return False
        if "".join(words) in _OPT_OUT_WORDS or " ".join(words) in {"STOP ALL", "OPT OUT"}:
            return True
        if words[0] in _OPT_OUT_LEADERS and len(words) <= 4:
            return True
        return bool(_OPT_OUT_PHRASES.search(text))

    @staticmethod
    def urgency(text: str, intent: Intent) -> Urgency:
        if intent == "verification_code":
            return "high"  # codes expire within minutes
        if intent in ("marketing", "greeting", "opt_out"):
            return "low"
        if intent == "spam_phishing":
            return "high"  # not the scammer's deadline: the reader should know at once not to act on it
        return "high" if _URGENT.search(text) else "normal"


def _gives_a_code(text: str, verdict: phishing.Verdict, extract_code: Callable[..., Any] | None) -> bool:
    """A borderline text without a link that hands over a code ("use 123456 to verify your account today") is
    the service's own SMS: a scam asks for the code, or sends the reader somewhere."""
    if verdict.code_request or verdict.hosts or verdict.score >= phishing.THRESHOLD + 1 or extract_code is None:
        return False
    if "callback" in verdict.signs:  # the digits are a number to call, which the extractor may take for a code
        return False
    return _safe_extract(extract_code, text)


def _unmasked(text: str) -> str:
    return text


def _safe_extract(extract_code: Callable[..., Any], text: str) -> bool:
    # The offline answer is the last resort; a defect in the extractor must not take it down as well.
    try:
        return bool(extract_code(text))
    except Exception:
        log.exception("extract_code failed; analysing without it")
        return False
