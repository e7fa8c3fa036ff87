"""Texts of the Mini App's entry in the chat: /app (`app_`)."""

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "help_app": "open the app: balance, verifications, numbers and the inbox",
        "app_open": "📱 <b>CumApp</b>: your balance, verifications, numbers and the inbox in one place.",
        "app_link": "📱 <b>CumApp</b>: your balance, verifications, numbers and the inbox in one place.\n"
        "Your sign-in link works once, for 10 minutes:\n{link}",
        "app_btn_open": "Open app",
    },
    "es": {
        "help_app": "abrir la app: saldo, verificaciones, números y la bandeja de entrada",
        "app_open": "📱 <b>CumApp</b>: tu saldo, verificaciones, números y la bandeja de entrada en un solo lugar.",
        "app_link": "📱 <b>CumApp</b>: tu saldo, verificaciones, números y la bandeja de entrada en un solo lugar.\n"
        "Tu enlace de acceso funciona una vez, durante 10 minutos:\n{link}",
        "app_btn_open": "Abrir la app",
    },
}
