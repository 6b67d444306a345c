"""End to end through a real broker, a real worker process and chDB: every window's metrics
equal scikit-learn's on that window's joined events, bad input is dead-lettered without
costing valid events, and re-delivered input changes nothing."""

from __future__ import annotations

import asyncio
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
)

from producers.client import MonitorClient

pytestmark = pytest.mark.integration

START = 1_700_000_040.0  # on a minute boundary
CLASSES = ["0", "1", "2", "3"]
AUC_BINS = 1000


@dataclass
class Traffic:
    predictions: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)  # first label of each event


def make_traffic(seed: int, n: int = 3600) -> Traffic:
    """Three models (binary with a score, multiclass with probabilities, a regression of a
    price), two segments, six minutes of event time; labels delayed by 1-90 s, 10 % never
    labelled; a price's target is sometimes a whole number (sent as an integer) or 0."""
    rng = random.Random(seed)
    t = Traffic()
    for i in range(n):
        ts = START + i * 0.1
        segment = {"region": rng.choice(["eu", "us"])}
        if i % 3 == 2:
            y: Any = round(rng.lognormvariate(4.0, 0.5), 2)
            if rng.random() < 0.1:
                y = float(round(y))
            if rng.random() < 0.03:
                y = 0.0
            pred = {
                "event_id": f"r{i}",
                "model": "price",
                "model_version": "v1",
                "task": "regression",
                "ts": ts,
                "prediction": y * rng.uniform(0.8, 1.25) + rng.gauss(0.0, 2.0),
                "segment": segment,
            }
            y = int(y) if y.is_integer() else y
        elif i % 2:
            y = rng.choice("01")
            score = min(max(rng.gauss(0.65 if y == "1" else 0.35, 0.2), 0.0), 1.0)
            pred = {
                "event_id": f"b{i}",
                "model": "bin",
                "model_version": "v1",
                "task": "binary",
                "ts": ts,
                "prediction": int(score >= 0.5),
                "score": round(score, 6),
                "segment": segment,
            }
        else:
            y = rng.choice(CLASSES[:3]) if rng.random() < 0.9 else "3"  # class 3 is rare
            raw = np.array([rng.random() for _ in CLASSES]) + (np.array(CLASSES) == y) * 0.8
            p = raw / raw.sum()
            pred = {
                "event_id": f"m{i}",
                "model": "multi",
                "model_version": "v2",
                "task": "multiclass",
                "ts": ts,
                "prediction": CLASSES[int(p.argmax())],
                "probabilities": {c: float(v) for c, v in zip(CLASSES, p, strict=True)},
                "segment": segment,
            }
        t.predictions.append(pred)
        if rng.random() < 0.9:
            t.labels.append(
                {"event_id": pred["event_id"], "ts": ts + rng.uniform(1, 90), "label": y}
            )
    return t


BAD_MESSAGES: dict[str, bytes] = {
    "not valid JSON": b'{"event_id": "x", "model": ',
    "model: expected a string": orjson.dumps(
        {"event_id": "w1", "model": 7, "task": "binary", "ts": START, "prediction": 1}
    ),
    "ts: required field is missing": orjson.dumps(
        {"event_id": "w2", "model": "bin", "task": "binary", "prediction": 1}
    ),
    "score: must be finite": b'{"event_id": "w3", "model": "bin", "task": "binary", "ts": '
    + str(START).encode()
    + b', "prediction": 1, "score": NaN}',
    "unknown task type": orjson.dumps(
        {"event_id": "w4", "model": "bin", "task": "clustering", "ts": START, "prediction": 1}
    ),
    "exceeds the limit": orjson.dumps(
        {
            "event_id": "w5",
            "model": "bin",
            "task": "binary",
            "ts": START,
            "prediction": 1,
            "pad": "x" * 2_000_000,
        }
    ),
}


