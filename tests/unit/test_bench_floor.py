"""The benchmark's floor does the work it stands for: its counts are scikit-learn's and
numpy's on the same events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from bench.events import (
    CATEGORICAL,
    MODELS,
    NUMERIC,
    EventSetSpec,
    Message,
    envelope_messages,
    from_spec,
    single_messages,
)
from bench.floor import BATCH, EDGES, Floor
from schemas.topics import Topics


@pytest.mark.parametrize("messages", [envelope_messages, single_messages])
def test_floor_counts_equal_sklearn_and_numpy_on_the_same_events(
    messages: Callable[..., Iterable[Message]],
) -> None:
    spec = EventSetSpec(events=BATCH + 1_000, seed=7)  # binned in more than one batch
    topics = Topics("floor.")
    floor = Floor()
    events = 0
    for topic, _, _, value, _ in messages(from_spec(spec), topics, 4):
        events += floor.add("prediction" if topic == topics.predictions else "label", value)
    floor.finish()
    preds, labels = {}, {}
    for kind, e in from_spec(spec):
        (preds if kind == "prediction" else labels)[e["event_id"]] = e
    assert events == len(preds) + len(labels)
    for model, classes in MODELS.items():
        joined = [
            (p["prediction"], labels[i]["label"])
            for i, p in preds.items()
            if p["model"] == model and i in labels
        ]
        y_pred, y_true = zip(*joined, strict=True)
        expected = confusion_matrix(y_true, y_pred, labels=classes)
        got = np.array([[floor.confusion[(model, p, t)] for p in classes] for t in classes])
        assert (got == expected).all()
        rows = [p["features"] for p in preds.values() if p["model"] == model]
        lower, upper = np.r_[-np.inf, EDGES], np.r_[EDGES, np.inf]  # bins (lower, upper]
        for name in NUMERIC:
            values = np.array([f[name] for f in rows])
            bins = zip(lower, upper, strict=True)
            binned = [((values > lo) & (values <= hi)).sum() for lo, hi in bins]
            assert floor.numeric[(model, name)].tolist() == binned
        for name in CATEGORICAL:
            assert floor.categorical[(model, name)] == Counter(f[name] for f in rows)
    assert not set(floor.pending) & set(labels)  # every labelled prediction was joined,
    assert not set(floor.unmatched) & set(preds)  # in whichever order the two came
