"""Session-wide real parts: one Tansu broker and one chDB engine for the whole test run.

chDB opens one database path per process for the process's lifetime, so every in-process
test shares the ``chdb`` client below and works in a database of its own; worker processes
started by integration tests own their own chDB paths and are read through ``modelmon query``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.embedded import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def chdb(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('chdb')}")
    yield client
    client.close()
