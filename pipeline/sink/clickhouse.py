"""The ClickHouse writer: migrations on start, batched inserts, queries.

It talks to clickhouse-connect's abstract client only, so the embedded engine
(``chdb:///path``) and a server (``http://user:pass@host:8123``) are one code path. Every
result table is a ReplacingMergeTree keyed by what a row describes and versioned by the input
folded into it, so a re-delivered or replayed batch leaves the tables as they were.
chDB has no async client: callers run these methods in a worker thread.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import orjson

from pipeline.settings import Settings
from pipeline.sink import tables

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def redact(dsn: str) -> str:
    """The DSN with everything between ``scheme://user:`` and the last ``@`` replaced, for
    logs and errors (a password may hold '/', '?' or '#', which URL parsing stops at).

    >>> redact("http://me:s3/cr?t@host:8123/db")
    'http://me:***@host:8123/db'
    """
    return re.sub(_CREDENTIALS, r"\1***@", dsn)


def scrub(text: str, dsn: str) -> str:
    """``text`` (e.g. an error from the client library) without the DSN's password."""
    found = _CREDENTIALS.match(dsn)
    password = found.group(2) if found else ""
    # URL parsers cut a password at '/', '?', '#' or '@' and may quote the pieces.
    for secret in sorted({password, *re.split(r"[/?#@]", password)}, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


_CREDENTIALS = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)(.*)@", re.I | re.S)


def chdb_path(dsn: str) -> Path | None:
    """The absolute directory of an embedded (``chdb://``) DSN, or None for a server.

    >>> chdb_path("chdb:///var/lib/modelmon/chdb"), chdb_path("http://host:8123")
    (PosixPath('/var/lib/modelmon/chdb'), None)
    """
    if not dsn.startswith("chdb://"):
        return None
    return Path(os.path.abspath(dsn.removeprefix("chdb://")))


def connect(dsn: str) -> Any:
    """A clickhouse-connect client of ``dsn``; ConnectionError (without the password) if it
    cannot be opened."""
    try:
        # The scheme decides TLS (clickhouse-connect would infer it from the port only).
        scheme = urlsplit(dsn).scheme
        interface = scheme if scheme in ("http", "https") else None
        return clickhouse_connect.get_client(dsn=dsn, interface=interface)
    except Exception as exc:
        reason = scrub(str(exc), dsn)
        raise ConnectionError(f"cannot open ClickHouse at {redact(dsn)}: {reason}") from None


#: The embedded engine's allocator (chDB's jemalloc) settings, unless ``JE_MALLOC_CONF`` is
#: set already. chDB builds it to keep freed pages for 5 s, so the sink held what its largest
#: merges and derives of the last seconds had freed: a peak RSS of 594-623 MiB at 250k
#: predictions, against 552-564 MiB with freed pages given back at once, for about 12 % more
#: of the sink's CPU (6 and 8 runs). Shorter delays (250, 1000 ms), also with jemalloc's
#: background thread, did not lower it. Read once, when chDB loads: it applies only if this
#: process has not opened chDB before.
EMBEDDED_MALLOC_CONF = "dirty_decay_ms:0"


