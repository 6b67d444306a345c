"""Online drift detectors over two per-event streams of one partition, in a canonical order.

- ``score``: each prediction's score (binary: P(label = 1); multiclass: the top probability),
  in (prediction ts, event_id) order, released once the prediction watermark passed it.
- ``error``: 1 if a joined prediction was wrong, else 0, in (label ts, event_id) order, for
  pairs whose prediction is not younger than its label; released once both watermarks passed
  the label's ts. No non-late pair can sort before a released one after that, so the sequence
  each detector sees depends on the events only — not on how the two topics interleave, nor on
  restarts: the detectors' state and the last released key travel with the checkpoint, and
  items up to that key are not fed again when a restarted worker re-reads them.

Each partition holds its own detectors: events are spread over partitions by ``event_id``
hash, so each detector watches a uniform sample of a model's traffic.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

import orjson

from pipeline.estimators.detectors import Detector
from pipeline.estimators.family import INSERTED_AT, TIME, Column, Table

StreamKey = tuple[str, str, str]  # model, model_version, stream
Item = tuple[int, str, str, str, float]  # ts, event_id, model, model_version, value


class DetectorStreams:
    """Pending items and detectors of one partition."""

    def __init__(self, detectors: Iterable[str], state: dict[str, Any] | None = None) -> None:
        self.names = tuple(detectors)
        self.pending: dict[str, list[Item]] = {"score": [], "error": []}
        self.detectors: dict[StreamKey, dict[str, Detector]] = {}
        self.released: dict[str, tuple[int, str]] = {}
        if state:
            self.released = {s: (k[0], k[1]) for s, k in state["released"].items()}
            for entry in state["detectors"]:
                key = (entry["model"], entry["model_version"], entry["stream"])
                self.detectors[key] = {n: Detector.from_state(s) for n, s in entry["state"].items()}

    def push(
        self, stream: str, ts_ms: int, event_id: str, model: str, version: str, value: float
    ) -> None:
        if self.names:
            self.pending[stream].append((ts_ms, event_id, model, version, value))

    def release(self, stream: str, before_ts: int, partition: int) -> list[dict[str, Any]]:
        """Feed every pending item of ``stream`` with ts < ``before_ts``, in order; returns
        one row per detector firing.

        Items are kept in a list sorted here, not a heap: they arrive nearly in order and
        what stays pending is sorted already, so one sort per release costs less than a
        push and a pop per item."""
        pending = self.pending[stream]
        pending.sort()
        cut = bisect.bisect_left(pending, (before_ts,))
        ready, self.pending[stream] = pending[:cut], pending[cut:]
        done = self.released.get(stream)
        if done is not None and ready and ready[0][:2] <= done:
            ready = [item for item in ready if item[:2] > done]  # fed before a restart
        if not ready:
            return []
        self.released[stream] = ready[-1][:2]
        batches: dict[StreamKey, list[Item]] = {}
        for item in ready:
            batches.setdefault((item[2], item[3], stream), []).append(item)
        rows = []
        for key, items in batches.items():
            detectors = self.detectors.get(key)
            if detectors is None:
                detectors = self.detectors[key] = {n: Detector(n) for n in self.names}
            values = [item[4] for item in items]
            for name, detector in detectors.items():
                start = detector.position
                for firing in detector.update(values):
                    ts, event_id = items[firing.position - start][:2]
                    rows.append(
                        {
                            "model": key[0],
                            "model_version": key[1],
                            "partition": partition,
                            "stream": stream,
                            "detector": name,
                            "position": firing.position,
                            "ts": ts,
                            "event_id": event_id,
                            "params": orjson.dumps(firing.params).decode(),
                        }
                    )
        return rows

    def to_state(self) -> dict[str, Any]:
        return {
            "released": {s: list(k) for s, k in self.released.items()},
            "detectors": [
                {
                    "model": k[0],
                    "model_version": k[1],
                    "stream": k[2],
                    "state": {n: d.to_state() for n, d in ds.items()},
                }
                for k, ds in self.detectors.items()
            ],
        }


#: Where the detectors' firings go (``drift_detections``).
DETECTIONS = Table(
    "drift_detections_rows",
    (
        Column("model", "String"),
        Column("model_version", "String"),
        Column("partition", "UInt32"),
        Column("stream", "String"),
        Column("detector", "String"),
        Column("position", "UInt64"),
        Column("ts", TIME),
        Column("event_id", "String"),
        Column("params", "String"),
        INSERTED_AT,
    ),
    ("model", "model_version", "stream", "detector", "partition", "position"),
    engine="ReplacingMergeTree",
)
