"""The aiohttp server: provider webhooks in, health, readiness and metrics out."""
