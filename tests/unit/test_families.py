"""The contract of every registered metric family, as River's ``check_estimator`` checks every
estimator: results independent of batching and of the order partitions are merged in,
versions that grow with the input, rows that fit the tables' DDL, DDL that ClickHouse
creates as declared, and every published metric in the family's views."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import random
from collections import Counter
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import pipeline.estimators
from pipeline.estimators.family import Accumulator, MetricFamily, Pairs, Predictions, Views
from pipeline.estimators.registry import FAMILIES, families
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink
from pipeline.sink.tables import Schema

SETTINGS = Settings(auc_bins=50, max_clients=50)
FAMILY_LIST = families(SETTINGS)
KEY = {
    "model": "m",
    "model_version": "v",
    "segment": "",
    "window_start": 1_700_000_040_000,
    "window_end": 1_700_000_100_000,
    "partition": 0,
}
TASKS = ("binary", "multiclass", "regression", "ranking")


def events(rng: random.Random, task: str, n: int) -> list[tuple[Predictions, Pairs]]:
    """``n`` predictions of ``task`` with features and clients, half of them labelled, as
    one-event batches (to be regrouped by the test)."""
    out = []
    for i in range(n):
        if task == "regression":
            prediction: Any = rng.gauss(100.0, 20.0)
            label: Any = str(rng.randrange(50, 150)) if i % 3 else rng.gauss(100.0, 20.0)
            score, proba = None, None
        elif task == "ranking":
            prediction, label, score, proba = ("a", "b"), ("b",), None, None
        else:
            classes = ["0", "1"] if task == "binary" else ["a", "b", "c"]
            prediction, label = rng.choice(classes), rng.choice(classes)
            raw = [rng.random() for _ in classes]
            proba = {c: r / sum(raw) for c, r in zip(classes, raw, strict=True)}
            score = proba.get("1") if task == "binary" else None
            proba = None if task == "binary" else proba
        vector = np.array([rng.random(), rng.random(), rng.random()])
        features = {"x": rng.gauss(0.0, 1.0), "c": rng.choice("pqr"), "v": vector}
        client = rng.choice([None, "k1", "k2", "k3"])
        batch = Predictions(task, [prediction], [score], [proba], [features], [client])
        pairs = Pairs(task, [label], [prediction], [score], [proba]) if i % 2 else Pairs(task)
        out.append((batch, pairs))
    return out


def concat(parts: list[tuple[Predictions, Pairs]], task: str) -> tuple[Predictions, Pairs]:
    preds = Predictions(
        task,
        *(
            [x for p, _ in parts for x in getattr(p, name)]
            for name in ("prediction", "score", "probabilities", "features", "client_id")
        ),
    )
    pairs = Pairs(
        task,
        *([x for _, q in parts for x in getattr(q, name)] for name in Pairs.__slots__[1:]),
    )
    return preds, pairs


def fold(family: MetricFamily, task: str, batches: list[list[tuple[Predictions, Pairs]]]) -> Any:
    state = family.accumulator(Counter())
    for batch in batches:
        preds, pairs = concat(batch, task)
        if family.serves(task):
            state.add_predictions(preds)
        if task in family.label_tasks and len(pairs):
            state.add_pairs(pairs)
    return state


def rows(state: Accumulator) -> dict[str, list[bytes]]:
    """The rows of a state that emitted none yet (all of them), canonical: as JSON, in
    order within each table."""
    options = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    return {
        table: sorted(orjson.dumps(r, option=options) for r in batch)
        for table, batch in deepcopy(state).rows().items()
    }


def split(rng: random.Random, items: list[Any], parts: int) -> list[list[Any]]:
    cuts = sorted(rng.sample(range(1, len(items)), parts - 1))
    return [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]


def served(family: MetricFamily) -> list[str]:
    return [t for t in TASKS if family.serves(t)]


@pytest.mark.parametrize("family", FAMILY_LIST, ids=lambda f: f.name)
@pytest.mark.parametrize("seed", range(3))
def test_rows_do_not_depend_on_batching(family: MetricFamily, seed: int) -> None:
    rng = random.Random(seed)
    for task in served(family):
        items = events(rng, task, 200)
        whole = rows(fold(family, task, [items]))
        batched = rows(fold(family, task, [[e] for e in items[:50]] + split(rng, items[50:], 7)))
        assert batched == whole, (family.name, task)


@pytest.mark.parametrize("family", FAMILY_LIST, ids=lambda f: f.name)
@pytest.mark.parametrize("seed", range(3))
def test_merged_partitions_equal_one_whatever_the_order(family: MetricFamily, seed: int) -> None:
    rng = random.Random(seed)
    for task in served(family):
        items = events(rng, task, 240)
        whole = rows(fold(family, task, [items]))
        parts = [fold(family, task, [part]) for part in split(rng, items, 4)]
        for _ in range(3):
            rng.shuffle(parts)
            merged = deepcopy(parts[0])
            for part in parts[1:]:
                merged.merge(part)
            assert rows(merged) == whole, (family.name, task)


@pytest.mark.parametrize("family", FAMILY_LIST, ids=lambda f: f.name)
def test_versions_grow_with_the_input_and_rows_come_when_it_changed(family: MetricFamily) -> None:
    rng = random.Random(5)
    for task in served(family):
        state = family.accumulator(Counter())
        last = state.version
        emitted: dict[tuple[str, bytes], int] = {}
        for preds, pairs in events(rng, task, 60):
            state.add_predictions(preds)
            if task in family.label_tasks and len(pairs):
                state.add_pairs(pairs)
            assert state.version >= last
            out = state.rows()
            assert bool(out) == (state.version != last), (family.name, task)
            assert state.rows() == {}  # nothing new since
            for table, batch in out.items():
                for r in batch:
                    described = {k: v for k, v in r.items() if k not in _VALUES}
                    key = (table, orjson.dumps(described, option=orjson.OPT_NON_STR_KEYS))
                    assert r["version"] > emitted.get(key, -1), (family.name, table)
                    emitted[key] = r["version"]
            last = state.version


#: Columns that are measurements, not what a row describes.
_VALUES = {
    "version", "predictions", "labelled", "correct", "log_loss_sum", "log_loss_count", "tp",
    "fp", "fn", "auc_pos", "auc_neg", "present", "numeric", "nonfinite", "text", "sum",
    "sum_sq", "min", "max", "sketch", "categories", "values", "requests", "zero_targets",
    "residual_overflow", "ape_overflow", "target_mean", "target_mean_low", "target_std",
    "error_mean", "abs_error_mean", "rms_error", "ape_mean", "residual_sketch",
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILY_LIST, ids=lambda f: f.name)
def test_rows_fit_their_tables(family: MetricFamily) -> None:
    declared = {t.name: t for t in family.tables}
    rng = random.Random(1)
    for task in served(family):
        for table, batch in fold(family, task, [events(rng, task, 100)]).rows().items():
            assert table in declared, (family.name, table)
            for r in batch:
                declared[table].check(KEY | r)


def test_every_table_is_created_as_declared(chdb_path: Path) -> None:
    sink = ClickHouseSink(f"chdb://{chdb_path}", "families_ddl", SETTINGS)
    sink.migrate()
    sink.migrate()  # idempotent
    for table in Schema.of(SETTINGS).tables:
        _, described = sink.query(f"DESCRIBE TABLE families_ddl.{table.name}")
        assert [(r[0], r[1]) for r in described] == [(c.name, c.type) for c in table.columns]


def test_every_metric_is_a_column_of_its_familys_views(chdb_path: Path) -> None:
    sink = ClickHouseSink(f"chdb://{chdb_path}", "families_views", SETTINGS)
    sink.migrate()
    for family in FAMILY_LIST:
        views = [s.split(" AS")[0].split(".")[-1] for s in family.views(_views(family))]
        columns: set[str] = set()
        for view in views:
            _, described = sink.query(f"DESCRIBE TABLE families_views.{view}")
            columns |= {r[0] for r in described}
        assert {m.name for m in family.metrics} <= columns, family.name


def _views(family: MetricFamily) -> Views:
    return Views("families_views", tuple(FAMILY_LIST), {"window": "1m"})


def test_every_family_is_registered() -> None:
    """A MetricFamily defined in the estimators package but missing from the registry would
    fold nothing and create no table: a test fails instead."""
    defined = set()
    for module in pkgutil.iter_modules(pipeline.estimators.__path__):
        loaded = importlib.import_module(f"pipeline.estimators.{module.name}")
        defined |= {
            c
            for c in vars(loaded).values()
            if inspect.isclass(c) and issubclass(c, MetricFamily) and c is not MetricFamily
        }
    assert defined == set(FAMILIES)
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    tables = [t.name for f in FAMILIES for t in (*f.tables, *f.derived_tables)]
    assert len(tables) == len(set(tables))
