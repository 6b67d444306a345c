"""The sink's derive step: rows computed from the partial rows of all partitions stored in
ClickHouse, for every family with a :class:`~pipeline.estimators.family.Derivation`.

Partial rows of a window arrive one per source partition. Whenever a batch brings new rows of
a derivation's ``triggers`` for some windows, the sink reads the windows back a few window
starts of one model at a time (a :class:`Chunk`), and every family's derivation computes its
rows of each window from what the chunk read: the windows' feature summaries (their
partitions' partials merged in ClickHouse), each feature's reference, and the windows'
prediction counts. A derived row's ``version`` grows as the partials it was computed from are
completed, so the row computed from the complete window wins, whichever sink computed it and
in whatever order partials arrived.

The reference of a feature is the uploaded profile ``drift_profile`` of the model and
version when it has that feature; else the windows of the fixed range
``drift_reference_range`` when one is set, or the ``drift_previous_windows`` windows before the
window (same model, version and segment) — never the window itself. A derivation's
``rederive_on`` tables (a new reference profile) re-derive every stored window of its model
and version; the new rows replace the old ones (same key and version: the last inserted
wins).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pipeline.estimators.drift import Summary, exact_sum, summaries
from pipeline.estimators.family import Derivation, MetricFamily, Row
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink
from pipeline.windows import Windows

WindowRef = tuple[str, str, str, int]  # model, model_version, segment, window start (ms)
SUMMARY_COLUMNS = (
    "feature, present, numeric, nonfinite, text, sum, sum_sq, min, max, sketch, categories, values"
)
#: The rows of one model version whose window starts in [{lo}, {hi}] (epoch ms).
_WINDOWS = (
    "WHERE model = {model:String} AND model_version = {version:String} "
    "AND window_start >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
    "AND window_start <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
)
#: One feature's partials merged in ClickHouse (GROUP BY ..., feature): counts summed,
#: sketches and categories by ``sumMap``, raw values concatenated while every partial kept
#: them (else empty, which :meth:`Summary.from_rows` reads as "not kept"). The float sums
#: come back as arrays, summed exactly in Python (``_merged``); the aliases differ from the
#: column names, which ClickHouse would otherwise substitute inside other aggregates.
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
    """Derives the rows of every family's :class:`Derivation` for windows that changed."""

    def __init__(self, sink: ClickHouseSink, settings: Settings) -> None:
        self.sink = sink
        self.settings = settings
        families = sink.schema.families
        self.derivations: list[Derivation] = [
            d for f in families if (d := f.derivation(settings)) is not None
        ]
        features = settings.family_window_specs.get("features", settings.window_spec)
        self.windows = Windows(features)
        # Prediction counts per window, from the families that count them on these windows.
        self.counting: list[MetricFamily] = [
            f
            for f in families
            if f.counts_predictions
            and settings.family_window_specs.get(f.name, settings.window_spec) == features
        ]

    @property
    def triggers(self) -> frozenset[str]:
        """The tables whose new rows make their windows stale."""
        return frozenset(t for d in self.derivations for t in d.triggers)

    @property
    def rederive_on(self) -> frozenset[str]:
        """The tables whose new rows make every window of their (model, version) stale."""
        return frozenset(t for d in self.derivations for t in d.rederive_on)

    def derive(self, windows: Iterable[WindowRef]) -> Iterator[dict[str, list[Row]]]:
        """Derived rows of these windows (those of trigger rows just inserted, see
        :func:`window_of`), by table, a few window starts at a time: what is held at once
        does not grow with the number of windows."""
        changed: dict[tuple[str, str], set[tuple[str, int]]] = defaultdict(set)
        for model, version, segment, ws in windows:
            changed[(model, version)].add((segment, ws))
        for (model, version), windows in changed.items():
            yield from self._model(model, version, windows)

    def rederive(self, models: Iterable[tuple[str, str]]) -> Iterator[dict[str, list[Row]]]:
        """Derived rows of every stored window of these (model, model_version), as
        :meth:`derive` gives them: after a new reference profile, whose results replace those
        computed against the old reference."""
        for model, version in set(models):
            stored: set[tuple[str, int]] = set()
            for table in sorted(self.triggers):
                _, rows = self.sink.query(
                    "SELECT DISTINCT segment, toUnixTimestamp64Milli(window_start) "
                    f"FROM {table} WHERE model = {{model:String}} "
                    "AND model_version = {version:String}",
                    {"model": model, "version": version},
                )
                stored.update((segment, ws) for segment, ws in rows)
            yield from self._model(model, version, stored)

    def _model(
        self, model: str, version: str, windows: set[tuple[str, int]]
    ) -> Iterator[dict[str, list[Row]]]:
        """Rows of one model's windows, ``CHUNK_STARTS`` window starts at a time in ascending
        order; each window's partials are read and merged once, and kept while later windows
        need them as their reference."""
        summaries = _WindowSummaries(self, model, version)
        profile = self._profile(model, version)
        range_windows = None
        reference_range = self.settings.drift_reference_range_ms
        if reference_range is not None:
            lo, hi = reference_range  # [lo, hi): window starts (ms) up to hi - 1
            range_windows = _WindowSummaries(self, model, version).load(lo, hi - 1)
        tables = [t.name for f in self.sink.schema.families for t in f.derived_tables]
        for starts in _chunks(windows):
            chunk = Chunk(self, model, version, starts, summaries, profile, range_windows)
            for derivation in self.derivations:
                derivation.prepare(chunk)
            out: dict[str, list[Row]] = {t: [] for t in tables}
            for segment, ws in sorted(starts):
                for derivation in self.derivations:
                    for table, rows in derivation.rows(chunk, segment, ws).items():
                        out[table] += rows
            yield out

    def _profile(self, model: str, version: str) -> dict[str, Summary]:
        rows = self.rows(
            f"SELECT {SUMMARY_COLUMNS} FROM reference_profiles FINAL "
            "WHERE model = {model:String} AND model_version = {version:String} "
            "AND name = {name:String}",
            {"model": model, "version": version, "name": self.settings.drift_profile},
        )
        return summaries(rows)

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        columns, rows = self.sink.query(sql, params)
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def merged_rows(
        self, table: str, keys: str, where: str, params: Mapping[str, Any]
    ) -> list[Row]:
        """One row per window, ``keys`` and feature of ``table``: its partitions' partials
        merged (``MERGED_COLUMNS``), in the shape of a partial row, ``version`` their sum."""
        return [
            _merged(r)
            for r in self.rows(
                f"SELECT {keys}, toUnixTimestamp64Milli(window_start) AS ws, {MERGED_COLUMNS} "
                f"FROM {table} FINAL {where} GROUP BY {keys}, ws, feature",
                params,
            )
        ]

    def previous_starts(self, ws: int) -> list[int]:
        """The starts of the ``drift_previous_windows`` windows before the one at ``ws``."""
        starts = []
        for _ in range(self.settings.drift_previous_windows):
            ws = self.windows.start(ws - 1)
            starts.append(ws)
        return starts


