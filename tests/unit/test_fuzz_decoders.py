"""Fuzzing :func:`schemas.codec.decode_message` for every event kind.

Whatever the bytes, decoding returns (never raises); every rejection has a reason; an
envelope accounts for each of its items exactly once (a valid event or a rejection with that
item's index) unless the whole message is rejected; and valid events survive
``encode_envelope`` / ``encode_event`` unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schemas.codec import MESSAGE_REASONS, Decoded, decode_message, encode_envelope, encode_event
from schemas.events import (
    DECODERS,
    INTERACTION_KINDS,
    MAX_CLASSES,
    MAX_EPOCH_SECONDS,
    MAX_FEATURES,
    MAX_ID_LEN,
    MAX_NAME_LEN,
    MAX_VECTOR_LEN,
    PROBLEMS,
    SCHEMA_VERSION,
    TASKS,
    Interaction,
    Label,
    Prediction,
    TrainingStep,
)

KINDS = tuple(DECODERS)
EVENT_TYPES = {
    "prediction": Prediction,
    "label": Label,
    "interaction": Interaction,
    "training": TrainingStep,
}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- checking one decoded message -------------------------------------------------------------


def decode(raw: bytes | None, kind: str, max_bytes: int = 1_048_576) -> Decoded:
    """decode_message, failing the test (not erroring) on anything that escapes it."""
    try:
        return decode_message(raw, kind, max_bytes)
    except Exception as exc:  # the contract: never raises
        pytest.fail(f"decode_message raised {type(exc).__name__}: {exc}")


def check(decoded: Decoded, kind: str, items: int | None = None) -> None:
    """The properties of any decoded message; ``items`` is the envelope's item count."""
    assert all(isinstance(e, EVENT_TYPES[kind]) for e in decoded.events)
    for r in decoded.rejected:
        # a stable code, whatever the input held; the detail names it
        assert r.reason in MESSAGE_REASONS or (
            r.reason.partition(".")[2] in PROBLEMS and r.index >= -1
        ), r
        assert isinstance(r.detail, str) and r.detail.strip(), r
        assert isinstance(r.raw, bytes)
    whole = [r for r in decoded.rejected if r.index == -1]
    if whole:  # the message as a whole: one rejection and nothing else
        assert len(decoded.rejected) == 1 and not decoded.events, decoded
        return
    indices = [r.index for r in decoded.rejected]
    assert indices == sorted(set(indices))
    if items is None:  # unknown shape: one event, or an envelope of some items
        assert all(i >= 0 for i in indices)
        return
    assert len(decoded.events) + len(decoded.rejected) == items
    assert all(0 <= i < items for i in indices)


# --- arbitrary JSON ---------------------------------------------------------------------------

BOUNDARY_NUMBERS = [
    0,
    -1,
    1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    10**308,  # an integer orjson refuses, read by the fallback parser
    -(10**308),
    1e308,
    -1e308,
    1e-308,
    5e-324,
    -0.0,
    0.5,
    float(MAX_EPOCH_SECONDS),
    MAX_EPOCH_SECONDS - 1,
]
BOUNDARY_STRINGS = [
    "",
    " ",
    "x" * MAX_NAME_LEN,
    "x" * (MAX_NAME_LEN + 1),
    "y" * MAX_ID_LEN,
    "y" * (MAX_ID_LEN + 1),
    "z" * 100_000,
    "nan",
    "NaN",
    "-inf",
    "Infinity",
    "2023-11-14T22:13:20+00:00",
    "2023-11-14T22:13:20",
    "1969-12-31T23:59:59+00:00",
    "3000-01-01T00:00:00+00:00",
    "\x00",
    "é漢字🙂\u200b\ufeff",
    "a=b,c",
]


def _in_64_bits(x: Any) -> bool:
    return not isinstance(x, int) or -(2**63) <= x < 2**64