class ClickHouseSink:
    """One connection to the result database; methods are blocking and thread-safe."""

    def __init__(self, dsn: str, database: str, settings: Settings | None = None) -> None:
        if not _IDENTIFIER.match(database):
            raise ValueError(f"database name must be a plain identifier, got {database!r}")
        if dsn.startswith("chdb://"):
            Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("JE_MALLOC_CONF", EMBEDDED_MALLOC_CONF)
        settings = settings or Settings()
        self.database = database
        #: Every table and view, as the settings' families declare them.
        self.schema = tables.Schema.of(settings)
        self.view_settings = tables.view_settings(settings)
        self._lock = threading.Lock()
        self._client = connect(dsn)

    def sibling(self, database: str) -> ClickHouseSink:
        """The same connection writing to another database (a replay's result set), migrated.
        chDB opens one engine per process, so result sets share it."""
        if not _IDENTIFIER.match(database):
            raise ValueError(f"database name must be a plain identifier, got {database!r}")
        other = object.__new__(ClickHouseSink)
        other.database, other.schema, other.view_settings = (
            database,
            self.schema,
            self.view_settings,
        )
        other._lock, other._client = self._lock, self._client
        other.migrate()
        return other

    @property
    def lock(self) -> threading.Lock:
        """Held by every call; a reader of the same engine takes it too, so that its queries
        and these writes take turns."""
        return self._lock

    def migrate(self) -> None:
        """Create the database, tables and views that do not exist yet, add the columns a
        table lacks (idempotent), and store the settings the views are made with
        (:data:`tables.SETTINGS`). Only a worker migrates: views follow the settings of the
        last worker that started."""
        stored = self.view_settings
        with self._lock:
            self._client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            for statement in self.schema.ddl(self.database, stored):
                self._client.command(statement)
            self._client.insert(
                f"{self.database}.{tables.SETTINGS.name}",
                [list(item) for item in stored.items()],
                column_names=["name", "value"],
            )

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows (dicts with the same keys) into ``table`` of the result database."""
        if not rows:
            return
        if not _IDENTIFIER.match(table):
            raise ValueError(f"table name must be a plain identifier, got {table!r}")
        columns = list(rows[0])
        maps = self.schema.table(table).int_map_columns
        data = [[_map_keys(row[c]) if c in maps else row[c] for c in columns] for row in rows]
        with self._lock:
            self._client.insert(f"{self.database}.{table}", data, column_names=columns)

    def insert_json(self, table: str, rows: bytes) -> None:
        """Insert rows given as JSON objects separated by commas (ClickHouse parses them:
        no Python object per value); times as seconds (see :func:`json_rows`)."""
        if not rows:
            return
        if not _IDENTIFIER.match(table):
            raise ValueError(f"table name must be a plain identifier, got {table!r}")
        with self._lock:
            self._client.raw_insert(
                f"{self.database}.{table}",
                insert_block=rows,
                fmt="JSONEachRow",
                # floats as Python wrote them, to the last bit (the fast parser may round)
                settings={"precise_float_parsing": 1},
            )

    def time_columns(self, table: str) -> tuple[str, ...]:
        """The DateTime64 columns of ``table``."""
        return self.schema.table(table).time_columns

    def query(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a query (after :meth:`migrate`, unqualified names are the result database's);
        values go in ``parameters`` ({name:Type} placeholders), never into the SQL text."""
        with self._lock:
            self._client.database = self.database  # unqualified names resolve here
            result = self._client.query(sql, parameters=parameters)
        return list(result.column_names), list(result.result_rows)

    def close(self) -> None:
        with self._lock:
            self._client.close()


def json_rows(rows: Sequence[dict[str, Any]], time_columns: Sequence[str]) -> bytes:
    """``rows`` as JSON objects separated by commas, for :meth:`ClickHouseSink.insert_json`;
    the (non-negative) epoch milliseconds of ``time_columns`` become exact decimal seconds
    (ClickHouse reads a bare integer as seconds). Map keys stay strings: ClickHouse parses
    them to the key type.

    >>> json_rows([{"t": 1700000040123, "n": 1}, {"t": 5, "n": None}], ["t"])
    b'{"t":"1700000040.123","n":1},{"t":"0.005","n":null}'
    """
    for row in rows:
        for c in time_columns:
            ms = row.get(c)
            if type(ms) is int:
                row[c] = f"{ms // 1000}.{ms % 1000:03d}"
    return orjson.dumps(rows)[1:-1]


def _map_keys(value: Mapping[Any, Any]) -> dict[int, Any]:
    # JSON carries map keys as strings; maps keyed by integers (histogram bins) need them back.
    return {int(k): v for k, v in value.items()}
