"""Texts of /subscribe (`sub_`): the tiers with monthly prices, paying, cancelling, renewals and lapses."""

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "help_subscribe": "the tiers with monthly prices, and your subscription",
        "sub_tier_free": "Free",
        "sub_tier_pro": "Pro",
        "sub_tier_business": "Business",
        "sub_title": "⭐ <b>Tiers</b> (prices a month)",
        "sub_line": "• <b>{tier}</b> — {price}/month: {verifications} verifications and {sms} SMS a day, "
        "{numbers} numbers, {markup}% markup",
        "sub_free_line": "• <b>{tier}</b> — free: {verifications} verifications and {sms} SMS a day, "
        "{numbers} number(s), {markup}% markup",
        "sub_yours": "Your tier: <b>{tier}</b>.",
        "sub_yours_renews": "Your tier: <b>{tier}</b>, renews on {until} ({how}).",
        "sub_yours_ends": "Your tier: <b>{tier}</b> until {until}; it does not renew.",
        "sub_how_stars": "Telegram Stars",
        "sub_how_balance": "from your balance",
        "sub_btn_tier": "{tier} — {price}/month",
        "sub_btn_cancel": "Cancel subscription",
        "sub_btn_resume": "Turn renewal back on",
        "sub_btn_pay_stars": "Subscribe for ⭐ {stars}/month",
        "sub_stars_offer": "⭐ <b>{tier}</b> for {stars} Telegram Stars a month.\nTelegram renews it every 30 days "
        "until you cancel (here with /subscribe, or in Telegram).",
        "sub_invoice_title": "CumApp {tier}",
        "sub_invoice_description": "The {tier} tier for 30 days, renewed monthly until cancelled.",
        "sub_balance_offer": "<b>{tier}</b> for {price} a month from your balance (Available: {available}).\n"
        "It renews every 30 days while your balance covers it; cancel any time with /subscribe.",
        "sub_done": "✅ You are on <b>{tier}</b> until {until}. {price} was taken from your balance; "
        "Available: {available}.",
        "sub_stars_done": "✅ Thank you! You are on <b>{tier}</b> until {until}.",
        "sub_stars_renewed": "⭐ Your <b>{tier}</b> subscription was renewed until {until}.",
        "sub_cancelled": "Your <b>{tier}</b> subscription will not renew; it stays until {until}.",
        "sub_resumed": "Your <b>{tier}</b> subscription renews again on {until}.",
        "sub_renewed": "⭐ Your <b>{tier}</b> tier was renewed until {until}; {price} was taken from your balance.",
        "sub_lapsed": "Your <b>{tier}</b> subscription has ended: you are on the Free tier. /subscribe to "
        "subscribe again.",
        "sub_lapsed_funds": "Your <b>{tier}</b> subscription could not renew: the balance does not cover {price}. "
        "You are on the Free tier; /topup and /subscribe to come back.",
        "sub_not_sold": "This tier is not on sale.",
        "sub_cancel_first": "Your Telegram Stars subscription still renews: cancel it first with /subscribe.",
        "sub_none_active": "You have no active subscription.",
        "sub_already": "You already have a subscription that renews: /subscribe shows it.",
        "sub_cancel_on_telegram": "This subscription is paid with Telegram Stars: cancel it in Telegram.",
        "sub_unavailable": "Subscriptions with Telegram Stars are unavailable right now. Try again shortly.",
    },
    "es": {
        "help_subscribe": "los planes con sus precios mensuales, y tu suscripción",
        "sub_tier_free": "Gratis",
        "sub_tier_pro": "Pro",
        "sub_tier_business": "Business",
        "sub_title": "⭐ <b>Planes</b> (precios al mes)",
        "sub_line": "• <b>{tier}</b> — {price}/mes: {verifications} verificaciones y {sms} SMS al día, "
        "{numbers} números, {markup}% de margen",
        "sub_free_line": "• <b>{tier}</b> — gratis: {verifications} verificaciones y {sms} SMS al día, "
        "{numbers} número(s), {markup}% de margen",
        "sub_yours": "Tu plan: <b>{tier}</b>.",
        "sub_yours_renews": "Tu plan: <b>{tier}</b>, se renueva el {until} ({how}).",
        "sub_yours_ends": "Tu plan: <b>{tier}</b> hasta el {until}; no se renueva.",
        "sub_how_stars": "Telegram Stars",
        "sub_how_balance": "con tu saldo",
        "sub_btn_tier": "{tier} — {price}/mes",
        "sub_btn_cancel": "Cancelar suscripción",
        "sub_btn_resume": "Volver a renovar",
        "sub_btn_pay_stars": "Suscribirse por ⭐ {stars}/mes",
        "sub_stars_offer": "⭐ <b>{tier}</b> por {stars} Telegram Stars al mes.\nTelegram lo renueva cada 30 días "
        "hasta que canceles (aquí con /subscribe, o en Telegram).",
        "sub_invoice_title": "CumApp {tier}",
        "sub_invoice_description": "El plan {tier} durante 30 días, renovado cada mes hasta cancelarlo.",
        "sub_balance_offer": "<b>{tier}</b> por {price} al mes con tu saldo (Disponible: {available}).\n"
        "Se renueva cada 30 días mientras tu saldo lo cubra; cancela cuando quieras con /subscribe.",
        "sub_done": "✅ Tienes <b>{tier}</b> hasta el {until}. Se tomaron {price} de tu saldo; "
        "Disponible: {available}.",
        "sub_stars_done": "✅ ¡Gracias! Tienes <b>{tier}</b> hasta el {until}.",
        "sub_stars_renewed": "⭐ Tu suscripción <b>{tier}</b> se renovó hasta el {until}.",
        "sub_cancelled": "Tu suscripción <b>{tier}</b> no se renovará; sigue hasta el {until}.",
        "sub_resumed": "Tu suscripción <b>{tier}</b> se renueva de nuevo el {until}.",
        "sub_renewed": "⭐ Tu plan <b>{tier}</b> se renovó hasta el {until}; se tomaron {price} de tu saldo.",
        "sub_lapsed": "Tu suscripción <b>{tier}</b> terminó: tienes el plan Gratis. /subscribe para volver.",
        "sub_lapsed_funds": "Tu suscripción <b>{tier}</b> no pudo renovarse: el saldo no cubre {price}. "
        "Tienes el plan Gratis; /topup y /subscribe para volver.",
        "sub_not_sold": "Este plan no está a la venta.",
        "sub_cancel_first": "Tu suscripción con Telegram Stars sigue renovándose: cancélala primero con /subscribe.",
        "sub_none_active": "No tienes ninguna suscripción activa.",
        "sub_already": "Ya tienes una suscripción que se renueva: /subscribe la muestra.",
        "sub_cancel_on_telegram": "Esta suscripción se paga con Telegram Stars: cancélala en Telegram.",
        "sub_unavailable": "Las suscripciones con Telegram Stars no están disponibles ahora. Inténtalo en un momento.",
    },
}
