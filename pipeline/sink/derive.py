"""Drift, data-quality and client-activity rows, derived from the summaries stored in
ClickHouse.

Feature summaries of a window arrive as partial rows, one per source partition. Whenever a
batch brings new partials for some windows, the sink reads every partial of those windows
(and of their references) back, merges them, compares each feature with its reference and
writes one ``drift`` row per (feature, method) and one ``data_quality`` row per feature.
A derived row's ``version`` is the sum of the versions of the partials it was computed from:
it only grows as partials are completed, so the row computed from the complete window wins,
whichever sink computed it and in whatever order partials arrived.

The reference of a feature is the uploaded profile ``drift_profile`` of the model and
version when it has that feature; else the windows of the fixed range
``drift_reference_range`` when one is set, or the ``drift_previous_windows`` windows before the
window (same model, version and segment) — never the window itself. A newly uploaded profile
re-derives every stored window of its model and version; the new rows replace the old ones
(same key and version: the last inserted wins).

Client activity compares each client's feature summaries in a window (sketches, from
``client_feature_partials``) with the same references: a client whose inputs the reference
does not cover — one sweeping the input space, or sending crafted values — stands out from
the model's usual traffic, as does a client whose requests jump above its previous windows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pipeline.estimators.drift import (
    METHODS,
    Summary,
    compare,
    decide,
    exact_sum,
    out_of_range_rate,
    outside_reference,
    type_mismatch,
    unseen_categories,
)
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink

Row = dict[str, Any]
WindowRef = tuple[str, str, str, int]  # model, model_version, segment, window start (ms)
DERIVED_TABLES = ("drift", "data_quality", "client_activity")
SUMMARY_COLUMNS = (
    "feature, present, numeric, nonfinite, text, sum, sum_sq, min, max, sketch, categories, values"
)
#: One feature's partials merged in ClickHouse (GROUP BY ..., feature): counts summed,
#: sketches and categories by ``sumMap``, raw values concatenated while every partial kept
#: them (else empty, which :meth:`Summary.from_rows` reads as "not kept"). The float sums
#: come back as arrays, summed exactly in Python (``_merged``); the aliases differ from the
#: column names, which ClickHouse would otherwise substitute inside other aggregates.
#: The rows of one model version whose window starts in [{lo}, {hi}] (epoch ms).
_WINDOWS = (
    "WHERE model = {model:String} AND model_version = {version:String} "
    "AND window_start >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
    "AND window_start <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
)
MERGED_COLUMNS = (
    "feature, sum(present) AS m_present, sum(numeric) AS m_numeric, "
    "sum(nonfinite) AS m_nonfinite, sum(text) AS m_text, "
    "groupArray(ifNull(sum, nan)) AS m_sums, groupArray(ifNull(sum_sq, nan)) AS m_squares, "
    "min(min) AS m_min, max(max) AS m_max, sumMap(sketch) AS m_sketch, "
    "sumMap(categories) AS m_categories, "
    "if(min(length(values) = numeric - nonfinite), arrayFlatten(groupArray(values)), []) "
    "AS m_values, sum(version) AS m_version"
)


class Deriver:
    """Computes drift and data-quality rows for windows whose feature partials changed."""

    def __init__(self, sink: ClickHouseSink, settings: Settings) -> None:
        self.sink = sink
        self.settings = settings
        self.window_ms = settings.window_seconds * 1000
        self.reference_range = settings.drift_reference_range_ms
        # Effect sizes not chosen to decide are reported without a threshold.
        self.thresholds: dict[str, float | None] = {
            m.name: None
            for m in METHODS.values()
            if m.kind == "effect" and m.name not in settings.drift_deciders
        }

    def derive(self, windows: Iterable[WindowRef]) -> Iterator[dict[str, list[Row]]]:
        """Rows for the ``drift``, ``data_quality`` and ``client_activity`` tables of these
        windows (those of feature or client partials just inserted, see :func:`window_of`),
        by table, a few window starts at a time: what is held at once does not grow with
        the number of windows."""
        changed: dict[tuple[str, str], set[tuple[str, int]]] = defaultdict(set)
        for model, version, segment, ws in windows:
            changed[(model, version)].add((segment, ws))
        for (model, version), windows in changed.items():
            yield from self._model(model, version, windows)

    def rederive(self, models: Iterable[tuple[str, str]]) -> Iterator[dict[str, list[Row]]]:
        """Rows for every stored window of these (model, model_version), as :meth:`derive`
        gives them: after a new reference profile, whose results replace those computed
        against the old reference."""
        for model, version in set(models):
            _, stored = self.sink.query(
                "SELECT DISTINCT segment, toUnixTimestamp64Milli(window_start) "
                "FROM feature_partials WHERE model = {model:String} "
                "AND model_version = {version:String}",
                {"model": model, "version": version},
            )
            yield from self._model(model, version, set(stored))

    def _model(
        self, model: str, version: str, windows: set[tuple[str, int]]
    ) -> Iterator[dict[str, list[Row]]]:
        """Rows of one model's windows, ``CHUNK_STARTS`` window starts at a time in ascending
        order; each window's partials are read and merged once, and kept while later windows
        need them as their reference."""
        previous_ms = self.settings.drift_previous_windows * self.window_ms
        summaries = _WindowSummaries(self, model, version)
        profile = self._profile(model, version)
        range_windows = None
        if self.reference_range is not None:
            lo, hi = self.reference_range  # [lo, hi): window starts (ms) up to hi - 1
            range_windows = _WindowSummaries(self, model, version).load(lo, hi - 1)
        for chunk in _chunks(windows):
            out: dict[str, list[Row]] = {t: [] for t in DERIVED_TABLES}
            first, last = min(ws for _, ws in chunk), max(ws for _, ws in chunk)
            summaries.load(first - previous_ms, last)
            params = {"model": model, "version": version, "lo": first - previous_ms, "hi": last}
            events = {
                (r["segment"], r["ws"]): r["events"]
                for r in self._rows(
                    "SELECT segment, toUnixTimestamp64Milli(window_start) AS ws, "
                    f"sum(predictions) AS events FROM quality_partials FINAL {_WINDOWS} "
                    "GROUP BY segment, ws",
                    params,
                )
            }
            clients = _Clients(self, params, first)
            for segment, ws in sorted(chunk):
                if range_windows is None:
                    baseline = f"previous:{self.settings.drift_previous_windows}"
                    previous = [
                        summaries.features(segment, ws - k * self.window_ms)
                        for k in range(1, self.settings.drift_previous_windows + 1)
                    ]
                else:
                    baseline = f"range:{self.settings.drift_reference_range}"
                    previous = range_windows.reference(segment, ws)
                key = {
                    "model": model,
                    "model_version": version,
                    "segment": segment,
                    "window_start": ws,
                    "window_end": ws + self.window_ms,
                }
                window = summaries.features(segment, ws)
                references = self._references(window, (baseline, previous), profile)
                window_events = events.get((segment, ws), 0)
                if window:
                    drift, quality = self._window(window, references, window_events)
                    partials_version = summaries.versions[(segment, ws)]
                    out["drift"] += [key | r | {"version": partials_version} for r in drift]
                    out["data_quality"] += [
                        key | r | {"version": partials_version} for r in quality
                    ]
                out["client_activity"] += [
                    key | r for r in clients.rows(segment, ws, references, window_events)
                ]
            yield out

    def _references(
        self,
        window: Mapping[str, Summary],
        baseline: tuple[str, list[Mapping[str, Summary]]],
        profile: Mapping[str, Summary],
    ) -> dict[str, tuple[str, Summary]]:
        """(name, summary) of each feature's reference: the profile when it has the feature,
        else the baseline windows."""
        baseline_name, baseline_windows = baseline
        references: dict[str, tuple[str, Summary]] = {}
        for feature in window:
            if feature in profile:
                references[feature] = (f"profile:{self.settings.drift_profile}", profile[feature])
                continue
            parts = [w[feature] for w in baseline_windows if feature in w]
            if parts:
                references[feature] = (baseline_name, Summary.merge(parts))
        return references

    def _window(
        self,
        window: Mapping[str, Summary],
        references: Mapping[str, tuple[str, Summary]],
        events: int,
    ) -> tuple[list[Row], list[Row]]:
        results = {f: compare(window[f], ref) for f, (_, ref) in references.items()}
        decisions = decide(
            results,
            correction=self.settings.drift_correction,  # type: ignore[arg-type]
            min_count=self.settings.drift_min_count,
            thresholds=self.thresholds,
        )
        drift = []
        for feature, by_method in results.items():
            name, ref = references[feature]
            decision = decisions[feature]
            for method, result in by_method.items():
                drift.append(
                    {
                        "feature": feature,
                        "reference": name,
                        "method": method,
                        "statistic": _finite(result.statistic),
                        "p_value": _finite(result.p_value),
                        "p_adjusted": _finite(decision.adjusted.get(method)),
                        "threshold": self._threshold(method),
                        "drifted": int(method in decision.flagged),
                        "window_count": result.n_window,
                        "reference_count": result.n_reference,
                    }
                )
            drift.append(
                {
                    "feature": feature,
                    "reference": name,
                    "method": "decision",
                    "statistic": None,
                    "p_value": None,
                    "p_adjusted": None,
                    "threshold": 0.0,
                    "drifted": int(decision.drifted),
                    "window_count": decision.count,
                    "reference_count": ref.count,
                }
            )
        quality = []
        for feature, summary in window.items():
            ref = references.get(feature, (None, None))[1]
            present = summary.present
            quality.append(
                {
                    "feature": feature,
                    "events": max(events, present),
                    "present": present,
                    "missing_rate": 1.0 - present / events if events > present else 0.0,
                    "nonfinite": summary.nonfinite,
                    "type_mismatch": type_mismatch(summary, ref).count if ref else 0,
                    "out_of_range_rate": _finite(out_of_range_rate(summary, ref).rate)
                    if ref
                    else None,
                    "unseen_categories": unseen_categories(summary, ref).count if ref else 0,
                }
            )
        return drift, quality

    def _threshold(self, method: str) -> float | None:
        """The method's threshold; None when it does not decide."""
        return self.thresholds.get(method, METHODS[method].threshold)

    def _profile(self, model: str, version: str) -> dict[str, Summary]:
        rows = self._rows(
            f"SELECT {SUMMARY_COLUMNS} FROM reference_profiles FINAL "
            "WHERE model = {model:String} AND model_version = {version:String} "
            "AND name = {name:String}",
            {"model": model, "version": version, "name": self.settings.drift_profile},
        )
        return _summaries(rows)

    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        columns, rows = self.sink.query(sql, params)
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def _merged_rows(
        self, table: str, keys: str, where: str, params: Mapping[str, Any]
    ) -> list[Row]:
        """One row per window, ``keys`` and feature of ``table``: its partitions' partials
        merged (``MERGED_COLUMNS``), in the shape of a partial row, ``version`` their sum."""
        return [
            _merged(r)
            for r in self._rows(
                f"SELECT {keys}, toUnixTimestamp64Milli(window_start) AS ws, {MERGED_COLUMNS} "
                f"FROM {table} FINAL {where} GROUP BY {keys}, ws, feature",
                params,
            )
        ]


