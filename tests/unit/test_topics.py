"""The partitioner every producer of joined events must agree with: Kafka's murmur2, here as
aiokafka (and the Java client) compute it, for one key and for a message's many."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.topics import murmur2, partition_for, partitions_for


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == reference(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=600), st.integers(1, 64))
def test_many_ids_get_the_partitions_each_gets_alone(ids: list[str], partitions: int) -> None:
    expected = [(reference(i.encode()) & 0x7FFFFFFF) % partitions for i in ids]
    assert partitions_for(ids, partitions) == expected
    assert [partition_for(i, partitions) for i in ids] == expected
