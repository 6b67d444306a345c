"""The event contracts: one frozen definition per event kind, and its validation.

Every decoder takes the JSON object a producer sent and returns the frozen event, or raises
:class:`SchemaError` naming the first offending field. Validation is hand-written (no
reflection) because it runs once per event on the hot path.

>>> p = decode_prediction({"event_id": "e1", "model": "digits", "ts": 1700000000.5,
...                        "task": "multiclass", "prediction": 3})
>>> p.prediction, p.ts_ms, p.segment
('3', 1700000000500, '')
>>> decode_prediction({"event_id": "e1", "model": "digits", "ts": "soon", "task": "multiclass",
...                    "prediction": 3})
Traceback (most recent call last):
...
schemas.events.SchemaError: ts: expected epoch seconds (number) or an ISO-8601 string, got 'soon'
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np

SCHEMA_VERSION: Final = 1
TASKS: Final = ("binary", "multiclass", "regression", "ranking")
CLASSIFICATION_TASKS: Final = ("binary", "multiclass")
INTERACTION_KINDS: Final = ("impression", "click", "conversion")
MAX_ID_LEN: Final = 256
MAX_NAME_LEN: Final = 128
MAX_FEATURES: Final = 1024
MAX_VECTOR_LEN: Final = 65536
MAX_CLASSES: Final = 1000
MAX_EPOCH_SECONDS: Final = 32503680000  # 3000-01-01
_SEGMENT_SEPARATORS: Final = re.compile("[=,]")

Feature = float | str | None | np.ndarray  # vectors are read-only float64 arrays


#: What can be wrong with a field: the second part of a dead letter's stable reason.
PROBLEMS: Final = (
    "missing",
    "wrong_type",
    "empty",
    "too_long",
    "too_many",
    "not_finite",
    "out_of_range",
    "invalid",
    "unsupported",
)


class SchemaError(ValueError):
    """An event does not match its contract: ``field`` names where, ``problem`` (one of
    :data:`PROBLEMS`) what; the message has the detail, with the offending value.

    >>> e = SchemaError("features.age", "expected a number, got list", "wrong_type")
    >>> e.reason, str(e)
    ('features.wrong_type', 'features.age: expected a number, got list')
    """

    def __init__(self, field: str, message: str, problem: str) -> None:
        super().__init__(f"{field}: {message}")
        if problem not in PROBLEMS:
            raise ValueError(f"unknown problem {problem!r}")
        self.field = field
        self.problem = problem

    @property
    def reason(self) -> str:
        """A stable code: the top-level field and the problem (a dead letter's ``reason``),
        whatever names or values the event holds; the message keeps those."""
        top = re.split(r"[.\[ ]", self.field, maxsplit=1)[0]
        return f"{top}.{self.problem}"


@dataclass(frozen=True, slots=True)
class Prediction:
    """One model output. ``prediction`` is a class label (str) or a number (regression) or a
    ranked list of item ids (ranking); ``probabilities`` maps class label to probability."""

    event_id: str
    model: str
    model_version: str
    ts_ms: int
    task: str
    prediction: str | float | tuple[str, ...]
    score: float | None = None
    probabilities: Mapping[str, float] | None = None
    features: Mapping[str, Feature] | None = None
    segment: str = ""
    latency_ms: float | None = None
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth for the prediction with the same ``event_id``, arriving later."""

    event_id: str
    ts_ms: int
    label: str | float | tuple[str, ...]
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Interaction:
    """A business event (impression, click, conversion) tied to a prediction or a variant."""

    event_id: str
    model: str
    ts_ms: int
    kind: str
    variant: str = ""
    value: float = 1.0
    prediction_id: str | None = None
    segment: str = ""


@dataclass(frozen=True, slots=True)
class TrainingStep:
    """One training iteration's measurements: loss, validation metrics, norms."""

    run_id: str
    model: str
    ts_ms: int
    step: int
    metrics: Mapping[str, float]
    epoch: int | None = None


# --- field checks -------------------------------------------------------------------------


def _require(obj: Mapping[str, Any], field: str) -> Any:
    try:
        return obj[field]
    except KeyError:
        raise SchemaError(field, "required field is missing", "missing") from None


def _text(value: Any, field: str, max_len: int = MAX_NAME_LEN, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise SchemaError(field, f"expected a string, got {type(value).__name__}", "wrong_type")
    if not value and not allow_empty:
        raise SchemaError(field, "must not be empty", "empty")
    if len(value) > max_len:
        raise SchemaError(field, f"longer than {max_len} characters", "too_long")
    return value


def _number(value: Any, field: str) -> float:
    kind = type(value)
    if kind is float:
        if value - value == 0.0:  # finite: inf - inf and nan - nan are nan
            return value  # type: ignore[no-any-return]
        raise SchemaError(field, f"must be finite, got {value}", "not_finite")
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise SchemaError(field, "number out of range", "out_of_range") from None
    raise SchemaError(field, f"expected a number, got {kind.__name__}", "wrong_type")


def _opt_number(obj: Mapping[str, Any], field: str) -> float | None:
    value = obj.get(field)
    return None if value is None else _number(value, field)


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(field, f"expected an integer, got {type(value).__name__}", "wrong_type")
    return value


def _timestamp_ms(value: Any, field: str = "ts") -> int:
    """Epoch seconds (int or float) or an ISO-8601 string with a zone, to epoch milliseconds."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise SchemaError(
                field,
                f"expected epoch seconds (number) or an ISO-8601 string, got {value!r}",
                "invalid",
            )
        seconds = parsed.timestamp()
    else:
        seconds = _number(value, field)
    if not 0 <= seconds < MAX_EPOCH_SECONDS:
        raise SchemaError(field, f"time out of range (1970 to 3000): {value!r}", "out_of_range")
    return round(seconds * 1000)


def _class_label(value: Any, field: str) -> str:
    """Class labels are compared as strings: 3, "3" and True/1 name the same class."""
    if type(value) is str and 0 < len(value) <= MAX_NAME_LEN:
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return str(value)
    if isinstance(value, str):
        return _text(value, field, MAX_NAME_LEN)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    raise SchemaError(
        field, f"expected a class label (string, integer or bool), got {value!r}", "wrong_type"
    )


def _ranking(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SchemaError(field, "expected a non-empty list of item ids", "wrong_type")
    return tuple(_class_label(v, f"{field}[{i}]") for i, v in enumerate(value))


def _target(task: str, value: Any, field: str) -> str | float | tuple[str, ...]:
    if value is None:
        raise SchemaError(field, "required field is missing", "missing")
    if task == "regression":
        return _number(value, field)
    if task == "ranking":
        return _ranking(value, field)
    label = _class_label(value, field)
    if task == "binary" and label not in ("0", "1"):
        raise SchemaError(field, f"binary labels are 0/1 or false/true, got {value!r}", "invalid")
    return label


def _probabilities(value: Any, field: str = "probabilities") -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise SchemaError(
            field, "expected a non-empty object of class label -> probability", "wrong_type"
        )
    if len(value) > MAX_CLASSES:
        raise SchemaError(field, f"more than {MAX_CLASSES} classes", "too_many")
    out = {}
    for cls, p in value.items():
        p = _number(p, f"{field}.{cls}")
        if not 0.0 <= p <= 1.0:
            raise SchemaError(f"{field}.{cls}", f"probability outside [0, 1]: {p}", "out_of_range")
        out[_class_label(cls, f"{field}.{cls}")] = p
    return out


def _features(value: Any, field: str = "features") -> dict[str, Feature]:
    if not isinstance(value, dict):
        raise SchemaError(
            field, f"expected an object of name -> value, got {type(value).__name__}", "wrong_type"
        )
    if len(value) > MAX_FEATURES:
        raise SchemaError(field, f"more than {MAX_FEATURES} features", "too_many")
    out: dict[str, Feature] = {}
    for name, v in value.items():
        _text(name, f"{field} name", MAX_NAME_LEN)
        if v is None or isinstance(v, str):
            out[name] = v
        elif isinstance(v, list):
            out[name] = _vector(v, f"{field}.{name}")
        elif isinstance(v, bool) or not isinstance(v, int | float):
            raise SchemaError(
                f"{field}.{name}", f"unsupported feature type {type(v).__name__}", "wrong_type"
            )
        else:
            # NaN/inf in a feature is a data-quality fact to measure, not a schema violation;
            # JSON cannot carry them, so they arrive only from non-standard encoders.
            try:
                out[name] = float(v)
            except OverflowError:
                raise SchemaError(
                    f"{field}.{name}", "number out of range", "out_of_range"
                ) from None
    return out


def _vector(value: list[Any], field: str) -> np.ndarray:
    """A list of numbers as a read-only float64 array (an embedding, a small image)."""
    if len(value) > MAX_VECTOR_LEN:
        raise SchemaError(field, f"vector longer than {MAX_VECTOR_LEN}", "too_long")
    try:
        array = np.array(value)
    except ValueError:  # ragged nesting
        raise SchemaError(field, "expected a flat list of numbers", "wrong_type") from None
    if array.ndim != 1 or (array.size and array.dtype.kind not in "fiu"):
        raise SchemaError(field, "expected a flat list of numbers", "wrong_type")
    array = array.astype(np.float64, copy=False)
    array.flags.writeable = False
    return array


def segment_key(value: Any, field: str = "segment") -> str:
    """Canonical segment key: tags sorted by name, ``k=v`` joined by commas; '' for none."""
    if value is None:
        return ""
    if isinstance(value, str):
        return _text(value, field, MAX_NAME_LEN, allow_empty=True)
    if not isinstance(value, dict):
        raise SchemaError(
            field, f"expected an object of tag -> value, got {type(value).__name__}", "wrong_type"
        )
    parts = []
    for k in sorted(value):
        v = value[k]
        if not isinstance(v, str | int) or isinstance(v, bool):
            raise SchemaError(
                f"{field}.{k}", f"tag values are strings or integers, got {v!r}", "wrong_type"
            )
        if _SEGMENT_SEPARATORS.search(k) or _SEGMENT_SEPARATORS.search(str(v)):
            raise SchemaError(
                f"{field}.{k}", "tag names and values may not contain '=' or ','", "invalid"
            )
        parts.append(f"{k}={v}")
    key = ",".join(parts)
    if len(key) > 4 * MAX_NAME_LEN:
        raise SchemaError(field, "segment tags too long", "too_long")
    return key


def _check_version(obj: Mapping[str, Any]) -> None:
    version = obj.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise SchemaError(
            "schema_version",
            f"unsupported version {version!r} (this is {SCHEMA_VERSION})",
            "unsupported",
        )


# --- decoders -------------------------------------------------------------------------------


def decode_prediction(obj: Mapping[str, Any]) -> Prediction:
    """Validate one prediction object (see the module docstring)."""
    fast = _fast_prediction(obj)
    return fast if fast is not None else _decode_prediction(obj)


def _decode_prediction(obj: Mapping[str, Any]) -> Prediction:
    """Every check, in order, each with its own error."""
    _check_version(obj)
    task = _require(obj, "task")
    if task not in TASKS:
        raise SchemaError(
            "task", f"unknown task type {task!r}; expected one of {', '.join(TASKS)}", "invalid"
        )
    probabilities = obj.get("probabilities")
    score = _opt_number(obj, "score")
    if score is not None and task == "binary" and not 0.0 <= score <= 1.0:
        raise SchemaError(
            "score", f"binary score is P(label=1), outside [0, 1]: {score}", "out_of_range"
        )
    features = obj.get("features")
    client_id = obj.get("client_id")
    latency = _opt_number(obj, "latency_ms")
    if latency is not None and latency < 0:
        raise SchemaError("latency_ms", f"must be >= 0, got {latency}", "out_of_range")
    return Prediction(
        event_id=_text(_require(obj, "event_id"), "event_id", MAX_ID_LEN),
        model=_text(_require(obj, "model"), "model"),
        model_version=_text(obj.get("model_version", ""), "model_version", allow_empty=True),
        ts_ms=_timestamp_ms(_require(obj, "ts")),
        task=task,
        prediction=_target(task, obj.get("prediction"), "prediction"),
        score=score,
        probabilities=None if probabilities is None else _probabilities(probabilities),
        features=None if features is None else _features(features),
        segment=segment_key(obj.get("segment")),
        latency_ms=latency,
        client_id=None if client_id is None else _text(client_id, "client_id", MAX_ID_LEN),
    )


_PLAIN_FEATURE_TYPES: Final = frozenset({float, str, type(None)})
_STR_TYPE: Final = frozenset({str})
_SEGMENT_KEYS: dict[tuple[tuple[str, str], ...], str] = {}
#: Tuples of feature names that passed the checks (one producer sends the same names in
#: every event); like the segment keys, dropped whole when full.
_FEATURE_NAMES: set[tuple[str, ...]] = set()
_NAMES_CACHE_MAX: Final = 4096


def _fast_prediction(obj: Mapping[str, Any]) -> Prediction | None:
    """The common case of :func:`decode_prediction` with fewer calls: a classification
    prediction whose every field has its plain JSON type (floats, strings, one-level segment
    tags). Returns None, deciding nothing, for anything else or anything invalid; the full
    decoder then accepts it or names the offending field. Whatever it returns equals what the
    full decoder returns for the same object."""
    get = obj.get
    version = get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        return None
    task = get("task")
    if task != "binary" and task != "multiclass":
        return None
    event_id = get("event_id")
    model = get("model")
    model_version = get("model_version", "")
    if (
        type(event_id) is not str
        or not 0 < len(event_id) <= MAX_ID_LEN
        or type(model) is not str
        or not 0 < len(model) <= MAX_NAME_LEN
        or type(model_version) is not str
        or len(model_version) > MAX_NAME_LEN
    ):
        return None
    ts = get("ts")
    kind = type(ts)
    if kind is float:
        if not 0.0 <= ts < MAX_EPOCH_SECONDS:  # NaN fails too
            return None
    elif kind is int:
        if not 0 <= ts < MAX_EPOCH_SECONDS:
            return None
        ts = float(ts)
    else:
        return None
    prediction = get("prediction")
    if type(prediction) is not str or not 0 < len(prediction) <= MAX_NAME_LEN:
        return None
    if task == "binary" and prediction != "0" and prediction != "1":
        return None
    score = get("score")
    if score is not None:
        if type(score) is not float:
            return None
        if task == "binary":
            if not 0.0 <= score <= 1.0:
                return None
        elif score - score != 0.0:
            return None
    latency = get("latency_ms")
    if latency is not None and (type(latency) is not float or not 0.0 <= latency < math.inf):
        return None
    client_id = get("client_id")
    if client_id is not None and (
        type(client_id) is not str or not 0 < len(client_id) <= MAX_ID_LEN
    ):
        return None
    probabilities = get("probabilities")
    if probabilities is not None:
        if type(probabilities) is not dict or not 0 < len(probabilities) <= MAX_CLASSES:
            return None
        for cls, p in probabilities.items():
            if (
                type(p) is not float
                or not 0.0 <= p <= 1.0
                or type(cls) is not str
                or not 0 < len(cls) <= MAX_NAME_LEN
            ):
                return None
        probabilities = dict(probabilities)
    features = get("features")
    if features is not None:
        if type(features) is not dict or len(features) > MAX_FEATURES:
            return None
        if features:
            names = tuple(features)
            if names not in _FEATURE_NAMES:
                if (
                    set(map(type, names)) != _STR_TYPE
                    or min(map(len, names)) == 0
                    or max(map(len, names)) > MAX_NAME_LEN
                ):
                    return None
                if len(_FEATURE_NAMES) >= _NAMES_CACHE_MAX:
                    _FEATURE_NAMES.clear()
                _FEATURE_NAMES.add(names)
            if not set(map(type, features.values())) <= _PLAIN_FEATURE_TYPES:
                return None
        features = dict(features)
    segment = get("segment")
    if segment is None:
        segment = ""
    elif type(segment) is str:
        if len(segment) > MAX_NAME_LEN:
            return None
    elif type(segment) is dict:
        items = tuple(segment.items())
        for k, v in items:
            if type(k) is not str or type(v) is not str:
                return None  # only exact strings: 1, 1.0 and True are equal as cache keys
        key = _SEGMENT_KEYS.get(items)
        if key is None:
            try:
                key = segment_key(segment)
            except SchemaError:
                return None
            if len(_SEGMENT_KEYS) >= _NAMES_CACHE_MAX:
                _SEGMENT_KEYS.clear()
            _SEGMENT_KEYS[items] = key
        segment = key
    else:
        return None
    return Prediction(
        event_id=event_id,
        model=model,
        model_version=model_version,
        ts_ms=round(ts * 1000),
        task=task,
        prediction=prediction,
        score=score,
        probabilities=probabilities,
        features=features,
        segment=segment,
        latency_ms=latency,
        client_id=client_id,
    )


def decode_label(obj: Mapping[str, Any]) -> Label:
    """Validate one label object. The label's type is checked against the prediction's task
    when the two are joined, since a label source need not know the task."""
    get = obj.get
    version = get("schema_version", SCHEMA_VERSION)
    value = get("label")
    event_id = get("event_id")
    model = get("model")
    if (  # the common case with fewer calls; anything else takes the full path below
        type(version) is int
        and version == SCHEMA_VERSION
        and type(value) is str
        and 0 < len(value) <= MAX_NAME_LEN
        and type(event_id) is str
        and 0 < len(event_id) <= MAX_ID_LEN
        and (model is None or (type(model) is str and 0 < len(model) <= MAX_NAME_LEN))
    ):
        ts = get("ts")
        kind = type(ts)
        if kind is float and 0.0 <= ts < MAX_EPOCH_SECONDS:
            return Label(event_id=event_id, ts_ms=round(ts * 1000), label=value, model=model)
        if kind is int and 0 <= ts < MAX_EPOCH_SECONDS:
            return Label(event_id=event_id, ts_ms=round(ts * 1000.0), label=value, model=model)
    return _decode_label(obj)


def _decode_label(obj: Mapping[str, Any]) -> Label:
    """Every check of :func:`decode_label`, in order, each with its own error."""
    _check_version(obj)
    value = obj.get("label")
    if value is None:
        raise SchemaError("label", "required field is missing", "missing")
    if isinstance(value, list):
        label: str | float | tuple[str, ...] = _ranking(value, "label")
    elif (isinstance(value, float) and not (value.is_integer() and abs(value) < 2**53)) or (
        type(value) is int and not -(2**63) <= value < 2**63
    ):
        label = _number(value, "label")  # a regression target
    else:
        label = _class_label(value, "label")
    model = obj.get("model")
    return Label(
        event_id=_text(_require(obj, "event_id"), "event_id", MAX_ID_LEN),
        ts_ms=_timestamp_ms(_require(obj, "ts")),
        label=label,
        model=None if model is None else _text(model, "model"),
    )


def decode_interaction(obj: Mapping[str, Any]) -> Interaction:
    """Validate one business interaction."""
    _check_version(obj)
    kind = _require(obj, "kind")
    if kind not in INTERACTION_KINDS:
        raise SchemaError(
            "kind", f"unknown interaction {kind!r}; expected one of {INTERACTION_KINDS}", "invalid"
        )
    prediction_id = obj.get("prediction_id")
    value = obj.get("value", 1.0)
    return Interaction(
        event_id=_text(_require(obj, "event_id"), "event_id", MAX_ID_LEN),
        model=_text(_require(obj, "model"), "model"),
        ts_ms=_timestamp_ms(_require(obj, "ts")),
        kind=kind,
        variant=_text(obj.get("variant", ""), "variant", allow_empty=True),
        value=_number(value, "value"),
        prediction_id=None
        if prediction_id is None
        else _text(prediction_id, "prediction_id", MAX_ID_LEN),
        segment=segment_key(obj.get("segment")),
    )


def decode_training_step(obj: Mapping[str, Any]) -> TrainingStep:
    """Validate one training step. Non-finite metric values are rejected here because JSON
    cannot carry them; producers report a NaN loss as the string "nan" in ``metrics``."""
    _check_version(obj)
    metrics = _require(obj, "metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise SchemaError("metrics", "expected a non-empty object of name -> number", "wrong_type")
    parsed: dict[str, float] = {}
    for name, v in metrics.items():
        _text(name, "metrics name")
        if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
            parsed[name] = float(v)
        else:
            parsed[name] = float(_number(v, f"metrics.{name}"))
    epoch = obj.get("epoch")
    return TrainingStep(
        run_id=_text(_require(obj, "run_id"), "run_id", MAX_ID_LEN),
        model=_text(_require(obj, "model"), "model"),
        ts_ms=_timestamp_ms(_require(obj, "ts")),
        step=_int(_require(obj, "step"), "step"),
        metrics=parsed,
        epoch=None if epoch is None else _int(epoch, "epoch"),
    )


DECODERS: Final[dict[str, Callable[[Mapping[str, Any]], Any]]] = {
    "prediction": decode_prediction,
    "label": decode_label,
    "interaction": decode_interaction,
    "training": decode_training_step,
}
