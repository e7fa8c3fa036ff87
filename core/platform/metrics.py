"""Prometheus metrics, one registry per running app so tests and several apps in a process never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric CumApp exports; names are stable because dashboards rely on them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "cumapp_webhooks_total", "Provider webhooks by provider and outcome", ["provider", "outcome"], registry=r
        )
        self.relay_latency = Histogram(
            "cumapp_relay_latency_seconds", "Webhook received to chat API accepted", ["kind"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.outbox_depth = Gauge("cumapp_outbox_depth", "Deliveries waiting to be sent", registry=r)
        self.outbox_oldest_seconds = Gauge(
            "cumapp_outbox_oldest_pending_seconds", "Age of the oldest pending delivery", registry=r
        )
        self.delivery_attempts = Counter(
            "cumapp_delivery_attempts_total", "Chat delivery attempts by platform and outcome", ["platform", "outcome"],
            registry=r,
        )
        self.deliveries_parked = Counter(
            "cumapp_deliveries_parked_total", "Deliveries given up after the last attempt", ["platform"], registry=r
        )
        self.commands = Counter("cumapp_commands_total", "Chat commands and buttons", ["platform", "name"], registry=r)
        self.handler_errors = Counter("cumapp_handler_errors_total", "Unexpected errors in handlers", registry=r)
        self.provider_calls = Counter(
            "cumapp_provider_calls_total", "Outside API calls by provider and outcome", ["provider", "outcome"],
            registry=r,
        )
        self.provider_latency = Histogram(
            "cumapp_provider_latency_seconds", "Outside API call time", ["provider"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ledger_entries = Counter("cumapp_ledger_entries_total", "Ledger entries by kind", ["kind"], registry=r)
        self.ai_requests = Counter("cumapp_ai_requests_total", "AI answers by engine", ["engine"], registry=r)
        self.up_since = Gauge("cumapp_start_time_seconds", "Unix time the process started", registry=r)
