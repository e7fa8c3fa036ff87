"""The built-in template sets: general ones every user has, and one set per popular service, in each language the
chat speaks. Data and lookups only; parsing, checking and the users' own templates are in core.messaging.templates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Lang = Literal["en", "es"]


@dataclass(frozen=True)
class BuiltinTemplate:
    """One template every user has; its text exists in each language the chat speaks."""

    key: str
    names: Mapping[Lang, str]
    bodies: Mapping[Lang, str]

    def name(self, locale: str) -> str:
        return self.names[lang_of(locale)]

    def body(self, locale: str) -> str:
        return self.bodies[lang_of(locale)]


BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    b.key: b
    for b in (
        BuiltinTemplate(
            "appt",
            {"en": "Appointment reminder", "es": "Recordatorio de cita"},
            {
                "en": "Hi {name}, this is a reminder of your appointment on {date} at {time}. "
                "Reply YES to confirm or call us to reschedule.",
                "es": "Hola {name}, te recordamos tu cita el {date} a las {time}. "
                "Responde SÍ para confirmar o llámanos para cambiarla.",
            },
        ),
        BuiltinTemplate(
            "delivery",
            {"en": "Delivery update", "es": "Aviso de entrega"},
            {
                "en": "Hi {name}, your order {order} is on its way and should arrive on {date}.",
                "es": "Hola {name}, tu pedido {order} está en camino y llegará el {date}.",
            },
        ),
        BuiltinTemplate(
            "verify",
            {"en": "Verification notice", "es": "Aviso de verificación"},
            {
                "en": "Your {service} verification code is {code}. It expires in 10 minutes. "
                "Never share it with anyone.",
                "es": "Tu código de verificación de {service} es {code}. Caduca en 10 minutos. "
                "No lo compartas con nadie.",
            },
        ),
        BuiltinTemplate(
            "followup",
            {"en": "Follow-up", "es": "Seguimiento"},
            {
                "en": "Hi {name}, just following up on our conversation. "
                "Let me know if you have any questions!",
                "es": "Hola {name}, te escribo para dar seguimiento a nuestra conversación. "
                "¡Avísame si tienes alguna pregunta!",
            },
        ),
    )
}


# --- built-in sets per service ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceTemplates:
    """The built-in templates for one popular service; `service` is the verification catalogue's code for it."""

    service: str
    name: str
    aliases: tuple[str, ...]  # words that name the service in an SMS ("gmail" is Google's)
    templates: tuple[BuiltinTemplate, ...]


def _set(service: str, name: str, aliases: tuple[str, ...], *items: tuple[str, str, str, str, str]) -> ServiceTemplates:
    """`items`: (key, English name, Spanish name, English body, Spanish body)."""
    return ServiceTemplates(
        service, name, aliases,
        tuple(BuiltinTemplate(key, {"en": en_name, "es": es_name}, {"en": en, "es": es})
              for key, en_name, es_name, en, es in items),
    )


