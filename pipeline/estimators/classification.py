"""Classification quality, a metric family: mergeable sufficient statistics of one window on
one partition, its partial tables, and the views that turn them into metrics.

Only counts live in the state. The metric formulas (accuracy, precision, recall, F1, log
loss, ROC AUC) are written once, in the views below, which sum the partial rows across
partitions; ``docs/metrics.md`` defines them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.estimators.family import (
    Accumulator,
    Column,
    Metric,
    MetricFamily,
    Pairs,
    Predictions,
    Row,
    Views,
    partial_table,
)
from schemas.events import Prediction

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["EPS", "LOSS_SCALE", "ClassificationFamily", "ClassificationWindow"]

#: Log-loss clipping bound, the same as scikit-learn's for float64 probabilities.
EPS = float(np.finfo(np.float64).eps)
#: Losses are summed as integers in units of 2**-40 (rounding error <= 4.6e-13 per event):
#: integer sums do not depend on batching or merge order, so replays give identical rows.
LOSS_SCALE = 2**40


def _add_hist(dst: dict[int, int], bins: np.ndarray, counts: np.ndarray) -> None:
    for b, c in zip(bins.tolist(), counts.tolist(), strict=True):
        dst[b] = dst.get(b, 0) + c


class ClassificationWindow(Accumulator):
    """Mergeable sufficient statistics of one window's classification quality on one partition.

    Keeps the prediction and labelled counts, the number of correct predictions, the log-loss
    sum, a per-class confusion count (tp, fp, fn) and, per class, sparse histograms of the
    predicted probability of that class for labelled events whose true label is (``auc_pos``)
    or is not (``auc_neg``) that class. Partials of the same window merge by addition.

    Parameters
    ----------
    auc_bins
        Number of equal-width probability bins of the AUC histograms; bin of ``p`` is
        ``min(int(p * auc_bins), auc_bins - 1)``.

    Examples
    --------
    >>> w = ClassificationWindow(auc_bins=10)
    >>> w.add_labelled(["1", "0"], ["1", "1"], [{"1": 0.9, "0": 0.1}, {"1": 0.6, "0": 0.4}])
    >>> w.predictions = 3  # what add_predictions counts
    >>> window, classes = w.partials()
    >>> window["predictions"], window["labelled"], window["correct"], window["log_loss_count"]
    (3, 2, 1, 2)
    >>> [(c["class"], c["tp"], c["fp"], c["fn"], c["auc_pos"], c["auc_neg"]) for c in classes]
    [('0', 0, 0, 1, {4: 1}, {1: 1}), ('1', 1, 1, 0, {9: 1}, {6: 1})]
    >>> w.version, sorted(w.rows()), w.rows()
    (5, ['quality_class_partials', 'quality_partials'], {})
    """

    def __init__(self, auc_bins: int = 1000) -> None:
        if int(auc_bins) < 1:
            raise ValueError(f"auc_bins must be >= 1, got {auc_bins!r}")
        self.auc_bins = int(auc_bins)
        self.predictions = 0
        self.labelled = 0
        self.correct = 0
        self.log_loss_fixed = 0  # sum of losses in units of 1 / LOSS_SCALE
        self.log_loss_count = 0
        self.tp: dict[str, int] = {}
        self.fp: dict[str, int] = {}
        self.fn: dict[str, int] = {}
        # auc_neg leaves bin 0 out: it is implied (events with probabilities minus the
        # other bins), so events that never mention a class cost nothing and the state does
        # not depend on how events were batched. rows() fills it in.
        self.auc_pos: dict[str, dict[int, int]] = {}
        self.auc_neg: dict[str, dict[int, int]] = {}
        self._emitted = 0  # the version of the last rows()

    @property
    def log_loss_sum(self) -> float:
        """Sum of the per-event log losses."""
        return self.log_loss_fixed / LOSS_SCALE

    def add_predictions(self, batch: Predictions) -> None:
        """Count a batch of predictions, labelled or not."""
        self.predictions += len(batch)

    def add_pairs(self, batch: Pairs) -> None:
        self.add_labelled(
            batch.y_true,
            batch.y_pred,
            [
                _proba(batch.task, p, s)
                for p, s in zip(batch.probabilities, batch.score, strict=True)
            ],
        )

    @property
    def version(self) -> int:
        """Predictions and labelled pairs folded in."""
        return self.predictions + self.labelled

    def add_labelled(
        self,
        y_true: Sequence[str],
        y_pred: Sequence[str],
        proba: Sequence[Mapping[str, float] | None],
    ) -> None:
        """Fold a batch of joined (label, prediction, probabilities) triples in.

        ``proba[i]`` maps class label to probability; a class it does not mention has
        probability 0; ``None`` or an empty mapping means the event has no probabilities.
        Raises ``ValueError`` (leaving the state untouched) on mismatched lengths or a
        probability that is not finite or outside [0, 1].
        """
        n = len(y_true)
        if len(y_pred) != n or len(proba) != n:
            raise ValueError(
                f"y_true, y_pred and proba differ in length: {n}, {len(y_pred)}, {len(proba)}"
            )
        if n == 0:
            return
        scored = self._scored(y_true, proba)
        yt = np.asarray(y_true, dtype=str)
        yp = np.asarray(y_pred, dtype=str)
        classes, codes = np.unique(np.concatenate([yt, yp]), return_inverse=True)
        t, p = codes[:n], codes[n:]
        k = len(classes)
        hit = t == p
        tp = np.bincount(t[hit], minlength=k)
        fn = np.bincount(t, minlength=k) - tp
        fp = np.bincount(p, minlength=k) - tp
        for name, a, b, c in zip(
            classes.tolist(), tp.tolist(), fp.tolist(), fn.tolist(), strict=True
        ):
            self.tp[name] = self.tp.get(name, 0) + a
            self.fp[name] = self.fp.get(name, 0) + b
            self.fn[name] = self.fn.get(name, 0) + c
        self.labelled += n
        self.correct += int(hit.sum())
        if scored is not None:
            self._add_scored(*scored)

    def _scored(
        self, y_true: Sequence[str], proba: Sequence[Mapping[str, float] | None]
    ) -> tuple[list[str], np.ndarray, np.ndarray] | None:
        """Dense probability matrix of the events that carry probabilities, validated."""
        rows = [i for i, d in enumerate(proba) if d]
        if not rows:
            return None
        columns: dict[str, int] = {}
        r: list[int] = []
        c: list[int] = []
        v: list[float] = []
        for j, i in enumerate(rows):
            d = proba[i]
            assert d is not None
            for label, prob in d.items():
                r.append(j)
                c.append(columns.setdefault(str(label), len(columns)))
                v.append(prob)
        truth = np.array([columns.setdefault(str(y_true[i]), len(columns)) for i in rows])
        values = np.asarray(v, dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any((values < 0.0) | (values > 1.0)):
            raise ValueError("probabilities must be finite and within [0, 1]")
        matrix = np.zeros((len(rows), len(columns)), dtype=np.float64)
        matrix[r, c] = values
        return list(columns), matrix, truth

    def _add_scored(self, labels: list[str], matrix: np.ndarray, truth: np.ndarray) -> None:
        m, k = matrix.shape
        p_true = np.clip(matrix[np.arange(m), truth], EPS, 1.0 - EPS)
        fixed = np.rint(-np.log(p_true) * LOSS_SCALE).astype(np.int64)
        step = 100_000  # keeps each int64 partial sum far from overflow
        self.log_loss_fixed += sum(int(fixed[i : i + step].sum()) for i in range(0, m, step))
        self.log_loss_count += m
        b = self.auc_bins
        bins = np.minimum((matrix * b).astype(np.int64), b - 1)
        flat = bins + np.arange(k, dtype=np.int64) * b  # (class, bin) -> one code
        positive = truth[:, None] == np.arange(k)[None, :]
        for hists, mask in ((self.auc_pos, positive), (self.auc_neg, ~positive & (bins > 0))):
            code, count = np.unique(flat[mask], return_counts=True)
            cls = code // b
            for j in np.unique(cls).tolist():
                sel = cls == j
                _add_hist(hists.setdefault(labels[j], {}), code[sel] - j * b, count[sel])

    def merge(self, other: ClassificationWindow) -> None:
        """Add ``other``'s statistics to this one (both must use the same ``auc_bins``)."""
        if other.auc_bins != self.auc_bins:
            raise ValueError(f"auc_bins differ: {self.auc_bins} vs {other.auc_bins}")
        self.predictions += other.predictions
        self.labelled += other.labelled
        self.correct += other.correct
        self.log_loss_fixed += other.log_loss_fixed
        self.log_loss_count += other.log_loss_count
        for mine, theirs in ((self.tp, other.tp), (self.fp, other.fp), (self.fn, other.fn)):
            for label, count in theirs.items():
                mine[label] = mine.get(label, 0) + count
        for mine_h, theirs_h in ((self.auc_pos, other.auc_pos), (self.auc_neg, other.auc_neg)):
            for label, hist in theirs_h.items():
                dst = mine_h.setdefault(label, {})
                for b, count in hist.items():
                    dst[b] = dst.get(b, 0) + count

    def rows(self) -> dict[str, list[Row]]:
        if self.version == self._emitted:
            return {}
        self._emitted = version = self.version
        window, classes = self.partials()
        return {
            "quality_partials": [window | {"version": version}],
            "quality_class_partials": [c | {"version": version} for c in classes],
        }

    def partials(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``(window_columns, class_rows)`` for the partial tables, without keys or version.

        ``auc_neg`` is complete for this partition: events that carried probabilities but did
        not mention a class count in bin 0 of that class's ``auc_neg``.
        """
        window = {
            "predictions": self.predictions,
            "labelled": self.labelled,
            "correct": self.correct,
            "log_loss_sum": self.log_loss_sum,
            "log_loss_count": self.log_loss_count,
        }
        classes = sorted(
            {c for c in self.tp if self.tp[c] + self.fp[c] + self.fn[c] > 0}
            | {c for c, h in self.auc_pos.items() if h}
            | {c for c, h in self.auc_neg.items() if h}
        )
        out = []
        for c in classes:
            pos = dict(sorted(self.auc_pos.get(c, {}).items()))
            neg = self.auc_neg.get(c, {})
            low = self.log_loss_count - sum(pos.values()) - sum(neg.values())
            neg = dict(sorted((({0: low} if low else {}) | neg).items()))
            out.append(
                {
                    "class": c,
                    "tp": self.tp.get(c, 0),
                    "fp": self.fp.get(c, 0),
                    "fn": self.fn.get(c, 0),
                    "auc_pos": pos,
                    "auc_neg": neg,
                }
            )
        return window, out


def _proba(task: str, probabilities: Mapping[str, float] | None, score: float | None) -> Any:
    """A prediction's class probabilities: as sent, or a binary model's score as two."""
    if probabilities is not None:
        return dict(probabilities)
    if task == "binary" and score is not None:
        return {"1": score, "0": 1.0 - score}
    return None


_WINDOW = "model, model_version, segment, window_start"


class ClassificationFamily(MetricFamily):
    """Binary and multiclass models: counts, the confusion per class and binned scores.

    Parameters
    ----------
    auc_bins
        Score histogram bins of ROC AUC (see :class:`ClassificationWindow`).

    >>> family = ClassificationFamily(auc_bins=10)
    >>> family.accepts_label("binary", "2"), family.accepts_label("multiclass", "2")
    (False, True)
    >>> family.score(Prediction("e", "m", "", 0, "binary", "1", score=0.8))
    0.8
    """

    name: ClassVar[str] = "classification"
    tasks: ClassVar[frozenset[str]] = frozenset({"binary", "multiclass"})
    label_tasks: ClassVar[frozenset[str]] = tasks
    counts_predictions: ClassVar[bool] = True
    tables = (
        partial_table(
            "quality_partials",
            (
                Column("predictions", "UInt64"),
                Column("labelled", "UInt64"),
                Column("correct", "UInt64"),
                Column("log_loss_sum", "Float64"),
                Column("log_loss_count", "UInt64"),
            ),
        ),
        partial_table(
            "quality_class_partials",
            (
                Column("class", "String"),
                Column("tp", "UInt64"),
                Column("fp", "UInt64"),
                Column("fn", "UInt64"),
                Column("auc_pos", "Map(UInt32, UInt64)"),
                Column("auc_neg", "Map(UInt32, UInt64)"),
            ),
            order_by=("model", "model_version", "segment", "window_start", "partition", "class"),
        ),
    )
    metrics = tuple(
        Metric("classification", name, definition)
        for name, definition in (
            ("predictions", "number of predictions in the window, labelled or not"),
            ("labelled", "number of predictions joined with a label in the window"),
            ("accuracy", "correct / labelled; NULL when labelled = 0"),
            (
                "macro_precision",
                "mean of tp / (tp + fp) over classes in y_true or y_pred (0 if no tp+fp)",
            ),
            (
                "macro_recall",
                "mean of tp / (tp + fn) over classes in y_true or y_pred (0 if no tp+fn)",
            ),
            ("macro_f1", "mean of 2tp / (2tp + fp + fn) over classes in y_true or y_pred"),
            ("log_loss", "mean -ln(clip(p[y_true], eps, 1 - eps)) over events with probabilities"),
            ("roc_auc", "binned one-vs-rest ROC AUC: class '1' if binary, else mean over classes"),
        )
    )

    def __init__(self, auc_bins: int = 1000) -> None:
        self.auc_bins = auc_bins

    @classmethod
    def configured(cls, settings: Settings) -> ClassificationFamily:
        return cls(auc_bins=settings.auc_bins)

    def accumulator(self, counters: Counter[str]) -> ClassificationWindow:
        return ClassificationWindow(self.auc_bins)

    def accepts_label(self, task: str, label: Any) -> bool:
        return label in ("0", "1") if task == "binary" else isinstance(label, str)

    def score(self, prediction: Prediction) -> float | None:
        """P(label = 1) for binary models, else the top probability (the confidence)."""
        proba = _proba(prediction.task, prediction.probabilities, prediction.score)
        if proba is None:
            return None
        if prediction.task == "binary":
            return float(proba.get("1", 0.0))
        return float(max(proba.values()))

    def error(self, task: str, y_pred: Any, label: Any) -> float | None:
        return float(y_pred != label)

    def views(self, views: Views) -> list[str]:
        db = views.db
        long_rows = ",\n        ".join(
            f"('{m.name}', CAST({m.name} AS Nullable(Float64)))" for m in self.metrics
        )
        return [
            # The bin count is not needed: only the order of the bins matters, and equal bins
            # count as ties (half). A partition that never saw a class still had events with
            # probability 0 for it: `unseen` puts them in bin 0 of auc_neg, from the window's
            # count of events with probabilities.
            f"""CREATE OR REPLACE VIEW {db}.quality_classes AS
SELECT
    model, model_version, segment, window_start, window_end, class,
    tp, fp, fn, tp + fn AS support,
    if(tp + fp = 0, 0., tp / (tp + fp)) AS precision,
    if(tp + fn = 0, 0., tp / (tp + fn)) AS recall,
    if(2 * tp + fp + fn = 0, 0., 2 * tp / (2 * tp + fp + fn)) AS f1,
    if(n_pos = 0 OR n_neg = 0, NULL, auc_sum / (toFloat64(n_pos) * n_neg)) AS roc_auc,
    if(n_pos = 0 OR n_neg = 0, NULL, tie_sum / (toFloat64(n_pos) * n_neg)) AS roc_auc_error_bound
FROM (
    SELECT
        c.model AS model, c.model_version AS model_version, c.segment AS segment,
        c.window_start AS window_start, c.window_end AS window_end, c.class AS class,
        c.tp AS tp, c.fp AS fp, c.fn AS fn,
        arraySum(mapValues(c.pos)) AS n_pos,
        arraySum(mapValues(c.neg_seen)) AS n_neg_seen,
        greatest(toInt64(w.scored) - toInt64(n_pos), toInt64(n_neg_seen)) AS n_neg,
        mapAdd(c.neg_seen, map(toUInt32(0), toUInt64(n_neg - n_neg_seen))) AS neg,
        arraySort(arrayDistinct(arrayConcat(mapKeys(c.pos), mapKeys(neg)))) AS bins,
        arrayMap(b -> c.pos[b], bins) AS p,
        arrayMap(b -> neg[b], bins) AS n,
        arrayMap((s, x) -> s - x, arrayCumSum(n), n) AS n_below,
        arraySum(arrayMap((pi, bi, ni) -> pi * (bi + 0.5 * ni), p, n_below, n)) AS auc_sum,
        0.5 * arraySum(arrayMap((pi, ni) -> pi * ni, p, n)) AS tie_sum
    FROM (
        SELECT {_WINDOW}, max(window_end) AS window_end, class,
            sum(tp) AS tp, sum(fp) AS fp, sum(fn) AS fn,
            sumMap(auc_pos) AS pos, sumMap(auc_neg) AS neg_seen
        FROM {db}.quality_class_partials FINAL
        GROUP BY {_WINDOW}, class
    ) AS c
    LEFT JOIN (
        SELECT {_WINDOW}, sum(log_loss_count) AS scored
        FROM {db}.quality_partials FINAL
        GROUP BY {_WINDOW}
    ) AS w
    ON c.model = w.model AND c.model_version = w.model_version AND c.segment = w.segment
        AND c.window_start = w.window_start
)""",
            f"""CREATE OR REPLACE VIEW {db}.quality_windows AS
SELECT
    w.model AS model, w.model_version AS model_version, w.segment AS segment,
    w.window_start AS window_start, w.window_end AS window_end,
    w.predictions AS predictions, w.labelled AS labelled,
    if(w.labelled = 0, NULL, w.correct / w.labelled) AS accuracy,
    c.macro_precision AS macro_precision,
    c.macro_recall AS macro_recall,
    c.macro_f1 AS macro_f1,
    if(w.log_loss_count = 0, NULL, w.log_loss_sum / w.log_loss_count) AS log_loss,
    c.roc_auc AS roc_auc
FROM (
    SELECT {_WINDOW}, max(window_end) AS window_end,
        sum(predictions) AS predictions, sum(labelled) AS labelled, sum(correct) AS correct,
        sum(log_loss_sum) AS log_loss_sum, sum(log_loss_count) AS log_loss_count
    FROM {db}.quality_partials FINAL
    GROUP BY {_WINDOW}
) AS w
LEFT JOIN (
    -- sklearn's label set: the classes in y_true or y_pred, i.e. those with tp + fp + fn > 0.
    SELECT {_WINDOW},
        countIf(tp + fp + fn > 0) AS n_labels,
        if(n_labels = 0, NULL, sumIf(precision, tp + fp + fn > 0) / n_labels) AS macro_precision,
        if(n_labels = 0, NULL, sumIf(recall, tp + fp + fn > 0) / n_labels) AS macro_recall,
        if(n_labels = 0, NULL, sumIf(f1, tp + fp + fn > 0) / n_labels) AS macro_f1,
        if(countIf(class NOT IN ('0', '1')) = 0,
           anyIf(roc_auc, class = '1'),
           avg(roc_auc)) AS roc_auc
    FROM {db}.quality_classes
    GROUP BY {_WINDOW}
) AS c
ON w.model = c.model AND w.model_version = c.model_version AND w.segment = c.segment
    AND w.window_start = c.window_start""",
            f"""CREATE OR REPLACE VIEW {db}.quality_metrics AS
SELECT model, model_version, segment, window_start, window_end,
    kv.1 AS metric, kv.2 AS value
FROM {db}.quality_windows
ARRAY JOIN [
        {long_rows}
    ] AS kv""",
        ]
