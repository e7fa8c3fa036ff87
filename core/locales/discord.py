"""Texts only the Discord front end shows: reply and answer boxes, and slash-command option descriptions (`dc_`)."""

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        # The chat's reply function: Discord has none for a bot's message, so a button opens a text box.
        "dc_btn_reply": "Reply",
        "dc_btn_answer": "✍️ Answer",
        "dc_modal_reply_title": "Reply",
        "dc_modal_answer_title": "Your answer",
        "dc_modal_label": "Text",
        "dc_modal_picture_label": "Picture (optional, sent as an MMS)",
        # option descriptions of the slash commands (at most 100 characters)
        "dc_opt_service": "the service, for example WhatsApp",
        "dc_opt_to": "the phone number to text, with its country code",
        "dc_opt_text": "the text",
        "dc_opt_code": "the code /link showed on the other app",
        "dc_opt_user": "a user id, an @username or an account id like #12",
        "dc_opt_amount": "dollars, like 5 or 2.50; negative to debit",
        "dc_opt_reason": "why (kept in the audit log)",
        "dc_opt_tier": "the new tier",
        "dc_opt_payment": "the payment id",
        "dc_opt_period": "the period to show",
    },
    "es": {
        "dc_btn_reply": "Responder",
        "dc_btn_answer": "✍️ Contestar",
        "dc_modal_reply_title": "Responder",
        "dc_modal_answer_title": "Tu respuesta",
        "dc_modal_label": "Texto",
        "dc_modal_picture_label": "Imagen (opcional, se envía como MMS)",
        "dc_opt_service": "el servicio, por ejemplo WhatsApp",
        "dc_opt_to": "el número al que escribir, con su prefijo de país",
        "dc_opt_text": "el texto",
        "dc_opt_code": "el código que /link mostró en la otra app",
        "dc_opt_user": "un id de usuario, un @usuario o un id de cuenta como #12",
        "dc_opt_amount": "dólares, como 5 o 2.50; negativo para cargar",
        "dc_opt_reason": "el motivo (queda en el registro de auditoría)",
        "dc_opt_tier": "el nuevo plan",
        "dc_opt_payment": "el id del pago",
        "dc_opt_period": "el periodo que mostrar",
    },
}