SERVICE_TEMPLATES: dict[str, ServiceTemplates] = {
    s.service: s
    for s in (
        _set(
            "whatsapp", "WhatsApp", ("whatsapp",),
            ("move", "Continue on WhatsApp", "Seguir por WhatsApp",
             "Hi {name}, can we continue on WhatsApp? Write to me there at this number.",
             "Hola {name}, ¿seguimos por WhatsApp? Escríbeme allí a este número."),
            ("group", "WhatsApp group invite", "Invitación a grupo de WhatsApp",
             "Hi {name}, join our WhatsApp group here: {link}",
             "Hola {name}, únete a nuestro grupo de WhatsApp aquí: {link}"),
        ),
        _set(
            "google", "Google", ("google", "gmail", "youtube"),
            ("meet", "Google Meet invite", "Invitación a Google Meet",
             "Hi {name}, here is the Google Meet link for {date} at {time}: {link}",
             "Hola {name}, este es el enlace de Google Meet para el {date} a las {time}: {link}"),
            ("review", "Google review request", "Pedir reseña en Google",
             "Thanks for choosing {business}! Could you leave us a Google review? {link}",
             "¡Gracias por elegir {business}! ¿Nos dejas una reseña en Google? {link}"),
        ),
        _set(
            "telegram", "Telegram", ("telegram",),
            ("channel", "Telegram channel invite", "Invitación a canal de Telegram",
             "Hi {name}, follow our news on Telegram: {link}",
             "Hola {name}, sigue nuestras novedades en Telegram: {link}"),
            ("move", "Continue on Telegram", "Seguir por Telegram",
             "Hi {name}, I'm easier to reach on Telegram. Write to me there: {link}",
             "Hola {name}, me encuentras mejor en Telegram. Escríbeme allí: {link}"),
        ),
        _set(
            "facebook", "Facebook", ("facebook", "messenger"),
            ("event", "Facebook event invite", "Invitación a evento de Facebook",
             "Hi {name}, you're invited to our event on {date} at {time}. Details on Facebook: {link}",
             "Hola {name}, te invitamos a nuestro evento el {date} a las {time}. Detalles en Facebook: {link}"),
            ("pickup", "Marketplace pickup", "Recogida de Marketplace",
             "Hi {name}, your Facebook Marketplace item is ready. Pick it up at {place} on {date} at {time}.",
             "Hola {name}, tu artículo de Facebook Marketplace está listo. Recógelo en {place} el {date} a las "
             "{time}."),
        ),
        _set(
            "instagram", "Instagram", ("instagram",),
            ("follow", "Follow on Instagram", "Síguenos en Instagram",
             "Hi {name}, follow {business} on Instagram and get {discount} off your next order: {link}",
             "Hola {name}, sigue a {business} en Instagram y obtén un {discount} de descuento en tu próximo "
             "pedido: {link}"),
            ("winner", "Instagram giveaway winner", "Ganador del sorteo de Instagram",
             "Congratulations {name}! You won our Instagram giveaway. Claim your prize here: {link}",
             "¡Felicidades {name}! Ganaste nuestro sorteo de Instagram. Reclama tu premio aquí: {link}"),
        ),
        _set(
            "amazon", "Amazon", ("amazon",),
            ("shipped", "Amazon order shipped", "Pedido de Amazon enviado",
             "Hi {name}, your Amazon order {order} has shipped and should arrive on {date}.",
             "Hola {name}, tu pedido de Amazon {order} ya salió y debería llegar el {date}."),
            ("return", "Amazon return reminder", "Recordatorio de devolución de Amazon",
             "Hi {name}, a reminder to return Amazon order {order} by {date}.",
             "Hola {name}, te recordamos devolver el pedido de Amazon {order} antes del {date}."),
        ),
        _set(
            "uber", "Uber", ("uber",),
            ("pickup", "At the pickup point", "En el punto de recogida",
             "Hi {name}, I'm at the pickup point at {place}. See you in a moment!",
             "Hola {name}, estoy en el punto de recogida en {place}. ¡Nos vemos enseguida!"),
            ("late", "Running late", "Llego tarde",
             "Hi {name}, I'm running a little late; I'll be at {place} at {time}.",
             "Hola {name}, llego un poco tarde; estaré en {place} a las {time}."),
        ),
        _set(
            "paypal", "PayPal", ("paypal",),
            ("request", "PayPal payment request", "Solicitud de pago por PayPal",
             "Hi {name}, here is the PayPal request for {amount}: {link}",
             "Hola {name}, aquí tienes la solicitud de PayPal por {amount}: {link}"),
            ("received", "PayPal payment received", "Pago de PayPal recibido",
             "Hi {name}, I got your PayPal payment of {amount}. Thank you!",
             "Hola {name}, recibí tu pago de PayPal de {amount}. ¡Gracias!"),
        ),
    )
}


def lang_of(locale: str | None) -> Lang:
    return "es" if (locale or "").lower().startswith("es") else "en"
