"""Operational health for /health, /readyz and Prometheus: providers, balances, outbox, error rates, uptime.

One `collect()` gathers the facts; `/health` formats them for admins, `/readyz` returns `report.as_dict()` as its
details and `export_gauges()` puts the same numbers into the metrics registry. `check_and_alert()` turns them into
deduplicated admin alerts (low balance, a provider down several checks in a row, deliveries being parked, the
outbox stalled). `retry_parked()` is the admin's way to send parked deliveries again.

Provider probes call each provider's `balance_cents()` (the one read-only call every provider offers), measure
how long it took and cache the answer for `PROBE_MAX_AGE` seconds, so a readiness probe every few seconds does
not turn into a stream of calls to TextVerified or Twilio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from core.admin import audit
from core.models import Broadcast, Message, OutboxDelivery, Verification
from core.platform import outbox
from core.platform.clock import utcnow
from core.platform.db import Database
from core.platform.i18n import escape, money, t
from core.platform.metrics import Metrics
from core.version import __version__

log = logging.getLogger(__name__)

DEFAULT_LOW_BALANCE_CENTS = 1_000
PROBE_TIMEOUT = 5.0
PROBE_MAX_AGE = 60.0
DOWN_AFTER_FAILURES = 3  # a provider is reported down to admins after this many failed probes in a row
PARKED_ALERT_THRESHOLD = 5  # parked deliveries in the last hour before admins hear about it
# A delivery waiting this long means a chat platform has been refusing for a while (it is retried for a day).
STALLED_AFTER_SECONDS = 600


@dataclass(frozen=True)
class ProviderStatus:
    """One outside provider as the last probe saw it; `reachable` is None when it was not probed."""

    kind: str  # verification, sms
    name: str
    reachable: bool | None
    latency_ms: float | None = None
    balance_cents: int | None = None
    low_balance: bool = False
    error: str | None = None
    checked_at: datetime | None = None


@dataclass(frozen=True)
class Rate:
    """Failures among attempts in the last hour."""

    failed: int
    total: int

    @property
    def ratio(self) -> float:
        return self.failed / self.total if self.total else 0.0


@dataclass(frozen=True)
class HealthReport:
    version: str
    uptime_seconds: float
    database_ok: bool
    database_ms: float | None
    providers: list[ProviderStatus]
    outbox: dict[str, Any]
    error_rates: dict[str, Rate]
    handler_errors: int
    broadcasts_running: int
    low_balance_threshold_cents: int
    checked_at: datetime = field(default_factory=utcnow)
    # Instances of the app holding their liveness lock on this database (None on SQLite or when unknown).
    instances_alive: int | None = None

    @property
    def providers_ok(self) -> bool:
        return all(p.reachable is not False for p in self.providers)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe details for /readyz."""
        return {
            "version": self.version,
            "uptime_seconds": round(self.uptime_seconds, 1),
            "database": {"ok": self.database_ok, "ms": _round(self.database_ms)},
            "providers": [
                {**{k: v for k, v in asdict(p).items() if k != "checked_at"}, "latency_ms": _round(p.latency_ms)}
                for p in self.providers
            ],
            "outbox": {**self.outbox, "oldest_pending_seconds": round(float(self.outbox["oldest_pending_seconds"]), 1)},
            "error_rates_last_hour": {
                name: {"failed": rate.failed, "total": rate.total, "ratio": round(rate.ratio, 4)}
                for name, rate in self.error_rates.items()
            },
            "handler_errors": self.handler_errors,
            "broadcasts_running": self.broadcasts_running,
            "low_balance_threshold_cents": self.low_balance_threshold_cents,
            "instances_alive": self.instances_alive,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def low_balance_threshold(settings: Any) -> int:
    """LOW_BALANCE_THRESHOLD_CENTS (settings field `low_balance_threshold_cents`), 1,000 cents when absent."""
    value = getattr(settings, "low_balance_threshold_cents", None)
    return DEFAULT_LOW_BALANCE_CENTS if value is None else int(value)


def providers_of(services: Any) -> list[tuple[str, Any]]:
    """(kind, provider) for every provider the services hold; either service may be missing."""
    found: list[tuple[str, Any]] = []
    verification = getattr(services, "verification", None)
    provider = getattr(verification, "provider", None)
    if provider is not None:
        found.append(("verification", provider))
    messaging = getattr(services, "messaging", None)
    sms_providers = getattr(messaging, "providers", None)
    if isinstance(sms_providers, dict):
        found += [("sms", p) for p in sms_providers.values()]
    elif isinstance(sms_providers, list | tuple):
        found += [("sms", p) for p in sms_providers]
    elif getattr(messaging, "provider", None) is not None:
        found.append(("sms", messaging.provider))
    return found


@dataclass
class _ProbeMemory:
    status: ProviderStatus
    at: float
    failures_in_row: int = 0


# Per provider object, forgotten with it (an id() key could be reused by a later object and lie about it).
_probes: weakref.WeakKeyDictionary[Any, _ProbeMemory] = weakref.WeakKeyDictionary()


def _remembered(provider: Any) -> _ProbeMemory | None:
    try:
        return _probes.get(provider)
    except TypeError:  # not weak-referenceable or not hashable: no memory, every probe is fresh
        return None


def _remember(provider: Any, memory: _ProbeMemory) -> None:
    with contextlib.suppress(TypeError):
        _probes[provider] = memory


async def probe(kind: str, provider: Any, threshold_cents: int, *, max_age: float = PROBE_MAX_AGE,
                within: float = PROBE_TIMEOUT) -> ProviderStatus:
    """Reachability, latency and balance of one provider, from cache when younger than `max_age` seconds."""
    name = str(getattr(provider, "name", type(provider).__name__))
    memory = _remembered(provider)
    if memory is not None and time.monotonic() - memory.at < max_age:
        return memory.status
    reader = getattr(provider, "balance_cents", None)
    if reader is None:
        status = ProviderStatus(kind, name, None)
    else:
        started = time.monotonic()
        try:
            async with asyncio.timeout(within):
                balance = await reader()
        except Exception as error:  # any failure means "not reachable"; the reason is shown to admins
            latency = (time.monotonic() - started) * 1000
            status = ProviderStatus(
                kind, name, False, latency_ms=latency, error=f"{type(error).__name__}: {error}"[:200] or "error",
                checked_at=utcnow(),
            )
            log.warning("health: %s provider %s unreachable: %s", kind, name, status.error)
        else:
            latency = (time.monotonic() - started) * 1000
            balance = None if balance is None else int(balance)
            status = ProviderStatus(
                kind, name, True, latency_ms=latency, balance_cents=balance,
                low_balance=balance is not None and balance < threshold_cents, checked_at=utcnow(),
            )
    failures = (memory.failures_in_row if memory else 0) + 1 if status.reachable is False else 0
    _remember(provider, _ProbeMemory(status, time.monotonic(), failures))
    return status


def failures_in_row(provider: Any) -> int:
    memory = _remembered(provider)
    return memory.failures_in_row if memory else 0


async def error_rates(db: Database, since: datetime) -> dict[str, Rate]:
    """Failures in the last hour: chat deliveries parked, verifications failed, outbound SMS not delivered."""
    async with db.read() as session:
        deliveries = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(case((OutboxDelivery.state == "parked", 1), else_=0)), 0))
                .where(OutboxDelivery.created_at >= since)
            )
        ).one()
        verifications = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(case((Verification.state == "failed", 1), else_=0)), 0))
                .where(Verification.created_at >= since)
            )
        ).one()
        sms = (
            await session.execute(
                select(
                    func.count(),
                    func.coalesce(
                        func.sum(case((Message.status.in_(("failed", "undelivered", "rejected")), 1), else_=0)), 0
                    ),
                ).where(Message.created_at >= since, Message.direction == "outbound")
            )
        ).one()
    return {
        "deliveries": Rate(int(deliveries[1]), int(deliveries[0])),
        "verifications": Rate(int(verifications[1]), int(verifications[0])),
        "sms_out": Rate(int(sms[1]), int(sms[0])),
    }


