"""Tables of the pipeline itself: dead letters and self-metrics (``{db}``-qualified DDL)."""

from __future__ import annotations

DEAD_LETTER_RAW_BYTES = 65_536  # raw bytes kept per dead letter; raw_size has the full size


def ddl(db: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.dead_letters (
            source_topic String,
            source_partition UInt32,
            source_offset UInt64,
            event_index Int32,
            reason String,
            raw String,
            raw_size UInt64,
            received_at DateTime64(3, 'UTC'),
            inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree
        ORDER BY (source_topic, source_partition, source_offset, event_index)""",
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
        f"""CREATE OR REPLACE VIEW {db}.pipeline_stats AS
        SELECT stage, counter, sum(value) AS value
        FROM {db}.pipeline_counters FINAL
        GROUP BY stage, counter""",
    ]
