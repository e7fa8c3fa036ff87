"""Numbers from buttons and command arguments: plain ASCII digits within a range, or None for the caller to refuse.

Button data and typed arguments are user input: a forged `inbox:99999999999999999999999` must get the stale-button
answer, not an OverflowError from the database driver. Python's `int()` also takes "٣", " 5", "+5" and "1_000";
none of those is a number anyone typed or any button of ours carries.
"""

from __future__ import annotations

from collections.abc import Sequence

# Primary keys are INTEGER (users, conversations, phone numbers, templates, broadcasts, payments) or, for the
# tables that grow without end (messages, verifications, ledger, audit), BIGINT (core/models.py, BigId).
# PostgreSQL refuses a larger value for the column's type, SQLite beyond 64 bits: either would be a 500.
MAX_ID = 2**31 - 1
MAX_BIG_ID = 2**63 - 1
MAX_OFFSET = 100_000  # rows skipped by a page button; far beyond any real inbox, history or audit log
_MAX_DIGITS = len(str(MAX_BIG_ID))


def parse_int(text: object, *, minimum: int = 0, maximum: int = MAX_BIG_ID) -> int | None:
    """`text` as an int when it is 1 to 19 ASCII digits and `minimum <= value <= maximum`; else None."""
    if not isinstance(text, str) or not 0 < len(text) <= _MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None


def parse_id(text: object, *, big: bool = False) -> int | None:
    """A database id: 1 … 2**31-1, or 1 … 2**63-1 for a BIGINT key (`big`)."""
    return parse_int(text, minimum=1, maximum=MAX_BIG_ID if big else MAX_ID)


def arg_int(args: Sequence[str], index: int, *, minimum: int = 0, maximum: int = MAX_BIG_ID) -> int | None:
    """`args[index]` parsed like `parse_int`; None when it is missing too."""
    return parse_int(args[index], minimum=minimum, maximum=maximum) if 0 <= index < len(args) else None


def arg_id(args: Sequence[str], index: int, *, big: bool = False) -> int | None:
    """`args[index]` as a database id (see `parse_id`), or None."""
    return parse_id(args[index], big=big) if 0 <= index < len(args) else None


def arg_offset(args: Sequence[str], index: int, *, default: int | None = None) -> int | None:
    """`args[index]` as a page offset (0 … MAX_OFFSET); `default` when the argument is absent, None when bad."""
    if index >= len(args):
        return default
    return arg_int(args, index, maximum=MAX_OFFSET)