async def _database(db: Database) -> tuple[bool, float | None]:
    started = time.monotonic()
    ok = await db.ping()
    return ok, (time.monotonic() - started) * 1000 if ok else None


async def collect(services: Any, *, max_age: float = PROBE_MAX_AGE) -> HealthReport:
    """Every fact of the health page; a failing part is reported as such, never raised."""
    db: Database = services.db
    threshold = low_balance_threshold(services.settings)
    database_ok, database_ms = await _database(db)
    statuses = await asyncio.gather(
        *(probe(kind, provider, threshold, max_age=max_age) for kind, provider in providers_of(services))
    )
    queue: dict[str, Any] = {
        "pending": 0, "sending": 0, "oldest_pending_seconds": 0.0, "parked": 0, "parked_retryable": 0,
    }
    rates: dict[str, Rate] = {}
    running = 0
    instances: int | None = None
    if database_ok:
        try:
            queue = await outbox.outbox_health(db)
            rates = await error_rates(db, utcnow() - timedelta(hours=1))
            async with db.read() as session:
                queue["parked_retryable"] = await outbox.count_retryable_parked(session)
                running = int(
                    await session.scalar(select(func.count()).select_from(Broadcast).where(Broadcast.state == "running"))
                    or 0
                )
            liveness = getattr(getattr(services, "outbox", None), "liveness", None)
            if liveness is not None:
                instances = await liveness.instances_alive()
        except Exception:
            log.warning("health: reading the database failed", exc_info=True)
    metrics: Metrics | None = getattr(services, "metrics", None)
    handler_errors = 0
    if metrics is not None:
        handler_errors = int(metrics.registry.get_sample_value("cumapp_handler_errors_total") or 0)
    return HealthReport(
        version=__version__, uptime_seconds=float(getattr(services, "uptime_seconds", 0.0)),
        database_ok=database_ok, database_ms=database_ms, providers=list(statuses), outbox=queue,
        error_rates=rates, handler_errors=handler_errors, broadcasts_running=running,
        low_balance_threshold_cents=threshold, instances_alive=instances,
    )


