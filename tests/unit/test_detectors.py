"""Drift detectors: River parity, exact continuation after a JSON restore, delays, false alarms.

The delay and false-alarm bounds were measured on the seeded streams below (values in the
comments) and leave a little headroom; the streams are deterministic, so a failure means the
detectors' behaviour changed, not bad luck.
"""

from __future__ import annotations

import inspect
import itertools
import random
from typing import Any

import numpy as np
import orjson
import pytest
from river import drift

from pipeline.estimators.detectors import DETECTORS, Detector, Firing

CHANGE = 5000  # position of the first value after the change


def roundtrip(d: Detector) -> Detector:
    return Detector.from_state(orjson.loads(orjson.dumps(d.to_state())))


def positions(firings: list[Firing]) -> list[int]:
    return [f.position for f in firings]


def drifting_stream(seed: int, n: int) -> np.ndarray:
    """Gaussian segments of random mean, scale and length: several changes to fire on."""
    rng = np.random.default_rng(seed)
    parts = []
    while sum(map(len, parts)) < n:
        parts.append(rng.normal(rng.uniform(-2, 2), rng.uniform(0.2, 2), rng.integers(50, 600)))
    return np.concatenate(parts)[:n]


def bernoulli_shift(seed: int, n_after: int = CHANGE) -> np.ndarray:
    """Error indicator: rate 0.1, then 0.3 from position CHANGE."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(CHANGE) < 0.1, rng.random(n_after) < 0.3]).astype(float)


def gaussian_shift(seed: int, n_after: int = CHANGE) -> np.ndarray:
    """Score N(0, 1), then N(1, 1) from position CHANGE."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.0, 1.0, CHANGE), rng.normal(1.0, 1.0, n_after)])


# --- River's own docstring examples ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("adwin", {}, [1023]),
        ("kswin", {"alpha": 0.0001, "seed": 42}, [1016]),
        ("page_hinkley", {}, [1006]),
    ],
)
def test_reproduces_river_docstring_examples(
    name: str, params: dict[str, Any], expected: list[int]
) -> None:
    rng = random.Random(12345)
    data_stream = rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)
    d = Detector(name, **params)
    firings = d.update(data_stream)
    assert positions(firings) == expected
    assert firings[0] == Firing(name, expected[0], {**DETECTORS[name].defaults, **params})
    assert d.position == 2000


def test_defaults_are_rivers() -> None:
    for name, spec in DETECTORS.items():
        signature = inspect.signature(spec.river_class)
        river_defaults = {
            k: p.default for k, p in signature.parameters.items() if k in spec.defaults
        }
        assert river_defaults == dict(spec.defaults), name


def test_batching_does_not_matter() -> None:
    x = drifting_stream(0, 3000)
    for name in DETECTORS:
        whole = Detector(name, **({"seed": 1} if name == "kswin" else {})).update(x)
        d = Detector(name, **({"seed": 1} if name == "kswin" else {}))
        pieces = [f for chunk in np.array_split(x, 7) for f in d.update(chunk)]
        assert pieces == whole and whole, name


# --- restore equivalence --------------------------------------------------------------------

CONFIGS = [
    ("adwin", {}),
    ("adwin", {"clock": 1, "delta": 0.01}),
    ("page_hinkley", {}),
    ("page_hinkley", {"mode": "down", "threshold": 20.0}),
    ("kswin", {"seed": 3}),
    ("kswin", {}),  # seed None: replaced by a recorded random seed
]


@pytest.mark.parametrize(("name", "params"), CONFIGS)
def test_restore_continues_exactly(name: str, params: dict[str, Any]) -> None:
    n = 1500 if name == "kswin" else 6000
    for seed in range(2 if name == "kswin" else 4):
        x = drifting_stream(seed, n)
        start = Detector(name, **params).to_state()  # position 0: also checks the initial state
        reference = Detector.from_state(start)
        expected = reference.update(x)
        assert expected, "the stream should make the detector fire"
        # Restart at random points, right at and after firings (River resets on the next
        # update), and at both ends.
        rng = np.random.default_rng(seed)
        fired = [p for f in positions(expected)[:3] for p in (f, f + 1, f + 2)]
        cuts = sorted({0, n, *rng.integers(0, n, 5).tolist(), *fired})
        d = Detector.from_state(start)
        got: list[Firing] = []
        for lo, hi in itertools.pairwise(cuts):
            d = roundtrip(d)
            assert d.position == lo
            got += d.update(x[lo:hi])
        assert got == expected
        assert d.to_state() == reference.to_state()


def test_kswin_without_seed_is_repeatable() -> None:
    x = drifting_stream(5, 800)
    # KSWIN re-creates its generator from the seed after each firing, so a run that fires
    # twice or more shows the drawn seed is what is reused. Most drawn seeds do.
    for _ in range(20):
        d = Detector("kswin")
        assert isinstance(d.params["seed"], int)
        firings = d.update(x)
        if len(firings) > 1:
            break
    assert len(firings) > 1
    assert Detector("kswin", seed=d.params["seed"]).update(x) == firings


