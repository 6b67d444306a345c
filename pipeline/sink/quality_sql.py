"""ClickHouse DDL of classification quality: partial tables and the views that merge them.

Writers insert one row per (window key, source partition) into ``quality_partials`` and one
per (window key, source partition, class) into ``quality_class_partials``, re-emitting them
with a growing ``version``; ``FINAL`` keeps the latest row per partition and the views sum
the partitions. Every metric formula lives here, once (``docs/metrics.md`` explains them).
"""

from __future__ import annotations

from pipeline.estimators.registry import CLASSIFICATION, names
from pipeline.sink.tables import LARGE_ROWS

__all__ = ["METRICS", "ddl"]

#: The long view's ``metric`` values, each a column of ``quality_windows``.
METRICS: tuple[str, ...] = (
    "predictions",
    "labelled",
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "log_loss",
    "roc_auc",
)

_KEY = (
    "model String, model_version String, segment String, "
    "window_start DateTime64(3, 'UTC'), window_end DateTime64(3, 'UTC'), partition UInt32"
)
_WINDOW = "model, model_version, segment, window_start"


def ddl(db: str) -> list[str]:
    """CREATE statements for database ``db`` (an identifier the caller has validated)."""
    if set(METRICS) != set(names(CLASSIFICATION)):
        raise RuntimeError("quality_sql.METRICS and the metric registry disagree")
    long_rows = ",\n        ".join(f"('{m}', CAST({m} AS Nullable(Float64)))" for m in METRICS)
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.quality_partials (
    {_KEY},
    predictions UInt64, labelled UInt64, correct UInt64,
    log_loss_sum Float64, log_loss_count UInt64,
    version UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(version)
ORDER BY ({_WINDOW}, partition)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.quality_class_partials (
    {_KEY},
    class String, tp UInt64, fp UInt64, fn UInt64,
    auc_pos Map(UInt32, UInt64), auc_neg Map(UInt32, UInt64),
    version UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(version)
ORDER BY ({_WINDOW}, partition, class)
{LARGE_ROWS}""",
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
