"""Read-only SQL on the result database: the one way readers run queries, on the embedded
engine (in a worker or in the reader's own process) and on a server alike.

Three layers keep a query from changing anything. The session is read-only in the engine
(``readonly=1``, set last, so that neither the statement nor a ``SET`` can lift it or the
limits set before it). The engine parses the text as exactly one statement
(``formatQuerySingleLine``, with the text as a parameter, never run). Its canonical form must
be a statement that reads and must not do what chDB runs in spite of ``readonly``: ``SYSTEM``
and ``KILL`` statements, ``INTO OUTFILE``, ``file()``, and table functions that ``readonly``
refuses only after they opened or created what they name (``sqlite()`` creates its file).
The canonical text is what runs, and its results are ClickHouse's JSONCompact bytes: a worker
hands them on without making a Python object of each value.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, fields
from typing import Any

import orjson

from pipeline.settings import Settings
from pipeline.sink.clickhouse import connect, redact, scrub

#: Statements that read: the first keyword of the canonical text (or an opening parenthesis).
READ_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "EXISTS", "EXPLAIN")

#: How results are written: 64-bit integers as numbers, invalid UTF-8 replaced (raw bytes
#: would not be JSON).
JSON_OUTPUT = {"output_format_json_quote_64bit_integers": 0, "output_format_json_validate_utf8": 1}

_TOKEN = re.compile(r"""'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|"(?:[^"\\]|\\.)*"|\w+|\S""", re.S)


class QueryError(ValueError):
    """A query was refused or failed; the message is one line for the reader."""


@dataclass(frozen=True)
class Limits:
    """What one read-only query may take (0 = no limit); more is an error, not a truncation.

    >>> Limits(10.0, 1000, 0, 0).engine_settings()["max_result_rows"]
    1000
    """

    timeout_seconds: float
    max_rows: int
    max_bytes: int
    max_memory_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        limits = cls(
            settings.query_timeout_seconds,
            settings.query_max_rows,
            settings.query_max_bytes,
            settings.query_max_memory_bytes,
        )
        for f in fields(cls):
            if getattr(limits, f.name) < 0:
                raise ValueError(f"query_{f.name}: must be >= 0 (0 = no limit)")
        return limits

    def engine_settings(self) -> dict[str, Any]:
        return {
            "max_execution_time": self.timeout_seconds,
            "max_result_rows": self.max_rows,
            "max_result_bytes": self.max_bytes,
            "result_overflow_mode": "throw",
            "max_memory_usage": self.max_memory_bytes,
        }


