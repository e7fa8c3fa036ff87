"""The main menu (and the admins' one), help, /cancel, and the `cmd:` and `ask:` buttons that open any command."""

from __future__ import annotations

from sqlalchemy import delete

from bot.handlers.router import (
    ACTIONS,
    COMMANDS,
    Request,
    action,
    admin_commands,
    command,
    set_prompt,
    user_commands,
)
from bot.handlers.screens import Button, Screen, toast
from bot.handlers.verify import cancel_live
from core.models import KeyValue
from core.money.sandbox_topup import topup_available
from core.platform.i18n import Html, money


def main_menu(req: Request) -> list[list[Button]]:
    """Every flow a person uses, as buttons; admins also get the admin menu."""

    def b(key: str, name: str) -> Button:
        return Button(req.t(key), action=f"cmd:{name}")

    rows = [
        [b("btn_verify", "verify"), b("btn_numbers", "numbers")],
        [Button(req.t("btn_new_sms"), action="num_sms"), b("btn_inbox", "inbox")],
        [b("btn_templates", "templates"), b("btn_suggest", "suggest"), b("btn_analyze", "analyze")],
        [b("btn_balance", "balance"), *_topup(req, b("btn_topup", "topup")), b("btn_history", "history")],
        [b("btn_link", "link"), b("btn_settings", "settings"), b("btn_help", "help")],
    ]
    if req.is_admin:
        rows.append([Button(req.t("btn_admin_menu"), action="menu:admin")])
    return _offered(rows)


def _topup(req: Request, button: Button) -> list[Button]:
    """The Top up button only where it can add credit (not on Discord outside the sandbox, say)."""
    services = req.services
    return [button] if topup_available(services.settings, services.plan, req.contact.platform) else []


def _offered(rows: list[list[Button]]) -> list[list[Button]]:
    """Only what this deployment has (flows register themselves when their feature is installed)."""
    kept = [[button for button in row if _registered(button.action or "")] for row in rows]
    return [row for row in kept if row]


def _registered(action_id: str) -> bool:
    prefix, _, rest = action_id.partition(":")
    if prefix in ("cmd", "ask"):
        return rest.partition(":")[0] in COMMANDS
    return prefix in ACTIONS


# The admin commands behind the admin menu's buttons: opened at once ("cmd"), or after asking for their
# arguments ("ask", for the commands that need a user).
_ADMIN_BUTTONS = (
    (("cmd", "stats", "btn_admin_stats"), ("cmd", "health", "btn_admin_health")),
    (("ask", "user", "btn_admin_user"), ("cmd", "broadcast", "btn_admin_broadcast")),
    (("ask", "grant", "btn_admin_grant"), ("ask", "tier", "btn_admin_tier")),
    (("ask", "ban", "btn_admin_ban"), ("ask", "unban", "btn_admin_unban")),
    (("cmd", "audit", "btn_admin_audit"), ("ask", "refund", "btn_admin_refund")),
)


def admin_menu(req: Request) -> Screen:
    rows = [[Button(req.t(key), action=f"{kind}:{name}") for kind, name, key in row] for row in _ADMIN_BUTTONS]
    rows.append([Button(req.t("btn_menu"), action="cmd:start")])
    return Screen(req.t("admin_menu_title"), buttons=_offered(rows), edit=req.is_button)


@action("menu")
async def menu_button(req: Request) -> Screen:
    """`menu:admin`: the admin commands as buttons (the button is shown to admins only)."""
    if req.args[:1] != ["admin"]:
        return toast(req.t("error_stale_button"))
    if not req.is_admin:
        return toast(req.t("error_admin_only"), alert=True)
    return admin_menu(req)


@action("ask")
async def ask_arguments(req: Request) -> Screen | list[Screen] | None:
    """`ask:<command>`: asks for what the command needs (its usage line), then runs it with the typed text."""
    spec = COMMANDS.get(req.args[0] if req.args else "")
    if spec is None:
        return toast(req.t("error_stale_button"))
    if spec.admin and not req.is_admin:
        return toast(req.t("error_admin_only"), alert=True) if req.is_button else Screen(req.t("error_admin_only"))
    if req.prompt_data is None or not req.text:
        await set_prompt(req, f"ask:{spec.name}")
        usage = Html(req.t(spec.help_key).split(": ", 1)[-1])
        # No buttons: on Discord a question alone opens a text box at once (/cancel or any button drops it).
        return Screen(
            req.t("ask_arguments", command=f"/{spec.name}", usage=usage), prompt=req.t("ask_arguments_placeholder")
        )
    # The typed answer is the command's argument text, as if typed after /<command>.
    req.args, req.is_button = req.text.split(), False
    return await spec.flow(req)


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
    if not result.rowcount:
        live = await cancel_live(req)
        if live is not None:
            return live
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
