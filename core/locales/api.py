"""Texts of the integrator API in the chat: /apikey (`ak_`) and the keys on the admins' /user card."""

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "help_apikey": "API keys for the integrator API: create, list, revoke",
        "ak_title": "🔑 <b>API keys</b>\nUse a key as <code>Authorization: Bearer …</code> on {base}/api/v1 "
        "(docs: {base}/api/docs).",
        "ak_none": "You have no API key yet.",
        "ak_line": "• <code>{prefix}…</code> {name} · made {created} · {used}",
        "ak_never_used": "never used",
        "ak_used": "last used {when}",
        "ak_btn_create": "Create key",
        "ak_btn_revoke": "Revoke {prefix}…",
        "ak_created": "🔑 Your new API key <b>{name}</b>:\n<code>{key}</code>\n\nCopy it now: it is shown only "
        "this once. Only its fingerprint is kept, so a lost key cannot be shown again; revoke it and make another.",
        "ak_btn_copy": "Copy key",
        "ak_revoked": "Key <code>{prefix}…</code> revoked: requests with it now get 401.",
        "ak_not_found": "No live key starts with <code>{prefix}</code>. /apikey lists yours.",
        "ak_too_many": "You have {count} live keys, the most allowed. Revoke one first.",
        "ak_usage": "Usage: /apikey, /apikey new [name], /apikey revoke &lt;prefix&gt;",
        "user_api_keys": "\n\n<b>API keys</b>\n{lines}",
        "btn_user_revoke_key": "Revoke key {prefix}…",
        "admin_key_revoked": "Key <code>{prefix}…</code> of account #{id} revoked.",
    },
    "es": {
        "help_apikey": "claves de la API para integradores: crear, listar, revocar",
        "ak_title": "🔑 <b>Claves de la API</b>\nUsa una clave como <code>Authorization: Bearer …</code> en "
        "{base}/api/v1 (documentación: {base}/api/docs).",
        "ak_none": "Aún no tienes ninguna clave de la API.",
        "ak_line": "• <code>{prefix}…</code> {name} · creada {created} · {used}",
        "ak_never_used": "nunca usada",
        "ak_used": "último uso {when}",
        "ak_btn_create": "Crear clave",
        "ak_btn_revoke": "Revocar {prefix}…",
        "ak_created": "🔑 Tu nueva clave de la API <b>{name}</b>:\n<code>{key}</code>\n\nCópiala ahora: solo se "
        "muestra esta vez. Solo guardamos su huella, así que una clave perdida no puede mostrarse otra vez; "
        "revócala y crea otra.",
        "ak_btn_copy": "Copiar clave",
        "ak_revoked": "Clave <code>{prefix}…</code> revocada: las peticiones con ella reciben ahora 401.",
        "ak_not_found": "Ninguna clave activa empieza por <code>{prefix}</code>. /apikey lista las tuyas.",
        "ak_too_many": "Tienes {count} claves activas, el máximo permitido. Revoca una primero.",
        "ak_usage": "Uso: /apikey, /apikey new [nombre], /apikey revoke &lt;prefijo&gt;",
        "user_api_keys": "\n\n<b>Claves de la API</b>\n{lines}",
        "btn_user_revoke_key": "Revocar clave {prefix}…",
        "admin_key_revoked": "Clave <code>{prefix}…</code> de la cuenta #{id} revocada.",
    },
}
