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
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.estimators.drift import (
    METHODS,
    Summary,
    compare,
    decide,
    out_of_range_rate,
    outside_reference,
    type_mismatch,
    unseen_categories,
)
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink

Row = dict[str, Any]
DERIVED_TABLES = ("drift", "data_quality", "client_activity")
SUMMARY_COLUMNS = (
    "feature, present, numeric, nonfinite, text, sum, sum_sq, min, max, sketch, categories, values"
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

    def derive(self, partial_rows: Iterable[Row]) -> dict[str, list[Row]]:
        """Rows for the ``drift``, ``data_quality`` and ``client_activity`` tables of every
        window named in ``partial_rows`` (feature or client partials just inserted)."""
        changed: dict[tuple[str, str], set[tuple[str, int]]] = defaultdict(set)
        for r in partial_rows:
            changed[(r["model"], r["model_version"])].add((r["segment"], r["window_start"]))
        out: dict[str, list[Row]] = {t: [] for t in DERIVED_TABLES}
        for (model, version), windows in changed.items():
            for chunk in _chunks(windows):
                for table, rows in self._model(model, version, chunk).items():
                    out[table].extend(rows)
        return out

    def rederive(self, models: Iterable[tuple[str, str]]) -> dict[str, list[Row]]:
        """Rows for every stored window of these (model, model_version): after a new reference
        profile, whose results replace those computed against the old reference."""
        out: dict[str, list[Row]] = {t: [] for t in DERIVED_TABLES}
        for model, version in set(models):
            _, stored = self.sink.query(
                "SELECT DISTINCT segment, toUnixTimestamp64Milli(window_start) "
                "FROM feature_partials WHERE model = {model:String} "
                "AND model_version = {version:String}",
                {"model": model, "version": version},
            )
            for chunk in _chunks(set(stored)):
                for table, rows in self._model(model, version, chunk).items():
                    out[table].extend(rows)
        return out

    def _model(
        self, model: str, version: str, windows: set[tuple[str, int]]
    ) -> dict[str, list[Row]]:
        lo = min(ws for _, ws in windows) - self.settings.drift_previous_windows * self.window_ms
        hi = max(ws for _, ws in windows)
        params = {"model": model, "version": version, "lo": lo, "hi": hi}
        in_range = (
            "WHERE model = {model:String} AND model_version = {version:String} AND window_start "
            "BETWEEN fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
            "AND fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
        )
        by_window: dict[tuple[str, int], list[Row]] = defaultdict(list)
        for r in self._rows(
            f"SELECT segment, toUnixTimestamp64Milli(window_start) AS ws, partition, version, "
            f"{SUMMARY_COLUMNS} FROM feature_partials FINAL {in_range}",
            params,
        ):
            by_window[(r["segment"], r["ws"])].append(r)
        events = {
            (r["segment"], r["ws"]): r["events"]
            for r in self._rows(
                "SELECT segment, toUnixTimestamp64Milli(window_start) AS ws, "
                f"sum(predictions) AS events FROM quality_partials FINAL {in_range} "
                "GROUP BY segment, ws",
                params,
            )
        }
        clients = _Clients(self, params, in_range, min(ws for _, ws in windows))
        profile = self._profile(model, version)
        range_rows = self._range_rows(model, version) if self.reference_range else {}
        out: dict[str, list[Row]] = {t: [] for t in DERIVED_TABLES}
        for segment, ws in sorted(windows):
            rows = by_window.get((segment, ws), [])
            if self.reference_range is None:
                baseline = f"previous:{self.settings.drift_previous_windows}"
                previous = [
                    r
                    for k in range(1, self.settings.drift_previous_windows + 1)
                    for r in by_window.get((segment, ws - k * self.window_ms), [])
                ]
            else:
                baseline = f"range:{self.settings.drift_reference_range}"
                previous = [
                    r
                    for (seg, start), rs in range_rows.items()
                    if seg == segment and start != ws  # never the window itself
                    for r in rs
                ]
            key = {
                "model": model,
                "model_version": version,
                "segment": segment,
                "window_start": ws,
                "window_end": ws + self.window_ms,
            }
            window = _summaries(rows)
            references = self._references(window, (baseline, previous), profile)
            window_events = events.get((segment, ws), 0)
            if rows:
                drift, quality = self._window(window, references, window_events)
                partials_version = sum({r["partition"]: r["version"] for r in rows}.values())
                out["drift"] += [key | r | {"version": partials_version} for r in drift]
                out["data_quality"] += [key | r | {"version": partials_version} for r in quality]
            out["client_activity"] += [
                key | r for r in clients.rows(segment, ws, references, window_events)
            ]
        return out

    def _references(
        self,
        window: Mapping[str, Summary],
        baseline: tuple[str, list[Row]],
        profile: Mapping[str, Summary],
    ) -> dict[str, tuple[str, Summary]]:
        """(name, summary) of each feature's reference: the profile when it has the feature,
        else the baseline windows."""
        baseline_name, baseline_rows = baseline
        rolling = _summaries(baseline_rows)
        references: dict[str, tuple[str, Summary]] = {}
        for feature in window:
            if feature in profile:
                references[feature] = (f"profile:{self.settings.drift_profile}", profile[feature])
            elif feature in rolling:
                references[feature] = (baseline_name, rolling[feature])
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

    def _range_rows(self, model: str, version: str) -> dict[tuple[str, int], list[Row]]:
        """Partials of the fixed reference range, by (segment, window start)."""
        assert self.reference_range is not None
        lo, hi = self.reference_range
        out: dict[tuple[str, int], list[Row]] = defaultdict(list)
        for r in self._rows(
            f"SELECT segment, toUnixTimestamp64Milli(window_start) AS ws, {SUMMARY_COLUMNS} "
            "FROM feature_partials FINAL WHERE model = {model:String} "
            "AND model_version = {version:String} "
            "AND window_start >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
            "AND window_start < fromUnixTimestamp64Milli({hi:Int64}, 'UTC')",
            {"model": model, "version": version, "lo": lo, "hi": hi},
        ):
            out[(r["segment"], r["ws"])].append(r)
        return out

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


class _Clients:
    """The client partials of one model's windows being derived, and their activity rows."""

    def __init__(
        self, deriver: Deriver, params: Mapping[str, Any], in_range: str, first: int
    ) -> None:
        self.window_ms = deriver.window_ms
        self.previous_windows = deriver.settings.drift_previous_windows
        self.requests: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
        for r in deriver._rows(
            "SELECT segment, toUnixTimestamp64Milli(window_start) AS ws, client_id, "
            f"sum(requests) AS requests FROM client_partials FINAL {in_range} "
            "GROUP BY segment, ws, client_id",
            params,
        ):
            self.requests[(r["segment"], r["ws"])][r["client_id"]] = r["requests"]
        self.features: dict[tuple[str, int, str], list[Row]] = defaultdict(list)
        if self.requests:
            for r in deriver._rows(
                "SELECT segment, toUnixTimestamp64Milli(window_start) AS ws, client_id, "
                f"{SUMMARY_COLUMNS} FROM client_feature_partials FINAL "
                "WHERE model = {model:String} AND model_version = {version:String} "
                "AND window_start BETWEEN fromUnixTimestamp64Milli({first:Int64}, 'UTC') "
                "AND fromUnixTimestamp64Milli({hi:Int64}, 'UTC')",
                {**params, "first": first},
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
CHUNK_STARTS = 16


def _chunks(windows: set[tuple[str, int]]) -> list[set[tuple[str, int]]]:
    """``windows`` split into sets of at most ``CHUNK_STARTS`` distinct window starts."""
    starts = sorted({ws for _, ws in windows})
    groups = [set(starts[i : i + CHUNK_STARTS]) for i in range(0, len(starts), CHUNK_STARTS)]
    return [{w for w in windows if w[1] in g} for g in groups]


def _summaries(rows: Iterable[Row]) -> dict[str, Summary]:
    by_feature: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_feature[r["feature"]].append(r)
    return {f: Summary.from_rows(rs) for f, rs in by_feature.items()}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
