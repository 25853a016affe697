"""The daily digest and weekly summary: figures that agree with ``metrics``, made once, rendered strictly.

A fortnight of history is made through the service functions with the fixed
clock (January 2026, UTC); the digest's figures are then compared with the
metrics report for the same periods, day by day for the trend.
"""

from __future__ import annotations

import json
import struct
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from core import services
from core.clock import FixedClock
from core.digest import digest_figures
from core.errors import InvalidInput
from core.metrics import compute_metrics, period_from_dates
from core.models import Event, OutboxMessage
from core.services.digests import find_digest, resend_digest
from core.settings import Settings
from core.store import Store
from notifications.digest_job import DueDigest, due_digests, make_digest, render_digest
from tests import factories as f

UTC = timezone.utc
BERLIN = "Europe/Berlin"


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def fortnight(store: Store, clock: FixedClock) -> list[str]:
    """Jan 1-14: each day two requests open at 09:00 and 10:00; the first of each day is claimed at 09:30,
    answered at 11:00 and resolved at 15:00; every third day's second request waits on the customer; the
    resolution of Jan 6 is reopened Jan 8 and resolved again Jan 9."""
    clock.set(at(1, 8))
    f.seed(store)
    keys = []
    for day in range(1, 15):
        clock.set(at(day, 9))
        first = f.open_request(store, subject=f"First of day {day}").key
        clock.set(at(day, 9, 30))
        services.claim(store, first, actor=f.AGENT)
        clock.set(at(day, 10))
        second = f.open_request(store, subject=f"Second of day {day}", invoice="INV-100", disputed="10.00").key
        clock.set(at(day, 11))
        services.reply(store, first, "We are on it.", actor=f.AGENT)
        if day % 3 == 0:
            services.claim(store, second, actor=f.AGENT2)
            services.wait_on_customer(store, second, actor=f.AGENT2)
        clock.set(at(day, 15))
        services.resolve(store, first, note="Fixed.", actor=f.AGENT)
        keys += [first, second]
        if day == 8:
            services.reopen(store, keys[10], actor=f.AGENT)  # Jan 6's first
        if day == 9:
            services.resolve(store, keys[10], note="Fixed again.", actor=f.AGENT)
    clock.set(at(15, 9, 5))
    return keys


def day_report(store: Store, day: date, now: datetime) -> dict:
    period = period_from_dates(day, day + timedelta(days=1), store.settings.tz, day)
    return compute_metrics(store, period, now=now).to_json()


def test_the_figures_are_the_metrics_of_the_day_and_of_the_week_before(store: Store, fortnight: list[str]) -> None:
    now = store.clock.now()
    figures = digest_figures(store, "daily", date(2026, 1, 14), now).to_json()

    assert figures["current"] == day_report(store, date(2026, 1, 14), now)
    week = period_from_dates(date(2026, 1, 7), date(2026, 1, 14), store.settings.tz, date(2026, 1, 14))
    assert figures["previous"] == compute_metrics(store, week, now=now).to_json()
    assert figures["current"]["opened"] == 2 and figures["current"]["resolution"]["count"] == 1


def test_the_trend_matches_the_metrics_of_each_day(store: Store, fortnight: list[str]) -> None:
    now = store.clock.now()
    trend = digest_figures(store, "daily", date(2026, 1, 14), now).to_json()["trend"]

    assert [d["day"] for d in trend] == [f"2026-01-{n:02d}" for n in range(1, 15)]
    for point in trend:
        report = day_report(store, date.fromisoformat(point["day"]), now)
        assert (point["opened"], point["resolved"], point["backlog"]) == (
            report["opened"], report["resolution"]["count"], report["backlog"]["total"]), point["day"]
    assert trend[-1]["backlog"] == 14  # every second request is still open (waiting ones included)


def test_days_are_local_days_of_the_configured_time_zone(database, clock: FixedClock, fortnight: list[str],
                                                         store: Store) -> None:
    berlin = Store(store.engine, clock, Settings(database_url=database.url, timezone=BERLIN))
    figures = digest_figures(berlin, "daily", date(2026, 1, 14)).to_json()
    assert figures["current"]["period"] == {"since": "2026-01-13T23:00:00Z", "until": "2026-01-14T23:00:00Z",
                                            "timezone": BERLIN}
    assert figures["current"] == day_report(berlin, date(2026, 1, 14), clock.now())


def test_mail_and_categories(store: Store, fortnight: list[str]) -> None:
    figures = digest_figures(store, "daily", date(2026, 1, 14)).to_json()
    assert figures["top_categories"] == [{"category": "billing_dispute", "opened": 1},
                                         {"category": "general", "opened": 1}]
    assert figures["mail"] == {"filed": 0, "quarantined_now": 0, "matched": {
        "reply_token": 0, "header": 0, "subject_tag": 0, "new": 0, "quarantined": 0, "duplicate": 0}}


def test_a_weekly_summary_covers_monday_to_sunday(store: Store, fortnight: list[str]) -> None:
    now = store.clock.now()
    figures = digest_figures(store, "weekly", date(2026, 1, 5), now).to_json()  # a Monday
    assert figures["period_label"] == "2026-W02"
    week = period_from_dates(date(2026, 1, 5), date(2026, 1, 12), store.settings.tz, date(2026, 1, 15))
    assert figures["current"] == compute_metrics(store, week, now=now).to_json()
    assert figures["current"]["opened"] == 14
    with pytest.raises(InvalidInput, match="Monday"):
        digest_figures(store, "weekly", date(2026, 1, 6), now)


