"""The join and windows of one partition: rules, and exactness under any interleaving and
any restart from a checkpoint."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import windowstore
from pipeline.detection import DetectorStreams
from pipeline.estimators.registry import families
from pipeline.partition import PartitionState
from pipeline.settings import Settings
from pipeline.windows import WindowSpec
from schemas.events import Label, Prediction

WINDOW = 60_000
TTL = 120_000


def pred(
    eid: str,
    ts: int,
    y: str = "1",
    score: float = 0.8,
    segment: str = "",
    features: Any = None,
    client: str | None = None,
) -> Prediction:
    return Prediction(
        eid,
        "m",
        "v1",
        ts,
        "binary",
        y,
        score=score,
        segment=segment,
        features=features,
        client_id=client,
    )


def label(eid: str, ts: int, y: str = "1") -> Label:
    return Label(eid, ts, y)


DETECTORS = ("adwin", "page_hinkley")


def new_state(
    max_clients: int = 3,
    auc_bins: int = 100,
    pred_max_ts: int | None = None,
    label_max_ts: int | None = None,
    evicted_through: dict[str, int] | None = None,
    **kw: Any,
) -> PartitionState:
    settings = Settings(auc_bins=auc_bins, max_clients=max_clients)
    state = PartitionState(
        0,
        window=WindowSpec.parse("60"),
        lateness_ms=10_000,
        label_ttl_ms=TTL,
        families=families(settings),
        **{"detectors": DETECTORS, **kw},
    )
    if pred_max_ts is not None:
        state.pred_wm.max_ts = pred_max_ts
    if label_max_ts is not None:
        state.label_wm.max_ts = label_max_ts
    if evicted_through:
        state.evicted_through = evicted_through
    return state


def windows(rows: Any) -> list[dict[str, Any]]:
    return rows.tables["quality_partials"]


def final_rows(emitted: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """What ReplacingMergeTree keeps: the highest version per key."""
    out: dict[tuple, dict[str, Any]] = {}
    for row in emitted:
        if "detector" in row:  # a detector firing: the row is its own key
            key = tuple(sorted(row.items()))
            out[key] = row
            continue
        key = (
            row["model"],
            row["model_version"],
            row["segment"],
            row["window_start"],
            row["partition"],
            row.get("class"),
            row.get("client_id"),
            row.get("feature"),
        )
        if key not in out or row["version"] > out[key]["version"]:
            out[key] = row
    return out


def run(
    state: PartitionState,
    messages: list[tuple[str, int, list[Any]]],
    flush_every: int = 1,
    open_windows: bool = True,
    last_flush: bool = True,
) -> list[dict[str, Any]]:
    """Rows emitted reading ``messages``, flushing every ``flush_every`` of them (holding
    windows still open for predictions unless ``open_windows``, as a worker's flushes on
    input do) and, if ``last_flush``, once more at the end with every window (its timer's)."""
    emitted: list[dict[str, Any]] = []
    for i, (topic, offset, events) in enumerate(messages):
        if topic == "p":
            state.add_predictions(offset, events)
        else:
            state.add_labels(offset, events)
        if (i + 1) % flush_every == 0:
            emitted += [r for _, rows in state.flush(open_windows).by_table() for r in rows]
    if last_flush:
        emitted += [r for _, rows in state.flush().by_table() for r in rows]
    return emitted


def test_join_in_either_order_counts_each_event_once() -> None:
    s = new_state()
    s.add_predictions(0, [pred("a", 1_000, "1"), pred("b", 2_000, "0")])
    s.add_labels(0, [label("a", 5_000, "1"), label("c", 5_000, "1")])
    s.add_predictions(1, [pred("c", 3_000, "0"), pred("a", 1_000, "1")])  # a is a retry
    s.add_labels(1, [label("a", 6_000, "1")])  # a duplicate label
    rows = s.flush()
    (window,) = windows(rows)
    assert (window["predictions"], window["labelled"], window["correct"]) == (3, 2, 1)
    assert s.counters["duplicate_predictions"] == 1
    assert s.counters["duplicate_labels"] == 1


def test_late_prediction_is_counted_not_folded() -> None:
    s = new_state()
    s.add_predictions(0, [pred("a", 100_000)])
    s.add_predictions(1, [pred("b", 89_999), pred("c", 90_000)])  # watermark 90_000
    assert s.counters["late_predictions"] == 1
    assert sum(r["predictions"] for r in windows(s.flush())) == 2


def test_label_after_ttl_does_not_join_and_state_is_released() -> None:
    s = new_state()
    s.add_predictions(0, [pred("a", 0)])
    # the label arrives after end(window) + ttl: rule says no join
    s.add_labels(0, [label("a", WINDOW + TTL)])
    rows = s.flush()
    assert windows(rows)[0]["labelled"] == 0
    # both watermarks far ahead: the first window's state is dropped
    s.add_predictions(1, [pred("z", 10 * (WINDOW + TTL))])
    s.add_labels(1, [label("z", 10 * (WINDOW + TTL))])
    s.flush()
    assert 0 not in s.join.buckets and not s.store.groups[0].slots.get(0)
    assert s.counters["expired_unlabelled"] == 1
    assert s.counters["unmatched_labels"] == 1


def test_low_watermarks_hold_back_for_open_windows() -> None:
    s = new_state()
    s.add_predictions(0, [pred("a", 0)])
    s.add_predictions(1, [pred("b", 10 * WINDOW)])
    s.flush()
    p_mark, l_mark = s.low_watermarks()
    assert p_mark is not None and p_mark.offset == 0  # "a" still waits for its label
    assert l_mark is None


def _stream(seed: int, n: int = 1500) -> tuple[list[list[Any]], list[list[Any]]]:
    """Predictions in time order and labels delayed, both in small messages; from the middle
    on the model is worse and its scores and a feature shift, so the detectors fire."""
    rng = random.Random(seed)
    preds, labels = [], []
    for i in range(n):
        ts = i * 200 + rng.randint(0, 5_000)
        y = rng.choice("01")
        worse = i > n // 2
        y_pred = y if rng.random() < (0.6 if worse else 0.95) else "10"[int(y)]
        score = min(max(rng.gauss(0.7 if worse else 0.5, 0.1), 0.0), 1.0)
        features = {"x": rng.gauss(2.0 if worse else 0.0, 1.0), "c": rng.choice("pqr")}
        client = rng.choice([None, "c1", "c2", "c3", "c4", "c5"])  # more than max_clients
        preds.append(pred(f"e{i}", ts, y_pred, score, rng.choice("ab"), features, client))
        if rng.random() < 0.9:
            labels.append(label(f"e{i}", ts + rng.randint(1_000, 200_000), y))
        if rng.random() < 0.05:
            preds.append(preds[-1])  # producer retry
    labels.sort(key=lambda lab: lab.ts_ms + rng.randint(0, 3_000))

    def chunk(xs: list[Any]) -> list[list[Any]]:
        out, i = [], 0
        while i < len(xs):
            k = rng.randint(1, 12)
            out.append(xs[i : i + k])
            i += k
        return out

    return chunk(preds), chunk(labels)


def _numbered(topic: str, chunks: list[list[Any]], start: int = 0) -> list[tuple[str, int, list]]:
    return [(topic, i, chunks[i]) for i in range(start, len(chunks))]


def _interleave(a: list, b: list, rng: random.Random) -> list:
    """A random merge of two topics' messages, each topic in its own order."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and rng.random() < 0.5):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), order=st.integers(0, 10_000))
def test_final_rows_do_not_depend_on_how_the_two_topics_interleave(seed: int, order: int) -> None:
    preds, labels = _stream(seed)
    p, lab = _numbered("p", preds), _numbered("l", labels)
    a = final_rows(run(new_state(), _interleave(p, lab, random.Random(order))))
    b = final_rows(run(new_state(), _interleave(p, lab, random.Random(order + 1)), 7))
    c = final_rows(run(new_state(), _interleave(p, lab, random.Random(order + 2)), 5, False))
    assert a == b == c


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    order=st.integers(0, 10_000),
    crash_at=st.floats(0.05, 0.95),
    held=st.booleans(),
)
def test_restart_from_checkpoint_gives_the_rows_of_an_undisturbed_run(
    seed: int, order: int, crash_at: float, held: bool
) -> None:
    preds, labels = _stream(seed)
    rng = random.Random(order)
    messages = _interleave(_numbered("p", preds), _numbered("l", labels), rng)
    undisturbed = final_rows(run(new_state(), messages))

    # Run to the crash point, flushing (and so checkpointing) after every message; if
    # ``held``, the windows still open were never emitted before the crash.
    cut = int(len(messages) * crash_at)
    first = new_state()
    emitted = run(first, messages[:cut], open_windows=not held, last_flush=not held)
    p_mark, l_mark = first.low_watermarks()
    # Restart: re-read each topic from its checkpointed offset with the watermark there.
    second = new_state(
        pred_max_ts=p_mark.max_ts if p_mark else None,
        label_max_ts=l_mark.max_ts if l_mark else None,
        evicted_through=first.evicted_through,
    )
    saved = orjson.loads(orjson.dumps(first.detectors.to_state()))
    second.detectors = DetectorStreams(DETECTORS, saved)
    rest = _interleave(
        _numbered("p", preds, p_mark.offset if p_mark else 0),
        _numbered("l", labels, l_mark.offset if l_mark else 0),
        rng,
    )
    emitted += run(second, rest)
    assert final_rows(emitted) == undisturbed


def test_a_flush_may_hold_windows_that_can_still_gain_predictions() -> None:
    s = new_state()
    s.add_predictions(0, [pred("a", 1_000, features={"x": 1.0})])
    s.add_labels(0, [label("a", 2_000)])
    held = s.flush(open_windows=False)
    assert (windows(held), held.tables["feature_partials"]) == ([], [])
    assert s.store.waiting == 0  # folded all the same: what waits stays bounded
    s.add_predictions(1, [pred("b", 2_000, features={"x": 2.0})])
    (window,) = windows(s.flush())  # a flush with open windows emits it, with both events
    assert (window["predictions"], window["labelled"]) == (2, 1)
    assert windows(s.flush(open_windows=False)) == []  # nothing changed since

    s.add_predictions(2, [pred("c", 3_000)])
    s.add_predictions(3, [pred("z", WINDOW + 10_000)])  # the watermark reaches its end
    rows = s.flush(open_windows=False)
    assert [(w["window_start"], w["predictions"]) for w in windows(rows)] == [(0, 3)]


def test_cardinality_is_bounded_per_window_and_the_overflow_counted() -> None:
    s = new_state(auc_bins=10, max_models=2, max_segments=2)
    preds = [
        Prediction(f"e{i}", model, "v", 1_000, "binary", "1", segment=segment)
        for i, (model, segment) in enumerate(
            [("a", "s1"), ("a", "s2"), ("a", "s3"), ("a", "s4"), ("b", "s1"), ("c", "s1")]
        )
    ]
    s.add_predictions(0, preds)
    got = {(r["model"], r["segment"]): r["predictions"] for r in windows(s.flush())}
    assert got == {("a", "s1"): 1, ("a", "s2"): 1, ("a", "__overflow__"): 2, ("b", "s1"): 1}
    assert (s.counters["overflow_segments"], s.counters["overflow_models"]) == (2, 1)


def test_client_rows_count_requests_and_summarise_inputs_per_client() -> None:
    s = new_state(max_clients=2)
    clients = ["a", "b", "a", None, "c", "d", "a", "c"]
    s.add_predictions(
        0, [pred(f"e{i}", 1_000, features={"x": float(i)}, client=c) for i, c in enumerate(clients)]
    )
    rows = s.flush()
    requests = {
        r["client_id"]: (r["requests"], r["version"]) for r in rows.tables["client_partials"]
    }
    # a and b came first; c and d share the overflow client; events without a client id count
    # for the window only.
    assert requests == {"a": (3, 3), "b": (1, 1), "__overflow__": (3, 3)}
    assert s.counters["overflow_clients"] == 3
    client_features = rows.tables["client_feature_partials"]
    x = {r["client_id"]: r for r in client_features if r["feature"] == "x"}
    assert (x["a"]["min"], x["a"]["max"], x["a"]["present"]) == (0.0, 6.0, 3)
    assert sum(x["__overflow__"]["sketch"].values()) == 3
    assert x["a"]["values"] == []  # sketches only: per-client rows stay small
    # Only clients with new predictions are emitted again.
    s.add_predictions(1, [pred("e9", 2_000, features={"x": 1.0}, client="b")])
    again = s.flush()
    assert [(r["client_id"], r["requests"]) for r in again.tables["client_partials"]] == [("b", 2)]
    assert "client_partials" not in new_state(max_clients=0).flush().tables


def test_what_waits_to_be_folded_is_bounded_per_partition(monkeypatch: Any) -> None:
    """Predictions and joined pairs wait in their windows to be folded in batches; however
    many windows they are spread over, at most ``SETTLE_AT`` wait in a partition, and when
    they are folded does not change the rows."""
    preds, labels = _stream(11)
    messages = _interleave(_numbered("p", preds), _numbered("l", labels), random.Random(5))
    folded_at_flush = final_rows(run(new_state(), messages, flush_every=len(messages) + 1))

    monkeypatch.setattr(windowstore, "SETTLE_AT", 8)
    s = new_state()
    most = 0
    for topic, offset, events in messages:
        (s.add_predictions if topic == "p" else s.add_labels)(offset, events)
        held = [
            w for g in s.store.groups for slot in g.slots.values() for w in slot.windows.values()
        ]
        waiting = sum(
            sum(map(len, w.preds.values())) + sum(map(len, w.pairs.values())) for w in held
        )
        assert waiting == s.store.waiting < 8
        most = max(most, sum(1 for w in held if w.preds or w.pairs))
    assert most > 1  # what waited was spread over several windows
    emitted = [r for _, rows in s.flush().by_table() for r in rows]
    assert final_rows(emitted) == folded_at_flush


def _ms(text: str, zone: str = "UTC") -> int:
    """Epoch ms of a local time in ``zone`` (an independent reference: zoneinfo itself)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return round(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def _calendar_state(window: str, zone: str = "UTC", **family_windows: str) -> PartitionState:
    settings = Settings(auc_bins=10, max_clients=0)
    return PartitionState(
        0,
        window=WindowSpec.parse(window, tz=zone),
        lateness_ms=10 * 86_400_000,  # nothing of these few events is late
        label_ttl_ms=0,
        families=families(settings),
        family_windows={n: WindowSpec.parse(w, tz=zone) for n, w in family_windows.items()},
    )


@pytest.mark.parametrize(
    ("window", "zone", "events", "expected"),
    [
        (  # the night Berlin skips an hour: a day of 23 hours, and its neighbours
            "day",
            "Europe/Berlin",
            ["2026-03-28T23:30", "2026-03-29T00:30", "2026-03-29T23:30", "2026-03-30T00:30"],
            [("2026-03-28", "2026-03-29", 1), ("2026-03-29", "2026-03-30", 2),
             ("2026-03-30", "2026-03-31", 1)],
        ),
        (  # the night it repeats one: 25 hours, the repeated 02:30 twice in the same day
            "day",
            "Europe/Berlin",
            ["2026-10-25T01:30", "2026-10-25T23:59:59.999", "2026-10-26T00:00"],
            [("2026-10-25", "2026-10-26", 2), ("2026-10-26", "2026-10-27", 1)],
        ),
        (  # ISO week 53 of 2020: Monday 28 December to Sunday 3 January
            "week",
            "UTC",
            ["2020-12-28T00:00", "2020-12-31T12:00", "2021-01-03T23:59:59.999", "2021-01-04T00:00"],
            [("2020-12-28", "2021-01-04", 3), ("2021-01-04", "2021-01-11", 1)],
        ),
        (  # month ends, a leap day included, in a zone ahead of UTC
            "month",
            "Asia/Kolkata",
            ["2024-01-31T23:59:59.999", "2024-02-01T00:00", "2024-02-29T23:59", "2024-03-01T00:00"],
            [("2024-01-01", "2024-02-01", 1), ("2024-02-01", "2024-03-01", 2),
             ("2024-03-01", "2024-04-01", 1)],
        ),
    ],
)  # fmt: skip
def test_calendar_windows_hold_what_the_local_calendar_says(
    window: str, zone: str, events: list[str], expected: list[tuple[str, str, int]]
) -> None:
    s = _calendar_state(window, zone)
    s.add_predictions(0, [pred(f"e{i}", _ms(t, zone)) for i, t in enumerate(events)])
    got = [(r["window_start"], r["window_end"], r["predictions"]) for r in windows(s.flush())]
    assert sorted(got) == [(_ms(a, zone), _ms(b, zone), n) for a, b, n in expected]


def test_a_family_can_have_windows_of_its_own() -> None:
    """Classification per day, feature summaries per hour: each family's rows in its own
    windows, labels joined into the day's, and both dropped once nothing can change them."""
    s = _calendar_state("1h", "UTC", classification="day")
    s.join.ttl_ms = s.store.ttl_ms = 0
    s.pred_wm.lateness_ms = s.label_wm.lateness_ms = 0
    day = _ms("2026-05-04T00:00")
    times = [day + h * 3_600_000 + 60_000 for h in (0, 1, 5)]
    s.add_predictions(0, [pred(f"e{i}", t, features={"x": 1.0}) for i, t in enumerate(times)])
    s.add_labels(0, [label("e0", times[0] + 1000), label("e2", times[2] + 1000)])
    rows = s.flush()
    (daily,) = windows(rows)
    assert (daily["window_start"], daily["window_end"]) == (day, day + 86_400_000)
    assert (daily["predictions"], daily["labelled"]) == (3, 2)
    hourly = {r["window_start"] for r in rows.tables["feature_partials"]}
    assert hourly == {t - t % 3_600_000 for t in times}
    # the next day's events move both watermarks past the first day
    later = day + 86_400_000 + 3_600_000
    s.add_predictions(1, [pred("z", later)])
    s.add_labels(1, [label("z", later)])
    s.flush()
    assert s.evicted_through == {"day UTC": day, "1h": times[2] - times[2] % 3_600_000}
    p_mark, l_mark = s.low_watermarks()
    assert p_mark is not None and p_mark.offset == 1 and l_mark is not None and l_mark.offset == 1
