"""Traffic shared by the drift and crash tests (two models, one of which drifts), and the
memory probe of the tests that bound a worker's memory."""

from __future__ import annotations

import random
from typing import Any

START = 1_700_000_040.0
MINUTES = 8
RATE = 20  # predictions per second of event time, per model


def traffic(seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Two models over eight minutes: 'steady' keeps its feature and score distributions,
    'shifting' moves them (and errs more) from minute four on. Labels follow 5-40 s later."""
    rng = random.Random(seed)
    predictions, labels = [], []
    for i in range(MINUTES * 60 * RATE):
        ts = START + i / RATE
        for model in ("steady", "shifting"):
            late = model == "shifting" and ts >= START + 240
            y = rng.choice("01")
            right = rng.random() < (0.6 if late else 0.9)
            score = min(max(rng.gauss(0.75 if late else 0.5, 0.1), 0.0), 1.0)
            event_id = f"{model}-{i}"
            predictions.append(
                {
                    "event_id": event_id,
                    "model": model,
                    "task": "binary",
                    "ts": ts,
                    "prediction": int(y if right else "10"[int(y)]),
                    "score": round(score, 4),
                    "client_id": f"client-{rng.randrange(4)}",
                    "features": {
                        "amount": round(rng.lognormvariate(3.0 + (1.0 if late else 0.0), 0.5), 3),
                        "country": rng.choice(["fr", "de", "es"] + (["br"] * 3 if late else [])),
                    },
                }
            )
            labels.append((ts + rng.uniform(5, 40), {"event_id": event_id, "label": int(y)}))
    labels.sort(key=lambda item: item[0])
    out = [("prediction", p) for p in predictions]
    out += [("label", {**lab, "ts": ts}) for ts, lab in labels]
    return sorted(out, key=lambda item: item[1]["ts"])


#: A prediction dated ten years after everything else, sent early in the stream: its
#: ``ts`` lies far beyond the Kafka timestamp of its message, so it is dead-lettered and must
#: not move its partition's watermark (else every later event of that partition is late).
FUTURE_DATED = {
    "event_id": "steady-from-the-future",
    "model": "steady",
    "task": "binary",
    "ts": START + 10 * 365 * 86400,
    "prediction": 1,
    "score": 0.5,
}


def with_regression(
    events: list[tuple[str, dict[str, Any]]], seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """``events`` and a regression model's, over the same minutes: a price and its target,
    labelled 5-40 s later (10 % never, some twice), in event-time order."""
    rng = random.Random(seed)
    extra: list[tuple[str, dict[str, Any]]] = []
    for i in range(MINUTES * 60 * RATE // 2):
        ts = START + i * 2 / RATE
        y = round(rng.lognormvariate(4.0, 0.4), 2)
        event_id = f"price-{i}"
        extra.append(
            (
                "prediction",
                {
                    "event_id": event_id,
                    "model": "price",
                    "task": "regression",
                    "ts": ts,
                    "prediction": y * rng.uniform(0.9, 1.1),
                    "features": {"amount": round(rng.lognormvariate(3.0, 0.5), 3)},
                },
            )
        )
        if rng.random() < 0.9:
            for _ in range(2 if rng.random() < 0.05 else 1):
                extra.append(
                    ("label", {"event_id": event_id, "ts": ts + rng.uniform(5, 40), "label": y})
                )
    return sorted([*events, *extra], key=lambda item: item[1]["ts"])


def with_future_dated(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``events`` with :data:`FUTURE_DATED` after its first hundred."""
    return [*events[:100], ("prediction", FUTURE_DATED), *events[100:]]


def rss_kb(pid: int) -> int:
    """The resident set size of process ``pid``, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def reference(seed: int) -> list[dict[str, Any]]:
    """Training data of both models: the undrifted distributions."""
    rng = random.Random(seed)
    return [
        {"amount": rng.lognormvariate(3.0, 0.5), "country": rng.choice(["fr", "de", "es"])}
        for _ in range(5000)
    ]


WORKER = {"window": "60s", "lateness_seconds": 10, "label_ttl_seconds": 60}
TABLES = {
    "quality": "SELECT model, toUnixTimestamp64Milli(window_start) AS ws, predictions, labelled,"
    " accuracy, roc_auc FROM quality_windows ORDER BY model, ws",
    "drift": "SELECT model, toUnixTimestamp64Milli(window_start) AS ws, feature, method, reference,"
    " statistic, drifted FROM drift ORDER BY model, ws, feature, method",
    "clients": "SELECT model, toUnixTimestamp64Milli(window_start) AS ws, client_id, requests,"
    " previous_requests, outside_reference_share, outside_reference_feature"
    " FROM client_activity ORDER BY model, ws, client_id",
    "detections": "SELECT model, stream, detector, partition, position,"
    " toUnixTimestamp64Milli(ts) AS ts, event_id FROM drift_detections"
    " ORDER BY model, stream, detector, partition, position",
    "regression": "SELECT model, toUnixTimestamp64Milli(window_start) AS ws, predictions,"
    " labelled, mae, rmse, r2, mape, mean_error, residual_p50, residual_p90, residual_p99"
    " FROM regression_windows ORDER BY model, ws",
    # where and when each message was sent differ between runs; what was refused does not
    "dead_letters": "SELECT splitByChar('.', source_topic)[-1] AS topic, reason,"
    " lower(hex(raw)) AS raw FROM dead_letters ORDER BY topic, reason, raw",
}
