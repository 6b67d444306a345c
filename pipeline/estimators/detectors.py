"""Online concept-drift detectors: River's ADWIN, Page-Hinkley and KSWIN with JSON state.

A :class:`Detector` runs one River detector over one stream of numbers and reports where it
fired. Its state is plain JSON (no pickle: a pickled state read back from a topic or a table
would let whoever wrote it run code in the worker), and restoring it continues the stream
exactly: the same firings at the same positions as a detector that never stopped.

The state reads and writes River's private attributes, which are not a stable format: this
module is the only one that touches them, River is pinned to one version in
``pyproject.toml``, and ``tests/unit/test_detectors.py`` records a digest of the River code
they belong to (and of ADWIN's window encoding), failing when the installed River differs. A
state records the River version and the :data:`STATE_FORMAT` that wrote it, and
:meth:`Detector.from_state` refuses any other, as it refuses a malformed state.
"""

from __future__ import annotations

import base64
import collections
import importlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import river

if TYPE_CHECKING:
    from river import drift

__all__ = ["DETECTORS", "STATE_FORMAT", "Detector", "DetectorSpec", "Firing", "river_classes"]

#: Version of the encoding :meth:`Detector.to_state` writes. Raise it whenever a codec below
#: changes what it writes or how it reads it: a state is only read by the codec that wrote it.
STATE_FORMAT = 1


@dataclass(frozen=True)
class Firing:
    """One drift signal.

    Parameters
    ----------
    detector
        The detector's name in :data:`DETECTORS`.
    position
        0-based index, in this detector's stream, of the value after which it fired.
    params
        The detector's constructor parameters, so the signal can be reproduced.
    """

    detector: str
    position: int
    params: dict[str, Any]


# --- reading a state's fields: exactly the types the codecs write -------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    # An int beyond 2**1023 has no float: math.isfinite would raise on it.
    return (_is_int(v) and abs(v) < 2**1023) or (isinstance(v, float) and math.isfinite(v))


def _json_float(x: float) -> float | str:
    # JSON has no infinities (Page-Hinkley starts its running minimum at +inf); _real reads
    # the "inf" string back.
    x = float(x)
    return x if math.isfinite(x) else repr(x)


def _flag(s: Mapping[str, Any], key: str) -> bool:
    v = s[key]
    if not isinstance(v, bool):
        raise ValueError(f"{key}: expected true or false, got {v!r}")
    return v


def _count(s: Mapping[str, Any], key: str) -> int:
    v = s[key]
    if not (_is_int(v) and v >= 0):
        raise ValueError(f"{key}: expected an integer >= 0, got {v!r}")
    return int(v)


def _real(s: Mapping[str, Any], key: str) -> float:
    v = s[key]
    if not (_is_real(v) or v in ("inf", "-inf", "nan")):
        raise ValueError(f"{key}: expected a number, got {v!r}")
    return float(v)


# --- state codecs: the only code that touches River's private attributes ------------------


def _adwin_dump(d: drift.ADWIN) -> dict[str, Any]:
    # The window lives in a Rust object whose __getstate__ is its own byte encoding.
    window = base64.b64encode(d._helper.__getstate__()).decode("ascii")
    return {"drift_detected": bool(d._drift_detected), "window": window}


def _adwin_load(d: drift.ADWIN, s: Mapping[str, Any]) -> None:
    d._drift_detected = _flag(s, "drift_detected")
    if not isinstance(s["window"], str):
        raise ValueError(f"window: expected base64 text, got {s['window']!r}")
    raw = base64.b64decode(s["window"], validate=True)
    try:
        d._helper.__setstate__(raw)
    except BaseException as exc:
        # Bytes that do not decode make River's Rust code panic, which pyo3 raises as its
        # PanicException: a BaseException, so that `except Exception` lets it through.
        if type(exc).__name__ != "PanicException":
            raise
        raise ValueError(f"window: not an ADWIN window ({exc})") from None
    if d._helper.__getstate__() != raw:  # decoding ignores bytes after the window
        raise ValueError("window: bytes after the end of the ADWIN window")


def _ph_dump(d: drift.PageHinkley) -> dict[str, Any]:
    return {
        "drift_detected": bool(d._drift_detected),
        "mean_n": _json_float(d._x_mean.n),
        "mean": _json_float(d._x_mean._mean),
        "sum_increase": _json_float(d._sum_increase),
        "sum_decrease": _json_float(d._sum_decrease),
        "min_increase": _json_float(d._min_increase),
        "max_decrease": _json_float(d._max_decrease),
    }


def _ph_load(d: drift.PageHinkley, s: Mapping[str, Any]) -> None:
    # The instance comes from the constructor, so _test_drift is already bound from `mode`.
    d._drift_detected = _flag(s, "drift_detected")
    d._x_mean.n = _real(s, "mean_n")
    d._x_mean._mean = _real(s, "mean")
    d._sum_increase = _real(s, "sum_increase")
    d._sum_decrease = _real(s, "sum_decrease")
    d._min_increase = _real(s, "min_increase")
    d._max_decrease = _real(s, "max_decrease")