class _WindowSummaries:
    """Each window's feature summaries (its partials merged) of one model, read from
    ``feature_partials`` by ascending ranges of window starts, and the sum of each window's
    partial versions."""

    def __init__(self, deriver: Deriver, model: str, version: str) -> None:
        self.deriver = deriver
        self.params = {"model": model, "version": version}
        self.windows: dict[tuple[str, int], dict[str, Summary]] = {}
        self.versions: dict[tuple[str, int], int] = {}
        self.read_through: int | None = None
        self.merged: dict[str, dict[str, Summary]] = {}  # by segment, see reference()

    def load(self, lo: int, hi: int) -> _WindowSummaries:
        """Have the windows starting in [lo, hi]; forget those before ``lo``."""
        self.merged.clear()
        for key in [k for k in self.windows if k[1] < lo]:
            del self.windows[key], self.versions[key]
        if self.read_through is not None:
            lo = max(lo, self.read_through + 1)
        if lo > hi:
            return self
        by_window: dict[tuple[str, int], list[Row]] = defaultdict(list)
        for r in self.deriver._merged_rows(
            "feature_partials",
            "segment",
            _WINDOWS,
            {**self.params, "lo": lo, "hi": hi},
        ):
            by_window[(r["segment"], r["ws"])].append(r)
        for key, rows in by_window.items():
            self.windows[key] = _summaries(rows)
            # Every feature of a partition's window is emitted with the same version.
            self.versions[key] = max(r["version"] for r in rows)
        self.read_through = hi
        return self

    def features(self, segment: str, ws: int) -> dict[str, Summary]:
        return self.windows.get((segment, ws), {})

    def reference(self, segment: str, ws: int) -> list[dict[str, Summary]]:
        """The segment's windows held here except ``ws`` (never a window's own reference);
        merged once per segment for the usual case, a window outside them."""
        if (segment, ws) in self.windows:
            return [f for (seg, start), f in self.windows.items() if seg == segment and start != ws]
        if segment not in self.merged:
            parts = [f for (seg, _), f in self.windows.items() if seg == segment]
            names = {name for features in parts for name in features}
            self.merged[segment] = {
                n: Summary.merge([f[n] for f in parts if n in f]) for n in sorted(names)
            }
        return [self.merged[segment]]


