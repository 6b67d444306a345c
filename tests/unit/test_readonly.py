"""Read-only queries on a real chDB: nothing a reader sends changes a table, view, setting or
file, errors are one line, limits hold and cannot be lifted, and a failed query does not
spoil the next one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink
from pipeline.sink.readonly import Limits, QueryError, ReadOnlyQueries, decode

DB = "readonly_db"

#: Statements that would change something if they ran, and what each must be told.
WRITES = {
    "INSERT INTO dead_letters_rows (reason) VALUES ('x')": "not INSERT",
    "CREATE TABLE scratch (x UInt8) ENGINE = Memory": "not CREATE",
    "CREATE TEMPORARY TABLE scratch (x UInt8)": "not CREATE",
    "DROP TABLE dead_letters_rows": "not DROP",
    "TRUNCATE TABLE dead_letters_rows": "not TRUNCATE",
    "ALTER TABLE dead_letters_rows DELETE WHERE 1": "not ALTER",
    "RENAME TABLE dead_letters_rows TO gone": "not RENAME",
    "DETACH TABLE dead_letters_rows": "not DETACH",
    "ATTACH TABLE dead_letters_rows": "not ATTACH",
    "OPTIMIZE TABLE dead_letters_rows FINAL": "not OPTIMIZE",
    "SET max_result_rows = 0": "not SET",
    "SYSTEM STOP MERGES": "not SYSTEM",
    "KILL QUERY WHERE 1": "not KILL",
    "USE system": "not USE",
    "SELECT 1; SELECT 2": "Multi-statements are not allowed",
    "SELECT 1; DROP TABLE dead_letters_rows": "Multi-statements are not allowed",
    "/* x */ SELECT 1 SETTINGS readonly = 0": "Cannot modify 'readonly' setting in readonly mode",
    "SELECT 1 SETTINGS max_result_rows = 0": "Cannot modify 'max_result_rows' setting",
    "SELECT 1 INTO OUTFILE '{dir}/out.txt'": "INTO OUTFILE is refused",
    "SHOW TABLES INTO OUTFILE '{dir}/tables.txt'": "INTO OUTFILE is refused",
    "SELECT 1 FORMAT CSV": "FORMAT is refused",
    "SELECT file('/etc/hostname')": "file() is refused",
    "SELECT * FROM file('/etc/hostname', 'LineAsString')": "file() is refused",
    "DESCRIBE TABLE file('/etc/hostname', 'LineAsString')": "file() is refused",
    "SELECT * FROM url('http://127.0.0.1:1/x', 'CSV')": "url() is refused",
    "SELECT * FROM sqlite('{dir}/made.db', 't')": "sqlite() is refused",
    "SELECT 1 WHERE 1 IN (SELECT * FROM `executable`('id', 'TSV', 'x UInt8'))": (
        "executable() is refused"
    ),
    "INSERT INTO FUNCTION file('{dir}/out.csv', 'CSV', 'x UInt8') SELECT 1": "not INSERT",
}


@pytest.fixture(scope="module")
def sink(chdb_path: Path) -> ClickHouseSink:
    sink = ClickHouseSink(f"chdb://{chdb_path}", DB, Settings(window="10s"))
    sink.migrate()
    sink.insert(
        "dead_letters_rows",
        [{"source_topic": "t", "reason": "r", "raw": b"\xff", "received_at": 1_700_000_040_000}],
    )
    return sink


@pytest.fixture
def queries(sink: ClickHouseSink, chdb_path: Path) -> ReadOnlyQueries:
    return ReadOnlyQueries(f"chdb://{chdb_path}", DB, Limits(5.0, 1000, 0, 0), sink.lock)


def snapshot(sink: ClickHouseSink) -> list[tuple]:
    """Every table and view of the database with its definition and rows, and the session
    settings of the sink's connection."""
    _, tables = sink.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String}"
        " ORDER BY name",
        {"db": DB},
    )
    counts = [sink.query(f"SELECT count() FROM {DB}.{name}")[1][0][0] for name, _ in tables]
    _, changed = sink.query("SELECT name, value FROM system.settings WHERE changed ORDER BY name")
    return [*tables, tuple(counts), *changed]


