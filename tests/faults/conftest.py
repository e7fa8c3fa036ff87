"""Fixtures for the fault tests: a fresh database on the test PostgreSQL, and a throwaway cluster to restart."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conftest import PG_MISSING, TEST_DATABASE_URL
from tests.faults.cluster import ThrowawayCluster
from tests.faults.fleet import create_database, drop_database


@pytest.fixture
async def fault_db() -> AsyncIterator[str]:
    """An empty database of its own on the test PostgreSQL (the processes migrate and share it)."""
    if not TEST_DATABASE_URL:
        pytest.skip(PG_MISSING)
    name = f"cumapp_faults_{uuid.uuid4().hex[:10]}"
    url = await create_database(TEST_DATABASE_URL, name)
    yield url
    await drop_database(TEST_DATABASE_URL, name)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ThrowawayCluster]:
    """A private PostgreSQL the tests may stop and restart; never the shared one."""
    if not TEST_DATABASE_URL:
        pytest.skip(PG_MISSING)
    try:
        made = ThrowawayCluster()
    except (FileNotFoundError, OSError) as error:
        pytest.skip(f"cannot make a throwaway PostgreSQL cluster: {error}")
    made.start()
    try:
        yield made
    finally:
        made.destroy()