class Chunk:
    """A few window starts of one model being derived, and what every derivation reads of
    them: feature summaries, references and prediction counts (see the module docstring)."""

    def __init__(
        self,
        deriver: Deriver,
        model: str,
        version: str,
        windows: set[tuple[str, int]],
        summaries: _WindowSummaries,
        profile: Mapping[str, Summary],
        range_windows: _WindowSummaries | None,
    ) -> None:
        self.deriver = deriver
        self.settings = deriver.settings
        self.model, self.model_version = model, version
        self.windows = windows
        first, last = min(ws for _, ws in windows), max(ws for _, ws in windows)
        self.first = first
        lo = min(deriver.previous_starts(first), default=first)
        self.params = {"model": model, "version": version, "lo": lo, "hi": last}
        self.summaries = summaries.load(lo, last)
        self.profile = profile
        self.range_windows = range_windows
        self.counts: dict[tuple[str, int], int] = {}
        for family in deriver.counting:
            table = family.tables[0].name
            for r in deriver.rows(
                "SELECT segment, toUnixTimestamp64Milli(window_start) AS ws, "
                f"sum(predictions) AS events FROM {table} FINAL {_WINDOWS} "
                "GROUP BY segment, ws",
                self.params,
            ):
                key = (r["segment"], r["ws"])
                self.counts[key] = self.counts.get(key, 0) + r["events"]
        self._references: dict[tuple[str, int], dict[str, tuple[str, Summary]]] = {}

    def key(self, segment: str, ws: int) -> Row:
        return {
            "model": self.model,
            "model_version": self.model_version,
            "segment": segment,
            "window_start": ws,
            "window_end": self.deriver.windows.end(ws),
        }

    def features(self, segment: str, ws: int) -> dict[str, Summary]:
        """The window's feature summaries, its partitions merged."""
        return self.summaries.features(segment, ws)

    def version(self, segment: str, ws: int) -> int:
        """The sum of the versions of the window's feature partials."""
        return self.summaries.versions[(segment, ws)]

    def events(self, segment: str, ws: int) -> int:
        """The window's predictions (0 if no family counting them shares its windows)."""
        return self.counts.get((segment, ws), 0)

    def previous_starts(self, ws: int) -> list[int]:
        return self.deriver.previous_starts(ws)

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        return self.deriver.rows(sql, params)

    def merged_rows(self, table: str, keys: str, params: Mapping[str, Any]) -> list[Row]:
        """:meth:`Deriver.merged_rows` of the windows starting in [``lo``, ``hi``]."""
        return self.deriver.merged_rows(table, keys, _WINDOWS, params)

    def references(self, segment: str, ws: int) -> dict[str, tuple[str, Summary]]:
        """(name, summary) of the reference of each feature of the window: the profile when
        it has the feature, else the baseline windows."""
        key = (segment, ws)
        if key not in self._references:
            settings = self.settings
            if self.range_windows is None:
                baseline = f"previous:{settings.drift_previous_windows}"
                previous = [self.summaries.features(segment, s) for s in self.previous_starts(ws)]
            else:
                baseline = f"range:{settings.drift_reference_range}"
                previous = self.range_windows.reference(segment, ws)
            references: dict[str, tuple[str, Summary]] = {}
            for feature in self.features(segment, ws):
                if feature in self.profile:
                    name = f"profile:{settings.drift_profile}"
                    references[feature] = (name, self.profile[feature])
                    continue
                parts = [w[feature] for w in previous if feature in w]
                if parts:
                    references[feature] = (baseline, Summary.merge(parts))
            self._references[key] = references
        return self._references[key]


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
        for r in self.deriver.merged_rows(
            "feature_partials",
            "segment",
            _WINDOWS,
            {**self.params, "lo": lo, "hi": hi},
        ):
            by_window[(r["segment"], r["ws"])].append(r)
        for key, rows in by_window.items():
            self.windows[key] = summaries(rows)
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
