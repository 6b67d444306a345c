"""``python -m bench.hotpath``: the compute worker's hot path in-process, without Kafka.

Feeds the benchmark's seeded event set (``bench.events``), pre-encoded as envelopes and as
single-event messages, through :meth:`pipeline.compute.ComputeRuntime.process` (decode,
validate, join, windows, feature summaries, detectors) and its periodic ``flush`` (rows,
checkpoints, acknowledgements), with an in-memory producer in place of Kafka. Prints the
events per second of each phase and a digest of everything the runtime emitted: a change that
must not alter results must leave the digest as it was. Beside them, the rate of
``bench.floor`` on the same messages: the least work any monitor of these events does.

The garbage collector is set as in the worker (``pipeline.app.tune_gc``). Flushes happen
every ``flush_events`` input events, as in the worker (``--flush-events`` sets it), and not
every second of wall time: the emitted rows, and the digest, do not depend on the speed of
the machine.

```
python -m bench.hotpath                        # 50 000 predictions, envelopes and single msgs
python -m bench.hotpath --scales 1,5 --memory  # tracemalloc: what is live at the end, per scale
python -m bench.hotpath --profile envelopes    # cProfile of one mode, top functions
```
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import pstats
import resource
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.types import TP

from bench.events import EventSetSpec, envelope_messages, from_spec, single_messages
from bench.floor import Floor
from pipeline.app import tune_gc
from pipeline.compute import ComputeRuntime
from pipeline.settings import Settings
from schemas.codec import decode_message
from schemas.rows import decode_rows
from schemas.topics import Topics

PARTITIONS = 4
WINDOW_S = 10


@dataclass(slots=True)
class _Message:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    tp: TP
    timestamp: float | None = None  # Kafka's, in seconds: none, so no event is future-dated
    headers: list[tuple[str, bytes]] | None = None


@dataclass(slots=True)
class _Event:
    message: _Message
    value: bytes | None


@dataclass(slots=True)
class _Producer:
    """Collects what the runtime sends; every send is acknowledged at once. The digest
    takes rows messages row by row, so how rows are grouped into messages does not count."""

    metrics: str
    digest: Any = field(default_factory=hashlib.sha256)
    sent: int = 0
    sent_bytes: int = 0

    async def send(self, topic: str, *, value: bytes, partition: int | None, **_: Any) -> Any:
        head = f"{topic}\0{partition}\0".encode()
        if topic == self.metrics:
            batch = decode_rows(value)
            for row in batch.rows:
                self.digest.update(head + batch.table.encode() + orjson.dumps(row) + b"\0")
        else:
            self.digest.update(head + value + b"\0")
        self.sent += 1
        self.sent_bytes += len(value)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


@dataclass(slots=True)
class _Consumer:
    """No broker: every message is already in hand, so no topic is ever behind. Notes how
    far the runtime lets each partition's commits go."""

    committable: dict[TP, int] = field(default_factory=dict)

    def advance(self, tp: TP, offset: int) -> None:
        self.committable[tp] = offset

    def highwater(self, tp: TP) -> int:
        return 0

    def hold(self, tp: TP) -> None:
        pass

    def release(self, tp: TP) -> None:
        pass


@dataclass(slots=True)
class _App:
    producer: _Producer
    consumer: _Consumer = field(default_factory=_Consumer)


def _settings(topics: Topics, flush_events: int | None) -> Settings:
    return Settings.load(
        env={},
        overrides={
            "flush_events": flush_events,
            "topic_prefix": topics.prefix,
            "partitions": PARTITIONS,
            "window": f"{WINDOW_S}s",
            "lateness_seconds": 2,
            "label_ttl_seconds": WINDOW_S,
        },
    )


def _messages(spec: EventSetSpec, topics: Topics, single: bool) -> list[_Event]:
    make = single_messages if single else envelope_messages
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for topic, partition, _key, value, _n in make(from_spec(spec), topics, PARTITIONS):
        assert partition is not None
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        tp = TP(topic, partition)
        out.append(_Event(_Message(topic, partition, offset, value, tp), value))
    return out


def _runtime(topics: Topics, app: _App, flush_events: int | None) -> ComputeRuntime:
    settings = _settings(topics, flush_events)
    runtime = ComputeRuntime(app, settings, topics, run_id="hotpath")  # type: ignore[arg-type]
    for p in range(PARTITIONS):
        runtime.checkpoints[p] = []  # a first start: no checkpoint topic to read
    return runtime


async def _feed(runtime: ComputeRuntime, events: list[_Event]) -> None:
    for event in events:
        await runtime.process(event)  # type: ignore[arg-type]  # flushes every flush_events
    await runtime.flush()


