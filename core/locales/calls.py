"""Texts of calls to owned numbers: the spoken greeting, the "Missed call" and voicemail cards, call settings."""

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        # spoken by Twilio before the voicemail (plain words, no HTML)
        "call_greeting": "You have reached {number}. Please leave a message after the tone.",
        "call_missed": "📞 Missed call from <b>{sender}</b> → your {to}",
        "call_forwarded": "📞 Call from <b>{sender}</b> → your {to}, forwarded to {forward}",
        "call_voicemail": "🎙 Voicemail from <b>{sender}</b> → your {to} ({duration})",
        "call_voicemail_unfetched": "🎙 Voicemail from <b>{sender}</b> → your {to} ({duration}). The recording "
        "could not be fetched.",
        "call_voicemail_title": "Voicemail · {sender}",
        "call_unknown_caller": "Unknown caller",
        # a number's call setting
        "call_btn_settings": "📞 Calls: {mode}",
        "call_mode_voicemail": "Voicemail",
        "call_mode_off": "Off",
        "call_mode_forward": "Forward to {number}",
        "call_btn_forward": "Forward…",
        "call_settings": "📞 <b>Calls to {number}</b>\nNow: {mode}\n\n<b>Voicemail</b>: callers hear a greeting "
        "and can leave a message of up to a minute, which comes here as audio.\n<b>Off</b>: calls are refused.\n"
        "<b>Forward</b>: calls ring another phone.\nEither way you are told of every call here.",
        "call_forward_prompt": "📞 Which number should calls to {number} ring? Type it with the country code, for "
        "example +1 415 555 0123.",
        "call_forward_placeholder": "+1 415 555 0123",
        "call_forward_invalid": "“{number}” can't take forwarded calls: {reason} Type it again, with the country "
        "code, for example +1 415 555 0123.",
        "call_forward_self": "A number can't forward its calls to itself. Type another number.",
        "call_mode_saved": "✅ Calls to {number}: {mode}.",
    },
    "es": {
        "call_greeting": "Ha llamado al {number}. Deje su mensaje después de la señal.",
        "call_missed": "📞 Llamada perdida de <b>{sender}</b> → tu {to}",
        "call_forwarded": "📞 Llamada de <b>{sender}</b> → tu {to}, desviada al {forward}",
        "call_voicemail": "🎙 Mensaje de voz de <b>{sender}</b> → tu {to} ({duration})",
        "call_voicemail_unfetched": "🎙 Mensaje de voz de <b>{sender}</b> → tu {to} ({duration}). No se pudo "
        "obtener la grabación.",
        "call_voicemail_title": "Mensaje de voz · {sender}",
        "call_unknown_caller": "Número oculto",
        "call_btn_settings": "📞 Llamadas: {mode}",
        "call_mode_voicemail": "Buzón de voz",
        "call_mode_off": "Desactivadas",
        "call_mode_forward": "Desviar al {number}",
        "call_btn_forward": "Desviar…",
        "call_settings": "📞 <b>Llamadas al {number}</b>\nAhora: {mode}\n\n<b>Buzón de voz</b>: quien llama oye un "
        "saludo y puede dejar un mensaje de hasta un minuto, que llega aquí como audio.\n<b>Desactivadas</b>: las "
        "llamadas se rechazan.\n<b>Desviar</b>: las llamadas suenan en otro teléfono.\nEn todos los casos se te "
        "avisa aquí de cada llamada.",
        "call_forward_prompt": "📞 ¿A qué número se desvían las llamadas al {number}? Escríbelo con el código de "
        "país, por ejemplo +1 415 555 0123.",
        "call_forward_placeholder": "+1 415 555 0123",
        "call_forward_invalid": "“{number}” no puede recibir llamadas desviadas: {reason} Escríbelo de nuevo, con "
        "el código de país, por ejemplo +1 415 555 0123.",
        "call_forward_self": "Un número no puede desviar sus llamadas a sí mismo. Escribe otro número.",
        "call_mode_saved": "✅ Llamadas al {number}: {mode}.",
    },
}
