"""SLA policies and clocks. Pure: data and ``now`` in, due times and states out.

Three targets per request:

- **first response**: from creation to the first customer-visible reply;
- **next reply**: from the oldest customer message not yet answered (after the
  first response) to the next reply;
- **resolution**: from creation to resolution.

Each counts business seconds of its policy's calendar while its clock runs.
Every clock is paused while the request waits on the customer and while it is
resolved or closed (a reopened request resumes them). A target's state is ``met``, ``breached`` (past due, or
met late), ``paused``, ``warning`` (the warning share of the target used) or
``on_track``. Time already counted stays counted when the policy changes: a
new policy changes the target, never the elapsed time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.calendar import WEEKDAYS, Calendar, always_open, office_hours
from core.errors import InvalidInput

TARGETS = ("first_response", "next_reply", "resolution")
PRIORITIES = ("urgent", "high", "normal", "low")
DEFAULT_TARGETS_HOURS: dict[str, tuple[int, int, int]] = {
    "urgent": (1, 1, 4),
    "high": (4, 4, 24),
    "normal": (8, 8, 72),
    "low": (24, 24, 120),
}
DEFAULT_WARNING_RATIO = 0.75

Interval = tuple[datetime, datetime | None]


@dataclass(frozen=True)
class Policy:
    """Targets in business seconds, counted in one calendar."""

    name: str
    first_response: int
    next_reply: int
    resolution: int
    calendar: Calendar
    why: str

    def target(self, name: str) -> int:
        return int(getattr(self, name))


@dataclass(frozen=True)
class SlaConfig:
    priorities: Mapping[str, Policy]
    # (category, priority) -> policy that overrides the priority's.
    overrides: Mapping[tuple[str, str], Policy] = field(default_factory=dict)
    warning_ratio: float = DEFAULT_WARNING_RATIO

    def policy_for(self, category: str, priority: str) -> Policy:
        return self.overrides.get((category, priority)) or self.priorities[priority]


# --- configuration -----------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_SPAN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_duration(text: Any, where: str) -> int:
    """"4h", "90m", "1d 2h", "1h30m" -> seconds; a bare number is hours."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text) * 3600
    else:
        raw = str(text).strip()
        parts = _DURATION.findall(raw)
        if not parts or _DURATION.sub("", raw).strip():
            raise InvalidInput(f"{where}: {text!r} is not a duration like 4h, 90m or 1d 2h")
        unit = {"d": 86400, "h": 3600, "m": 60, "s": 1}
        seconds = sum(float(n) * unit[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise InvalidInput(f"{where}: a target must be longer than zero")
    return int(seconds)


def _parse_hours(value: Any, where: str) -> tuple[tuple[time, time], ...]:
    items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
    spans = []
    for item in items:
        match = _SPAN.match(str(item))
        if not match:
            raise InvalidInput(f"{where}: {item!r} is not opening hours like 09:00-17:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise InvalidInput(f"{where}: {item!r} is not a valid time range")
        opens, closes = time(h1, m1), time(0) if h2 == 24 else time(h2, m2)
        if closes != time(0) and closes <= opens:
            raise InvalidInput(f"{where}: {item!r} closes before it opens")
        spans.append((opens, closes))
    spans.sort()
    for (_, earlier_close), (later_open, _) in zip(spans, spans[1:]):
        if earlier_close == time(0) or later_open < earlier_close:
            raise InvalidInput(f"{where}: opening hours {value!r} overlap")
    return tuple(spans)


def parse_calendar(name: str, table: Mapping[str, Any], default_tz: str) -> Calendar:
    where = f"[sla.calendars.{name}]"
    tz_name = str(table.get("timezone", default_tz))
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"{where}: timezone {tz_name!r} is not a known time zone") from None
    base = office_hours(tz, name)
    hours = table.get("hours")
    if hours is None:
        weekly = base.weekly
    elif not isinstance(hours, Mapping):
        raise InvalidInput(f"{where}: hours must be a table like {{ mon = \"09:00-17:00\" }}")
    else:
        unknown = set(hours) - set(WEEKDAYS)
        if unknown:
            raise InvalidInput(f"{where}: unknown day(s) {', '.join(sorted(unknown))}; use {', '.join(WEEKDAYS)}")
        weekly = tuple(_parse_hours(hours.get(day, []), f"{where} {day}") for day in WEEKDAYS)
    holidays = set()
    for item in table.get("holidays", []):
        try:
            holidays.add(item if isinstance(item, date) else date.fromisoformat(str(item)))
        except ValueError:
            raise InvalidInput(f"{where}: holiday {item!r} is not a date like 2026-12-25") from None
    if not any(weekly):
        raise InvalidInput(f"{where}: the calendar has no opening hours at all")
    return Calendar(name, tz, weekly, frozenset(holidays))


def load_sla_config(document: Mapping[str, Any], default_tz: str = "UTC") -> SlaConfig:
    """Build the SLA configuration from the ``[sla]`` table of the TOML file (may be empty).

    Layout::

        [sla]
        warning_ratio = 0.75
        [sla.calendars.business]          # the default calendar
        timezone = "Europe/Berlin"
        hours = { mon = "09:00-17:00", tue = "09:00-17:00" }
        holidays = ["2026-12-25"]
        [sla.priorities.urgent]
        first_response = "1h"
        next_reply = "1h"
        resolution = "4h"
        calendar = "24x7"                 # or "business", or a calendar of yours
        [sla.categories.billing_dispute.normal]
        resolution = "48h"                # unspecified targets come from the priority
    """
    sla = document or {}
    known = {"warning_ratio", "calendars", "priorities", "categories"}
    unknown = set(sla) - known
    if unknown:
        raise InvalidInput(f"[sla]: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    ratio = float(sla.get("warning_ratio", DEFAULT_WARNING_RATIO))
    if not 0 < ratio < 1:
        raise InvalidInput("[sla] warning_ratio must be between 0 and 1, e.g. 0.75")
    tz = ZoneInfo(default_tz)
    calendars: dict[str, Calendar] = {"business": office_hours(tz), "24x7": always_open(tz)}
    for name, table in (sla.get("calendars") or {}).items():
        if name == "24x7":
            raise InvalidInput("[sla.calendars.24x7] is built in and cannot be redefined")
        calendars[name] = parse_calendar(name, table, default_tz)

    def build(name: str, table: Mapping[str, Any], base: Policy | None, why: str, where: str) -> Policy:
        allowed = set(TARGETS) | {"calendar"}
        extra = set(table) - allowed
        if extra:
            raise InvalidInput(f"{where}: unknown key(s) {', '.join(sorted(extra))}; known: {', '.join(sorted(allowed))}")
        calendar_name = str(table.get("calendar", base.calendar.name if base else "business"))
        if calendar_name not in calendars:
            raise InvalidInput(f"{where}: calendar {calendar_name!r} is not defined under [sla.calendars]")
        targets = {
            t: parse_duration(table[t], f"{where} {t}") if t in table else base.target(t)  # type: ignore[union-attr]
            for t in TARGETS
        }
        return Policy(name, targets["first_response"], targets["next_reply"], targets["resolution"],
                      calendars[calendar_name], why)

    priorities: dict[str, Policy] = {}
    configured = sla.get("priorities") or {}
    unknown = set(configured) - set(PRIORITIES)
    if unknown:
        raise InvalidInput(f"[sla.priorities]: unknown priority {', '.join(sorted(unknown))}")
    for priority in PRIORITIES:
        fr, nr, res = DEFAULT_TARGETS_HOURS[priority]
        default = Policy(priority, fr * 3600, nr * 3600, res * 3600, calendars["business"],
                         f"the default policy for priority {priority}")
        table = configured.get(priority)
        priorities[priority] = default if table is None else build(
            priority, table, default, f"the configured policy for priority {priority}", f"[sla.priorities.{priority}]")
    overrides: dict[tuple[str, str], Policy] = {}
    for category, by_priority in (sla.get("categories") or {}).items():
        for priority, table in by_priority.items():
            where = f"[sla.categories.{category}.{priority}]"
            if priority not in PRIORITIES:
                raise InvalidInput(f"{where}: unknown priority {priority!r}")
            overrides[(category, priority)] = build(
                f"{category}/{priority}", table, priorities[priority],
                f"category {category} overrides priority {priority}", where)
    return SlaConfig(priorities, overrides, ratio)


# --- clocks ----------------------------------------------------------------------


@dataclass(frozen=True)
class TargetClock:
    """One target of one request at one moment."""

    target: str
    state: str  # on_track, warning, breached, paused, met
    started_at: datetime
    target_seconds: int
    elapsed_business_seconds: float
    elapsed_wall_seconds: float
    warn_at: datetime | None
    due_at: datetime | None
    met_at: datetime | None
    pauses: tuple[Interval, ...]


@dataclass(frozen=True)
class Timeline:
    """What the clocks need to know about a request, from its row and its events."""

    created_at: datetime
    # Waiting on the customer, resolved or closed; an open end means "still".
    pauses: tuple[Interval, ...]
    first_response_at: datetime | None
    resolved_at: datetime | None
    next_reply_started_at: datetime | None
    # The last next-reply cycle that a reply closed: (started, answered). Kept
    # so a reply sent late, before any sweep ran, still leaves its breach.
    last_reply_cycle: tuple[datetime, datetime] | None = None


def running_intervals(start: datetime, end: datetime, pauses: Iterable[Interval]) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` minus the pauses."""
    cuts = sorted((lo, hi or end) for lo, hi in pauses if (hi or end) > start and lo < end)
    spans, cursor = [], start
    for lo, hi in cuts:
        if lo > cursor:
            spans.append((cursor, min(lo, end)))
        cursor = max(cursor, hi)
        if cursor >= end:
            break
    if cursor < end:
        spans.append((cursor, end))
    return spans


def _moment_reaching(calendar: Calendar, spans: list[tuple[datetime, datetime]], seconds: float) -> datetime | None:
    """When the business seconds counted over ``spans`` reach ``seconds``, if they do."""
    total = 0.0
    for lo, hi in spans:
        part = calendar.seconds_between(lo, hi)
        if total + part >= seconds:
            return calendar.add(lo, seconds - total)
        total += part
    return None


def is_paused_at(moment: datetime, pauses: Iterable[Interval]) -> bool:
    return any(lo <= moment and (hi is None or moment < hi) for lo, hi in pauses)


def clock(
    target: str, policy: Policy, started_at: datetime, met_at: datetime | None, pauses: tuple[Interval, ...],
    now: datetime, warning_ratio: float,
) -> TargetClock:
    """The state of one target at ``now``: elapsed time, warning and due moments, state."""
    calendar, seconds = policy.calendar, policy.target(target)
    until = met_at or now
    spans = running_intervals(started_at, until, pauses)
    elapsed = sum(calendar.seconds_between(lo, hi) for lo, hi in spans)
    wall = sum((hi - lo).total_seconds() for lo, hi in spans)
    paused = met_at is None and is_paused_at(now, pauses)
    warn_seconds = seconds * warning_ratio

    def reached(share: float) -> datetime | None:
        moment = _moment_reaching(calendar, spans, share)
        if moment is not None:
            return moment
        if paused:
            return None
        return calendar.add(until, share - elapsed)

    due, warn = reached(seconds), reached(warn_seconds)
    if met_at is not None:
        state = "met" if elapsed <= seconds else "breached"
    elif elapsed >= seconds:
        state = "breached"
    elif paused:
        state = "paused"
    elif elapsed >= warn_seconds:
        state = "warning"
    else:
        state = "on_track"
    return TargetClock(target, state, started_at, seconds, elapsed, wall, warn, due, met_at, pauses)


def clocks(timeline: Timeline, policy: Policy, now: datetime, warning_ratio: float) -> dict[str, TargetClock]:
    """Every target that applies now: first response and resolution always, next reply while one runs."""
    pauses = timeline.pauses
    result = {
        "first_response": clock("first_response", policy, timeline.created_at, timeline.first_response_at,
                                pauses, now, warning_ratio),
        "resolution": clock("resolution", policy, timeline.created_at, timeline.resolved_at,
                            pauses, now, warning_ratio),
    }
    if timeline.next_reply_started_at is not None:
        result["next_reply"] = clock("next_reply", policy, timeline.next_reply_started_at, None,
                                     pauses, now, warning_ratio)
    if timeline.last_reply_cycle is not None:
        started, answered = timeline.last_reply_cycle
        result["next_reply_answered"] = clock("next_reply", policy, started, answered, pauses, now, warning_ratio)
    return result


def thresholds(clock_: TargetClock) -> list[tuple[str, datetime]]:
    """The warning and breach moments that have happened or will, while the clock runs.

    A clock met, or paused, after a threshold passed still has that
    threshold: it happened, even if no sweep ran in between. A met clock has
    none after the moment it was met; a paused one knows only the past ones.
    """
    moments = [(name, moment) for name, moment in (("warning", clock_.warn_at), ("breach", clock_.due_at))
               if moment is not None]
    if clock_.met_at is not None:
        return [(name, moment) for name, moment in moments if moment <= clock_.met_at]
    return moments


def next_check(all_clocks: Mapping[str, TargetClock], recorded: set[tuple[str, str, datetime]]) -> datetime | None:
    """The earliest threshold of a running clock not recorded yet: when the sweep must look again."""
    pending = [
        moment
        for c in all_clocks.values()
        for name, moment in thresholds(c)
        if (c.target, name, c.started_at) not in recorded
    ]
    return min(pending, default=None)
