"""A new user's first run, as the command line shows it: ``modelmon worker`` with nothing but
a broker address works from an empty directory and writes only ``modelmon-data`` there, and
every start-up problem (a broker that does not answer, a configuration that does not parse or
has values of the wrong type, a database path that cannot be written, input topics that do
not fit together) stops a command at once with one line and exit code 2, never a traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.app import all_topics
from pipeline.embedded import EMBEDDED_WORKER_FLAGS, EmbeddedBroker, free_port
from pipeline.kafka import TopicAdmin, ensure_topics
from pipeline.settings import Settings
from pipeline.startup import check_topics
from producers import MonitorClient

pytestmark = pytest.mark.integration

START = 1_700_000_040.0  # on a minute boundary


def modelmon(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """Run ``modelmon ARGS`` in ``cwd`` with no ``MODELMON_*`` variable but those of ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELMON_")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(out: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit code 2 and, on stderr, only ``modelmon: error: ...`` naming ``expected``."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("modelmon: error: "), out.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def flags(settings: dict[str, str]) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]


async def send(bootstrap: str, n: int, prefix: str = "modelmon.") -> None:
    async with MonitorClient(bootstrap, topic_prefix=prefix, linger_ms=5) as client:
        for i in range(n):
            event_id = f"first-run-{i}"
            client.log_prediction(
                event_id=event_id,
                model="m",
                task="binary",
                prediction=i % 2,
                score=0.8 if i % 2 else 0.2,
                ts=START + i,
            )
            client.log_label(event_id=event_id, label=i % 3 % 2, ts=START + i + 1)
        await client.flush()


