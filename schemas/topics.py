"""Topic names and the partitioning rule shared by every producer of joined events.

Predictions and labels are partitioned by Kafka's murmur2 hash of the ``event_id`` (the
Java client's default partitioner for a key), so a producer in another language that keys
its messages by ``event_id`` lands each event where modelmon's own producers put it, and the
join of a prediction with its label stays within one partition.

>>> Topics("modelmon.").predictions
'modelmon.predictions'
>>> partition_for("e-42", 4) == partition_for("e-42", 4)
True
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.partitioner import murmur2

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