class _Clients:
    """The client partials of one model's windows being derived, and their activity rows."""

    def __init__(self, deriver: Deriver, params: Mapping[str, Any], first: int) -> None:
        self.window_ms = deriver.window_ms
        self.previous_windows = deriver.settings.drift_previous_windows
        self.requests: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
        for r in deriver._rows(
            "SELECT segment, toUnixTimestamp64Milli(window_start) AS ws, client_id, "
            f"sum(requests) AS requests FROM client_partials FINAL {_WINDOWS} "
            "GROUP BY segment, ws, client_id",
            params,
        ):
            self.requests[(r["segment"], r["ws"])][r["client_id"]] = r["requests"]
        self.features: dict[tuple[str, int, str], list[Row]] = defaultdict(list)
        if self.requests:
            for r in deriver._merged_rows(
                "client_feature_partials",
                "segment, client_id",
                _WINDOWS,
                {**params, "lo": first},  # previous windows' are not needed
            ):
                self.features[(r["segment"], r["ws"], r["client_id"])].append(r)

    def rows(
        self,
        segment: str,
        ws: int,
        references: Mapping[str, tuple[str, Summary]],
        window_requests: int,
    ) -> list[Row]:
        """One row per client of the window: its requests against the window's and its own
        previous windows', and the share of its inputs the references do not cover."""
        out = []
        for client, requests in sorted(self.requests.get((segment, ws), {}).items()):
            previous = sum(
                self.requests.get((segment, ws - k * self.window_ms), {}).get(client, 0)
                for k in range(1, self.previous_windows + 1)
            )
            outside = {}
            for feature, summary in _summaries(self.features[(segment, ws, client)]).items():
                if feature in references:
                    q = outside_reference(summary, references[feature][1])
                    if q.total:
                        outside[feature] = q.rate
            worst = min(outside, key=lambda f: (-outside[f], f), default="")
            out.append(
                {
                    "client_id": client,
                    "requests": requests,
                    "window_requests": window_requests,
                    "traffic_share": requests / window_requests if window_requests else None,
                    "previous_requests": previous / self.previous_windows
                    if self.previous_windows
                    else None,
                    "outside_reference_share": outside.get(worst),
                    "outside_reference_feature": worst,
                    "outside_reference": outside,
                    # Both only grow as the window's partials complete.
                    "version": requests + window_requests,
                }
            )
        return out