def read_chdb(path: Path, sql: str) -> list[list[Any]]:
    """``sql`` against the embedded database at ``path``, from a process of its own (chDB
    opens one path per process)."""
    code = (
        "import sys, orjson, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(interface='chdb', path=sys.argv[1])\n"
        "print(orjson.dumps([list(r) for r in c.query(sys.argv[2]).result_rows]).decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), sql],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return orjson.loads(out.stdout)


def test_worker_with_defaults_in_an_empty_directory(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Only the broker address (and the embedded broker's short group timeouts): the default
    topic prefix and group (no other test uses them on the session broker), the default data
    directory and the default DSN, relative to the working directory."""
    n = 40
    asyncio.run(send(broker.bootstrap_servers, n))
    out = modelmon(
        "worker",
        f"--bootstrap-servers={broker.bootstrap_servers}",
        "--idle-exit-seconds=3",
        *flags(EMBEDDED_WORKER_FLAGS),
        cwd=tmp_path,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["modelmon-data"]
    chdb = tmp_path / "modelmon-data" / "chdb"
    databases = read_chdb(chdb, "SELECT name FROM system.databases")
    assert ["modelmon"] in databases
    sql = "SELECT sum(predictions), sum(labelled) FROM modelmon.quality_windows"
    counted = read_chdb(chdb, sql)
    assert counted == [[n, n]]


def test_unreachable_broker_is_one_line_within_the_connect_timeout(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    out = modelmon(
        "worker", f"--bootstrap-servers={address}", "--connect-timeout-seconds=2", cwd=tmp_path
    )
    elapsed = time.monotonic() - started
    assert_one_line_error(out, f"cannot reach Kafka at {address} within 2s", "Connect call failed")
    assert elapsed < 20  # 2 s of trying plus the interpreter's start


def test_other_commands_stop_on_an_unreachable_broker_too(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    common = [f"--bootstrap-servers={address}", "--connect-timeout-seconds=1"]
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")
    for command in (
        ["simulate", "--events=10"],
        ["replay"],
        ["export", "--out=x.jsonl"],
        ["reference", "upload", "train.csv", "--model=m"],
    ):
        out = modelmon(*command, *common, cwd=tmp_path)
        assert_one_line_error(out, f"cannot reach Kafka at {address}")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("lateness_seconds = \n", ["m.toml", "not valid TOML", "line 1"]),
        ("lateness_seconds = true\n", ["m.toml", "lateness_seconds", "expected int", "bool True"]),
        ("lateness_seconds = 45.9\n", ["m.toml", "lateness_seconds", "expected int", "45.9"]),
        ('lateness_seconds = "60"\n', ["m.toml", "lateness_seconds", "expected int", "'60'"]),
        ('bootstrap_servers = ["a:1", "b:2"]\n', ["m.toml", "bootstrap_servers", "expected str"]),
        ("group_id = 7\n", ["m.toml", "group_id", "expected str", "int 7"]),
        ("no_such = 1\n", ["m.toml", "unknown settings: no_such"]),
        ("partitions = 0\n", ["partitions: must be >= 1, got 0"]),
    ],
)
def test_bad_config_file_is_one_line_naming_file_and_key(
    tmp_path: Path, toml: str, expected: list[str]
) -> None:
    (tmp_path / "m.toml").write_text(toml)
    assert_one_line_error(modelmon("worker", "--config=m.toml", cwd=tmp_path), *expected)


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    out = modelmon("worker", "--config=absent.toml", cwd=tmp_path)
    assert_one_line_error(out, "absent.toml", "No such file")
    out = modelmon("worker", cwd=tmp_path, env={"MODELMON_CONFIG": "absent.toml"})
    assert_one_line_error(out, "absent.toml", "MODELMON_CONFIG", "No such file")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"MODELMON_LATENESS_SECONDS": "abc"}, ["MODELMON_LATENESS_SECONDS", "'abc'"]),
        ([], {"MODELMON_LATENESS_SECONDS": "30.5"}, ["MODELMON_LATENESS_SECONDS", "'30.5'"]),
        ([], {"MODELMON_FLUSH_INTERVAL_SECONDS": "nan"}, ["MODELMON_FLUSH_INTERVAL_SECONDS"]),
        (["--lateness-seconds", "abc"], {}, ["--lateness-seconds", "expected int", "'abc'"]),
        (["--sink-batch-seconds", "soon"], {}, ["--sink-batch-seconds", "expected float"]),
    ],
)
def test_bad_environment_or_flag_is_one_line_naming_it(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: list[str]
) -> None:
    assert_one_line_error(modelmon("worker", *args, cwd=tmp_path, env=env), *expected)


@pytest.mark.parametrize("role", ["all", "sink"])
@pytest.mark.parametrize("where", ["a file in the way", "a directory no one can write"])
def test_unwritable_chdb_path_is_one_line(tmp_path: Path, role: str, where: str) -> None:
    if where == "a file in the way":
        (tmp_path / "occupied").write_text("")
        dsn, expected = "chdb://occupied/chdb", "Not a directory"
    else:
        dsn, expected = "chdb:///proc/modelmon/chdb", "/proc/modelmon"  # root cannot either
    out = modelmon("worker", f"--role={role}", f"--clickhouse-dsn={dsn}", cwd=tmp_path)
    assert_one_line_error(out, "cannot use", "for the embedded ClickHouse", expected)
    assert not (tmp_path / "tmp").exists()


def test_unreachable_clickhouse_server_is_one_line_without_its_password(tmp_path: Path) -> None:
    dsn = f"http://monitor:pa55-word@127.0.0.1:{free_port()}"
    out = modelmon("worker", f"--clickhouse-dsn={dsn}", cwd=tmp_path)
    line = assert_one_line_error(out, "cannot open ClickHouse at http://monitor:***@127.0.0.1")
    assert "pa55" not in out.stderr + out.stdout, line


def test_predictions_and_labels_with_different_partition_counts(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."  # topics of its own on the shared broker
    asyncio.run(
        ensure_topics(broker.bootstrap_servers, {prefix + "predictions": 4, prefix + "labels": 2})
    )
    out = modelmon(
        "worker",
        f"--bootstrap-servers={broker.bootstrap_servers}",
        f"--topic-prefix={prefix}",
        cwd=tmp_path,
    )
    assert_one_line_error(
        out,
        f"topic {prefix}predictions has 4 partitions and {prefix}labels has 2",
        "--partitions 4",
    )

    async def topics() -> set[str]:
        async with TopicAdmin(broker.bootstrap_servers) as admin:
            return {t for t in await admin.partitions() if t.startswith(prefix)}

    assert asyncio.run(topics()) == {prefix + "predictions", prefix + "labels"}  # no others


def test_worker_runs_with_the_partition_count_the_input_topics_have(deployment: Any) -> None:
    """Input topics of 2 partitions and a worker configured for 4: it says once that it runs
    with 2, creates the topics it lacks with 2, and counts every event."""
    d = deployment(partitions=2)
    n = 60
    asyncio.run(send(d.bootstrap_servers, n, d.prefix))
    settings = d.settings(partitions=4, idle_exit_seconds=3)
    out = modelmon("worker", *flags(settings), cwd=d.root, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in out.stderr.splitlines() if "running with 2" in line]
    assert len(said) == 1 and f"{d.prefix}predictions has 2 partitions" in said[0], said
    assert d.query("SELECT sum(predictions) AS n, sum(labelled) AS l FROM quality_windows") == [
        {"n": n, "l": n}
    ]


def test_check_topics_creates_what_is_missing_with_the_inputs_count(
    broker: EmbeddedBroker,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = Settings.load(env={}, overrides={"topic_prefix": prefix, "partitions": 4})
    asyncio.run(ensure_topics(broker.bootstrap_servers, {prefix + "labels": 3}))
    settings = settings.with_(bootstrap_servers=broker.bootstrap_servers)
    checked = asyncio.run(check_topics(settings, all_topics(settings)))
    assert checked.partitions == 3 and checked.with_(partitions=4) == settings
    counts = asyncio.run(ensure_topics(broker.bootstrap_servers, all_topics(settings)))
    assert set(counts.values()) == {3} and len(counts) == len(all_topics(settings))


def test_replay_of_topics_that_do_not_exist(broker: EmbeddedBroker, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    out = modelmon(
        "replay",
        f"--bootstrap-servers={broker.bootstrap_servers}",
        f"--topic-prefix={prefix}",
        cwd=tmp_path,
    )
    assert_one_line_error(out, f"topics {prefix}predictions, {prefix}labels", "do not exist")
