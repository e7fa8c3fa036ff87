"""What can be verified and at what price: the provider's services, popular picks, search, pages and quotes."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from core.models import User
from core.platform.settings import Settings
from core.providers.verification import ServiceInfo
from core.verification.errors import UnknownService
from core.verification.gateway import ProviderGateway

# Shown first by /verify, in this order, when the provider offers them.
POPULAR_SERVICES = (
    "whatsapp", "google", "telegram", "facebook", "instagram", "discord", "tiktok", "microsoft", "apple", "amazon",
)
POPULAR_LIMIT = 8
CATALOGUE_PAGE = 8


@dataclass(frozen=True)
class Quote:
    """What one verification of `service` costs this user now: the provider's price plus the tier's markup."""

    service: str
    name: str
    provider_cost_cents: int
    price_cents: int


@dataclass(frozen=True)
class CataloguePage:
    items: list[ServiceInfo]
    page: int
    pages: int


def price_with_markup(cost_cents: int, markup_percent: int) -> int:
    """Provider cost plus markup, rounded up to the next cent so we never sell below cost."""
    return -(-cost_cents * (100 + markup_percent) // 100)


def _normalise(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def _match_score(query: str, service: ServiceInfo) -> int:
    """How well `query` names `service`: 100 exact, then prefix, word prefix, substring, then typo distance."""
    q = _normalise(query)
    if not q:
        return 0
    code, name = _normalise(service.code), _normalise(service.name)
    words = [_normalise(word) for word in re.split(r"[\s/()\-_,.]+", service.name) if word]
    if q in (code, name):
        return 100
    if code.startswith(q) or name.startswith(q):
        return 80
    if any(word.startswith(q) for word in words):
        return 70
    if q in code or q in name:
        return 60
    ratio = max(difflib.SequenceMatcher(None, q, candidate).ratio() for candidate in [code, *words])
    return int(ratio * 50) if ratio >= 0.75 else 0


class Catalogue:
    """The provider's service list (it caches it) seen through our ordering, search and the user's markup."""

    def __init__(self, gateway: ProviderGateway, settings: Settings) -> None:
        self.gateway = gateway
        self.settings = settings

    async def services(self) -> list[ServiceInfo]:
        return await self.gateway.call("services", self.gateway.provider.list_services())

    async def popular_services(self) -> list[ServiceInfo]:
        by_code = {service.code: service for service in await self.services()}
        popular = [by_code[code] for code in POPULAR_SERVICES if code in by_code]
        return popular[:POPULAR_LIMIT]

    async def search_services(self, query: str) -> list[ServiceInfo]:
        """Services matching `query`, best first; an exact name or code comes alone."""
        scored = [(score, service) for service in await self.services() if (score := _match_score(query, service))]
        scored.sort(key=lambda pair: (-pair[0], pair[1].name.lower()))
        if scored and scored[0][0] == 100:
            return [scored[0][1]]
        return [service for _, service in scored]

    async def catalogue(self, page: int) -> CataloguePage:
        items = sorted(await self.services(), key=lambda service: service.name.lower())
        pages = max(1, -(-len(items) // CATALOGUE_PAGE))
        page = min(max(0, page), pages - 1)
        return CataloguePage(items[page * CATALOGUE_PAGE : (page + 1) * CATALOGUE_PAGE], page, pages)

    async def service_info(self, service: str) -> ServiceInfo:
        for info in await self.services():
            if info.code == service:
                return info
        raise UnknownService(service)

    async def quote(self, user: User, service: str) -> Quote:
        """The price read from the provider now (never from a button), with the user's tier markup."""
        info = await self.service_info(service)
        price = await self.gateway.call("price", self.gateway.provider.price(info.code))
        markup = self.settings.tier_limits[user.tier].markup_percent
        return Quote(info.code, info.name, price.cost_cents, price_with_markup(price.cost_cents, markup))