FIELD_NAMES = sorted(
    {
        "event_id",
        "model",
        "model_version",
        "ts",
        "task",
        "prediction",
        "score",
        "probabilities",
        "features",
        "segment",
        "latency_ms",
        "client_id",
        "label",
        "kind",
        "variant",
        "value",
        "prediction_id",
        "run_id",
        "step",
        "metrics",
        "epoch",
        "schema_version",
        "events",
    }
)

# Integers beyond 64 bits inside envelope items hit a known escape (pinned at the end), so
# they are fuzzed in single events only (``wide_leaves``).
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([n for n in BOUNDARY_NUMBERS if _in_64_bits(n)]),
    st.text(max_size=40),
    st.sampled_from(BOUNDARY_STRINGS),
)
wide_leaves = leaves | st.integers(-(2**80), 2**80) | st.sampled_from(BOUNDARY_NUMBERS)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12))


def _json(base: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        base,
        lambda children: (
            st.lists(children, max_size=6) | st.dictionaries(keys, children, max_size=6)
        ),
        max_leaves=40,
    )


json_values = _json(leaves)
wide_json_values = _json(wide_leaves)


@st.composite
def deeply_nested(draw: st.DrawFn, max_depth: int) -> Any:
    """A value nested ``depth`` lists/objects deep around a leaf."""
    value = draw(leaves)
    for _ in range(draw(st.integers(0, max_depth))):
        value = [value] if draw(st.booleans()) else {draw(keys): value}
    return value


@st.composite
def json_bytes(draw: st.DrawFn, value: st.SearchStrategy[Any]) -> bytes:
    """``value`` written by the standard encoder (NaN/Infinity tokens included) or orjson."""
    obj = draw(value)
    return dumps(obj, draw(st.sampled_from(["json", "json-utf8", "orjson"])))


def dumps(obj: Any, writer: str) -> bytes:
    """JSON bytes by the named writer; orjson falls back to the standard encoder for what it
    cannot write (integers beyond 64 bits, NaN written as NaN rather than null)."""
    if writer == "orjson":
        try:
            return orjson.dumps(obj)
        except TypeError:
            pass
    return json.dumps(obj, ensure_ascii=writer != "json-utf8").encode()


# --- valid events -----------------------------------------------------------------------------

names = st.text(min_size=1, max_size=MAX_NAME_LEN)
ids = st.text(min_size=1, max_size=MAX_ID_LEN)
finite = st.floats(allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0.0, max_value=1.0)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
class_labels = st.one_of(
    st.text(min_size=1, max_size=MAX_NAME_LEN), st.integers(-(2**63), 2**63 - 1), st.booleans()
)
seconds = st.floats(min_value=0.0, max_value=MAX_EPOCH_SECONDS - 1.0)
zones = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def timestamps(draw: st.DrawFn) -> float | int | str:
    t = draw(st.one_of(seconds, st.integers(0, MAX_EPOCH_SECONDS - 1)))
    if draw(st.booleans()):
        return t
    when = datetime.fromtimestamp(float(t), UTC).astimezone(draw(zones))
    return when.isoformat()


tag_text = st.text(min_size=1, max_size=20).filter(lambda s: "=" not in s and "," not in s)
segments = st.one_of(
    st.none(),
    st.text(max_size=MAX_NAME_LEN),
    st.dictionaries(tag_text, st.one_of(tag_text, int64), max_size=4),
)
features = st.dictionaries(
    names,
    st.one_of(
        st.none(),
        st.text(max_size=50),
        finite,
        int64,
        st.lists(finite, max_size=20),
        st.lists(int64, max_size=20),
    ),
    max_size=8,
)


def _with_optional(draw: st.DrawFn, event: dict[str, Any], **optional: Any) -> dict[str, Any]:
    for name, strategy in optional.items():
        if draw(st.booleans()):
            event[name] = draw(strategy)
    return event


