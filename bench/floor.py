"""The least work any monitor of the benchmark's event set must do, as a yardstick for the hot
path (``bench.hotpath`` prints its rate beside the runtime's).

Per message: parse it; join each prediction and its label by ``event_id``, whichever comes
first waiting for the other, and count (model, predicted, actual); count each feature of a
prediction into a histogram of its model (numeric: 32 fixed bins, with numpy, 4096
predictions at a time whatever the messages hold; categorical: a count per value). That is
what accuracy, recall and feature drift cannot do without. Everything else modelmon does is
left out: validation and dead letters, event-time windows and watermarks, the join's time
limits, scores and AUC, segments, exact sums and raw values for exact tests, detectors, rows,
checkpoints.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from bench.events import CATEGORICAL, NUMERIC

EDGES = np.linspace(-4.0, 4.0, 31)  # 32 bins: under, 30 between, over
BATCH = 4096  # predictions whose features are binned at once


@dataclass
class Floor:
    """Joins waiting for their other half, the counts, and features waiting to be binned."""

    pending: dict[str, tuple[str, str]] = field(default_factory=dict)  # (model, predicted)
    unmatched: dict[str, str] = field(default_factory=dict)  # labels before their prediction
    confusion: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    numeric: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    categorical: defaultdict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    waiting: defaultdict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # features by model, not yet binned
    waiting_count: int = 0

    def add(self, kind: str, value: bytes) -> int:
        """Fold one message (an envelope or one event) of ``kind``; returns its events."""
        obj = orjson.loads(value)
        events: list[dict[str, Any]] = obj.get("events", [obj])
        if kind == "prediction":
            self._predictions(events)
        else:
            pop, unmatched, confusion = self.pending.pop, self.unmatched, self.confusion
            for e in events:
                p = pop(e["event_id"], None)
                if p is None:
                    unmatched[e["event_id"]] = e["label"]
                else:
                    confusion[(p[0], p[1], e["label"])] += 1
        return len(events)

    def _predictions(self, events: Iterable[dict[str, Any]]) -> None:
        pending, pop, confusion = self.pending, self.unmatched.pop, self.confusion
        by_model = self.waiting
        for e in events:
            label = pop(e["event_id"], None)
            if label is None:
                pending[e["event_id"]] = (e["model"], e["prediction"])
            else:
                confusion[(e["model"], e["prediction"], label)] += 1
            by_model[e["model"]].append(e["features"])
            self.waiting_count += 1
        if self.waiting_count >= BATCH:
            self.finish()

    def finish(self) -> None:
        """Bin the features still waiting."""
        for model, features in self.waiting.items():
            for name in NUMERIC:
                values = np.fromiter([f[name] for f in features], float, len(features))
                counts = np.bincount(np.searchsorted(EDGES, values), minlength=EDGES.size + 1)
                key = (model, name)
                if key in self.numeric:
                    self.numeric[key] += counts
                else:
                    self.numeric[key] = counts
            for name in CATEGORICAL:
                self.categorical[(model, name)].update([f[name] for f in features])
        self.waiting.clear()
        self.waiting_count = 0
