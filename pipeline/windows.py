"""Event-time windows and watermarks: the one place that decides time.

A watermark belongs to one input topic partition and moves only with the events read from it
(the largest ``ts`` seen minus the allowed lateness), so it is a pure function of the position
in that partition: re-reading the partition from an offset with the watermark it had there
makes every later decision again, identically.

A family's windows are a :class:`WindowSpec`: tumbling windows of a fixed size aligned to the
epoch (what :func:`window_start` computes), or the calendar's hours, days, ISO weeks and
months in a time zone.

>>> window_start(125_000, 60_000)
120000
>>> WindowSpec.parse("60").start(125_000)
120000
>>> wm = Watermark(lateness_ms=5_000, max_ts=100_000)
>>> wm.value, wm.passed(95_000), wm.passed(95_001)
(95000, True, False)
"""

from __future__ import annotations

import difflib
import operator
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import cache
from importlib import resources
from typing import Literal, NamedTuple, cast
from zoneinfo import ZoneInfo

import numpy as np

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
    """Largest event time seen on one partition, minus ``lateness_ms``: an event older than
    it is late (the loops of :mod:`pipeline.partition` move ``max_ts`` and compare with it
    inline, as they run once per event)."""

    lateness_ms: int
    max_ts: int = NEVER

    @property
    def value(self) -> int:
        return NEVER if self.max_ts == NEVER else self.max_ts - self.lateness_ms

    def passed(self, ts_ms: int) -> bool:
        """True once no event at or after ``ts_ms`` can be late: everything before it is final."""
        return self.value >= ts_ms


Unit = Literal["fixed", "hour", "day", "week", "month"]
CALENDAR_UNITS: tuple[Unit, ...] = ("hour", "day", "week", "month")

_HOUR = 3_600_000
_DAY = 86_400_000
_WEEK = 7 * _DAY
_MONDAY = 4 * _DAY  # 1970-01-05: the epoch was a Thursday
_FIXED_SIZE = re.compile(r"([0-9]+)([smh]?)")
_SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600}
_MAX_SECONDS = -NEVER // 1000  # sizes stay far inside int64 arithmetic

#: Calendar windows take event times from 1969-12-01 (so that a window holding an event of
#: 1970 can itself be asked for its end) to 3001-01-01, UTC: past the events' own limit.
FIRST_MS = -2_678_400_000
END_MS = 32_535_216_000_000
#: The earliest start of a window that holds an event from FIRST_MS on (a month, UTC-12).
_FIRST_START_MS = FIRST_MS - 32 * _DAY
#: A window's start and end lie within two months of its events (one unit to the window's
#: own start when the clock skipped a unit, one to its end): a zone's offsets are read that
#: far around the events asked for.
_REACH_MS = 70 * _DAY
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCAN_FROM_S = (FIRST_MS - _REACH_MS) // 1000
_SCAN_TO_S = (END_MS + _REACH_MS) // 1000
#: The zone is sampled this often and bisected to the second where its offset changed.
#: Two changes closer than this that cancel out would be missed: the tz database has none
#: closer than a week since 1970.
_PROBE_S = 6 * 3600
_PROBE = timedelta(seconds=_PROBE_S)
_SECOND = timedelta(seconds=1)
#: Offsets are read this much further than asked, so that a stream moving in time extends
#: them rarely.
_SCAN_AHEAD_S = 365 * 86400


class _Offsets(NamedTuple):
    """A zone's UTC offsets as constant-offset periods, right for instants in [since, until)."""

    starts: np.ndarray  # each period's first instant (ms); the first period starts at NEVER
    next_starts: np.ndarray  # each period's end: the next one's first instant
    offsets: np.ndarray  # UTC offset of each period, ms
    wall_ends: np.ndarray  # running maximum of the local time at which each period ends
    since: int
    until: int


