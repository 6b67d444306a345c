"""Message decoding: envelopes and single events, and a clear reason for every rejection."""

from __future__ import annotations

import orjson
import pytest

from schemas.codec import decode_message, encode_envelope, encode_event
from schemas.events import Prediction

GOOD = {
    "event_id": "e1",
    "model": "m",
    "ts": 1_700_000_000,
    "task": "multiclass",
    "prediction": "cat",
    "probabilities": {"cat": 0.7, "dog": 0.3},
    "features": {"age": 3, "colour": "red", "emb": [0.1, 0.2], "missing": None},
    "segment": {"country": "fr", "tier": 2},
}


def test_single_event_and_envelope_decode_to_the_same_event() -> None:
    single = decode_message(encode_event(GOOD), "prediction")
    envelope = decode_message(encode_envelope("prediction", [GOOD]), "prediction")
    assert not single.rejected and not envelope.rejected
    (a,), (b,) = single.events, envelope.events
    assert isinstance(a, Prediction)
    assert (a.event_id, a.segment, a.ts_ms) == (b.event_id, "country=fr,tier=2", 1_700_000_000_000)
    assert list(a.features["emb"]) == [0.1, 0.2]


def test_an_envelope_carries_its_count() -> None:
    envelope = orjson.loads(encode_envelope("prediction", [GOOD, GOOD]))
    assert envelope["count"] == len(envelope["events"]) == 2
    del envelope["count"]  # optional: producers in other languages may leave it out
    assert len(decode_message(orjson.dumps(envelope), "prediction").events) == 2


def test_bad_events_in_an_envelope_do_not_cost_the_good_ones() -> None:
    bad = [
        dict(GOOD, event_id=""),
        {k: v for k, v in GOOD.items() if k != "ts"},
        "nope",
        dict(GOOD, probabilities={"cat": 1.5}),
    ]
    decoded = decode_message(encode_envelope("prediction", [GOOD, *bad, GOOD]), "prediction")
    assert len(decoded.events) == 2
    assert [(r.index, r.reason, r.detail) for r in decoded.rejected] == [
        (1, "event_id.empty", "event_id: must not be empty"),
        (2, "ts.missing", "ts: required field is missing"),
        (3, "event.wrong_type", "event: expected a JSON object, got str"),
        (4, "probabilities.out_of_range", "probabilities.cat: probability outside [0, 1]: 1.5"),
    ]
    assert orjson.loads(decoded.rejected[0].raw)["event_id"] == ""  # the event itself is kept


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (None, "null_message", "empty message"),
        (b"\xff\xfe", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "not_an_object", "expected a JSON object, got list"),
        (
            orjson.dumps({"schema_version": 1, "kind": "label", "events": []}),
            "envelope_kind",
            "envelope kind",
        ),
        (
            orjson.dumps({"schema_version": 1, "kind": "prediction", "count": 2, "events": [GOOD]}),
            "envelope_count",
            "envelope count: says 2, holds 1 events",
        ),
        (
            orjson.dumps({"schema_version": 1, "kind": "prediction", "count": True, "events": []}),
            "envelope_count",
            "envelope count: says True",
        ),
        (
            orjson.dumps({"schema_version": 9, "kind": "prediction", "events": []}),
            "envelope_schema_version",
            "schema_version",
        ),
        (
            orjson.dumps(dict(GOOD, task="clustering")),
            "task.invalid",
            "unknown task type 'clustering'",
        ),
        (orjson.dumps(dict(GOOD, ts="yesterday")), "ts.invalid", "ts: expected epoch seconds"),
        (
            orjson.dumps(dict(GOOD, ts="2026-11-28T10:00:00")),
            "ts.invalid",
            "ts: expected epoch seconds",
        ),
        (
            orjson.dumps(dict(GOOD, ts=1_700_000_000_000)),  # milliseconds sent as seconds
            "ts.out_of_range",
            "ts: time out of range (1970 to 3000): 1700000000000",
        ),
        (
            orjson.dumps(dict(GOOD, features={"emb": [1, "x"]})),
            "features.wrong_type",
            "features.emb: expected a flat list",
        ),
        (
            orjson.dumps(dict(GOOD, task="binary", prediction=3)),
            "prediction.invalid",
            "binary labels are 0/1",
        ),
        (
            b'{"event_id": "e", "model": "m", "ts": 1, "task": "regression",'
            b' "prediction": Infinity}',
            "prediction.not_finite",
            "prediction: must be finite",
        ),
    ],
)
def test_rejections_have_a_stable_reason_and_name_the_problem(
    raw: bytes | None, reason: str, detail: str
) -> None:
    decoded = decode_message(raw, "prediction")
    assert not decoded.events
    (rejected,) = decoded.rejected
    assert rejected.index == -1
    assert rejected.reason == reason
    assert detail in rejected.detail


