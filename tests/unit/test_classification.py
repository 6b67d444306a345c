"""ClassificationWindow against scikit-learn, on seeded random and adversarial windows."""

from __future__ import annotations

import doctest
import warnings
from collections.abc import Mapping, Sequence
from copy import deepcopy

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from pipeline.estimators import classification
from pipeline.estimators.classification import EPS, ClassificationWindow
from pipeline.estimators.family import Predictions
from pipeline.estimators.registry import names, registered

Proba = Sequence[Mapping[str, float] | None]


def make_batch(
    rng: np.random.Generator, n: int, classes: Sequence[str], p_none: float = 0.2
) -> tuple[list[str], list[str], list[dict[str, float] | None]]:
    """Labels, predictions (mostly the argmax) and normalised probabilities, some missing."""
    k = len(classes)
    truth = rng.integers(k, size=n)
    alpha = np.ones((n, k))
    alpha[np.arange(n), truth] += 2.0
    g = rng.gamma(alpha)
    p = g / g.sum(axis=1, keepdims=True)
    pred = np.where(rng.random(n) < 0.8, p.argmax(axis=1), rng.integers(k, size=n))
    proba = [
        None if rng.random() < p_none else {classes[j]: float(p[i, j]) for j in range(k)}
        for i in range(n)
    ]
    return [classes[i] for i in truth], [classes[i] for i in pred], proba


def predictions(n: int) -> Predictions:
    """A batch of ``n`` predictions (only their number counts here)."""
    return Predictions("multiclass", *([None] * n,) * 5)


def state(w: ClassificationWindow) -> dict[str, object]:
    """Everything the accumulator holds, to compare bit for bit."""
    return {k: v for k, v in vars(w).items() if k != "_emitted"}


def window_of(
    y_true: list[str], y_pred: list[str], proba: Proba, bins: int = 1000
) -> ClassificationWindow:
    w = ClassificationWindow(auc_bins=bins)
    w.add_predictions(predictions(len(y_true)))
    w.add_labelled(y_true, y_pred, proba)
    return w


def auc_from_hist(pos: Mapping[int, int], neg: Mapping[int, int]) -> tuple[float, float] | None:
    """(AUC, error bound) from two histograms: the formula of docs/metrics.md."""
    n_pos, n_neg = sum(pos.values()), sum(neg.values())
    if n_pos == 0 or n_neg == 0:
        return None
    below = 0
    num = ties = 0.0
    for b in sorted(set(pos) | set(neg)):
        p, n = pos.get(b, 0), neg.get(b, 0)
        num += p * (below + 0.5 * n)
        ties += 0.5 * p * n
        below += n
    return num / (n_pos * n_neg), ties / (n_pos * n_neg)


def from_rows(w: ClassificationWindow) -> dict[str, object]:
    """The view formulas in Python, to check the counts (the SQL test checks the views)."""
    window, classes = w.partials()
    per = {c["class"]: c for c in classes}
    labels = [c for c, r in per.items() if r["tp"] + r["fp"] + r["fn"] > 0]

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    prf = {
        c: (
            ratio(per[c]["tp"], per[c]["tp"] + per[c]["fp"]),
            ratio(per[c]["tp"], per[c]["tp"] + per[c]["fn"]),
            ratio(2 * per[c]["tp"], 2 * per[c]["tp"] + per[c]["fp"] + per[c]["fn"]),
        )
        for c in labels
    }
    aucs = {c: auc_from_hist(r["auc_pos"], r["auc_neg"]) for c, r in per.items()}
    return {
        "accuracy": window["correct"] / window["labelled"] if window["labelled"] else None,
        "prf": prf,
        "macro": tuple(np.mean([v[i] for v in prf.values()]) for i in range(3)) if prf else None,
        "log_loss": (
            window["log_loss_sum"] / window["log_loss_count"] if window["log_loss_count"] else None
        ),
        "auc": aucs,
    }


def dense(proba: Proba, labels: list[str]) -> np.ndarray:
    return np.array([[d.get(c, 0.0) for c in labels] for d in proba if d])


