"""The fold loop: one input message into its partition's state — decode, admit, fold — with the
dead letters, re-routes and counters it causes. The live compute stage, replay, the tests and
the benchmark's hot path all fold through :class:`Folder`, so they decide alike.

Admission decides, from the message alone, which decoded events its partition may fold:

- **Partition.** Predictions and labels join within a partition, so an event is folded only
  in the partition :func:`~schemas.topics.partitions_for` gives its ``event_id`` (Kafka's
  murmur2, the Java client's default). One that arrived elsewhere — from a client whose
  partitioner differs, such as librdkafka's CRC32 — is checked for lateness and moves the
  watermark where it arrived, like the other events of that topic-partition, and is then
  *re-routed*: the live compute stage sends it again to its own partition, with its message's
  timestamp and a ``rerouted_from`` header (Kafka Streams' repartition topics do the same).
  There the copy is *foreign*: it was checked for lateness already and says nothing of that
  partition's own progress in event time, so it joins and folds, however late it comes, as
  long as its window's state is held (``label_ttl_seconds``), and moves no watermark. A replay
  does the same but sends nothing: the copies are in the topics already. What was re-routed
  is remembered in the checkpoint, so a restarted worker does not send it again.
- **Time.** An event whose ``ts`` lies more than ``max_future_seconds`` after the Kafka
  timestamp of the message that carried it (a clock far off, milliseconds sent as seconds)
  is dead-lettered (``future_timestamp``) instead of moving its partition's watermark, which
  would make every later event of that partition late. The message's timestamp is in the
  data, so a replay decides the same.

>>> from pipeline.settings import Settings
>>> folder = Folder(Settings.load(env={}, overrides={"partitions": 1}), reroute=True)
>>> from pipeline.partition import PartitionState
>>> state = PartitionState.from_settings(0, folder.settings)
>>> value = b'{"event_id": "a", "ts": 4e9, "label": 1}'  # 2096, in a message of 2023
>>> msg = InputMessage("label", "modelmon.labels", 0, 7, value, timestamp_ms=1_700_000_000_000)
>>> [dead] = folder.fold(msg, state).dead_letters
>>> dead.reason, dead.detail[:36]
('future_timestamp', 'ts 2096-10-02T07:06:40.000+00:00 is ')
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from pipeline.partition import PartitionState
from pipeline.settings import Settings
from pipeline.windowstore import Rows
from schemas.codec import Decoded, decode_message, encode_envelope
from schemas.deadletter import FUTURE_TIMESTAMP, DeadLetter
from schemas.rows import MAX_ROWS_MESSAGE_BYTES, encode_bounded
from schemas.topics import Topics, partitions_for

#: The counter of each kind's valid, re-routed and future-dated events.
_COUNTER: Final = {"prediction": "predictions", "label": "labels"}
_VALID: Final = {kind: f"{name}_valid" for kind, name in _COUNTER.items()}
_NONE: Final[frozenset[int]] = frozenset()
#: What folds each kind of event into a partition.
_FOLD: Final = {"prediction": PartitionState.add_predictions, "label": PartitionState.add_labels}


@dataclass(slots=True)  # not frozen: a frozen dataclass sets its fields more slowly
class InputMessage:
    """One message of an input topic, as the fold needs it."""

    kind: str  # "prediction" or "label"
    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int | None = None  # the Kafka timestamp; None if the message has none
    rerouted: bool = False  # a copy re-routed here from another partition


#: The header of a re-routed copy: the partition and offset it came from.
REROUTED_FROM: Final = "rerouted_from"


def is_rerouted(headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None) -> bool:
    """Whether a message with these headers is a re-routed copy."""
    if not headers:
        return False
    keys = headers.keys() if isinstance(headers, Mapping) else (k for k, _ in headers)
    return REROUTED_FROM in keys


@dataclass(frozen=True, slots=True)
class Reroute:
    """Events of a message that belong to another partition, to be sent there."""

    topic: str
    partition: int
    value: bytes
    timestamp_ms: int | None
    headers: dict[str, bytes]
    count: int  # events in it


@dataclass(slots=True)
class Folded:
    """What folding one message produced besides changing its partition's state."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    reroutes: list[Reroute] = field(default_factory=list)
    events: int = 0  # events read: valid, rejected or not admitted
    skipped: int = 0  # valid events of another partition (re-routed there, or folded there)