def test_the_reason_of_a_field_does_not_depend_on_its_value_or_name() -> None:
    """Fifty events with fifty different bad timestamps and feature names: one reason each."""
    bad_ts = [dict(GOOD, ts=1_700_000_000_000 + i) for i in range(50)]
    bad_features = [dict(GOOD, features={f"f{i}": [1, str(i)]}) for i in range(50)]
    decoded = decode_message(encode_envelope("prediction", bad_ts + bad_features), "prediction")
    assert {r.reason for r in decoded.rejected} == {"ts.out_of_range", "features.wrong_type"}
    assert len({r.detail for r in decoded.rejected}) == 100


def test_oversized_message_is_rejected_before_parsing() -> None:
    raw = encode_event(dict(GOOD, pad="x" * 2048))
    (rejected,) = decode_message(raw, "prediction", max_bytes=1024).rejected
    assert rejected.reason == "message_too_large"
    assert rejected.detail == f"message of {len(raw)} bytes exceeds the limit of 1024"
    assert rejected.raw == raw


def test_iso_timestamps_with_a_zone_are_accepted() -> None:
    (event,) = decode_message(
        encode_event(dict(GOOD, ts="2023-11-14T22:13:20+00:00")), "prediction"
    ).events
    assert event.ts_ms == 1_700_000_000_000


# --- the fast paths of the decoders decide exactly what the full checks decide ---------------

# fmt: off
_TRICKY: list[object] = [
    None, True, False, 0, 1, -1, 2, 2**63, 0.0, -0.0, 0.5, 1.0, 1.5, -0.5, 1e300, 2.0**53,
    float("nan"), float("inf"), -float("inf"), "", "0", "1", "x", "binary", "multiclass",
    "regression", "x" * 128, "x" * 129, "y" * 256, "y" * 257, "a=b", [], [1.0], {}, {"k": "v"},
    {"k": 1}, {"k": True}, {"k": 1.0}, {"": "v"}, {"k": "="}, {"b": "2", "a": "1"},
    1_700_000_000, 1_700_000_000.25, 32503680000, 32503680000.0, "2026-01-01T00:00:00+00:00",
]
# fmt: on
_PRED = {
    "event_id": "e1",
    "model": "m",
    "model_version": "v1",
    "ts": 1_700_000_000.5,
    "task": "binary",
    "prediction": "1",
    "score": 0.25,
    "probabilities": {"1": 0.25, "0": 0.75},
    "features": {"a": 1.5, "b": "red", "c": None},
    "segment": {"region": "eu"},
    "latency_ms": 3.5,
    "client_id": "c",
}


def _outcome(decode: object, obj: dict[str, object]) -> object:
    """The decoded event's repr (arrays do not compare with ==), or the exception raised."""
    try:
        return ("ok", repr(decode(obj)))  # type: ignore[operator]
    except Exception as exc:
        return ("error", type(exc), str(exc))


def _mutations(base: dict[str, object]) -> list[dict[str, object]]:
    out = [dict(base)]
    for field in [*base, "schema_version"]:
        out.append({k: v for k, v in base.items() if k != field})
        for value in _TRICKY:
            out.append(dict(base, **{field: value}))
    for field in ("probabilities", "features"):
        for value in _TRICKY:
            out.append(dict(base, **{field: {"1": value, "0": 0.5}}))
            out.append(dict(base, **{field: {value if isinstance(value, str) else "k": 1.0}}))
    return out


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_prediction_fast_path_agrees_with_the_full_checks(task: str) -> None:
    from schemas.events import _decode_prediction, _fast_prediction, decode_prediction

    accepted = 0
    # twice: the second pass meets names and segments the fast path has cached
    for obj in _mutations(dict(_PRED, task=task)) * 2:
        full = _outcome(_decode_prediction, obj)
        fast = _fast_prediction(obj)
        if fast is not None:
            accepted += 1
            assert full == ("ok", repr(fast)), obj
        assert _outcome(decode_prediction, obj) == full, obj
    assert accepted > (0 if task == "regression" else 100)


def test_label_fast_path_agrees_with_the_full_checks() -> None:
    from schemas.events import _decode_label, decode_label

    base = {"event_id": "e1", "ts": 1_700_000_000.5, "label": "1", "model": "m"}
    for obj in _mutations(base):
        assert _outcome(decode_label, obj) == _outcome(_decode_label, obj), obj