def test_state_is_plain_json() -> None:
    for name in DETECTORS:
        d = Detector(name, **({"seed": 0} if name == "kswin" else {}))
        d.update(drifting_stream(1, 400))
        state = d.to_state()
        assert orjson.loads(orjson.dumps(state)) == state
        assert state["name"] == name and state["position"] == 400


def test_state_from_another_river_version_is_refused() -> None:
    state = Detector("adwin").to_state()
    state["river_version"] = "0.0.1"
    with pytest.raises(ValueError, match="river"):
        Detector.from_state(state)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        Detector("ddm")
    with pytest.raises(ValueError, match="unknown parameters"):
        Detector("kswin", window=[1.0, 2.0])
    d = Detector("page_hinkley")
    d.update([1.0, 2.0])
    before = d.to_state()
    for bad in ([1.0, float("nan")], [float("inf")], [[1.0], [2.0]]):
        with pytest.raises(ValueError):
            d.update(bad)
    assert d.to_state() == before


# --- known change points --------------------------------------------------------------------


def first_after(firings: list[Firing]) -> int | None:
    """Delay of the first firing at or after the change, None if it never fires."""
    after = [p - CHANGE for p in positions(firings) if p >= CHANGE]
    return after[0] if after else None


# Measured delays, seeds 0-9 (100 seeds in brackets: median / max):
#   bernoulli adwin         median 119, max 183   [119 / 215]
#   bernoulli page_hinkley  median 214, max 294   [222 / 323]
#   gaussian  adwin         all 55 (ADWIN checks every clock=32 values)   [55 / 87]
#   gaussian  page_hinkley  median 47, max 650    [38 / 1722]; the long ones follow a false
#                           alarm just before the change: the restarted mean learns the new level.
# Default KSWIN (30 vs 30 samples) cannot resolve a 0.1 -> 0.3 rate on 0/1 values: it fired
# after the change in 3 of 10 seeds; it is only tested on the Gaussian shift.
@pytest.mark.parametrize(
    ("stream", "name", "median_bound", "max_bound"),
    [
        (bernoulli_shift, "adwin", 130, 200),
        (bernoulli_shift, "page_hinkley", 230, 320),
        (gaussian_shift, "adwin", 56, 64),
        (gaussian_shift, "page_hinkley", 60, 700),
    ],
)
def test_detects_known_change(stream: Any, name: str, median_bound: int, max_bound: int) -> None:
    delays = []
    for seed in range(10):
        firings = Detector(name).update(stream(seed))
        delay = first_after(firings)
        assert delay is not None and delay <= max_bound, (seed, delay)
        delays.append(delay)
        if name == "adwin" or stream is bernoulli_shift:
            assert min(positions(firings)) >= CHANGE  # no false alarm before the change
    assert np.median(delays) <= median_bound, delays


def test_kswin_detects_gaussian_shift() -> None:
    # Seeds 0-4 measured 1317, 22, 54, 15, 16 (seed 0 fired falsely just before the change
    # and restarted with a mixed window); streams stop at the bound to keep the test fast.
    delays = []
    for seed in range(5):
        x = gaussian_shift(seed, n_after=1400)
        delays.append(first_after(Detector("kswin", seed=seed).update(x)))
    assert all(d is not None for d in delays), delays
    assert sorted(delays)[2] <= 30, delays  # median


# --- false alarms on a stationary stream ----------------------------------------------------


@pytest.fixture(scope="module")
def stationary() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(123)
    return {
        "bernoulli": (rng.random(100_000) < 0.1).astype(float),
        "gaussian": rng.normal(0.0, 1.0, 100_000),
    }


# Measured on these 100k-value streams: adwin 0 / 0, page_hinkley 2 / 58 (bernoulli / gaussian;
# its default threshold 50 is small for unit-variance scores), kswin 0 / 134 (alpha 0.005
# per test, one test per value). KSWIN costs ~0.3 ms a value, so it runs on the first 20k (19).
@pytest.mark.parametrize(
    ("name", "kind", "n", "bound"),
    [
        ("adwin", "bernoulli", 100_000, 0),
        ("adwin", "gaussian", 100_000, 0),
        ("page_hinkley", "bernoulli", 100_000, 4),
        ("page_hinkley", "gaussian", 100_000, 70),
        ("kswin", "gaussian", 20_000, 25),
    ],
)
def test_false_alarms_on_stationary_stream(
    stationary: dict[str, np.ndarray], name: str, kind: str, n: int, bound: int
) -> None:
    params = {"seed": 0} if name == "kswin" else {}
    alarms = len(Detector(name, **params).update(stationary[kind][:n]))
    assert alarms <= bound, alarms


def test_river_classes() -> None:
    assert DETECTORS["adwin"].river_class is drift.ADWIN
    assert DETECTORS["page_hinkley"].river_class is drift.PageHinkley
    assert DETECTORS["kswin"].river_class is drift.KSWIN
