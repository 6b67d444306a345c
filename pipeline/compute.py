"""The compute stage's runtime: decode → fold → emit rows → checkpoint → commit.

One :class:`~pipeline.partition.PartitionState` per input partition owned by this worker.
A partition's commits advance only once nothing live needs the input before them: after the
rows that reflect it were acknowledged by Kafka (acks=all) and the checkpoint naming the new
low watermark was written. The consumer then commits exactly that offset, so a restarted or
rebalanced worker re-reads from the first offset live state needed and rebuilds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import cast

import faust
from faust.types import TP

from pipeline.checkpoint import Checkpoint, read_checkpoints
from pipeline.detection import DetectorStreams
from pipeline.estimators.detectors import river_classes
from pipeline.fold import Folder, InputMessage, is_rerouted
from pipeline.kafka import BoundedConsumer
from pipeline.partition import PartitionState
from pipeline.ratelog import RateLimitedCounts
from pipeline.settings import Settings
from pipeline.windows import NEVER, Mark
from schemas.rows import encode_rows
from schemas.topics import Topics

log = logging.getLogger(__name__)

#: Faust hands over a full stream buffer without returning to the event loop (up to 128
#: envelopes: seconds of work), which would hold back the flush timer and offset commits;
#: so processing yields to the loop at least this often.
YIELD_SECONDS = 0.01
#: Shortest time between two log lines that sum up dead letters, and re-routed events.
REPORT_SECONDS = 60.0
#: A queued message: topic, value, partition, headers, Kafka timestamp (ms) or None.
Outgoing = tuple[str, bytes, int | None, dict[str, bytes] | None, int | None]


class ComputeRuntime:
    """State and offsets of the partitions this worker computes."""

    def __init__(self, app: faust.App, settings: Settings, topics: Topics, run_id: str) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.inputs = (topics.predictions, topics.labels)
        self.run_id = run_id
        self.states: dict[int, PartitionState] = {}
        self.checkpoints: dict[int, list[Checkpoint]] = {}
        self.written: dict[int, Checkpoint] = {}
        self.restored: set[TP] = set()
        self.revocations = 0  # rebalances that took partitions away, so far
        self.folder = Folder(settings, reroute=True)
        self.counters: Counter[tuple[int, str]] = self.folder.counters
        self.emitted_counters: dict[tuple[int, str], int] = {}
        self.counter_version = 0
        self.outbox: list[Outgoing] = []
        self.dead_letter_log = RateLimitedCounts(
            log,
            REPORT_SECONDS,
            "dead-lettered %(total)d events in %(seconds).0fs, by reason: %(counts)s"
            " (SELECT reason, detail FROM dead_letters)",
        )
        self.reroute_log = RateLimitedCounts(
            log,
            REPORT_SECONDS,
            "re-routed %(total)d events in %(seconds).0fs that arrived on another partition"
            " than murmur2(event_id) %% partitions, Kafka's default partitioner, puts them in"
            " (%(counts)s): their producers' partitioner differs (librdkafka clients:"
            " set partitioner=murmur2_random; see the README, 'Sending events')",
        )
        self.first_input: float | None = None
        self.last_input = time.monotonic()
        self.seen_input = False
        self.events_in = 0
        self.yielded_at = time.monotonic()
        self.flushed_at = 0  # events_in when the last flush began
        self.flushing = asyncio.Lock()
        self.last_offsets: dict[TP, int] = {}  # the last offset processed, per partition
        self.held: set[TP] = set()  # input topic-partitions held because they lead
        #: What makes a message look at the pacing again (:meth:`_pace`, also at every
        #: flush): its topic-partition's position passing ``pace_limit``, or the slowest
        #: one with unread messages (``pace_floor``) reaching ``pace_release``.
        self.pace_limit = NEVER
        self.pace_floor: TP | None = None
        self.pace_release = -NEVER
        self.lead_ms = settings.window_spec.longest_ms + 1000 * (
            settings.label_ttl_seconds + settings.lateness_seconds
        )
        river_classes(settings.detector_names)

    # --- input ----------------------------------------------------------------------------

    async def process(self, event: faust.EventT) -> None:
        """Decode one message, dead-letter what is bad, fold what is good."""
        message = event.message
        tp = message.tp
        self.last_input = time.monotonic()
        if self.first_input is None:
            self.first_input = self.last_input
        self.seen_input = True
        state = self.states.get(tp.partition)
        if state is None or tp not in self.restored:
            state = await self._restore(tp, message.offset)
            if state is None:
                return  # revoked while restoring: whoever owns it now re-reads the message
        kind = self.topics.kind_of(tp.topic)
        stamp = message.timestamp
        folded = self.folder.fold(
            InputMessage(
                kind,
                tp.topic,
                tp.partition,
                message.offset,
                message.value,
                round(stamp * 1000) if stamp is not None and stamp >= 0 else None,
                rerouted=bool(message.headers) and is_rerouted(message.headers),
            ),
            state,
        )
        for dead in folded.dead_letters:
            self.outbox.append(
                (self.topics.deadletter, dead.value, tp.partition, dead.headers(), None)
            )
            self.dead_letter_log.add(dead.reason)
        for reroute in folded.reroutes:
            self.outbox.append(
                (
                    reroute.topic,
                    reroute.value,
                    reroute.partition,
                    reroute.headers,
                    reroute.timestamp_ms,
                )
            )
            self.reroute_log.add(f"{kind}s to partition {reroute.partition}", reroute.count)
        self.events_in += folded.events
        self.last_offsets[tp] = message.offset
        position = (state.pred_wm if kind == "prediction" else state.label_wm).max_ts
        if position > self.pace_limit or (tp == self.pace_floor and position >= self.pace_release):
            self._pace()
        if self.events_in - self.flushed_at >= self.settings.flush_events:
            # What is read while it waits for acks stays bounded too. Windows still filling
            # are left to the timer's flush: emitting them at every flush of a backlog
            # re-sent each window's rows several times.
            await self.flush(open_windows=False)
        elif self.last_input - self.yielded_at >= YIELD_SECONDS:
            self.yielded_at = self.last_input
            await asyncio.sleep(0)  # let the flush timer and commits run

    def _pace(self) -> None:
        """Keep this worker's input topic-partitions within ``lead_ms`` of event time of each
        other.

        Faust reads by bytes, not by time: catching up on a backlog, it runs far ahead in some
        topic-partitions (labels are small; partitions come in fetches of their own). What is
        read ahead of the rest waits in memory for it, and a window's rows come out one
        partition at a time, minutes apart, each time making the sink derive the window's
        drift again. So a topic-partition whose position (the latest event time read) leads
        the slowest one with unread messages by more than ``lead_ms`` is held, and released
        once that one caught up or has nothing left. What joins does not depend on this (the
        join follows event time); only memory and when rows come out do.
        """
        positions: dict[TP, int] = {}
        for partition, state in self.states.items():
            positions[TP(self.topics.predictions, partition)] = state.pred_wm.max_ts
            positions[TP(self.topics.labels, partition)] = state.label_wm.max_ts
        behind = [(position, tp) for tp, position in positions.items() if self._behind(tp)]
        floor, self.pace_floor = min(behind) if behind else (-NEVER, None)
        self.pace_limit = floor + self.lead_ms
        ahead = {tp for tp, position in positions.items() if position > self.pace_limit}
        consumer = cast(BoundedConsumer, self.app.consumer)
        for tp in self.held - ahead:
            consumer.release(tp)
        for tp in ahead:
            consumer.hold(tp)  # again every time: a rebalance makes it active again
        self.held = ahead
        self.pace_release = min((positions[tp] for tp in ahead), default=-NEVER) - self.lead_ms

    def _behind(self, tp: TP) -> bool:
        """The broker has messages of ``tp`` this worker has not processed yet, or may have:
        its end is known only once a fetch for ``tp`` returned, which holding the other topic
        does not delay."""
        high = self.app.consumer.highwater(tp)
        return high is None or self.last_offsets.get(tp, -1) + 1 < high

    async def _restore(self, tp: TP, offset: int) -> PartitionState | None:
        """The partition's state, with the topic's watermark set to the one it had at
        ``offset`` (where Faust resumed). The state exists only once the partition's
        checkpoints are read, so no flush checkpoints it before. None if a partition was
        revoked while they were read."""
        partition = tp.partition
        if partition not in self.checkpoints:
            # those of every input partition assigned here, in one read (each read is a client
            # start and a fetch: a pause of all processing)
            assigned = {
                t.partition for t in self.app.consumer.assignment() if t.topic in self.inputs
            }
            revocations = self.revocations
            read = await read_checkpoints(
                self.settings.bootstrap_servers,
                self.topics.checkpoints,
                (assigned | {partition}) - self.checkpoints.keys(),
                self.settings.kafka_client_config(),
            )
            if self.revocations != revocations:
                return None
            self.checkpoints.update(read)
            self.written.update({p: records[-1] for p, records in read.items() if records})
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = PartitionState.from_settings(partition, self.settings)
            last = self.written.get(partition)
            if last is not None:  # every window evicted by then was emitted whole
                state.evicted_through = last.evicted_through
                for topic, read_to in last.read.items():
                    self.folder.rerouted_before[(topic, partition)] = read_to
        self.restored.add(tp)
        found = next(
            (f for c in reversed(self.checkpoints[partition]) if (f := c.find(tp.topic, offset))),
            None,
        )
        if found is not None:
            mark, saved = found
            if tp.topic == self.topics.predictions:
                state.pred_wm.max_ts = mark.max_ts
                state.detectors = DetectorStreams(self.settings.detector_names, saved)
                state.counters["detector_resets"] += state.detectors.resets
            else:
                state.label_wm.max_ts = mark.max_ts
            log.info(
                "resumed %s[%d] at offset %d from its checkpoint", tp.topic, tp.partition, offset
            )
        elif offset > 0:
            log.warning(
                "no checkpoint for %s[%d] at offset %d: its watermark restarts from the data",
                tp.topic,
                tp.partition,
                offset,
            )
        return state

    # --- output ---------------------------------------------------------------------------

    async def flush(self, open_windows: bool = True) -> None:
        """Emit dead letters and changed windows; once Kafka acknowledged all of them, write
        the checkpoints and advance each partition's commits to what live state released.

        Runs every ``flush_interval_seconds`` and, from :meth:`process`, after every
        ``flush_events`` input events: catching up on a backlog, a second of input can span
        minutes of event time, and what a flush holds (open windows, joins waiting for it to
        evict them, their rows) grows with the event time it covers. One flush at a time."""
        async with self.flushing:
            self.flushed_at = self.events_in
            await self._flush(open_windows)

    async def _flush(self, open_windows: bool) -> None:
        self.dead_letter_log.tick()
        self.reroute_log.tick()
        released: list[tuple[int, PartitionState, dict[str, Mark], dict[str, int]]] = []
        self._pace()  # also when a topic-partition has nothing left to read
        for partition, state in list(self.states.items()):
            messages, _ = self.folder.rows(state, open_windows)
            # A partition's rows stay in order (see Folder.rows).
            self.outbox.extend((self.topics.metrics, m, partition, None, None) for m in messages)
            for name, count in state.counters.items():
                self.counters[(partition, name)] = count
            pred_mark, label_mark = state.low_watermarks()
            marks = {
                t: m
                for t, m in ((self.topics.predictions, pred_mark), (self.topics.labels, label_mark))
                if m is not None
            }
            # Everything read before these offsets had its re-routes queued by now.
            read = {
                t: m.offset
                for t, m in (
                    (self.topics.predictions, state.next_pred),
                    (self.topics.labels, state.next_label),
                )
                if m is not None
            }
            released.append((partition, state, marks, read))
        self.outbox.extend(self._counter_messages())
        if not await self._send_outbox():
            return  # no commit advances; the outbox is sent again next time
        released = [r for r in released if self.states.get(r[0]) is r[1]]  # not revoked since
        for partition, state, marks, read in released:
            self._checkpoint(partition, state, marks, read)
        if not await self._send_outbox():
            return
        consumer = cast(BoundedConsumer, self.app.consumer)
        for partition, state, marks, _ in released:
            if self.states.get(partition) is state:
                for topic, mark in marks.items():
                    consumer.advance(TP(topic, partition), mark.offset)

    async def _send_outbox(self) -> bool:
        """Send every queued message and wait for Kafka's acks; on failure keep them queued."""
        outbox, self.outbox = self.outbox, []
        producer = self.app.producer
        try:
            acks = [
                await producer.send(
                    topic,
                    key=None,
                    value=value,
                    partition=partition,
                    # seconds, which Faust turns back into milliseconds by truncation
                    timestamp=None if stamp is None else (stamp + 0.5) / 1000,
                    headers=headers,
                )
                for topic, value, partition, headers, stamp in outbox
            ]
            await asyncio.gather(*acks)
            return True
        except Exception as exc:
            log.error(
                "emitting %d messages failed, retrying at the next flush: %r", len(outbox), exc
            )
            self.outbox = outbox + self.outbox
            return False

    def _checkpoint(
        self, partition: int, state: PartitionState, marks: dict[str, Mark], read: dict[str, int]
    ) -> None:
        """Queue a checkpoint record if the positions or the eviction horizon moved since the
        last one. The detector state may be older than the positions' last move: re-fed from
        there, the detectors replay the same items in the same order, so any saved state is a
        valid start. ``read`` says how far the partition's re-routes are sent: a restart
        re-sends only those of messages after it (at most a window's worth, as records are
        written when the oldest window's state is dropped)."""
        last = self.written.get(partition)
        if (
            last is not None
            and dict(last.current) == marks
            and last.evicted_through == state.evicted_through
        ):
            return
        record = Checkpoint(
            partition,
            marks,
            dict(last.current) if last else {},
            state.detectors.to_state(),
            dict(last.state) if last else {},
            state.evicted_through,
            read,
        )
        self.outbox.append((self.topics.checkpoints, record.encode(), partition, None, None))
        self.written[partition] = record

    def _counter_messages(self) -> list[Outgoing]:
        changed = {k: v for k, v in self.counters.items() if self.emitted_counters.get(k) != v}
        if not changed:
            return []
        self.counter_version += 1
        self.emitted_counters.update(changed)
        rows = [
            {
                "stage": "compute",
                "run_id": self.run_id,
                "partition": p,
                "counter": name,
                "value": value,
                "version": self.counter_version,
            }
            for (p, name), value in changed.items()
        ]
        return [(self.topics.metrics, encode_rows("pipeline_counters", rows), None, None, None)]

    def revoke(self, tps: Iterable[TP]) -> None:
        """Forget partitions another worker now owns; it rebuilds them from the checkpoint."""
        self.revocations += 1
        for tp in tps:
            self.folder.rerouted_before.pop((tp.topic, tp.partition), None)
            self.states.pop(tp.partition, None)
            self.last_offsets.pop(tp, None)
            self.held.discard(tp)
            self.restored.discard(tp)
            self.checkpoints.pop(tp.partition, None)
            self.written.pop(tp.partition, None)

    def throughput(self) -> str:
        """Events read and the rate between the first and the last input of this run."""
        span = self.last_input - self.first_input if self.first_input is not None else 0.0
        rate = self.events_in / span if span > 0 else 0.0
        return f"compute: {self.events_in} events in {span:.2f}s of input ({rate:,.0f} events/s)"

    def idle(self) -> bool:
        """Nothing waits to be emitted."""
        return not self.outbox and not any(s.dirty() for s in self.states.values())
