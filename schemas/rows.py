"""Result rows on the ``metrics`` topic: one message carries many rows of one table.

Alerting consumers read the same messages the sink writes to ClickHouse. Times are epoch
milliseconds; ``version`` grows with the input folded into a row, so the highest wins.

>>> decode_rows(encode_rows("quality_partials", [{"model": "m", "version": 3}], "fix1"))
RowBatch(table='quality_partials', rows=[{'model': 'm', 'version': 3}], result_set='fix1')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.events import SCHEMA_VERSION

#: Largest rows message the pipeline writes (a single larger row goes alone): well under
#: Kafka's default 1 MiB message limit.
MAX_ROWS_MESSAGE_BYTES = 512 * 1024
#: What the pipeline's producers batch per partition. Kafka clients default to 16 KiB: each
#: rows message was then a batch of its own, and a flush waited for one broker round trip per
#: message of a partition (seconds at a backlog, while live state piled up).
ROWS_BATCH_BYTES = 2 * MAX_ROWS_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class RowBatch:
    table: str
    rows: list[dict[str, Any]]
    result_set: str = ""  # "" for the live results; a name for a replay kept apart


def encode_rows(table: str, rows: Sequence[dict[str, Any]], result_set: str = "") -> bytes:
    message: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "rows",
        "table": table,
        "rows": list(rows),
    }
    if result_set:
        message["result_set"] = result_set
    return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)


def encode_bounded(
    table: str, rows: Sequence[dict[str, Any]], max_bytes: int, result_set: str = ""
) -> list[bytes]:
    """``rows`` in order as messages of at most ``max_bytes`` each (a single row larger than
    that is sent alone). Each row is encoded once and messages are filled in turn; each is
    what :func:`encode_rows` makes of its rows.

    >>> [len(m) < 120 for m in encode_bounded("t", [{"x": "y" * 40}] * 3, 120)]
    [True, True, True]
    """
    if not rows:
        return []
    empty = encode_rows(table, [], result_set)
    at = empty.index(b'"rows":[') + len(b'"rows":[')
    head, tail = empty[:at], empty[at:]  # around the rows, which go between "[" and "]"
    out: list[bytes] = []
    part: list[bytes] = []
    size = len(empty)
    for row in rows:
        value = orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS)
        if part and size + 1 + len(value) > max_bytes:
            out.append(head + b",".join(part) + tail)
            part, size = [], len(empty)
        size += len(value) + (1 if part else 0)
        part.append(value)
    out.append(head + b",".join(part) + tail)
    return out


def decode_rows(raw: bytes) -> RowBatch:
    """Decode a metrics message; raises ValueError when it is not one."""
    obj = orjson.loads(raw)
    if (
        not isinstance(obj, dict)
        or obj.get("kind") != "rows"
        or not isinstance(obj.get("rows"), list)
    ):
        raise ValueError("not a rows message")
    return RowBatch(str(obj["table"]), obj["rows"], str(obj.get("result_set", "")))
