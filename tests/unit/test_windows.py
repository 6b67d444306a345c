"""Window specs against a reference computed per timestamp with datetime and zoneinfo.

The reference reads the same rules (the tzdata package) through its own code and follows the
definitions literally, a second or a minute at a time: a calendar window starts at the first
instant at which the local clock reads its unit's first moment or later; an hour window
starts where the local clock reads a whole hour or the UTC offset changes.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import cache
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.windows import END_MS, FIRST_MS, WindowSpec, window_start

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_MS = 3_600_000
Y2100_MS = 4_102_444_800_000
UNITS = ("hour", "day", "week", "month")
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "Pacific/Apia",
    "Asia/Beirut",
    "America/Havana",
    "America/St_Johns",
)


# --- the reference ---------------------------------------------------------------------------


@cache
def zone(name: str) -> tzinfo:
    if name == "UTC":
        return UTC
    with resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as f:
        return ZoneInfo.from_file(f, key=name)


def local(s: int, z: tzinfo) -> datetime:
    """The local clock (naive) at UTC second ``s``."""
    return (EPOCH + timedelta(seconds=s)).astimezone(z).replace(tzinfo=None)


def utc_offset(s: int, z: tzinfo) -> timedelta | None:
    return (EPOCH + timedelta(seconds=s)).astimezone(z).utcoffset()


def is_hour_boundary(s: int, z: tzinfo) -> bool:
    clock = local(s, z)
    return (clock.minute, clock.second) == (0, 0) or utc_offset(s, z) != utc_offset(s - 1, z)


def hour_boundary_within(a: int, b: int, z: tzinfo) -> bool:
    """Whether an hour window starts in seconds (a, b], a minute apart at most."""
    hour_a, hour_b = (local(s, z).replace(minute=0, second=0) for s in (a, b))
    return utc_offset(a, z) != utc_offset(b, z) or hour_a != hour_b


def reference_hour(t_ms: int, z: tzinfo) -> tuple[int, int]:
    s = t_ms // 1000
    while not hour_boundary_within(s - 60, s, z):
        s -= 60
    start = next(x for x in range(s, s - 60, -1) if is_hour_boundary(x, z))
    s = t_ms // 1000
    while not hour_boundary_within(s, s + 60, z):
        s += 60
    end = next(x for x in range(s + 1, s + 61) if is_hour_boundary(x, z))
    return start * 1000, end * 1000


def unit_of(unit: str, clock: datetime) -> datetime:
    d = clock.date()
    if unit == "week":
        d -= timedelta(days=d.weekday())
    elif unit == "month":
        d = d.replace(day=1)
    return datetime(d.year, d.month, d.day)


def unit_after(unit: str, first: datetime, n: int) -> datetime:
    if unit == "day":
        return first + timedelta(days=n)
    if unit == "week":
        return first + timedelta(weeks=n)
    months = first.year * 12 + first.month - 1 + n
    return datetime(months // 12, months % 12 + 1, 1)


@cache
def first_instant(first: datetime, z: tzinfo) -> int:
    """The first instant (ms) at which the local clock reads ``first`` or later: scanned a
    minute at a time from 15 hours before (no zone is that far ahead of UTC), then a second at
    a time (the clock reaches a new unit no more than once within a minute)."""
    s = int((first - datetime(1970, 1, 1)).total_seconds()) - 15 * 3600
    assert local(s, z) < first
    while local(s + 60, z) < first:
        s += 60
    s += 1
    while local(s, z) < first:
        s += 1
    return s * 1000


def reference(unit: str, tz: str, t_ms: int) -> tuple[int, int]:
    """The window (start, end) that holds ``t_ms``."""
    z = zone(tz)
    if unit == "hour":
        return reference_hour(t_ms, z)
    here = unit_of(unit, local(t_ms // 1000, z))
    firsts = [first_instant(unit_after(unit, here, n), z) for n in range(-1, 3)]
    return max(f for f in firsts if f <= t_ms), min(f for f in firsts if f > t_ms)


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp()) * 1000


def clock(spec: WindowSpec, t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, spec.zone).isoformat()


# --- around daylight-saving changes and other oddities, window by window --------------------

#: Each an offset change (or, for Kolkata and UTC, an ordinary day), by its instant.
CHANGES = [
    ("Europe/Berlin", "2024-03-31T01:00Z"),  # 02:00 -> 03:00
    ("Europe/Berlin", "2024-10-27T01:00Z"),  # 03:00 -> 02:00
    ("America/New_York", "2024-03-10T07:00Z"),  # 02:00 -> 03:00
    ("America/New_York", "2024-11-03T06:00Z"),  # 02:00 -> 01:00
    ("Australia/Lord_Howe", "2024-04-06T15:00Z"),  # 02:00 -> 01:30
    ("Australia/Lord_Howe", "2024-10-05T15:30Z"),  # 02:00 -> 02:30
    ("Asia/Kolkata", "2024-06-01T00:00Z"),  # +05:30 all year
    ("America/Santiago", "2023-04-02T03:00Z"),  # 00:00 -> 23:00 the day before
    ("America/Santiago", "2023-09-03T04:00Z"),  # 00:00 -> 01:00: no midnight
    ("Asia/Beirut", "2010-03-27T22:00Z"),  # 00:00 -> 01:00
    ("Asia/Beirut", "2010-10-30T21:00Z"),  # 00:00 -> 23:00 the day before
    ("America/Havana", "2024-03-10T05:00Z"),  # 00:00 -> 01:00
    ("America/Havana", "2024-11-03T05:00Z"),  # 01:00 -> 00:00: midnight twice
    ("America/St_Johns", "2006-10-29T02:31Z"),  # 00:01 -> 23:01 the day before
    ("Pacific/Apia", "2011-12-30T10:00Z"),  # 2011-12-29 24:00 -> 2011-12-31 00:00
    ("UTC", "2024-02-29T12:00Z"),
]


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize(("tz", "change"), CHANGES)
def test_each_window_around_a_change(unit: str, tz: str, change: str) -> None:
    """Every window from a day before the change to a day after: its first and last
    millisecond fall in it, the next millisecond in the next one."""
    spec = WindowSpec.parse(unit, tz=tz)
    at = ms(change)
    start, end = reference(unit, tz, at - 86_400_000)
    windows = 0
    while start <= at + 86_400_000:
        windows += 1
        assert end > start
        assert (spec.start(start), spec.start(end - 1), spec.start(end)) == (start, start, end)
        assert spec.end(start) == end, clock(spec, start)
        batch = np.array([start, start + 1, end - 1, end], dtype=np.int64)
        assert spec.starts(batch).tolist() == [start, start, start, end]
        start, end = end, reference(unit, tz, end)[1]
    assert windows >= (2 if unit == "hour" else 1)


@pytest.mark.parametrize(("tz", "change"), CHANGES)
def test_events_around_a_change(tz: str, change: str) -> None:
    """Events at random milliseconds within a day of the change, per timestamp."""
    rng = random.Random(change)
    at = ms(change)
    ts = [at + rng.randrange(-86_400_000, 86_400_000) for _ in range(40)]
    ts += [at - 1, at, at + 1]
    for unit in UNITS:
        spec = WindowSpec.parse(unit, tz=tz)
        expected = [reference(unit, tz, t) for t in ts]
        assert spec.starts(np.array(ts)).tolist() == [s for s, _ in expected]
        assert [spec.end(s) for s, _ in expected] == [e for _, e in expected]


# --- what the changes give, spelled out ------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("Europe/Berlin", "2024-03-31T12:00+02:00", 23),
        ("Europe/Berlin", "2024-10-27T12:00+01:00", 25),
        ("America/New_York", "2024-03-10T12:00-04:00", 23),
        ("America/New_York", "2024-11-03T12:00-05:00", 25),
        ("Australia/Lord_Howe", "2024-04-07T12:00+10:30", 24.5),
        ("Australia/Lord_Howe", "2024-10-06T12:00+11:00", 23.5),
        ("America/Santiago", "2023-04-01T12:00-03:00", 25),
        ("America/Santiago", "2023-09-03T12:00-03:00", 23),
        ("America/Havana", "2024-11-03T12:00-05:00", 25),
        ("Pacific/Apia", "2011-12-29T12:00-10:00", 24),
        ("Pacific/Apia", "2011-12-31T12:00+14:00", 24),
        ("Asia/Kolkata", "2024-06-01T12:00+05:30", 24),
    ],
)
def test_local_days_last_23_to_25_hours(tz: str, day: str, hours: float) -> None:
    spec = WindowSpec.parse("day", tz=tz)
    start = spec.start(ms(day))
    assert clock(spec, start)[:10] == day[:10]
    assert (spec.end(start) - start) / HOUR_MS == hours


def test_a_skipped_midnight_starts_the_day_when_the_clock_jumps() -> None:
    santiago = WindowSpec.parse("day America/Santiago")
    assert clock(santiago, santiago.start(ms("2023-09-03T12:00-03:00"))) == (
        "2023-09-03T01:00:00-03:00"
    )
    havana = WindowSpec.parse("day America/Havana")
    assert clock(havana, havana.start(ms("2024-03-10T12:00-04:00"))) == (
        "2024-03-10T01:00:00-04:00"
    )


def test_a_repeated_midnight_starts_the_day_at_its_first_occurrence() -> None:
    havana = WindowSpec.parse("day America/Havana")
    assert clock(havana, havana.start(ms("2024-11-03T00:30-05:00"))) == (
        "2024-11-03T00:00:00-04:00"
    )


def test_a_fall_back_into_the_day_before_stays_in_the_day_begun() -> None:
    """St John's went from 00:01 back to 23:01: that second 23:01-24:00 is in the new day."""
    spec = WindowSpec.parse("day America/St_Johns")
    again = ms("2006-10-28T23:30-03:30")
    assert clock(spec, spec.start(again)) == "2006-10-29T00:00:00-02:30"
    assert clock(spec, spec.start(again - HOUR_MS)) == "2006-10-28T00:00:00-02:30"