async def produce(bootstrap: str, prefix: str, t: Traffic, seed: int, bad: bool) -> None:
    """Predictions in time order, in blocks shorter than the allowed lateness: most in
    envelopes, some as single-event messages keyed by event_id (as a non-Python producer
    would send them); producer retries; labels roughly in label-time order, some twice."""
    rng = random.Random(seed)
    client = MonitorClient(bootstrap, topic_prefix=prefix, linger_ms=5)
    raw = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, max_request_size=4_000_000
    )
    await client.start()
    await raw.start()
    try:
        for block in range(0, len(t.predictions), 200):
            for pred in t.predictions[block : block + 200]:
                if rng.random() < 0.05:
                    await raw.send_and_wait(
                        prefix + "predictions", orjson.dumps(pred), key=pred["event_id"].encode()
                    )
                else:
                    assert client.log_prediction(**pred)
                if rng.random() < 0.03:  # a retry of the same prediction
                    assert client.log_prediction(**pred)
            await client.flush()
        if bad:
            for payload in BAD_MESSAGES.values():
                await raw.send_and_wait(prefix + "predictions", payload, key=b"bad")
            await raw.send_and_wait(prefix + "labels", b"[1, 2]", key=b"bad")
        labels = sorted(t.labels, key=lambda lab: lab["ts"] + rng.uniform(0, 3))
        for lab in labels:
            assert client.log_label(**lab)
            if rng.random() < 0.05:
                assert client.log_label(**lab)
        await client.flush()
    finally:
        await client.close()
        await raw.stop()


def expected_windows(t: Traffic) -> dict[tuple[str, str, int], dict[str, Any]]:
    """scikit-learn's numbers per (model, segment, window start in ms), of the classifiers."""
    labels = {lab["event_id"]: lab["label"] for lab in t.labels}
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for p in t.predictions:
        if p["task"] == "regression":
            continue
        ts_ms = round(p["ts"] * 1000)
        segment = ",".join(f"{k}={v}" for k, v in sorted(p["segment"].items()))
        groups[(p["model"], segment, ts_ms - ts_ms % 60_000)].append(p)
    out = {}
    for key, preds in groups.items():
        done = [p for p in preds if p["event_id"] in labels]
        y_true = [labels[p["event_id"]] for p in done]
        y_pred = [str(p["prediction"]) for p in done]
        classes = sorted(set(y_true) | set(y_pred))
        prec, rec, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=classes, average="macro", zero_division=0
        )
        if key[0] == "bin":
            proba = np.array([[1 - p["score"], p["score"]] for p in done])
            all_classes = ["0", "1"]
        else:
            proba = np.array([[p["probabilities"][c] for c in CLASSES] for p in done])
            all_classes = CLASSES
        aucs, bounds = [], []
        for j, c in enumerate(all_classes):
            truth = np.array(y_true) == c
            if truth.all() or not truth.any() or (key[0] == "bin" and c == "0"):
                continue
            aucs.append(roc_auc_score(truth, proba[:, j]))
            bins = np.minimum((proba[:, j] * AUC_BINS).astype(int), AUC_BINS - 1)
            pos = np.bincount(bins[truth], minlength=AUC_BINS)
            neg = np.bincount(bins[~truth], minlength=AUC_BINS)
            bounds.append(0.5 * float(pos @ neg) / (truth.sum() * (~truth).sum()))
        out[key] = {
            "predictions": len(preds),
            "labelled": len(done),
            "accuracy": accuracy_score(y_true, y_pred),
            "macro_precision": prec,
            "macro_recall": rec,
            "macro_f1": f1,
            "log_loss": log_loss(y_true, proba, labels=all_classes),
            "roc_auc": float(np.mean(aucs)),
            "auc_bound": float(np.mean(bounds)) if bounds else 0.0,
        }
    return out


def actual_windows(d: Any, view: str = "quality_windows") -> dict[tuple[str, str, int], Any]:
    rows = d.query(f"SELECT *, toUnixTimestamp64Milli(window_start) AS start_ms FROM {view}")
    return {(r["model"], r["segment"], r["start_ms"]): r for r in rows}


