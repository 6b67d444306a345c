"""Running one measurement as its own process, with its peak RSS."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, NamedTuple

import orjson


def emit(result: dict[str, Any], path: str) -> None:
    """A measurement process's last word: its result, as JSON in ``path`` (Faust workers
    take over stdout, so results go to a file)."""
    with open(path, "wb") as f:
        f.write(orjson.dumps(result))


def run_measured(
    cmd: list[str], out_path: str, timeout: float, log_path: str
) -> tuple[dict[str, Any], float, float]:
    """Run ``cmd`` (which writes its result to ``out_path``) and wait for it; returns (its
    result, its peak RSS in MiB, wall seconds). The peak RSS is the child's own (see
    :func:`wait_measured_all`), so each measurement is counted apart."""
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        ended = wait_measured(proc, timeout)
    if ended.code != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} exited with {ended.code}; see {log_path}")
    if not os.path.exists(out_path):
        raise RuntimeError(f"{' '.join(cmd[1:3])} wrote no result; see {log_path}")
    with open(out_path, "rb") as f:
        return orjson.loads(f.read()), ended.rss_mib, time.monotonic() - started


#: How often a measured child's peak RSS is read while it runs.
POLL_SECONDS = 0.02


class Ended(NamedTuple):
    """How a measured child ended: exit code, peak RSS in MiB, CPU seconds (user + system),
    and the peak of its anonymous memory in MiB: its RSS without the pages of files it maps
    (libraries), which count in RSS as far as the page cache lets them be mapped."""

    code: int
    rss_mib: float
    cpu_s: float
    anon_mib: float


def _ended(code: int, usage: Any, peaks: tuple[float, float]) -> Ended:
    return Ended(code, peaks[0], usage.ru_utime + usage.ru_stime, peaks[1])


def _memory_mib(pid: int) -> tuple[float, float]:
    """The high-water mark of the memory ``pid`` runs in now (``VmHWM``) and its anonymous
    memory now (``RssAnon``); zeros once it ended.

    Not ``ru_maxrss``: a child spawned with vfork, as ``subprocess`` does, starts in its
    parent's memory, and Linux keeps that memory's high-water mark in the child's rusage
    across ``exec``, so every child would report at least its parent's peak (the
    benchmark's, which holds the event set)."""
    fields = {b"VmHWM:": 0.0, b"RssAnon:": 0.0}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                name = line.split(maxsplit=1)[0]
                if name in fields:
                    fields[name] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return fields[b"VmHWM:"], fields[b"RssAnon:"]


def wait_measured(proc: subprocess.Popen[bytes], timeout: float) -> Ended:
    """Wait for a started child; returns how it ended."""
    return wait_measured_all({"": proc}, timeout)[""]


def wait_measured_all(
    procs: dict[str, subprocess.Popen[bytes]], timeout: float
) -> dict[str, Ended]:
    """Wait for started children; returns how each ended. Once one fails, or at the timeout,
    the others are killed (their code is then -9). A child's peak RSS is its ``VmHWM``,
    read every :data:`POLL_SECONDS` while it runs (it only grows, so the peak is missed by
    at most what the child added in its last poll interval); its anonymous peak is the
    largest ``RssAnon`` read (a shorter peak between two reads is missed)."""
    deadline = time.monotonic() + timeout
    out: dict[str, Ended] = {}
    peaks = dict.fromkeys(procs, (0.0, 0.0))
    while len(out) < len(procs):
        for name, proc in procs.items():
            if name in out:
                continue
            now = _memory_mib(proc.pid)
            peaks[name] = (max(peaks[name][0], now[0]), max(peaks[name][1], now[1]))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                out[name] = _ended(proc.returncode, usage, peaks[name])
        failed = any(e.code != 0 for e in out.values())
        late = time.monotonic() > deadline
        if (failed or late) and len(out) < len(procs):
            for name, proc in procs.items():
                if name not in out:
                    proc.kill()
                    _, status, usage = os.wait4(proc.pid, 0)
                    proc.returncode = -9
                    out[name] = _ended(-9, usage, peaks[name])
            if late and not failed:
                raise RuntimeError(f"processes still running after {timeout}s: {sorted(procs)}")
        if len(out) < len(procs):
            time.sleep(POLL_SECONDS)
    return out
