"""The `cumapp` command: `run`, `migrate`, `--version`, `--help`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from core.platform.logging_setup import configure_logging
from core.platform.settings import Settings, SettingsError, load_settings
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
    return parser


def _load() -> Settings:
    try:
        settings = load_settings()
        plan_providers(settings)
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
    from bot.app import Application

    app = Application(settings, console=False if args.no_console else None, migrate=not args.no_migrate)
    try:
        asyncio.run(app.run_until_signalled())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