def _kswin_dump(d: drift.KSWIN) -> dict[str, Any]:
    version, internal, gauss_next = d._rng.getstate()
    return {
        "drift_detected": bool(d._drift_detected),
        "n": int(d.n),
        "p_value": float(d.p_value),
        "window": [float(x) for x in d.window],
        "rng": [version, list(internal), gauss_next],
    }


def _kswin_load(d: drift.KSWIN, s: Mapping[str, Any]) -> None:
    d._drift_detected = _flag(s, "drift_detected")
    d.n = _count(s, "n")
    d.p_value = _real(s, "p_value")
    window = s["window"]
    if not (
        isinstance(window, list)
        and len(window) <= d.window_size
        and all(_is_real(x) for x in window)
    ):
        raise ValueError(f"window: expected at most {d.window_size} finite numbers")
    d.window = collections.deque(map(float, window), maxlen=d.window_size)
    state = s["rng"]
    if not (isinstance(state, list) and len(state) == 3):
        raise ValueError("rng: expected [version, internal state, gauss_next]")
    version, internal, gauss_next = state
    # Random.setstate takes an older version's state, and any gauss_next, without a word.
    if not (
        _is_int(version)
        and version == random.Random.VERSION
        and isinstance(internal, list)
        and len(internal) == 625
        and all(_is_int(i) and 0 <= i < 2**32 for i in internal)
        and internal[-1] <= 624
        and (gauss_next is None or _is_real(gauss_next))
    ):
        raise ValueError("rng: not the state of a random.Random")
    rng = random.Random()
    rng.setstate((version, tuple(internal), gauss_next))
    d._rng = rng