def run_mode(
    spec: EventSetSpec, single: bool, flush_events: int | None, memory: bool = False
) -> dict[str, Any]:
    """Decode-only, floor and full-runtime rates of one message mode, and the digest of the
    output."""
    topics = Topics("hotpath.")
    events = _messages(spec, topics, single)
    kinds = {topics.predictions: "prediction", topics.labels: "label"}
    tune_gc()  # as the worker sets the collector, for both measurements
    started = time.perf_counter()
    n = 0
    for e in events:
        n += len(decode_message(e.message.value, kinds[e.message.topic]).events)
    decode_s = time.perf_counter() - started
    floor = Floor()
    started = time.perf_counter()
    for e in events:
        floor.add(kinds[e.message.topic], e.message.value)  # type: ignore[arg-type]
    floor.finish()
    floor_s = time.perf_counter() - started
    del floor

    app = _App(_Producer(topics.metrics))
    runtime = _runtime(topics, app, flush_events)
    if memory:
        tracemalloc.start(10)
    gc.collect()
    rss_before = _reset_peak_rss()
    started = time.perf_counter()
    asyncio.run(_feed(runtime, events))
    total_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "mode": "single" if single else "envelopes",
        "messages": len(events),
        "events": runtime.events_in,
        "decode_events_per_s": n / decode_s,
        "floor_events_per_s": n / floor_s,
        "events_per_s": runtime.events_in / total_s,
        "seconds": total_s,
        "sent": app.producer.sent,
        "sent_bytes": app.producer.sent_bytes,
        "digest": app.producer.digest.hexdigest()[:16],
        "uncommitted": sum(
            o + 1 - app.consumer.committable.get(tp, 0) for tp, o in runtime.last_offsets.items()
        ),
        "open_windows": sum(s.open_windows() for s in runtime.states.values()),
        "rss_growth_mib": _status_mib("VmHWM") - rss_before,
    }
    if memory:
        snapshot = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result["traced_current_mib"] = current / 2**20
        result["traced_peak_mib"] = peak / 2**20
        result["top"] = [
            f"{s.size / 2**20:8.2f} MiB {s.count:8d}  {s.traceback[0]}"
            for s in snapshot.statistics("lineno")[:8]
        ]
    del runtime, events
    return result


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB (0 where there is no procfs)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _reset_peak_rss() -> float:
    """Reset the process's peak RSS to its current RSS (Linux) and return that, so the peak
    read later is the runtime's own growth over the input already in memory."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mib("VmRSS")


def _profile(fn: Callable[[], Any], top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    ap.add_argument("--events", type=int, default=50_000, help="predictions at 1x")
    ap.add_argument("--scales", default="1", help="multiples of --events, e.g. 1,5")
    ap.add_argument(
        "--modes", default="envelopes,single", help="envelopes and/or single (messages)"
    )
    ap.add_argument(
        "--flush-events", type=int, default=None, help="input events per flush (the worker's)"
    )
    ap.add_argument("--memory", action="store_true", help="trace allocations (slower)")
    ap.add_argument("--profile", choices=["envelopes", "single"], default=None)
    ap.add_argument("--top", type=int, default=30, help="functions shown by --profile")
    a = ap.parse_args(argv)
    if a.profile:
        spec = EventSetSpec(events=a.events, seed=1)
        _profile(lambda: run_mode(spec, a.profile == "single", a.flush_events), a.top)
        return 0
    for scale in (int(s) for s in a.scales.split(",")):
        spec = EventSetSpec(events=a.events * scale, seed=scale)
        for mode in a.modes.split(","):
            r = run_mode(spec, mode == "single", a.flush_events, a.memory)
            print(
                f"[{scale}x] {r['mode']:<9} {r['messages']:>7} msgs {r['events']:>8} events: "
                f"decode {r['decode_events_per_s']:>9,.0f}/s, "
                f"floor {r['floor_events_per_s']:>9,.0f}/s, runtime {r['events_per_s']:>9,.0f}/s "
                f"({r['seconds']:.2f} s); sent {r['sent']} msgs, "
                f"{r['sent_bytes'] / 2**20:.1f} MiB; "
                f"digest {r['digest']}; uncommitted {r['uncommitted']}, "
                f"open windows {r['open_windows']}; "
                f"peak RSS over the input held: +{r['rss_growth_mib']:.0f} MiB",
                flush=True,
            )
            if a.memory:
                print(
                    f"      traced: current {r['traced_current_mib']:.1f} MiB, "
                    f"peak {r['traced_peak_mib']:.1f} MiB"
                )
                for line in r["top"]:
                    print("      " + line)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss:,.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
