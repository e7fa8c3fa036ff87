"""The integrator API's domain: keys, idempotency, events and their webhook deliveries and live fan-out.

keys: making, checking and revoking API keys; idempotency: `Idempotency-Key` answers kept and replayed;
events: events written in the caller's transaction; endpoints: where events are POSTed; delivery: the outbox
sender that POSTs them, signed; hub: live fan-out to WebSockets across instances; ratelimit: a budget per key.
"""
