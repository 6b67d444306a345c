"""The compute agent: predictions and labels (co-partitioned) into quality rows."""

from __future__ import annotations

from typing import Any

import faust

from pipeline.compute import ComputeRuntime
from pipeline.kafka import RawSchema


def register(app: faust.App, runtime: ComputeRuntime) -> None:
    source = app.topic(*runtime.inputs, schema=RawSchema())

    # concurrency=1: with more, Faust can commit past a message still being processed.
    @app.agent(source, concurrency=1, name="modelmon.compute")
    async def compute(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.noack().events():
            await runtime.process(event)

    @app.timer(runtime.settings.flush_interval_seconds, name="modelmon.compute.flush")
    async def flush() -> None:
        await runtime.flush()

    @app.on_before_shutdown.connect
    async def report(sender: Any, **_: Any) -> None:
        print(runtime.throughput(), flush=True)  # the worker's last word, on stdout

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        runtime.revoke(revoked)