class ReadOnlyQueries:
    """Read-only queries on ``database`` of ``dsn``, one at a time under ``lock`` (a sink's
    :attr:`~pipeline.sink.clickhouse.ClickHouseSink.lock`, when it writes to the same
    engine). Blocking: a worker calls :meth:`run` from a thread.

    >>> queries = ReadOnlyQueries("chdb:///srv/modelmon/chdb", "modelmon", Limits(10, 100, 0, 0))
    >>> queries.database  # nothing is opened before the first query
    'modelmon'
    """

    def __init__(
        self, dsn: str, database: str, limits: Limits, lock: threading.Lock | None = None
    ) -> None:
        self.dsn, self.database, self.limits = dsn, database, limits
        self._lock = lock or threading.Lock()
        self._client: Any = None
        self._refused: frozenset[str] = frozenset()

    def run(self, sql: str) -> bytes:
        """The result of one statement that reads, as ClickHouse's JSONCompact; QueryError
        (one line) if it is refused or fails."""
        with self._lock:
            client = self._client or self._open()
            try:
                canonical = client.query(
                    "SELECT formatQuerySingleLine({sql:String})", parameters={"sql": sql}
                ).result_rows[0][0]
                refuse(canonical, self._refused)
                return bytes(client.raw_query(canonical, fmt="JSONCompact"))
            except QueryError:
                raise
            except Exception as exc:
                # chDB answers the next query of a handle whose query failed while running
                # with that failed query's (empty) result: a fresh handle answers it instead.
                self._discard()
                raise QueryError(one_line(scrub(str(exc), self.dsn))) from None

    def close(self) -> None:
        with self._lock:
            self._discard()

    def _open(self) -> Any:
        client = connect(self.dsn)
        try:
            rows = client.query(
                "SELECT lower(name) FROM system.table_functions WHERE NOT allow_readonly"
                " AND lower(name) NOT IN (SELECT lower(name) FROM system.functions)"
            ).result_rows
            wanted = {**self.limits.engine_settings(), **JSON_OUTPUT, "readonly": 1}
            for name, value in wanted.items():  # readonly last: no setting changes after it
                known = client.server_settings.get(name)
                # A server profile that fixes a setting (a read-only user) keeps its value.
                if known is None or known.readonly != 1:
                    client.set_client_setting(name, value)
            client.database = self.database
        except Exception as exc:
            client.close()
            reason = one_line(scrub(str(exc), self.dsn))
            where = redact(self.dsn)
            raise ConnectionError(f"cannot open ClickHouse at {where}: {reason}") from None
        # Table functions that share a name with a plain function (format) are left to
        # readonly; file() is refused in both roles: as a function it reads a local file.
        self._refused = frozenset(r[0] for r in rows) | {"file"}
        self._client = client
        return client

    def _discard(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()


def refuse(canonical: str, refused_functions: frozenset[str]) -> None:
    """Raise QueryError unless the engine's canonical text of one statement reads without
    writing files or naming ``refused_functions``. Keywords are upper case in canonical text,
    comments are gone and literals are quoted, so tokens tell clauses from names and strings.

    >>> refuse("SELECT format('{}', 1) AS `file` FROM t WHERE s = 'INTO OUTFILE'", frozenset())
    >>> refuse("SHOW TABLES INTO OUTFILE 'x'", frozenset())
    Traceback (most recent call last):
    ...
    pipeline.sink.readonly.QueryError: INTO OUTFILE is refused: results are printed, not written
    >>> refuse("SELECT * FROM sqlite('x.db', 't')", frozenset({"sqlite"}))
    Traceback (most recent call last):
    ...
    pipeline.sink.readonly.QueryError: sqlite() is refused: it reaches outside the result database
    """
    tokens = _TOKEN.findall(canonical)
    first = tokens[0].upper() if tokens else ""
    if first != "(" and first not in READ_STATEMENTS:
        raise QueryError(
            f"only statements that read are run ({', '.join(READ_STATEMENTS)}), not {first}"
        )
    depth = 0
    for token, after in zip(tokens, [*tokens[1:], ""], strict=True):
        if token in ("(", "["):
            depth += 1
        elif token in (")", "]"):
            depth -= 1
        elif depth == 0 and (token, after) == ("INTO", "OUTFILE"):
            raise QueryError("INTO OUTFILE is refused: results are printed, not written")
        elif depth == 0 and token == "FORMAT" and after != "(":
            raise QueryError("FORMAT is refused: modelmon query --format chooses the output")
        elif after == "(" and token.strip('`"').lower() in refused_functions:
            name = token.strip('`"')
            raise QueryError(f"{name}() is refused: it reaches outside the result database")


def decode(body: bytes) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows of a JSONCompact result (values as ClickHouse writes them in
    JSON: times as text, NaN and infinities as null).

    >>> decode(b'{"meta": [{"name": "n", "type": "UInt64"}, {"name": "x", "type": "Float64"}],'
    ...     b' "data": [[1, 1], [2, 0.5]], "rows": 2}')
    (['n', 'x'], [[1, 1.0], [2, 0.5]])
    """
    try:
        result = orjson.loads(body)
    except orjson.JSONDecodeError:
        # A server that failed after it began to answer appends its error to the output.
        raise QueryError(one_line(body[-2000:].decode(errors="replace"))) from None
    if "exception" in result:
        raise QueryError(one_line(result["exception"]))
    rows = result["data"]
    # JSON writes a whole float as an integer (1 for 1.0): floats are floats again.
    for i, column in enumerate(result["meta"]):
        if re.match(r"(Nullable\()?(Float|BFloat)", column["type"]):
            for row in rows:
                if type(row[i]) is int:
                    row[i] = float(row[i])
    return [c["name"] for c in result["meta"]], rows


def one_line(message: str) -> str:
    """A ClickHouse error on one line, from its code on, without the engine's version and
    the statement-parsing wrapper of :meth:`ReadOnlyQueries.run`.

    >>> one_line("HTTPDriver received ClickHouse error code 164\\n Code: 164. DB::Exception: "
    ...     "Cannot modify 'readonly' setting in readonly mode. (READONLY) (version 26.9.2.1)")
    "Code: 164. DB::Exception: Cannot modify 'readonly' setting in readonly mode. (READONLY)"
    """
    start = message.find("Code: ")
    text = " ".join(message[max(start, 0) :].split())
    text = re.sub(r"\s*\(version [\d.]+(?: \(official build\))?\)\.?", "", text)
    return re.sub(r"\s*:? In scope SELECT formatQuerySingleLine\(.*\)\.(?= \(\w+\)$)", "", text)