class _Zone:
    """One time zone's changes of UTC offset, read from its rules as far as events need.

    Only the changes are kept (about two a year where the zone has daylight saving time):
    every window boundary follows from them by arithmetic, whereas an array of the
    boundaries themselves would hold every hour from 1970 to 3001.
    """

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self._lock = threading.Lock()
        self._changes: list[int] = []  # instants (ms) at which the offset changed
        self._offsets: list[int] = []  # the offset (ms) from each change on
        # Offsets are known for seconds [_from_s, _to_s]; nothing is read before it is needed,
        # except for a fixed offset, which never changes.
        self._from_s, self._to_s = (
            (NEVER // 1000, -NEVER // 1000)
            if isinstance(tz, timezone)
            else (_SCAN_TO_S, _SCAN_FROM_S)
        )
        self._first_offset = self._offset_at(0) * 1000
        # Replaced whole when extended, so that readers need no lock.
        self.offsets = self._table()

    def offsets_for(self, since_ms: int, until_ms: int) -> _Offsets:
        """The offsets, right at least for instants in [since_ms, until_ms]."""
        offsets = self.offsets
        if offsets.since <= since_ms and until_ms < offsets.until:
            return offsets
        with self._lock:
            if self._from_s > self._to_s:  # the first events: start reading at them
                self._from_s = self._to_s = max(_SCAN_FROM_S, since_ms // 1000)
                self._first_offset = self._offset_at(self._from_s) * 1000
            if until_ms >= self._to_s * 1000:
                to_s = min(_SCAN_TO_S, until_ms // 1000 + _SCAN_AHEAD_S)
                changes, offsets_ms = self._scan(self._to_s, to_s)
                self._changes += changes
                self._offsets += offsets_ms
                self._to_s = to_s
            if since_ms < self._from_s * 1000:
                from_s = max(_SCAN_FROM_S, since_ms // 1000 - _SCAN_AHEAD_S)
                changes, offsets_ms = self._scan(from_s, self._from_s)
                self._changes = changes + self._changes
                self._offsets = offsets_ms + self._offsets
                self._from_s, self._first_offset = from_s, self._offset_at(from_s) * 1000
            self.offsets = self._table()
            return self.offsets

    def _offset_at(self, s: int) -> int:
        return self._offset_of(_EPOCH + timedelta(seconds=s))

    def _offset_of(self, utc: datetime) -> int:
        offset = utc.astimezone(self.tz).utcoffset()
        assert offset is not None  # a tzinfo from a zone file always has an offset
        return offset // _SECOND

    def _scan(self, from_s: int, to_s: int) -> tuple[list[int], list[int]]:
        """The changes of offset in seconds (from_s, to_s], and the offsets they change to."""
        changes: list[int] = []
        offsets: list[int] = []

        def bisect(a: int, offset_a: int, b: int, offset_b: int) -> None:
            if b - a == 1:
                changes.append(b * 1000)
                offsets.append(offset_b * 1000)
                return
            mid = (a + b) // 2
            offset_mid = self._offset_at(mid)
            if offset_mid != offset_a:
                bisect(a, offset_a, mid, offset_mid)
            if offset_mid != offset_b:
                bisect(mid, offset_mid, b, offset_b)

        s, utc = from_s, _EPOCH + timedelta(seconds=from_s)
        offset = self._offset_of(utc)
        while s < to_s:
            probe = min(s + _PROBE_S, to_s)
            utc += _PROBE if probe - s == _PROBE_S else timedelta(seconds=probe - s)
            probed = self._offset_of(utc)
            if probed != offset:
                bisect(s, offset, probe, probed)
            s, offset = probe, probed
        return changes, offsets

    def _table(self) -> _Offsets:
        starts = np.array([NEVER, *self._changes], dtype=np.int64)
        offsets = np.array([self._first_offset, *self._offsets], dtype=np.int64)
        next_starts = np.append(starts[1:], -NEVER)
        wall_ends = np.maximum.accumulate(np.append(starts[1:] + offsets[:-1], -NEVER))
        return _Offsets(
            starts, next_starts, offsets, wall_ends, self._from_s * 1000, self._to_s * 1000
        )


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(resources.files("tzdata").joinpath("zones").read_text().split())


@cache
def _zone(name: str) -> _Zone:
    """The zone ``name`` from the tzdata package: never the host's own database, whose
    version differs between machines, so every worker of one install computes the same
    windows."""
    if name == "UTC":
        return _Zone(UTC)
    names = _zone_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (an IANA name, e.g. 'Europe/Berlin')"
        raise ValueError(f"unknown time zone {name!r}{hint}")
    with resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as f:
        return _Zone(ZoneInfo.from_file(f, key=name))


def _first_instants(offsets: _Offsets, local_ms: np.ndarray) -> np.ndarray:
    """The first instant at which the local clock reads ``local_ms`` or later.

    That is in the first period whose local times reach past ``local_ms``: at ``local_ms``
    itself in that period's offset, or at the period's start if the clock jumped over it.
    """
    period = np.searchsorted(offsets.wall_ends, local_ms, side="right")
    return np.maximum(offsets.starts[period], local_ms - offsets.offsets[period])


def _unit_floor(unit: Unit, local_ms: np.ndarray) -> np.ndarray:
    if unit == "day":
        return local_ms - local_ms % _DAY
    if unit == "week":
        return local_ms - (local_ms - _MONDAY) % _WEEK
    month = local_ms.astype("datetime64[ms]").astype("datetime64[M]")
    return month.astype("datetime64[ms]").astype(np.int64)


def _unit_after(unit: Unit, unit_start: np.ndarray) -> np.ndarray:
    if unit == "day":
        return unit_start + _DAY
    if unit == "week":
        return unit_start + _WEEK
    month = unit_start.astype("datetime64[ms]").astype("datetime64[M]") + 1
    return month.astype("datetime64[ms]").astype(np.int64)


def _calendar_windows(unit: Unit, offsets: _Offsets, ts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Start and end of the calendar window of each of ``ts`` (int64 epoch ms)."""
    period = np.searchsorted(offsets.starts, ts, side="right") - 1
    offset = offsets.offsets[period]
    local = ts + offset
    if unit == "hour":
        hour = local - local % _HOUR - offset
        start = np.maximum(hour, offsets.starts[period])
        return start, np.minimum(hour + _HOUR, offsets.next_starts[period])
    # After a fall-back just past a unit's first moment the clock can read the previous unit
    # again: those instants belong to the unit that has already begun.
    unit_start = _unit_floor(unit, local)
    following = _unit_after(unit, unit_start)
    following_first = _first_instants(offsets, following)
    begun = following_first <= ts
    start = np.where(begun, following_first, _first_instants(offsets, unit_start))
    end = np.where(begun, _first_instants(offsets, _unit_after(unit, following)), following_first)
    return start, end


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """The tumbling event-time windows of a metric family.

    A window is identified by its start (epoch milliseconds, a UTC instant) and ends where
    the next one starts.

    Parameters
    ----------
    unit
        ``"fixed"``: windows of ``seconds`` aligned to the epoch (exactly
        :func:`window_start`). ``"hour"``, ``"day"``, ``"week"`` (ISO weeks, from Monday
        00:00) or ``"month"`` (from the 1st, 00:00): the calendar's units on the local clock
        of ``tz``.
    seconds
        The size of fixed windows (at least 1); ``None`` for calendar windows.
    tz
        An IANA time zone name for calendar windows (``"UTC"`` for fixed ones). The rules
        come from the ``tzdata`` package rather than the host, so that every process of an
        install computes the same windows; upgrading that package brings new rules.

    Notes
    -----
    A calendar window starts at the first instant of its local unit, so local days are 23,
    24 or 25 hours long around daylight-saving changes. Where a spring-forward skips a
    unit's first moment, the unit starts when the clock jumps (America/Santiago's
    2023-09-03 at 01:00 local); a unit skipped entirely has no window (Pacific/Apia's
    2011-12-30); a first moment that a fall-back repeats counts from its first occurrence.
    Hour windows also start wherever the zone's UTC offset changes: the hour a fall-back
    repeats gives two windows, a 30-minute shift (Australia/Lord_Howe) a 30-minute window,
    and in a zone with a half-hour offset (Asia/Kolkata) hours start at half past, UTC.

    Examples
    --------
    >>> from datetime import datetime
    >>> day = WindowSpec.parse("day", tz="Europe/Berlin")
    >>> str(day)
    'day Europe/Berlin'
    >>> t = int(datetime.fromisoformat("2024-03-31T12:00+02:00").timestamp() * 1000)
    >>> start = day.start(t)
    >>> datetime.fromtimestamp(start / 1000, day.zone).isoformat()
    '2024-03-31T00:00:00+01:00'
    >>> (day.end(start) - start) // 3_600_000
    23
    >>> WindowSpec.parse("5m").starts(np.array([t, t + 299_999, t + 300_000])) - t
    array([     0,      0, 300000])
    """

    unit: Unit
    seconds: int | None = None
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if self.unit == "fixed":
            if not isinstance(self.seconds, int) or isinstance(self.seconds, bool):
                raise TypeError(
                    f"fixed windows need a whole number of seconds, got {self.seconds!r}"
                )
            if not 1 <= self.seconds <= _MAX_SECONDS:
                raise ValueError(
                    f"a window must last at least 1 second and at most {_MAX_SECONDS}, "
                    f"got {self.seconds}"
                )
            if self.tz != "UTC":
                raise ValueError(
                    f"fixed-size windows are aligned to the epoch, not to a time zone; for "
                    f"windows on the clock of {self.tz!r} use hour, day, week or month"
                )
        elif self.unit in CALENDAR_UNITS:
            if self.seconds is not None:
                raise ValueError(f"{self.unit} windows have no size in seconds")
            _zone(self.tz)  # an unknown zone fails here, and the zone is read once per process
        else:
            raise ValueError(
                f"unknown window unit {self.unit!r}: fixed, {', '.join(CALENDAR_UNITS)}"
            )

    @classmethod
    def parse(cls, text: str, tz: str | None = None) -> WindowSpec:
        """The windows a setting names: a size or a calendar unit, optionally with a zone.

        Parameters
        ----------
        text
            ``"60"`` or ``"60s"`` (seconds), ``"5m"``, ``"1h"``; or ``"hour"``, ``"day"``,
            ``"week"``, ``"month"``, optionally followed by a zone (``"day Europe/Berlin"``,
            the form :meth:`describe` gives).
        tz
            The zone of calendar windows when ``text`` names none (default UTC).

        Raises
        ------
        ValueError
            For anything else, saying what was expected.

        Examples
        --------
        >>> WindowSpec.parse("90s"), WindowSpec.parse("week", tz="Asia/Kolkata").describe()
        (WindowSpec(unit='fixed', seconds=90, tz='UTC'), 'week Asia/Kolkata')
        >>> WindowSpec.parse("2w")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: window '2w' is neither a size (a whole number of seconds, ...) nor hour, ...
        """
        if not isinstance(text, str):
            raise TypeError(f"a window setting is text, got {text!r}")
        words = text.split()
        if len(words) == 2 and words[0] in CALENDAR_UNITS:
            if tz is not None and tz != words[1]:
                raise ValueError(f"window {text!r} names a zone other than tz={tz!r}")
            tz = words[1]
        elif len(words) != 1:
            raise ValueError(
                f"window {text!r} is not a size or a calendar unit with an optional zone "
                f"(e.g. '5m', 'day', 'day Europe/Berlin')"
            )
        word, zone = words[0], "UTC" if tz is None else tz
        size = _FIXED_SIZE.fullmatch(word)
        if word not in CALENDAR_UNITS and size is None:
            raise ValueError(
                f"window {text!r} is neither a size (a whole number of seconds, or of minutes "
                f"or hours: 60, 60s, 5m, 1h) nor hour, day, week or month"
            )
        try:
            if size is None:
                return cls(cast(Unit, word), tz=zone)
            return cls("fixed", seconds=int(size[1]) * _SECONDS_PER[size[2]], tz=zone)
        except ValueError as e:
            raise ValueError(f"window {text!r}: {e}") from None

    def describe(self) -> str:
        """The canonical text of these windows, which :meth:`parse` reads back.

        Examples
        --------
        >>> [WindowSpec.parse(t).describe() for t in ("60", "3600s", "90", "month")]
        ['1m', '1h', '90s', 'month UTC']
        """
        if self.seconds is None:
            return f"{self.unit} {self.tz}"
        for suffix, seconds in (("h", 3600), ("m", 60)):
            if self.seconds % seconds == 0:
                return f"{self.seconds // seconds}{suffix}"
        return f"{self.seconds}s"

    def __str__(self) -> str:
        return self.describe()

    @property
    def is_calendar(self) -> bool:
        return self.unit != "fixed"

    @property
    def size_ms(self) -> int | None:
        """The length of every window, for fixed windows; ``None`` for calendar ones."""
        return None if self.seconds is None else self.seconds * 1000

    @property
    def longest_ms(self) -> int:
        """An upper bound of the length of any window: the size of fixed ones; a calendar
        unit's longest length, with two hours to spare for a change of the zone's offset.

        >>> WindowSpec.parse("5m").longest_ms, WindowSpec.parse("day").longest_ms
        (300000, 93600000)
        """
        if self.seconds is not None:
            return self.seconds * 1000
        hours = {"hour": 1, "day": 24, "week": 7 * 24, "month": 31 * 24}[self.unit]
        return (hours + (0 if self.unit == "hour" else 2)) * 3_600_000

    @property
    def zone(self) -> tzinfo:
        """The zone whose clock calendar windows follow (UTC for fixed windows)."""
        return _zone(self.tz).tz

    def start(self, ts_ms: int) -> int:
        """Start (epoch ms) of the window that holds the event time ``ts_ms``."""
        ts_ms = operator.index(ts_ms)
        if self.seconds is not None:
            return window_start(ts_ms, self.seconds * 1000)
        return int(self._calendar(np.array([self._checked(ts_ms)], dtype=np.int64))[0][0])

    def end(self, start_ms: int) -> int:
        """End of the window that starts at ``start_ms``: the next window's start.

        Raises ``ValueError`` if no window starts at ``start_ms``.
        """
        start_ms = operator.index(start_ms)
        if self.seconds is not None:
            size = self.seconds * 1000
            if start_ms % size:
                raise ValueError(f"{start_ms} is not the start of a {self} window")
            return start_ms + size
        start_ms = self._checked(start_ms, _FIRST_START_MS)
        start, end = self._calendar(np.array([start_ms], dtype=np.int64))
        if start[0] != start_ms:
            raise ValueError(
                f"{start_ms} is not the start of a {self} window (the window that holds it "
                f"starts at {int(start[0])})"
            )
        return int(end[0])

    def starts(self, ts_ms: np.ndarray) -> np.ndarray:
        """Window start of each event time of a batch (int64 epoch ms), as an int64 array."""
        ts = np.asarray(ts_ms)
        if ts.dtype.kind not in "iu":
            raise TypeError(f"event times must be integer epoch milliseconds, got {ts.dtype}")
        ts = ts.astype(np.int64, copy=False)
        if self.seconds is not None:
            return ts - ts % (self.seconds * 1000)
        if ts.size:
            self._checked(int(ts.min()))
            self._checked(int(ts.max()))
        return self._calendar(ts)[0]

    def _checked(self, ts_ms: int, first_ms: int = FIRST_MS) -> int:
        if not first_ms <= ts_ms < END_MS:
            raise ValueError(
                f"time {ts_ms} ms is outside the range of calendar windows "
                f"(1969-12-01 to 3001-01-01 UTC)"
            )
        return ts_ms

    def _calendar(self, ts: np.ndarray) -> tuple[np.ndarray, ...]:
        if ts.size == 0:
            return ts, ts
        since = max(_SCAN_FROM_S * 1000, int(ts.min()) - _REACH_MS)
        offsets = _zone(self.tz).offsets_for(since, int(ts.max()) + _REACH_MS)
        return _calendar_windows(self.unit, offsets, ts)


class Windows:
    """The windows of one :class:`WindowSpec` as a partition's loop over events asks for
    them: the bounds of the last window found are kept, since consecutive events mostly fall
    in one window, and a calendar window's bounds cost a zone lookup.

    >>> days = Windows(WindowSpec.parse("day", tz="Europe/Berlin"))
    >>> start = days.start(1_700_000_000_000)  # 2023-11-14 23:13:20 in Berlin
    >>> start, days.end(start) - start
    (1699916400000, 86400000)
    """

    __slots__ = ("_end", "_start", "size", "spec")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.size = spec.size_ms
        self._start = self._end = 0

    def start(self, ts_ms: int) -> int:
        size = self.size
        if size is not None:
            return ts_ms - ts_ms % size
        if not self._start <= ts_ms < self._end:
            self._start = self.spec.start(ts_ms)
            self._end = self.spec.end(self._start)
        return self._start

    def end(self, start_ms: int) -> int:
        size = self.size
        if size is not None:
            return start_ms + size
        if start_ms == self._start:
            return self._end
        return self.spec.end(start_ms)
