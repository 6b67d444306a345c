"""Client activity, a metric family: per ``client_id``, the requests and feature summaries of
each window, which the sink compares with the model's reference and the client's own history
— a client whose inputs the reference does not cover (one sweeping the input space, or
sending crafted values) stands out from the model's usual traffic, as does one whose
requests jump above its previous windows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.estimators.drift import SUMMARY_COLUMNS, outside_reference, summaries
from pipeline.estimators.family import (
    Accumulator,
    Column,
    Derivation,
    MetricFamily,
    Predictions,
    Row,
    Views,
    derived_table,
    partial_table,
)
from pipeline.estimators.features import FeatureWindow

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = ["OVERFLOW_CLIENT", "ClientSummaries", "ClientsDerivation", "ClientsFamily"]

OVERFLOW_CLIENT = "__overflow__"


class ClientSummaries(Accumulator):
    """Sketches of the features of each ``client_id``'s predictions in one window on one
    partition, for the first ``max_clients`` client ids in the order the partition read them;
    later ones share the ``__overflow__`` client (counted: ``overflow_clients``). Each
    client's rows are versioned by its own predictions in the window.

    >>> from collections import Counter, defaultdict
    >>> counters = Counter()
    >>> s = ClientSummaries(1, counters)
    >>> s.add_predictions(Predictions("binary", ["1"] * 3, [None] * 3, [None] * 3,
    ...                               [{"x": 1.0}] * 3, ["a", "b", None]))
    >>> [(r["client_id"], r["requests"]) for r in s.rows()["client_partials"]]
    [('__overflow__', 1), ('a', 1)]
    >>> counters["overflow_clients"], s.rows()
    (1, {})
    """

    def __init__(self, max_clients: int, counters: Counter[str]) -> None:
        self.max_clients = max_clients
        self.counters = counters
        self.clients: dict[str, FeatureWindow] = {}
        self.dirty: set[str] = set()

    def add_predictions(self, batch: Predictions) -> None:
        by_client: dict[str, list[dict[str, Any]]] = {}
        for client, features in zip(batch.client_id, batch.observed(), strict=True):
            if client is not None:
                by_client.setdefault(client, []).append(features)
        clients = self.clients
        for client, features in by_client.items():
            summary = clients.get(client)
            if summary is None:
                if len(clients) - (OVERFLOW_CLIENT in clients) >= self.max_clients:
                    self.counters["overflow_clients"] += len(features)
                    client = OVERFLOW_CLIENT
                    summary = clients.get(client)
                if summary is None:
                    summary = clients[client] = FeatureWindow(exact_max=0)
            summary.update(features)
            self.dirty.add(client)

    def merge(self, other: ClientSummaries) -> None:
        for client, summary in other.clients.items():
            mine = self.clients.get(client)
            if mine is None:
                mine = self.clients[client] = FeatureWindow(exact_max=0)
            mine.merge(summary)
            self.dirty.add(client)

    @property
    def version(self) -> int:
        return sum(s.events for s in self.clients.values())

    def rows(self) -> dict[str, list[Row]]:
        if not self.dirty:
            return {}
        requests: list[Row] = []
        features: list[Row] = []
        for client in sorted(self.dirty):
            summary = self.clients[client]
            base = {"client_id": client, "version": summary.events}
            requests.append(base | {"requests": summary.events})
            features.extend(base | f for f in summary.rows())
        self.dirty.clear()
        return {"client_partials": requests, "client_feature_partials": features}


class ClientsFamily(MetricFamily):
    """Per-client requests and input summaries of every prediction that names its
    ``client_id``.

    Parameters
    ----------
    max_clients
        Client ids per model, segment, window and partition with rows of their own; later
        ones share the ``__overflow__`` client (``max_clients = 0`` turns the family off).
    """

    name: ClassVar[str] = "clients"
    tables = (
        partial_table(
            "client_partials",
            (Column("client_id", "String"), Column("requests", "UInt64")),
            key=("client_id",),
        ),
        partial_table(
            "client_feature_partials",
            (Column("client_id", "String"), *SUMMARY_COLUMNS),
            key=("client_id", "feature"),
        ),
    )
    derived_tables = (
        derived_table(
            "client_activity_rows",
            (
                Column("client_id", "String"),
                Column("requests", "UInt64"),
                Column("window_requests", "UInt64"),
                Column("traffic_share", "Nullable(Float64)"),
                Column("previous_requests", "Nullable(Float64)"),
                Column("outside_reference_share", "Nullable(Float64)"),
                Column("outside_reference_feature", "String"),
                Column("outside_reference", "Map(String, Float64)"),
            ),
            key=("client_id",),
        ),
    )

    def __init__(self, max_clients: int = 100) -> None:
        self.max_clients = max_clients

    @classmethod
    def configured(cls, settings: Settings) -> ClientsFamily | None:
        return cls(settings.max_clients) if settings.max_clients else None

    def accumulator(self, counters: Counter[str]) -> ClientSummaries:
        return ClientSummaries(self.max_clients, counters)

    def derivation(self, settings: Settings) -> ClientsDerivation:
        return ClientsDerivation(settings.drift_previous_windows)

    def views(self, views: Views) -> list[str]:
        db = views.db
        return [
            f"CREATE OR REPLACE VIEW {db}.client_activity AS "
            f"SELECT * FROM {db}.client_activity_rows FINAL"
        ]


class ClientsDerivation(Derivation):
    """Each window's ``client_activity`` rows: per client, its requests against the window's
    and its own previous windows', and the share of its inputs the window's references do
    not cover (from a :class:`pipeline.sink.derive.Chunk`)."""

    triggers = ("feature_partials", "client_partials")
    rederive_on = ("reference_profiles",)

    def __init__(self, previous_windows: int) -> None:
        self.previous_windows = previous_windows
        self.requests: dict[tuple[str, int], dict[str, int]] = {}
        self.features: dict[tuple[str, int, str], list[Row]] = {}

    def prepare(self, chunk: Any) -> None:
        """Read the chunk's client partials (and those of the previous windows, whose
        requests the rows compare with)."""
        self.requests = defaultdict(dict)
        for r in chunk.rows(
            "SELECT segment, toUnixTimestamp64Milli(window_start) AS ws, client_id, "
            "sum(requests) AS requests FROM client_partials FINAL "
            "WHERE model = {model:String} AND model_version = {version:String} "
            "AND window_start >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
            "AND window_start <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC') "
            "GROUP BY segment, ws, client_id",
            chunk.params,
        ):
            self.requests[(r["segment"], r["ws"])][r["client_id"]] = r["requests"]
        self.features = defaultdict(list)
        if self.requests:
            params = {**chunk.params, "lo": chunk.first}  # previous windows' are not needed
            for r in chunk.merged_rows("client_feature_partials", "segment, client_id", params):
                self.features[(r["segment"], r["ws"], r["client_id"])].append(r)

    def rows(self, chunk: Any, segment: str, window_start: int) -> dict[str, list[Row]]:
        clients = self.requests.get((segment, window_start))
        if not clients:
            return {}
        references = chunk.references(segment, window_start)
        window_requests = chunk.events(segment, window_start)
        base = chunk.key(segment, window_start)
        previous_starts = chunk.previous_starts(window_start)
        out = []
        for client, requests in sorted(clients.items()):
            previous = sum(
                self.requests.get((segment, s), {}).get(client, 0) for s in previous_starts
            )
            outside = {}
            rows = self.features[(segment, window_start, client)]
            for feature, summary in summaries(rows).items():
                if feature in references:
                    q = outside_reference(summary, references[feature][1])
                    if q.total:
                        outside[feature] = q.rate
            worst = min(outside, key=lambda f: (-outside[f], f), default="")
            out.append(
                base
                | {
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
        return {"client_activity_rows": out}
