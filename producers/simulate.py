"""The demo's traffic: a real scikit-learn digits classifier, its predictions and late labels.

A logistic regression is trained on half of scikit-learn's bundled digits; the other half is
served (drawn with replacement). From ``degrade_at`` on, Gaussian noise is added to the images,
so accuracy and the feature distributions shift visibly. Labels follow their prediction after
a random delay in event time; some never come, some come twice. Predictions come from six
client apps; from ``probe_at`` on, a share ``probe_rate`` comes from a ``scraper`` client
that sends uniformly random images (probing the input space) and never gets a label. Event
time is simulated, so a run of any length covers ``events / events_per_second_event_time``
seconds of traffic; by default the rate is chosen from the number of events so that the run
covers at least :data:`MIN_WINDOWS` one-minute windows, and the degradation shows as a change
from one window to the next however few events there are.

>>> events = list(generate(events=200, seed=1, start_ts=1_700_000_000.0))
>>> kinds = [kind for kind, _ in events]
>>> kinds.count("prediction"), kinds[0]
(200, 'prediction')
>>> events == list(generate(events=200, seed=1, start_ts=1_700_000_000.0))
True
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from producers.client import MonitorClient

_PREDICT_BATCH = 500
_ROWS = np.repeat(np.arange(8.0), 8)
_COLS = np.tile(np.arange(8.0), 8)


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """What a simulation produced. ``labels`` counts label events sent, duplicates included;
    ``first_ts``/``last_ts`` span every event's ``ts`` (labels may end after predictions)."""

    predictions: int
    labels: int
    duplicate_labels: int
    missing_labels: int
    first_ts: float
    last_ts: float


#: One-minute windows a simulated run covers at least (at the default rate).
MIN_WINDOWS = 10
#: The fastest default rate, in events per second of event time.
MAX_EVENTS_PER_SECOND = 50.0


def default_rate(events: int) -> float:
    """The event rate (per second of event time) that spreads ``events`` over at least
    :data:`MIN_WINDOWS` minutes, at most :data:`MAX_EVENTS_PER_SECOND`.

    >>> default_rate(3000), round(default_rate(20_000) * MIN_WINDOWS * 60), default_rate(10**6)
    (5.0, 20000, 50.0)
    """
    return min(MAX_EVENTS_PER_SECOND, max(events, 1) / (MIN_WINDOWS * 60.0))


def default_start_ts(events: int, events_per_second_event_time: float) -> float:
    """Now minus the simulated span, aligned down to a minute, so the traffic ends about now."""
    span = events / events_per_second_event_time
    return math.floor((time.time() - span) / 60.0) * 60.0