# --- parameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """What a detector parameter may be: ``text`` says it, ``ok(value, params)`` checks it
    (``params`` are all the detector's, for rules that depend on another one)."""

    text: str
    ok: Callable[[Any, Mapping[str, Any]], bool]


#: River's ADWIN keeps its integers in 32 bits: a larger one fails at construction.
_I32 = 2**31 - 1


def _integer(lo: int, hi: int = _I32) -> Rule:
    return Rule(f"an integer in [{lo}, {hi}]", lambda v, _: _is_int(v) and lo <= v <= hi)


_PROBABILITY = Rule("a number in (0, 1)", lambda v, _: _is_real(v) and 0 < v < 1)


@dataclass(frozen=True)
class DetectorSpec:
    """How to build one River detector and move its state to and from JSON.

    ``river_name`` names the class in ``river.drift``, imported on first use: that package
    also imports River's datasets, and with them scikit-learn, pandas and pyarrow (about
    0.4 s and 80 MiB), which processes that never run a detector (the sink, the CLI) skip.
    ``defaults`` are River's own constructor defaults and the only parameters accepted;
    ``rules`` say what each may be. They are narrower than River's where River accepts a
    value it cannot run with: ADWIN panics on its first update with ``clock=0`` and aborts
    the process allocating ``max_buckets=2**40``; KSWIN fails once its window is full with a
    ``stat_size`` above half its ``window_size``.
    """

    river_name: str
    defaults: Mapping[str, Any]
    rules: Mapping[str, Rule]
    dump: Callable[[Any], dict[str, Any]]
    load: Callable[[Any, Mapping[str, Any]], None]

    @property
    def river_class(self) -> type:
        return getattr(importlib.import_module("river.drift"), self.river_name)  # type: ignore[no-any-return]


#: Detector name -> River class, default parameters (River's), their rules and state codec.
#: KSWIN's ``window`` argument (pre-collected data) is not offered: it is state, not
#: configuration. KSWIN re-creates its generator from ``seed`` after every firing, so with
#: River's ``seed=None`` no run could be repeated or restored: :class:`Detector` replaces
#: ``None`` by a seed drawn once from the OS and records it in ``params``.
DETECTORS: dict[str, DetectorSpec] = {
    "adwin": DetectorSpec(
        river_name="ADWIN",
        defaults={
            "delta": 0.002,
            "clock": 32,
            "max_buckets": 5,
            "min_window_length": 5,
            "grace_period": 10,
        },
        rules={
            "delta": _PROBABILITY,
            "clock": _integer(1),
            "max_buckets": _integer(1, 1000),
            "min_window_length": _integer(1),
            "grace_period": _integer(0),
        },
        dump=_adwin_dump,
        load=_adwin_load,
    ),
    "page_hinkley": DetectorSpec(
        river_name="PageHinkley",
        defaults={
            "min_instances": 30,
            "delta": 0.005,
            "threshold": 50.0,
            "alpha": 1 - 0.0001,
            "mode": "both",
        },
        rules={
            "min_instances": _integer(1),
            "delta": Rule("a number >= 0", lambda v, _: _is_real(v) and v >= 0),
            "threshold": Rule("a number > 0", lambda v, _: _is_real(v) and v > 0),
            "alpha": Rule("a number in (0, 1]", lambda v, _: _is_real(v) and 0 < v <= 1),
            "mode": Rule("'up', 'down' or 'both'", lambda v, _: v in ("up", "down", "both")),
        },
        dump=_ph_dump,
        load=_ph_load,
    ),
    "kswin": DetectorSpec(
        river_name="KSWIN",
        defaults={"alpha": 0.005, "window_size": 100, "stat_size": 30, "seed": None},
        rules={
            "alpha": _PROBABILITY,
            "window_size": _integer(2),
            "stat_size": Rule(
                "an integer in [1, window_size / 2]",
                lambda v, p: _is_int(v) and 1 <= 2 * v <= p["window_size"],
            ),
            "seed": Rule("an integer", lambda v, _: _is_int(v)),
        },
        dump=_kswin_dump,
        load=_kswin_load,
    ),
}


def river_classes(names: Sequence[str]) -> list[type]:
    """The River classes of these detectors. A worker that runs detectors calls it at start,
    so that River's drift package (0.4 s to import) is not imported in its first flush."""
    return [DETECTORS[name].river_class for name in names]


class Detector:
    """One River drift detector over one stream of numbers, with JSON state.

    Parameters
    ----------
    name
        A key of :data:`DETECTORS`: ``"adwin"``, ``"page_hinkley"`` or ``"kswin"``.
    **params
        River constructor parameters overriding the defaults in :data:`DETECTORS`; a value
        outside its rule there raises ``ValueError``.

    Examples
    --------
    >>> import orjson
    >>> rng = np.random.default_rng(7)
    >>> stream = np.concatenate([rng.normal(0.0, 1.0, 1000), rng.normal(2.0, 1.0, 1000)])
    >>> d = Detector("adwin")
    >>> d.update(stream[:600])
    []
    >>> restored = Detector.from_state(orjson.loads(orjson.dumps(d.to_state())))
    >>> [(f.detector, f.position) for f in restored.update(stream[600:])]
    [('adwin', 1023)]
    >>> restored.position
    2000
    """

    def __init__(self, name: str, **params: Any) -> None:
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}")
        spec = DETECTORS[name]
        unknown = set(params) - set(spec.defaults)
        if unknown:
            raise ValueError(f"unknown parameters for {name!r}: {sorted(unknown)}")
        self.name = name
        self.params: dict[str, Any] = {**spec.defaults, **params}
        if self.params.get("seed", 0) is None:
            self.params["seed"] = random.SystemRandom().randrange(2**32)
        for key, rule in spec.rules.items():
            if not rule.ok(self.params[key], self.params):
                raise ValueError(
                    f"{name} parameter {key!r} must be {rule.text}, got {self.params[key]!r}"
                )
        self._river = spec.river_class(**self.params)
        self._position = 0

    @property
    def position(self) -> int:
        """Number of values seen so far (the position the next value will have)."""
        return self._position

    def update(self, values: Sequence[float] | np.ndarray) -> list[Firing]:
        """Feed ``values`` in order; return the firings they caused.

        Raises ``ValueError`` (leaving the state untouched) unless ``values`` is a flat
        sequence of finite numbers.
        """
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("values must be finite")
        firings = []
        detector = self._river
        for value in x.tolist():
            detector.update(value)
            if detector.drift_detected:
                firings.append(Firing(self.name, self._position, dict(self.params)))
            self._position += 1
        return firings

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable state: name, parameters, position, the state format and River
        version that wrote it, and the River detector's state."""
        return {
            "name": self.name,
            "params": dict(self.params),
            "position": self._position,
            "format": STATE_FORMAT,
            "river_version": river.__version__,
            "detector": DETECTORS[self.name].dump(self._river),
        }

    @classmethod
    def from_state(cls, state: Any) -> Detector:
        """Rebuild a detector from :meth:`to_state` output (after a JSON round trip).

        Raises ``ValueError``, saying why, for a state it cannot restore: one written by
        another state format or River version, or not one :meth:`to_state` writes (missing or
        mistyped fields, an unknown detector, parameters out of their rules, a window that
        does not decode).
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"a detector state is a JSON object, got {type(state).__name__}")
        written = state.get("format")
        if not (_is_int(written) and written == STATE_FORMAT):
            raise ValueError(f"state format {written!r}, this one reads {STATE_FORMAT}")
        if state.get("river_version") != river.__version__:
            raise ValueError(
                f"state written by river {state.get('river_version')!r}, "
                f"running {river.__version__}"
            )
        try:
            if not isinstance(state["params"], Mapping):
                raise ValueError(f"params: expected a JSON object, got {state['params']!r}")
            d = cls(state["name"], **state["params"])
            d._position = _count(state, "position")
            DETECTORS[d.name].load(d._river, state["detector"])
        except KeyError as exc:
            raise ValueError(f"malformed detector state: no field {exc}") from None
        except TypeError as exc:
            raise ValueError(f"malformed detector state: {exc}") from None
        return d
