"""The `cumapp` command: `run`, `migrate`, `reset-sandbox-balances`, `rotate-keys`, `--version`, `--help`."""

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
    rotate = commands.add_parser(
        "rotate-keys",
        help="re-encrypt every encrypted row with the first key of DATA_ENCRYPTION_KEYS, in batches; a run stopped "
        "part way is finished by running it again",
    )
    rotate.add_argument("--batch-size", type=int, default=500, help="rows per transaction (500)")
    rotate.add_argument("--max-batches", type=int, help="stop after this many batches (run again to go on)")
    return parser


def _rotate_keys(settings: Settings, batch_size: int, max_batches: int | None) -> int:
    """`cumapp rotate-keys`: progress at most once a second, then the summary; 0 when every row is done."""
    import time

    from core.platform.rotate_keys import rotate_database

    keyring = keyring_for(settings, all_sandbox=plan_providers(settings).all_sandbox)
    if not keyring.encrypts:
        print("cumapp: DATA_ENCRYPTION_KEYS: unset, so there is no key to re-encrypt with", file=sys.stderr)
        return 2
    shown = [0.0]

    def progress(line: str) -> None:
        if time.monotonic() - shown[0] >= 1.0:
            shown[0] = time.monotonic()
            print(line, flush=True)

    report = asyncio.run(rotate_database(settings.database_url, keyring, batch_size=max(1, batch_size),
                                         max_batches=max_batches, progress=progress))
    for column in report.columns:
        print(f"  {column.name}: {column.rows} row(s), {column.rewritten} re-encrypted, {column.current} already "
              f"under the first key{'' if column.done else ' (not finished)'}")
    print(report.summary())
    return 0 if report.done else 3


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
        from bot.startup_errors import database_url_problem

        problem = database_url_problem(settings.database_url)
        if problem is not None:
            # Before the key file beside the database is made, which would name DATA_ENCRYPTION_KEYS instead.
            raise SettingsError([problem])
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
    try:
        if args.command == "migrate":
            from core.platform.migrate import upgrade_to_head

            upgrade_to_head(settings.database_url)
            print("database schema is up to date")
            return 0
        if args.command == "reset-sandbox-balances":
            print(asyncio.run(_sandbox_credit(settings, reset=True)))
            return 0
        if args.command == "rotate-keys":
            return _rotate_keys(settings, args.batch_size, args.max_batches)
        if settings.sandbox is SandboxMode.FALSE:
            refusal = asyncio.run(_sandbox_credit(settings, reset=False))
            if refusal is not None:
                print(f"cumapp: {refusal}", file=sys.stderr)
                return 2
    except Exception as error:
        return _startup_failure(error, settings)
    from bot.app import Application

    app = Application(settings, console=False if args.no_console else None, migrate=not args.no_migrate)
    try:
        asyncio.run(app.run_until_signalled())
    except KeyboardInterrupt:
        pass
    except Exception as error:
        return _startup_failure(error, settings)
    return 0


def _startup_failure(error: Exception, settings: Settings) -> int:
    """A port in use or a database that cannot be used: one line naming the setting, exit code 1; else re-raised."""
    from bot.startup_errors import explain

    line = explain(error, settings)
    if line is None:
        raise error
    print(f"cumapp: {line}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
