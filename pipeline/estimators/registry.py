"""Stable metric names: the values of the ``metric`` column of the long ClickHouse views.

A name, once published, keeps its meaning; ``docs/metrics.md`` gives the full definitions.
Each family registers its metrics here, next to the estimator that accumulates them, and a
test checks that the long view of the family emits exactly the registered names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Metric", "get", "names", "register", "registered"]


@dataclass(frozen=True)
class Metric:
    """One published metric: its family, stable name and one-line definition."""

    family: str
    name: str
    definition: str
    #: Dotted path of the estimator class whose partial rows the metric is computed from.
    estimator: str


_REGISTRY: dict[tuple[str, str], Metric] = {}


def register(family: str, name: str, definition: str, estimator: str) -> Metric:
    """Register a metric; registering the same (family, name) twice is an error."""
    if (family, name) in _REGISTRY:
        raise ValueError(f"metric {family}/{name} is already registered")
    metric = Metric(family, name, definition, estimator)
    _REGISTRY[family, name] = metric
    return metric


def get(family: str, name: str) -> Metric:
    """The registered metric ``name`` of ``family`` (``KeyError`` if unknown)."""
    return _REGISTRY[family, name]


def names(family: str) -> tuple[str, ...]:
    """The metric names of one family, in registration order."""
    return tuple(name for fam, name in _REGISTRY if fam == family)


def registered() -> tuple[Metric, ...]:
    """Every registered metric, in registration order."""
    return tuple(_REGISTRY.values())


CLASSIFICATION = "classification"
_CLS = "pipeline.estimators.classification.ClassificationWindow"

for _name, _definition in (
    ("predictions", "number of predictions in the window, labelled or not"),
    ("labelled", "number of predictions joined with a label in the window"),
    ("accuracy", "correct / labelled; NULL when labelled = 0"),
    ("macro_precision", "mean of tp / (tp + fp) over classes in y_true or y_pred (0 if no tp+fp)"),
    ("macro_recall", "mean of tp / (tp + fn) over classes in y_true or y_pred (0 if no tp+fn)"),
    ("macro_f1", "mean of 2tp / (2tp + fp + fn) over classes in y_true or y_pred"),
    ("log_loss", "mean -ln(clip(p[y_true], eps, 1 - eps)) over events with probabilities"),
    ("roc_auc", "binned one-vs-rest ROC AUC: class '1' if binary, else mean over classes"),
):
    register(CLASSIFICATION, _name, _definition, _CLS)
