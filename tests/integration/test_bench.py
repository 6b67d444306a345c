"""The benchmark at a tiny size, so it cannot rot: it completes, and modelmon's per-window
accuracy and macro recall equal the per-event Faust + River baseline's on the same events.
No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.embedded import EmbeddedBroker


@pytest.mark.integration
def test_bench_tiny_completes_and_agrees(broker: EmbeddedBroker, tmp_path: Path) -> None:
    from bench.run import main

    out = tmp_path / "bench.json"
    code = main(
        [
            "--tiny",
            "--bootstrap-servers",
            broker.bootstrap_servers,
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    results = orjson.loads(out.read_bytes())
    correct = results["correct"]
    assert correct["ok"], correct["mismatches"]
    assert code == 0
    assert correct["windows"] > 0
    # every measurement ran on the whole event set
    scale = results["scales"][0]
    assert (
        scale["raw"]["events"]
        == scale["validated"]["events"]  # every event passed modelmon's validation
        == scale["modelmon"]["events"]
        == results["baseline"]["events"]
    )
    assert scale["modelmon"]["compute"]["events"] == scale["modelmon"]["events"]
    assert results["single"]["modelmon_compute"]["events"] == results["single"]["events"]
    assert results["paced"]["events"] > 0 and results["paced"]["uncounted_events"] == 0
