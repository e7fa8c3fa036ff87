"""The common start-up failures as one line naming the setting to change: a port in use, the database unreachable
or refusing us, a database URL that does not parse. Anything else is a defect and keeps its traceback."""

from __future__ import annotations

import errno
from pathlib import Path

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from core.platform.db_faults import database_unavailable, describe
from core.platform.settings import Settings, mask_url
from webhooks.server import ListenError

# asyncpg's answers that mean "wrong user, password or database name", not "not there".
_REFUSED = (
    asyncpg.exceptions.InvalidPasswordError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
)


def _causes(error: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in found:
        found.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
    return found


def database_url_problem(database_url: str) -> str | None:
    """What is wrong with DATABASE_URL before anything connects: it does not parse, or an SQLite file's folder does
    not exist (nothing could be created there); None when nothing is."""
    try:
        url = make_url(database_url)
        url.port  # noqa: B018  (a port that is not a number only fails when read)
    except (sa_exc.ArgumentError, ValueError) as error:
        return f"DATABASE_URL: {mask_url(database_url)} is not a valid database URL ({error}); fix DATABASE_URL"
    database = url.database or ""
    if not url.drivername.startswith("sqlite") or database in ("", ":memory:") or database.startswith("file:"):
        return None
    folder = Path(database).expanduser().resolve().parent
    if folder.is_dir():
        return None
    return (f"DATABASE_URL: the folder {folder} for the SQLite file does not exist; create it or set DATABASE_URL "
            "to a file in an existing folder")


def explain(error: BaseException, settings: Settings) -> str | None:
    """One line for a start-up failure people cause by their settings or surroundings; None for anything else."""
    causes = _causes(error)
    listen = next((c for c in causes if isinstance(c, ListenError)), None)
    if listen is not None:
        where = f"{listen.host}:{listen.port}"
        if listen.errno == errno.EADDRINUSE:
            return (f"{listen.port_setting}: port {listen.port} is already in use (another `cumapp run`?); stop that "
                    f"program or set {listen.port_setting} to a free port")
        if listen.errno == errno.EACCES:
            return (f"{listen.port_setting}: port {listen.port} needs privileges this user lacks; set "
                    f"{listen.port_setting} to 1024 or above")
        return (f"{listen.host_setting}: cannot listen on {where} ({listen.reason}); set {listen.host_setting} to an "
                "address of this machine (0.0.0.0 for all)")
    url = mask_url(settings.database_url)
    if any(isinstance(c, sa_exc.ArgumentError) for c in causes):
        return f"DATABASE_URL: {url} is not a valid database URL ({describe(error)}); fix DATABASE_URL"
    refused = next((c for c in causes if isinstance(c, _REFUSED)), None)
    if refused is not None:
        return (f"DATABASE_URL: the database at {url} refused the connection: {str(refused).strip()}; check the "
                "user, password and database name in DATABASE_URL")
    if database_unavailable(error):
        reason = describe(causes[-1])
        return (f"DATABASE_URL: cannot reach the database at {url} ({reason}); start it, or set DATABASE_URL to one "
                "that answers")
    return None
