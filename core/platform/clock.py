"""Timezone-aware UTC time, the only kind of datetime CumApp stores or compares."""

from datetime import UTC, date, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc_today() -> date:
    return utcnow().date()


def start_of_utc_day(moment: datetime | None = None) -> datetime:
    moment = moment or utcnow()
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
