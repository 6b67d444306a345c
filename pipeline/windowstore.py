"""The windows of one partition: each metric family's state per (model, version, segment,
window), admission (bounded cardinality), the batches waiting to be folded, the rows of what
changed, and eviction once a window can no longer change.

Families are grouped by their window spec (the pipeline's ``window`` unless
``family_windows`` gives a family its own): a window holds the states of one group's families
that serve its predictions' tasks. A prediction is folded into one window of each group. A
window can change while predictions can still arrive in it, and labels can still join them:
it is dropped once both watermarks passed its end — and the end of the join window of its
last instant — plus ``label_ttl_seconds``. The last window start dropped in each group is
kept (and checkpointed): events of it or earlier re-read after a restart were folded before,
so their windows are *final*, and fold nothing again.

Predictions and pairs wait in their windows until the rows are read (every flush) or
``SETTLE_AT`` of them wait in the partition, and are then folded in one batch: results do not
depend on batching, and one batch costs far less than many small ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.estimators.family import Accumulator, MetricFamily, Pairs, Predictions, Row
from pipeline.join import PendingPrediction
from pipeline.windows import Mark, Watermark, Windows, WindowSpec
from schemas.events import Prediction

OVERFLOW_SEGMENT = "__overflow__"
WindowKey = tuple[str, str, str]  # model, model_version, segment
#: Where a prediction was folded, per window group: its slot and window, or None where it
#: folds into nothing (a window dropped before a restart, a model over the limit).
WindowRefs = tuple[tuple["_Slot", "_Window"] | None, ...]

#: Predictions and joined pairs waiting in a partition's windows that trigger folding them
#: in. It bounds what waits in memory (a prediction with 20 features holds ~2 KiB) however
#: long a flush takes, with batches still large enough to cost little per event.
SETTLE_AT = 4096


def earliest(a: Mark | None, b: Mark) -> Mark:
    return b if a is None or b.offset < a.offset else a


@dataclass(slots=True)
class _Window:
    """The states of one group's families in one window, and what waits to be folded."""

    families: Sequence[MetricFamily]
    counters: Counter[str]
    states: dict[str, Accumulator] = field(default_factory=dict)
    preds: dict[str, list[Prediction]] = field(default_factory=dict)  # by task
    pairs: dict[str, Pairs] = field(default_factory=dict)  # by task
    dirty: bool = True

    def settle(self) -> None:
        """Fold what waits into the families' states."""
        if self.preds:
            preds, self.preds = self.preds, {}
            for task, events in preds.items():
                batch = Predictions.of(task, events)
                for family in self.families:
                    if family.serves(task):
                        self._state(family).add_predictions(batch)
        if self.pairs:
            pairs, self.pairs = self.pairs, {}
            for task, batch in pairs.items():
                for family in self.families:
                    if task in family.label_tasks:
                        self._state(family).add_pairs(batch)

    def _state(self, family: MetricFamily) -> Accumulator:
        state = self.states.get(family.name)
        if state is None:
            state = self.states[family.name] = family.accumulator(self.counters)
        return state

    def rows(self) -> Iterable[tuple[str, list[Row]]]:
        for family in self.families:
            state = self.states.get(family.name)
            if state is not None:
                yield from state.rows().items()


@dataclass(slots=True)
class _Slot:
    """The windows of one group starting at one time."""

    end: int
    horizon: int  # both watermarks past it: nothing can change these windows any more
    final: bool  # dropped before a restart, re-read: fold nothing again
    windows: dict[WindowKey, _Window] = field(default_factory=dict)
    segments: dict[str, set[str]] = field(default_factory=dict)  # by model: cardinality limits
    first_pred: Mark | None = None  # the first offset of each topic folded into it
    first_label: Mark | None = None


@dataclass(slots=True)
class Rows:
    """Rows for the sink, by table, and how many windows they came from."""

    tables: dict[str, list[Row]] = field(default_factory=dict)
    windows: int = 0

    def by_table(self) -> list[tuple[str, list[Row]]]:
        return [(table, rows) for table, rows in self.tables.items() if rows]