def test_nothing_that_writes_runs_and_each_refusal_is_one_line(
    sink: ClickHouseSink, queries: ReadOnlyQueries, tmp_path: Path
) -> None:
    before = snapshot(sink)
    for sql, reason in WRITES.items():
        with pytest.raises(QueryError) as refused:
            queries.run(sql.replace("{dir}", str(tmp_path)))
        message = str(refused.value)
        assert reason in message and "\n" not in message, (sql, message)
        assert "version" not in message and "formatQuerySingleLine" not in message, message
    assert snapshot(sink) == before
    assert list(tmp_path.iterdir()) == []  # no file written or created
    # The session is still read-only after every attempt.
    _, rows = decode(queries.run("SELECT name, value FROM system.settings WHERE name = 'readonly'"))
    assert rows == [["readonly", "1"]]


def test_statements_that_read_answer_with_their_values(queries: ReadOnlyQueries) -> None:
    columns, rows = decode(
        queries.run(
            "-- a comment; with a semicolon\n"
            "SELECT source_topic, reason, raw, received_at, count() OVER () AS n,"
            " 18446744073709551615 AS big, nan AS missing, format('{}!', 'a') AS f,"
            " 'INTO OUTFILE' AS s FROM dead_letters;"
        )
    )
    assert columns == [
        "source_topic",
        "reason",
        "raw",
        "received_at",
        "n",
        "big",
        "missing",
        "f",
        "s",
    ]
    assert rows == [
        [
            "t",
            "r",
            "\ufffd",
            "2023-11-14 22:14:00.000",
            1,
            18446744073709551615,
            None,
            "a!",
            "INTO OUTFILE",
        ]
    ]
    for sql in (
        "SHOW TABLES",
        "DESCRIBE TABLE dead_letters",
        "EXISTS TABLE dead_letters",
        "EXPLAIN SELECT 1",
        "WITH 2 AS x SELECT x",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "SELECT number FROM numbers(3)",
        f"SELECT * FROM merge('{DB}', '^dead_letters_rows$')",
    ):
        assert decode(queries.run(sql))[1], sql
    assert decode(queries.run("SELECT name, value FROM modelmon_settings FINAL"))[1] == [
        ["window", "10s"]
    ]


def test_limits_are_errors_and_the_next_query_answers_right(
    sink: ClickHouseSink, chdb_path: Path
) -> None:
    queries = ReadOnlyQueries(f"chdb://{chdb_path}", DB, Limits(0.5, 100, 0, 0), sink.lock)
    over = {
        "SELECT number FROM numbers(1000)": "TOO_MANY_ROWS_OR_BYTES",
        "SELECT count() FROM numbers(100000000000)": "TIMEOUT_EXCEEDED",
        "SELECT throwIf(number = 5000) FROM numbers(10000)": "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
    }
    for i, (sql, name) in enumerate(over.items()):
        with pytest.raises(QueryError, match=name):
            queries.run(sql)
        # chDB would answer this with the failed query's empty result on the same handle.
        assert decode(queries.run(f"SELECT {i} AS i"))[1] == [[i]]
    queries.close()
    small = ReadOnlyQueries(f"chdb://{chdb_path}", DB, Limits(5.0, 0, 1000, 0), sink.lock)
    with pytest.raises(QueryError, match="TOO_MANY_ROWS_OR_BYTES"):
        small.run("SELECT repeat(toString(number), 100) FROM numbers(100)")
    small.close()


def test_negative_limits_are_refused() -> None:
    from pipeline.settings import Settings

    with pytest.raises(ValueError, match="query_max_rows: must be >= 0"):
        Limits.of(Settings(query_max_rows=-1))
