"""The registry of metric families, and of the stable metric names they publish.

Adding a family is a module with its :class:`~pipeline.estimators.family.MetricFamily` and
one line in :data:`FAMILIES`. Their order is the order of their tables in the rows a
partition emits; a family whose rows make the sink derive (feature summaries) comes last, so
a window's other partials are stored by the time it derives. A name, once published, keeps
its meaning; ``docs/metrics.md`` gives the full definitions.

>>> [f.name for f in families(Settings())]
['classification', 'regression', 'clients', 'features']
>>> "accuracy" in names("classification")
True
"""

from __future__ import annotations

from pipeline.estimators.classification import ClassificationFamily
from pipeline.estimators.clients import ClientsFamily
from pipeline.estimators.drift import DriftFamily
from pipeline.estimators.family import Metric, MetricFamily, Table
from pipeline.estimators.regression import RegressionFamily
from pipeline.settings import Settings

__all__ = ["FAMILIES", "families", "names", "registered", "tables"]

FAMILIES: tuple[type[MetricFamily], ...] = (
    ClassificationFamily,
    RegressionFamily,
    ClientsFamily,
    DriftFamily,
)


def families(settings: Settings) -> tuple[MetricFamily, ...]:
    """The families as ``settings`` configure them, those it turns off left out."""
    return tuple(f for cls in FAMILIES if (f := cls.configured(settings)) is not None)


def registered() -> tuple[Metric, ...]:
    """Every published metric, family by family."""
    return tuple(m for family in FAMILIES for m in family.metrics)


def names(family: str) -> tuple[str, ...]:
    """The metric names of one family, in their order."""
    return tuple(m.name for m in registered() if m.family == family)


def tables() -> tuple[Table, ...]:
    """Every table of every family, partial and derived."""
    return tuple(t for f in FAMILIES for t in (*f.tables, *f.derived_tables))
