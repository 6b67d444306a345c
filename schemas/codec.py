"""Kafka message values: one event per message, or an envelope of many, as orjson.

An envelope is ``{"schema_version": 1, "kind": "prediction", "count": 2, "events": [...]}``;
``count`` may be left out, and when present must equal the number of events (an envelope
assembled wrongly, a list cut short or joined with another's, is rejected whole). Decoding a
message never raises: it returns the valid events and one :class:`Rejected` per bad part, so
one bad event in an envelope does not cost the valid ones next to it.

Every rejection has a stable ``reason`` code (a message-level one such as ``invalid_json``,
or ``<field>.<problem>`` for an event, see :class:`~schemas.events.SchemaError`) and a
``detail`` that names the offending value.

>>> batch = decode_message(encode_envelope("label", [{"event_id": "a", "ts": 1, "label": 1},
...                                                  {"event_id": "b", "ts": 1}]), "label")
>>> [e.event_id for e in batch.events], [(r.index, r.reason) for r in batch.rejected]
(['a'], [(1, 'label.missing')])
>>> batch.rejected[0].detail
'label: required field is missing'
>>> batch.raw_event(0)
b'{"event_id":"a","ts":1,"label":1}'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from schemas.events import DECODERS, SCHEMA_VERSION, SchemaError

DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_576


#: The reasons a whole message is rejected (an event's are ``<field>.<problem>``).
MESSAGE_REASONS: Final = (
    "null_message",
    "message_too_large",
    "invalid_json",
    "not_an_object",
    "envelope_schema_version",
    "envelope_kind",
    "envelope_events",
    "envelope_count",
)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message or one event of an envelope that failed; ``index`` is -1 for the message.
    ``reason`` is a stable code, ``detail`` the message a person reads."""

    index: int
    reason: str
    detail: str
    raw: bytes


@dataclass(slots=True)
class Decoded:
    """What one message held: the valid events, in order, and what was rejected.

    ``source`` is the parsed message (for :meth:`raw_event`), ``value`` its bytes.
    """

    events: list[Any] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    source: Any = None
    value: bytes = b""

    @property
    def is_envelope(self) -> bool:
        return isinstance(self.source, dict) and "events" in self.source

    def index_of(self, i: int) -> int:
        """The index of ``events[i]`` in its envelope; -1 for a single-event message."""
        if not self.is_envelope:
            return -1
        for rejected in sorted(r.index for r in self.rejected):
            if rejected <= i:  # valid events are the items between the rejected ones
                i += 1
        return i

    def raw_event(self, i: int) -> bytes:
        """The JSON of ``events[i]`` as the producer sent it: the whole message for a single
        event, else its item of the envelope (for re-sending or dead-lettering it)."""
        if not self.is_envelope:
            return self.value
        return _item_bytes(self.source["events"][self.index_of(i)])


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
        out.rejected.append(Rejected(-1, "null_message", "empty message (null value)", b""))
        return out
    out.value = raw
    if len(raw) > max_bytes:
        detail = f"message of {len(raw)} bytes exceeds the limit of {max_bytes}"
        out.rejected.append(Rejected(-1, "message_too_large", detail, raw))
        return out
    try:
        obj = _loads(raw)
    except ValueError as exc:
        out.rejected.append(Rejected(-1, "invalid_json", f"not valid JSON: {exc}", raw))
        return out
    if not isinstance(obj, dict):
        detail = f"expected a JSON object, got {type(obj).__name__}"
        out.rejected.append(Rejected(-1, "not_an_object", detail, raw))
        return out
    out.source = obj
    decode = DECODERS[kind]
    if "events" not in obj:
        try:
            out.events.append(decode(obj))
        except SchemaError as exc:
            out.rejected.append(Rejected(-1, exc.reason, str(exc), raw))
        return out
    problem = _envelope_problem(obj, kind)
    if problem:
        out.rejected.append(Rejected(-1, *problem, raw))
        return out
    for i, item in enumerate(obj["events"]):
        try:
            if not isinstance(item, dict):
                raise SchemaError(
                    "event", f"expected a JSON object, got {type(item).__name__}", "wrong_type"
                )
            out.events.append(decode(item))
        except SchemaError as exc:
            out.rejected.append(Rejected(i, exc.reason, str(exc), _item_bytes(item)))
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


def _envelope_problem(obj: Mapping[str, Any], kind: str) -> tuple[str, str] | None:
    """(reason, detail) of what makes an envelope unusable as a whole, if anything."""
    version = obj.get("schema_version")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        detail = f"envelope schema_version: unsupported {version!r} (this is {SCHEMA_VERSION})"
        return "envelope_schema_version", detail
    if obj.get("kind") != kind:
        return "envelope_kind", f"envelope kind: {obj.get('kind')!r} on a {kind!r} topic"
    events = obj["events"]
    if not isinstance(events, list):
        return "envelope_events", "envelope events: expected a list"
    count = obj.get("count", len(events))
    if isinstance(count, bool) or not isinstance(count, int | float) or count != len(events):
        return "envelope_count", f"envelope count: says {count!r}, holds {len(events)} events"
    return None
