"""Measurement 2, the textbook baseline, and the bare Faust agent of the single-event test.

``--mode river``: what a user writes from the Faust and River docs. One agent over the
single-event predictions and labels topics; per event it decodes the JSON, joins prediction
and label in a dict, and updates ``river.metrics.Accuracy`` and ``river.metrics.MacroRecall``
of the prediction's (model, version, segment, window) and a ``river.drift.ADWIN`` per model
on the error indicator.

``--mode decode``: the same agent that only decodes each message (the bare Faust cost).
``--consumer modelmon`` runs it on the workers' delivery: modelmon's Kafka consumer
(``pipeline.kafka``), whose fetch loop hands messages over at less cost than Faust's own, its
schema that passes keys and values on as bytes, and its monitor without per-message
statistics (``pipeline.app``).

Run as ``python -m bench.baseline_faust``; it stops itself after ``--messages`` messages and
writes its result (rate from the first to the last message, per-window numbers) to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

import faust
import orjson
from faust.sensors import Monitor


def build(a: argparse.Namespace) -> faust.App:
    from river import drift, metrics

    modelmon = a.consumer == "modelmon"
    monitor_class: type[Monitor] = Monitor
    if modelmon:
        from pipeline.app import QuietMonitor
        from pipeline.kafka import BoundedConsumer, RawSchema

        monitor_class = QuietMonitor
    app = faust.App(
        a.app_id,
        broker=f"kafka://{a.bootstrap}",
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        datadir=os.path.join(a.datadir, a.app_id),
        consumer_auto_offset_reset="earliest",
        # the embedded broker's first group join takes about half the session timeout
        broker_session_timeout=2,
        broker_heartbeat_interval=0.5,
        broker_rebalance_timeout=3,
        Monitor=monitor_class,
    )
    if modelmon:  # the workers' delivery: their consumer, monitor and schema
        app.transport.Consumer = BoundedConsumer  # before anything creates the consumer
        topic = app.topic(a.predictions, a.labels, schema=RawSchema())
    else:
        topic = app.topic(a.predictions, a.labels, key_serializer="raw", value_serializer="raw")
    window_ms = a.window_ms
    state: dict[str, Any] = {"n": 0, "first": 0.0, "last": 0.0, "events": 0}
    preds: dict[str, tuple[tuple[str, str, str, int], str]] = {}
    labels: dict[str, str] = {}
    windows: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
    adwins: dict[str, Any] = {}
    drifts: dict[str, int] = {}

    def update(key: tuple[str, str, str, int], y_pred: str, y_true: str) -> None:
        acc_rec = windows.get(key)
        if acc_rec is None:
            acc_rec = windows[key] = (metrics.Accuracy(), metrics.MacroRecall())
        acc_rec[0].update(y_true, y_pred)
        acc_rec[1].update(y_true, y_pred)
        detector = adwins.get(key[0])
        if detector is None:
            detector = adwins[key[0]] = drift.ADWIN()
        detector.update(float(y_true != y_pred))
        if detector.drift_detected:
            drifts[key[0]] = drifts.get(key[0], 0) + 1

    def finish() -> None:
        span = state["last"] - state["first"]
        rows = [
            {
                "model": k[0],
                "model_version": k[1],
                "segment": k[2],
                "window_start": k[3],
                "accuracy": v[0].get(),
                "macro_recall": v[1].get(),
                "labelled": v[0].cm.n_samples,
            }
            for k, v in sorted(windows.items())
        ]
        out = {
            "messages": state["n"],
            "events": state["events"],
            "seconds": span,
            "windows": rows,
            "drifts": drifts,
        }
        with open(a.out, "wb") as f:
            f.write(orjson.dumps(out))
        os.kill(os.getpid(), signal.SIGTERM)

    river_mode = a.mode == "river"

    @app.agent(topic)
    async def monitor(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            if not state["first"]:
                state["first"] = time.monotonic()
            obj = orjson.loads(event.value)
            state["n"] += 1
            state["events"] += 1
            if river_mode:
                eid = obj["event_id"]
                if event.message.topic == a.predictions:
                    seg = ",".join(f"{k}={v}" for k, v in sorted(obj.get("segment", {}).items()))
                    ts_ms = round(obj["ts"] * 1000)
                    key = (
                        obj["model"],
                        obj.get("model_version", ""),
                        seg,
                        ts_ms - ts_ms % window_ms,
                    )
                    y_pred = str(obj["prediction"])
                    y_true = labels.pop(eid, None)
                    if y_true is None:
                        preds[eid] = (key, y_pred)
                    else:
                        update(key, y_pred, y_true)
                else:
                    y_true = str(obj["label"])
                    pending = preds.pop(eid, None)
                    if pending is None:
                        labels[eid] = y_true
                    else:
                        update(pending[0], pending[1], y_true)
            if state["n"] >= a.messages:
                state["last"] = time.monotonic()
                finish()

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--predictions", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--messages", type=int, required=True)
    ap.add_argument("--mode", choices=("river", "decode"), default="river")
    ap.add_argument(
        "--consumer", choices=("faust", "modelmon"), default="faust", help="whose delivery"
    )
    ap.add_argument("--window-ms", type=int, default=10_000)
    ap.add_argument("--app-id", required=True)
    ap.add_argument("--datadir", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(os.path.join(a.datadir, a.app_id), exist_ok=True)
    app = build(a)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
