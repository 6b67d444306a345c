"""``python -m bench.run``: the whole benchmark in one run, on one broker and one event set.

Starts its own Tansu broker, produces the seeded event set once per scale (envelopes, and at
the first scale single-event messages too), then runs each measurement in its own process:
the raw-consume limit, modelmon end to end, the per-event Faust + River baseline, the bare
Faust decode-only agent, modelmon on single-event messages, the Evidently peer and the paced
latency run. Prints a table and writes a JSON file. ``bench/README.md`` explains it all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import orjson

from bench import modelmon_e2e as mm
from bench.common import run_measured
from bench.events import (
    MODELS,
    EventSetSpec,
    envelope_messages,
    from_spec,
    produce,
    single_messages,
)
from bench.report import table
from pipeline.embedded import EmbeddedBroker
from schemas.topics import Topics

PARTITIONS = 4
WINDOW_S = 10


def _machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _joined_rows(spec: EventSetSpec, path: Path) -> int:
    """The joined, labelled events of the set as JSON lines, for the batch peer."""
    preds: dict[str, dict[str, Any]] = {}
    n = 0
    with open(path, "wb") as f:
        for kind, e in from_spec(spec):
            if kind == "prediction":
                preds[e["event_id"]] = e
                continue
            p = preds.pop(e["event_id"])
            ts = round(p["ts"] * 1000)
            row = {
                "model": p["model"],
                "model_version": p["model_version"],
                "segment": "region=" + p["segment"]["region"],
                "window_start": ts - ts % (WINDOW_S * 1000),
                "target": e["label"],
                "prediction": p["prediction"],
                "classes": MODELS[p["model"]],
                **p["features"],
                **{f"p_{c}": v for c, v in p["probabilities"].items()},
            }
            f.write(orjson.dumps(row) + b"\n")
            n += 1
    return n


def compare(modelmon: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """modelmon's accuracy and macro recall per window against the baseline's."""
    ours = {(r["model"], r["model_version"], r["segment"], int(r["ws"])): r for r in modelmon}
    theirs = {
        (r["model"], r["model_version"], r["segment"], int(r["window_start"])): r for r in baseline
    }
    bad = []
    for k in sorted(set(ours) | set(theirs)):
        a, b = ours.get(k), theirs.get(k)
        if a is None or b is None:
            bad.append({"window": k, "modelmon": a, "baseline": b})
            continue
        if (
            int(a["labelled"]) != int(b["labelled"])
            or abs(float(a["accuracy"]) - b["accuracy"]) > 1e-9
            or abs(float(a["macro_recall"]) - b["macro_recall"]) > 1e-9
        ):
            bad.append({"window": k, "modelmon": a, "baseline": b})
    return {
        "ok": not bad and bool(ours),
        "windows": len(ours),
        "mismatches": bad[:10],
        "summary": f"{len(ours) - len(bad)}/{len(set(ours) | set(theirs))} windows equal",
    }


def _raw_limit(
    bootstrap: str, topics: Topics, messages: int, out: Path, log: str, validate: bool = False
) -> dict[str, Any]:
    """``bench.raw_limit`` on the predictions and labels of ``topics``: raw ``getmany`` with
    orjson, or with modelmon's decode and validation (``validate``)."""
    cmd = [
        sys.executable,
        "-m",
        "bench.raw_limit",
        "--bootstrap",
        bootstrap,
        "--topics",
        f"{topics.predictions},{topics.labels}",
        "--messages",
        str(messages),
        "--out",
        str(out),
    ]
    if validate:
        cmd += ["--validate", "prediction,label"]
    result, rss, _ = run_measured(cmd, str(out), 600, log)
    result.update(peak_rss_mib=rss, events_per_s=result["events"] / result["seconds"])
    return result


