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
    result, its peak RSS in MiB, wall seconds). The peak RSS is the child's own (``wait4``),
    so each measurement is counted apart."""
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        code, rss, _ = wait_measured(proc, timeout)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} exited with {code}; see {log_path}")
    if not os.path.exists(out_path):
        raise RuntimeError(f"{' '.join(cmd[1:3])} wrote no result; see {log_path}")
    with open(out_path, "rb") as f:
        return orjson.loads(f.read()), rss, time.monotonic() - started


class Ended(NamedTuple):
    """How a measured child ended: exit code, peak RSS in MiB, CPU seconds (user + system)."""

    code: int
    rss_mib: float
    cpu_s: float


def _ended(code: int, usage: Any) -> Ended:
    return Ended(code, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime)


def wait_measured(proc: subprocess.Popen[bytes], timeout: float) -> Ended:
    """Wait for a started child; returns how it ended."""
    return wait_measured_all({"": proc}, timeout)[""]


def wait_measured_all(
    procs: dict[str, subprocess.Popen[bytes]], timeout: float
) -> dict[str, Ended]:
    """Wait for started children; returns how each ended. Once one fails, or at the timeout,
    the others are killed (their code is then -9)."""
    deadline = time.monotonic() + timeout
    out: dict[str, Ended] = {}
    while len(out) < len(procs):
        for name, proc in procs.items():
            if name in out:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                out[name] = _ended(proc.returncode, usage)
        failed = any(e.code != 0 for e in out.values())
        late = time.monotonic() > deadline
        if (failed or late) and len(out) < len(procs):
            for name, proc in procs.items():
                if name not in out:
                    proc.kill()
                    _, status, usage = os.wait4(proc.pid, 0)
                    proc.returncode = -9
                    out[name] = _ended(-9, usage)
            if late and not failed:
                raise RuntimeError(f"processes still running after {timeout}s: {sorted(procs)}")
        if len(out) < len(procs):
            time.sleep(0.05)
    return out
