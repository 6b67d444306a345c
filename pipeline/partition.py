"""Prediction ⨝ label state and the windows of one input partition: classification quality,
feature summaries, and the per-event streams its drift detectors watch.

Predictions and labels of one ``event_id`` share a partition, so each partition joins on its
own. Every decision is made from event time and the position in each topic, never from arrival
order across the two topics or from the wall clock, so re-reading from a checkpoint rebuilds
exactly the state and rows of an undisturbed run:

- a prediction older than the prediction watermark is *late*: counted, not folded;
  a label older than the label watermark likewise;
- a prediction P and label L with the same ``event_id`` join iff
  ``L.ts < end(P) + ttl`` and ``P.ts < end(L) + ttl`` (``end`` = end of the event's window).
  The one read first is kept until the *other* topic's watermark passes ``end + ttl``, which is
  exactly as long as a non-late partner could still satisfy the rule;
- a window start's state (its windows, predictions and labels) is dropped once both watermarks
  passed its end + ttl: nothing can join or change it any more.

A window's ``version`` counts the folds into it, so a state rebuilt from part of the input
emits a lower version than the complete one and loses to it in ClickHouse.

The committed offset of each topic is the *low watermark of live state*: the first offset any
live prediction, label or window still needs (:meth:`PartitionState.low_watermarks`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from pipeline.detection import DetectorStreams
from pipeline.estimators.classification import ClassificationWindow
from pipeline.estimators.features import FeatureWindow
from pipeline.settings import Settings
from pipeline.windows import NEVER, Mark, Watermark
from schemas.deadletter import EVENT_ID_CONFLICT
from schemas.events import CLASSIFICATION_TASKS, Label, Prediction

WindowKey = tuple[str, str, str, int]  # model, model_version, segment, window_start
OVERFLOW_SEGMENT = "__overflow__"
OVERFLOW_CLIENT = "__overflow__"


@dataclass(slots=True)
class _Pred:
    ts_ms: int
    key: WindowKey
    task: str
    y_pred: Any
    proba: dict[str, float] | None
    open: bool = True


@dataclass(slots=True)
class _Label:
    ts_ms: int
    label: Any
    model: str | None  # the model the label source named, if it named one
    open: bool = True


#: (index in the batch, reason, detail) of an event a partition refused to fold.
Refused = tuple[int, str, str]


@dataclass(slots=True)
class _Bucket:
    """Everything of one window start: predictions, labels and window accumulators."""

    preds: dict[str, _Pred] = field(default_factory=dict)
    labels: dict[str, _Label] = field(default_factory=dict)
    windows: dict[WindowKey, _Window] = field(default_factory=dict)
    first_pred: Mark | None = None  # first prediction read into this bucket
    first_label: Mark | None = None  # first label read into this bucket or joined into its windows
    segments: dict[str, set[str]] = field(default_factory=dict)  # by model: cardinality limits
    final: bool = False  # re-read after a restart: its windows were emitted whole and dropped
    preds_closed: bool = False  # the label watermark passed end + ttl: no label can join any more
    labels_closed: bool = False  # the prediction watermark passed end + ttl


@dataclass(slots=True)
class _Window:
    """A window's accumulators, and what was read into it but not yet folded into them.

    Predictions and joined pairs are held back until the window's rows are read (every flush)
    or ``_SETTLE_AT`` of them wait in the partition, and then folded in one batch: the
    accumulators' results do not depend on batching, and one batch costs far less than many
    small ones when messages hold one event each.

    ``clients`` summarises the features of each ``client_id``'s predictions (sketches only),
    for the first ``max_clients`` client ids in the order the partition read them; later ones
    share the ``__overflow__`` client.
    """

    acc: ClassificationWindow
    features: FeatureWindow
    max_clients: int
    version: int = 0
    dirty: bool = True
    features_dirty: bool = False  # predictions were folded since the feature rows were read
    preds: list[Prediction] = field(default_factory=list)
    y_true: list[Any] = field(default_factory=list)
    y_pred: list[Any] = field(default_factory=list)
    proba: list[dict[str, float] | None] = field(default_factory=list)
    clients: dict[str, FeatureWindow] = field(default_factory=dict)
    dirty_clients: set[str] = field(default_factory=set)

    def settle(self, counters: Counter[str]) -> None:
        """Fold what waits into the accumulators."""
        if self.preds:
            self.features_dirty = True
            preds, self.preds = self.preds, []
            self.acc.add_predictions(len(preds))
            observed = [_observed(p) for p in preds]
            self.features.update(observed)
            if self.max_clients:
                self._settle_clients(preds, observed, counters)
        if self.y_true:
            y_true, y_pred, proba = self.y_true, self.y_pred, self.proba
            self.y_true, self.y_pred, self.proba = [], [], []
            self.acc.add_labelled(y_true, y_pred, proba)

    def _settle_clients(
        self, preds: list[Prediction], observed: list[dict[str, Any]], counters: Counter[str]
    ) -> None:
        by_client: dict[str, list[dict[str, Any]]] = {}
        for p, features in zip(preds, observed, strict=True):
            if p.client_id is not None:
                by_client.setdefault(p.client_id, []).append(features)
        clients = self.clients
        for client, features in by_client.items():
            summary = clients.get(client)
            if summary is None:
                if len(clients) - (OVERFLOW_CLIENT in clients) >= self.max_clients:
                    counters["overflow_clients"] += len(features)
                    client = OVERFLOW_CLIENT
                    summary = clients.get(client)
                if summary is None:
                    summary = clients[client] = FeatureWindow(exact_max=0)
            summary.update(features)
            self.dirty_clients.add(client)


#: Predictions and joined pairs waiting in a partition's windows that trigger folding them
#: in. It bounds what waits in memory (a prediction with 20 features holds ~2 KiB) however
#: long a flush takes, with batches still large enough to cost little per event.
_SETTLE_AT = 4096


def _earliest(a: Mark | None, b: Mark) -> Mark:
    return b if a is None or b.offset < a.offset else a


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows for the sink, by table."""

    windows: list[dict[str, Any]]
    classes: list[dict[str, Any]]
    features: list[dict[str, Any]]
    detections: list[dict[str, Any]]
    clients: list[dict[str, Any]]
    client_features: list[dict[str, Any]]

    def by_table(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """(ClickHouse table, rows) of every kind of row, in the order the sink needs them:
        the feature rows of a window come last of its partials, as they trigger deriving
        drift, data quality and client activity from all of them."""
        return [
            ("quality_partials", self.windows),
            ("quality_class_partials", self.classes),
            ("client_partials", self.clients),
            ("client_feature_partials", self.client_features),
            ("feature_partials", self.features),
            ("drift_detections_rows", self.detections),
        ]


class PartitionState:
    """The join and the quality windows of one partition (see the module docstring)."""

    def __init__(
        self,
        partition: int,
        *,
        window_ms: int,
        lateness_ms: int,
        label_ttl_ms: int,
        auc_bins: int,
        detectors: Sequence[str] = (),
        max_models: int = 1000,
        max_segments: int = 1000,
        max_clients: int = 100,
        pred_max_ts: int | None = None,
        label_max_ts: int | None = None,
        evicted_through: int | None = None,
    ) -> None:
        self.partition = partition
        self.window_ms = window_ms
        self.max_models = max_models
        self.max_segments = max_segments
        self.max_clients = max_clients
        self.label_ttl_ms = label_ttl_ms
        self.auc_bins = auc_bins
        self.pred_wm = Watermark(lateness_ms)
        self.label_wm = Watermark(lateness_ms)
        if pred_max_ts is not None:
            self.pred_wm.max_ts = pred_max_ts
        if label_max_ts is not None:
            self.label_wm.max_ts = label_max_ts
        self.buckets: dict[int, _Bucket] = {}
        #: The last window start whose state was dropped. Events of it or earlier are late, or,
        #: after a restart, re-read events that were folded before it was dropped: their
        #: bucket is *final* (joins and detectors as before, but no window is folded again).
        self.evicted_through = evicted_through
        self.pred_index: dict[str, _Pred] = {}
        self.label_index: dict[str, _Label] = {}
        self.counters: Counter[str] = Counter()
        self.waiting = 0  # predictions and joined pairs not yet folded into their windows
        self.next_pred: Mark | None = None  # the next prediction offset to read, with its watermark
        self.next_label: Mark | None = None
        self.detectors = DetectorStreams(detectors)

    @classmethod
    def from_settings(cls, partition: int, settings: Settings) -> PartitionState:
        """The state of one partition as the compute stage and replays configure it."""
        return cls(
            partition,
            window_ms=settings.window_seconds * 1000,
            lateness_ms=settings.lateness_seconds * 1000,
            label_ttl_ms=settings.label_ttl_seconds * 1000,
            auc_bins=settings.auc_bins,
            detectors=settings.detector_names,
            max_models=settings.max_models,
            max_segments=settings.max_segments,
            max_clients=settings.max_clients,
        )

    # --- input ----------------------------------------------------------------------------

    def add_predictions(
        self,
        offset: int,
        preds: Sequence[Prediction],
        elsewhere: AbstractSet[int] = frozenset(),
        foreign: bool = False,
    ) -> tuple[list[Refused], list[int]]:
        """Fold the predictions of the message at ``offset`` of the predictions topic.

        Those at the indices ``elsewhere`` belong to another partition: they are checked for
        lateness and move the watermark, as the topic-partition's other events do, and the
        indices of those not late are returned, to be folded where they belong. A *foreign*
        message is such a re-routed copy: its events were checked for lateness where they
        arrived, so they are not here, and they do not move this partition's watermark.

        Returns (refused, forwarded): refused are predictions whose ``event_id`` another
        model's prediction has (event ids must be unique across models, or the label could
        not tell them apart)."""
        wm = self.pred_wm
        max_ts = wm.max_ts
        mark = Mark(offset, max_ts)
        late_before = NEVER if foreign or max_ts == NEVER else max_ts - wm.lateness_ms
        window_ms = self.window_ms
        buckets = self.buckets
        pred_index = self.pred_index
        label_index = self.label_index
        counters = self.counters
        detectors = self.detectors if self.detectors.names else None
        pairs: dict[WindowKey, list[tuple[str, _Pred, _Label]]] | None = None
        refused: list[Refused] = []
        forwarded: list[int] = []
        for i, p in enumerate(preds):
            ts = p.ts_ms
            if ts < late_before:
                counters["late_predictions"] += 1
                continue
            if i in elsewhere:
                forwarded.append(i)
                if ts > max_ts:
                    max_ts = ts
                    late_before = max_ts - wm.lateness_ms
                continue
            event_id = p.event_id
            known = pred_index.get(event_id)
            if known is not None:
                if known.key[0] == p.model:
                    counters["duplicate_predictions"] += 1
                else:
                    counters["event_id_conflicts"] += 1
                    refused.append(
                        (
                            i,
                            EVENT_ID_CONFLICT,
                            f"event_id {event_id!r} of model {p.model!r} is taken by a"
                            f" prediction of model {known.key[0]!r}",
                        )
                    )
                continue
            start = ts - ts % window_ms
            bucket = buckets.get(start) or self._new_bucket(start)
            first = bucket.first_pred
            if first is None or offset < first.offset:
                bucket.first_pred = mark
            key = (p.model, p.model_version, p.segment, start)
            w = bucket.windows.get(key)
            if w is None and not bucket.final:
                admitted = self._admit(bucket, key)
                if admitted is None:
                    counters["overflow_models"] += 1
                    continue
                key = admitted
                w = bucket.windows.get(key)
                if w is None:
                    w = bucket.windows[key] = self._new_window()
            entry = _Pred(ts, key, p.task, p.prediction, _proba(p))
            pred_index[event_id] = bucket.preds[event_id] = entry
            if w is not None:
                w.preds.append(p)
                w.version += 1
                w.dirty = True
                self.waiting += 1
                if self.waiting >= _SETTLE_AT:
                    self._settle()
            if detectors is not None:
                score = _score(entry)
                if score is not None:
                    detectors.push("score", ts, event_id, p.model, p.model_version, score)
            label = label_index.get(event_id)
            if (
                label is not None
                and label.open
                and self._joinable(ts, label.ts_ms)
                and self._same_model(p.model, label)
            ):
                if pairs is None:
                    pairs = {}
                pairs.setdefault(key, []).append((event_id, entry, label))
                label.open = entry.open = False
            elif bucket.preds_closed:  # no label can still join it
                entry.open = False
                counters["expired_unlabelled"] += 1
            if ts > max_ts and not foreign:
                max_ts = ts
                late_before = max_ts - wm.lateness_ms
        wm.max_ts = max_ts
        if pairs:
            self._fold(pairs, None)
        self.next_pred = Mark(offset + 1, max_ts)
        return refused, forwarded

    def add_labels(
        self,
        offset: int,
        labels: Sequence[Label],
        elsewhere: AbstractSet[int] = frozenset(),
        foreign: bool = False,
    ) -> tuple[list[Refused], list[int]]:
        """Fold the labels of the message at ``offset`` of the labels topic, as
        :meth:`add_predictions` does predictions; none is refused (a label that names another
        model than its prediction's is counted, not joined)."""
        wm = self.label_wm
        max_ts = wm.max_ts
        mark = Mark(offset, max_ts)
        late_before = NEVER if foreign or max_ts == NEVER else max_ts - wm.lateness_ms
        window_ms = self.window_ms
        buckets = self.buckets
        pred_index = self.pred_index
        label_index = self.label_index
        counters = self.counters
        pairs: dict[WindowKey, list[tuple[str, _Pred, _Label]]] = {}
        forwarded: list[int] = []
        for i, lab in enumerate(labels):
            ts = lab.ts_ms
            if ts < late_before:
                counters["late_labels"] += 1
                continue
            if i in elsewhere:
                forwarded.append(i)
                if ts > max_ts:
                    max_ts = ts
                    late_before = max_ts - wm.lateness_ms
                continue
            event_id = lab.event_id
            if event_id in label_index:
                counters["duplicate_labels"] += 1
                continue
            start = ts - ts % window_ms
            bucket = buckets.get(start) or self._new_bucket(start)
            first = bucket.first_label
            if first is None or offset < first.offset:
                bucket.first_label = mark
            entry = _Label(ts, lab.label, lab.model)
            label_index[event_id] = bucket.labels[event_id] = entry
            pred = pred_index.get(event_id)
            if (
                pred is not None
                and pred.open
                and self._joinable(pred.ts_ms, ts)
                and self._same_model(pred.key[0], entry)
            ):
                pairs.setdefault(pred.key, []).append((event_id, pred, entry))
                pred.open = entry.open = False
            elif bucket.labels_closed:  # no prediction can still join it
                entry.open = False
                counters["unmatched_labels"] += 1
            if ts > max_ts and not foreign:
                max_ts = ts
                late_before = max_ts - wm.lateness_ms
        wm.max_ts = max_ts
        self._fold(pairs, mark)
        self.next_label = Mark(offset + 1, max_ts)
        return [], forwarded

    def _new_bucket(self, start: int) -> _Bucket:
        """A bucket for a window start not held; *final* if that start was dropped already."""
        evicted = self.evicted_through
        bucket = self.buckets[start] = _Bucket(final=evicted is not None and start <= evicted)
        return bucket

    def _admit(self, bucket: _Bucket, key: WindowKey) -> WindowKey | None:
        """Bound a window start's cardinality: a model past ``max_models`` is not folded (and
        is counted), a segment past ``max_segments`` of its model is folded into the
        ``__overflow__`` segment (and counted). Per window start, so memory stays bounded and
        the decision depends on the events of that window only."""
        model, version, segment, start = key
        segments = bucket.segments.get(model)
        if segments is None:
            if len(bucket.segments) >= self.max_models:
                return None
            segments = bucket.segments[model] = set()
        if segment not in segments:
            if len(segments) >= self.max_segments:
                self.counters["overflow_segments"] += 1
                return (model, version, OVERFLOW_SEGMENT, start)
            segments.add(segment)
        return key

    def _same_model(self, model: str, label: _Label) -> bool:
        """A label that names a model joins only that model's prediction."""
        if label.model is None or label.model == model:
            return True
        self.counters["label_model_mismatch"] += 1
        return False

    def _joinable(self, pred_ts: int, label_ts: int) -> bool:
        window_ms = self.window_ms
        horizon = window_ms + self.label_ttl_ms
        return (
            label_ts < pred_ts - pred_ts % window_ms + horizon
            and pred_ts < label_ts - label_ts % window_ms + horizon
        )

    def _fold(
        self,
        pairs: dict[WindowKey, list[tuple[str, _Pred, _Label]]],
        label_mark: Mark | None,
    ) -> None:
        """Count joined pairs into their windows (the accumulators get them at settle)."""
        counters = self.counters
        detectors = self.detectors if self.detectors.names else None
        for key, joined in pairs.items():
            y_true, y_pred, proba = [], [], []
            for event_id, pred, label in joined:
                if not _label_fits(pred.task, label.label):
                    counters["label_type_mismatch"] += 1
                    continue
                if pred.task not in CLASSIFICATION_TASKS:
                    counters["labels_unsupported_task"] += 1
                    continue
                y_true.append(label.label)
                y_pred.append(pred.y_pred)
                proba.append(pred.proba)
                if detectors is not None and pred.ts_ms <= label.ts_ms:
                    detectors.push(
                        "error",
                        label.ts_ms,
                        event_id,
                        key[0],
                        key[1],
                        float(pred.y_pred != label.label),
                    )
            counters["joined"] += len(joined)
            bucket = self.buckets[key[3]]
            if label_mark is not None:
                bucket.first_label = _earliest(bucket.first_label, label_mark)
            if y_true and not bucket.final:
                w = self._window(key)
                w.y_true += y_true
                w.y_pred += y_pred
                w.proba += proba
                w.version += len(y_true)
                w.dirty = True
                self.waiting += len(y_true)
        if self.waiting >= _SETTLE_AT:
            self._settle()

    def _settle(self) -> None:
        """Fold everything waiting in this partition's windows into their accumulators."""
        for bucket in self.buckets.values():
            for w in bucket.windows.values():
                w.settle(self.counters)
        self.waiting = 0

    def _new_window(self) -> _Window:
        return _Window(ClassificationWindow(self.auc_bins), FeatureWindow(), self.max_clients)

    def _window(self, key: WindowKey) -> _Window:
        windows = self.buckets[key[3]].windows
        w = windows.get(key)
        if w is None:
            w = windows[key] = self._new_window()
        return w

    # --- output ---------------------------------------------------------------------------

    def flush(self, open_windows: bool = True) -> Rows:
        """Rows of every window changed since the last flush; then drop what became final.
        Call it before reading :meth:`low_watermarks` for a checkpoint.

        With ``open_windows`` False, a window that can still gain predictions (the prediction
        watermark has not passed its end) is folded but not emitted: it stays changed, and a
        later flush emits it. Catching up, a window is then emitted about once, not at every
        flush that read part of it; its rows, and what the sink derives from them, are the
        same."""
        window_rows: list[dict[str, Any]] = []
        class_rows: list[dict[str, Any]] = []
        feature_rows: list[dict[str, Any]] = []
        client_rows: list[dict[str, Any]] = []
        client_feature_rows: list[dict[str, Any]] = []
        for start, bucket in self.buckets.items():
            hold = not open_windows and not self.pred_wm.passed(start + self.window_ms)
            for key, w in bucket.windows.items():
                if not w.dirty:
                    continue
                w.settle(self.counters)
                if hold:
                    continue
                w.dirty = False
                base = {
                    "model": key[0],
                    "model_version": key[1],
                    "segment": key[2],
                    "window_start": key[3],
                    "window_end": key[3] + self.window_ms,
                    "partition": self.partition,
                    "version": w.version,
                }
                totals, per_class = w.acc.rows()
                window_rows.append(base | totals)
                class_rows.extend(base | c for c in per_class)
                if w.features_dirty:  # labels change no feature: no new rows, no re-derive
                    w.features_dirty = False
                    # Versioned by the predictions folded in, the only thing they depend on.
                    feature_base = base | {"version": w.features.events}
                    feature_rows.extend(feature_base | f for f in w.features.rows())
                for client in sorted(w.dirty_clients):
                    summary = w.clients[client]
                    # A client's rows are versioned by its own predictions in the window.
                    client_base = base | {"client_id": client, "version": summary.events}
                    client_rows.append(client_base | {"requests": summary.events})
                    client_feature_rows.extend(client_base | f for f in summary.rows())
                w.dirty_clients.clear()
        self.waiting = 0  # every window something waits in is dirty, so it was settled
        detections = self.detectors.release("score", self.pred_wm.value, self.partition)
        detections += self.detectors.release(
            "error", min(self.pred_wm.value, self.label_wm.value), self.partition
        )
        self._evict()
        return Rows(
            window_rows, class_rows, feature_rows, detections, client_rows, client_feature_rows
        )

    def _evict(self) -> None:
        for start in sorted(self.buckets):
            bucket = self.buckets[start]
            horizon = start + self.window_ms + self.label_ttl_ms
            if not (self.label_wm.passed(horizon) or self.pred_wm.passed(horizon)):
                break  # later buckets have later horizons
            if not bucket.preds_closed and self.label_wm.passed(horizon):
                bucket.preds_closed = True
                expired = [p for p in bucket.preds.values() if p.open]
                for pred in expired:
                    pred.open = False
                self.counters["expired_unlabelled"] += len(expired)
            if not bucket.labels_closed and self.pred_wm.passed(horizon):
                bucket.labels_closed = True
                unmatched = [lab for lab in bucket.labels.values() if lab.open]
                for label in unmatched:
                    label.open = False
                self.counters["unmatched_labels"] += len(unmatched)
            if bucket.preds_closed and bucket.labels_closed:
                for event_id in bucket.preds:
                    del self.pred_index[event_id]
                for event_id in bucket.labels:
                    del self.label_index[event_id]
                del self.buckets[start]
                if self.evicted_through is None or start > self.evicted_through:
                    self.evicted_through = start

    def low_watermarks(self) -> tuple[Mark | None, Mark | None]:
        """(predictions, labels): the first offset live state needs in each topic, with the
        watermark there; None for a topic this partition has read nothing from."""
        pred_marks = [b.first_pred for b in self.buckets.values() if b.first_pred is not None]
        label_marks = [b.first_label for b in self.buckets.values() if b.first_label is not None]
        return _lowest(pred_marks, self.next_pred), _lowest(label_marks, self.next_label)

    def open_windows(self) -> int:
        return sum(len(b.windows) for b in self.buckets.values())


def _lowest(marks: Iterable[Mark], default: Mark | None) -> Mark | None:
    return min(marks, key=lambda m: m.offset, default=default)


def _observed(p: Prediction) -> dict[str, Any]:
    """The features of a prediction plus the prediction itself, as drift watches both."""
    observed = dict(p.features) if p.features else {}
    if isinstance(p.prediction, str | float):
        observed["__prediction__"] = p.prediction
    if p.score is not None:
        observed["__score__"] = p.score
    return observed


def _score(pred: _Pred) -> float | None:
    """What the score detectors watch: P(label = 1) for binary models, else the top
    probability (the model's confidence)."""
    if pred.proba is None:
        return None
    if pred.task == "binary":
        return pred.proba.get("1", 0.0)
    return max(pred.proba.values())


def _proba(p: Prediction) -> dict[str, float] | None:
    if p.probabilities is not None:
        return dict(p.probabilities)
    if p.task == "binary" and p.score is not None:
        return {"1": p.score, "0": 1.0 - p.score}
    return None


def _label_fits(task: str, label: Any) -> bool:
    if task == "binary":
        return label in ("0", "1")
    if task == "multiclass":
        return isinstance(label, str)
    if task == "regression":
        return isinstance(label, float) or (isinstance(label, str) and label.lstrip("-").isdigit())
    return isinstance(label, tuple)
