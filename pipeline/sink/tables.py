"""Tables of the pipeline itself: the settings the views were created with, dead letters,
self-metrics and per-model activity (``{db}``-qualified DDL); and the settings every result
table with large rows is created with."""

from __future__ import annotations

from collections.abc import Mapping

#: Settings of the tables whose rows hold arrays or maps (kilobytes a row). A merge reads its
#: parts a granule and a block at a time, and at the defaults (8192 rows or 10 MiB, and 1 MiB
#: compression blocks) it took about as much memory as the parts it merged: 243-274 MiB for
#: six parts of 50 000 feature rows (216 MiB), against 21-53 MiB with these. A long-running
#: sink merges ever larger parts.
LARGE_ROWS = (
    "SETTINGS index_granularity = 256, merge_max_block_size = 256, max_compress_block_size = 262144"
)


#: Settings (name -> value as text) the worker migrated with. Views that depend on settings
#: are created from them, by the worker's migration only: a reader, whose settings may differ,
#: never touches them, and SQL can see what they were made with.
SETTINGS_TABLE = "modelmon_settings"


def settings_ddl(db: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {db}.{SETTINGS_TABLE} (
        name String,
        value String,
        stored_at DateTime64(3, 'UTC') DEFAULT now64(3)
    ) ENGINE = ReplacingMergeTree(stored_at)
    ORDER BY name"""


def view_settings(window_seconds: int) -> dict[str, str]:
    """The settings the views depend on, as :data:`SETTINGS_TABLE` stores them.

    >>> view_settings(86400)
    {'window_seconds': '86400'}
    """
    return {"window_seconds": str(window_seconds)}


def ddl(db: str, stored: Mapping[str, str]) -> list[str]:
    """The pipeline's tables, and its views made with the ``stored`` :func:`view_settings`."""
    window_ms = int(stored["window_seconds"]) * 1000
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.dead_letters_rows (
            source_topic String,
            source_partition UInt32,
            source_offset UInt64,
            event_index Int32,
            reason String,
            detail String,
            raw String,
            raw_size UInt64,
            received_at DateTime64(3, 'UTC'),
            inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree
        ORDER BY (source_topic, source_partition, source_offset, event_index)""",
        # Databases created before reasons were codes: the detail had been in the reason.
        f"ALTER TABLE {db}.dead_letters_rows ADD COLUMN IF NOT EXISTS detail String AFTER reason",
        f"""CREATE TABLE IF NOT EXISTS {db}.pipeline_counters (
            stage String,
            run_id String,
            partition UInt32,
            counter String,
            value UInt64,
            version UInt64,
            inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY (stage, run_id, partition, counter)""",
        f"CREATE OR REPLACE VIEW {db}.dead_letters AS SELECT * FROM {db}.dead_letters_rows FINAL",
        # Schema violations over time: dead letters per input topic and window of arrival.
        f"""CREATE OR REPLACE VIEW {db}.schema_violations AS
        SELECT source_topic,
               toStartOfInterval(received_at, toIntervalMillisecond({window_ms})) AS window_start,
               count() AS dead_letters, uniqExact(reason) AS reasons, any(reason) AS example
        FROM {db}.dead_letters_rows FINAL
        GROUP BY source_topic, window_start""",
        # A model whose feed stops still has a row per window (0 predictions), not a gap.
        f"""CREATE OR REPLACE VIEW {db}.model_activity AS
        SELECT model, model_version, window_start, sum(predictions) AS predictions
        FROM {db}.quality_partials FINAL
        GROUP BY model, model_version, window_start
        ORDER BY model, model_version, window_start
            WITH FILL STEP toIntervalMillisecond({window_ms})""",
        f"""CREATE OR REPLACE VIEW {db}.pipeline_stats AS
        SELECT stage, counter, sum(value) AS value
        FROM {db}.pipeline_counters FINAL
        GROUP BY stage, counter""",
    ]