@st.composite
def predictions(draw: st.DrawFn) -> dict[str, Any]:
    task = draw(st.sampled_from(TASKS))
    if task == "binary":
        target: Any = draw(st.sampled_from([0, 1, True, False, "0", "1", 0.0, 1.0]))
    elif task == "multiclass":
        target = draw(class_labels)
    elif task == "regression":
        target = draw(finite)
    else:
        target = draw(st.lists(class_labels, min_size=1, max_size=10))
    event = {
        "event_id": draw(ids),
        "model": draw(names),
        "ts": draw(timestamps()),
        "task": task,
        "prediction": target,
    }
    return _with_optional(
        draw,
        event,
        model_version=st.text(max_size=MAX_NAME_LEN),
        score=unit if task == "binary" else finite,
        probabilities=st.dictionaries(names, unit, min_size=1, max_size=10),
        features=features,
        segment=segments,
        latency_ms=st.floats(min_value=0.0, allow_infinity=False),
        client_id=ids,
        schema_version=st.just(SCHEMA_VERSION),
    )


@st.composite
def labels(draw: st.DrawFn) -> dict[str, Any]:
    label = draw(st.one_of(class_labels, finite, st.lists(class_labels, min_size=1, max_size=10)))
    event = {"event_id": draw(ids), "ts": draw(timestamps()), "label": label}
    return _with_optional(draw, event, model=names)


@st.composite
def interactions(draw: st.DrawFn) -> dict[str, Any]:
    event = {
        "event_id": draw(ids),
        "model": draw(names),
        "ts": draw(timestamps()),
        "kind": draw(st.sampled_from(INTERACTION_KINDS)),
    }
    return _with_optional(
        draw,
        event,
        variant=st.text(max_size=MAX_NAME_LEN),
        value=st.one_of(finite, int64),
        prediction_id=ids,
        segment=segments,
    )


@st.composite
def training_steps(draw: st.DrawFn) -> dict[str, Any]:
    metric = st.one_of(finite, int64, st.sampled_from(["nan", "inf", "-inf", "Infinity"]))
    event = {
        "run_id": draw(ids),
        "model": draw(names),
        "ts": draw(timestamps()),
        "step": draw(int64),
        "metrics": draw(st.dictionaries(names, metric, min_size=1, max_size=8)),
    }
    return _with_optional(draw, event, epoch=int64)


VALID = {
    "prediction": predictions(),
    "label": labels(),
    "interaction": interactions(),
    "training": training_steps(),
}


@st.composite
def kind_and_events(draw: st.DrawFn, max_size: int = 20) -> tuple[str, list[dict[str, Any]]]:
    kind = draw(st.sampled_from(KINDS))
    return kind, draw(st.lists(VALID[kind], max_size=max_size))


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> Any:
    """A valid event of ``kind`` with a field dropped, replaced, added, or the whole replaced."""
    event = draw(VALID[kind])
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["drop", "replace", "add", "whole"]))
        if how == "drop" and event:
            event.pop(draw(st.sampled_from(sorted(event))))
        elif how == "replace" and event:
            event[draw(st.sampled_from(sorted(event)))] = draw(json_values)
        elif how == "add":
            event[draw(keys.filter(lambda k: k != "events"))] = draw(json_values)
        elif how == "whole":
            return draw(json_values)
    return event


