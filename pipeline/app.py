"""The Faust app, configured from :class:`~pipeline.settings.Settings`, with the agents of
the worker's role registered on it."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import faust
from faust.sensors import Monitor
from faust.types import ConsumerT

from pipeline.agents import compute as compute_agent
from pipeline.agents import query as query_agent
from pipeline.agents import sink as sink_agent
from pipeline.compute import ComputeRuntime
from pipeline.kafka import BoundedConsumer
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink
from pipeline.startup import check_topics, faust_datadir, open_sink, prepare_data_dir
from schemas.rows import ROWS_BATCH_BYTES
from schemas.topics import Topics

log = logging.getLogger(__name__)

STREAM_BUFFER_MESSAGES = 128

#: Container objects allocated, net of those freed, between two collections of the youngest
#: garbage-collector generation. At Python's default (700), decoding input set one off every
#: few events' worth of objects, and every hundredth walked all the worker holds: about a
#: sixth of the compute's time in ``bench.hotpath``. Reference counting frees nearly
#: everything here at once; only cycles (asyncio's, exceptions') wait longer for the collector.
GC_YOUNG_THRESHOLD = 10_000


class QuietMonitor(Monitor):
    """Faust's monitor without its per-message statistics (messages and events in and out
    per partition, stream and task). Only Faust's web views read them, and the web server is
    off; the pipeline keeps its own counters. Offsets and commits are still tracked."""

    def on_message_in(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_stream_event_in(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_stream_event_out(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_message_out(self, *args: Any, **kwargs: Any) -> None:
        pass


def _credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    config = settings.kafka_client_config()
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism or "PLAIN",
            ssl_context=config.get("ssl_context"),
        )
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(config["ssl_context"])
    return None


def create_app(settings: Settings, sink: ClickHouseSink | None = None) -> faust.App:
    """The app with the agents of ``settings.role``, the sink's writing to ``sink`` (opened
    on its first write if None); nothing runs until a worker starts it."""
    brokers = ";".join(f"kafka://{b.strip()}" for b in settings.bootstrap_servers.split(","))
    # Split roles consume different topics, so each role is a consumer group of its own.
    app_id = settings.group_id if settings.role == "all" else f"{settings.group_id}.{settings.role}"
    app = faust.App(
        app_id,
        broker=brokers,
        broker_credentials=_credentials(settings),
        store="memory://",
        web_enabled=False,
        Monitor=QuietMonitor,
        autodiscover=False,
        datadir=faust_datadir(settings),
        topic_partitions=settings.partitions,
        producer_acks=-1,
        producer_max_request_size=max(settings.max_message_bytes, 1_048_576) + 65_536,
        producer_max_batch_size=ROWS_BATCH_BYTES,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=max(settings.max_message_bytes, 1_048_576) * 4,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_interval_seconds,
        broker_rebalance_timeout=settings.rebalance_timeout_seconds,
        broker_commit_interval=settings.flush_interval_seconds,
        stream_wait_empty=False,
        # Messages buffered per stream. Envelopes make each one large (up to 500 events, or
        # 512 KiB of result rows), so a short buffer is enough, and it bounds memory when a
        # stage cannot keep up (e.g. the sink during a ClickHouse outage): fetching pauses.
        stream_buffer_maxsize=STREAM_BUFFER_MESSAGES,
    )
    app.transport.Consumer = BoundedConsumer  # before anything creates the consumer
    topics = Topics(settings.topic_prefix)
    run_id = f"{os.uname().nodename}-{os.getpid()}-{int(time.time())}"
    compute = runtime = None
    if settings.role in ("all", "compute"):
        compute = ComputeRuntime(app, settings, topics, run_id)
        compute_agent.register(app, compute)
    if settings.role in ("all", "sink"):
        runtime = sink_agent.SinkRuntime(app, settings, topics, run_id, sink)
        sink_agent.register(app, runtime)
        query_agent.register(app, runtime)
    if settings.idle_exit_seconds > 0:
        _register_idle_exit(app, settings.idle_exit_seconds, compute, runtime)
    return app


def _register_idle_exit(
    app: faust.App,
    seconds: float,
    compute: ComputeRuntime | None,
    sink: sink_agent.SinkRuntime | None,
) -> None:
    """Stop the worker (as SIGTERM would) once input has been seen, nothing has arrived for
    ``seconds`` and nothing is left unwritten: the demo's and the tests' way to finish."""

    runtimes = [r for r in (compute, sink) if r is not None]

    @app.timer(min(1.0, seconds / 2), name="modelmon.idle_exit")
    async def idle_exit() -> None:
        now = time.monotonic()
        quiet = all(now - r.last_input >= seconds for r in runtimes)
        started = all(r.seen_input for r in runtimes)
        busy = sink is not None and not sink.idle()
        if (
            started
            and quiet
            and not busy
            and (compute is None or compute.idle())
            and await caught_up(app.consumer, runtimes)
        ):
            log.info("no input for %.0fs and nothing unwritten: stopping", seconds)
            os.kill(os.getpid(), signal.SIGTERM)


async def caught_up(
    consumer: ConsumerT, runtimes: Sequence[ComputeRuntime | sink_agent.SinkRuntime]
) -> bool:
    """Every assigned input partition of ``runtimes`` was processed up to the broker's high
    watermark, which is known only from a fetch answered since the last assignment. A
    partition nothing was processed from since then is caught up if the consumer's position
    (where it started, the committed offset, when it read nothing) is there already."""
    inputs = {topic for r in runtimes for topic in r.inputs}
    done = {tp: o for r in runtimes for tp, o in r.last_offsets.items()}
    for tp in consumer.assignment():
        if tp.topic not in inputs:
            continue
        high = consumer.highwater(tp)
        if high is None:
            return False
        last = done.get(tp)
        next_offset = last + 1 if last is not None else await consumer.position(tp)
        if next_offset is None or next_offset < high:
            return False
    return True


def all_topics(settings: Settings) -> dict[str, int]:
    t = Topics(settings.topic_prefix)
    names = (
        t.predictions,
        t.labels,
        t.interactions,
        t.training,
        t.metrics,
        t.alerts,
        t.deadletter,
        t.checkpoints,
    )
    return {name: settings.partitions for name in names}


def tune_gc() -> None:
    """Set the collector for a long-running worker: what exists now (modules, the app) is
    frozen, never scanned again, and the youngest generation is collected every
    :data:`GC_YOUNG_THRESHOLD` net allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    """Check what the worker needs (see :mod:`pipeline.startup`), creating what is missing,
    then run a Faust worker until it is stopped."""
    prepare_data_dir(settings)
    sink = open_sink(settings) if settings.role in ("all", "sink") else None
    try:
        settings = asyncio.run(check_topics(settings, all_topics(settings)))
    except BaseException:
        if sink is not None:
            sink.close()
        raise
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = create_app(settings, sink)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    tune_gc()
    worker.execute_from_commandline()
