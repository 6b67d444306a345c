"""The fold loop's admission: events on another partition than their id's are re-routed (live)
or skipped (replay), a future-dated event is dead-lettered without moving its partition's
watermark, an event id taken by another model is dead-lettered, and every dead letter is a
function of the input message alone."""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson

from pipeline.fold import Folder, InputMessage, is_rerouted
from pipeline.partition import PartitionState
from pipeline.settings import Settings
from schemas.codec import encode_envelope, encode_event
from schemas.deadletter import DeadLetter
from schemas.topics import Topics, partition_for
from tests.ids import event_id_in

PARTITIONS = 4
TOPICS = Topics("fold.")
T0 = 1_700_000_040.0
SETTINGS = Settings.load(
    env={},
    overrides={
        "topic_prefix": TOPICS.prefix,
        "partitions": PARTITIONS,
        "window": "60s",
        "lateness_seconds": 5,
        "label_ttl_seconds": 60,
        "detectors": "",
    },
)


def pred(event_id: str, ts: float, model: str = "m") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "model": model,
        "ts": ts,
        "task": "binary",
        "prediction": 1,
        "score": 0.75,
    }


def label(event_id: str, ts: float) -> dict[str, Any]:
    return {"event_id": event_id, "ts": ts, "label": 1}


def message(
    kind: str,
    partition: int,
    offset: int,
    value: bytes,
    stamp: float | None = None,
    rerouted: bool = False,
) -> InputMessage:
    return InputMessage(
        kind,
        TOPICS.for_kind(kind),
        partition,
        offset,
        value,
        None if stamp is None else round(stamp * 1000),
        rerouted,
    )


def states() -> dict[int, PartitionState]:
    return {p: PartitionState.from_settings(p, SETTINGS) for p in range(PARTITIONS)}


def labelled(states: dict[int, PartitionState]) -> int:
    return sum(
        row["labelled"]
        for s in states.values()
        for row in s.flush(open_windows=True).tables["quality_partials"]
    )


def test_a_future_dated_event_is_dead_lettered_and_does_not_move_the_watermark() -> None:
    folder = Folder(SETTINGS, reroute=True)
    state = PartitionState.from_settings(0, SETTINGS)
    ids = [event_id_in(0, PARTITIONS, f"p{i}") for i in range(40)]
    wild = pred(ids[0], T0 + 365 * 86400)  # a year ahead of its message
    first = encode_envelope("prediction", [pred(ids[1], T0), wild, pred(ids[2], T0 + 1)])
    folded = folder.fold(message("prediction", 0, 0, first, stamp=T0 + 2), state)
    (dead,) = folded.dead_letters
    assert (dead.reason, dead.event_index, orjson.loads(dead.raw)) == ("future_timestamp", 1, wild)
    assert dead.received_at == round((T0 + 2) * 1000)
    assert "max_future_seconds=3600" in dead.detail
    assert state.pred_wm.max_ts == round((T0 + 1) * 1000)
    for offset, i in enumerate(range(3, 40), start=1):  # normal traffic after it
        value = encode_event(pred(ids[i], T0 + i))
        folder.fold(message("prediction", 0, offset, value, stamp=T0 + i), state)
    assert state.counters["late_predictions"] == 0
    assert folder.counters[(0, "future_predictions")] == 1
    rows = state.flush().tables["quality_partials"]
    assert sum(r["predictions"] for r in rows) == 39


def test_an_event_within_the_tolerance_or_without_a_message_time_is_folded() -> None:
    folder = Folder(SETTINGS, reroute=True)
    state = PartitionState.from_settings(0, SETTINGS)
    ahead = pred(event_id_in(0, PARTITIONS, "a"), T0 + 3599)
    folder.fold(message("prediction", 0, 0, encode_event(ahead), stamp=T0), state)
    untimed = pred(event_id_in(0, PARTITIONS, "b"), T0 + 10 * 86400)
    folded = folder.fold(message("prediction", 0, 1, encode_event(untimed)), state)
    assert not folded.dead_letters
    assert state.pred_wm.max_ts == round((T0 + 10 * 86400) * 1000)


def test_misrouted_events_are_rerouted_to_their_partition_with_their_message_time() -> None:
    folder = Folder(SETTINGS, reroute=True)
    parts = states()
    events = [
        pred(event_id_in(p, PARTITIONS, f"e{p}-{i}"), T0 + i) for i in range(3) for p in range(4)
    ]
    envelope = encode_envelope("prediction", events)
    folded = folder.fold(message("prediction", 0, 0, envelope, stamp=T0 + 5), parts[0])
    assert folded.skipped == 9
    assert [(r.partition, r.count) for r in folded.reroutes] == [(1, 3), (2, 3), (3, 3)]
    for r in folded.reroutes:
        body = orjson.loads(r.value)
        assert body["kind"] == "prediction" and body["count"] == 3
        assert all(partition_for(e["event_id"], PARTITIONS) == r.partition for e in body["events"])
        assert body["events"] == [
            e for e in events if partition_for(e["event_id"], 4) == r.partition
        ]
        assert r.timestamp_ms == round((T0 + 5) * 1000)
        assert r.headers == {"rerouted_from": b"0:0"}
    assert folder.counters[(0, "rerouted_predictions")] == 9
    single = encode_event(events[1])  # belongs to partition 1
    (again,) = folder.fold(message("prediction", 2, 0, single, stamp=T0), parts[2]).reroutes
    assert (again.partition, again.value) == (1, single)


