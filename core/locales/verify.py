"""Texts of the verification flow: service choice, price, live status, codes, history and errors (keys `vf_`)."""

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        # choosing a service
        "vf_menu_title": "📲 <b>Verify</b>\nRent a US number for one service and get its code here. Pick a service, "
        "search for one or browse them all:",
        "vf_btn_search": "🔎 Search",
        "vf_btn_all": "📚 All services",
        "vf_btn_history": "🗂 My verifications",
        "vf_search_prompt": "🔎 Type the name of the service (for example <i>WhatsApp</i>):",
        "vf_search_placeholder": "Service name",
        "vf_no_match": "No service matches <b>{query}</b>. Try another name or browse them all.",
        "vf_matches": "Services matching <b>{query}</b>:",
        "vf_catalogue_title": "📚 <b>All services</b> (page {page} of {pages})",
        "vf_unknown_service": "That service is not offered any more. Send /verify to pick another.",
        # price and purchase
        "vf_price": "📲 <b>{service}</b> — <b>{price}</b>, includes your tier's markup.\n\nYou get a US number for "
        "about {minutes} minutes. The money is held, and charged only when the code arrives; cancel before that "
        "and it comes back.",
        "vf_purchase_cancelled": "Cancelled. Nothing was charged.",
        # live status
        "vf_status_requested": "⏳ <b>{service}</b>\nGetting a number…",
        "vf_status_active": "📲 <b>{service}</b>\nNumber: <code>{number}</code>\nWaiting for the SMS · {time_left}\n"
        "Price: {price} (held until the code arrives)",
        "vf_time_left": "{minutes} min left (until {until} UTC)",
        "vf_time_up": "time is up",
        "vf_status_code": "✅ <b>{service}</b>\nNumber: <code>{number}</code>\nCode: <code>{code}</code>\n"
        "Charged: {price}",
        "vf_status_code_none": "✅ <b>{service}</b>\nNumber: <code>{number}</code>\nAn SMS arrived (shown below), "
        "but I found no code in it.\nCharged: {price}",
        "vf_status_completed": "✔️ <b>{service}</b> · done\nNumber: <code>{number}</code>\nCode: <code>{code}</code>\n"
        "Charged: {price}",
        "vf_status_completed_none": "✔️ <b>{service}</b> · done\nNumber: <code>{number}</code>\nCharged: {price}",
        "vf_status_cancelled": "❌ <b>{service}</b> · cancelled\n{price} is back in your balance.",
        "vf_status_expired": "⌛ <b>{service}</b> · no SMS arrived in time\n{price} is back in your balance.",
        "vf_status_failed": "⚠️ <b>{service}</b> · no number\n{reason}\nNothing was charged.",
        "vf_btn_copy_number": "📋 Copy number",
        "vf_btn_copy_code": "📋 Copy code",
        "vf_btn_report": "⚠️ Report",
        "vf_btn_another": "🔁 Another number",
        "vf_btn_refresh": "🔄 Refresh",
        "vf_btn_done": "✔️ Done",
        "vf_btn_reuse": "♻️ Same number again",
        "vf_btn_reactivate": "♻️ Reactivate this number",
        "vf_same_reuse_price": "♻️ <b>{service}</b> again on <code>{number}</code> — <b>{price}</b>.\n\nThe same "
        "number waits for a new code. The price is held now and charged only when the code comes.",
        "vf_same_reactivate_price": "♻️ Reactivate <code>{number}</code> for <b>{service}</b> — <b>{price}</b>.\n\n"
        "The number is rented again and waits for a new code. The price is held now and charged only when the "
        "code comes.",
        "vf_same_gone": "This number can no longer be had again. Tap Try again for a new one.",
        "vf_btn_again": "🔁 Try again",
        # codes and SMS relayed through the outbox
        "vf_code_message": "🔑 <b>{service}</b> code: <code>{code}</code>\n\nSMS to {number}:\n<i>{sms}</i>",
        "vf_code_message_again": "🔑 Another <b>{service}</b> code: <code>{code}</code>\n\nSMS to {number}:\n"
        "<i>{sms}</i>",
        "vf_sms_message": "📩 <b>{service}</b> · SMS to {number}:\n<i>{sms}</i>",
        # answers to buttons
        "vf_cancelled_toast": "Cancelled: {price} is back in your balance.",
        "vf_cancel_which": "Which verification should be cancelled? Its money comes back.",
        "vf_btn_cancel_one": "❌ Cancel {service} {number}",
        "vf_reported_toast": "Reported: {price} is back in your balance.",
        "vf_done_toast": "Done. Thanks!",
        "vf_refreshed_toast": "Up to date.",
        "vf_toast_requested": "Still getting a number, one moment…",
        "vf_toast_active": "Still waiting for the SMS.",
        "vf_toast_code_received": "The code already arrived.",
        "vf_toast_completed": "This verification is already finished.",
        "vf_toast_cancelled": "Already cancelled.",
        "vf_toast_expired": "This number has expired.",
        "vf_toast_failed": "This request failed; nothing was charged.",
        # errors (also the reason shown on a failed status)
        "vf_err_unavailable": "No numbers are available for this service right now. Please try again later.",
        "vf_err_provider_balance": "Numbers are temporarily unavailable. Please try again later.",
        "vf_err_price_changed": "The price for this service just changed. Please check it and try again.",
        "vf_err_busy": "The number service is busy. Please try again in a minute.",
        "vf_err_timeout": "The number service is slow to answer. Please try again.",
        "vf_err_not_allowed": "That is no longer possible for this number.",
        "vf_err_not_found": "The number service doesn't know this rental any more.",
        "vf_err_stale": "The number service didn't answer in time.",
        "vf_err_error": "The number service had a problem. Please try again in a moment.",
        # history
        "vf_history_title": "🗂 <b>My verifications</b> ({first}–{last} of {total})",
        "vf_history_empty": "🗂 No verifications yet. Send /verify to rent a number.",
        "vf_history_line": "#{id} · {when} · <b>{service}</b> {number} · {state} · {price}{code}",
        "vf_history_code": " · code <code>{code}</code>",
        "vf_btn_view": "#{id} {service}",
        "vf_state_requested": "getting a number",
        "vf_state_active": "waiting for the SMS",
        "vf_state_code_received": "code received",
        "vf_state_completed": "done",
        "vf_state_cancelled": "cancelled",
        "vf_state_expired": "expired",
        "vf_state_failed": "failed",
        # admins
        "vf_alert_provider_balance": "The {provider} account has run out of money: new verifications fail until "
        "it is topped up.\n<code>{detail}</code>",
    },
    "es": {
        # elegir un servicio
        "vf_menu_title": "📲 <b>Verificar</b>\nAlquila un número de EE. UU. para un servicio y recibe aquí su "
        "código. Elige un servicio, búscalo o mira todos:",
        "vf_btn_search": "🔎 Buscar",
        "vf_btn_all": "📚 Todos los servicios",
        "vf_btn_history": "🗂 Mis verificaciones",
        "vf_search_prompt": "🔎 Escribe el nombre del servicio (por ejemplo <i>WhatsApp</i>):",
        "vf_search_placeholder": "Nombre del servicio",
        "vf_no_match": "Ningún servicio coincide con <b>{query}</b>. Prueba otro nombre o mira todos.",
        "vf_matches": "Servicios que coinciden con <b>{query}</b>:",
        "vf_catalogue_title": "📚 <b>Todos los servicios</b> (página {page} de {pages})",
        "vf_unknown_service": "Ese servicio ya no está disponible. Envía /verify para elegir otro.",
        # precio y compra
        "vf_price": "📲 <b>{service}</b> — <b>{price}</b>, incluye el recargo de tu plan.\n\nRecibes un número de "
        "EE. UU. durante unos {minutes} minutos. El dinero queda retenido y solo se cobra cuando llega el código; "
        "si cancelas antes, se te devuelve.",
        "vf_purchase_cancelled": "Cancelado. No se ha cobrado nada.",
        # estado en vivo
        "vf_status_requested": "⏳ <b>{service}</b>\nConsiguiendo un número…",
        "vf_status_active": "📲 <b>{service}</b>\nNúmero: <code>{number}</code>\nEsperando el SMS · {time_left}\n"
        "Precio: {price} (retenido hasta que llegue el código)",
        "vf_time_left": "quedan {minutes} min (hasta las {until} UTC)",
        "vf_time_up": "se acabó el tiempo",
        "vf_status_code": "✅ <b>{service}</b>\nNúmero: <code>{number}</code>\nCódigo: <code>{code}</code>\n"
        "Cobrado: {price}",
        "vf_status_code_none": "✅ <b>{service}</b>\nNúmero: <code>{number}</code>\nLlegó un SMS (abajo), pero no "
        "encontré ningún código en él.\nCobrado: {price}",
        "vf_status_completed": "✔️ <b>{service}</b> · terminado\nNúmero: <code>{number}</code>\nCódigo: "
        "<code>{code}</code>\nCobrado: {price}",
        "vf_status_completed_none": "✔️ <b>{service}</b> · terminado\nNúmero: <code>{number}</code>\n"
        "Cobrado: {price}",
        "vf_status_cancelled": "❌ <b>{service}</b> · cancelado\nSe han devuelto {price} a tu saldo.",
        "vf_status_expired": "⌛ <b>{service}</b> · no llegó ningún SMS a tiempo\nSe han devuelto {price} a tu saldo.",
        "vf_status_failed": "⚠️ <b>{service}</b> · sin número\n{reason}\nNo se ha cobrado nada.",
        "vf_btn_copy_number": "📋 Copiar número",
        "vf_btn_copy_code": "📋 Copiar código",
        "vf_btn_report": "⚠️ Reportar",
        "vf_btn_another": "🔁 Otro número",
        "vf_btn_refresh": "🔄 Actualizar",
        "vf_btn_done": "✔️ Listo",
        "vf_btn_reuse": "♻️ El mismo número otra vez",
        "vf_btn_reactivate": "♻️ Reactivar este número",
        "vf_same_reuse_price": "♻️ <b>{service}</b> otra vez en <code>{number}</code> — <b>{price}</b>.\n\nEl "
        "mismo número espera un código nuevo. El importe se retiene ahora y se cobra solo cuando llegue el código.",
        "vf_same_reactivate_price": "♻️ Reactivar <code>{number}</code> para <b>{service}</b> — <b>{price}</b>."
        "\n\nEl número se vuelve a alquilar y espera un código nuevo. El importe se retiene ahora y se cobra solo "
        "cuando llegue el código.",
        "vf_same_gone": "Este número ya no se puede volver a usar. Pulsa Intentar de nuevo para otro.",
        "vf_btn_again": "🔁 Intentar de nuevo",
        # códigos y SMS enviados por la cola de salida
        "vf_code_message": "🔑 Código de <b>{service}</b>: <code>{code}</code>\n\nSMS a {number}:\n<i>{sms}</i>",
        "vf_code_message_again": "🔑 Otro código de <b>{service}</b>: <code>{code}</code>\n\nSMS a {number}:\n"
        "<i>{sms}</i>",
        "vf_sms_message": "📩 <b>{service}</b> · SMS a {number}:\n<i>{sms}</i>",
        # respuestas a botones
        "vf_cancelled_toast": "Cancelado: se han devuelto {price} a tu saldo.",
        "vf_cancel_which": "¿Qué verificación cancelo? Su dinero vuelve a tu saldo.",
        "vf_btn_cancel_one": "❌ Cancelar {service} {number}",
        "vf_reported_toast": "Reportado: se han devuelto {price} a tu saldo.",
        "vf_done_toast": "Listo. ¡Gracias!",
        "vf_refreshed_toast": "Actualizado.",
        "vf_toast_requested": "Todavía consiguiendo un número, un momento…",
        "vf_toast_active": "Todavía esperando el SMS.",
        "vf_toast_code_received": "El código ya llegó.",
        "vf_toast_completed": "Esta verificación ya terminó.",
        "vf_toast_cancelled": "Ya está cancelada.",
        "vf_toast_expired": "Este número ha caducado.",
        "vf_toast_failed": "Esta solicitud falló; no se ha cobrado nada.",
        # errores (también el motivo que se muestra en un estado fallido)
        "vf_err_unavailable": "No hay números disponibles para este servicio ahora mismo. Inténtalo más tarde.",
        "vf_err_provider_balance": "Los números no están disponibles temporalmente. Inténtalo más tarde.",
        "vf_err_price_changed": "El precio de este servicio acaba de cambiar. Revísalo e inténtalo de nuevo.",
        "vf_err_busy": "El servicio de números está ocupado. Inténtalo dentro de un minuto.",
        "vf_err_timeout": "El servicio de números tarda en responder. Inténtalo de nuevo.",
        "vf_err_not_allowed": "Eso ya no es posible para este número.",
        "vf_err_not_found": "El servicio de números ya no reconoce este alquiler.",
        "vf_err_stale": "El servicio de números no respondió a tiempo.",
        "vf_err_error": "El servicio de números tuvo un problema. Inténtalo de nuevo en un momento.",
        # historial
        "vf_history_title": "🗂 <b>Mis verificaciones</b> ({first}–{last} de {total})",
        "vf_history_empty": "🗂 Aún no tienes verificaciones. Envía /verify para alquilar un número.",
        "vf_history_line": "#{id} · {when} · <b>{service}</b> {number} · {state} · {price}{code}",
        "vf_history_code": " · código <code>{code}</code>",
        "vf_btn_view": "#{id} {service}",
        "vf_state_requested": "consiguiendo un número",
        "vf_state_active": "esperando el SMS",
        "vf_state_code_received": "código recibido",
        "vf_state_completed": "terminada",
        "vf_state_cancelled": "cancelada",
        "vf_state_expired": "caducada",
        "vf_state_failed": "fallida",
        # administradores
        "vf_alert_provider_balance": "La cuenta de {provider} se ha quedado sin saldo: las verificaciones nuevas "
        "fallan hasta que se recargue.\n<code>{detail}</code>",
    },
}