#: Window starts derived per read of the partials: bounds the rows held at once (a batch
#: that spans many windows, e.g. a sink catching up, reads them a few windows at a time).
CHUNK_STARTS = 4


def _chunks(windows: set[tuple[str, int]]) -> list[set[tuple[str, int]]]:
    """``windows`` split into sets of at most ``CHUNK_STARTS`` distinct window starts."""
    starts = sorted({ws for _, ws in windows})
    groups = [set(starts[i : i + CHUNK_STARTS]) for i in range(0, len(starts), CHUNK_STARTS)]
    return [{w for w in windows if w[1] in g} for g in groups]


def window_of(row: Mapping[str, Any]) -> WindowRef:
    """The window a partial row belongs to."""
    return row["model"], row["model_version"], row["segment"], row["window_start"]


def _merged(row: Row) -> Row:
    """A ``MERGED_COLUMNS`` row in the shape of a partial row (float sums summed exactly)."""
    out = {k[2:] if k.startswith("m_") else k: v for k, v in row.items()}
    out["sum"] = exact_sum(out.pop("sums"))
    out["sum_sq"] = exact_sum(out.pop("squares"))
    return out


def _summaries(rows: Iterable[Row]) -> dict[str, Summary]:
    by_feature: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_feature[r["feature"]].append(r)
    return {f: Summary.from_rows(rs) for f, rs in by_feature.items()}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
