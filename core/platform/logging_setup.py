"""Logging set-up: readable console lines or one JSON object per line, `level` in capitals."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra fields given with `extra=` are kept."""

    _encode = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps builds an encoder per call with arguments

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname.upper(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                data[key] = value if value is None or type(value) in _PLAIN else str(value)
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return self._encode(data)


_PLAIN = frozenset({str, int, float, bool})
# The last second formatted, as one tuple so that a thread reads a second and its text together: a busy server
# logs many lines within each.
_last_second: tuple[int, str] = (-1, "")


def _utc_time(created: float) -> str:
    """`created` as ISO 8601 in UTC to the millisecond, as datetime.isoformat(timespec="milliseconds") gives."""
    fraction, whole = math.modf(created)
    micros = round(fraction * 1e6)  # as datetime.fromtimestamp rounds
    second, milli = int(whole) + micros // 1_000_000, micros % 1_000_000 // 1000
    global _last_second
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{milli:03d}+00:00"


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    # Neither format shows where a line was logged from, nor the thread or the process: the logging HOWTO's
    # "Optimization" settings, so that a record is not made with a walk up the stack and three lookups it never
    # shows. Every webhook's access line is a record: 31 µs of CPU each before, 19 µs after (JSON).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_libraries(level)


# Libraries that log every HTTP request at INFO would drown our own lines (and httpx's request lines hold the
# Telegram bot token in the URL).
NOISY_LOGGERS = ("httpx", "httpcore", "aiohttp.access", "apscheduler", "telegram.ext.Updater", "discord",
                 "alembic.runtime.plugins", "twilio.http_client", "twilio.async_http_client")


def quiet_libraries(level: str = "INFO") -> None:
    """The noisy libraries at WARNING or above, whatever LOG_LEVEL says (the test suite's log scan uses it too)."""
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
