"""Online concept-drift detectors: River's ADWIN, Page-Hinkley and KSWIN with JSON state.

A :class:`Detector` runs one River detector over one stream of numbers and reports where it
fired. Its state is plain JSON (no pickle: a pickled state read back from a topic or a table
would let whoever wrote it run code in the worker), and restoring it continues the stream
exactly: the same firings at the same positions as a detector that never stopped.

The state reads River's private attributes, which are not a stable format: a state records the
River version that wrote it and :meth:`Detector.from_state` refuses one from another version.
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

__all__ = ["DETECTORS", "Detector", "DetectorSpec", "Firing", "river_classes"]


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


def _json_float(x: float) -> float | str:
    # JSON has no infinities (Page-Hinkley starts its running minimum at +inf); float() reads
    # the "inf" string back.
    x = float(x)
    return x if math.isfinite(x) else repr(x)


def _adwin_dump(d: drift.ADWIN) -> dict[str, Any]:
    # The window lives in a Rust object whose __getstate__ is its own byte encoding.
    window = base64.b64encode(d._helper.__getstate__()).decode("ascii")
    return {"drift_detected": bool(d._drift_detected), "window": window}


def _adwin_load(d: drift.ADWIN, s: Mapping[str, Any]) -> None:
    d._drift_detected = bool(s["drift_detected"])
    d._helper.__setstate__(base64.b64decode(s["window"]))


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
    d._drift_detected = bool(s["drift_detected"])
    d._x_mean.n = float(s["mean_n"])
    d._x_mean._mean = float(s["mean"])
    d._sum_increase = float(s["sum_increase"])
    d._sum_decrease = float(s["sum_decrease"])
    d._min_increase = float(s["min_increase"])
    d._max_decrease = float(s["max_decrease"])


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
    d._drift_detected = bool(s["drift_detected"])
    d.n = int(s["n"])
    d.p_value = float(s["p_value"])
    d.window = collections.deque((float(x) for x in s["window"]), maxlen=d.window_size)
    version, internal, gauss_next = s["rng"]
    rng = random.Random()
    rng.setstate((int(version), tuple(int(i) for i in internal), gauss_next))
    d._rng = rng


@dataclass(frozen=True)
class DetectorSpec:
    """How to build one River detector and move its state to and from JSON.

    ``river_name`` names the class in ``river.drift``, imported on first use: that package
    also imports River's datasets, and with them scikit-learn, pandas and pyarrow (about
    0.4 s and 80 MiB), which processes that never run a detector (the sink, the CLI) skip.
    ``defaults`` are River's own constructor defaults and the only parameters accepted.
    """

    river_name: str
    defaults: Mapping[str, Any]
    dump: Callable[[Any], dict[str, Any]]
    load: Callable[[Any, Mapping[str, Any]], None]

    @property
    def river_class(self) -> type:
        return getattr(importlib.import_module("river.drift"), self.river_name)  # type: ignore[no-any-return]


#: Detector name -> River class, default parameters (River's) and state codec.
#: KSWIN's ``window`` argument (pre-collected data) is not offered: it is state, not
#: configuration. KSWIN re-creates its generator from ``seed`` after every firing, so with
#: River's ``seed=None`` no run could be repeated or restored: :class:`Detector` replaces
#: ``None`` by a seed drawn once from the OS and records it in ``params``.
DETECTORS: dict[str, DetectorSpec] = {
    "adwin": DetectorSpec(
        "ADWIN",
        {"delta": 0.002, "clock": 32, "max_buckets": 5, "min_window_length": 5, "grace_period": 10},
        _adwin_dump,
        _adwin_load,
    ),
    "page_hinkley": DetectorSpec(
        "PageHinkley",
        {
            "min_instances": 30,
            "delta": 0.005,
            "threshold": 50.0,
            "alpha": 1 - 0.0001,
            "mode": "both",
        },
        _ph_dump,
        _ph_load,
    ),
    "kswin": DetectorSpec(
        "KSWIN",
        {"alpha": 0.005, "window_size": 100, "stat_size": 30, "seed": None},
        _kswin_dump,
        _kswin_load,
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
        River constructor parameters overriding the defaults in :data:`DETECTORS`.

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
        """A JSON-serialisable state: name, parameters, position and the River detector's."""
        return {
            "name": self.name,
            "params": dict(self.params),
            "position": self._position,
            "river_version": river.__version__,
            "detector": DETECTORS[self.name].dump(self._river),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Detector:
        """Rebuild a detector from :meth:`to_state` output (after a JSON round trip)."""
        if state["river_version"] != river.__version__:
            raise ValueError(
                f"state written by river {state['river_version']}, running {river.__version__}"
            )
        d = cls(state["name"], **state["params"])
        d._position = int(state["position"])
        DETECTORS[d.name].load(d._river, state["detector"])
        return d
