"""The metric-family contract: everything one kind of monitoring needs, behind one interface.

A :class:`MetricFamily` says which prediction tasks it serves, makes the per-window state
(an :class:`Accumulator`) that the compute stage folds batches of a window's predictions and
joined pairs into, declares the ClickHouse tables its rows go to (:class:`Table`, each column
typed once) and the views that combine the partitions' partial rows, and names its metrics.
Optional hooks give the values its drift detectors watch and the rows the sink derives.
The compute stage, replay, the sink's migrations, the derive step and the tests iterate the
registry (:mod:`pipeline.estimators.registry`); none of them names a family.

An accumulator's state must be mergeable across partitions and independent of how its input
was batched, and its ``version`` must grow with every fold: rows are versioned by the input
folded into them, so a state rebuilt from part of the input loses to the complete one in a
``ReplacingMergeTree``. ``tests/unit/test_families.py`` checks every registered family for it.

>>> t = partial_table("example_partials", (Column("n", "UInt64"),))
>>> t.written
('model', 'model_version', 'segment', 'window_start', 'window_end', 'partition', 'n', 'version')
>>> t.check({c: 0 for c in t.written} | {"model": "m", "model_version": "", "segment": ""})
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

from schemas.events import Prediction

if TYPE_CHECKING:
    from pipeline.settings import Settings

Row = dict[str, Any]

#: Settings of the tables whose rows hold arrays or maps (kilobytes a row). A merge reads its
#: parts a granule and a block at a time, and at the defaults (8192 rows or 10 MiB, and 1 MiB
#: compression blocks) it took about as much memory as the parts it merged: 243-274 MiB for
#: six parts of 50 000 feature rows (216 MiB), against 21-53 MiB with these. A long-running
#: sink merges ever larger parts.
LARGE_ROWS: Final = (
    "SETTINGS index_granularity = 256, merge_max_block_size = 256, max_compress_block_size = 262144"
)
TIME: Final = "DateTime64(3, 'UTC')"


@dataclass(frozen=True, slots=True)
class Column:
    """A column: its name, its ClickHouse type, and a default expression if writers leave it
    out (then it is not :attr:`Table.written`)."""

    name: str
    type: str
    default: str | None = None


@dataclass(frozen=True)
class Table:
    """A ClickHouse table: its columns, declared once, and its sort key. Rows are dicts with
    exactly the :attr:`written` columns; times are epoch milliseconds."""

    name: str
    columns: tuple[Column, ...]
    order_by: tuple[str, ...]
    engine: str = "ReplacingMergeTree(version)"

    @property
    def written(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.default is None)

    @property
    def time_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.type.startswith("DateTime"))

    @property
    def int_map_columns(self) -> tuple[str, ...]:
        """Maps keyed by integers, whose keys JSON carries as text."""
        return tuple(c.name for c in self.columns if re.match(r"Map\(U?Int\d+,", c.type))

    def ddl(self, db: str) -> list[str]:
        """CREATE TABLE, then ADD COLUMN for every column, so a table created before a column
        was declared gets it (columns are only ever added)."""
        columns = ",\n    ".join(
            f"{c.name} {c.type}" + (f" DEFAULT {c.default}" if c.default else "")
            for c in self.columns
        )
        large = (
            LARGE_ROWS if any(re.search(r"\b(Array|Map)\(", c.type) for c in self.columns) else ""
        )
        create = (
            f"CREATE TABLE IF NOT EXISTS {db}.{self.name} (\n    {columns}\n)"
            f" ENGINE = {self.engine}\nORDER BY ({', '.join(self.order_by)})\n{large}"
        )
        adds = [
            f"ALTER TABLE {db}.{self.name} ADD COLUMN IF NOT EXISTS {c.name} {c.type}"
            + (f" DEFAULT {c.default}" if c.default else "")
            + (f" AFTER {previous.name}" if previous else " FIRST")
            for previous, c in zip((None, *self.columns), self.columns, strict=False)
        ]
        return [create, *adds]

    def check(self, row: Mapping[str, Any]) -> None:
        """Raise ValueError unless ``row`` has exactly the written columns, each a value its
        type takes."""
        if set(row) != set(self.written):
            missing, extra = set(self.written) - set(row), set(row) - set(self.written)
            raise ValueError(f"{self.name}: missing {sorted(missing)}, unknown {sorted(extra)}")
        for c in self.columns:
            if c.default is None and not _fits(c.type, row[c.name]):
                raise ValueError(f"{self.name}.{c.name} ({c.type}): {row[c.name]!r}")


def _fits(kind: str, value: Any) -> bool:
    if kind.startswith("Nullable("):
        return value is None or _fits(kind[9:-1], value)
    if kind == "String":
        return isinstance(value, str)
    if re.fullmatch(r"U?Int\d+", kind):
        unsigned = kind.startswith("U")
        return type(value) is int and (value >= 0 or not unsigned)
    if kind.startswith("Float"):
        return type(value) in (float, int)
    if kind.startswith("DateTime64"):
        return type(value) is int and value >= 0
    if kind.startswith("Array("):
        return isinstance(value, list) and all(_fits(kind[6:-1], v) for v in value)
    found = re.fullmatch(r"Map\((\w+), (.+)\)", kind)
    if found:
        key, item = found.groups()
        keys_ok = all(
            isinstance(k, str)
            if key == "String"
            else (type(k) is int or str(k).lstrip("-").isdigit())
            for k in value
        )
        return isinstance(value, dict) and keys_ok and all(_fits(item, v) for v in value.values())
    raise ValueError(f"no check for ClickHouse type {kind}")


#: The key of every window's partial rows: what the row describes, and the partition that
#: computed it (the views combine the partitions).
WINDOW_KEY: Final = (
    Column("model", "String"),
    Column("model_version", "String"),
    Column("segment", "String"),
    Column("window_start", TIME),
    Column("window_end", TIME),
    Column("partition", "UInt32"),
)
VERSION: Final = Column("version", "UInt64")
INSERTED_AT: Final = Column("inserted_at", TIME, "now64(3)")


def partial_table(
    name: str,
    columns: tuple[Column, ...],
    key: tuple[str, ...] = (),
    order_by: tuple[str, ...] | None = None,
) -> Table:
    """A table of partial rows: :data:`WINDOW_KEY`, ``columns`` (``key`` names those that
    tell a window's rows apart, e.g. a class), ``version`` and ``inserted_at``; sorted by the
    window, the key and the partition unless ``order_by`` says otherwise."""
    window = ("model", "model_version", "segment", "window_start")
    return Table(
        name,
        (*WINDOW_KEY, *columns, VERSION, INSERTED_AT),
        order_by or (*window, *key, "partition"),
    )


def derived_table(name: str, columns: tuple[Column, ...], key: tuple[str, ...]) -> Table:
    """A table of rows the sink derives per window of all partitions: :data:`WINDOW_KEY`
    without the partition, ``columns``, ``version`` and ``inserted_at``."""
    return Table(
        name,
        (*WINDOW_KEY[:5], *columns, VERSION, INSERTED_AT),
        ("model", "model_version", "segment", "window_start", *key),
    )


@dataclass(frozen=True)
class Metric:
    """One published metric: its family, stable name (a value of the ``metric`` column of
    the long views, and a column of the wide one) and one-line definition."""

    family: str
    name: str
    definition: str


# --- what a family folds ----------------------------------------------------------------------


class Predictions:
    """A batch of one window's predictions of one task, as columns."""

    __slots__ = (
        "_observed",
        "client_id",
        "features",
        "prediction",
        "probabilities",
        "score",
        "task",
    )

    def __init__(
        self,
        task: str,
        prediction: Sequence[Any],
        score: Sequence[float | None],
        probabilities: Sequence[Mapping[str, float] | None],
        features: Sequence[Mapping[str, Any] | None],
        client_id: Sequence[str | None],
    ) -> None:
        self.task = task
        self.prediction = prediction
        self.score = score
        self.probabilities = probabilities
        self.features = features
        self.client_id = client_id
        self._observed: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.prediction)

    @classmethod
    def of(cls, task: str, events: Sequence[Prediction]) -> Predictions:
        """The columns of decoded predictions (a columnar input would fill them directly)."""
        return cls(
            task,
            [p.prediction for p in events],
            [p.score for p in events],
            [p.probabilities for p in events],
            [p.features for p in events],
            [p.client_id for p in events],
        )

    def observed(self) -> list[dict[str, Any]]:
        """What drift watches of each prediction: its features, and the prediction
        (``__prediction__``, a class or a number) and score (``__score__``) themselves.
        Computed once per batch, for every family that summarises it."""
        if self._observed is None:
            out = []
            for features, prediction, score in zip(
                self.features, self.prediction, self.score, strict=True
            ):
                seen = dict(features) if features else {}
                if isinstance(prediction, str | float):
                    seen["__prediction__"] = prediction
                if score is not None:
                    seen["__score__"] = score
                out.append(seen)
            self._observed = out
        return self._observed


