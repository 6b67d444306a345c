"""Drift detectors on River's annotated change-point series; prints a Markdown table.

``river.drift.datasets`` bundles seven series of the Turing change-point benchmark (TCPD) as
CSV files inside the River wheel (nothing is downloaded), each with change points marked by
several human annotators. For every series and every detector of
:data:`pipeline.estimators.detectors.DETECTORS` (River's default parameters; KSWIN with
``seed=42`` so that runs repeat) this feeds the series once, in order, and counts:

- changes: the union of all annotators' change points, where points closer than ``--margin``
  are one change (the earliest stands for the group);
- found: changes ``c`` with a detection at a position ``p``, ``c <= p <= c + margin``; each
  detection finds at most one change, the earliest it can;
- false: detections that found no change.

Series (TCPD indexes the annotations on the series it publishes, rebuilt here):

- Apple: the close price, CSV rows ``1, 4, 7, ...`` (TCPD samples every third trading day
  after an offset of one; its second dimension, the volume, is not used);
- Brent: every tenth row of the whole CSV, from the first of those in 2000 (as TCPD);
- Occupancy: V1 (temperature) of the four sensors; Run log: the pace (not the distance);
- the others are one-dimensional and used as they are.

Page-Hinkley's ``delta`` and ``threshold`` are in the units of the data, and several series are
in the millions (passengers, employment): ``--standardise`` divides each series, after
subtracting the mean of its first ``--warmup`` values, by their standard deviation: a
calibration a deployment could make before monitoring starts.

Run from the repository root::

    PYTHONPATH=. python bench/drift_datasets.py [--margin 30] [--standardise]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import numpy as np
from river.drift import datasets

from pipeline.estimators.detectors import DETECTORS, Detector


def _column(ds: Iterable, key: str | None) -> list[float]:
    return [float(y if key is None else y[key]) for _, y in ds]


def _brent(ds: datasets.BrentSpotPrice) -> list[float]:
    rows = list(ds)[::10]
    start = next(i for i, (x, _) in enumerate(rows) if x["day"].year >= 2000)
    return [float(y) for _, y in rows[start:]]


SERIES: dict[str, tuple[type, Callable[[object], list[float]]]] = {
    "Airline passengers": (datasets.AirlinePassengers, lambda ds: _column(ds, None)),
    "Apple (close)": (datasets.Apple, lambda ds: _column(ds, "Close")[1::3]),
    "Bitcoin": (datasets.Bitcoin, lambda ds: _column(ds, None)),
    "Brent spot": (datasets.BrentSpotPrice, _brent),
    "Occupancy (V1)": (datasets.Occupancy, lambda ds: _column(ds, "V1")),
    "Run log (pace)": (datasets.RunLog, lambda ds: _column(ds, "Pace")),
    "UK coal employment": (datasets.UKCoalEmploy, lambda ds: _column(ds, None)),
}


def changes(annotations: dict[str, list[int]], margin: int) -> list[int]:
    """Union of the annotators' change points, grouping points closer than ``margin``."""
    out: list[int] = []
    for c in sorted({c for points in annotations.values() for c in points}):
        if not out or c - out[-1] >= margin:
            out.append(c)
    return out


def score(detections: list[int], truth: list[int], margin: int) -> tuple[int, int]:
    """(found, false alarms): each detection finds at most one change, the earliest open one."""
    open_changes = list(truth)
    found = 0
    for p in detections:
        hit = next((c for c in open_changes if c <= p <= c + margin), None)
        if hit is not None:
            open_changes.remove(hit)
            found += 1
    return found, len(detections) - found


def run(margin: int, standardise: bool, warmup: int) -> str:
    names = list(DETECTORS)
    head = ["Dataset", "n", "changes"] + [f"{n} found / false" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = np.zeros((len(names), 2), dtype=int)
    n_changes = 0
    for label, (cls, load) in SERIES.items():
        ds = cls()
        x = np.asarray(load(ds))
        if standardise:
            x = (x - x[:warmup].mean()) / (x[:warmup].std() or 1.0)
        truth = changes(ds.annotations, margin)
        n_changes += len(truth)
        cells = [label, str(len(x)), str(len(truth))]
        for i, name in enumerate(names):
            params = {"seed": 42} if name == "kswin" else {}
            detections = [f.position for f in Detector(name, **params).update(x)]
            found, false = score(detections, truth, margin)
            totals[i] += found, false
            cells.append(f"{found} / {false}")
        lines.append("| " + " | ".join(cells) + " |")
    total = ["**total**", "", str(n_changes)] + [f"{f} / {a}" for f, a in totals]
    lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margin", type=int, default=30, help="detection window after a change")
    parser.add_argument("--standardise", action="store_true", help="scale by warm-up std")
    parser.add_argument("--warmup", type=int, default=30, help="values used by --standardise")
    args = parser.parse_args()
    print(run(args.margin, args.standardise, args.warmup))


if __name__ == "__main__":
    main()
