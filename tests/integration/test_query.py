"""Reading results while the worker runs: ``modelmon query`` goes through the query endpoint
of the worker that holds the embedded database, gets the rows the worker wrote, needs the
worker's token, and changes nothing; once the worker stopped, it reads the database itself,
with the same answers and the same refusals."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.embedded import worker_command
from producers.client import MonitorClient

pytestmark = pytest.mark.integration

START = 1_700_000_040.0
WINDOW = 10
EVENTS = 600  # two models, 100 s of event time: ten windows each

ROWS_SQL = (
    "SELECT model, toUnixTimestamp64Milli(window_start) AS ws, predictions, labelled"
    " FROM quality_windows ORDER BY model, ws"
)

#: Statements that would change the database, its settings or files, and a word of the one
#: line each is refused with.
WRITES = {
    "INSERT INTO dead_letters_rows (reason) VALUES ('x')": "INSERT",
    "CREATE TABLE scratch (x UInt8) ENGINE = Memory": "CREATE",
    "DROP TABLE quality_partials": "DROP",
    "DROP VIEW model_activity": "DROP",
    "SET max_result_rows = 0": "SET",
    "SELECT 1; DROP TABLE quality_partials": "Multi-statements are not allowed",
    "SYSTEM STOP MERGES": "SYSTEM",
    "OPTIMIZE TABLE quality_partials FINAL": "OPTIMIZE",
    "SELECT 1 INTO OUTFILE '{dir}/out.txt'": "INTO OUTFILE",
    "SELECT * FROM file('{dir}/in.csv', 'CSV', 'x UInt8')": "file()",
    "SELECT * FROM url('http://127.0.0.1:9/x', 'CSV', 'x UInt8')": "url()",
}


def traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    predictions, labels = [], []
    for i in range(EVENTS):
        model = ("a", "b")[i % 2]
        event_id = f"{model}{i}"
        ts = START + i * (100 / EVENTS)
        predictions.append(
            {
                "event_id": event_id,
                "model": model,
                "task": "binary",
                "ts": ts,
                "prediction": i % 3 == 0,
            }
        )
        if i % 4:
            labels.append({"event_id": event_id, "ts": ts + 2, "label": 1})
    return predictions, labels


def expected_rows() -> list[dict[str, Any]]:
    predictions, labels = traffic()
    labelled = {lab["event_id"] for lab in labels}
    counts: Counter[tuple[str, int]] = Counter()
    done: Counter[tuple[str, int]] = Counter()
    for p in predictions:
        key = (p["model"], int(p["ts"] // WINDOW) * WINDOW * 1000)
        counts[key] += 1
        done[key] += p["event_id"] in labelled
    return [
        {"model": m, "ws": ws, "predictions": counts[(m, ws)], "labelled": done[(m, ws)]}
        for m, ws in sorted(counts)
    ]


async def produce(d: Any) -> None:
    predictions, labels = traffic()
    async with MonitorClient(d.bootstrap_servers, topic_prefix=d.prefix, linger_ms=5) as client:
        for p in predictions:
            assert client.log_prediction(**p)
        await client.flush()
        for lab in labels:
            assert client.log_label(**lab)
        await client.flush()


def modelmon_query(d: Any, sql: str, *flags: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "--log-level=WARNING",
            "query",
            "--format=json",
            f"--clickhouse-dsn={d.dsn}",
            *flags,
            sql,
        ],
        capture_output=True,
        timeout=120,
    )


def read(d: Any, sql: str, *flags: str) -> list[dict[str, Any]]:
    out = modelmon_query(d, sql, *flags)
    assert out.returncode == 0, out.stderr.decode()
    return orjson.loads(out.stdout)


def database(d: Any) -> list[Any]:
    """Every table and view with its definition and row count, the stored settings and the
    rows of model_activity (whose definition depends on the window)."""
    tables = read(
        d,
        "SELECT name, create_table_query, total_rows FROM system.tables"
        " WHERE database = 'modelmon' ORDER BY name",
    )
    return [
        tables,
        read(d, "SELECT count() AS n FROM model_activity"),
        read(d, "SELECT name, value FROM modelmon_settings FINAL"),
    ]


def assert_read_only(d: Any, files: Path) -> None:
    """Every write is refused in one line, exit 2, and the database, with another
    window than the worker's, is as it was."""
    before = database(d)
    for sql, reason in WRITES.items():
        out = modelmon_query(d, sql.replace("{dir}", str(files)), "--window=1s")
        error = out.stderr.decode()
        assert out.returncode == 2, (sql, error)
        assert out.stdout == b"", sql
        assert error.startswith("modelmon: error: ") and error.count("\n") == 1, (sql, error)
        assert reason in error, (sql, error)
    assert read(d, "SELECT 1 AS one", "--window=1s") == [{"one": 1}]
    assert database(d) == before
    assert before[2] == [{"name": "window", "value": f"{WINDOW}s"}]
    assert list(files.iterdir()) == []


def post(url: str, sql: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url + "/query", orjson.dumps({"sql": sql}), headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_query_reads_through_the_running_worker_and_the_same_rows_after_it_stopped(
    deployment: Any, tmp_path: Path
) -> None:
    d = deployment(partitions=2)
    settings = d.settings(idle_exit_seconds=0, window=f"{WINDOW}s")
    with open(d.root / "worker.log", "ab") as log:
        worker = subprocess.Popen(worker_command(settings), stdout=log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(produce(d))
        expected = expected_rows()
        deadline = time.monotonic() + 120
        while True:
            out = modelmon_query(d, ROWS_SQL)
            if out.returncode == 0 and orjson.loads(out.stdout) == expected:
                break
            assert worker.poll() is None, (d.root / "worker.log").read_text()
            assert time.monotonic() < deadline, (out.stderr.decode(), out.stdout[:2000])
            time.sleep(1)
        live = out.stdout

        published = Path(d.dsn.removeprefix("chdb://")) / "modelmon-query.json"
        assert stat.S_IMODE(published.stat().st_mode) == 0o600
        endpoint = orjson.loads(published.read_bytes())
        assert endpoint["pid"] == worker.pid and endpoint["url"].startswith("http://127.0.0.1:")
        for token in (None, "", "not-" + endpoint["token"], endpoint["token"][:-1]):
            status, body = post(endpoint["url"], "SELECT 1", token)
            assert status == 401 and "token" in body["error"], (token, status, body)
        status, body = post(endpoint["url"], "SELECT 1 AS one", endpoint["token"])
        assert (status, body["data"]) == (200, [[1]])
        status, body = post(endpoint["url"], "DROP TABLE quality_partials", endpoint["token"])
        assert status == 400 and "not DROP" in body["error"]

        (tmp_path / "live").mkdir()
        assert_read_only(d, tmp_path / "live")
        assert worker.poll() is None  # nothing a reader sent stopped it
    finally:
        worker.terminate()
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            raise
    assert code == 0
    assert not published.exists()  # withdrawn on a clean stop

    # No worker holds the database now: modelmon query opens it itself.
    out = modelmon_query(d, ROWS_SQL)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == live
    (tmp_path / "direct").mkdir()
    assert_read_only(d, tmp_path / "direct")
