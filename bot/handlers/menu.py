"""The main menu, help, /cancel and the generic `cmd:` button that opens any command's flow."""

from __future__ import annotations

from sqlalchemy import delete

from bot.handlers.router import COMMANDS, Request, action, admin_commands, command, user_commands
from bot.handlers.screens import Button, Screen, toast
from core.models import KeyValue
from core.platform.i18n import Html, money


def main_menu(req: Request) -> list[list[Button]]:
    def b(key: str, name: str) -> Button:
        return Button(req.t(key), action=f"cmd:{name}")

    rows = [
        [b("btn_verify", "verify"), b("btn_numbers", "numbers")],
        [b("btn_inbox", "inbox"), b("btn_balance", "balance")],
        [b("btn_topup", "topup"), b("btn_history", "history")],
        [b("btn_settings", "settings"), b("btn_help", "help")],
    ]
    # Only offer what this deployment has (flows register themselves when their feature is installed).
    return [[button for button in row if button.action and button.action[4:] in COMMANDS] for row in rows]


@command("start", private=False)
async def start(req: Request) -> Screen:
    """Greets (a new account gets its bonus line) and shows the main menu."""
    name = req.contact.display_name or req.contact.username or ""
    if req.new_account:
        bonus = req.t("welcome_bonus", amount=money(req.user.balance_cents)) if req.user.balance_cents else ""
        text = req.t("welcome_new", name=name, bonus=Html(bonus))
    else:
        text = req.t("welcome_back", name=name)
    text = Html(f"{text}\n\n{req.t('menu_title', available=money(req.user.available_cents))}")
    return Screen(text, buttons=main_menu(req))


@command("help", private=False)
async def help_(req: Request) -> Screen:
    """Every command with its one-line description; admins see theirs too."""
    lines = [req.t("help_title")]
    lines += [f"/{spec.name} — {req.t(spec.help_key)}" for spec in user_commands()]
    if req.is_admin:
        lines += ["", req.t("help_admin_title")]
        lines += [f"/{spec.name} — {req.t(spec.help_key)}" for spec in admin_commands()]
    return Screen(Html("\n".join(lines)), buttons=[[Button(req.t("btn_menu"), action="cmd:start")]])


@command("cancel", private=False)
async def cancel(req: Request) -> Screen:
    """Drops a half-finished dialog (a pending question); purchases have their own Cancel buttons."""
    async with req.db.transaction() as session:
        result = await session.execute(
            delete(KeyValue).where(KeyValue.key == f"prompt:{req.contact.platform}:{req.contact.platform_user_id}")
        )
    return Screen(req.t("cancelled" if result.rowcount else "nothing_to_cancel"), buttons=main_menu(req))


@action("cmd")
async def open_command(req: Request) -> Screen | list[Screen] | None:
    """A menu button: runs the named command's flow as if typed without arguments."""
    name = req.args[0] if req.args else ""
    spec = COMMANDS.get(name)
    if spec is None:
        return toast(req.t("error_stale_button"))
    if spec.admin and not req.is_admin:
        return toast(req.t("error_admin_only"), alert=True)
    req.args, req.text = req.args[1:], " ".join(req.args[1:])
    return await spec.flow(req)


@action("noop")
async def noop(req: Request) -> Screen:
    """A label-only button (a page number): answered so the spinner stops."""
    return toast("")
