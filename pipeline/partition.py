"""The state of one input partition: its event-time clock (a watermark per topic), the join
of predictions with labels (:mod:`pipeline.join`), the windows of every metric family
(:mod:`pipeline.windowstore`), and the per-event streams its drift detectors watch.

Every decision is made from event time and the position in each topic, never from arrival
order across the two topics or from the wall clock, so re-reading from a checkpoint rebuilds
exactly the state and rows of an undisturbed run:

- a prediction older than the prediction watermark is *late*: counted, not folded; a label
  older than the label watermark likewise;
- predictions and labels join by the rule of :mod:`pipeline.join`, and a joined pair folds
  into the windows its prediction went to;
- what can no longer join or change is dropped (the join's buckets, the store's windows).

Rows are versioned by the input folded into them, so a state rebuilt from part of the input
emits lower versions than the complete one and loses to it in ClickHouse.

The committed offset of each topic is the *low watermark of live state*: the first offset any
live prediction, label or window still needs (:meth:`PartitionState.low_watermarks`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from pipeline.detection import DETECTIONS, DetectorStreams
from pipeline.estimators.family import MetricFamily
from pipeline.estimators.registry import families as configured_families
from pipeline.join import Join, PendingLabel, PendingPrediction
from pipeline.settings import Settings
from pipeline.windows import NEVER, Mark, Watermark, Windows, WindowSpec
from pipeline.windowstore import Rows, WindowStore
from schemas.deadletter import EVENT_ID_CONFLICT
from schemas.events import Label, Prediction

#: (index in the batch, reason, detail) of an event a partition refused to fold.
Refused = tuple[int, str, str]


class PartitionState:
    """The clock, join and windows of one partition (see the module docstring).

    Parameters
    ----------
    window
        The join's window, and every family's unless ``family_windows`` names it.
    families
        The metric families, in the registry's order.
    family_windows
        A window of its own for the families it names.
    """

    def __init__(
        self,
        partition: int,
        *,
        window: WindowSpec,
        lateness_ms: int,
        label_ttl_ms: int,
        families: Sequence[MetricFamily],
        family_windows: Mapping[str, WindowSpec] | None = None,
        detectors: Sequence[str] = (),
        max_models: int = 1000,
        max_segments: int = 1000,
    ) -> None:
        self.partition = partition
        self.counters: Counter[str] = Counter()
        self.pred_wm = Watermark(lateness_ms)
        self.label_wm = Watermark(lateness_ms)
        self.families = tuple(families)
        join_windows = Windows(window)
        self.join = Join(join_windows, label_ttl_ms, self.counters)
        groups: dict[WindowSpec, list[MetricFamily]] = {}
        for family in self.families:
            groups.setdefault((family_windows or {}).get(family.name, window), []).append(family)
        self.store = WindowStore(
            list(groups.items()),
            join_windows,
            label_ttl_ms,
            self.counters,
            max_models=max_models,
            max_segments=max_segments,
            table_order=[t.name for f in self.families for t in f.tables],
        )
        self.next_pred: Mark | None = None  # the next prediction offset to read, with its watermark
        self.next_label: Mark | None = None
        self.detectors = DetectorStreams(detectors)
        self._by_task: dict[str, tuple[MetricFamily | None, tuple[MetricFamily, ...]]] = {}

    @classmethod
    def from_settings(cls, partition: int, settings: Settings) -> PartitionState:
        """The state of one partition as the compute stage and replays configure it."""
        return cls(
            partition,
            window=settings.window_spec,
            lateness_ms=settings.lateness_seconds * 1000,
            label_ttl_ms=settings.label_ttl_seconds * 1000,
            families=configured_families(settings),
            family_windows=settings.family_window_specs,
            detectors=settings.detector_names,
            max_models=settings.max_models,
            max_segments=settings.max_segments,
        )

    def _task(self, task: str) -> tuple[MetricFamily | None, tuple[MetricFamily, ...]]:
        """A task's quality family (the one counting its predictions, whose values the drift
        detectors watch), and the families that fold its labels."""
        known = self._by_task.get(task)
        if known is None:
            quality = next(
                (f for f in self.families if f.serves(task) and f.counts_predictions), None
            )
            labelled = tuple(f for f in self.families if task in f.label_tasks)
            known = self._by_task[task] = (quality, labelled)
        return known

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
        join, store, counters = self.join, self.store, self.counters
        pending, labels = join.preds, join.labels
        detectors = self.detectors if self.detectors.names else None
        by_task = self._by_task
        pairs: list[tuple[str, PendingPrediction, PendingLabel]] = []
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
            known = pending.get(event_id)
            if known is not None:
                if known.model == p.model:
                    counters["duplicate_predictions"] += 1
                else:
                    counters["event_id_conflicts"] += 1
                    refused.append(
                        (
                            i,
                            EVENT_ID_CONFLICT,
                            f"event_id {event_id!r} of model {p.model!r} is taken by a"
                            f" prediction of model {known.model!r}",
                        )
                    )
                continue
            bucket = join.bucket(ts)
            first = bucket.first_pred
            if first is None or offset < first.offset:
                bucket.first_pred = mark
            windows = store.add_prediction(p, ts, mark)
            if windows is None:
                continue  # its model is over the limit (counted)
            entry = PendingPrediction(
                ts,
                p.model,
                p.model_version,
                p.task,
                p.prediction,
                p.score,
                p.probabilities,
                windows,
            )
            pending[event_id] = bucket.preds[event_id] = entry
            if detectors is not None:
                scoring = (by_task.get(p.task) or self._task(p.task))[0]
                score = None if scoring is None else scoring.score(p)
                if score is not None:
                    detectors.push("score", ts, event_id, p.model, p.model_version, score)
            label = labels.get(event_id)
            if (
                label is not None
                and label.open
                and join.joinable(ts, label.ts_ms)
                and join.same_model(p.model, label)
            ):
                pairs.append((event_id, entry, label))
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
        join, counters = self.join, self.counters
        pending, known = join.preds, join.labels
        pairs: list[tuple[str, PendingPrediction, PendingLabel]] = []
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
            if event_id in known:
                counters["duplicate_labels"] += 1
                continue
            bucket = join.bucket(ts)
            first = bucket.first_label
            if first is None or offset < first.offset:
                bucket.first_label = mark
            entry = PendingLabel(ts, lab.label, lab.model)
            known[event_id] = bucket.labels[event_id] = entry
            pred = pending.get(event_id)
            if (
                pred is not None
                and pred.open
                and join.joinable(pred.ts_ms, ts)
                and join.same_model(pred.model, entry)
            ):
                pairs.append((event_id, pred, entry))
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

    def _fold(
        self, pairs: list[tuple[str, PendingPrediction, PendingLabel]], label_mark: Mark | None
    ) -> None:
        """Queue joined pairs in their predictions' windows, and the error stream's values."""
        counters, store, by_task = self.counters, self.store, self._by_task
        detectors = self.detectors if self.detectors.names else None
        if pairs:
            counters["joined"] += len(pairs)
        for event_id, pred, label in pairs:
            scoring, labelled = by_task.get(pred.task) or self._task(pred.task)
            if not labelled:
                counters["labels_unsupported_task"] += 1
                continue
            fits = True
            for family in labelled:
                if not family.accepts_label(pred.task, label.label):
                    fits = False
            if not fits:
                counters["label_type_mismatch"] += 1
                continue
            if detectors is not None and scoring is not None and pred.ts_ms <= label.ts_ms:
                error = scoring.error(pred.task, pred.y_pred, label.label)
                if error is not None:
                    detectors.push(
                        "error", label.ts_ms, event_id, pred.model, pred.model_version, error
                    )
            store.add_pair(pred, label.label, label_mark)

    # --- output ---------------------------------------------------------------------------

    def flush(self, open_windows: bool = True) -> Rows:
        """Rows of every window changed since the last flush, and of the detectors' firings;
        then drop what became final. Call it before reading :meth:`low_watermarks` for a
        checkpoint. With ``open_windows`` False, windows that can still gain predictions wait
        for a later flush (catching up, each window's rows then go out about once)."""
        rows = self.store.rows(self.partition, self.pred_wm, open_windows)
        detections = self.detectors.release("score", self.pred_wm.value, self.partition)
        detections += self.detectors.release(
            "error", min(self.pred_wm.value, self.label_wm.value), self.partition
        )
        rows.tables[DETECTIONS.name] = detections
        self.join.evict(self.pred_wm, self.label_wm)
        self.store.evict(self.pred_wm, self.label_wm)
        return rows

    def low_watermarks(self) -> tuple[Mark | None, Mark | None]:
        """(predictions, labels): the first offset live state needs in each topic, with the
        watermark there; None for a topic this partition has read nothing from."""
        join_preds, join_labels = self.join.first_marks()
        window_preds, window_labels = self.store.first_marks()
        return (
            _lowest([*join_preds, *window_preds], self.next_pred),
            _lowest([*join_labels, *window_labels], self.next_label),
        )

    @property
    def evicted_through(self) -> dict[str, int]:
        """The last window start dropped, by window spec (see :mod:`pipeline.windowstore`)."""
        return self.store.evicted_through()

    @evicted_through.setter
    def evicted_through(self, starts: Mapping[str, int]) -> None:
        self.store.restore_evicted_through(starts)

    def open_windows(self) -> int:
        return self.store.open_windows()

    def dirty(self) -> bool:
        """Something changed that a flush has not emitted yet."""
        return self.store.dirty()


def _lowest(marks: Iterable[Mark], default: Mark | None) -> Mark | None:
    return min(marks, key=lambda m: m.offset, default=default)
