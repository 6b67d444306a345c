"""The result database: the pipeline's own tables (dead letters, self-metrics, the settings
the views were made with) and views, and every metric family's tables and views, declared
once; migrations create what is missing, from the registry.

The views that depend on settings (the steps of activity windows) are made from the settings
the worker migrated with, stored in :data:`SETTINGS`: a reader, whose settings may differ,
never touches them, and SQL can see what they were made with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.detection import DETECTIONS
from pipeline.estimators.family import (
    INSERTED_AT,
    TIME,
    VERSION,
    Column,
    MetricFamily,
    Table,
    Views,
)
from pipeline.estimators.registry import families
from pipeline.settings import Settings
from pipeline.windows import WindowSpec

DEAD_LETTERS = Table(
    "dead_letters_rows",
    (
        Column("source_topic", "String"),
        Column("source_partition", "UInt32"),
        Column("source_offset", "UInt64"),
        Column("event_index", "Int32"),
        Column("reason", "String"),
        Column("detail", "String"),
        Column("raw", "String"),
        Column("raw_size", "UInt64"),
        Column("received_at", TIME),
        INSERTED_AT,
    ),
    ("source_topic", "source_partition", "source_offset", "event_index"),
    engine="ReplacingMergeTree",
)
COUNTERS = Table(
    "pipeline_counters",
    (
        Column("stage", "String"),
        Column("run_id", "String"),
        Column("partition", "UInt32"),
        Column("counter", "String"),
        Column("value", "UInt64"),
        VERSION,
        INSERTED_AT,
    ),
    ("stage", "run_id", "partition", "counter"),
)
#: Settings (name -> value as text) the worker migrated with.
SETTINGS = Table(
    "modelmon_settings",
    (Column("name", "String"), Column("value", "String"), Column("stored_at", TIME, "now64(3)")),
    ("name",),
    engine="ReplacingMergeTree(stored_at)",
)
PIPELINE_TABLES = (SETTINGS, DEAD_LETTERS, COUNTERS, DETECTIONS)


def view_settings(settings: Settings) -> dict[str, str]:
    """The settings the views depend on, as :data:`SETTINGS` stores them.

    >>> view_settings(Settings(window="day", window_timezone="Europe/Berlin"))
    {'window': 'day Europe/Berlin'}
    """
    return {"window": settings.window_spec.describe()}


@dataclass(frozen=True)
class Schema:
    """The tables and views of a result database, for these families."""

    families: tuple[MetricFamily, ...]

    @classmethod
    def of(cls, settings: Settings) -> Schema:
        return cls(families(settings))

    @property
    def tables(self) -> tuple[Table, ...]:
        family_tables = (t for f in self.families for t in (*f.tables, *f.derived_tables))
        return (*PIPELINE_TABLES, *family_tables)

    def table(self, name: str) -> Table:
        """The declaration of a table (``KeyError`` if there is none)."""
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"no table {name!r}")

    def ddl(self, db: str, stored: Mapping[str, str]) -> list[str]:
        """CREATE statements of every table and view of database ``db`` (an identifier the
        caller has validated), the views made with the ``stored`` :func:`view_settings`."""
        views = Views(db, self.families, stored)
        return [
            *(s for t in self.tables for s in t.ddl(db)),
            *(s for f in self.families for s in f.views(views)),
            *_pipeline_views(views),
        ]


def _pipeline_views(views: Views) -> Sequence[str]:
    db = views.db
    window = WindowSpec.parse(views.settings["window"])
    return [
        f"CREATE OR REPLACE VIEW {db}.dead_letters AS SELECT * FROM {db}.dead_letters_rows FINAL",
        # Schema violations over time: dead letters per input topic, reason and window of
        # arrival.
        f"""CREATE OR REPLACE VIEW {db}.schema_violations AS
        SELECT source_topic, reason, {_window_of("received_at", window)} AS window_start,
               count() AS dead_letters, any(detail) AS example
        FROM {db}.dead_letters_rows FINAL
        GROUP BY source_topic, reason, window_start""",
        # A model whose feed stops still has a row per window (0 predictions), not a gap.
        _activity(views, window),
        f"""CREATE OR REPLACE VIEW {db}.pipeline_stats AS
        SELECT stage, counter, sum(value) AS value
        FROM {db}.pipeline_counters FINAL
        GROUP BY stage, counter""",
        f"CREATE OR REPLACE VIEW {db}.drift_detections AS "
        f"SELECT * FROM {db}.drift_detections_rows FINAL",
    ]


_UNITS = {"hour": "Hour", "day": "Day", "week": "Week", "month": "Month"}


def _window_of(column: str, window: WindowSpec) -> str:
    """SQL of the start of the window (as a UTC DateTime64) that holds ``column``."""
    if window.size_ms is not None:
        return f"toStartOfInterval({column}, toIntervalMillisecond({window.size_ms}))"
    local = f"toTimeZone({column}, '{window.tz}')"
    start = {
        "hour": f"toStartOfHour({local})",
        "day": f"toStartOfDay({local})",
        "week": f"toMonday({local})",
        "month": f"toStartOfMonth({local})",
    }[window.unit]
    return f"toTimeZone(toDateTime64({start}, 3, '{window.tz}'), 'UTC')"


def _activity(views: Views, window: WindowSpec) -> str:
    """Predictions per model and window, windows with none filled in (in the zone's calendar
    for calendar windows: its days are not all 24 hours long)."""
    counts = views.prediction_counts()
    if window.size_ms is not None:
        return f"""CREATE OR REPLACE VIEW {views.db}.model_activity AS
        SELECT model, model_version, window_start, sum(predictions) AS predictions
        FROM ({counts})
        GROUP BY model, model_version, window_start
        ORDER BY model, model_version, window_start
            WITH FILL STEP toIntervalMillisecond({window.size_ms})"""
    return f"""CREATE OR REPLACE VIEW {views.db}.model_activity AS
        SELECT model, model_version, toTimeZone(local_start, 'UTC') AS window_start, predictions
        FROM (
            SELECT model, model_version, toTimeZone(window_start, '{window.tz}') AS local_start,
                   sum(predictions) AS predictions
            FROM ({counts})
            GROUP BY model, model_version, local_start
            ORDER BY model, model_version, local_start
                WITH FILL STEP toInterval{_UNITS[window.unit]}(1)
        )"""
