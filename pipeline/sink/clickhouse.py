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
import tempfile
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


#: The embedded engine's allocator (chDB's jemalloc) settings, unless ``JE_MALLOC_CONF`` is
#: set already. chDB builds it to keep freed pages for 5 s, so the sink held what its largest
#: merges and derives of the last seconds had freed: a peak RSS of 594-623 MiB at 250k
#: predictions, against 552-564 MiB with freed pages given back at once, for about 12 % more
#: of the sink's CPU (6 and 8 runs). Shorter delays (250, 1000 ms), also with jemalloc's
#: background thread, did not lower it. Read once, when chDB loads: it applies only if this
#: process has not opened chDB before.
EMBEDDED_MALLOC_CONF = "dirty_decay_ms:0"


def chdb_path(dsn: str) -> Path | None:
    """The embedded engine's directory named by a ``chdb://`` DSN, made absolute (relative
    paths are relative to the working directory), or None for a server's DSN. The DSN names
    a directory only: the database is always ``clickhouse_database``.

    >>> chdb_path("chdb:///var/lib/modelmon/chdb")
    PosixPath('/var/lib/modelmon/chdb')
    >>> chdb_path("chdb://modelmon-data/chdb") == Path.cwd() / "modelmon-data" / "chdb"
    True
    >>> chdb_path("chdb://./modelmon-data/chdb") == chdb_path("chdb://modelmon-data/chdb")
    True
    >>> chdb_path("http://user:pass@host:8123") is None
    True
    """
    if not dsn.lower().startswith("chdb:"):
        return None
    path = dsn[len("chdb:") :].removeprefix("//")
    if not path or dsn[5:7] != "//" or "?" in path or "#" in path:
        raise ValueError(
            "clickhouse_dsn: a chdb DSN is chdb://relative/path or chdb:///absolute/path"
            f" (a directory, nothing else), got {dsn!r}"
        )
    return Path(os.path.abspath(path))


def first_line(text: str) -> str:
    """The first non-empty line of an error message (the engine's come with stack traces).

    >>> first_line("\\nCode: 81. DB::Exception: nope\\n  0. stack")
    'Code: 81. DB::Exception: nope'
    """
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def connect(dsn: str, connect_timeout: float | None = None) -> Any:
    """A clickhouse-connect client of ``dsn`` (an embedded engine at :func:`chdb_path`, or a
    server, whose answer ``connect_timeout`` seconds bound); ConnectionError, one line
    without the password, if it cannot be opened."""
    path = chdb_path(dsn)
    try:
        if path is not None:
            return clickhouse_connect.get_client(interface="chdb", path=str(path))
        # The scheme decides TLS (clickhouse-connect would infer it from the port only).
        scheme = urlsplit(dsn).scheme
        return clickhouse_connect.get_client(
            dsn=dsn,
            interface=scheme if scheme in ("http", "https") else None,
            **({} if connect_timeout is None else {"connect_timeout": connect_timeout}),
        )
    except Exception as exc:
        reason = scrub(first_line(str(exc)), dsn)
        raise ConnectionError(f"cannot open ClickHouse at {redact(dsn)}: {reason}") from None


def _writable_directory(path: Path) -> None:
    """Create ``path`` and make sure files can be created in it (the engine writes its
    files there, and only there)."""
    problem = f"cannot use {path} for the embedded ClickHouse"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConnectionError(f"{problem}: {exc.filename or path}: {exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConnectionError(f"{problem}: cannot create files in it: {exc.strerror}") from None


class ClickHouseSink:
    """One connection to the result database, with the tables and views ``settings``
    declare; methods are blocking and thread-safe. ``connect_timeout`` (seconds) bounds how
    long a server may take to answer."""

    def __init__(
        self,
        dsn: str,
        database: str,
        settings: Settings | None = None,
        *,
        connect_timeout: float | None = None,
    ) -> None:
        if not _IDENTIFIER.match(database):
            raise ValueError(f"database name must be a plain identifier, got {database!r}")
        path = chdb_path(dsn)
        if path is not None:
            _writable_directory(path)
            os.environ.setdefault("JE_MALLOC_CONF", EMBEDDED_MALLOC_CONF)
        settings = settings or Settings()
        self.database = database
        #: Every table and view, as the settings' families declare them.
        self.schema = tables.Schema.of(settings)
        self.view_settings = tables.view_settings(settings)
        self._lock = threading.Lock()
        self._client = connect(dsn, connect_timeout)

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
