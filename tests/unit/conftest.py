"""Fixtures shared by the unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import faust
import pytest

from pipeline.app import create_app
from pipeline.settings import Settings


@pytest.fixture
def app() -> Iterator[faust.App]:
    """A compute worker's app on topics prefixed ``bc.``, with an event loop of its own;
    nothing started."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield create_app(Settings.load(overrides={"role": "compute", "topic_prefix": "bc."}))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
