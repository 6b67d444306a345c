"""What ``modelmon export`` and ``modelmon replay`` tell a user on the command line: a progress
line whichever the source and the number of replay processes, and where a result set's rows
end up and how to read them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from producers import MonitorClient

pytestmark = pytest.mark.integration

START = 1_700_000_040.0
EVENTS = 300


async def send(d: Any) -> None:
    async with MonitorClient(d.bootstrap_servers, topic_prefix=d.prefix, linger_ms=5) as client:
        for i in range(EVENTS):
            client.log_prediction(
                event_id=f"r{i}", model="m", task="binary", prediction=i % 2, ts=START + i
            )
            client.log_label(event_id=f"r{i}", label=1, ts=START + i + 2)
        await client.flush()


def modelmon(d: Any, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        f"--bootstrap-servers={d.bootstrap_servers}",
        f"--topic-prefix={d.prefix}",
        f"--partitions={d.partitions}",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args, *flags],
        capture_output=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("MODELMON_")},
    )
    # Decoded by hand: text mode would turn the progress line's carriage returns into newlines.
    return subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(), out.stderr.decode()
    )


def final_progress(stderr: str) -> str:
    """The progress line as last drawn (each redraw starts with a carriage return)."""
    return stderr.strip().split("\r")[-1]


def test_export_and_a_file_replay_in_two_processes_show_progress(
    deployment: Any, tmp_path: Path
) -> None:
    d = deployment(partitions=2)
    asyncio.run(send(d))
    archive = tmp_path / "archive.jsonl"

    out = modelmon(d, "export", f"--out={archive}")
    assert out.returncode == 0, out.stderr
    messages = len(archive.read_text().splitlines())
    assert out.stdout.strip() == f"exported {messages} messages to {archive}"
    line = final_progress(out.stderr)
    assert line.startswith("[" + "#" * 30 + "] 100.0% ") and f" {messages} messages" in line, line

    out = modelmon(d, "replay", f"--file={archive}", "--workers=2", "--result-set=check")
    assert out.returncode == 0, out.stderr
    assert f"replayed {2 * EVENTS} events ({messages} messages" in out.stdout
    line = final_progress(out.stderr)
    assert line.startswith("[" + "#" * 30 + "] 100.0% "), line
    assert f"{messages} messages, {2 * EVENTS} events" in line, line


def test_replay_into_a_result_set_says_where_its_rows_go(deployment: Any) -> None:
    d = deployment(partitions=2)
    out = modelmon(d, "replay", "--result-set=fix1", "--no-progress")
    assert out.returncode == 0, out.stderr
    note = out.stderr.strip().splitlines()[0]
    assert "running sink worker" in note and "database modelmon_fix1" in note, note
    assert 'modelmon query "SELECT * FROM modelmon_fix1.quality_windows"' in note, note

    out = modelmon(d, "replay", "--result-set=fix-1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "modelmon: error: --result-set: letters, digits and _ only, up to a database name of"
        " 64, got 'fix-1'"
    ]