def test_labels_from_any_partitioner_join_once_rerouted() -> None:
    """Labels sent to partitions chosen by another hash: re-routed copies, read after what
    their partitions held, join their predictions; the originals fold nowhere."""
    folder = Folder(SETTINGS, reroute=True)
    parts = states()
    queues: dict[int, deque[InputMessage]] = {p: deque() for p in range(PARTITIONS)}
    offsets = dict.fromkeys(range(PARTITIONS), 0)

    def put(
        kind: str, partition: int, value: bytes, stamp: float | None, rerouted: bool = False
    ) -> None:
        queues[partition].append(
            message(kind, partition, offsets[partition], value, stamp, rerouted)
        )
        offsets[partition] += 1

    ids = [f"req-{i}" for i in range(300)]
    for i, event_id in enumerate(ids):
        put(
            "prediction",
            partition_for(event_id, PARTITIONS),
            encode_event(pred(event_id, T0 + i / 10)),
            T0,
        )
    for i, event_id in enumerate(ids):
        wrong = (partition_for(event_id, PARTITIONS) + 1 + i % 3) % PARTITIONS
        put("label", wrong, encode_event(label(event_id, T0 + 5 + i / 10)), T0 + 40)
    while any(queues.values()):
        for p, queue in queues.items():
            if queue:
                for r in folder.fold(queue.popleft(), parts[p]).reroutes:
                    assert r.timestamp_ms is not None and is_rerouted(r.headers)
                    put("label", r.partition, r.value, r.timestamp_ms / 1000, rerouted=True)
    assert labelled(parts) == 300
    assert sum(folder.counters[(p, "rerouted_labels")] for p in range(PARTITIONS)) == 300
    assert not any(s.counters["late_labels"] for s in parts.values())


def test_a_replay_skips_misrouted_events_without_resending_them() -> None:
    live, replay = Folder(SETTINGS, reroute=True), Folder(SETTINGS, reroute=False)
    value = encode_event(pred(event_id_in(3, PARTITIONS, "x"), T0))
    for folder in (live, replay):
        folded = folder.fold(message("prediction", 0, 0, value, stamp=T0), states()[0])
        assert folded.skipped == 1 and not folded.dead_letters
    assert len(live.fold(message("prediction", 0, 1, value, stamp=T0), states()[0]).reroutes) == 1
    assert not replay.fold(message("prediction", 0, 1, value, stamp=T0), states()[0]).reroutes


def test_messages_rerouted_before_a_restart_are_not_sent_again() -> None:
    folder = Folder(SETTINGS, reroute=True)
    folder.rerouted_before[(TOPICS.predictions, 0)] = 5  # from the checkpoint
    value = encode_event(pred(event_id_in(1, PARTITIONS, "y"), T0))
    assert not folder.fold(message("prediction", 0, 4, value, stamp=T0), states()[0]).reroutes
    assert folder.fold(message("prediction", 0, 5, value, stamp=T0), states()[0]).reroutes


def test_an_event_id_taken_by_another_model_is_dead_lettered() -> None:
    folder = Folder(SETTINGS, reroute=True)
    state = PartitionState.from_settings(0, SETTINGS)
    shared = event_id_in(0, PARTITIONS, "shared")
    first, retry, other = pred(shared, T0), pred(shared, T0), pred(shared, T0, model="other")
    envelope = encode_envelope("prediction", [first, retry, other])
    (dead,) = folder.fold(message("prediction", 0, 0, envelope, stamp=T0), state).dead_letters
    assert (dead.reason, dead.event_index, orjson.loads(dead.raw)) == (
        "event_id_conflict",
        2,
        other,
    )
    assert "'other'" in dead.detail and "'m'" in dead.detail
    assert state.counters["duplicate_predictions"] == 1
    assert state.counters["event_id_conflicts"] == 1


def test_a_label_naming_another_model_does_not_join() -> None:
    folder = Folder(SETTINGS, reroute=True)
    state = PartitionState.from_settings(0, SETTINGS)
    a, b = event_id_in(0, PARTITIONS, "a"), event_id_in(0, PARTITIONS, "b")
    folder.fold(
        message("prediction", 0, 0, encode_envelope("prediction", [pred(a, T0), pred(b, T0)])),
        state,
    )
    labels = [dict(label(a, T0 + 1), model="m"), dict(label(b, T0 + 1), model="other")]
    folder.fold(message("label", 0, 0, encode_envelope("label", labels)), state)
    assert sum(r["labelled"] for r in state.flush().tables["quality_partials"]) == 1
    assert state.counters["label_model_mismatch"] == 1


def test_dead_letters_are_the_same_live_and_in_a_replay() -> None:
    bad = encode_envelope(
        "label", [label("a", T0), {"event_id": "b", "ts": 1_700_000_000_000, "label": 1}]
    )
    msg = message("label", 2, 9, bad, stamp=T0)
    live = Folder(SETTINGS, reroute=True).fold(msg, states()[2]).dead_letters
    replayed = Folder(SETTINGS, reroute=False).fold(msg, states()[2]).dead_letters
    assert live == replayed
    (dead,) = live
    assert (dead.reason, dead.event_index, dead.received_at) == (
        "ts.out_of_range",
        1,
        round(T0 * 1000),
    )
    assert DeadLetter.from_message(dead.value, dead.headers()) == dead
