"""Fixtures for tests that start and kill real servers and orderflow processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.resilience.harness import Children, PostgresServer, pg_bindir


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts servers and processes and runs for tens of seconds")


@pytest.fixture
def children() -> Iterator[Children]:
    """Processes this test starts; any still running at the end are killed."""
    kids = Children()
    try:
        yield kids
    finally:
        kids.kill_all()


@pytest.fixture
def local_pg(children: Children) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own (initdb'd, started), removed afterwards."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) found; set ORDERFLOW_TEST_PG_BINDIR")
    server = PostgresServer(children, bindir, "-c", "track_commit_timestamp=on")
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client with room for the load's concurrency."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
