"""Classification quality: mergeable sufficient statistics of one window on one partition.

Only counts live here. The metric formulas (accuracy, precision, recall, F1, log loss,
ROC AUC) are written once, in the ClickHouse views of :mod:`pipeline.sink.quality_sql`,
which sum these partial rows across partitions; ``docs/metrics.md`` defines them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["EPS", "LOSS_SCALE", "ClassificationWindow"]

#: Log-loss clipping bound, the same as scikit-learn's for float64 probabilities.
EPS = float(np.finfo(np.float64).eps)
#: Losses are summed as integers in units of 2**-40 (rounding error <= 4.6e-13 per event):
#: integer sums do not depend on batching or merge order, so replays give identical rows.
LOSS_SCALE = 2**40


def _add_hist(dst: dict[int, int], bins: np.ndarray, counts: np.ndarray) -> None:
    for b, c in zip(bins.tolist(), counts.tolist(), strict=True):
        dst[b] = dst.get(b, 0) + c


class ClassificationWindow:
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
    >>> w.add_predictions(3)
    >>> w.add_labelled(["1", "0"], ["1", "1"], [{"1": 0.9, "0": 0.1}, {"1": 0.6, "0": 0.4}])
    >>> window, classes = w.rows()
    >>> window["predictions"], window["labelled"], window["correct"], window["log_loss_count"]
    (3, 2, 1, 2)
    >>> [(c["class"], c["tp"], c["fp"], c["fn"], c["auc_pos"], c["auc_neg"]) for c in classes]
    [('0', 0, 0, 1, {4: 1}, {1: 1}), ('1', 1, 1, 0, {9: 1}, {6: 1})]
    >>> other = ClassificationWindow.from_state(w.to_state())
    >>> other.merge(w)
    >>> other.rows()[0]["labelled"]
    4
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

    @property
    def log_loss_sum(self) -> float:
        """Sum of the per-event log losses."""
        return self.log_loss_fixed / LOSS_SCALE

    def add_predictions(self, n: int) -> None:
        """Count ``n`` predictions, labelled or not."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.predictions += int(n)

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

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable state (sparse histograms as ``[[bin, count], ...]``)."""
        return {
            "auc_bins": self.auc_bins,
            "predictions": self.predictions,
            "labelled": self.labelled,
            "correct": self.correct,
            "log_loss_fixed": str(self.log_loss_fixed),  # may exceed JSON's 64-bit integers
            "log_loss_count": self.log_loss_count,
            "tp": dict(self.tp),
            "fp": dict(self.fp),
            "fn": dict(self.fn),
            "auc_pos": {k: sorted(h.items()) for k, h in self.auc_pos.items()},
            "auc_neg": {k: sorted(h.items()) for k, h in self.auc_neg.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ClassificationWindow:
        """Rebuild an accumulator from :meth:`to_state` output (after a JSON round trip)."""
        w = cls(auc_bins=int(state["auc_bins"]))
        w.predictions = int(state["predictions"])
        w.labelled = int(state["labelled"])
        w.correct = int(state["correct"])
        w.log_loss_fixed = int(state["log_loss_fixed"])
        w.log_loss_count = int(state["log_loss_count"])
        for name in ("tp", "fp", "fn"):
            setattr(w, name, {str(k): int(v) for k, v in state[name].items()})
        for name in ("auc_pos", "auc_neg"):
            hists = {str(k): {int(b): int(c) for b, c in h} for k, h in state[name].items()}
            setattr(w, name, hists)
        return w

    def rows(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``(window_columns, class_rows)`` for the ClickHouse partial tables, without keys.

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
