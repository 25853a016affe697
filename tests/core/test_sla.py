"""SLA maths, table-driven and pure: calendars, pauses, policies, states."""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo

import pytest

from core.calendar import Calendar, always_open, office_hours
from core.errors import InvalidInput
from core.sla import Timeline, clock, clocks, load_sla_config, next_check, parse_duration, running_intervals

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
H = 3600


def at(text: str, tz: ZoneInfo | timezone = UTC) -> datetime:
    """'2026-01-05 09:00' in a zone, as aware UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=tz).astimezone(UTC)


def berlin_office(holidays: tuple[date, ...] = ()) -> Calendar:
    base = office_hours(BERLIN)
    return Calendar("business", BERLIN, base.weekly, frozenset(holidays))


# 2026-01-05 is a Monday; DST in Europe starts 2026-03-29 and ends 2026-10-25;
# in the US it starts 2026-03-08.
ADD_CASES = [
    ("within a day", berlin_office(), at("2026-01-05 10:00", BERLIN), 2 * H, at("2026-01-05 12:00", BERLIN)),
    ("ends exactly at closing", berlin_office(), at("2026-01-05 09:00", BERLIN), 8 * H, at("2026-01-05 17:00", BERLIN)),
    ("rolls to next morning", berlin_office(), at("2026-01-05 16:00", BERLIN), 2 * H, at("2026-01-06 10:00", BERLIN)),
    ("starts before opening", berlin_office(), at("2026-01-05 06:00", BERLIN), 1 * H, at("2026-01-05 10:00", BERLIN)),
    ("starts after closing", berlin_office(), at("2026-01-05 20:00", BERLIN), 1 * H, at("2026-01-06 10:00", BERLIN)),
    ("friday over the weekend", berlin_office(), at("2026-01-09 16:00", BERLIN), 2 * H, at("2026-01-12 10:00", BERLIN)),
    ("saturday start", berlin_office(), at("2026-01-10 11:00", BERLIN), 1 * H, at("2026-01-12 10:00", BERLIN)),
    ("holiday skipped", berlin_office((date(2026, 1, 6),)), at("2026-01-05 16:00", BERLIN), 2 * H,
     at("2026-01-07 10:00", BERLIN)),
    ("christmas week", berlin_office((date(2026, 12, 24), date(2026, 12, 25))), at("2026-12-23 16:00", BERLIN),
     2 * H, at("2026-12-28 10:00", BERLIN)),
    ("across spring DST (wall hours kept)", berlin_office(), at("2026-03-27 16:00", BERLIN), 2 * H,
     at("2026-03-30 10:00", BERLIN)),
    ("across autumn DST", berlin_office(), at("2026-10-23 16:00", BERLIN), 2 * H, at("2026-10-26 10:00", BERLIN)),
    ("three business days", berlin_office(), at("2026-01-05 09:00", BERLIN), 24 * H, at("2026-01-07 17:00", BERLIN)),
    ("US zone across its DST", office_hours(NEW_YORK), at("2026-03-06 16:00", NEW_YORK), 2 * H,
     at("2026-03-09 10:00", NEW_YORK)),
    ("24x7 counts nights", always_open(BERLIN), at("2026-01-09 23:00", BERLIN), 4 * H, at("2026-01-10 03:00", BERLIN)),
    ("24x7 across DST is elapsed time", always_open(BERLIN), at("2026-03-29 01:00", BERLIN), 2 * H,
     at("2026-03-29 04:00", BERLIN)),
]


@pytest.mark.parametrize(("calendar", "start", "seconds", "expected"), [c[1:] for c in ADD_CASES],
                         ids=[c[0] for c in ADD_CASES])
def test_add_business_time(calendar: Calendar, start: datetime, seconds: int, expected: datetime) -> None:
    assert calendar.add(start, seconds) == expected
    assert calendar.seconds_between(start, expected) == seconds


def test_utc_offsets_move_with_dst_but_opening_hours_do_not() -> None:
    cal = berlin_office()
    winter, summer = cal.day_intervals(date(2026, 3, 27)), cal.day_intervals(date(2026, 3, 30))
    assert winter == ((datetime(2026, 3, 27, 8, tzinfo=UTC), datetime(2026, 3, 27, 16, tzinfo=UTC)),)
    assert summer == ((datetime(2026, 3, 30, 7, tzinfo=UTC), datetime(2026, 3, 30, 15, tzinfo=UTC)),)


def test_split_opening_hours_and_weekend_days() -> None:
    config = load_sla_config({"calendars": {"business": {
        "timezone": "UTC", "hours": {"mon": "09:00-12:00, 13:00-17:00", "sat": ["10:00-14:00"]}}}})
    cal = config.priorities["normal"].calendar
    assert cal.add(at("2026-01-05 11:00"), 2 * H) == at("2026-01-05 14:00")  # lunch does not count
    assert cal.add(at("2026-01-05 16:00"), 2 * H) == at("2026-01-10 11:00")  # Tue-Fri closed, Saturday open


def test_running_intervals_subtract_pauses() -> None:
    spans = running_intervals(at("2026-01-05 09:00"), at("2026-01-05 17:00"),
                              [(at("2026-01-05 10:00"), at("2026-01-05 11:00")), (at("2026-01-05 16:00"), None)])
    assert spans == [(at("2026-01-05 09:00"), at("2026-01-05 10:00")),
                     (at("2026-01-05 11:00"), at("2026-01-05 16:00"))]


NORMAL = load_sla_config({}, "Europe/Berlin").priorities["normal"]  # 8h / 8h / 72h, Mon-Fri 09-17 Berlin


@pytest.mark.parametrize(
    ("name", "pauses", "met_at", "now", "state", "due", "business_hours"),
    [
        ("fresh", (), None, at("2026-01-05 10:00", BERLIN), "on_track", at("2026-01-05 17:00", BERLIN), 1),
        ("warning at 75 %", (), None, at("2026-01-05 15:30", BERLIN), "warning", at("2026-01-05 17:00", BERLIN), 6.5),
        ("breached", (), None, at("2026-01-06 10:00", BERLIN), "breached", at("2026-01-05 17:00", BERLIN), 9),
        ("met in time", (), at("2026-01-05 12:00", BERLIN), at("2026-01-07 12:00", BERLIN), "met",
         at("2026-01-05 17:00", BERLIN), 3),
        ("met late is breached", (), at("2026-01-06 12:00", BERLIN), at("2026-01-07 12:00", BERLIN), "breached",
         at("2026-01-05 17:00", BERLIN), 11),
        ("paused now: no due time", ((at("2026-01-05 11:00", BERLIN), None),), None,
         at("2026-01-06 12:00", BERLIN), "paused", None, 2),
        ("a pause pushes the due time", ((at("2026-01-05 11:00", BERLIN), at("2026-01-05 14:00", BERLIN)),), None,
         at("2026-01-05 15:00", BERLIN), "on_track", at("2026-01-06 12:00", BERLIN), 3),
        # Mon 09-16 counts 7h, the pause covers the night and Tue 09-10, Tue 10-10:30 counts 0.5h.
        ("a pause over the night", ((at("2026-01-05 16:00", BERLIN), at("2026-01-06 10:00", BERLIN)),), None,
         at("2026-01-06 10:30", BERLIN), "warning", at("2026-01-06 11:00", BERLIN), 7.5),
    ],
)
def test_first_response_clock(name: str, pauses: tuple, met_at: datetime | None, now: datetime, state: str,
                              due: datetime | None, business_hours: float) -> None:
    c = clock("first_response", NORMAL, at("2026-01-05 09:00", BERLIN), met_at, pauses, now, 0.75)
    assert (c.state, c.due_at) == (state, due)
    assert c.elapsed_business_seconds == business_hours * H


def test_time_already_counted_stays_counted_when_the_policy_changes() -> None:
    """Six business hours used; moving from normal (8h) to urgent (1h) breaches at once, to low (24h) frees time."""
    config = load_sla_config({}, "Europe/Berlin")
    start, now = at("2026-01-05 09:00", BERLIN), at("2026-01-05 15:00", BERLIN)
    pause = ((at("2026-01-05 12:00", BERLIN), at("2026-01-05 13:00", BERLIN)),)
    normal = clock("first_response", config.priorities["normal"], start, None, pause, now, 0.75)
    urgent = clock("first_response", config.priorities["urgent"], start, None, pause, now, 0.75)
    low = clock("first_response", config.priorities["low"], start, None, pause, now, 0.75)
    assert normal.elapsed_business_seconds == urgent.elapsed_business_seconds == low.elapsed_business_seconds == 5 * H
    assert urgent.state == "breached" and urgent.due_at == at("2026-01-05 10:00", BERLIN)
    assert normal.due_at == at("2026-01-06 10:00", BERLIN)  # 3h left: Mon 15-17, Tue 09-10
    assert low.due_at == at("2026-01-08 10:00", BERLIN)  # 19h left: Mon 2h, Tue 8h, Wed 8h, Thu 1h


def test_urgent_24x7_policy_from_config() -> None:
    config = load_sla_config({"priorities": {"urgent": {"calendar": "24x7"}}}, "Europe/Berlin")
    urgent = config.priorities["urgent"]
    saturday_night = at("2026-01-10 23:30", BERLIN)
    c = clock("first_response", urgent, saturday_night, None, (), saturday_night, 0.75)
    assert c.due_at == at("2026-01-11 00:30", BERLIN) and c.warn_at == at("2026-01-11 00:15", BERLIN)


def test_next_reply_and_resolution_clocks() -> None:
    start = at("2026-01-05 09:00", BERLIN)
    timeline = Timeline(created_at=start, pauses=(), first_response_at=at("2026-01-05 10:00", BERLIN),
                        resolved_at=None, next_reply_started_at=at("2026-01-05 11:00", BERLIN))
    result = clocks(timeline, NORMAL, at("2026-01-05 12:00", BERLIN), 0.75)
    assert result["first_response"].state == "met"
    assert result["next_reply"].due_at == at("2026-01-06 11:00", BERLIN)
    assert result["resolution"].due_at == at("2026-01-15 17:00", BERLIN)  # 72h = 9 business days
    assert next_check(result, set()) == result["next_reply"].warn_at
    assert next_check(result, {("next_reply", "warning", timeline.next_reply_started_at)}) == \
        result["next_reply"].due_at


def test_no_next_check_for_a_paused_or_finished_request() -> None:
    start = at("2026-01-05 09:00", BERLIN)
    paused = Timeline(start, ((at("2026-01-05 10:00", BERLIN), None),), None, None, None)
    assert next_check(clocks(paused, NORMAL, at("2026-01-05 11:00", BERLIN), 0.75), set()) is None
    done = Timeline(start, ((at("2026-01-05 10:00", BERLIN), None),), at("2026-01-05 09:30", BERLIN),
                    at("2026-01-05 10:00", BERLIN), None)
    assert next_check(clocks(done, NORMAL, at("2026-01-06 11:00", BERLIN), 0.75), set()) is None


def test_category_override_falls_back_to_its_priority() -> None:
    config = load_sla_config({"categories": {"billing_dispute": {"normal": {"resolution": "48h"}}}}, "UTC")
    policy = config.policy_for("billing_dispute", "normal")
    assert (policy.first_response, policy.resolution) == (8 * H, 48 * H)
    assert policy.why == "category billing_dispute overrides priority normal"
    assert config.policy_for("technical", "normal").why == "the default policy for priority normal"


@pytest.mark.parametrize(("text", "seconds"), [("4h", 4 * H), ("90m", 5400), ("1d 2h", 26 * H), ("1h30m", 5400),
                                               (2, 2 * H), ("45s", 45)])
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"priorities": {"urgent": {"first_response": "soon"}}}, "'soon' is not a duration"),
        ({"priorities": {"urgent": {"first_response": "0h"}}}, "longer than zero"),
        ({"priorities": {"critical": {}}}, "unknown priority critical"),
        ({"priorities": {"urgent": {"calendar": "night"}}}, "calendar 'night' is not defined"),
        ({"priorities": {"urgent": {"respond": "1h"}}}, "unknown key(s) respond"),
        ({"calendars": {"business": {"timezone": "Mars/Base"}}}, "not a known time zone"),
        ({"calendars": {"business": {"hours": {"mon": "17:00-09:00"}}}}, "closes before it opens"),
        ({"calendars": {"business": {"hours": {"funday": "09:00-17:00"}}}}, "unknown day(s) funday"),
        ({"calendars": {"business": {"hours": {}}}}, "no opening hours at all"),
        ({"calendars": {"business": {"holidays": ["Christmas"]}}}, "'Christmas' is not a date"),
        ({"calendars": {"24x7": {}}}, "built in"),
        ({"warning_ratio": 1.5}, "between 0 and 1"),
        ({"targets": {}}, "unknown key(s) targets"),
    ],
)
def test_bad_configuration_is_refused_with_its_place(document: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_sla_config(document, "UTC")


def test_defaults_match_the_issue() -> None:
    config = load_sla_config({}, "UTC")
    hours = {p: (c.first_response // H, c.next_reply // H, c.resolution // H) for p, c in config.priorities.items()}
    assert hours == {"urgent": (1, 1, 4), "high": (4, 4, 24), "normal": (8, 8, 72), "low": (24, 24, 120)}
    assert config.warning_ratio == 0.75
    assert config.priorities["normal"].calendar.weekly[0] == ((time(9), time(17)),)
    assert config.priorities["normal"].calendar.weekly[5] == ()


def test_overlapping_opening_hours_are_refused() -> None:
    with pytest.raises(InvalidInput, match="overlap"):
        load_sla_config({"calendars": {"business": {"hours": {"mon": "09:00-17:00, 12:00-18:00"}}}}, "UTC")
    with pytest.raises(InvalidInput, match="overlap"):
        load_sla_config({"calendars": {"business": {"hours": {"fri": "20:00-24:00, 21:00-22:00"}}}}, "UTC")


def test_a_met_clock_keeps_the_thresholds_it_passed_and_none_after() -> None:
    from core.sla import thresholds

    start = at("2026-01-05 09:00", BERLIN)
    late = clock("first_response", NORMAL, start, at("2026-01-06 12:00", BERLIN), (), at("2026-01-07 09:00", BERLIN),
                 0.75)
    assert [name for name, _ in thresholds(late)] == ["warning", "breach"]
    early = clock("first_response", NORMAL, start, at("2026-01-05 10:00", BERLIN), (), at("2026-01-07 09:00", BERLIN),
                  0.75)
    assert thresholds(early) == []
