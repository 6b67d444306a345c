"""Reading the results: read-only SQL on the result database, wherever it is.

With the embedded database, the worker that holds it answers through its query endpoint
(chDB opens a database in one process only); when none does, the reader opens the database
itself. A ClickHouse server is asked directly. Every path is read-only in the same way
(:mod:`pipeline.sink.readonly`) and answers the same values, and none migrates.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.endpoint import MAX_WAITING, Endpoint, ask, find, held
from pipeline.settings import Settings
from pipeline.sink.clickhouse import chdb_path
from pipeline.sink.readonly import Limits, ReadOnlyQueries, decode

#: How long a reader waits for the process that holds the embedded database to publish its
#: endpoint (a worker publishes it as it starts, before it opens the database).
HELD_WAIT_SECONDS = 5.0


class ResultReader:
    """Read-only SQL on the result database of ``settings``.

    Parameters
    ----------
    settings
        ``clickhouse_dsn`` and ``clickhouse_database`` say where; ``query_url`` and
        ``query_token`` name a worker's endpoint outright; ``query_*`` limits bound a query
        that runs here.

    Examples
    --------
    >>> reader = ResultReader(Settings(clickhouse_dsn="chdb:///no/such/path"))
    >>> reader.query("SELECT count() FROM quality_windows")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: no modelmon database 'modelmon' at /no/such/path (a worker ... creates it)
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = Limits.of(settings)
        self._direct: ReadOnlyQueries | None = None

    def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        """Column names and rows of one statement that reads (values as ClickHouse writes
        them in JSON: times as text, NaN as None). ValueError (one line) if it is refused
        or fails; ConnectionError if the database cannot be reached."""
        return decode(self._run(sql))

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()

    def __enter__(self) -> ResultReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, sql: str) -> bytes:
        s = self.settings
        if s.query_url:
            if not s.query_token:
                raise ValueError("query_url needs query_token")
            return ask(Endpoint(s.query_url, s.query_token, 0, ""), sql, self._timeout())
        if self._direct is None:
            directory = chdb_path(s.clickhouse_dsn)
            if directory is not None:
                endpoint = self._endpoint(directory)
                if endpoint is not None:
                    try:
                        return ask(endpoint, sql, self._timeout())
                    except ConnectionRefusedError:
                        pass  # it stopped since (and its pid is another process's now)
                if not (directory / "metadata" / f"{s.clickhouse_database}.sql").is_file():
                    # Checked before opening: chDB would create the path.
                    raise ValueError(
                        f"no modelmon database {s.clickhouse_database!r} at {directory}"
                        " (a worker with this clickhouse_dsn creates it)"
                    )
            self._direct = ReadOnlyQueries(s.clickhouse_dsn, s.clickhouse_database, self.limits)
        return self._direct.run(sql)

    def _endpoint(self, directory: Path) -> Endpoint | None:
        """The endpoint of the live worker holding ``directory``, or None if no process
        holds it."""
        deadline = time.monotonic() + HELD_WAIT_SECONDS
        while (endpoint := find(directory)) is None and held(directory):
            if time.monotonic() > deadline:
                raise ValueError(
                    f"the database at {directory} is held by a process that publishes no query"
                    " endpoint (a worker with query_listen empty, or not modelmon's); stop it"
                    " to read here"
                )
            time.sleep(0.2)
        if endpoint is not None and endpoint.database != self.settings.clickhouse_database:
            raise ValueError(
                f"the worker holding {directory} serves database {endpoint.database!r}: read"
                f" with clickhouse_database {endpoint.database!r}, and qualify the tables of"
                f" others ({self.settings.clickhouse_database}.<table>)"
            )
        return endpoint

    def _timeout(self) -> float | None:
        """How long to wait for an endpoint: this query's limit and those ahead of it."""
        limit = self.limits.timeout_seconds
        return (MAX_WAITING + 2) * limit + 30 if limit else None