async def retry_parked(services: Any, actor_user_id: int | None) -> int:
    """An admin sends the parked deliveries again (those whose chat can still be reached), each in its chat's
    queue with a fresh day of retries; recorded in the audit log. Returns how many were queued."""
    async with services.db.transaction() as session:
        count = await outbox.requeue_parked(session)
        if count:
            await audit.record(
                session, actor_user_id=actor_user_id, action="retry parked", target_user_id=None,
                after={"deliveries": count},
            )
    if count:
        log.info("health: %d parked deliveries queued again by user %s", count, actor_user_id)
    return count


# --- Prometheus ----------------------------------------------------------------------------------------------------


class _Gauges:
    def __init__(self, metrics: Metrics) -> None:
        from prometheus_client import Gauge

        r = metrics.registry
        self.provider_up = Gauge("cumapp_provider_up", "1 when the provider answered its last probe", ["kind", "provider"],
                                 registry=r)
        self.provider_balance = Gauge(
            "cumapp_provider_balance_cents", "Our balance at the provider", ["kind", "provider"], registry=r
        )
        self.provider_probe = Gauge(
            "cumapp_provider_probe_seconds", "How long the last probe took", ["kind", "provider"], registry=r
        )
        self.parked = Gauge("cumapp_outbox_parked", "Deliveries given up on", registry=r)
        self.error_ratio = Gauge(
            "cumapp_error_ratio_last_hour", "Failed share of attempts in the last hour", ["what"], registry=r
        )
        self.broadcasts = Gauge("cumapp_broadcasts_running", "Broadcasts being sent", registry=r)
        self.database_up = Gauge("cumapp_database_up", "1 when the database answered", registry=r)


