"""Reads the two set-up commands from the README's Quick start (CI runs the second; a test checks both)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start_commands(text: str | None = None) -> list[str]:
    """The non-empty, non-comment lines of the first code block under the Quick start heading."""
    text = text if text is not None else README.read_text(encoding="utf-8")
    section = re.split(r"^## Quick start\s*$", text, maxsplit=1, flags=re.MULTILINE)
    if len(section) != 2:
        raise ValueError("README has no '## Quick start' section")
    block = re.search(r"```[a-z]*\n(.*?)```", section[1], flags=re.DOTALL)
    if block is None:
        raise ValueError("Quick start has no code block")
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


if __name__ == "__main__":
    commands = quick_start_commands()
    which = sys.argv[1] if len(sys.argv) > 1 else "test"
    print(commands[0] if which == "run" else commands[1])