def _faust_agent(
    py: str, args: list[str], mode: str, app_id: str, out: Path, log: str
) -> tuple[dict[str, Any], float, float]:
    """``bench.baseline_faust`` in ``mode`` on the single-event topics (``args``: its flags)."""
    cmd = [py, "-m", "bench.baseline_faust", *args, "--mode", mode, "--app-id", app_id]
    return run_measured([*cmd, "--out", str(out)], str(out), 1800, log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    ap.add_argument("--events", type=int, default=100_000, help="predictions at 1x")
    ap.add_argument("--scales", default="1,5", help="multiples of --events, e.g. 1,5")
    ap.add_argument("--json", default="bench-results.json", help="where the results go")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="CI size: 3000 predictions, scale 1, no peer, a short paced run",
    )
    ap.add_argument("--no-peer", action="store_true", help="skip the Evidently peer")
    ap.add_argument(
        "--peer-python",
        default=os.environ.get("BENCH_PEER_PYTHON", sys.executable),
        help="interpreter with Evidently installed (env BENCH_PEER_PYTHON)",
    )
    ap.add_argument("--peer-max-windows", type=int, default=30)
    ap.add_argument("--paced-seconds", type=float, default=30.0)
    ap.add_argument("--workdir", default=None, help="keep logs and databases here")
    ap.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this (empty) Kafka-protocol broker instead of starting Tansu",
    )
    a = ap.parse_args(argv)
    scales = [1] if a.tiny else [int(s) for s in a.scales.split(",")]
    n1 = 3000 if a.tiny else a.events
    paced_s = 5.0 if a.tiny else a.paced_seconds
    if a.tiny:
        mm.READY_SECONDS = 5.0
    run = uuid.uuid4().hex[:6]  # topic names of this run, so a shared broker is fine
    root = Path(a.workdir or tempfile.mkdtemp(prefix="modelmon-bench-")).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    log = str(root / "measurements.log")
    py = sys.executable
    results: dict[str, Any] = {
        "machine": _machine(),
        "window_seconds": WINDOW_S,
        "partitions": PARTITIONS,
        "events_1x": n1,
        "scales": [],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def step(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    broker: Any = nullcontext() if a.bootstrap_servers else EmbeddedBroker()
    with broker:
        bs = a.bootstrap_servers or broker.bootstrap_servers
        step(f"broker on {bs}; work dir {root}")
        for i, scale in enumerate(scales):
            spec = EventSetSpec(events=n1 * scale, seed=scale)
            env = Topics(f"b{run}x{scale}.env.")
            mm.create_topics(bs, env.prefix, PARTITIONS)
            messages = list(envelope_messages(from_spec(spec), env, PARTITIONS))
            total_msgs = len(messages)
            step(f"{scale}x: {spec.events} predictions in {total_msgs} envelopes; modelmon e2e")
            m = mm.run_e2e(
                bs, env.prefix, PARTITIONS, root / f"modelmon-{scale}x", WINDOW_S, messages
            )
            del messages
            step(f"{scale}x: modelmon {m['events_per_s']:,.0f} events/s; raw limit")
            raw = _raw_limit(bs, env, total_msgs, root / f"raw-{scale}x.json", log)
            step(f"{scale}x: raw getmany + modelmon's validation")
            validated = _raw_limit(
                bs, env, total_msgs, root / f"validated-{scale}x.json", log, validate=True
            )
            results["scales"].append(
                {"scale": scale, "raw": raw, "validated": validated, "modelmon": m}
            )
            if i > 0:
                continue
            windows = mm.quality_windows(m["dsn"])
            results["modelmon_seconds_per_window"] = m["seconds"] / max(1, len(windows))
            # --- single-event messages: baseline, bare Faust, modelmon ---
            single = Topics(f"b{run}x{scale}.single.")
            mm.create_topics(bs, single.prefix, PARTITIONS)
            produced = asyncio.run(
                produce(bs, single_messages(from_spec(spec), single, PARTITIONS))
            )
            n_single = int(produced["messages"])
            step(f"single-event messages: {n_single}; baseline Faust + River")
            common = [
                "--bootstrap",
                bs,
                "--predictions",
                single.predictions,
                "--labels",
                single.labels,
                "--messages",
                str(n_single),
                "--window-ms",
                str(WINDOW_S * 1000),
                "--datadir",
                str(root / "faust"),
            ]
            base, rss, _ = _faust_agent(
                py, common, "river", f"b{run}-river", root / "baseline.json", log
            )
            base.update(peak_rss_mib=rss, events_per_s=base["events"] / base["seconds"])
            results["baseline"] = {k: v for k, v in base.items() if k != "windows"}
            results["correct"] = compare(windows, base["windows"])
            step(
                f"baseline {base['events_per_s']:,.0f} events/s; "
                f"{results['correct']['summary']}; bare Faust decode-only"
            )
            bare, rss, _ = _faust_agent(
                py, common, "decode", f"b{run}-decode", root / "bare.json", log
            )
            step("bare Faust decode-only on modelmon's consumer")
            bare_mm, _, _ = _faust_agent(
                py,
                [*common, "--consumer", "modelmon"],
                "decode",
                f"b{run}-decode-mm",
                root / "bare-mm.json",
                log,
            )
            raw1 = _raw_limit(bs, single, n_single, root / "raw-single.json", log)
            step("modelmon on single-event messages")
            ms = mm.run_e2e(bs, single.prefix, PARTITIONS, root / "modelmon-single", WINDOW_S, None)
            results["single"] = {
                "events": n_single,
                "raw_events_per_s": raw1["events_per_s"],
                "bare_faust_events_per_s": bare["events"] / bare["seconds"],
                "bare_faust_modelmon_consumer_events_per_s": bare_mm["events"] / bare_mm["seconds"],
                "modelmon_events_per_s": ms["compute"].get("events_per_s", 0.0),
                "modelmon_compute": ms["compute"],
                "modelmon_peak_rss_mib": ms["peak_rss_mib"],
                "modelmon_cpu_seconds": ms["cpu_seconds"],
                "bare_faust_peak_rss_mib": rss,
            }
            if not a.tiny and not a.no_peer:
                step(f"Evidently peer ({a.peer_python})")
                joined = root / "joined.jsonl"
                _joined_rows(spec, joined)
                peer, rss, _ = run_measured(
                    [
                        a.peer_python,
                        "-m",
                        "bench.peer_evidently",
                        "--events",
                        str(joined),
                        "--out",
                        str(root / "peer.json"),
                        "--max-windows",
                        str(a.peer_max_windows),
                    ],
                    str(root / "peer.json"),
                    1800,
                    log,
                )
                peer["peak_rss_mib"] = rss
                results["peer"] = peer
            rate = m["events_per_s"] / 2
            step(f"paced run at {rate:,.0f} events/s for {paced_s:.0f} s")
            results["paced"] = mm.run_paced(
                bs, f"b{run}paced.", PARTITIONS, root / "paced", WINDOW_S, rate, paced_s
            )
    results["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = table(results)
    Path(a.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print("\n" + text)
    print(f"\nresults: {a.json}; logs and databases: {root}")
    return 0 if results.get("correct", {}).get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
