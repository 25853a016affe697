"""Business calendars: when the clock of a business-hours SLA runs. Pure.

A calendar is weekly opening hours in a time zone, minus holidays. Opening
hours are wall-clock times, so each day's intervals are built in local time
and only then turned into UTC: a DST change moves the UTC interval, never the
local one, and a day that loses an hour to DST really is an hour shorter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Far enough to cross any run of holidays; a calendar with no opening hours
# at all is refused when the configuration is read.
MAX_DAYS = 3 * 366


@dataclass(frozen=True)
class Calendar:
    name: str
    tz: ZoneInfo
    # Per weekday (Monday first), the opening hours as (open, close) local times.
    weekly: tuple[tuple[tuple[time, time], ...], ...]
    holidays: frozenset[date] = frozenset()
    always_open: bool = False

    def is_open_on(self, day: date) -> bool:
        return bool(self.weekly[day.weekday()]) and day not in self.holidays

    def day_intervals(self, day: date) -> tuple[tuple[datetime, datetime], ...]:
        """The UTC intervals in which the calendar is open on a local day."""
        return _day_intervals(self, day)

    def open_intervals(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals clipped to ``[start, end)``, in order, in UTC."""
        if end <= start:
            return
        if self.always_open:
            yield start, end
            return
        day = start.astimezone(self.tz).date() - timedelta(days=1)
        last = end.astimezone(self.tz).date()
        while day <= last:
            for opens, closes in self.day_intervals(day):
                lo, hi = max(opens, start), min(closes, end)
                if hi > lo:
                    yield lo, hi
            day += timedelta(days=1)

    def next_open_moment(self, moment: datetime) -> datetime:
        """``moment`` itself when the calendar is open then, else the start of its next open interval.

        Alerts of a business-hours SLA wait for this moment: nobody should be
        nudged at 3 a.m. about a clock that is not even running then.
        """
        for opens, _closes in self.open_intervals(moment, moment + timedelta(days=MAX_DAYS)):
            return opens
        return moment

    def seconds_between(self, start: datetime, end: datetime) -> float:
        """Business seconds in ``[start, end)``."""
        return sum((hi - lo).total_seconds() for lo, hi in self.open_intervals(start, end))

    def add(self, start: datetime, seconds: float) -> datetime:
        """The moment at which ``seconds`` of business time have passed since ``start``."""
        if seconds <= 0:
            return start
        if self.always_open:
            return start + timedelta(seconds=seconds)
        remaining = seconds
        day = start.astimezone(self.tz).date() - timedelta(days=1)
        for _ in range(MAX_DAYS):
            for opens, closes in self.day_intervals(day):
                lo = max(opens, start)
                if closes <= lo:
                    continue
                span = (closes - lo).total_seconds()
                if span >= remaining:
                    return lo + timedelta(seconds=remaining)
                remaining -= span
            day += timedelta(days=1)
        raise ValueError(f"calendar {self.name!r} has no opening hours within {MAX_DAYS} days of {start}")

    def describe_hours(self) -> str:
        if self.always_open:
            return "24x7"
        parts = []
        for name, spans in zip(WEEKDAYS, self.weekly):
            if spans:
                parts.append(f"{name} " + ",".join(f"{a:%H:%M}-{b:%H:%M}" for a, b in spans))
        return "; ".join(parts)


@lru_cache(maxsize=65536)
def _day_intervals(calendar: Calendar, day: date) -> tuple[tuple[datetime, datetime], ...]:
    """Memoized: sweeps and explanations ask for the same days over and over; calendars are frozen."""
    if not calendar.is_open_on(day):
        return ()
    spans = []
    for opens, closes in calendar.weekly[day.weekday()]:
        start = datetime.combine(day, opens, tzinfo=calendar.tz).astimezone(timezone.utc)
        end_day = day + timedelta(days=1) if closes == time(0, 0) else day
        end = datetime.combine(end_day, closes, tzinfo=calendar.tz).astimezone(timezone.utc)
        if end > start:
            spans.append((start, end))
    return tuple(spans)


def always_open(tz: ZoneInfo) -> Calendar:
    """The 24×7 calendar: every second counts."""
    return Calendar("24x7", tz, tuple(((time(0), time(0)),) for _ in WEEKDAYS), frozenset(), always_open=True)


def office_hours(tz: ZoneInfo, name: str = "business") -> Calendar:
    """The default: Monday to Friday, 09:00 to 17:00 local time, no holidays."""
    workday = ((time(9), time(17)),)
    return Calendar(name, tz, (workday,) * 5 + ((), ()))
