"""Topic names and the partitioning rule shared by every producer of joined events.

Predictions and labels are partitioned by Kafka's murmur2 hash of the ``event_id`` (the
Java client's default partitioner for a key), so a producer in another language that keys
its messages by ``event_id`` lands each event where modelmon's own producers put it, and the
join of a prediction with its label stays within one partition.

>>> Topics("modelmon.").predictions
'modelmon.predictions'
>>> partition_for("e-42", 4) == partition_for("e-42", 4)
True
>>> partitions_for(["e-42", "e-43"], 4) == [partition_for("e-42", 4), partition_for("e-43", 4)]
True
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("prediction", "label", "interaction", "training")
_KIND_OF_NAME = {
    "predictions": "prediction",
    "labels": "label",
    "interactions": "interaction",
    "training": "training",
}


def partition_for(event_id: str, partitions: int) -> int:
    """The partition of an event: murmur2(utf-8 event_id), positive, modulo the count."""
    return (murmur2(event_id.encode()) & 0x7FFFFFFF) % partitions


_SEED = 0x9747B28C
_MUL = 0x5BD1E995
_M = np.uint32(_MUL)
#: Below this many ids the pure-Python hash is cheaper than numpy's per-call overhead.
_VECTOR_MIN = 8
#: The little-endian 32-bit words of keys of up to 255 bytes.
_WORDS = [struct.Struct(f"<{n}I") for n in range(64)]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``) of ``data``, as an
    unsigned 32-bit integer: the words of the key unpacked at once, then Java's int
    arithmetic modulo 2**32.

    >>> murmur2(b"e-42")
    4233303547
    """
    length = len(data)
    h = _SEED ^ length
    blocks = length >> 2
    if blocks:
        words = _WORDS[blocks] if blocks < len(_WORDS) else struct.Struct(f"<{blocks}I")
        for k in words.unpack_from(data):
            k = (k * _MUL) & 0xFFFFFFFF
            h = ((h * _MUL) ^ ((k ^ (k >> 24)) * _MUL)) & 0xFFFFFFFF
    extra = length & 3
    if extra:
        tail = data[blocks << 2 :]
        if extra == 3:
            h ^= tail[2] << 16
        if extra >= 2:
            h ^= tail[1] << 8
        h = ((h ^ tail[0]) * _MUL) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _MUL) & 0xFFFFFFFF
    return h ^ (h >> 15)


def partitions_for(event_ids: Sequence[str], partitions: int) -> list[int]:
    """:func:`partition_for` of many event ids at once; with numpy for many: Kafka's murmur2
    over the ids of each byte length as one (ids x bytes) matrix, so the cost per id is a few
    array operations instead of a loop over its bytes in Python."""
    if len(event_ids) < _VECTOR_MIN:
        return [(murmur2(e.encode()) & 0x7FFFFFFF) % partitions for e in event_ids]
    out = np.empty(len(event_ids), dtype=np.int64)
    by_length: dict[int, tuple[list[int], list[bytes]]] = {}
    for i, event_id in enumerate(event_ids):
        data = event_id.encode()
        where, keys = by_length.setdefault(len(data), ([], []))
        where.append(i)
        keys.append(data)
    with np.errstate(over="ignore"):
        for length, (where, keys) in by_length.items():
            out[where] = (_murmur2(keys, length) & 0x7FFFFFFF) % partitions
    return out.tolist()  # type: ignore[no-any-return]


def _murmur2(keys: list[bytes], length: int) -> np.ndarray:
    """:func:`murmur2` of equal-length keys, in uint32 arithmetic (numpy wraps it modulo
    2**32, as Java's int does)."""
    data = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), length)
    h = np.full(len(keys), _SEED ^ length, dtype=np.uint32)
    blocks = length // 4
    if blocks:
        words = np.ascontiguousarray(data[:, : blocks * 4]).view("<u4")
        for j in range(blocks):
            k = words[:, j] * _M
            k ^= k >> np.uint32(24)
            k *= _M
            h *= _M
            h ^= k
    tail = data[:, blocks * 4 :].astype(np.uint32)
    extra = length % 4
    if extra == 3:
        h ^= tail[:, 2] << np.uint32(16)
    if extra >= 2:
        h ^= tail[:, 1] << np.uint32(8)
    if extra >= 1:
        h ^= tail[:, 0]
        h *= _M
    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    return h.astype(np.int64)


@dataclass(frozen=True, slots=True)
class Topics:
    """All topic names under one prefix."""

    prefix: str = "modelmon."

    @property
    def predictions(self) -> str:
        return self.prefix + "predictions"

    @property
    def labels(self) -> str:
        return self.prefix + "labels"

    @property
    def interactions(self) -> str:
        return self.prefix + "interactions"

    @property
    def training(self) -> str:
        return self.prefix + "training"

    @property
    def metrics(self) -> str:
        return self.prefix + "metrics"

    @property
    def alerts(self) -> str:
        return self.prefix + "alerts"

    @property
    def deadletter(self) -> str:
        return self.prefix + "deadletter"

    @property
    def checkpoints(self) -> str:
        """Per-partition compute checkpoints (event-time watermarks at committed offsets)."""
        return self.prefix + "checkpoints"

    def for_kind(self, kind: str) -> str:
        """The input topic that carries events of ``kind``."""
        return {
            "prediction": self.predictions,
            "label": self.labels,
            "interaction": self.interactions,
            "training": self.training,
        }[kind]

    def kind_of(self, topic: str) -> str:
        """The event kind carried by an input topic."""
        if topic.startswith(self.prefix):
            kind = _KIND_OF_NAME.get(topic[len(self.prefix) :])
            if kind is not None:
                return kind
        raise KeyError(f"{topic!r} is not an input topic under prefix {self.prefix!r}")
