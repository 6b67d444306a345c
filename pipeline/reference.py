"""Reference profiles: a training (or any trusted) data set summarised like a window.

The summary is made by the same :class:`~pipeline.estimators.features.FeatureWindow` the
pipeline uses for windows, so a window and its reference compare bucket by bucket. A profile
goes to the ``metrics`` topic like any result row; the sink stores it in
``reference_profiles``, so it reaches an embedded ClickHouse that only the worker may open.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from pipeline.estimators.features import FeatureWindow
from schemas.rows import encode_rows
from schemas.topics import Topics

ROWS_PER_BATCH = 10_000


def profile_rows(
    records: Iterable[Mapping[str, Any]], model: str, model_version: str = "", name: str = "default"
) -> list[dict[str, Any]]:
    """Summarise records (feature name -> value) into ``reference_profiles`` rows.

    >>> rows = profile_rows([{"age": 30, "city": "Oslo"}, {"age": 40, "city": "Rome"}], "m")
    >>> sorted((r["feature"], r["present"], r["rows"]) for r in rows)
    [('age', 2, 2), ('city', 2, 2)]
    """
    window = FeatureWindow()
    batch: list[dict[str, Any]] = []
    count = 0
    for record in records:
        batch.append({k: _value(v) for k, v in record.items()})
        count += 1
        if len(batch) == ROWS_PER_BATCH:
            window.update(batch)
            batch = []
    window.update(batch)
    version = time.time_ns() // 1_000_000
    key = {"model": model, "model_version": model_version, "name": name}
    return [key | row | {"rows": count, "version": version} for row in window.rows()]


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Records of a CSV or Parquet file (Parquet needs pyarrow)."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        frame = pd.read_csv(path)
    else:
        raise ValueError(f"{path}: expected a .csv or .parquet file")
    return frame.to_dict("records")


async def publish(
    rows: list[dict[str, Any]],
    bootstrap_servers: str,
    topic_prefix: str = "modelmon.",
    kafka_config: Mapping[str, Any] | None = None,
) -> None:
    """Send profile rows to the metrics topic and wait until the broker has them."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        enable_idempotence=False,
        acks="all",
        max_request_size=16_000_000,
        **dict(kafka_config or {}),
    )
    await producer.start()
    try:
        metrics = Topics(topic_prefix).metrics
        for i in range(0, len(rows), 200):
            await producer.send_and_wait(
                metrics, encode_rows("reference_profiles", rows[i : i + 200])
            )
    finally:
        await producer.stop()


def _value(value: Any) -> Any:
    """pandas gives NaN for empty cells: an empty cell is a missing value, not a number."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, list | tuple):  # a vector feature, as the pipeline decodes it
        return np.asarray(value, dtype=np.float64)
    return value


async def upload(
    data: Any,
    bootstrap_servers: str,
    *,
    model: str,
    model_version: str = "",
    name: str = "default",
    topic_prefix: str = "modelmon.",
    kafka_config: Mapping[str, Any] | None = None,
) -> int:
    """Profile a pandas DataFrame or a CSV/Parquet file and publish it; returns the number of
    features profiled. A newer upload under the same name replaces the older one."""
    records = read_table(data) if isinstance(data, str | Path) else data.to_dict("records")
    rows = profile_rows(records, model, model_version, name)
    await publish(rows, bootstrap_servers, topic_prefix, kafka_config)
    return len(rows)
