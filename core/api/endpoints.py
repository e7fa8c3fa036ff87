"""Webhook endpoints of an account: where its events are also POSTed, each with its own signing secret.

Only https addresses on public networks are taken, so the server cannot be pointed at its own network, unless
API_WEBHOOKS_ALLOW_PRIVATE=true (an operator's own network, tests), which also allows http and loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from urllib.parse import urlsplit

from sqlalchemy import select, update

from core.models import ApiWebhookEndpoint
from core.platform.clock import utcnow
from core.platform.db import Database

MAX_ENDPOINTS = 5
URL_MAX = 2048
SECRET_PREFIX = "whsec_"
RESOLVE_SECONDS = 3.0


class BadEndpoint(Exception):
    """The address is refused; the message says why (shown to the integrator)."""


class TooManyEndpoints(Exception):
    pass


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_global and not ip.is_multicast


async def check_url(url: str, *, allow_private: bool) -> str:
    """The address when it may receive events; BadEndpoint otherwise."""
    url = url.strip()
    if len(url) > URL_MAX:
        raise BadEndpoint(f"the address is longer than {URL_MAX} characters")
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. "Invalid IPv6 URL"
        raise BadEndpoint("the address is not a URL") from error
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise BadEndpoint("the address must start with https://")
    if not parts.hostname or parts.username or parts.password:
        raise BadEndpoint("the address needs a host and no user name or password")
    try:
        port = parts.port
    except ValueError as error:
        raise BadEndpoint("the address has a bad port") from error
    if allow_private:
        return url
    host = parts.hostname
    try:
        addresses = {host} if _is_ip(host) else {
            info[4][0] for info in await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port or 443, type=socket.SOCK_STREAM), RESOLVE_SECONDS)
        }
    except (OSError, UnicodeError, ValueError, TimeoutError) as error:  # IDNA refuses over-long labels with UnicodeError
        raise BadEndpoint(f"the host {host[:100]} does not resolve") from error
    if not addresses or not all(_public(str(address).split("%")[0]) for address in addresses):
        raise BadEndpoint("the address must be on a public network")
    return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Endpoints:
    """Creating, listing and deleting an account's webhook endpoints."""

    def __init__(self, db: Database, *, allow_private: bool) -> None:
        self.db = db
        self.allow_private = allow_private

    async def create(self, user_id: int, url: str) -> ApiWebhookEndpoint:
        url = await check_url(url, allow_private=self.allow_private)
        async with self.db.transaction() as session:
            live = (await session.scalars(select(ApiWebhookEndpoint.id).where(
                ApiWebhookEndpoint.user_id == user_id, ApiWebhookEndpoint.deleted_at.is_(None)))).all()
            if len(live) >= MAX_ENDPOINTS:
                raise TooManyEndpoints()
            endpoint = ApiWebhookEndpoint(user_id=user_id, url=url, secret=SECRET_PREFIX + secrets.token_urlsafe(32),
                                          created_at=utcnow())
            session.add(endpoint)
            await session.flush()
            return endpoint

    async def list(self, user_id: int) -> list[ApiWebhookEndpoint]:
        async with self.db.read() as session:
            rows = await session.scalars(select(ApiWebhookEndpoint).where(
                ApiWebhookEndpoint.user_id == user_id, ApiWebhookEndpoint.deleted_at.is_(None)
            ).order_by(ApiWebhookEndpoint.id))
            return list(rows.all())

    async def delete(self, user_id: int, endpoint_id: int) -> bool:
        async with self.db.transaction() as session:
            result = await session.execute(
                update(ApiWebhookEndpoint).where(
                    ApiWebhookEndpoint.id == endpoint_id, ApiWebhookEndpoint.user_id == user_id,
                    ApiWebhookEndpoint.deleted_at.is_(None),
                ).values(deleted_at=utcnow()).execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)

    async def live(self, endpoint_id: int) -> ApiWebhookEndpoint | None:
        async with self.db.read() as session:
            endpoint = await session.get(ApiWebhookEndpoint, endpoint_id)
        return endpoint if endpoint is not None and endpoint.deleted_at is None else None