@dataclass(slots=True)
class Pairs:
    """A batch of one window's joined (prediction, label) pairs of one task, as columns: the
    label, and the prediction with its score and class probabilities (None if it had none)."""

    task: str
    y_true: list[Any] = field(default_factory=list)
    y_pred: list[Any] = field(default_factory=list)
    score: list[float | None] = field(default_factory=list)
    probabilities: list[Mapping[str, float] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y_true)


class Accumulator(ABC):
    """The state of one family in one window of one partition."""

    @abstractmethod
    def add_predictions(self, batch: Predictions) -> None:
        """Fold a batch of predictions in."""

    def add_pairs(self, batch: Pairs) -> None:  # noqa: B027 - most families ignore labels
        """Fold a batch of joined pairs in (nothing, for a family that does not use labels)."""

    @abstractmethod
    def merge(self, other: Any) -> None:
        """Add another partition's state of the same window (the same family) to this one."""

    @property
    @abstractmethod
    def version(self) -> int:
        """How much input was folded in: grows with every fold that changes a row."""

    @abstractmethod
    def rows(self) -> dict[str, list[Row]]:
        """The rows that changed since the last call, by table, each with its ``version``
        and without the :data:`WINDOW_KEY` columns."""


@dataclass(frozen=True)
class Views:
    """What the views of a database depend on: its families and the settings it was
    migrated with (stored beside the tables, so a reader never re-creates them)."""

    db: str
    families: tuple[MetricFamily, ...]
    settings: Mapping[str, str]

    def prediction_counts(self) -> str:
        """SQL of (model, model_version, segment, window_start, predictions) partial rows of
        every family that counts predictions: the prediction count of every model's windows,
        whatever its task."""
        parts = [
            f"SELECT model, model_version, segment, window_start, partition, predictions "
            f"FROM {self.db}.{f.tables[0].name} FINAL"
            for f in self.families
            if f.counts_predictions
        ]
        return " UNION ALL ".join(parts)