def export_gauges(metrics: Metrics, report: HealthReport) -> None:
    """Put a report's figures into the registry (gauges are created on first use)."""
    gauges = metrics.__dict__.get("_health_gauges")
    if gauges is None:
        gauges = metrics.__dict__["_health_gauges"] = _Gauges(metrics)
    for status in report.providers:
        labels = (status.kind, status.name)
        if status.reachable is not None:
            gauges.provider_up.labels(*labels).set(1 if status.reachable else 0)
        if status.balance_cents is not None:
            gauges.provider_balance.labels(*labels).set(status.balance_cents)
        if status.latency_ms is not None:
            gauges.provider_probe.labels(*labels).set(status.latency_ms / 1000)
    metrics.outbox_depth.set(report.outbox["pending"])
    metrics.outbox_oldest_seconds.set(report.outbox["oldest_pending_seconds"])
    gauges.parked.set(report.outbox["parked"])
    for name, rate in report.error_rates.items():
        gauges.error_ratio.labels(name).set(rate.ratio)
    gauges.broadcasts.set(report.broadcasts_running)
    gauges.database_up.set(1 if report.database_ok else 0)


REPORT_MAX_AGE = 15.0
_CACHE_ATTRIBUTE = "_cumapp_health_report"  # kept on the services object itself: one per app, gone with it


async def refresh_gauges(services: Any, *, max_age: float = REPORT_MAX_AGE) -> HealthReport:
    """Collect and export, reusing a report younger than `max_age` seconds; for /metrics and /readyz, which
    are polled every few seconds and should not each count the last hour's rows again."""
    cached: tuple[float, HealthReport] | None = getattr(services, _CACHE_ATTRIBUTE, None)
    if cached is not None and time.monotonic() - cached[0] < max_age:
        return cached[1]
    report = await collect(services)
    export_gauges(services.metrics, report)
    setattr(services, _CACHE_ATTRIBUTE, (time.monotonic(), report))
    return report


# --- alerts --------------------------------------------------------------------------------------------------------


async def check_and_alert(services: Any, report: HealthReport | None = None) -> list[str]:
    """Alert admins about a low balance, a provider failing probes in a row, deliveries being parked.

    Meant for a periodic job; alerts.alert_admins deduplicates, so calling it every minute is fine.
    Returns the alert kinds queued by this call."""
    from core.admin.alerts import alert_admins

    report = report or await collect(services, max_age=0)
    if not report.database_ok:
        return []
    providers = {(kind, str(getattr(p, "name", ""))): p for kind, p in providers_of(services)}
    queued: list[str] = []
    async with services.db.transaction() as session:
        for status in report.providers:
            if status.low_balance and status.balance_cents is not None:
                text = t("en", "adm_alert_low_balance", provider=status.name, balance=money(status.balance_cents),
                         threshold=money(report.low_balance_threshold_cents))
                if await alert_admins(session, services.settings, kind="provider balance", key=status.name,
                                      text=text):
                    queued.append("provider balance")
            provider = providers.get((status.kind, status.name))
            if status.reachable is False and provider is not None and failures_in_row(provider) >= DOWN_AFTER_FAILURES:
                text = t("en", "adm_alert_provider_down", provider=status.name, failures=failures_in_row(provider),
                         error=escape(status.error or ""))
                if await alert_admins(session, services.settings, kind="provider down", key=status.name, text=text):
                    queued.append("provider down")
        parked = report.error_rates.get("deliveries")
        if parked is not None and parked.failed >= PARKED_ALERT_THRESHOLD:
            text = t("en", "adm_alert_parked", count=parked.failed, total=parked.total)
            if await alert_admins(session, services.settings, kind="deliveries parked", key="last hour", text=text):
                queued.append("deliveries parked")
        oldest = float(report.outbox.get("oldest_pending_seconds", 0.0))
        if oldest >= STALLED_AFTER_SECONDS:
            text = t("en", "adm_alert_outbox_stalled", minutes=int(oldest // 60), pending=report.outbox["pending"])
            if await alert_admins(session, services.settings, kind="outbox stalled", key="oldest", text=text):
                queued.append("outbox stalled")
    return queued
