"""Session-wide real parts: one Tansu broker and one chDB engine for the whole test run.

chDB opens one database path per process for the process's lifetime, so every in-process
test shares the ``chdb`` client below and works in a database of its own; worker processes
started by integration tests own their own chDB paths and are read through ``modelmon query``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.embedded import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB path of this test process."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="session")
def chdb(chdb_path: Path):  # type: ignore[no-untyped-def]
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
    yield client
    client.close()
