"""``modelmon demo``: the whole pipeline on one machine, with a real model's traffic.

An embedded broker, a worker process owning an embedded chDB, the digits classifier's
predictions and delayed labels (degrading halfway), then per-window quality read back with SQL.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from pipeline.app import all_topics
from pipeline.embedded import EMBEDDED_WORKER_FLAGS, EmbeddedBroker, run_worker_until_idle
from pipeline.kafka import ensure_topics
from pipeline.settings import Settings

QUALITY_SQL = """
SELECT window_start, segment, predictions, labelled, accuracy, macro_recall, macro_f1,
       log_loss, roc_auc
FROM quality_windows
ORDER BY window_start, segment
"""


def run_demo(events: int, data_dir: str, seed: int = 0) -> int:
    from pipeline.cli import _print_table
    from pipeline.sink.clickhouse import ClickHouseSink
    from producers.simulate import simulate

    root = Path(data_dir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    dsn = f"chdb://{root / 'chdb'}"
    with EmbeddedBroker() as broker:
        settings = Settings.load(overrides={"bootstrap_servers": broker.bootstrap_servers})
        asyncio.run(ensure_topics(broker.bootstrap_servers, all_topics(settings)))
        print(
            f"broker on {broker.bootstrap_servers}; sending {events} predictions and their labels"
        )
        summary = asyncio.run(simulate(broker.bootstrap_servers, events=events, seed=seed))
        print(
            f"sent {summary.predictions} predictions and {summary.labels} labels "
            f"({summary.missing_labels} never labelled, {summary.duplicate_labels} sent twice)"
        )
        idle = 4.0
        seconds = run_worker_until_idle(
            {
                "bootstrap_servers": broker.bootstrap_servers,
                "clickhouse_dsn": dsn,
                "data_dir": str(root),
                "idle_exit_seconds": str(idle),
                **EMBEDDED_WORKER_FLAGS,
            },
            timeout=600,
            log_path=str(root / "worker.log"),
        )
    log = (root / "worker.log").read_text()
    rate = next(
        (line[line.index("compute:") :].strip() for line in log.splitlines() if "compute:" in line),
        "compute: no throughput line in the worker log",
    )
    print(f"worker ran {seconds:.1f}s (start-up and {idle:.0f}s idle wait included); {rate}")
    sink = ClickHouseSink(dsn, "modelmon")
    sink.migrate()
    columns, rows = sink.query(QUALITY_SQL)
    sink.close()
    print(
        f"\nClassification quality per 1-minute window (noise added from event "
        f"{int(events * 0.5)} on), from ClickHouse:\n"
    )
    _print_table(columns, rows)
    return 0
