"""The embedded engine's allocator gives freed pages back at once, unless the operator set
``JE_MALLOC_CONF``; each case in a fresh interpreter, since chDB reads it when it loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sink.clickhouse import EMBEDDED_MALLOC_CONF

READ_DECAY = """
import sys
from pipeline.sink.clickhouse import ClickHouseSink
sink = ClickHouseSink("chdb://" + sys.argv[1], "allocator")
sink.migrate()
_, rows = sink.query("SELECT stats FROM system.jemalloc_stats")
lines = [line.strip() for line in rows[0][0].splitlines()]
print(next(line for line in lines if line.startswith("opt.dirty_decay_ms")))
"""


@pytest.mark.parametrize(
    ("operator", "expected"),
    [(None, EMBEDDED_MALLOC_CONF.removeprefix("dirty_decay_ms:")), ("dirty_decay_ms:700", "700")],
)
def test_embedded_engine_returns_freed_pages_unless_told_otherwise(
    tmp_path: Path, operator: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JE_MALLOC_CONF"}
    if operator is not None:
        env["JE_MALLOC_CONF"] = operator
    out = subprocess.run(
        [sys.executable, "-c", READ_DECAY, str(tmp_path / "chdb")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.splitlines()[-1].startswith(f"opt.dirty_decay_ms: {expected} ")