def test_a_skipped_day_has_no_window() -> None:
    spec = WindowSpec.parse("day Pacific/Apia")
    dec29 = spec.start(ms("2011-12-29T12:00-10:00"))
    dec31 = spec.end(dec29)
    assert clock(spec, dec31) == "2011-12-31T00:00:00+14:00"
    assert spec.start(dec31 - 1) == dec29


def test_hours_follow_the_local_clock() -> None:
    kolkata = WindowSpec.parse("hour Asia/Kolkata")
    assert kolkata.start(ms("2024-06-01T10:45Z")) == ms("2024-06-01T10:30Z")
    assert kolkata.end(ms("2024-06-01T10:30Z")) == ms("2024-06-01T11:30Z")

    # The hour from 01:00 is repeated: two windows of an hour each, both 01:00 on the clock.
    new_york = WindowSpec.parse("hour America/New_York")
    first, second = ms("2024-11-03T05:00Z"), ms("2024-11-03T06:00Z")
    assert new_york.start(second - 1) == first and new_york.end(first) == second
    assert new_york.start(second) == second and new_york.end(second) == second + HOUR_MS
    assert clock(new_york, first)[11:16] == clock(new_york, second)[11:16] == "01:00"

    # Skipped local times leave no empty window: 01:00 CET is followed by 03:00 CEST.
    berlin = WindowSpec.parse("hour Europe/Berlin")
    assert berlin.end(ms("2024-03-31T00:00Z")) == ms("2024-03-31T01:00Z")
    assert clock(berlin, ms("2024-03-31T01:00Z")) == "2024-03-31T03:00:00+02:00"

    # 02:00 -> 01:30: an hour, then the half hour repeated.
    lord_howe = WindowSpec.parse("hour Australia/Lord_Howe")
    one = lord_howe.start(ms("2024-04-06T14:10Z"))
    half = lord_howe.end(one)
    assert (clock(lord_howe, one), clock(lord_howe, half)) == (
        "2024-04-07T01:00:00+11:00",
        "2024-04-07T01:30:00+10:30",
    )
    assert (lord_howe.end(half) - half, half - one) == (HOUR_MS // 2, HOUR_MS)


# --- ISO weeks and month ends ----------------------------------------------------------------


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
@pytest.mark.parametrize("monday", [date(2020, 12, 28), date(2026, 12, 28), date(2024, 3, 25)])
def test_iso_weeks_run_monday_to_sunday(tz: str, monday: date) -> None:
    spec = WindowSpec.parse("week", tz=tz)
    z = zone(tz)
    first = int(datetime.combine(monday, datetime.min.time(), z).timestamp()) * 1000
    next_monday = monday + timedelta(weeks=1)
    end = int(datetime.combine(next_monday, datetime.min.time(), z).timestamp()) * 1000
    assert spec.starts(np.array([first, first + 1, end - 1, end])).tolist() == [
        first,
        first,
        first,
        end,
    ]
    assert spec.start(first - 1) == spec.start(first - 7 * 86_400_000) < first
    assert spec.end(first) == end
    assert monday.isocalendar().weekday == 1
    if monday.month == 12:  # a 53rd week, into January
        assert monday.isocalendar().week == 53
        assert (next_monday - timedelta(days=1)).year == monday.year + 1


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
@pytest.mark.parametrize(
    ("year", "month", "days"),
    [(2023, 1, 31), (2023, 2, 28), (2024, 2, 29), (2000, 2, 29), (2100, 2, 28), (2024, 12, 31)],
)
def test_months_end_on_their_last_day(tz: str, year: int, month: int, days: int) -> None:
    spec = WindowSpec.parse("month", tz=tz)
    z = zone(tz)
    first = int(datetime(year, month, 1, tzinfo=z).timestamp()) * 1000
    after = unit_after("month", datetime(year, month, 1), 1)
    end = int(after.replace(tzinfo=z).timestamp()) * 1000
    last_day = int(datetime(year, month, days, 12, tzinfo=z).timestamp()) * 1000
    assert spec.starts(np.array([first, last_day, end - 1, end])).tolist() == [
        first,
        first,
        first,
        end,
    ]
    assert spec.end(first) == end
    assert clock(spec, end)[:10] == after.date().isoformat()


# --- random batches --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    seconds=st.integers(1, 10**7),
    ts=st.lists(st.integers(-(2**53), 2**53), min_size=1, max_size=50),
    suffix=st.sampled_from(["", "s"]),
)
def test_fixed_windows_are_window_start(seconds: int, ts: list[int], suffix: str) -> None:
    spec = WindowSpec.parse(f"{seconds}{suffix}")
    assert spec.size_ms == seconds * 1000 and not spec.is_calendar
    assert [spec.start(t) for t in ts] == [window_start(t, seconds * 1000) for t in ts]
    assert spec.starts(np.array(ts, dtype=np.int64)).tolist() == [
        window_start(t, seconds * 1000) for t in ts
    ]
    start = spec.start(ts[0])
    assert spec.end(start) == start + seconds * 1000


