"""The benchmark's table (printed) and its JSON file (for tracking across commits)."""

from __future__ import annotations

import math
from typing import Any


def _f(v: Any, fmt: str = "{:,.0f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _rss(m: dict[str, Any]) -> float:
    """A measurement's peak RSS in MiB; of modelmon, the sum of its worker processes' peaks."""
    rss = m["peak_rss_mib"]
    return float(sum(rss.values())) if isinstance(rss, dict) else float(rss)


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of the issue, from one run's results."""
    s1 = r["scales"][0]
    out: list[tuple[str, str, bool | None]] = []
    modelmon = s1["modelmon"]["events_per_s"]
    validated = s1["validated"]["events_per_s"]
    raw = s1["raw"]["events_per_s"]
    out.append(
        (
            "modelmon >= 0.5 x raw limit (events/s)",
            f"{modelmon / raw:.2f} x (validation alone {validated / raw:.2f} x)",
            modelmon / raw >= 0.5,
        )
    )
    if "baseline" in r:
        base = r["baseline"]["events_per_s"]
        out.append(
            (
                "modelmon >= 20 x per-event baseline",
                f"{modelmon / base:.1f} x (validation alone {validated / base:.1f} x)",
                modelmon / base >= 20,
            )
        )
    if "peer" in r and r["peer"].get("seconds_per_window"):
        ratio = r["peer"]["seconds_per_window"] / r["modelmon_seconds_per_window"]
        out.append(("faster than the batch peer per window", f"{ratio:.0f} x faster", ratio > 1))
    if len(r["scales"]) > 1:
        lo, hi = r["scales"][0], r["scales"][-1]
        before, after = lo["modelmon"]["peak_rss_mib"], hi["modelmon"]["peak_rss_mib"]
        growth = {role: after[role] / before[role] - 1 for role in before}
        out.append(
            (
                f"peak RSS flat (<= 10 %) {lo['scale']}x -> {hi['scale']}x, each worker",
                ", ".join(f"{role} {g * 100:+.0f} %" for role, g in growth.items()),
                max(growth.values()) <= 0.10,
            )
        )
    if "paced" in r:
        p = r["paced"]
        bound = r["window_seconds"] + 2
        out.append(
            (
                f"p99 event-to-row <= window + 2 s ({bound} s) at half max",
                f"{p['row_p99_s']:.2f} s",
                p["row_p99_s"] <= bound,
            )
        )
    if "single" in r:
        s = r["single"]
        ratio = s["modelmon_events_per_s"] / s["bare_faust_events_per_s"]
        same = s["modelmon_events_per_s"] / s["bare_faust_modelmon_consumer_events_per_s"]
        out.append(
            (
                "single-event msgs >= 0.8 x bare Faust decode",
                f"{ratio:.2f} x ({same:.2f} x on its consumer)",
                ratio >= 0.8,
            )
        )
    if "correct" in r:
        out.append(
            ("modelmon rows == baseline numbers", r["correct"]["summary"], r["correct"]["ok"])
        )
    return out


def table(r: dict[str, Any]) -> str:
    lines = []
    w = 44
    lines.append(
        f"{'measurement':<{w}} {'events':>10} {'events/s':>11} {'peak RSS':>9} {'us/event':>9}"
    )
    for s in r["scales"]:
        tag = f"[{s['scale']}x]"
        for name, m in (
            ("1 raw getmany + orjson (envelopes)", s["raw"]),
            ("  same + modelmon's validation", s["validated"]),
            ("3 modelmon compute + sink (envelopes)", s["modelmon"]),
        ):
            eps = m["events_per_s"]
            lines.append(
                f"{tag + ' ' + name:<{w}} {_f(m['events']):>10} {_f(eps):>11} "
                f"{_f(_rss(m), '{:,.0f} MiB'):>9} "
                f"{_f(1e6 / eps if eps else None, '{:.2f}'):>9}"
            )
    for key, name in (("baseline", "2 Faust + River per event (single msgs)"),):
        if key in r:
            m = r[key]
            lines.append(
                f"{'[1x] ' + name:<{w}} {_f(m['events']):>10} {_f(m['events_per_s']):>11}"
                f" {_f(m['peak_rss_mib'], '{:,.0f} MiB'):>9} "
                f"{_f(1e6 / m['events_per_s'], '{:.2f}'):>9}"
            )
    if "peer" in r:
        p = r["peer"]
        lines.append(
            f"{'[1x] 4 Evidently ' + p.get('evidently', '?') + ' per window':<{w}} "
            f"{_f(p.get('events')):>10} {'-':>11} {_f(p['peak_rss_mib'], '{:,.0f} MiB'):>9}"
            f"   {p['seconds_per_window'] * 1000:,.0f} ms/window x {p['windows']} windows"
        )
        lines.append(
            f"{'[1x]   modelmon per window (e2e / windows)':<{w}} {'':>10} {'':>11} "
            f"{'':>9}   {r['modelmon_seconds_per_window'] * 1000:,.1f} ms/window"
        )
    if "single" in r:
        s = r["single"]
        for label, k in (
            ("raw getmany + orjson (single msgs)", "raw_events_per_s"),
            ("bare Faust decode-only (single msgs)", "bare_faust_events_per_s"),
            ("  same, on modelmon's consumer", "bare_faust_modelmon_consumer_events_per_s"),
            ("modelmon compute (single msgs)", "modelmon_events_per_s"),
        ):
            lines.append(f"{'[1x]   ' + label:<{w}} {_f(s['events']):>10} {_f(s[k]):>11}")
        cpu = ", ".join(f"{role} {v:.1f}" for role, v in s["modelmon_cpu_seconds"].items())
        lines[-1] += f"   CPU-s: {cpu}"
    if "paced" in r:
        p = r["paced"]
        lines.append(
            f"paced at {p['rate_events_per_s']:,.0f} events/s for {p['seconds']:.0f} s "
            f"(window {r['window_seconds']} s): event->row p50 {p['row_p50_s']:.2f} s, "
            f"p99 {p['row_p99_s']:.2f} s (emitted to metrics p50 {p['emit_p50_s']:.2f} s, "
            f"p99 {p['emit_p99_s']:.2f} s; sink insert p99 {p['sink_lag_p99_s']:.2f} s); "
            f"drift rows derived p99 {p['derive_lag_p99_s']:.2f} s after a window's last "
            f"partials; CPU-s {', '.join(f'{k} {v:.1f}' for k, v in p['cpu_seconds'].items())}"
        )
    if len(r["scales"]) > 1:
        parts = []
        for s in r["scales"]:
            m = s["modelmon"]
            roles = ", ".join(
                f"{role} {rss:,.0f} MiB (anon {m['peak_anon_mib'][role]:,.0f}) "
                f"{m['cpu_seconds'][role]:.1f} CPU-s"
                for role, rss in m["peak_rss_mib"].items()
            )
            parts.append(f"{s['scale']}x: {1e6 / m['events_per_s']:.2f} us/event, {roles}")
        lines.append("scaling (modelmon): " + "; ".join(parts))
    lines.append("")
    rows = targets(r)
    width = max(16, *(len(measured) for _, measured, _ in rows))
    lines.append(f"{'target':<58} {'measured':>{width}}  met")
    for name, measured, ok in rows:
        lines.append(f"{name:<58} {measured:>{width}}  {'yes' if ok else 'NO'}")
    return "\n".join(lines)
