"""JSON Schema (draft 2020-12) for the event contracts, for producers in other languages.

The schemas are built here from the limits in :mod:`schemas.events` and exported to
``schemas/json/<kind>.json`` (one event) and ``schemas/json/<kind>-envelope.json`` (an envelope
of events of that kind). Regenerate them with ``python -m schemas.jsonschema [DIR]``.

>>> schema_for("prediction")["$id"]
'https://modelmon.dev/schemas/v1/prediction.json'
>>> envelope_schema_for("label")["properties"]["kind"]
{'const': 'label', 'description': 'The event kind of every event in ``events``.'}

Validators must assert ``format`` (in draft 2020-12 it is only an annotation by default):
``ts`` strings are checked by ``format: date-time``.

Differences from the Python validators
--------------------------------------
JSON Schema cannot express these rules exactly; the Python decoders are authoritative.

1. ``ts`` strings. The schema asks for an RFC 3339 ``date-time``, which requires ``Z`` or a
   ``±HH:MM`` offset. Python accepts what :meth:`datetime.datetime.fromisoformat` reads with a
   zone. Both read the canonical form ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`` (offset
   minutes 00-59) alike. Outside it only Python accepts, e.g. a space separator, the basic
   format ``20240101T000000Z``, offsets without a colon (``+0100``) or with minutes over 59
   (``+00:90``), reduced precision (``T10:00Z``), a comma before the fraction and week dates;
   and some format checkers (the Python ``jsonschema`` one among them) accept a lower-case
   ``t``/``z`` or a trailing newline, which Python rejects.
2. Integers. JSON Schema cannot tell ``1`` from ``1.0`` (an ``integer`` is any number with a
   zero fraction), so the schema accepts an integral float for ``step``, ``epoch`` and a
   ``segment`` tag value, which Python rejects. Class labels accept an integral float in
   both, but in Python only below 2**53 in magnitude (beyond it a float no longer names one
   integer), in the schema up to 2**63.
3. ``segment`` objects. Python also caps the canonical key (``k=v`` pairs sorted by tag and
   joined by commas) at ``4 * MAX_NAME_LEN`` characters; the schema cannot measure it.
4. Non-finite numbers. JSON has no NaN or Infinity, so the schema says nothing about them;
   Python rejects them everywhere except as feature values (``metrics`` take them as strings).

An event object must not carry an ``events`` member: the codec reads such a
message as an envelope. An envelope's ``count``, when present, must equal the number of its
events: the schema checks only that it is a count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from schemas.events import (
    INTERACTION_KINDS,
    MAX_CLASSES,
    MAX_EPOCH_SECONDS,
    MAX_FEATURES,
    MAX_ID_LEN,
    MAX_NAME_LEN,
    MAX_VECTOR_LEN,
    SCHEMA_VERSION,
    TASKS,
)

DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
BASE_URI: Final = f"https://modelmon.dev/schemas/v{SCHEMA_VERSION}/"
KINDS: Final = ("prediction", "label", "interaction", "training")
DEFAULT_DIR: Final = Path(__file__).parent / "json"
# The strings ``decode_training_step`` reads as non-finite metric values (case-insensitive).
NON_FINITE_WORDS: Final = ("nan", "inf", "-inf", "infinity", "-infinity")

Schema = dict[str, Any]


# --- building blocks ------------------------------------------------------------------------


def _text(description: str, max_len: int = MAX_NAME_LEN, min_len: int = 1) -> Schema:
    return {
        "type": "string",
        "minLength": min_len,
        "maxLength": max_len,
        "description": description,
    }


def _nullable(schema: Schema) -> Schema:
    """``schema`` or JSON null (Python treats an explicit null as an absent optional field)."""
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*types, "null"]}


def _ci_word(word: str) -> Schema:
    """A string equal to ``word`` ignoring ASCII case; the length bound keeps engines whose
    ``$`` also matches before a final newline exact."""
    letters = "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)
    return {
        "type": "string",
        "pattern": f"^{letters}$",
        "minLength": len(word),
        "maxLength": len(word),
    }


def _version() -> Schema:
    return {
        "const": SCHEMA_VERSION,
        "description": f"Contract version; {SCHEMA_VERSION} when present.",
    }


def _timestamp() -> Schema:
    return {
        "description": (
            "When the event happened: epoch seconds (a number, fractions allowed, from 1970 up to"
            " but excluding the year 3000) or an ISO-8601 / RFC 3339 date-time string with a"
            " zone (Z or ±HH:MM), e.g. 2024-05-01T12:00:00.250Z."
        ),
        "anyOf": [
            {"type": "number", "minimum": 0, "exclusiveMaximum": MAX_EPOCH_SECONDS},
            {"type": "string", "format": "date-time", "pattern": "^(19[7-9][0-9]|2[0-9]{3})-"},
        ],
    }


def _class_label(description: str = "A class label.") -> Schema:
    return {
        "type": ["string", "integer", "boolean"],
        "minLength": 1,
        "maxLength": MAX_NAME_LEN,
        "minimum": -(2**63),
        "maximum": 2**63 - 1,
        "description": (
            f'{description} Compared as strings: 3, 3.0 and "3" name the same class, and'
            ' true/false are "1"/"0".'
        ),
    }


def _ranking(description: str) -> Schema:
    return {
        "type": "array",
        "minItems": 1,
        "items": _class_label("An item id."),
        "description": description,
    }


def _segment() -> Schema:
    return {
        "type": ["string", "object", "null"],
        "maxLength": MAX_NAME_LEN,
        "propertyNames": {"pattern": "^[^=,]*$"},
        "additionalProperties": {"type": ["string", "integer"], "pattern": "^[^=,]*$"},
        "description": (
            "The slice metrics are grouped by: a string (empty or null for none) or an object of"
            " tag -> string or integer (neither containing '=' or ','), canonicalised as k=v"
            " pairs sorted by tag and joined by"
            f" commas, at most {4 * MAX_NAME_LEN} characters in all."
        ),
    }


def _event(
    kind: str,
    title: str,
    description: str,
    required: list[str],
    properties: dict[str, Schema],
    **extra: Any,
) -> Schema:
    return {
        "$schema": DRAFT,
        "$id": f"{BASE_URI}{kind}.json",
        "title": title,
        "description": (
            f"{description} Unknown members are ignored. As a single message, the object must"
            " not have an 'events' member (that makes it an envelope)."
        ),
        "type": "object",
        "required": required,
        "properties": {"schema_version": _version(), **properties},
        **extra,
    }


# --- event schemas -------------------------------------------------------------------------


def _prediction() -> Schema:
    targets: dict[str, Schema] = {
        "regression": {"type": "number", "description": "The predicted value."},
        "ranking": _ranking("Item ids, best first."),
        "binary": {
            "enum": [0, 1, False, True, "0", "1"],
            "description": 'The predicted class: 0/1, false/true or "0"/"1".',
        },
        "multiclass": _class_label("The predicted class."),
    }
    assert set(targets) == set(TASKS), "a task without a prediction schema"
    rules: list[Schema] = [
        {
            "if": {"required": ["task"], "properties": {"task": {"const": task}}},
            "then": {"properties": {"prediction": targets[task]}},
        }
        for task in TASKS
    ]
    rules.append(
        {
            "if": {"required": ["task"], "properties": {"task": {"const": "binary"}}},
            "then": {"properties": {"score": {"minimum": 0, "maximum": 1}}},
        }
    )
    feature_value: Schema = {
        "type": ["number", "string", "null", "array"],
        "maxItems": MAX_VECTOR_LEN,
        "items": {"type": "number"},
        "description": (
            "A numeric, categorical (string) or missing (null) value, or an embedding vector"
            f" of at most {MAX_VECTOR_LEN} numbers."
        ),
    }
    return _event(
        "prediction",
        "Prediction",
        "One model output, joined later with its label by event_id.",
        ["event_id", "model", "ts", "task", "prediction"],
        {
            "event_id": _text(
                "Unique id of this prediction; labels and interactions refer to it.", MAX_ID_LEN
            ),
            "model": _text("Name of the model that made the prediction."),
            "model_version": _text("Version of the model; empty when unversioned.", min_len=0),
            "ts": _timestamp(),
            "task": {
                "enum": list(TASKS),
                "description": "What kind of output the model makes;"
                " decides the type of 'prediction'.",
            },
            "prediction": {
                "description": (
                    "The output. regression: a number; ranking: a non-empty list of item ids;"
                    ' binary: 0/1, false/true or "0"/"1"; multiclass: a class label'
                    " (string, integer or boolean). Must not be null."
                ),
            },
            "score": _nullable(
                {
                    "type": "number",
                    "description": "The model's score; for a binary task P(label=1), in [0, 1].",
                }
            ),
            "probabilities": _nullable(
                {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": MAX_CLASSES,
                    "propertyNames": {"minLength": 1, "maxLength": MAX_NAME_LEN},
                    "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                    "description": (
                        f"Class label -> probability in [0, 1], for at most {MAX_CLASSES} classes."
                    ),
                }
            ),
            "features": _nullable(
                {
                    "type": "object",
                    "maxProperties": MAX_FEATURES,
                    "propertyNames": {"minLength": 1, "maxLength": MAX_NAME_LEN},
                    "additionalProperties": feature_value,
                    "description": f"Input feature name -> value, at most {MAX_FEATURES} features.",
                }
            ),
            "segment": _segment(),
            "latency_ms": _nullable(
                {
                    "type": "number",
                    "minimum": 0,
                    "description": "Time the model took to answer, in milliseconds.",
                }
            ),
            "client_id": _nullable(_text("Id of the caller (user, session, device).", MAX_ID_LEN)),
        },
        allOf=rules,
    )


def _label() -> Schema:
    return _event(
        "label",
        "Label",
        "Ground truth for the prediction with the same event_id. Its type is checked against"
        " the prediction's task when the two are joined.",
        ["event_id", "ts", "label"],
        {
            "event_id": _text("Id of the prediction this label is for.", MAX_ID_LEN),
            "ts": _timestamp(),
            "label": {
                "type": ["number", "boolean", "string", "array"],
                "minLength": 1,
                "maxLength": MAX_NAME_LEN,
                "minItems": 1,
                "items": _class_label("An item id."),
                "description": (
                    "The true outcome: a class label (string, integer or boolean), a number"
                    " (regression) or a non-empty list of item ids (ranking). Must not be null."
                ),
            },
            "model": _nullable(_text("Name of the model, when the label source knows it.")),
        },
    )


def _interaction() -> Schema:
    return _event(
        "interaction",
        "Interaction",
        "A business event tied to a prediction or an experiment variant.",
        ["event_id", "model", "ts", "kind"],
        {
            "event_id": _text("Unique id of this interaction.", MAX_ID_LEN),
            "model": _text("Name of the model the interaction is attributed to."),
            "ts": _timestamp(),
            "kind": {"enum": list(INTERACTION_KINDS), "description": "What happened."},
            "variant": _text("Experiment variant; empty when none.", min_len=0),
            "value": {
                "type": "number",
                "description": "Business value of the interaction (e.g. revenue); 1 when absent.",
            },
            "prediction_id": _nullable(
                _text("event_id of the prediction that led to it.", MAX_ID_LEN)
            ),
            "segment": _segment(),
        },
    )


def _training() -> Schema:
    return _event(
        "training",
        "TrainingStep",
        "One training iteration's measurements.",
        ["run_id", "model", "ts", "step", "metrics"],
        {
            "run_id": _text("Id of the training run.", MAX_ID_LEN),
            "model": _text("Name of the model being trained."),
            "ts": _timestamp(),
            "step": {"type": "integer", "description": "Training step (iteration) number."},
            "metrics": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"minLength": 1, "maxLength": MAX_NAME_LEN},
                "additionalProperties": {
                    "anyOf": [{"type": "number"}, *map(_ci_word, NON_FINITE_WORDS)],
                },
                "description": (
                    "Metric name -> value (loss, validation metrics, norms). A non-finite value"
                    " is sent as one of the strings "
                    + ", ".join(f'"{w}"' for w in NON_FINITE_WORDS)
                    + " (any letter case)."
                ),
            },
            "epoch": _nullable({"type": "integer", "description": "Epoch number."}),
        },
    )


_BUILDERS: Final = {
    "prediction": _prediction,
    "label": _label,
    "interaction": _interaction,
    "training": _training,
}


# --- public API -----------------------------------------------------------------------------


def schema_for(kind: str) -> Schema:
    """The JSON Schema of one event of ``kind`` (a fresh dict)."""
    try:
        return _BUILDERS[kind]()
    except KeyError:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {KINDS}") from None


def envelope_schema_for(kind: str) -> Schema:
    """The JSON Schema of an envelope of ``kind`` events; the event schema is bundled."""
    event = schema_for(kind)
    return {
        "$schema": DRAFT,
        "$id": f"{BASE_URI}{kind}-envelope.json",
        "title": f"{event['title']} envelope",
        "description": f"Many {kind} events in one message.",
        "type": "object",
        "required": ["schema_version", "kind", "events"],
        "properties": {
            "schema_version": {
                "const": SCHEMA_VERSION,
                "description": f"Contract version; must be {SCHEMA_VERSION}.",
            },
            "kind": {"const": kind, "description": "The event kind of every event in ``events``."},
            "count": {
                "type": "integer",
                "minimum": 0,
                "description": "The number of events in ``events``, which it must equal; optional.",
            },
            "events": {
                "type": "array",
                "items": {"$ref": f"{kind}.json"},
                "description": f"The {kind} events, each valid on its own.",
            },
        },
        "$defs": {kind: event},
    }


def render(schema: Schema) -> str:
    """The committed text of a schema: sorted keys, indent 2, trailing newline."""
    return json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def exported() -> dict[str, Schema]:
    """File name -> schema, for every file :func:`export` writes."""
    out: dict[str, Schema] = {}
    for kind in KINDS:
        out[f"{kind}.json"] = schema_for(kind)
        out[f"{kind}-envelope.json"] = envelope_schema_for(kind)
    return out


def export(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Write every schema into ``directory`` (created if missing); returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in exported().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m schemas.jsonschema [DIR]``: regenerate the schema files."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: python -m schemas.jsonschema [DIR]", file=sys.stderr)
        return 2
    for path in export(Path(args[0]) if args else DEFAULT_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