@settings(max_examples=150, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    unit=st.sampled_from(UNITS),
    ts=st.lists(st.integers(0, Y2100_MS), min_size=1, max_size=60),
)
def test_starts_is_start_for_every_event(tz: str, unit: str, ts: list[int]) -> None:
    spec = WindowSpec.parse(unit, tz=tz)
    starts = spec.starts(np.array(ts, dtype=np.int64))
    assert starts.dtype == np.int64
    assert starts.tolist() == [spec.start(t) for t in ts]
    for t, start in zip(ts, starts.tolist(), strict=True):
        assert start <= t < spec.end(start)


@settings(max_examples=40, deadline=None)
@given(
    tz=st.sampled_from(["Europe/Berlin", "Australia/Lord_Howe", "America/Santiago"]),
    unit=st.sampled_from(UNITS),
    ts=st.lists(st.integers(FIRST_MS, END_MS - 1), min_size=1, max_size=20),
)
def test_the_whole_range_of_event_times(tz: str, unit: str, ts: list[int]) -> None:
    spec = WindowSpec.parse(unit, tz=tz)
    starts = spec.starts(np.array(ts, dtype=np.int64)).tolist()
    assert starts == [spec.start(t) for t in ts]
    assert (starts[0], spec.end(starts[0])) == reference(unit, tz, ts[0])


