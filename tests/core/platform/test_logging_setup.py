"""JSON log lines: one object per record, its time in UTC to the millisecond, `extra` fields as fields."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from core.platform.logging_setup import JsonFormatter, _utc_time


@settings(max_examples=2000, deadline=None)
@given(created=st.floats(min_value=0, max_value=4_102_444_800) | st.integers(0, 4_102_444_800_000).map(
    lambda millis: millis / 1000 + 0.0005))
def test_the_time_is_what_datetime_gives(created: float) -> None:
    assert _utc_time(created) == datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    record = logging.getLogger("cumapp.access").makeRecord(
        "cumapp.access", logging.INFO, __file__, 1, "%s %s", ("POST", "/webhooks/twilio/sms"), None,
        extra={"status": 200, "duration_ms": 1.5, "remote": None, "path": "/é", "obj": 1j},
    )
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["message"] == "POST /webhooks/twilio/sms" and data["level"] == "INFO" and data["logger"] == "cumapp.access"
    assert data["time"] == datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    assert (data["status"], data["duration_ms"], data["remote"], data["path"], data["obj"]) == (200, 1.5, None, "/é", "1j")
    assert "é" in line  # not escaped
