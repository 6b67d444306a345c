"""The exported JSON Schemas: committed files are current, and the schemas accept exactly the
events the Python decoders accept, apart from the differences documented in
:mod:`schemas.jsonschema` (which :func:`neutralize` removes from an input before comparing)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas.codec import decode_message
from schemas.events import (
    DECODERS,
    INTERACTION_KINDS,
    MAX_CLASSES,
    MAX_FEATURES,
    MAX_ID_LEN,
    MAX_NAME_LEN,
    MAX_VECTOR_LEN,
    TASKS,
    SchemaError,
)
from schemas.jsonschema import (
    DEFAULT_DIR,
    KINDS,
    MAX_EPOCH_SECONDS,
    envelope_schema_for,
    export,
    exported,
    main,
    render,
    schema_for,
)

Event = dict[str, Any]
FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=FORMAT_CHECKER)


VALIDATORS = {kind: _validator(schema_for(kind)) for kind in KINDS}
ENVELOPES = {kind: _validator(envelope_schema_for(kind)) for kind in KINDS}


def python_accepts(kind: str, obj: Event) -> bool:
    """Whether the Python decoder accepts ``obj``; any exception but SchemaError propagates."""
    try:
        DECODERS[kind](obj)
    except SchemaError:
        return False
    return True


# --- the documented differences ------------------------------------------------------------

CANONICAL_TS = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-5][0-9])"
)
NEUTRAL_TS = "2024-01-01T00:00:00Z"
TS_STRING = Draft202012Validator(
    next(b for b in schema_for("label")["properties"]["ts"]["anyOf"] if b["type"] == "string"),
    format_checker=FORMAT_CHECKER,
)


def _python_reads_ts(value: str) -> bool:
    return python_accepts("label", {"event_id": "e", "ts": value, "label": 1})


def _schema_reads_ts(value: str) -> bool:
    return TS_STRING.is_valid(value)


def _segment_key_len(segment: dict[str, Any]) -> int:
    return sum(len(k) + 1 + len(str(v)) for k, v in segment.items()) + max(len(segment) - 1, 0)


def _integral_float(value: Any) -> bool:
    return isinstance(value, float) and value.is_integer()


def _beyond_2_53(value: Any) -> bool:
    return _integral_float(value) and abs(value) >= 2**53


def neutralize(kind: str, obj: Event) -> tuple[Event, list[str]]:
    """``obj`` with each documented difference replaced by a value both sides read alike, and
    the names of the differences found. Everything else is compared as it is."""
    out, hits = dict(obj), []
    ts = out.get("ts")
    if (
        isinstance(ts, str)
        and not CANONICAL_TS.fullmatch(ts)
        and _python_reads_ts(ts) != _schema_reads_ts(ts)
    ):
        out["ts"], hits = NEUTRAL_TS, [*hits, "ts-format"]
    for field in ("step", "epoch") if kind == "training" else ():
        if _integral_float(out.get(field)):
            out[field], hits = int(out[field]), [*hits, "integral-float"]
    segment = out.get("segment") if kind in ("prediction", "interaction") else None
    if isinstance(segment, dict):
        if any(_integral_float(v) for v in segment.values()):
            segment = {k: int(v) if _integral_float(v) else v for k, v in segment.items()}
            out["segment"], hits = segment, [*hits, "integral-float"]
        tags_ok = all(
            isinstance(v, str | int) and not isinstance(v, bool) for v in segment.values()
        )
        if tags_ok and _segment_key_len(segment) > 4 * MAX_NAME_LEN:
            out["segment"], hits = "", [*hits, "segment-length"]
    # Class labels, in the field named after the kind: a prediction's unless it is a
    # regression, and a label's item ids (a single label may be a regression target, a number
    # to both sides).
    labels = out.get(kind) if kind in ("prediction", "label") else None
    if (kind == "prediction" and out.get("task") != "regression") or isinstance(labels, list):
        many = isinstance(labels, list)
        exact = [int(v) if _beyond_2_53(v) else v for v in (labels if many else [labels])]
        if any(_beyond_2_53(v) for v in (labels if many else [labels])):
            out[kind] = exact if many else exact[0]
            hits = [*hits, "class-label-beyond-2**53"]
    # Python is looser than the contract here (True == 1); the schema follows the contract.
    if out.get("schema_version") is True:
        out["schema_version"], hits = 1, [*hits, "python-accepts-true-version"]
    return out, hits


def assert_equivalent(kind: str, obj: Event) -> bool:
    """Both sides agree on ``obj`` (after :func:`neutralize`); returns the verdict."""
    neutral, _ = neutralize(kind, obj)
    try:
        DECODERS[kind](neutral)
        python, reason = True, ""
    except SchemaError as exc:
        python, reason = False, str(exc)
    errors = [e.message for e in VALIDATORS[kind].iter_errors(neutral)]
    assert python == (not errors), (
        f"{kind} {neutral!r}: Python {'rejects: ' + reason if reason else 'accepts'};"
        f" schema {'rejects: ' + '; '.join(errors) if errors else 'accepts'}"
    )
    return python


# --- generated files -----------------------------------------------------------------------


def test_format_checker_checks_date_time() -> None:
    assert "date-time" in FORMAT_CHECKER.checkers, "install rfc3339-validator"
    assert not FORMAT_CHECKER.conforms("soon", "date-time")


def test_committed_files_are_current() -> None:
    expected = exported()
    assert sorted(p.name for p in DEFAULT_DIR.glob("*.json")) == sorted(expected)
    for name, schema in expected.items():
        assert (DEFAULT_DIR / name).read_text(encoding="utf-8") == render(schema), (
            f"schemas/json/{name} is stale: run python -m schemas.jsonschema"
        )


def test_export_and_main_write_the_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = export(tmp_path / "a")
    assert sorted(p.name for p in paths) == sorted(exported())
    assert main([str(tmp_path / "b")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(paths)
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("}\n") and json.loads(text) == exported()[path.name]
        assert (tmp_path / "b" / path.name).read_text(encoding="utf-8") == text


@pytest.mark.parametrize("name", sorted(exported()))
def test_schemas_are_valid_and_documented(name: str) -> None:
    schema = exported()[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"https://modelmon.dev/schemas/v1/{name}"
    assert schema["title"] and schema["description"]
    documented = [schema, *schema.get("$defs", {}).values()]
    for field, sub in ((f, s) for d in documented for f, s in d["properties"].items()):
        assert sub.get("description"), f"{name}: {field} has no description"


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown event kind"):
        schema_for("metric")


# --- hand-written corpus -------------------------------------------------------------------

BASE: dict[str, Event] = {
    "prediction": {
        "event_id": "e1",
        "model": "m",
        "ts": 1_700_000_000.5,
        "task": "multiclass",
        "prediction": "cat",
    },
    "label": {"event_id": "e1", "ts": 1_700_000_000, "label": "cat"},
    "interaction": {"event_id": "i1", "model": "m", "ts": "2024-05-01T12:00:00Z", "kind": "click"},
    "training": {
        "run_id": "r1",
        "model": "m",
        "ts": 1_700_000_000,
        "step": 10,
        "metrics": {"loss": 0.5},
    },
}
ID_FIELD = {
    "prediction": "event_id",
    "label": "event_id",
    "interaction": "event_id",
    "training": "run_id",
}
X = "x"
Case = tuple[str, Event, bool]


def _with(kind: str, /, **changes: Any) -> Event:
    return {**BASE[kind], **changes}


def _without(kind: str, field: str) -> Event:
    return {k: v for k, v in BASE[kind].items() if k != field}


def _field_cases(
    kind: str, field: str, valid: list[Any], invalid: list[Any], base: Event | None = None
) -> list[Case]:
    base = BASE[kind] if base is None else base
    return [
        (f"{field}={v!r:.40}", {**base, field: v}, ok)
        for ok, values in ((True, valid), (False, invalid))
        for v in values
    ]


def _common_cases(kind: str) -> list[Case]:
    cases: list[Case] = [
        ("base", BASE[kind], True),
        ("unknown member", _with(kind, extra=[1]), True),
    ]
    for field in BASE[kind]:
        cases.append((f"missing {field}", _without(kind, field), False))
        cases.append((f"null {field}", _with(kind, **{field: None}), False))
    cases += _field_cases(kind, "schema_version", [1, 1.0], [2, 0, "1", None, [1]])
    cases += _field_cases(
        kind,
        "ts",
        [
            0,
            0.0,
            1.5,
            MAX_EPOCH_SECONDS - 0.001,
            "2024-01-01T00:00:00Z",
            "2024-01-01T05:30:00+05:30",
            "2024-01-01T00:00:00.123456-08:00",
            "2024-02-29T00:00:00Z",
        ],
        [
            "1960-01-01T00:00:00Z",
            "3000-01-01T00:00:00Z",
            -1,
            -0.001,
            MAX_EPOCH_SECONDS,
            1e300,
            True,
            False,
            "soon",
            "",
            "2024-01-01T00:00:00",
            "2024-01-01",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:60Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00+24:00",
            "0000-01-01T00:00:00Z",
            "1700000000",
            [],
            {},
        ],
    )
    cases += _field_cases(
        kind,
        ID_FIELD[kind],
        [X * MAX_ID_LEN, "é" * MAX_ID_LEN],
        ["", X * (MAX_ID_LEN + 1), 1, True, ["e1"]],
    )
    if "model" in BASE[kind]:
        cases += _field_cases(
            kind, "model", [X * MAX_NAME_LEN], ["", X * (MAX_NAME_LEN + 1), 1, {}]
        )
    return cases


def _segment_cases(kind: str) -> list[Case]:
    return _field_cases(
        kind,
        "segment",
        [
            None,
            "",
            "eu",
            X * MAX_NAME_LEN,
            {},
            {"country": "de", "tier": 2},
            {"a": "", "": 0},
            {"big": -(2**63)},
        ],
        [
            {"a": "1,b=2"},
            {"a=b": 1},
            X * (MAX_NAME_LEN + 1),
            {"a": True},
            {"a": 1.5},
            {"a": None},
            {"a": []},
            {"a": {"b": 1}},
            5,
            True,
            [],
            ["a"],
        ],
    )


def _prediction_cases() -> list[Case]:
    kind = "prediction"
    cases = _common_cases(kind)
    cases += _field_cases(kind, "task", [], ["unknown", "Binary", "", 1, ["binary"]])
    targets = {
        "binary": (
            [0, 1, True, False, "0", "1", 0.0, 1.0, -0.0],
            [2, -1, "2", "true", "", 0.5, [0], {}, "yes", "01"],
        ),
        "multiclass": (
            ["cat", 3, -3, True, 3.0, X * MAX_NAME_LEN, 10**18, " "],
            ["", X * (MAX_NAME_LEN + 1), 3.5, [], {}, ["a"]],
        ),
        "regression": ([0, -1.5, 1e300, 3, 0.1], ["1", True, [], {}, [1.0]]),
        "ranking": (
            [["a"], ["a", 2, True], [1.0], [X * MAX_NAME_LEN]],
            [[], "a", 1, [""], [X * (MAX_NAME_LEN + 1)], [1.5], [None], [[]], [{}]],
        ),
    }
    for task, (valid, invalid) in targets.items():
        base = _with(kind, task=task, prediction=valid[0])
        cases += [(f"{task}: missing prediction", {**base, "prediction": None}, False)]
        cases += [
            (f"{task}: {n}", o, ok)
            for n, o, ok in _field_cases(kind, "prediction", valid, invalid, base)
        ]
        cases += [
            (f"{task}: {n}", o, ok)
            for n, o, ok in _field_cases(
                kind,
                "score",
                [None, 0, 1, 0.5, 1.0] + ([] if task == "binary" else [5, -3]),
                ["0.5", True, [0.5]] + ([-0.01, 1.01, 5] if task == "binary" else []),
                base,
            )
        ]
    many = {f"c{i}": 0.0 for i in range(MAX_CLASSES)}
    cases += _field_cases(
        kind,
        "probabilities",
        [
            None,
            {"a": 0.2, "b": 0.8},
            {"a": 0, "b": 1},
            {X * MAX_NAME_LEN: 0.5},
            many,
            {"1": 0.5, "0": 0.5},
        ],
        [
            {},
            {"a": 1.1},
            {"a": -0.1},
            {"a": "0.5"},
            {"a": True},
            {"a": None},
            {"": 0.5},
            {X * (MAX_NAME_LEN + 1): 0.5},
            [0.5],
            0.5,
            {**many, "extra": 0.0},
        ],
    )
    features = {f"f{i}": 1 for i in range(MAX_FEATURES)}
    cases += _field_cases(
        kind,
        "features",
        [
            None,
            {},
            {"a": 1, "b": "x", "c": None, "d": [1, 2.5], "e": [], "f": -1e300},
            {X * MAX_NAME_LEN: 1},
            {"s": X * 10_000},
            features,
            {"v": [0.5] * MAX_VECTOR_LEN},
        ],
        [
            [],
            "a",
            1,
            {"a": True},
            {"a": {}},
            {"a": [True]},
            {"a": ["1"]},
            {"a": [None]},
            {"a": [[1]]},
            {"": 1},
            {X * (MAX_NAME_LEN + 1): 1},
            {**features, "extra": 1},
            {"v": [0.5] * (MAX_VECTOR_LEN + 1)},
        ],
    )
    cases += _segment_cases(kind)
    cases += _field_cases(kind, "latency_ms", [None, 0, 12.5], [-1, -0.001, "1", True])
    cases += _field_cases(
        kind, "client_id", [None, "c", X * MAX_ID_LEN], ["", X * (MAX_ID_LEN + 1), 5, ["c"]]
    )
    cases += _field_cases(
        kind, "model_version", ["", "v1", X * MAX_NAME_LEN], [None, 1, X * (MAX_NAME_LEN + 1)]
    )
    return cases


def _label_cases() -> list[Case]:
    kind = "label"
    return (
        _common_cases(kind)
        + _field_cases(
            kind,
            "label",
            ["cat", 3, 3.0, 2.5, -1e10, 0, True, False, ["a", "b"], [1, True], X * MAX_NAME_LEN],
            ["", X * (MAX_NAME_LEN + 1), [], [""], [2.5], [None], {}, {"a": 1}],
        )
        + _field_cases(
            kind, "model", [None, "m", X * MAX_NAME_LEN], ["", 1, X * (MAX_NAME_LEN + 1)]
        )
    )


def _interaction_cases() -> list[Case]:
    kind = "interaction"
    return (
        _common_cases(kind)
        + _field_cases(kind, "kind", list(INTERACTION_KINDS), ["view", "Click", "", 1, ["click"]])
        + _field_cases(kind, "value", [2.5, -1, 0, 1e300], [None, "1", True, [1]])
        + _field_cases(
            kind, "variant", ["", "B", X * MAX_NAME_LEN], [None, 1, X * (MAX_NAME_LEN + 1)]
        )
        + _field_cases(
            kind, "prediction_id", [None, "e1", X * MAX_ID_LEN], ["", X * (MAX_ID_LEN + 1), 1]
        )
        + _segment_cases(kind)
    )


def _training_cases() -> list[Case]:
    kind = "training"
    metric_values = (
        [0, -1.5, 1e300, "nan", "NaN", "inf", "-inf", "INF", "Infinity", "-infinity", "nAn"],
        ["+inf", "nan\n", " nan", "none", "1.5", "", "infinit", "-nan", True, None, [1], {}],
    )
    return (
        _common_cases(kind)
        + _field_cases(kind, "step", [0, -1, 10**12], [1.5, "1", True, [1]])
        + _field_cases(kind, "epoch", [None, 0, 3], [1.5, "1", True])
        + _field_cases(
            kind,
            "metrics",
            [{"a": 1, "b": 2.5}, {X * MAX_NAME_LEN: 1}] + [{"loss": v} for v in metric_values[0]],
            [{}, [], "loss", {"": 1}, {X * (MAX_NAME_LEN + 1): 1}]
            + [{"loss": v} for v in metric_values[1]],
        )
    )


CORPUS: dict[str, list[Case]] = {
    "prediction": _prediction_cases(),
    "label": _label_cases(),
    "interaction": _interaction_cases(),
    "training": _training_cases(),
}


@pytest.mark.parametrize("kind", KINDS)
def test_hand_corpus(kind: str) -> None:
    for name, obj, valid in CORPUS[kind]:
        assert neutralize(kind, obj)[1] == [], f"{kind} {name}: hits a documented difference"
        assert assert_equivalent(kind, obj) == valid, f"{kind} {name}: expected valid={valid}"


# Each documented difference (schemas/jsonschema.py) with inputs on which the two disagree.
DIFFERENCES: list[tuple[str, str, Event]] = [
    *(
        ("ts-format", "label", _with("label", ts=ts))
        for ts in (
            "2024-01-01 00:00:00Z",
            "20240101T000000Z",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T10:00+01:00",
            "2024-01-01T10Z",
            "2024-01-01T00:00:00,5Z",
            "2024-W01-1T00:00:00Z",
            "2024-01-01T00:00:00+00:90",
            "2024-01-01t00:00:00z",
            "2024-01-01T00:00:00Z\n",
        )
    ),
    ("integral-float", "training", _with("training", step=3.0)),
    ("integral-float", "training", _with("training", epoch=1.0)),
    ("integral-float", "interaction", _with("interaction", segment={"tier": 2.0})),
    ("class-label-beyond-2**53", "prediction", _with("prediction", prediction=2.0**53)),
    ("class-label-beyond-2**53", "label", _with("label", label=["a", 2.0**53])),
    ("segment-length", "prediction", _with("prediction", segment={"a": X * (4 * MAX_NAME_LEN)})),
    (
        "segment-length",
        "interaction",
        _with("interaction", segment={f"tag{i}": X * 20 for i in range(25)}),
    ),
]


@pytest.mark.parametrize(("difference", "kind", "obj"), DIFFERENCES)
def test_documented_differences_exist(difference: str, kind: str, obj: Event) -> None:
    assert python_accepts(kind, obj) != VALIDATORS[kind].is_valid(obj)
    assert neutralize(kind, obj)[1] == [difference]
    assert_equivalent(kind, obj)


# --- generated corpus ----------------------------------------------------------------------

FINITE = st.floats(allow_nan=False, allow_infinity=False)
INTS = st.integers(-(2**63), 2**63 - 1)  # int64: what most producers can send
NUMBERS = FINITE | INTS
SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=12)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
INTERESTING: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    2,
    -1,
    0.0,
    1.0,
    0.5,
    1.5,
    -0.5,
    1e300,
    "",
    "0",
    "1",
    "x",
    "nan",
    "-Infinity",
    X * MAX_NAME_LEN,
    X * (MAX_NAME_LEN + 1),
    X * MAX_ID_LEN,
    X * (MAX_ID_LEN + 1),
    [],
    [1],
    ["a"],
    [1.5],
    [None],
    [[]],
    {},
    {"a": 1},
    {"a": "b"},
    {"a": 0.5},
    {"": 1},
    {"a": None},
    NEUTRAL_TS,
    "2024-01-01 00:00:00Z",
    "2024-01-01T00:00:00",
    MAX_EPOCH_SECONDS,
    *TASKS,
    *INTERACTION_KINDS,
]


def _text(max_len: int, min_len: int = 1) -> st.SearchStrategy[str]:
    lengths = sorted({min_len, max_len - 1, max_len})
    return st.text(min_size=min_len, max_size=8) | st.sampled_from(lengths).map(X.__mul__)


TIMESTAMPS = st.one_of(
    st.floats(0, MAX_EPOCH_SECONDS, exclude_max=True),
    st.integers(0, MAX_EPOCH_SECONDS - 1),
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2999, 12, 30),
        timezones=st.sampled_from(
            [
                UTC,
                timezone(timedelta(hours=5, minutes=30)),
                timezone(-timedelta(hours=23, minutes=59)),
            ]
        ),
    ).map(lambda d: d.isoformat().replace("+00:00", "Z")),
)
CANONICAL_SHAPED = st.from_regex(CANONICAL_TS, fullmatch=True)
CLASS_LABELS = _text(MAX_NAME_LEN) | INTS | st.booleans() | st.integers(-1000, 1000).map(float)
TAG_TEXT = st.text(st.characters(exclude_characters="=,"), max_size=8)
SEGMENTS = (
    st.none()
    | _text(MAX_NAME_LEN, 0)
    | st.dictionaries(TAG_TEXT, TAG_TEXT | st.integers(-(10**6), 10**6), max_size=4)
)
PREDICTIONS = {
    "binary": st.sampled_from([0, 1, True, False, "0", "1", 0.0, 1.0]),
    "multiclass": CLASS_LABELS,
    "regression": NUMBERS,
    "ranking": st.lists(CLASS_LABELS, min_size=1, max_size=4),
}
OPTIONAL = {"schema_version": st.just(1)}


def _prediction(task: str) -> st.SearchStrategy[Event]:
    score = st.floats(0, 1) if task == "binary" else FINITE
    feature = st.none() | NUMBERS | st.text(max_size=10) | st.lists(NUMBERS, max_size=4)
    return st.fixed_dictionaries(
        {
            "event_id": _text(MAX_ID_LEN),
            "model": _text(MAX_NAME_LEN),
            "ts": TIMESTAMPS,
            "task": st.just(task),
            "prediction": PREDICTIONS[task],
        },
        optional={
            **OPTIONAL,
            "model_version": _text(MAX_NAME_LEN, 0),
            "score": st.none() | score,
            "probabilities": st.none()
            | st.dictionaries(_text(MAX_NAME_LEN), st.floats(0, 1), min_size=1, max_size=4),
            "features": st.none() | st.dictionaries(_text(MAX_NAME_LEN), feature, max_size=4),
            "segment": SEGMENTS,
            "latency_ms": st.none() | st.floats(min_value=0, allow_infinity=False),
            "client_id": st.none() | _text(MAX_ID_LEN),
        },
    )


METRIC_VALUES = NUMBERS | st.sampled_from(["nan", "NaN", "inf", "-Inf", "infinity", "-INFINITY"])
VALID: dict[str, st.SearchStrategy[Event]] = {
    "prediction": st.sampled_from(TASKS).flatmap(_prediction),
    "label": st.fixed_dictionaries(
        {
            "event_id": _text(MAX_ID_LEN),
            "ts": TIMESTAMPS,
            "label": CLASS_LABELS | FINITE | st.lists(CLASS_LABELS, min_size=1, max_size=4),
        },
        optional={**OPTIONAL, "model": st.none() | _text(MAX_NAME_LEN)},
    ),
    "interaction": st.fixed_dictionaries(
        {
            "event_id": _text(MAX_ID_LEN),
            "model": _text(MAX_NAME_LEN),
            "ts": TIMESTAMPS,
            "kind": st.sampled_from(INTERACTION_KINDS),
        },
        optional={
            **OPTIONAL,
            "variant": _text(MAX_NAME_LEN, 0),
            "value": NUMBERS,
            "prediction_id": st.none() | _text(MAX_ID_LEN),
            "segment": SEGMENTS,
        },
    ),
    "training": st.fixed_dictionaries(
        {
            "run_id": _text(MAX_ID_LEN),
            "model": _text(MAX_NAME_LEN),
            "ts": TIMESTAMPS,
            "step": INTS,
            "metrics": st.dictionaries(_text(MAX_NAME_LEN), METRIC_VALUES, min_size=1, max_size=4),
        },
        optional={**OPTIONAL, "epoch": st.none() | INTS},
    ),
}
FIELDS = {kind: sorted(set(schema_for(kind)["properties"])) for kind in KINDS}
ANY_VALUE = JSON_VALUES | st.sampled_from(INTERESTING) | CANONICAL_SHAPED


def _mutate_inside(draw: Callable[[st.SearchStrategy[Any]], Any], value: Any) -> Any:
    """Change, drop or add one member of an object, or one item of a list."""
    if isinstance(value, dict):
        value = dict(value)
        key = draw(st.sampled_from(sorted(value)) | st.text(max_size=6)) if value else ""
        if value and draw(st.booleans()):
            value.pop(key, None)
        else:
            value[key] = draw(ANY_VALUE)
    elif isinstance(value, list) and value:
        value = list(value)
        value[draw(st.integers(0, len(value) - 1))] = draw(ANY_VALUE)
    return value


@st.composite
def near_valid(draw: Callable[[st.SearchStrategy[Any]], Any], kind: str) -> Event:
    """A valid event with one to three mutations: drop, retype or change a field or a member."""
    obj = dict(draw(VALID[kind]))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS[kind]))
        op = draw(st.sampled_from(["drop", "replace", "interesting", "inside", "add"]))
        if op == "drop":
            obj.pop(field, None)
        elif op == "replace":
            obj[field] = draw(JSON_VALUES)
        elif op == "interesting":
            obj[field] = draw(st.sampled_from(INTERESTING) | CANONICAL_SHAPED)
        elif op == "inside":
            obj[field] = _mutate_inside(draw, obj.get(field))
        else:
            obj[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    return obj


GENERATED = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("kind", KINDS)
@GENERATED
@given(data=st.data())
def test_generated_valid_events(kind: str, data: st.DataObject) -> None:
    obj = data.draw(VALID[kind])
    assert neutralize(kind, obj)[1] == []
    assert assert_equivalent(kind, obj), obj


@pytest.mark.parametrize("kind", KINDS)
@GENERATED
@given(data=st.data())
def test_generated_near_valid_events(kind: str, data: st.DataObject) -> None:
    assert_equivalent(kind, data.draw(near_valid(kind)))


@GENERATED
@given(ts=CANONICAL_SHAPED | TIMESTAMPS.filter(lambda t: isinstance(t, str)))
def test_canonical_timestamps_agree(ts: str) -> None:
    assert _python_reads_ts(ts) == _schema_reads_ts(ts), ts


# --- envelopes -----------------------------------------------------------------------------


def _envelope(kind: str, events: Any, /, **changes: Any) -> Event:
    return {"schema_version": 1, "kind": kind, "events": events, **changes}


def _codec_accepts(kind: str, envelope: Event) -> bool:
    decoded = decode_message(orjson.dumps(envelope), kind)
    return not decoded.rejected


@pytest.mark.parametrize("kind", KINDS)
def test_envelope_of_valid_events(kind: str) -> None:
    events = [obj for _, obj, valid in CORPUS[kind] if valid][:50]
    for envelope in (
        _envelope(kind, events),
        _envelope(kind, []),
        _envelope(kind, events, count=len(events)),
        _envelope(kind, [], count=0),
        _envelope(kind, events, count=float(len(events))),  # JSON's 3.0 is the integer 3
    ):
        assert ENVELOPES[kind].is_valid(envelope)
        assert _codec_accepts(kind, envelope)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_envelopes(kind: str) -> None:
    other = next(k for k in KINDS if k != kind)
    invalid_event = next(obj for _, obj, valid in CORPUS[kind] if not valid)
    bad = [
        _envelope(other, [BASE[kind]]),
        _envelope(kind.upper(), [BASE[kind]]),
        _envelope(kind, [BASE[kind]], schema_version=2),
        _envelope(kind, [BASE[kind]], schema_version="1"),
        _envelope(kind, [BASE[kind]], schema_version=None),
        {"kind": kind, "events": [BASE[kind]]},
        {"schema_version": 1, "kind": None, "events": [BASE[kind]]},
        _envelope(kind, {"0": BASE[kind]}),
        _envelope(kind, [BASE[kind], invalid_event]),
        _envelope(kind, [BASE[kind], [BASE[kind]]]),
        _envelope(kind, [BASE[kind]], count=-1),
        _envelope(kind, [BASE[kind]], count="1"),
        _envelope(kind, [BASE[kind]], count=1.5),
        _envelope(kind, [BASE[kind]], count=None),
        _envelope(kind, [BASE[kind]], count=True),
    ]
    for envelope in bad:
        assert not ENVELOPES[kind].is_valid(envelope), envelope
        assert not _codec_accepts(kind, envelope), envelope
    assert not ENVELOPES[kind].is_valid(_envelope(kind, [BASE[other]]))
    # what the schema cannot say: the count must equal the number of events
    short = _envelope(kind, [BASE[kind]], count=2)
    assert ENVELOPES[kind].is_valid(short)
    assert not _codec_accepts(kind, short)