@settings(max_examples=150, deadline=None)
@given(tz=st.sampled_from(ZONES), unit=st.sampled_from(UNITS), t=st.integers(0, Y2100_MS))
def test_start_and_end_match_the_reference(tz: str, unit: str, t: int) -> None:
    spec = WindowSpec.parse(unit, tz=tz)
    start = spec.start(t)
    assert (start, spec.end(start)) == reference(unit, tz, t)


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("tz", ["Etc/GMT+12", "Pacific/Kiritimati", "America/Santiago"])
def test_the_first_and_last_event_times(unit: str, tz: str) -> None:
    """The windows of the first and last events accepted, whose own start or end lies
    beyond them, can be asked for."""
    spec = WindowSpec.parse(unit, tz=tz)
    for t in (FIRST_MS, END_MS - 1):
        start = spec.start(t)
        assert (start, spec.end(start)) == reference(unit, tz, t)


def test_utc_calendar_windows_are_the_fixed_ones_where_those_align() -> None:
    ts = np.random.default_rng(1).integers(0, END_MS, 2000)
    assert (WindowSpec.parse("hour").starts(ts) == WindowSpec.parse("1h").starts(ts)).all()
    assert (WindowSpec.parse("day").starts(ts) == WindowSpec.parse("24h").starts(ts)).all()
    monday = 4 * 86_400_000
    weeks = WindowSpec.parse("week").starts(ts)
    assert (weeks == ts - (ts - monday) % (7 * 86_400_000)).all()