def check_against_sklearn(y_true: list[str], y_pred: list[str], proba: Proba, bins: int) -> None:
    got = from_rows(window_of(y_true, y_pred, proba, bins))
    labels = sorted(set(y_true) | set(y_pred))
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    assert sorted(got["prf"]) == labels
    for i, c in enumerate(labels):
        assert got["prf"][c] == pytest.approx((p[i], r[i], f[i]), abs=1e-12)
    macro = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )[:3]
    assert got["macro"] == pytest.approx(macro, abs=1e-12)

    scored_true = [t for t, d in zip(y_true, proba, strict=True) if d]
    if not scored_true:
        assert got["log_loss"] is None
        assert all(v is None for v in got["auc"].values())
        return
    universe = sorted(set(labels) | {c for d in proba if d for c in d})
    matrix = dense(proba, universe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rows with a missing class do not sum to 1
        expected_ll = log_loss(scored_true, matrix, labels=universe)
    assert got["log_loss"] == pytest.approx(expected_ll, abs=1e-9)
    for j, c in enumerate(universe):
        y = np.array(scored_true) == c
        if y.all() or not y.any():
            assert got["auc"].get(c) is None
            continue
        auc, bound = got["auc"][c]
        exact = roc_auc_score(y, matrix[:, j])
        assert abs(auc - exact) <= bound + 1e-12
        b = np.minimum((matrix[:, j] * bins).astype(np.int64), bins - 1)
        pos, neg = np.bincount(b[y], minlength=bins), np.bincount(b[~y], minlength=bins)
        assert bound == pytest.approx(0.5 * float(pos @ neg) / (y.sum() * (~y).sum()), abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("classes", [["0", "1"], ["a", "b", "c"], list("pqrstuv")])
def test_random_windows_match_sklearn(seed: int, classes: list[str]) -> None:
    rng = np.random.default_rng(seed)
    y_true, y_pred, proba = make_batch(rng, int(rng.integers(50, 400)), classes)
    check_against_sklearn(y_true, y_pred, proba, bins=int(rng.choice([10, 100, 1000])))


def test_coarse_bins_respect_error_bound() -> None:
    rng = np.random.default_rng(7)
    y_true, y_pred, proba = make_batch(rng, 500, ["x", "y", "z"], p_none=0.0)
    check_against_sklearn(y_true, y_pred, proba, bins=3)


@pytest.mark.parametrize("bins", [10, 1000])
def test_auc_exact_on_bin_centres(bins: int) -> None:
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(2, size=n)
    s = (np.clip(rng.integers(bins, size=n) + y * 2, 0, bins - 1) + 0.5) / bins
    y_true = [str(v) for v in y]
    proba = [{"1": float(v), "0": float(1 - v)} for v in s]
    got = from_rows(window_of(y_true, ["1"] * n, proba, bins))["auc"]
    assert got["1"][0] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert got["0"][0] == pytest.approx(roc_auc_score(1 - y, 1 - s), abs=1e-9)


def test_binary_score_only_matches_1d_sklearn() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(2, size=200)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    y_true = [str(v) for v in y]
    y_pred = [str(int(v >= 0.5)) for v in s]
    proba = [{"1": float(v), "0": 1.0 - float(v)} for v in s]
    got = from_rows(window_of(y_true, y_pred, proba))
    assert got["log_loss"] == pytest.approx(log_loss(y, s), abs=1e-9)
    auc, bound = got["auc"]["1"]
    assert abs(auc - roc_auc_score(y, s)) <= bound + 1e-12
    check_against_sklearn(y_true, y_pred, proba, bins=1000)


def test_all_one_class_window() -> None:
    y_true = ["1"] * 6
    y_pred = ["1", "0", "1", "1", "0", "1"]
    proba = [{"1": p, "0": 1 - p} for p in (0.9, 0.2, 0.7, 0.6, 0.4, 0.99)]
    check_against_sklearn(y_true, y_pred, proba, bins=100)
    auc = from_rows(window_of(y_true, y_pred, proba))["auc"]
    assert auc == {"0": None, "1": None}


def test_empty_window() -> None:
    w = ClassificationWindow()
    w.add_labelled([], [], [])
    assert w.partials() == (
        {"predictions": 0, "labelled": 0, "correct": 0, "log_loss_sum": 0.0, "log_loss_count": 0},
        [],
    )
    w.add_predictions(predictions(7))
    assert w.partials()[0]["predictions"] == 7 and w.partials()[1] == []


def test_class_never_predicted_and_class_only_predicted() -> None:
    rng = np.random.default_rng(5)
    y_true, y_pred, proba = make_batch(rng, 200, ["a", "b", "c"])
    y_true = ["never" if i % 17 == 0 else t for i, t in enumerate(y_true)]  # never predicted
    y_pred = ["only" if i % 13 == 0 else p for i, p in enumerate(y_pred)]  # never true
    check_against_sklearn(y_true, y_pred, proba, bins=1000)
    rows = {c["class"]: c for c in window_of(y_true, y_pred, proba).partials()[1]}
    assert rows["never"]["tp"] == rows["never"]["fp"] == 0 and rows["never"]["fn"] > 0
    assert rows["only"]["tp"] == rows["only"]["fn"] == 0 and rows["only"]["fp"] > 0


def test_missing_class_in_proba_counts_as_zero() -> None:
    rng = np.random.default_rng(9)
    y_true, y_pred, proba = make_batch(rng, 300, ["a", "b", "c", "d"], p_none=0.1)
    # Sparse probabilities: drop the small ones, and "d" entirely from the first half.
    sparse = [
        None
        if d is None
        else {c: v for c, v in d.items() if v >= 0.1 and not (c == "d" and i < 150)}
        for i, d in enumerate(proba)
    ]
    check_against_sklearn(y_true, y_pred, sparse, bins=50)


def test_labels_only_in_probabilities() -> None:
    y_true, y_pred = ["a", "b", "a"], ["a", "a", "b"]
    proba = [{"a": 0.6, "b": 0.2, "z": 0.2}, {"a": 0.3, "b": 0.7}, {"a": 0.5, "z": 0.5}]
    check_against_sklearn(y_true, y_pred, proba, bins=10)
    rows = {c["class"]: c for c in window_of(y_true, y_pred, proba, bins=10).partials()[1]}
    assert rows["z"]["auc_pos"] == {} and sum(rows["z"]["auc_neg"].values()) == 3


def test_merge_equals_one_accumulator_on_concatenation() -> None:
    rng = np.random.default_rng(21)
    parts = [make_batch(rng, n, cls) for n, cls in ((120, "abc"), (80, "ab"), (60, "bcd"))]
    merged = ClassificationWindow(auc_bins=100)
    for y_true, y_pred, proba in parts:
        merged.merge(window_of(y_true, y_pred, proba, bins=100))
    y_true, y_pred, proba = ([x for p in parts for x in p[i]] for i in range(3))
    whole = window_of(y_true, y_pred, proba, bins=100)
    assert state(merged) == state(whole)  # bit for bit, the loss sum included
    assert merged.partials() == whole.partials()
    order = rng.permutation(len(y_true)).tolist()
    shuffled = window_of(*([seq[i] for i in order] for seq in (y_true, y_pred, proba)), bins=100)
    assert shuffled.partials() == whole.partials()


def test_bin_index_rule() -> None:
    w = ClassificationWindow(auc_bins=4)
    w.add_labelled(["1"] * 5, ["1"] * 5, [{"1": p} for p in (0.0, 0.2499, 0.25, 0.99, 1.0)])
    assert w.partials()[1][0]["auc_pos"] == {0: 2, 1: 1, 3: 2}
    assert w.log_loss_sum == pytest.approx(
        -np.log(EPS) + sum(-np.log(min(p, 1 - EPS)) for p in (0.2499, 0.25, 0.99, 1.0))
    )


@pytest.mark.parametrize(
    "args",
    [
        (["a"], ["a", "b"], [None]),
        (["a"], ["a"], [{"a": float("nan")}]),
        (["a"], ["a"], [{"a": 1.5}]),
        (["a", "b"], ["a", "b"], [{"a": 0.5}, {"b": -0.1}]),
    ],
)
def test_bad_batches_raise_and_leave_state(args: tuple[list[str], list[str], Proba]) -> None:
    w = window_of(["a"], ["b"], [{"a": 0.3, "b": 0.7}])
    before = deepcopy(state(w))
    with pytest.raises(ValueError):
        w.add_labelled(*args)
    assert state(w) == before


def test_merge_rejects_different_bins() -> None:
    with pytest.raises(ValueError):
        ClassificationWindow(10).merge(ClassificationWindow(20))


def test_docstring_examples() -> None:
    assert doctest.testmod(classification, raise_on_error=False).failed == 0


def test_registry_names_are_stable_and_documented() -> None:
    metrics = names("classification")
    assert metrics == (
        "predictions",
        "labelled",
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "log_loss",
        "roc_auc",
    )
    for m in registered():
        assert m.definition and "\n" not in m.definition
    assert len({(m.family, m.name) for m in registered()}) == len(registered())
