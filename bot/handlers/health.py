"""Admin flow /health: providers (reachable, latency, balance against the low-balance threshold), database,
outbox depth and oldest pending delivery, parked deliveries (with a button to send them again), live instances,
error rates in the last hour, version and uptime."""

from __future__ import annotations

from bot.handlers.router import Request, action, command
from bot.handlers.screens import Button, Screen
from bot.render import plain_text
from core.admin import health
from core.platform.i18n import Html, money


def _uptime(req: Request, seconds: float) -> Html:
    minutes = int(seconds) // 60
    return req.t("adm_uptime", days=minutes // 1440, hours=(minutes % 1440) // 60, minutes=minutes % 60)


def _rate(req: Request, rate: health.Rate | None) -> Html:
    if rate is None:
        return req.t("adm_health_rate_unknown")
    return req.t("adm_health_rate", failed=f"{rate.failed:,}", total=f"{rate.total:,}",
                 percent=f"{rate.ratio * 100:.1f}")


def _provider_line(req: Request, status: health.ProviderStatus, threshold: int) -> Html:
    if status.reachable is None:
        state = req.t("adm_health_unchecked")
    elif status.reachable:
        state = req.t("adm_health_reachable", ms=f"{status.latency_ms or 0:.0f}")
    else:
        state = req.t("adm_health_unreachable", error=status.error or "")
    if status.balance_cents is None:
        balance = req.t("adm_health_no_balance")
    elif status.low_balance:
        balance = req.t("adm_health_balance_low", amount=money(status.balance_cents), threshold=money(threshold))
    else:
        balance = req.t("adm_health_balance", amount=money(status.balance_cents))
    return req.t("adm_health_provider", kind=req.t(f"adm_kind_{status.kind}"), name=status.name, state=state,
                 balance=balance)


def health_text(req: Request, report: health.HealthReport) -> Html:
    lines = [req.t("adm_health_title", version=report.version, uptime=_uptime(req, report.uptime_seconds))]
    if report.database_ok:
        lines.append(req.t("adm_health_database_ok", ms=f"{report.database_ms or 0:.0f}"))
    else:
        lines.append(req.t("adm_health_database_down"))
    if report.providers:
        lines += [_provider_line(req, status, report.low_balance_threshold_cents) for status in report.providers]
    else:
        lines.append(req.t("adm_health_no_providers"))
    queue = report.outbox
    lines.append(req.t("adm_health_outbox", pending=f"{queue['pending']:,}", sending=f"{queue['sending']:,}",
                       oldest=f"{float(queue['oldest_pending_seconds']):.0f}", parked=f"{queue['parked']:,}"))
    if report.instances_alive is not None:
        lines.append(req.t("adm_health_instances", count=report.instances_alive))
    rates = report.error_rates
    lines.append(req.t("adm_health_errors", deliveries=_rate(req, rates.get("deliveries")),
                       verifications=_rate(req, rates.get("verifications")), sms=_rate(req, rates.get("sms_out")),
                       handler=f"{report.handler_errors:,}"))
    lines.append(req.t("adm_health_broadcasts", count=report.broadcasts_running))
    return Html("\n".join(lines))


async def _health(req: Request) -> Screen:
    # An admin asking wants fresh answers, but a double tap should not probe every provider twice.
    report = await health.collect(req.services, max_age=10.0)
    health.export_gauges(req.services.metrics, report)
    buttons = [[Button(req.t("adm_btn_refresh"), action="hl:refresh")]]
    retryable = int(report.outbox.get("parked_retryable", 0))
    if retryable:
        buttons.insert(0, [Button(req.t("adm_btn_retry_parked", count=f"{retryable:,}"), action="hl:retry")])
    return Screen(health_text(req, report), buttons=buttons, edit=req.is_button)


@command("health", admin=True)
async def health_command(req: Request) -> Screen:
    """Providers, balances, outbox and error rates at a glance."""
    return await _health(req)


@action("hl", admin=True)
async def health_refresh(req: Request) -> Screen:
    """The buttons under /health: Refresh, and Retry for parked deliveries (a second tap finds none left)."""
    if req.args[:1] == ["retry"]:
        count = await health.retry_parked(req.services, req.user.id)
        screen = await _health(req)
        screen.toast = plain_text(req.t("adm_parked_requeued", count=count) if count else req.t("adm_parked_none"))
        return screen
    return await _health(req)