# --- the setting's text ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tz", "expected"),
    [
        ("60", None, WindowSpec("fixed", 60)),
        ("60s", None, WindowSpec("fixed", 60)),
        ("1m", "UTC", WindowSpec("fixed", 60)),
        ("5m", None, WindowSpec("fixed", 300)),
        ("1h", None, WindowSpec("fixed", 3600)),
        (" 90 ", None, WindowSpec("fixed", 90)),
        ("hour", None, WindowSpec("hour")),
        ("day", "Europe/Berlin", WindowSpec("day", tz="Europe/Berlin")),
        ("week Asia/Kolkata", None, WindowSpec("week", tz="Asia/Kolkata")),
        ("month America/New_York", "America/New_York", WindowSpec("month", tz="America/New_York")),
    ],
)
def test_parse(text: str, tz: str | None, expected: WindowSpec) -> None:
    spec = WindowSpec.parse(text, tz=tz)
    assert spec == expected
    assert WindowSpec.parse(str(spec)) == spec
    assert spec.is_calendar == (spec.unit != "fixed")
    assert spec.size_ms == (None if spec.seconds is None else spec.seconds * 1000)


def test_canonical_text() -> None:
    assert [str(WindowSpec.parse(t)) for t in ("60", "120", "3600", "5400", "86400", "61")] == [
        "1m",
        "2m",
        "1h",
        "90m",
        "24h",
        "61s",
    ]
    assert WindowSpec.parse("day", tz="Europe/Berlin").describe() == "day Europe/Berlin"
    assert WindowSpec.parse("week").describe() == "week UTC"


