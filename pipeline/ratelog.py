"""Log lines that sum things up, at most one per interval: a worker fed garbage at thousands
of events per second says so once a minute, with counts by reason, instead of once per event.

>>> import logging
>>> logs = []
>>> class Keep(logging.Handler):
...     def emit(self, record): logs.append(record.getMessage())
>>> logger = logging.getLogger("ratelog-doctest"); logger.addHandler(Keep())
>>> clock = iter([0, 1, 2, 61, 200]).__next__
>>> counts = RateLimitedCounts(logger, 60.0, "%(total)d bad: %(counts)s", clock=clock)
>>> for reason in ("ts.out_of_range", "invalid_json", "ts.out_of_range"):
...     counts.add(reason)
>>> logs
['1 bad: ts.out_of_range 1']
>>> counts.add("invalid_json"); logs[-1]
'3 bad: invalid_json 2, ts.out_of_range 1'
>>> counts.tick(); len(logs)  # nothing new to say
2
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable


class RateLimitedCounts:
    """Counts by key, logged as a WARNING at the first ``add`` and then at most every
    ``interval`` seconds, summing up what came since the last line. ``message`` is a
    %-format with ``total``, ``seconds`` (since the last line) and ``counts`` (``key n``,
    commas between, most frequent first)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        message: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.message = message
        self.clock = clock
        self.pending: Counter[str] = Counter()
        self.logged_at: float | None = None

    def add(self, key: str, n: int = 1) -> None:
        self.pending[key] += n
        self.tick()

    def tick(self) -> None:
        """Log what is pending if the interval passed (call it now and then, so the last
        counts of a burst are logged too)."""
        if not self.pending:
            return
        now = self.clock()
        if self.logged_at is None or now - self.logged_at >= self.interval:
            counts = ", ".join(
                f"{k} {v}" for k, v in sorted(self.pending.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            seconds = 0.0 if self.logged_at is None else now - self.logged_at
            self.logger.warning(
                self.message,
                {"total": sum(self.pending.values()), "seconds": seconds, "counts": counts},
            )
            self.pending.clear()
            self.logged_at = now
