"""The `cumapp` command: `run`, `migrate`, `reset-sandbox-balances`, `--version`, `--help`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from core.platform.crypto import keyring_for
from core.platform.i18n import money
from core.platform.logging_setup import configure_logging
from core.platform.settings import SandboxMode, Settings, SettingsError, load_settings
from core.providers.plan import MissingCredentials, plan_providers
from core.version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cumapp",
        description="CumApp: phone verification, two-way SMS and AI help from Telegram, Discord and the terminal.",
    )
    parser.add_argument("--version", action="version", version=f"cumapp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run", help="start every enabled front end, the webhook server and the scheduler (sandbox without credentials)"
    )
    run.add_argument("--no-console", action="store_true", help="do not start the terminal chat")
    run.add_argument("--no-migrate", action="store_true", help="do not upgrade the database schema on start")
    commands.add_parser("migrate", help="bring the database schema up to date")
    commands.add_parser(
        "reset-sandbox-balances",
        help="take back the credit handed out while providers were simulated (sign-up bonuses, grants), through the "
        "ledger, so that the database may run with SANDBOX=false",
    )
    return parser


async def _sandbox_credit(settings: Settings, *, reset: bool) -> str | None:
    """With reset: what was taken back. Without: why SANDBOX=false must not start yet, or None."""
    from core.money import sandbox_credit
    from core.services import build_services

    services = build_services(settings)  # the database with the data keys the settings call for
    try:
        if reset:
            done = await sandbox_credit.reset_sandbox_balances(services.db)
            kept = f"; {money(done.kept_cents)} of it was already spent or held" if done.kept_cents else ""
            return (
                f"took back {money(done.cents)} of sandbox credit from {done.accounts} account(s), one ledger entry "
                f"each (\"{sandbox_credit.RESET_NOTE}\"){kept}; the database may now run with SANDBOX=false"
            )
        found = await sandbox_credit.pending(services.db)
        if not found.accounts:
            return None
        return (
            f"SANDBOX=false, but this database holds {money(found.cents)} of credit handed out while providers were "
            f"simulated ({found.accounts} account(s)); run `cumapp reset-sandbox-balances` first"
        )
    finally:
        await services.db.dispose()


def _load() -> Settings:
    try:
        settings = load_settings()
        plan = plan_providers(settings)
        # Refuses real providers without DATA_ENCRYPTION_KEYS, and makes or checks the sandbox key file, here where
        # a problem is one line instead of a traceback.
        keyring_for(settings, all_sandbox=plan.all_sandbox, strict=True)
    except (SettingsError, MissingCredentials) as error:
        for line in error.lines:
            print(f"cumapp: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    settings = _load()
    configure_logging(settings.log_level, settings.log_format.value)
    if args.command == "migrate":
        from core.platform.migrate import upgrade_to_head

        upgrade_to_head(settings.database_url)
        print("database schema is up to date")
        return 0
    if args.command == "reset-sandbox-balances":
        print(asyncio.run(_sandbox_credit(settings, reset=True)))
        return 0
    if settings.sandbox is SandboxMode.FALSE:
        refusal = asyncio.run(_sandbox_credit(settings, reset=False))
        if refusal is not None:
            print(f"cumapp: {refusal}", file=sys.stderr)
            return 2
    from bot.app import Application

    app = Application(settings, console=False if args.no_console else None, migrate=not args.no_migrate)
    try:
        asyncio.run(app.run_until_signalled())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
