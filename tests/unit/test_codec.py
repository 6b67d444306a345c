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


def test_bad_events_in_an_envelope_do_not_cost_the_good_ones() -> None:
    bad = [
        dict(GOOD, event_id=""),
        {k: v for k, v in GOOD.items() if k != "ts"},
        "nope",
        dict(GOOD, probabilities={"cat": 1.5}),
    ]
    decoded = decode_message(encode_envelope("prediction", [GOOD, *bad, GOOD]), "prediction")
    assert len(decoded.events) == 2
    assert [(r.index, r.reason) for r in decoded.rejected] == [
        (1, "event_id: must not be empty"),
        (2, "ts: required field is missing"),
        (3, "event: expected a JSON object, got str"),
        (4, "probabilities.cat: probability outside [0, 1]: 1.5"),
    ]
    assert orjson.loads(decoded.rejected[0].raw)["event_id"] == ""  # the event itself is kept


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty message"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (orjson.dumps({"schema_version": 1, "kind": "label", "events": []}), "envelope kind"),
        (orjson.dumps({"schema_version": 9, "kind": "prediction", "events": []}), "schema_version"),
        (orjson.dumps(dict(GOOD, task="clustering")), "unknown task type 'clustering'"),
        (orjson.dumps(dict(GOOD, ts="yesterday")), "ts: expected epoch seconds"),
        (orjson.dumps(dict(GOOD, ts="2026-11-28T10:00:00")), "ts: expected epoch seconds"),
        (
            orjson.dumps(dict(GOOD, features={"emb": [1, "x"]})),
            "features.emb: expected a flat list",
        ),
        (orjson.dumps(dict(GOOD, task="binary", prediction=3)), "binary labels are 0/1"),
        (
            b'{"event_id": "e", "model": "m", "ts": 1, "task": "regression",'
            b' "prediction": Infinity}',
            "prediction: must be finite",
        ),
    ],
)
def test_rejections_name_the_problem(raw: bytes | None, reason: str) -> None:
    decoded = decode_message(raw, "prediction")
    assert not decoded.events
    (rejected,) = decoded.rejected
    assert rejected.index == -1 and reason in rejected.reason


def test_oversized_message_is_rejected_before_parsing() -> None:
    raw = encode_event(dict(GOOD, pad="x" * 2048))
    (rejected,) = decode_message(raw, "prediction", max_bytes=1024).rejected
    assert rejected.reason == f"message of {len(raw)} bytes exceeds the limit of 1024"
    assert rejected.raw == raw


def test_iso_timestamps_with_a_zone_are_accepted() -> None:
    (event,) = decode_message(
        encode_event(dict(GOOD, ts="2023-11-14T22:13:20+00:00")), "prediction"
    ).events
    assert event.ts_ms == 1_700_000_000_000
