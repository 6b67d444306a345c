"""Kafka message values: one event per message, or an envelope of many, as orjson.

An envelope is ``{"schema_version": 1, "kind": "prediction", "count": 2, "events": [...]}``;
``count`` may be left out, and when present must equal the number of events (an envelope
assembled wrongly, a list cut short or joined with another's, is rejected whole). Decoding a
message never raises: it returns the valid events and one :class:`Rejected` per bad part, so
one bad event in an envelope does not cost the valid ones next to it.

>>> batch = decode_message(encode_envelope("label", [{"event_id": "a", "ts": 1, "label": 1},
...                                                  {"event_id": "b", "ts": 1}]), "label")
>>> [e.event_id for e in batch.events], [(r.index, r.reason) for r in batch.rejected]
(['a'], [(1, 'label: required field is missing')])
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from schemas.events import DECODERS, SCHEMA_VERSION, SchemaError

DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_576


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message or one event of an envelope that failed; ``index`` is -1 for the message."""

    index: int
    reason: str
    raw: bytes


@dataclass(slots=True)
class Decoded:
    """What one message held: the valid events, in order, and what was rejected."""

    events: list[Any] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def encode_envelope(kind: str, events: Iterable[Mapping[str, Any]]) -> bytes:
    """Pack event objects of one kind into one message value."""
    events = list(events)
    return orjson.dumps(
        {"schema_version": SCHEMA_VERSION, "kind": kind, "count": len(events), "events": events},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One event per message, as producers in other languages send it."""
    return orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_message(
    raw: bytes | None, kind: str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Decoded:
    """Decode and validate one message value of the given event kind (never raises)."""
    out = Decoded()
    if raw is None:
        out.rejected.append(Rejected(-1, "empty message (null value)", b""))
        return out
    if len(raw) > max_bytes:
        out.rejected.append(
            Rejected(-1, f"message of {len(raw)} bytes exceeds the limit of {max_bytes}", raw)
        )
        return out
    try:
        obj = _loads(raw)
    except ValueError as exc:
        out.rejected.append(Rejected(-1, f"not valid JSON: {exc}", raw))
        return out
    if not isinstance(obj, dict):
        out.rejected.append(Rejected(-1, f"expected a JSON object, got {type(obj).__name__}", raw))
        return out
    decode = DECODERS[kind]
    if "events" not in obj:
        try:
            out.events.append(decode(obj))
        except SchemaError as exc:
            out.rejected.append(Rejected(-1, str(exc), raw))
        return out
    reason = _envelope_problem(obj, kind)
    if reason:
        out.rejected.append(Rejected(-1, reason, raw))
        return out
    for i, item in enumerate(obj["events"]):
        try:
            if not isinstance(item, dict):
                raise SchemaError("event", f"expected a JSON object, got {type(item).__name__}")
            out.events.append(decode(item))
        except SchemaError as exc:
            out.rejected.append(Rejected(i, str(exc), _item_bytes(item)))
    return out


def _item_bytes(item: Any) -> bytes:
    """A rejected envelope item as JSON; orjson writes at most 254 levels of nesting."""
    try:
        return orjson.dumps(item)
    except TypeError:
        try:
            return json.dumps(item).encode()
        except (TypeError, ValueError, RecursionError):
            return repr(item).encode("utf-8", "backslashreplace")


def _loads(raw: bytes) -> Any:
    """orjson, and on failure the standard parser, which also reads the NaN and Infinity that
    many JSON encoders write, so such a value is rejected by the field that holds it."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            obj = json.loads(raw)
            # What orjson cannot write back (lone surrogates, integers past 64 bits) would
            # fail later, when rows are encoded: refuse it here.
            orjson.dumps(obj)
            return obj
        except (ValueError, UnicodeDecodeError, RecursionError, TypeError):
            raise ValueError(str(exc)) from None


def _envelope_problem(obj: Mapping[str, Any], kind: str) -> str | None:
    version = obj.get("schema_version")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        return f"envelope schema_version: unsupported {version!r} (this is {SCHEMA_VERSION})"
    if obj.get("kind") != kind:
        return f"envelope kind: {obj.get('kind')!r} on a {kind!r} topic"
    events = obj["events"]
    if not isinstance(events, list):
        return "envelope events: expected a list"
    count = obj.get("count", len(events))
    if isinstance(count, bool) or not isinstance(count, int | float) or count != len(events):
        return f"envelope count: says {count!r}, holds {len(events)} events"
    return None