class _Group:
    """The families of one window spec, and their windows by start."""

    def __init__(self, spec: WindowSpec, families: Sequence[MetricFamily]) -> None:
        self.spec = spec
        self.windows = Windows(spec)
        self.families = tuple(families)
        self.tasks: dict[str, bool] = {}  # task -> does a family of this group serve it
        self.slots: dict[int, _Slot] = {}
        #: The last window start whose state was dropped (see the module docstring).
        self.evicted_through: int | None = None

    def serves(self, task: str) -> bool:
        known = self.tasks.get(task)
        if known is None:
            known = self.tasks[task] = any(f.serves(task) for f in self.families)
        return known


class WindowStore:
    """The windows of one partition (see the module docstring)."""

    def __init__(
        self,
        groups: Sequence[tuple[WindowSpec, Sequence[MetricFamily]]],
        join: Windows,
        ttl_ms: int,
        counters: Counter[str],
        *,
        max_models: int,
        max_segments: int,
        table_order: Sequence[str] = (),
    ) -> None:
        self.groups = [_Group(s, fs) for s, fs in groups]
        self.join = join
        self.ttl_ms = ttl_ms
        self.counters = counters
        self.max_models = max_models
        self.max_segments = max_segments
        self.table_order = tuple(table_order)
        self.waiting = 0  # predictions and pairs not yet folded into their windows

    # --- input ----------------------------------------------------------------------------

    def add_prediction(self, p: Prediction, ts: int, mark: Mark) -> WindowRefs | None:
        """Queue ``p`` in its window of each group that serves its task (``mark``: its
        message's offset, and the watermark there). Returns where it went, for its pairs to
        follow, or None if every group refused its model (more than ``max_models`` in the
        window)."""
        refs: list[tuple[_Slot, _Window] | None] = []
        served = refused = 0
        task = p.task
        for group in self.groups:
            if not group.serves(task):
                refs.append(None)
                continue
            served += 1
            start = group.windows.start(ts)
            slot = group.slots.get(start) or self._new_slot(group, start)
            first = slot.first_pred
            if first is None or mark.offset < first.offset:
                slot.first_pred = mark
            if slot.final:
                refs.append(None)
                continue
            key = (p.model, p.model_version, p.segment)
            w = slot.windows.get(key)
            if w is None:
                admitted = self._admit(slot, key)
                if admitted is None:
                    self.counters["overflow_models"] += 1
                    refused += 1
                    refs.append(None)
                    continue
                w = slot.windows.get(admitted)
                if w is None:
                    w = slot.windows[admitted] = _Window(group.families, self.counters)
            waiting = w.preds.get(task)
            if waiting is None:
                w.preds[task] = [p]
            else:
                waiting.append(p)
            w.dirty = True
            refs.append((slot, w))
            self.waiting += 1
        if refused and refused == served:
            return None
        if self.waiting >= SETTLE_AT:
            self.settle()
        return tuple(refs)

    def add_pair(self, pred: PendingPrediction, label: Any, mark: Mark | None) -> None:
        """Queue a joined pair in the windows its prediction went to (``mark``: where its
        label's message is, for the windows' first label offset). They are held while the
        prediction can still join: both are dropped only after its join window closed."""
        for ref in pred.windows:
            if ref is None:
                continue
            slot, w = ref
            if mark is not None:
                slot.first_label = earliest(slot.first_label, mark)
            pairs = w.pairs.get(pred.task)
            if pairs is None:
                pairs = w.pairs[pred.task] = Pairs(pred.task)
            pairs.y_true.append(label)
            pairs.y_pred.append(pred.y_pred)
            pairs.score.append(pred.score)
            pairs.probabilities.append(pred.probabilities)
            w.dirty = True
            self.waiting += 1
        if self.waiting >= SETTLE_AT:
            self.settle()

    def _new_slot(self, group: _Group, start: int) -> _Slot:
        end = group.windows.end(start)
        join = self.join
        last = max(end, join.end(join.start(end - 1)))  # the join window of its last instant
        evicted = group.evicted_through
        slot = _Slot(end, last + self.ttl_ms, evicted is not None and start <= evicted)
        group.slots[start] = slot
        return slot

    def _admit(self, slot: _Slot, key: WindowKey) -> WindowKey | None:
        """Bound a window's cardinality: a model past ``max_models`` is not folded (and is
        counted), a segment past ``max_segments`` of its model is folded into the
        ``__overflow__`` segment (and counted). Per window, so memory stays bounded and the
        decision depends on the events of that window only."""
        model, version, segment = key
        segments = slot.segments.get(model)
        if segments is None:
            if len(slot.segments) >= self.max_models:
                return None
            segments = slot.segments[model] = set()
        if segment not in segments:
            if len(segments) >= self.max_segments:
                self.counters["overflow_segments"] += 1
                return (model, version, OVERFLOW_SEGMENT)
            segments.add(segment)
        return key

    def settle(self) -> None:
        """Fold everything waiting into the families' states."""
        for group in self.groups:
            for slot in group.slots.values():
                for w in slot.windows.values():
                    w.settle()
        self.waiting = 0

    # --- output ---------------------------------------------------------------------------

    def rows(self, partition: int, pred_wm: Watermark, open_windows: bool = True) -> Rows:
        """Rows of every window changed since the last call; with ``open_windows`` False, a
        window that can still gain predictions (the prediction watermark has not passed its
        end) is folded but not emitted: it stays changed, and a later call emits it."""
        out = Rows({table: [] for table in self.table_order})
        for group in self.groups:
            for start, slot in group.slots.items():
                hold = not open_windows and not pred_wm.passed(slot.end)
                for (model, version, segment), w in slot.windows.items():
                    if not w.dirty:
                        continue
                    w.settle()
                    if hold:
                        continue
                    w.dirty = False
                    out.windows += 1
                    base = {
                        "model": model,
                        "model_version": version,
                        "segment": segment,
                        "window_start": start,
                        "window_end": slot.end,
                        "partition": partition,
                    }
                    for table, rows in w.rows():
                        out.tables.setdefault(table, []).extend(base | r for r in rows)
        self.waiting = 0  # every window something waits in is dirty, so it was settled
        return out

    def evict(self, pred_wm: Watermark, label_wm: Watermark) -> None:
        """Drop the windows that can no longer change."""
        for group in self.groups:
            for start in sorted(group.slots, key=lambda s: group.slots[s].horizon):
                horizon = group.slots[start].horizon
                if not (pred_wm.passed(horizon) and label_wm.passed(horizon)):
                    break  # later windows have later horizons
                del group.slots[start]
                if group.evicted_through is None or start > group.evicted_through:
                    group.evicted_through = start

    def evicted_through(self) -> dict[str, int]:
        """The last window start dropped, by window spec (for the checkpoint)."""
        return {
            g.spec.describe(): g.evicted_through
            for g in self.groups
            if g.evicted_through is not None
        }

    def restore_evicted_through(self, starts: Mapping[str, int]) -> None:
        """Set what the checkpoint a restart resumes from says was dropped (before any input
        is folded)."""
        for group in self.groups:
            group.evicted_through = starts.get(group.spec.describe(), starts.get(""))

    def first_marks(self) -> tuple[list[Mark], list[Mark]]:
        """The first offsets of each topic that the windows still need."""
        slots = [s for g in self.groups for s in g.slots.values()]
        return (
            [s.first_pred for s in slots if s.first_pred is not None],
            [s.first_label for s in slots if s.first_label is not None],
        )

    def open_windows(self) -> int:
        return sum(len(s.windows) for g in self.groups for s in g.slots.values())

    def dirty(self) -> bool:
        return any(
            w.dirty for g in self.groups for s in g.slots.values() for w in s.windows.values()
        )
