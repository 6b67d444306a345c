"""Measurement 4, the batch peer: Evidently computing the same classification metrics and the
per-feature drift of the same windows, from DataFrames.

Per (model, version, segment, window) group of joined, labelled events, one
``evidently.Report([ClassificationPreset(), DataDriftPreset()])`` runs with that group as the
current data and the group's first window as the reference (the usual batch set-up); the time
is taken per window, around ``Report.run`` only (building the DataFrames is not counted).
With more windows than ``--max-windows`` a seeded sample is timed and the mean per window is
reported (and multiplied by the window count for the total).

It imports nothing of modelmon, so it can run in an interpreter of its own: Evidently 0.7 needs
pandas < 3 (``bench/README.md``). Input: the JSON lines written by ``bench.run`` (one joined
event per line). Run as ``python -m bench.peer_evidently --events PATH --out PATH``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", required=True, help="joined events, JSON lines")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-windows", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import pandas as pd
    from evidently import (
        BinaryClassification,
        DataDefinition,
        Dataset,
        MulticlassClassification,
        Report,
    )
    from evidently import __version__ as evidently_version
    from evidently.presets import ClassificationPreset, DataDriftPreset

    df = pd.read_json(a.events, lines=True, dtype={"target": str, "prediction": str})
    numeric = sorted(c for c in df.columns if c.startswith("n") and c[1:].isdigit())
    categorical = sorted(c for c in df.columns if c.startswith("c") and c[1:].isdigit())
    groups = {k: g for k, g in df.groupby(["model", "model_version", "segment", "window_start"])}
    keys = sorted(groups)
    first_window: dict[tuple[str, str, str], Any] = {}
    for k in keys:
        first_window.setdefault(k[:3], k)
    timed = [k for k in keys if first_window[k[:3]] != k]
    if len(timed) > a.max_windows:
        timed = sorted(random.Random(a.seed).sample(timed, a.max_windows))

    def dataset(g: pd.DataFrame) -> Any:
        probas = [f"p_{c}" for c in g["classes"].iloc[0]]
        g = g.copy()
        if len(probas) == 2:  # binary: classes "0"/"1", the positive class is 1
            g["target"] = g["target"].astype(int)
            g["prediction"] = g["prediction"].astype(int)
            task: Any = BinaryClassification(
                target="target", prediction_labels="prediction", pos_label=1
            )
            probas = []
        else:  # Evidently takes the class names from the probability columns' names
            g["target"] = g["target"].astype(str)
            g["prediction"] = g["prediction"].astype(str)
            g = g.rename(columns={p: p[2:] for p in probas})
            probas = [p[2:] for p in probas]
            task = MulticlassClassification(
                target="target", prediction_labels="prediction", prediction_probas=probas
            )
        cols = ["target", "prediction", *numeric, *categorical, *probas]
        definition = DataDefinition(
            numerical_columns=numeric + probas,
            categorical_columns=[*categorical, "target", "prediction"],
            classification=[task],
        )
        return Dataset.from_pandas(g[cols].reset_index(drop=True), data_definition=definition)

    rows: list[dict[str, Any]] = []
    total = 0.0
    for k in timed:
        ref = dataset(groups[first_window[k[:3]]])
        cur = dataset(groups[k])
        report = Report([ClassificationPreset(), DataDriftPreset()])
        t0 = time.perf_counter()
        snapshot = report.run(cur, ref)
        elapsed = time.perf_counter() - t0
        total += elapsed
        values = _values(snapshot.dict())
        rows.append(
            {
                "model": k[0],
                "segment": k[2],
                "window_start": int(k[3]),
                "events": len(groups[k]),
                "seconds": elapsed,
                "accuracy": values.get("accuracy"),
                "drifted_columns": values.get("drifted_columns"),
            }
        )
    per_window = total / len(timed) if timed else 0.0
    out = {
        "evidently": evidently_version,
        "pandas": pd.__version__,
        "windows": len(keys),
        "timed_windows": len(timed),
        "seconds_per_window": per_window,
        "seconds_total_estimate": per_window * len(keys),
        "events": len(df),
        "rows": rows,
    }
    with open(a.out, "w") as f:
        json.dump(out, f)


def _values(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Accuracy and the drifted-column count from a snapshot's metric results."""
    found: dict[str, Any] = {}
    for m in snapshot.get("metrics", []):
        name = str(m.get("metric_name", m.get("metric_id", "")))
        value = m.get("value")
        if name.startswith("Accuracy(") and "accuracy" not in found:
            found["accuracy"] = value
        if name.startswith("DriftedColumnsCount("):
            found["drifted_columns"] = value.get("count") if isinstance(value, dict) else value
    return found


if __name__ == "__main__":
    main()