def generate(
    *,
    events: int = 20_000,
    seed: int = 0,
    model: str = "digits",
    start_ts: float | None = None,
    events_per_second_event_time: float | None = None,
    label_delay_s: tuple[float, float] = (5.0, 120.0),
    missing_label_rate: float = 0.05,
    duplicate_label_rate: float = 0.02,
    degrade_at: float = 0.5,
    noise: float = 6.0,
    probe_at: float = 0.25,
    probe_rate: float = 0.02,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(kind, event)`` pairs (kind "prediction" or "label") in send order.

    Deterministic for a given ``seed`` and ``start_ts``. A label is released once the
    simulated clock (the latest prediction's ``ts``) has passed its own ``ts``; labels still
    pending after the last prediction follow in ``ts`` order. The rate is
    :func:`default_rate` unless ``events_per_second_event_time`` is given.
    """
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    if events_per_second_event_time is None:
        events_per_second_event_time = default_rate(events)
    if start_ts is None:
        start_ts = default_start_ts(events, events_per_second_event_time)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    train, serve = _split(rng, len(digits.target))
    clf = LogisticRegression(max_iter=1000).fit(digits.data[train] / 16.0, digits.target[train])
    classes = [str(c) for c in clf.classes_]
    run = f"{model}-{seed}-{int(start_ts)}"
    degrade_from = int(degrade_at * events)
    probe_from = int(probe_at * events)
    pending: list[tuple[float, int, dict[str, Any]]] = []  # (ts, sequence, label event)
    sequence = 0
    for first in range(0, events, _PREDICT_BATCH):
        n = min(_PREDICT_BATCH, events - first)
        index = np.arange(first, first + n)
        pick = rng.choice(serve, size=n)
        images = digits.data[pick].astype(float)
        noisy = index >= degrade_from
        if noisy.any():
            images[noisy] = np.clip(
                images[noisy] + rng.normal(0.0, noise, images[noisy].shape), 0, 16
            )
        probing = (index >= probe_from) & (rng.random(n) < probe_rate)
        images[probing] = rng.uniform(0.0, 16.0, (int(probing.sum()), images.shape[1]))
        client = np.where(
            probing, "scraper", np.char.add("app-", rng.integers(0, 6, n).astype(str))
        )
        proba = clf.predict_proba(images / 16.0)
        ts = start_ts + index / events_per_second_event_time
        batch = _Batch(
            predicted=proba.argmax(axis=1),
            proba=np.round(proba, 4).tolist(),
            features=_features(images),
            pixels=np.round(images, 2).tolist(),
            source=np.where(rng.random(n) < 0.6, "scanner-a", "scanner-b").tolist(),
            latency=np.round(rng.lognormal(math.log(8.0), 0.35, n), 3).tolist(),
            fate=rng.random(n),
            delay=rng.uniform(*label_delay_s, n),
        )
        for j in range(n):
            event_id = f"{run}-{first + j}"
            t = float(ts[j])
            while pending and pending[0][0] <= t:
                yield "label", heapq.heappop(pending)[2]
            yield (
                "prediction",
                {
                    "event_id": event_id,
                    "model": model,
                    "model_version": "v1",
                    "ts": t,
                    "task": "multiclass",
                    "prediction": classes[batch.predicted[j]],
                    "probabilities": dict(zip(classes, batch.proba[j], strict=True)),
                    "features": {**batch.features[j], "pixels": batch.pixels[j]},
                    "segment": {"source": batch.source[j]},
                    "latency_ms": batch.latency[j],
                    "client_id": str(client[j]),
                },
            )
            fate = batch.fate[j]
            if fate < missing_label_rate or probing[j]:
                continue
            label_ts = t + float(batch.delay[j])
            label = {
                "event_id": event_id,
                "ts": label_ts,
                "label": int(digits.target[pick[j]]),
                "model": model,
            }
            copies = 2 if fate < missing_label_rate + duplicate_label_rate else 1
            for _ in range(copies):
                heapq.heappush(pending, (label_ts, sequence, label))
                sequence += 1
    while pending:
        yield "label", heapq.heappop(pending)[2]


def training_features(seed: int = 0) -> list[dict[str, Any]]:
    """The features of the images :func:`generate`'s classifier is trained on (for the same
    ``seed``), in the predictions' format: the data set a drift reference is profiled from."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, _ = _split(np.random.default_rng(seed), len(digits.target))
    images = digits.data[train].astype(float)
    pixels = np.round(images, 2).tolist()
    return [{**f, "pixels": p} for f, p in zip(_features(images), pixels, strict=True)]


def _split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and serving halves of the data set (the generator's first draw)."""
    order = rng.permutation(n)
    return order[: n // 2], order[n // 2 :]


@dataclass(frozen=True, slots=True)
class _Batch:
    """Per-batch model outputs and random draws, as Python lists for cheap per-event access."""

    predicted: np.ndarray
    proba: list[list[float]]
    features: list[dict[str, float]]
    pixels: list[list[float]]
    source: list[str]
    latency: list[float]
    fate: np.ndarray
    delay: np.ndarray


def _features(images: np.ndarray) -> list[dict[str, float]]:
    """Numeric summaries of 8x8 images (0..16 intensities), vectorised over the batch."""
    mass = images.sum(axis=1)
    safe = np.where(mass > 0, mass, 1.0)
    columns = {
        "mean_intensity": images.mean(axis=1),
        "std_intensity": images.std(axis=1),
        "ink_fraction": (images >= 8).mean(axis=1),
        "center_row": np.where(mass > 0, images @ _ROWS / safe, 3.5),
        "center_col": np.where(mass > 0, images @ _COLS / safe, 3.5),
    }
    rounded = {name: np.round(values, 4).tolist() for name, values in columns.items()}
    return [dict(zip(rounded, row, strict=True)) for row in zip(*rounded.values(), strict=True)]


async def simulate(
    bootstrap_servers: str,
    *,
    events: int = 20_000,
    seed: int = 0,
    topic_prefix: str = "modelmon.",
    model: str = "digits",
    start_ts: float | None = None,
    events_per_second_event_time: float | None = None,
    label_delay_s: tuple[float, float] = (5.0, 120.0),
    missing_label_rate: float = 0.05,
    duplicate_label_rate: float = 0.02,
    degrade_at: float = 0.5,
    noise: float = 6.0,
    kafka_config: Mapping[str, Any] | None = None,
) -> SimulationSummary:
    """Send :func:`generate`'s traffic through a :class:`MonitorClient` (topics must exist).

    Returns once every event is acknowledged by the broker (or counted as dropped).
    """
    if events_per_second_event_time is None:
        events_per_second_event_time = default_rate(events)
    if start_ts is None:
        start_ts = default_start_ts(events, events_per_second_event_time)
    traffic = generate(
        events=events,
        seed=seed,
        model=model,
        start_ts=start_ts,
        events_per_second_event_time=events_per_second_event_time,
        label_delay_s=label_delay_s,
        missing_label_rate=missing_label_rate,
        duplicate_label_rate=duplicate_label_rate,
        degrade_at=degrade_at,
        noise=noise,
    )
    client = MonitorClient(bootstrap_servers, topic_prefix=topic_prefix, kafka_config=kafka_config)
    await client.start()
    counts = {"prediction": 0, "label": 0}
    labelled: set[str] = set()
    last_ts = start_ts
    try:
        for kind, event in traffic:
            client.log(kind, event)
            counts[kind] += 1
            last_ts = max(last_ts, event["ts"])
            if kind == "label":
                labelled.add(event["event_id"])
            if counts[kind] % client.max_batch_events == 0:
                await _make_room(client)
    finally:
        await client.close()
    return SimulationSummary(
        predictions=counts["prediction"],
        labels=counts["label"],
        duplicate_labels=counts["label"] - len(labelled),
        missing_labels=counts["prediction"] - len(labelled),
        first_ts=start_ts,
        last_ts=last_ts,
    )


async def _make_room(client: MonitorClient) -> None:
    """Let the sender run, and wait for acks while the buffer is over half full, so a fast
    generator never overflows the client's buffer."""
    await asyncio.sleep(0)
    if client.buffered >= client.max_buffered_events // 2:
        await client.flush()