def test_a_period_that_has_not_ended_is_refused(store: Store, fortnight: list[str]) -> None:
    with pytest.raises(InvalidInput, match="not ended"):
        digest_figures(store, "daily", date(2026, 1, 15))


@pytest.mark.parametrize(("now", "daily", "weekly"), [
    (datetime(2026, 1, 15, 8, 59, tzinfo=UTC), date(2026, 1, 13), date(2026, 1, 5)),  # Thu before 09:00
    (datetime(2026, 1, 15, 9, 0, tzinfo=UTC), date(2026, 1, 14), date(2026, 1, 5)),
    (datetime(2026, 1, 19, 8, 0, tzinfo=UTC), date(2026, 1, 17), date(2026, 1, 5)),  # Monday, early
    (datetime(2026, 1, 19, 9, 30, tzinfo=UTC), date(2026, 1, 18), date(2026, 1, 12)),  # Monday, after
])
def test_which_digests_are_due(now: datetime, daily: date, weekly: date) -> None:
    due = due_digests(now, Settings().tz, "09:00")
    assert due == (DueDigest("daily", daily), DueDigest("weekly", weekly))


def test_the_digest_time_is_local(store: Store) -> None:
    from zoneinfo import ZoneInfo

    # 08:30 UTC is 09:30 in Berlin: yesterday's digest is due there, not yet in UTC.
    now = datetime(2026, 1, 15, 8, 30, tzinfo=UTC)
    assert due_digests(now, ZoneInfo(BERLIN), "09:00")[0].first_day == date(2026, 1, 14)
    assert due_digests(now, ZoneInfo("UTC"), "09:00")[0].first_day == date(2026, 1, 13)


def test_a_digest_is_made_once_and_sent_through_the_outbox(database, clock: FixedClock, fortnight: list[str],
                                                            store: Store) -> None:
    slack = Store(store.engine, clock, Settings(database_url=database.url, slack_bot_token="xoxb-test",
                                                digest_channel="CDIGEST", digest_emails=("boss@acme.test",)))
    due = DueDigest("daily", date(2026, 1, 14))
    made = make_digest(slack, due)
    assert made is not None and made.period == "2026-01-14"
    assert make_digest(slack, due) is None  # recorded already: nothing made, nothing sent

    with slack.read() as session:
        rows = session.execute(select(OutboxMessage.channel, OutboxMessage.topic, OutboxMessage.payload)
                               .where(OutboxMessage.topic == "digest")).all()
        events = session.execute(select(func.count()).select_from(Event).where(Event.kind == "digest.made")).scalar()
    assert sorted((c, json.loads(p)) for c, _t, p in rows) == [
        ("email", {"digest_id": made.id, "to": "boss@acme.test"}), ("slack", {"digest_id": made.id})]
    assert events == 1
    assert find_digest(slack, "daily", "2026-01-14") == made


def test_resending_queues_the_same_digest_again(database, clock: FixedClock, fortnight: list[str],
                                                store: Store) -> None:
    slack = Store(store.engine, clock, Settings(database_url=database.url, slack_bot_token="xoxb-test",
                                                digest_channel="CDIGEST"))
    made = make_digest(slack, DueDigest("daily", date(2026, 1, 14)))
    assert made is not None
    again = resend_digest(slack, made.id, emails=("ops@acme.test",), actor="system:test")
    assert again.figures == made.figures and again.slack_text == made.slack_text
    with slack.read() as session:
        topics = session.execute(select(OutboxMessage.channel).where(OutboxMessage.topic == "digest")).scalars()
        assert sorted(topics) == ["email", "slack", "slack"]


def test_without_anywhere_to_send_a_resend_is_refused_and_changes_nothing(store: Store,
                                                                         fortnight: list[str]) -> None:
    made = make_digest(store, DueDigest("daily", date(2026, 1, 14)))
    assert made is not None
    with pytest.raises(InvalidInput, match="nowhere to send"):
        resend_digest(store, made.id, emails=(), actor="system:test")
    with pytest.raises(InvalidInput):
        resend_digest(store, made.id, emails=("not an address",), actor="system:test")
    with store.read() as session:
        assert session.execute(select(func.count()).select_from(Event).where(Event.kind == "digest.resent")) \
            .scalar() == 0


def test_the_rendering_shows_the_figures_and_a_valid_chart(store: Store, fortnight: list[str]) -> None:
    figures = digest_figures(store, "daily", date(2026, 1, 14))
    rendered = render_digest(figures, store.settings.tz)
    text = rendered.slack_text
    assert text.startswith("*Support digest for Wednesday Jan 14 2026*")
    assert "• New: *2*" in text and "• Resolved: *1*" in text
    assert "Breaches open now" in text and "Disputed, still open: 140.00 EUR on 14 requests" in text
    assert "{{" not in text and "None" not in text
    assert rendered.email_subject == "Support digest for Wednesday Jan 14 2026"
    assert rendered.email_text.startswith(text) and "--date 2026-01-14 --send" in rendered.email_text
    png = rendered.chart_png
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (900, 400)


def test_an_empty_store_renders_too(store: Store, clock: FixedClock) -> None:
    clock.set(at(15, 10))
    rendered = render_digest(digest_figures(store, "weekly", date(2026, 1, 5)), store.settings.tz)
    assert "• New: *0*" in rendered.slack_text and "no new requests" in rendered.slack_text
    assert "n/a" in rendered.slack_text

