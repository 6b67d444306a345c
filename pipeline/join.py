"""The prediction ⨝ label join of one partition, by ``event_id``, in event time.

Predictions and labels of one ``event_id`` share a partition, so each partition joins on its
own. A prediction P and a label L join iff ``L.ts < end(P) + ttl`` and ``P.ts < end(L) + ttl``
(``end`` = end of the event's join window, the pipeline's ``window``). The one read first
waits in the bucket of its join window until the *other* topic's watermark passes that
window's end + ttl, exactly as long as a non-late partner could still satisfy the rule; then
it is counted as never joined (``expired_unlabelled``, ``unmatched_labels``). A bucket whose
predictions and labels can no longer join is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.windows import Mark, Watermark, Windows


@dataclass(slots=True)
class PendingPrediction:
    ts_ms: int
    model: str
    model_version: str
    task: str
    y_pred: Any
    score: float | None
    probabilities: Mapping[str, float] | None
    windows: tuple[Any, ...]  # where it went (pipeline.windowstore.WindowRefs)
    open: bool = True


@dataclass(slots=True)
class PendingLabel:
    ts_ms: int
    label: Any
    model: str | None  # the model the label source named, if it named one
    open: bool = True


@dataclass(slots=True)
class Bucket:
    """The predictions and labels of one join window, and the first offset of each topic
    read into it (while the bucket lives, a restart must re-read from there)."""

    end: int
    preds: dict[str, PendingPrediction] = field(default_factory=dict)
    labels: dict[str, PendingLabel] = field(default_factory=dict)
    first_pred: Mark | None = None
    first_label: Mark | None = None
    preds_closed: bool = False  # the label watermark passed end + ttl: no label can join
    labels_closed: bool = False  # the prediction watermark passed end + ttl


class Join:
    """The pending predictions and labels of one partition (see the module docstring).

    >>> from pipeline.windows import WindowSpec
    >>> join = Join(Windows(WindowSpec.parse("60")), ttl_ms=60_000, counters=Counter())
    >>> join.joinable(10_000, 119_999), join.joinable(10_000, 120_000)
    (True, False)
    """

    def __init__(self, windows: Windows, ttl_ms: int, counters: Counter[str]) -> None:
        self.windows = windows
        self.ttl_ms = ttl_ms
        self.counters = counters
        self.preds: dict[str, PendingPrediction] = {}
        self.labels: dict[str, PendingLabel] = {}
        self.buckets: dict[int, Bucket] = {}

    def bucket(self, ts_ms: int) -> Bucket:
        """The bucket of the join window that holds ``ts_ms``."""
        size = self.windows.size
        start = ts_ms - ts_ms % size if size is not None else self.windows.start(ts_ms)
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.buckets[start] = Bucket(self.windows.end(start))
        return bucket

    def joinable(self, pred_ts: int, label_ts: int) -> bool:
        windows, ttl = self.windows, self.ttl_ms
        size = windows.size
        if size is not None:
            horizon = size + ttl
            return label_ts < pred_ts - pred_ts % size + horizon and (
                pred_ts < label_ts - label_ts % size + horizon
            )
        return label_ts < windows.end(windows.start(pred_ts)) + ttl and (
            pred_ts < windows.end(windows.start(label_ts)) + ttl
        )

    def same_model(self, model: str, label: PendingLabel) -> bool:
        """A label that names a model joins only that model's prediction."""
        if label.model is None or label.model == model:
            return True
        self.counters["label_model_mismatch"] += 1
        return False

    def evict(self, pred_wm: Watermark, label_wm: Watermark) -> None:
        """Close what can no longer join, count it, and drop buckets closed both ways."""
        counters = self.counters
        for start in sorted(self.buckets):
            bucket = self.buckets[start]
            horizon = bucket.end + self.ttl_ms
            if not (label_wm.passed(horizon) or pred_wm.passed(horizon)):
                break  # later buckets have later horizons
            if not bucket.preds_closed and label_wm.passed(horizon):
                bucket.preds_closed = True
                expired = [p for p in bucket.preds.values() if p.open]
                for pred in expired:
                    pred.open = False
                counters["expired_unlabelled"] += len(expired)
            if not bucket.labels_closed and pred_wm.passed(horizon):
                bucket.labels_closed = True
                unmatched = [lab for lab in bucket.labels.values() if lab.open]
                for label in unmatched:
                    label.open = False
                counters["unmatched_labels"] += len(unmatched)
            if bucket.preds_closed and bucket.labels_closed:
                for event_id in bucket.preds:
                    del self.preds[event_id]
                for event_id in bucket.labels:
                    del self.labels[event_id]
                del self.buckets[start]

    def first_marks(self) -> tuple[list[Mark], list[Mark]]:
        """The first offsets of each topic that the buckets still need."""
        buckets = self.buckets.values()
        return (
            [b.first_pred for b in buckets if b.first_pred is not None],
            [b.first_label for b in buckets if b.first_label is not None],
        )