def expected_regression(t: Traffic) -> dict[tuple[str, str, int], dict[str, Any]]:
    """scikit-learn's numbers per window of the regression model, and its residuals."""
    labels = {lab["event_id"]: float(lab["label"]) for lab in t.labels}
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for p in t.predictions:
        if p["task"] == "regression":
            ts_ms = round(p["ts"] * 1000)
            segment = ",".join(f"{k}={v}" for k, v in sorted(p["segment"].items()))
            groups[(p["model"], segment, ts_ms - ts_ms % 60_000)].append(p)
    out = {}
    for key, preds in groups.items():
        done = [p for p in preds if p["event_id"] in labels]
        y = np.array([labels[p["event_id"]] for p in done])
        yp = np.array([p["prediction"] for p in done])
        nz = y != 0
        out[key] = {
            "predictions": len(preds),
            "labelled": len(done),
            "zero_targets": int((~nz).sum()),
            "mae": mean_absolute_error(y, yp),
            "mse": mean_squared_error(y, yp),
            "rmse": math.sqrt(mean_squared_error(y, yp)),
            "r2": r2_score(y, yp),
            "mape": mean_absolute_percentage_error(y[nz], yp[nz]),
            "mean_error": float(np.mean(yp - y)),
            "mean_target": float(np.mean(y)),
            "residuals": yp - y,
        }
    return out


def assert_regression_matches(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, exp in expected.items():
        got = actual[key]
        assert [got[c] for c in ("predictions", "labelled", "zero_targets")] == [
            exp[c] for c in ("predictions", "labelled", "zero_targets")
        ], key
        for metric in ("mae", "mse", "rmse", "r2", "mape", "mean_error", "mean_target"):
            assert math.isclose(got[metric], exp[metric], rel_tol=1e-12, abs_tol=1e-12), (
                key,
                metric,
            )
        for q in (50, 90, 99):  # within 1 % of the lower order statistic (docs/metrics.md)
            lower = float(np.quantile(exp["residuals"], q / 100, method="lower"))
            got_q = got[f"residual_p{q}"]
            assert abs(got_q - lower) <= 0.01 * abs(lower) + 1e-12, (key, q, got_q, lower)


def assert_matches(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, exp in expected.items():
        got = actual[key]
        assert (got["predictions"], got["labelled"]) == (exp["predictions"], exp["labelled"]), key
        for metric in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "log_loss"):
            assert math.isclose(got[metric], exp[metric], rel_tol=0, abs_tol=1e-9), (key, metric)
        assert abs(got["roc_auc"] - exp["roc_auc"]) <= exp["auc_bound"] + 1e-12, key


def test_windows_equal_sklearn_bad_input_is_dead_lettered_and_redelivery_changes_nothing(
    deployment: Any,
) -> None:
    d = deployment(partitions=3)
    traffic = make_traffic(seed=1)
    asyncio.run(produce(d.bootstrap_servers, d.prefix, traffic, seed=2, bad=True))
    d.run_worker()
    expected = expected_windows(traffic)
    first = actual_windows(d)
    assert_matches(first, expected)
    regression = actual_windows(d, "regression_windows")
    assert_regression_matches(regression, expected_regression(traffic))

    dead = d.query("SELECT source_topic, reason, detail, raw_size FROM dead_letters")
    details = [r["detail"] for r in dead]
    assert len(dead) == len(BAD_MESSAGES) + 1
    for needle in BAD_MESSAGES:
        assert sum(needle in r for r in details) == 1, (needle, details)
    assert sorted(r["reason"] for r in dead) == sorted(
        [
            "invalid_json",
            "model.wrong_type",
            "ts.missing",
            "score.not_finite",
            "task.invalid",
            "message_too_large",
            "not_an_object",
        ]
    )
    assert any(r["raw_size"] > 2_000_000 for r in dead)
    assert any(r["source_topic"] == d.prefix + "labels" for r in dead)

    # Re-delivery: every event produced again, then the same worker group resumes.
    asyncio.run(produce(d.bootstrap_servers, d.prefix, traffic, seed=3, bad=False))
    d.run_worker()
    assert actual_windows(d) == first
    assert actual_windows(d, "regression_windows") == regression

    # A worker in a new group re-reads both copies of everything from the start.
    d.run_worker(group_id=d.group + "-again")
    assert actual_windows(d) == first
    assert actual_windows(d, "regression_windows") == regression