class Folder:
    """Folds input messages into partition states (see the module docstring).

    ``reroute`` is True in the live compute stage (re-send misrouted events) and False in a
    replay (skip them: the live stage re-routed them). ``keep(kind, ts_ms)``, if given, says
    which valid events to fold at all (a replay's time range); ``result_set`` goes into the
    dead letters. ``counters`` are by (partition, name).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        reroute: bool,
        result_set: str = "",
        keep: Callable[[str, int], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.reroute = reroute
        self.result_set = result_set
        self.keep = keep
        self.future_ms = round(settings.max_future_seconds * 1000)
        self.partitions = settings.partitions
        self.counters: Counter[tuple[int, str]] = Counter()
        #: Per (topic, partition), the offset before which re-routes were sent already (from
        #: the checkpoint): a restarted worker re-reads such messages without re-sending.
        self.rerouted_before: dict[tuple[str, int], int] = {}

    def fold(self, message: InputMessage, state: PartitionState) -> Folded:
        """Decode ``message``, admit its events and fold them into ``state``."""
        decoded = decode_message(message.value, message.kind, self.settings.max_message_bytes)
        out = Folded(events=len(decoded.events) + len(decoded.rejected))
        for r in decoded.rejected:
            out.dead_letters.append(self._dead_letter(message, r.index, r.reason, r.detail, r.raw))
        counters, p = self.counters, message.partition
        events = decoded.events
        counters[(p, _VALID[message.kind])] += len(events)
        stamp, where = message.timestamp_ms, None
        if self.keep is not None or (
            stamp is not None and events and max([e.ts_ms for e in events]) > stamp + self.future_ms
        ):
            events, where = self._admit(message, decoded, out)
        elsewhere: AbstractSet[int] = _NONE
        if events and not message.rerouted:
            owners = partitions_for([e.event_id for e in events], self.partitions)
            if owners.count(p) != len(owners):
                elsewhere = {i for i, owner in enumerate(owners) if owner != p}
        refused, forwarded = _FOLD[message.kind](
            state, message.offset, events, elsewhere, message.rerouted
        )
        for i, reason, detail in refused:
            at = where[i] if where is not None else i
            out.dead_letters.append(
                self._dead_letter(
                    message, decoded.index_of(at), reason, detail, decoded.raw_event(at)
                )
            )
        if forwarded:
            out.skipped = len(forwarded)
            counters[(p, f"rerouted_{_COUNTER[message.kind]}")] += len(forwarded)
            if self.reroute:
                at = [where[i] if where is not None else i for i in forwarded]
                partitions = [owners[i] for i in forwarded]
                out.reroutes = self._reroutes(message, decoded, at, partitions)
        if out.dead_letters:
            counters[(p, "dead_letters")] += len(out.dead_letters)
        return out

    def rows(self, state: PartitionState, open_windows: bool = True) -> tuple[list[bytes], Rows]:
        """The rows of what changed in ``state`` since its last flush, as metrics messages in
        the order the sink needs them (see :data:`pipeline.estimators.registry.FAMILIES`),
        and as they were."""
        rows = state.flush(open_windows)
        messages = [
            value
            for table, batch in rows.by_table()
            for value in encode_bounded(table, batch, MAX_ROWS_MESSAGE_BYTES, self.result_set)
        ]
        return messages, rows

    def _admit(
        self, message: InputMessage, decoded: Decoded, out: Folded
    ) -> tuple[list[Any], list[int]]:
        """The events of ``message`` its partition may see (in a replay's range, not future-
        dated), and their indices in ``decoded.events``."""
        keep, stamp = self.keep, message.timestamp_ms
        where = []
        limit = None if stamp is None else stamp + self.future_ms
        for i, e in enumerate(decoded.events):
            if limit is not None and e.ts_ms > limit:  # refused whatever range is replayed
                out.dead_letters.append(self._future(message, decoded, i))
                continue
            if keep is not None and not keep(message.kind, e.ts_ms):
                continue
            where.append(i)
        return [decoded.events[i] for i in where], where

    def _future(self, message: InputMessage, decoded: Decoded, i: int) -> DeadLetter:
        name = _COUNTER[message.kind]
        self.counters[(message.partition, f"future_{name}")] += 1
        assert message.timestamp_ms is not None
        detail = (
            f"ts {_iso(decoded.events[i].ts_ms)} is more than max_future_seconds="
            f"{self.settings.max_future_seconds:g} s after its message's time "
            f"{_iso(message.timestamp_ms)}"
        )
        return self._dead_letter(
            message, decoded.index_of(i), FUTURE_TIMESTAMP, detail, decoded.raw_event(i)
        )

    def _reroutes(
        self, message: InputMessage, decoded: Decoded, elsewhere: list[int], owners: list[int]
    ) -> list[Reroute]:
        """The events ``decoded.events[i]`` for ``i`` in ``elsewhere`` as messages to their
        partitions ``owners`` (aligned): the message itself when it holds one event, else an
        envelope per partition."""
        if message.offset < self.rerouted_before.get((message.topic, message.partition), -1):
            return []  # sent before a restart
        headers = {REROUTED_FROM: f"{message.partition}:{message.offset}".encode()}
        if not decoded.is_envelope:  # the event as it came
            return [
                Reroute(message.topic, owners[0], decoded.value, message.timestamp_ms, headers, 1)
            ]
        by_partition: dict[int, list[Any]] = {}
        for i, owner in zip(elsewhere, owners, strict=True):
            by_partition.setdefault(owner, []).append(decoded.source["events"][decoded.index_of(i)])
        return [
            Reroute(
                message.topic,
                partition,
                encode_envelope(message.kind, items),
                message.timestamp_ms,
                headers,
                len(items),
            )
            for partition, items in sorted(by_partition.items())
        ]

    def _dead_letter(
        self, message: InputMessage, index: int, reason: str, detail: str, raw: bytes
    ) -> DeadLetter:
        return DeadLetter(
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            event_index=index,
            reason=reason,
            detail=detail,
            raw=raw,
            raw_size=len(raw),
            received_at=message.timestamp_ms or 0,
            result_set=self.result_set,
        )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
