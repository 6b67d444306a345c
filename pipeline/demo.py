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
from pipeline.reference import profile_rows, publish
from pipeline.settings import Settings

QUALITY_SQL = """
SELECT window_start, segment, predictions, labelled, accuracy, macro_recall, macro_f1,
       log_loss, roc_auc
FROM quality_windows
ORDER BY window_start, segment
"""


DRIFT_SQL = """
SELECT window_start, segment, features, features_drifted, most_drifted, max_psi
FROM drift_windows
ORDER BY window_start, segment
"""

CLIENTS_SQL = """
SELECT client_id, sum(requests) AS requests,
       round(avg(outside_reference_share), 3) AS mean_outside_share,
       round(max(outside_reference_share), 3) AS max_outside_share,
       topK(1)(outside_reference_feature)[1] AS most_outside
FROM client_activity
GROUP BY client_id
ORDER BY mean_outside_share DESC, client_id
"""

DETECTIONS_SQL = """
SELECT stream, detector, count() AS firings, min(ts) AS first_firing
FROM drift_detections
GROUP BY stream, detector
ORDER BY stream, detector
"""


def run_demo(events: int, data_dir: str, seed: int = 0) -> int:
    from pipeline.cli import _print_table
    from pipeline.results import ResultReader
    from producers.simulate import simulate, training_features

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
        profile = profile_rows(training_features(seed), model="digits", model_version="v1")
        asyncio.run(publish(profile, broker.bootstrap_servers))
        print(f"published a drift reference of {len(profile)} features from the training images")
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
    reader = ResultReader(Settings.load(overrides={"clickhouse_dsn": dsn}))
    print(
        f"\nClassification quality per 1-minute window (noise added from event "
        f"{int(events * 0.5)} on), from ClickHouse:\n"
    )
    _print_table(*reader.query(QUALITY_SQL))
    print("\nFeature drift per window against the training images (PSI > 0.2 flags):\n")
    _print_table(*reader.query(DRIFT_SQL))
    print(
        "\nClients: share of their inputs outside the training images' range, per window"
        " (the scraper probes with random images):\n"
    )
    _print_table(*reader.query(CLIENTS_SQL))
    print("\nOnline detectors that fired (per partition, on the score and error streams):\n")
    _print_table(*reader.query(DETECTIONS_SQL))
    reader.close()
    return 0
