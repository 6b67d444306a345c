"""The benchmark's process measurement: a child's peak RSS is its own, not its parent's, and
its anonymous peak leaves out the files it maps."""

from __future__ import annotations

import subprocess
import sys

from bench.common import wait_measured

MIB = 1 << 20


def test_peak_rss_is_the_childs_own_not_the_parents() -> None:
    held = bytearray(300 * MIB)
    held[::4096] = b"\1" * len(range(0, len(held), 4096))  # resident, not just reserved
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; x = bytearray(80 << 20); x[::4096] = b'1' * len(range(0, len(x), 4096));"
            " time.sleep(0.3)",
        ]
    )
    ended = wait_measured(child, timeout=30)
    del held
    assert ended.code == 0
    # the child held 80 MiB (plus an interpreter); its parent held 300 MiB more than that
    assert 80 <= ended.rss_mib < 200, ended
    # the 80 MiB are anonymous memory; the interpreter's own files mapped in are not
    assert 80 <= ended.anon_mib < ended.rss_mib, ended
