"""``modelmon query`` on an embedded database that no worker holds: it reads the database
itself without migrating it, says in one line when there is none (creating nothing), and
ignores the endpoint file of a worker that is gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from pipeline.endpoint import Endpoint, publish

CREATE = """
import sys
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink
sink = ClickHouseSink("chdb://" + sys.argv[1], "modelmon", Settings(window="10s"))
sink.migrate()
sink.insert("dead_letters_rows", [{"source_topic": "t", "reason": "r", "raw": b"x"}])
sink.close()
"""


def query(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "query",
            "--format=json",
            f"--clickhouse-dsn={dsn}",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_path_without_a_modelmon_database_is_one_line_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "typo" / "chdb", empty):
        out = query(f"chdb://{path}", "SELECT 1")
        assert out.returncode == 2
        assert out.stdout == ""
        assert out.stderr == (
            f"modelmon: error: no modelmon database 'modelmon' at {path}"
            " (a worker with this clickhouse_dsn creates it)\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert list(empty.iterdir()) == []


def test_the_endpoint_file_of_a_stopped_worker_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "chdb"
    subprocess.run([sys.executable, "-c", CREATE, str(path)], check=True, timeout=120)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    publish(path, Endpoint("http://127.0.0.1:9", "stale", int(gone.stdout), "modelmon"))
    out = query(
        f"chdb://{path}",
        "SELECT reason, (SELECT create_table_query FROM system.tables WHERE database ="
        " 'modelmon' AND name = 'model_activity') AS view FROM dead_letters",
    )
    assert out.returncode == 0, out.stderr
    ((row,),) = [orjson.loads(out.stdout)]
    assert row["reason"] == "r"
    # The view is as the worker made it (10 s steps), not migrated with the reader's 60.
    assert "toIntervalMillisecond(10000)" in row["view"], row["view"]
    assert (path / "modelmon-query.json").exists()  # a reader changes no file
