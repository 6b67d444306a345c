"""Event ids that Kafka's default partitioner puts in a given partition, for tests that feed
a partition directly: the compute stage folds an event only in the partition of its id."""

from __future__ import annotations

from functools import lru_cache

from schemas.topics import partition_for


@lru_cache(maxsize=65_536)
def event_id_in(partition: int, partitions: int, name: str) -> str:
    """``name``, suffixed with the first ``~k`` that makes murmur2 put it in ``partition``
    of ``partitions``: the same id for the same arguments, distinct for distinct names."""
    k = 0
    while partition_for(candidate := f"{name}~{k}", partitions) != partition:
        k += 1
    return candidate
