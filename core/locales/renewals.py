"""Texts of number rentals: renewal on the number's screen, Renew now, Auto-renew, notices and history lines."""

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "num_renewal_on": "🔁 Auto-renew is on: {price} is taken from your balance on {renews}.",
        "num_renewal_off": "⏸ Auto-renew is off: renew by {renews}, or the number is released on {release}.",
        "num_renewal_unpaid": "⚠️ Not paid since {renews}: renew it by {release}, or it is released then.",
        "num_renewal_releasing": "⚠️ Unpaid for {grace} days: the number is being released.",
        "num_btn_auto_on": "Auto-renew: on",
        "num_btn_auto_off": "Auto-renew: off",
        "num_btn_renew": "Renew now",
        "num_renewed": "✅ {number} renewed for {price}. Next renewal: {renews}.",
        "num_renew_done": "Already renewed: next renewal {renews}.",
        "num_renew_too_early": "{number} is paid until {renews}. Renew now pays at most one month ahead.",
        "num_renew_releasing": "{number} was not paid in time and is being released.",
        "num_renew_no_date": "{number} has no renewal date, so there is nothing to renew.",
        "num_auto_on_done": "Auto-renew is on.",
        "num_auto_off_done": "Auto-renew is off.",
        "num_notice_low_balance": "⚠️ <b>{number}</b> renews on {renews} for {price}, and your balance "
        "({available}) does not cover it. Top up with /topup to keep it: unpaid, it is kept {grace} days and then "
        "released.",
        "num_notice_released": "☎️ <b>{number}</b> was released: its month ended on {renews} and it was not "
        "renewed within {grace} days.",
        "kind_renewal": "number renewal",
        "history_renewal_line": "{when} · renewal of {number} · <b>{amount}</b>",
    },
    "es": {
        "num_renewal_on": "🔁 Renovación automática activada: el {renews} se toman {price} de tu saldo.",
        "num_renewal_off": "⏸ Renovación automática desactivada: renuévalo antes del {renews} o el número se "
        "libera el {release}.",
        "num_renewal_unpaid": "⚠️ Sin pagar desde el {renews}: renuévalo antes del {release} o se libera ese día.",
        "num_renewal_releasing": "⚠️ Sin pagar durante {grace} días: el número se está liberando.",
        "num_btn_auto_on": "Renovación automática: sí",
        "num_btn_auto_off": "Renovación automática: no",
        "num_btn_renew": "Renovar ahora",
        "num_renewed": "✅ {number} renovado por {price}. Próxima renovación: {renews}.",
        "num_renew_done": "Ya está renovado: próxima renovación el {renews}.",
        "num_renew_too_early": "{number} está pagado hasta el {renews}. Renovar ahora paga como mucho un mes por "
        "adelantado.",
        "num_renew_releasing": "{number} no se pagó a tiempo y se está liberando.",
        "num_renew_no_date": "{number} no tiene fecha de renovación; no hay nada que renovar.",
        "num_auto_on_done": "Renovación automática activada.",
        "num_auto_off_done": "Renovación automática desactivada.",
        "num_notice_low_balance": "⚠️ <b>{number}</b> se renueva el {renews} por {price} y tu saldo ({available}) "
        "no alcanza. Recarga con /topup para conservarlo: sin pagar, se guarda {grace} días y luego se libera.",
        "num_notice_released": "☎️ <b>{number}</b> fue liberado: su mes terminó el {renews} y no se renovó en "
        "{grace} días.",
        "kind_renewal": "renovación de número",
        "history_renewal_line": "{when} · renovación de {number} · <b>{amount}</b>",
    },
}
