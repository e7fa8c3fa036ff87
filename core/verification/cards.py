"""The chat messages core sends about a verification (its status screen and the code), and their button ids.

The handlers show the same status screens, so they build them here too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from core.models import Verification
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.i18n import Html, catalog, money, t

# Button action ids: the handlers register flows under these prefixes; core puts them on the messages it sends.
ACTION_PICK = "vfp"  # vfp:<service> → price screen
ACTION_CANCEL = "vfc"  # vfc:<verification id>
ACTION_REPORT = "vfr"
ACTION_ANOTHER = "vfn"
ACTION_DONE = "vfd"
ACTION_REUSE = "vfu"  # the old direct "Same number again" (no Confirm); buttons already in chats still work
ACTION_REFRESH = "vfv"
ACTION_SAME_NUMBER = "vfs"  # vfs:<verification id> → the same number again (reuse or reactivate): price, Confirm

# Right after the code the provider lets the number be reused (TextVerified's `reuse.reusableUntil`, minutes);
# a card written without asking the provider offers it only that long, so it is not shown where it cannot work.
REUSE_OFFER_WINDOW = timedelta(minutes=5)


def _time_left(v: Verification, locale: str, now: datetime) -> Html:
    if v.ends_at is None:
        return Html("")
    seconds = int((v.ends_at - now).total_seconds())
    if seconds <= 0:
        return t(locale, "vf_time_up")
    return t(locale, "vf_time_left", minutes=max(1, round(seconds / 60)), until=v.ends_at.strftime("%H:%M"))


def _failure_text(v: Verification, locale: str) -> Html:
    kind = (v.failure_reason or "error").split(":", 1)[0]
    key = f"vf_err_{kind}"
    return t(locale, key if key in catalog("en") else "vf_err_error")


def status_message(
    v: Verification, locale: str, *, edit_message_id: str | None = None, now: datetime | None = None,
    same_number: str | None = "unknown",
) -> outbox.OutgoingMessage:
    """The live status of one verification, with the buttons its state allows.

    `same_number` is how the provider would give the number again ("reuse", "reactivate", None for not at all),
    as a caller that asked it knows; "unknown" offers "Same number again" only while a reuse is likely to work.
    """
    now = now or utcnow()
    if same_number == "unknown":
        fresh = v.code_received_at is not None and now - v.code_received_at < REUSE_OFFER_WINDOW
        same_number = "reuse" if fresh and v.state == "code_received" else None
    number = v.phone_number or ""
    common = {"service": v.service_name, "number": number, "price": money(v.price_cents)}
    rows: list[tuple[outbox.OutButton, ...]] = []

    def button(key: str, prefix: str) -> outbox.OutButton:
        return outbox.OutButton(t(locale, key), action=f"{prefix}:{v.id}")

    again = outbox.OutButton(t(locale, "vf_btn_again"), action=f"{ACTION_PICK}:{v.service}"[:64])
    if v.state == "requested":
        text = t(locale, "vf_status_requested", **common)
        rows.append((button("vf_btn_refresh", ACTION_REFRESH),))
    elif v.state == "active":
        text = t(locale, "vf_status_active", time_left=_time_left(v, locale, now), **common)
        if number:
            rows.append((outbox.OutButton(t(locale, "vf_btn_copy_number"), copy_text=number),))
        rows.append((button("btn_cancel", ACTION_CANCEL), button("vf_btn_report", ACTION_REPORT)))
        rows.append((button("vf_btn_another", ACTION_ANOTHER), button("vf_btn_refresh", ACTION_REFRESH)))
    elif v.state in ("code_received", "completed"):
        key = "vf_status_code" if v.state == "code_received" else "vf_status_completed"
        if v.code is None:
            key += "_none"
        text = t(locale, key, code=v.code or "", **common)
        if v.code:
            rows.append((outbox.OutButton(t(locale, "vf_btn_copy_code"), copy_text=v.code),))
        same = (
            button("vf_btn_reuse" if same_number == "reuse" else "vf_btn_reactivate", ACTION_SAME_NUMBER)
            if same_number in ("reuse", "reactivate") else None
        )
        if v.state == "code_received":
            rows.append((button("vf_btn_done", ACTION_DONE), *((same,) if same else ())))
        else:
            rows.append(((same,) if same else ()) + (again,))
    elif v.state in ("cancelled", "expired"):
        text = t(locale, f"vf_status_{v.state}", **common)
        rows.append((again,))
    else:
        text = t(locale, "vf_status_failed", reason=_failure_text(v, locale), **common)
        rows.append((again,))
    return outbox.OutgoingMessage(text=text, buttons=tuple(rows), edit_message_id=edit_message_id)


def code_message(v: Verification, sms_text: str, code: str | None, locale: str, *, first: bool) -> outbox.OutgoingMessage:
    """A new chat message (so the phone notifies) with the code, a Copy button and the whole SMS."""
    args = {"service": v.service_name, "number": v.phone_number or "", "sms": sms_text, "code": code or ""}
    if code:
        key = "vf_code_message" if first else "vf_code_message_again"
        buttons = ((outbox.OutButton(t(locale, "vf_btn_copy_code"), copy_text=code),),)
    else:
        key = "vf_sms_message"
        buttons = ()
    return outbox.OutgoingMessage(text=t(locale, key, **args), buttons=buttons)