class MetricFamily(ABC):
    """One kind of monitoring (see the module docstring). Subclasses set the class attributes
    and implement :meth:`accumulator`; configuration is constructor arguments only."""

    #: Stable name, e.g. "classification"; what ``family_windows`` names.
    name: ClassVar[str]
    #: The prediction tasks it serves; None: every prediction.
    tasks: ClassVar[frozenset[str] | None] = None
    #: The tasks whose joined pairs it folds (labels of a task no family folds are counted as
    #: ``labels_unsupported_task``).
    label_tasks: ClassVar[frozenset[str]] = frozenset()
    #: Whether its first table has a ``predictions`` column counting every prediction of the
    #: window (the quality families): activity views and data quality count on them.
    counts_predictions: ClassVar[bool] = False
    #: The tables its partial rows go to (the compute stage writes them).
    tables: ClassVar[tuple[Table, ...]] = ()
    #: The tables the sink derives from the partials (see :meth:`derivation`).
    derived_tables: ClassVar[tuple[Table, ...]] = ()
    #: Its published metrics (columns of its wide view, values of its long view's ``metric``).
    metrics: ClassVar[tuple[Metric, ...]] = ()

    @classmethod
    def configured(cls, settings: Settings) -> MetricFamily | None:
        """The family as ``settings`` configure it; None when they turn it off."""
        return cls()

    @abstractmethod
    def accumulator(self, counters: Counter[str]) -> Accumulator:
        """A new, empty window state; it counts in ``counters`` (its partition's) what it
        could not fold."""

    def serves(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def accepts_label(self, task: str, label: Any) -> bool:
        """Whether ``label`` is a label of a ``task`` prediction this family can fold."""
        return True

    def views(self, views: Views) -> list[str]:
        """CREATE VIEW statements over its tables."""
        return []

    def score(self, prediction: Prediction) -> float | None:
        """The value of this prediction its ``score`` drift detectors watch, if any."""
        return None

    def error(self, task: str, y_pred: Any, label: Any) -> float | None:
        """The value of this joined pair its ``error`` drift detectors watch, if any."""
        return None

    def derivation(self, settings: Settings) -> Derivation | None:
        """How the sink derives its :attr:`derived_tables`, if it has any."""
        return None


class Derivation(ABC):
    """Rows the sink derives, window by window, from the partial rows of all partitions
    stored in ClickHouse (drift against a reference needs a window whole). ``triggers`` are
    the tables whose new rows make their windows' derived rows stale. The sink's derive step
    (:mod:`pipeline.sink.derive`) reads a few window starts of one model at a time into a
    context shared by every family's derivation, so what they have in common (the windows'
    feature summaries and references) is read once."""

    triggers: ClassVar[tuple[str, ...]] = ()
    #: Tables whose new rows (each naming a model and model_version) make every stored
    #: window of that model version stale, e.g. a new reference profile.
    rederive_on: ClassVar[tuple[str, ...]] = ()

    def prepare(self, chunk: Any) -> None:  # noqa: B027 - most read nothing of their own
        """Read what this derivation needs of the chunk's windows (a ``Chunk``)."""

    @abstractmethod
    def rows(self, chunk: Any, segment: str, window_start: int) -> dict[str, list[Row]]:
        """Derived rows of one window of the chunk, by table (key columns included)."""


def finite(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None (a NULL in ClickHouse)."""
    return value if value is not None and math.isfinite(value) else None
