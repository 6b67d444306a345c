"""Kafka connection settings in the standard client names, and topic administration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    client_config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create the topics that do not exist yet (name -> partitions), retrying until the
    broker answers or ``timeout`` passes. Existing topics are left as they are."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap_servers, **dict(client_config or {})
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(missing)
                log.info("created topics %s", [t.name for t in missing])
            return
        except KafkaConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
        finally:
            await admin.close()


#: What one fetch request of a worker may return, over all its partitions, unless one input
#: message is larger (``max_message_bytes``).
FETCH_MAX_BYTES = 1024 * 1024


def bound_fetch_bytes(app: Any, max_message_bytes: int) -> None:
    """Cap what one fetch request of the app's consumer returns, over all its partitions.

    Faust sets only the per-partition limit, which some brokers (Tansu) do not apply; the
    request's own limit (aiokafka's ``fetch_max_bytes``, 50 MiB by default) they do. What is
    fetched ahead is what a backlog puts in a worker's memory at once, so it is kept to a
    few messages' worth (at least one input message's). Faust does not pass the setting
    through, hence the attribute. Call it once the consumer runs (its fetcher exists).
    """
    max_bytes = max(FETCH_MAX_BYTES, max_message_bytes + 65_536)
    app.consumer._thread._consumer._fetcher._fetch_max_bytes = max_bytes
