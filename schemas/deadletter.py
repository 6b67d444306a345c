"""Dead letters: what the pipeline could not use, with where it came from and why.

A dead letter travels on the ``deadletter`` topic as the rejected bytes (the first
:data:`RAW_BYTES` of them) with its description in the message headers, so an outside
consumer reads it without knowing modelmon's row format; the sink turns it into a
``dead_letters_rows`` row. Everything in it is a function of the input message (its
``received_at`` is the Kafka timestamp of the message that carried it), so a replay
re-creates the very same dead letters.

>>> d = DeadLetter("modelmon.labels", 2, 17, 0, "label.missing", "label: required field is "
...                "missing", b'{"event_id": "a"}', 17, 1700000000000)
>>> DeadLetter.from_message(d.value, d.headers()) == d
True
>>> d.row()["reason"], d.row()["received_at"]
('label.missing', 1700000000000)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

#: Raw bytes kept per dead letter; ``raw_size`` has the full size.
RAW_BYTES: Final = 65_536

#: Reasons the compute stage gives events that decoded but cannot be used (the decoders'
#: own reasons are in :mod:`schemas.codec` and :class:`schemas.events.SchemaError`).
FUTURE_TIMESTAMP: Final = "future_timestamp"
EVENT_ID_CONFLICT: Final = "event_id_conflict"
LABEL_MODEL_MISMATCH: Final = "label_model_mismatch"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected message (``event_index`` -1) or event of an envelope."""

    source_topic: str
    source_partition: int
    source_offset: int
    event_index: int
    reason: str
    detail: str
    raw: bytes
    raw_size: int
    received_at: int  # epoch ms: the Kafka timestamp of the source message (0 if none)
    result_set: str = ""  # "" for the live results; a replay's result set otherwise

    @property
    def value(self) -> bytes:
        """The message value: the rejected bytes, cut at :data:`RAW_BYTES`."""
        return self.raw[:RAW_BYTES]

    def headers(self) -> dict[str, bytes]:
        """Everything but the bytes, as message headers."""
        fields = asdict(self)
        del fields["raw"]
        if not self.result_set:
            del fields["result_set"]
        return {name: str(value).encode() for name, value in fields.items()}

    @classmethod
    def from_message(
        cls, value: bytes | None, headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]]
    ) -> DeadLetter:
        """The dead letter a ``deadletter`` message carries (missing headers get defaults)."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        h = {k: v.decode("utf-8", "replace") for k, v in items}
        raw = value or b""
        return cls(
            source_topic=h.get("source_topic", ""),
            source_partition=int(h.get("source_partition", 0)),
            source_offset=int(h.get("source_offset", 0)),
            event_index=int(h.get("event_index", -1)),
            reason=h.get("reason", ""),
            detail=h.get("detail", ""),
            raw=raw,
            raw_size=int(h.get("raw_size", len(raw))),
            received_at=int(h.get("received_at", 0)),
            result_set=h.get("result_set", ""),
        )

    def row(self) -> dict[str, Any]:
        """The ``dead_letters_rows`` row (the raw bytes as they were kept)."""
        row = asdict(self)
        row["raw"] = self.value
        del row["result_set"]
        return row