@pytest.mark.parametrize(
    ("text", "tz", "message"),
    [
        ("0", None, r"window '0': a window must last at least 1 second"),
        ("0h", None, r"at least 1 second"),
        ("-5", None, r"window '-5' is neither a size"),
        ("2w", None, r"window '2w' is neither a size .* nor hour, day, week or month"),
        ("1.5m", None, r"neither a size"),
        ("5M", None, r"neither a size"),
        ("Day", None, r"neither a size"),
        ("", None, r"window '' is not a size or a calendar unit"),
        ("1 h", None, r"not a size or a calendar unit"),
        ("day Mars/Olympus", None, r"unknown time zone 'Mars/Olympus'"),
        ("day", "Mars/Olympus", r"unknown time zone 'Mars/Olympus'"),
        (
            "day",
            "europe/berlin",
            r"unknown time zone 'europe/berlin'; did you mean 'Europe/Berlin'",
        ),
        ("day", "../../../etc/passwd", r"unknown time zone '../../../etc/passwd'"),
        ("day", "leapseconds", r"unknown time zone 'leapseconds'"),
        ("day", "localtime", r"unknown time zone 'localtime'"),
        ("60", "Europe/Berlin", r"fixed-size windows are aligned to the epoch"),
        ("day Europe/Berlin", "Asia/Kolkata", r"names a zone other than tz='Asia/Kolkata'"),
    ],
)
def test_parse_errors(text: str, tz: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowSpec.parse(text, tz=tz)


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="unknown window unit 'year'"):
        WindowSpec("year")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="day windows have no size"):
        WindowSpec("day", 60)
    with pytest.raises(TypeError, match="whole number of seconds"):
        WindowSpec("fixed", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is text"):
        WindowSpec.parse(60)  # type: ignore[arg-type]


def test_bad_event_times_are_refused() -> None:
    day = WindowSpec.parse("day Europe/Berlin")
    with pytest.raises(TypeError, match="integer epoch milliseconds, got float64"):
        day.starts(np.array([1.5]))
    with pytest.raises(TypeError):
        day.start(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the range of calendar windows"):
        day.starts(np.array([0, END_MS]))
    with pytest.raises(ValueError, match="outside the range of calendar windows"):
        day.start(FIRST_MS - 1)
    assert day.starts(np.array([], dtype=np.int64)).tolist() == []
    with pytest.raises(ValueError, match="is not the start of a day Europe/Berlin window"):
        day.end(ms("2024-03-31T12:00Z"))
    with pytest.raises(ValueError, match="is not the start of a 1m window"):
        WindowSpec.parse("60").end(59_999)


def test_specs_are_values() -> None:
    spec = WindowSpec.parse("day Europe/Berlin")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert {spec, WindowSpec("day", tz="Europe/Berlin")} == {spec}
    with pytest.raises(AttributeError):
        spec.tz = "UTC"  # type: ignore[misc]


def test_the_same_windows_whatever_the_host_zone_and_database(tmp_path: Path) -> None:
    """A process in another local zone, with no system time-zone database at all (as on a
    minimal Debian), computes the same windows: the rules come from the tzdata package."""
    ts = [0, ms("2011-12-30T09:59:59Z"), ms("2024-10-27T01:30Z"), ms("2026-11-02T12:00Z")]
    code = (
        "import json, sys, zoneinfo\n"
        "from pipeline.windows import WindowSpec\n"
        "assert zoneinfo.TZPATH == (sys.argv[1],), zoneinfo.TZPATH\n"
        f"specs = {[f'{u} {tz}' for u in UNITS for tz in ZONES]!r}\n"
        f"print(json.dumps([[WindowSpec.parse(s).start(t) for t in {ts!r}] for s in specs]))\n"
    )
    empty = tmp_path / "zoneinfo"
    empty.mkdir()
    env = {**os.environ, "TZ": "Pacific/Kiritimati", "PYTHONTZPATH": str(empty)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(empty)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    here = [[WindowSpec.parse(f"{u} {tz}").start(t) for t in ts] for u in UNITS for tz in ZONES]
    assert json.loads(out.stdout) == here
