"""Event-time windows and watermarks: the one place that decides time.

A watermark belongs to one input topic partition and moves only with the events read from it
(the largest ``ts`` seen minus the allowed lateness), so it is a pure function of the position
in that partition: re-reading the partition from an offset with the watermark it had there
makes every later decision again, identically.

>>> window_start(125_000, 60_000)
120000
>>> wm = Watermark(lateness_ms=5_000)
>>> wm.observe(100_000); wm.value
95000
>>> wm.is_late(94_999), wm.is_late(95_000)
(True, False)
"""

from __future__ import annotations

from dataclasses import dataclass

NEVER = -(2**62)


def window_start(ts_ms: int, size_ms: int) -> int:
    """Start of the tumbling window of ``size_ms`` that holds ``ts_ms`` (aligned to the epoch)."""
    return ts_ms - ts_ms % size_ms


@dataclass(frozen=True, slots=True)
class Mark:
    """A position in one topic partition and that topic's largest event time before it."""

    offset: int
    max_ts: int


@dataclass(slots=True)
class Watermark:
    """Largest event time seen on one partition, minus ``lateness_ms``."""

    lateness_ms: int
    max_ts: int = NEVER

    @property
    def value(self) -> int:
        return NEVER if self.max_ts == NEVER else self.max_ts - self.lateness_ms

    def observe(self, ts_ms: int) -> None:
        if ts_ms > self.max_ts:
            self.max_ts = ts_ms

    def is_late(self, ts_ms: int) -> bool:
        """An event older than the watermark no longer updates its window; it is counted."""
        return ts_ms < self.value

    def passed(self, ts_ms: int) -> bool:
        """True once no event at or after ``ts_ms`` can be late: everything before it is final."""
        return self.value >= ts_ms
