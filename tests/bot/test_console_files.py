"""The terminal chat's files (the /history export holds phone numbers): 0600 in a folder only this user opens."""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path

import pytest

from bot.console import ConsoleFrontEnd, private_folder, write_private_file
from core.services import Services


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def test_the_history_export_is_private_to_this_user(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the shared temp folder, as /tmp is
    old_umask = os.umask(0o022)  # the usual one, under which files came out 0644 and folders 0755
    try:
        out = io.StringIO()
        console = ConsoleFrontEnd(services, out=out)
        await console.handle_line("/history")
        await console.handle_line("/grant #1 1")
        await console.handle_line("/history")
        export = next(n for n, b in console.chat.choices.items() if b.action == "histcsv")
        await console.handle_line(str(export))
    finally:
        os.umask(old_umask)
    saved = Path(out.getvalue().split("[file saved: ", 1)[1].split("]", 1)[0])
    assert saved.parent == tmp_path / f"cumapp-console-{os.getuid()}"
    assert _mode(saved.parent) == 0o700 and _mode(saved) == 0o600
    assert os.lstat(saved.parent).st_uid == os.getuid()
    assert b"grant" in _read(saved)


def test_an_old_open_folder_and_file_are_tightened(tmp_path: Path) -> None:
    folder = tmp_path / f"cumapp-console-{os.getuid()}"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    old = folder / "cumapp-history-1.csv"
    old.write_bytes(b"old")
    old.chmod(0o644)
    assert private_folder(tmp_path) == folder and _mode(folder) == 0o700
    path = write_private_file(folder, "cumapp-history-1.csv", b"new")
    assert path == old and _mode(path) == 0o600 and path.read_bytes() == b"new"
    escaped = write_private_file(folder, "../../outside.csv", b"x")
    assert escaped.parent == folder  # a name never leads outside the folder


def test_a_folder_planted_by_someone_else_is_not_used(tmp_path: Path) -> None:
    """Another local user (here: a symlink to their folder) cannot make our exports land where they can read them."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    (tmp_path / f"cumapp-console-{os.getuid()}").symlink_to(theirs)
    folder = private_folder(tmp_path)
    assert folder.resolve() != theirs.resolve() and _mode(folder) == 0o700
    write_private_file(folder, "x.csv", b"x")
    assert list(theirs.iterdir()) == []