def finite_only(value: Any) -> Any:
    """``value`` as orjson writes it back: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite_only(v) for v in value]
    if isinstance(value, dict):
        return {k: finite_only(v) for k, v in value.items()}
    return value


def plain(event: Any) -> dict[str, Any]:
    """A decoded event as comparable plain data (vectors as lists, NaN as a marker)."""

    def value(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return ("vector", v.tolist())
        if isinstance(v, float) and math.isnan(v):
            return ("nan",)
        if isinstance(v, dict):
            return {k: value(x) for k, x in v.items()}
        return v

    return {f.name: value(getattr(event, f.name)) for f in fields(event)}


# --- properties -------------------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=2048), kind=st.sampled_from(KINDS))
def test_random_bytes_never_raise(raw: bytes, kind: str) -> None:
    check(decode(raw, kind), kind)


@FUZZ
@given(raw=json_bytes(json_values), kind=st.sampled_from(KINDS))
def test_random_json_never_raises(raw: bytes, kind: str) -> None:
    check(decode(raw, kind), kind)


@settings(FUZZ, max_examples=100)
@given(
    obj=st.dictionaries(keys.filter(lambda k: k != "events"), wide_json_values),
    writer=st.sampled_from(["json", "json-utf8", "orjson"]),
    kind=st.sampled_from(KINDS),
)
def test_single_events_with_any_numbers_never_raise(
    obj: dict[str, Any], writer: str, kind: str
) -> None:
    decoded = decode(dumps(obj, writer), kind)
    check(decoded, kind)
    assert len(decoded.events) + len(decoded.rejected) == 1


@settings(FUZZ, max_examples=60)
@given(raw=json_bytes(deeply_nested(max_depth=900)), kind=st.sampled_from(KINDS))
def test_deeply_nested_messages_never_raise(raw: bytes, kind: str) -> None:
    # Depth stays below ~1000 here; deeper nesting has its own tests below.
    check(decode(raw, kind), kind)


@settings(FUZZ, max_examples=100)
@given(
    kind=st.sampled_from(KINDS),
    items=st.lists(st.one_of(json_values, deeply_nested(max_depth=250)), max_size=12),
    envelope_kind=st.one_of(st.sampled_from([*KINDS, "rows"]), json_values),
    version=st.one_of(st.sampled_from([1, 1.0, True, 2, 0, "1", None]), json_values),
    extra=st.dictionaries(keys.filter(lambda k: k not in ("events", "kind")), json_values),
    writer=st.sampled_from(["json", "json-utf8", "orjson"]),
)
def test_envelopes_with_random_members_account_for_every_item(
    kind: str,
    items: list[Any],
    envelope_kind: Any,
    version: Any,
    extra: dict[str, Any],
    writer: str,
) -> None:
    envelope = {**extra, "schema_version": version, "kind": envelope_kind, "events": items}
    raw = dumps(envelope, writer)
    decoded = decode(raw, kind)
    check(decoded, kind, items=len(items))
    if envelope_kind == kind and version == SCHEMA_VERSION and not isinstance(version, bool):
        assert not any(r.index == -1 for r in decoded.rejected), decoded.rejected


@settings(FUZZ, max_examples=80)
@given(
    data=st.data(),
    kind=st.sampled_from(KINDS),
    events_field=st.one_of(json_values, st.dictionaries(keys, json_values, min_size=1)),
)
def test_envelopes_whose_events_member_is_not_a_list_are_rejected_whole(
    data: st.DataObject, kind: str, events_field: Any
) -> None:
    assume(not isinstance(events_field, list))
    raw = (
        orjson.dumps(
            {"schema_version": SCHEMA_VERSION, "kind": kind, "events": events_field},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        if data.draw(st.booleans())
        else json.dumps(
            {"schema_version": SCHEMA_VERSION, "kind": kind, "events": events_field}
        ).encode()
    )
    decoded = decode(raw, kind)
    check(decoded, kind)
    assert [r.index for r in decoded.rejected] == [-1]


@FUZZ
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_mutated_events_in_envelopes_are_each_accepted_or_rejected(
    data: st.DataObject, kind: str
) -> None:
    items = data.draw(st.lists(st.one_of(VALID[kind], mutated(kind)), max_size=10))
    raw = json.dumps({"schema_version": 1, "kind": kind, "events": items}).encode()
    decoded = decode(raw, kind)
    check(decoded, kind, items=len(items))
    for r in decoded.rejected:  # a rejected event keeps its own JSON, not the envelope's
        assert json.loads(r.raw) == finite_only(items[r.index])


@FUZZ
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_mutated_single_events_never_raise(data: st.DataObject, kind: str) -> None:
    event = data.draw(mutated(kind))
    assume(not (isinstance(event, dict) and "events" in event))
    decoded = decode(json.dumps(event).encode(), kind)
    check(decoded, kind)
    assert len(decoded.events) + len(decoded.rejected) == 1


@settings(FUZZ, max_examples=200)
@given(kind_events=kind_and_events())
def test_valid_events_round_trip(kind_events: tuple[str, list[dict[str, Any]]]) -> None:
    kind, events = kind_events
    direct = [plain(DECODERS[kind](e)) for e in events]  # the generators make valid events
    decoded = decode(encode_envelope(kind, events), kind)
    assert not decoded.rejected, decoded.rejected
    assert [plain(e) for e in decoded.events] == direct
    for event, expected in zip(events, direct, strict=True):
        single = decode(encode_event(event), kind)
        assert not single.rejected, single.rejected
        assert [plain(e) for e in single.events] == [expected]


@settings(FUZZ, max_examples=30)
@given(kind_events=kind_and_events(max_size=3), slack=st.integers(0, 3))
def test_size_limit_is_exact(kind_events: tuple[str, list[dict[str, Any]]], slack: int) -> None:
    kind, events = kind_events
    raw = encode_envelope(kind, events)
    assert not decode(raw, kind, max_bytes=len(raw) + slack).rejected
    over = decode(raw, kind, max_bytes=max(len(raw) - 1 - slack, 0))
    assert [r.index for r in over.rejected] == [-1] and not over.events
    assert over.rejected[0].reason == "message_too_large"
    assert "exceeds the limit" in over.rejected[0].detail


# --- explicit boundaries ----------------------------------------------------------------------

BASE = {"event_id": "e", "model": "m", "ts": 1_700_000_000, "task": "multiclass", "prediction": 1}


@pytest.mark.parametrize(
    ("change", "rejected_field"),
    [
        ({"model": "m" * MAX_NAME_LEN}, None),
        ({"model": "m" * (MAX_NAME_LEN + 1)}, "model"),
        ({"model": ""}, "model"),
        ({"model_version": ""}, None),
        ({"event_id": "e" * MAX_ID_LEN}, None),
        ({"event_id": "e" * (MAX_ID_LEN + 1)}, "event_id"),
        ({"ts": 0}, None),
        ({"ts": -1}, "ts"),
        ({"ts": MAX_EPOCH_SECONDS - 1}, None),
        ({"ts": MAX_EPOCH_SECONDS}, "ts"),
        ({"ts": 1e308}, "ts"),
        ({"ts": 1e-308}, None),
        ({"ts": 2**63}, "ts"),
        ({"ts": -(2**63)}, "ts"),
        ({"ts": "2023-11-14T22:13:20"}, "ts"),
        ({"ts": ""}, "ts"),
        ({"prediction": 2**63 - 1}, None),
        ({"prediction": -(2**63)}, None),
        ({"prediction": 2**63}, "prediction"),
        ({"prediction": ""}, "prediction"),
        ({"prediction": 1e308}, "prediction"),
        ({"task": "regression", "prediction": 1e308}, None),
        ({"task": "regression", "prediction": -(2**63)}, None),
        ({"task": "ranking", "prediction": []}, "prediction"),
        ({"task": "ranking", "prediction": list(range(5000))}, None),
        ({"score": 1e-308, "latency_ms": 0}, None),
        ({"latency_ms": -1e-308}, "latency_ms"),
        ({"probabilities": {str(i): 0.0 for i in range(MAX_CLASSES)}}, None),
        ({"probabilities": {str(i): 0.0 for i in range(MAX_CLASSES + 1)}}, "probabilities"),
        ({"probabilities": {"": 0.5}}, "probabilities."),
        ({"features": {f"f{i}": i for i in range(MAX_FEATURES)}}, None),
        ({"features": {f"f{i}": i for i in range(MAX_FEATURES + 1)}}, "features"),
        ({"features": {"v": [0.5] * MAX_VECTOR_LEN}}, None),
        ({"features": {"v": [0.5] * (MAX_VECTOR_LEN + 1)}}, "features.v"),
        ({"features": {"v": [[1.0], [2.0]]}}, "features.v"),
        ({"features": {"v": [1.0, "a"]}}, "features.v"),
        ({"features": {"big": 2**64 - 1, "tiny": 5e-324, "huge": 1e308}}, None),
        ({"features": {"": 1}}, "features name"),
        ({"segment": {"a": "b=c"}}, "segment.a"),
        ({"segment": {"a,b": "c"}}, "segment.a,b"),
        ({"segment": {f"k{i}": "v" * 100 for i in range(6)}}, "segment"),
        ({"segment": {"": ""}}, None),
        ({"schema_version": 2}, "schema_version"),
        ({"schema_version": True}, "schema_version"),
    ],
)
def test_prediction_boundaries(change: dict[str, Any], rejected_field: str | None) -> None:
    event = {**BASE, **change}
    for raw in (encode_event(event), encode_envelope("prediction", [event])):
        decoded = decode(raw, "prediction")
        check(decoded, "prediction")
        if rejected_field is None:
            assert len(decoded.events) == 1 and not decoded.rejected, decoded.rejected
        else:
            (r,) = decoded.rejected
            assert r.detail.startswith(rejected_field), r.detail
            assert (
                r.reason == f"{rejected_field.split('.')[0].split(' ')[0]}.{r.reason.split('.')[1]}"
            )


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
@pytest.mark.parametrize("field", ["score", "latency_ms", "ts"])
def test_non_finite_tokens_are_rejected_by_field(token: bytes, field: str) -> None:
    raw = orjson.dumps({k: v for k, v in BASE.items() if k != field})[:-1]
    raw += b', "' + field.encode() + b'": ' + token + b"}"
    (r,) = decode(raw, "prediction").rejected
    assert r.detail.startswith(field), r.detail
    assert r.reason.startswith(f"{field}."), r.reason


def test_non_finite_feature_values_are_data_not_errors() -> None:
    raw = orjson.dumps(BASE)[:-1] + b', "features": {"a": NaN, "b": Infinity, "c": 1e400}}'
    (event,) = decode(raw, "prediction").events
    values = event.features
    assert math.isnan(values["a"]) and values["b"] == math.inf and values["c"] == math.inf


def test_a_long_envelope_accounts_for_every_event() -> None:
    good = [{"event_id": f"e{i}", "ts": 1_700_000_000 + i, "label": i % 2} for i in range(20_000)]
    items: list[Any] = [dict(e, ts="soon") if i % 7 == 0 else e for i, e in enumerate(good)]
    items[3] = "not an object"
    decoded = decode(encode_envelope("label", items), "label")
    check(decoded, "label", items=len(items))
    assert {r.index for r in decoded.rejected} == {3} | set(range(0, len(items), 7))


# --- inputs past the parsers' and encoders' limits ------------------------------------------


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("kind", KINDS)
def test_nesting_beyond_the_parsers_limits_is_rejected(kind: str) -> None:
    check(decode(_deep(1100), kind), kind)


def test_a_deeply_nested_envelope_item_is_rejected_not_raised() -> None:
    raw = b'{"schema_version": 1, "kind": "label", "events": [' + _deep(256) + b"]}"
    check(decode(raw, "label"), "label", items=1)


@pytest.mark.parametrize("member", [b'"\\ud800"', b"1" + b"0" * 400])
def test_envelope_items_orjson_cannot_write_are_rejected_not_raised(member: bytes) -> None:
    raw = b'{"schema_version": 1, "kind": "label", "events": [{"x": ' + member + b"}]}"
    check(decode(raw, "label"), "label", items=1)


def test_a_feature_integer_beyond_float_range_does_not_raise() -> None:
    raw = orjson.dumps(BASE)[:-1] + b', "features": {"x": 1' + b"0" * 400 + b"}}"
    check(decode(raw, "prediction"), "prediction")


def test_names_that_are_not_unicode_scalar_values_are_rejected() -> None:
    raw = orjson.dumps(BASE)[:-1].replace(b'"m"', b'"\\ud800"') + b"}"
    decoded = decode(raw, "prediction")
    assert not decoded.events
    assert [r.index for r in decoded.rejected] == [-1]  # refused with the message
