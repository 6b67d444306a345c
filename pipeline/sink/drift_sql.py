"""Tables and views of feature drift, data quality, client activity and drift detectors
(``{db}``-qualified).

``feature_partials`` holds per-partition feature summaries of each window (mergeable by
summation); ``reference_profiles`` the same summaries of a reference data set. The sink's
derive step (:mod:`pipeline.sink.derive`) compares them and writes ``drift_rows`` and
``data_quality_rows``, and, from ``client_partials`` / ``client_feature_partials`` (the same
summaries per ``client_id``), ``client_activity_rows``; the compute stage writes
``drift_detections_rows``. Each ``*_rows``
table is read through the view of the same name without the suffix, which keeps only the
latest version of every row.
"""

from __future__ import annotations

import re

from pipeline.sink.tables import LARGE_ROWS

_WINDOW_KEY = """
            model String,
            model_version String,
            segment String,
            window_start DateTime64(3, 'UTC'),
            window_end DateTime64(3, 'UTC'),"""

_SUMMARY_COLUMNS = """
    feature String,
    present UInt64,
    numeric UInt64,
    nonfinite UInt64,
    text UInt64,
    sum Nullable(Float64),
    sum_sq Nullable(Float64),
    min Nullable(Float64),
    max Nullable(Float64),
    sketch Map(Int32, UInt64),
    categories Map(String, UInt64),
    values Array(Float64),"""


def _versioned(table: str, columns: str, order_by: str) -> str:
    """A ReplacingMergeTree table whose rows are replaced by higher ``version``s."""
    settings = LARGE_ROWS if re.search(r"\b(Array|Map)\(", columns) else ""
    return f"""CREATE TABLE IF NOT EXISTS {table} ({columns}
            version UInt64,
            inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(version)
        ORDER BY ({order_by})
        {settings}"""


def ddl(db: str) -> list[str]:
    return [
        _versioned(
            f"{db}.feature_partials",
            f"""{_WINDOW_KEY}
            partition UInt32,{_SUMMARY_COLUMNS}""",
            "model, model_version, segment, window_start, feature, partition",
        ),
        _versioned(
            f"{db}.reference_profiles",
            f"""
            model String,
            model_version String,
            name String,{_SUMMARY_COLUMNS}
            rows UInt64,""",
            "model, model_version, name, feature",
        ),
        _versioned(
            f"{db}.drift_rows",
            f"""{_WINDOW_KEY}
            feature String,
            reference String,
            method String,
            statistic Nullable(Float64),
            p_value Nullable(Float64),
            p_adjusted Nullable(Float64),
            threshold Nullable(Float64),
            drifted UInt8,
            window_count UInt64,
            reference_count UInt64,""",
            "model, model_version, segment, window_start, feature, method",
        ),
        _versioned(
            f"{db}.data_quality_rows",
            f"""{_WINDOW_KEY}
            feature String,
            events UInt64,
            present UInt64,
            missing_rate Float64,
            nonfinite UInt64,
            type_mismatch UInt64,
            out_of_range_rate Nullable(Float64),
            unseen_categories UInt64,""",
            "model, model_version, segment, window_start, feature",
        ),
        _versioned(
            f"{db}.client_partials",
            f"""{_WINDOW_KEY}
            partition UInt32,
            client_id String,
            requests UInt64,""",
            "model, model_version, segment, window_start, client_id, partition",
        ),
        _versioned(
            f"{db}.client_feature_partials",
            f"""{_WINDOW_KEY}
            partition UInt32,
            client_id String,{_SUMMARY_COLUMNS}""",
            "model, model_version, segment, window_start, client_id, feature, partition",
        ),
        _versioned(
            f"{db}.client_activity_rows",
            f"""{_WINDOW_KEY}
            client_id String,
            requests UInt64,
            window_requests UInt64,
            traffic_share Nullable(Float64),
            previous_requests Nullable(Float64),
            outside_reference_share Nullable(Float64),
            outside_reference_feature String,
            outside_reference Map(String, Float64),""",
            "model, model_version, segment, window_start, client_id",
        ),
        f"""CREATE TABLE IF NOT EXISTS {db}.drift_detections_rows (
            model String,
            model_version String,
            partition UInt32,
            stream String,
            detector String,
            position UInt64,
            ts DateTime64(3, 'UTC'),
            event_id String,
            params String,
            inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree
        ORDER BY (model, model_version, stream, detector, partition, position)""",
        *(
            f"CREATE OR REPLACE VIEW {db}.{name} AS SELECT * FROM {db}.{name}_rows FINAL"
            for name in ("drift", "data_quality", "client_activity", "drift_detections")
        ),
        # One row per window: how many features drifted (by the decision rule), the largest
        # PSI and the feature that has it.
        f"""CREATE OR REPLACE VIEW {db}.drift_windows AS
        SELECT model, model_version, segment, window_start, window_end,
               uniqExactIf(feature, method = 'decision' AND drifted = 1) AS features_drifted,
               uniqExact(feature) AS features,
               maxIf(statistic, method = 'psi') AS max_psi,
               argMaxIf(feature, statistic, method = 'psi') AS most_drifted
        FROM {db}.drift
        GROUP BY model, model_version, segment, window_start, window_end""",
    ]
