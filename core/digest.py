"""The figures of the daily digest and the weekly summary. Reads only.

A digest is the metrics report of DESIGN §5 for its period (yesterday, or
last week) next to the same report for the period before it (the 7 days
before yesterday; the week before last), plus what a manager reads at the
start of the day besides: the top categories of new requests, how inbound
mail was filed (matched by reply address, by header, by subject tag, opened
as new, quarantined) and a 14-day trend of new, resolved and backlog.

Every number comes from :mod:`core.metrics` or is counted here from the same
rows by the same definitions, so the digest and ``supportdesk metrics
--json`` for the same period agree to the digit (a test holds them to it).

Cost: two metrics reports and two grouped queries, each reaching its rows
through an index bounded by the period: the trend reads the status-changing
events of its 14 days once, bucketed by day in SQL, and walks the backlog
back from the report's own end-of-period backlog, instead of replaying the
events for each of the 14 days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core import metrics
from core.errors import InvalidInput
from core.metrics import OPEN_STATES, MetricsReport, Period, compute_metrics
from core.models import Event, ReceivedMail, Request
from core.store import Store

Kind = Literal["daily", "weekly"]
TREND_DAYS = 14
TOP_CATEGORIES = 5
# How filed mail was matched, in the order the digest lists them.
MATCHES = ("reply_token", "header", "subject_tag", "new", "quarantined", "duplicate")


@dataclass(frozen=True)
class TrendDay:
    day: date
    opened: int
    resolved: int
    backlog: int  # open at the day's end

    def to_json(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "opened": self.opened, "resolved": self.resolved, "backlog": self.backlog}


@dataclass(frozen=True)
class MailFigures:
    """Inbound mail filed in the period, by how it was matched; and what waits in quarantine now."""

    matched: tuple[tuple[str, int], ...]
    quarantined_now: int

    @property
    def filed(self) -> int:
        return sum(n for _, n in self.matched)

    def to_json(self) -> dict[str, Any]:
        return {"filed": self.filed, "matched": dict(self.matched), "quarantined_now": self.quarantined_now}


@dataclass(frozen=True)
class DigestFigures:
    kind: Kind
    label: str  # "2026-12-05" or "2026-W49"
    current: MetricsReport
    previous: MetricsReport
    top_categories: tuple[tuple[str, int], ...]
    mail: MailFigures
    trend: tuple[TrendDay, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "period_label": self.label,
            "current": self.current.to_json(),
            "previous": self.previous.to_json(),
            "top_categories": [{"category": c, "opened": n} for c, n in self.top_categories],
            "mail": self.mail.to_json(),
            "trend": [d.to_json() for d in self.trend],
        }


# --- which period -------------------------------------------------------------------------


def daily_period(day: date, tz: ZoneInfo) -> Period:
    return Period(_midnight(day, tz), _midnight(day + timedelta(days=1), tz))


def weekly_period(monday: date, tz: ZoneInfo) -> Period:
    return Period(_midnight(monday, tz), _midnight(monday + timedelta(days=7), tz))


def week_label(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def monday_of(day: date) -> date:
    return day - timedelta(days=day.weekday())


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInput(f"{text!r} is not a day; write it as YYYY-MM-DD, e.g. 2026-12-05") from exc


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(timezone.utc)


# --- the figures --------------------------------------------------------------------------


def digest_figures(store: Store, kind: Kind, first_day: date, now: datetime | None = None) -> DigestFigures:
    """The figures of the ``kind`` digest whose period starts on ``first_day`` (a Monday for weekly)."""
    tz = store.settings.tz
    moment = (now or store.clock.now()).astimezone(timezone.utc)
    if kind == "daily":
        period, label = daily_period(first_day, tz), first_day.isoformat()
        before = Period(_midnight(first_day - timedelta(days=7), tz), period.since)
        last_day = first_day
    elif kind == "weekly":
        if first_day.weekday() != 0:
            raise InvalidInput(f"a weekly summary starts on a Monday; {first_day} is a {first_day:%A}")
        period, label = weekly_period(first_day, tz), week_label(first_day)
        before = weekly_period(first_day - timedelta(days=7), tz)
        last_day = first_day + timedelta(days=6)
    else:
        raise InvalidInput(f"there is no {kind!r} digest; there are daily and weekly ones")
    if period.until > moment:
        raise InvalidInput(f"the period {label} has not ended yet; a digest describes whole days that are over")
    current = compute_metrics(store, period, now=moment)
    previous = compute_metrics(store, before, now=moment, figures_of_now=current.overall)
    with store.read() as session:
        top = _top_categories(session, period)
        mail = _mail(session, period)
        trend = _trend(session, last_day, tz, current.overall.backlog.total)
    return DigestFigures(kind, label, current, previous, top, mail, trend)


def _top_categories(session: Session, period: Period) -> tuple[tuple[str, int], ...]:
    """Categories of the requests opened in the period, most first (as they are categorised now)."""
    rows = session.execute(
        select(Request.category, func.count().label("n"))
        .select_from(sa.join(Event, Request, Request.id == Event.request_id))
        .where(Event.kind == "request.opened", Event.created_at >= period.since, Event.created_at < period.until)
        .group_by(Request.category)
    ).all()
    ranked = sorted(((str(c), int(n)) for c, n in rows), key=lambda r: (-r[1], r[0]))
    return tuple(ranked[:TOP_CATEGORIES])


def _mail(session: Session, period: Period) -> MailFigures:
    """Mail filed in the period (by ``processed_at``): opened → "new", joined → how it was matched, quarantined."""
    how = case(
        (ReceivedMail.outcome == "opened", "new"),
        (ReceivedMail.outcome == "joined", func.coalesce(ReceivedMail.matched_by, "header")),
        else_=ReceivedMail.outcome,
    )
    counted = dict(
        (str(h), int(n)) for h, n in session.execute(
            select(how.label("how"), func.count())
            .where(ReceivedMail.processed_at >= period.since, ReceivedMail.processed_at < period.until,
                   ReceivedMail.outcome.is_not(None))
            .group_by(how)
        ) if h is not None
    )
    held = session.execute(
        select(func.count()).select_from(ReceivedMail).where(ReceivedMail.status == "quarantined")
    ).scalar_one()
    ordered = [(m, counted.pop(m, 0)) for m in MATCHES] + sorted(counted.items())
    return MailFigures(tuple(ordered), int(held))


def _trend(session: Session, last_day: date, tz: ZoneInfo, backlog_at_end: int) -> tuple[TrendDay, ...]:
    """New, resolved and end-of-day backlog for the 14 days up to ``last_day``.

    One pass over the events of the 14 days, bucketed by local day in SQL:
    opened (``request.opened``), resolved (distinct requests with a
    ``request.resolved``: the metrics' resolution count for that day) and
    the day's net change of the backlog, +1 for every status change into an
    open state and -1 for every one out of it (each transition records both
    ends). The backlog is then walked back from the end of ``last_day``,
    which the metrics report computed: backlog(d - 1) = backlog(d) - net(d).
    """
    days = [last_day - timedelta(days=n) for n in range(TREND_DAYS - 1, -1, -1)]
    bounds = [_midnight(d, tz) for d in days] + [_midnight(last_day + timedelta(days=1), tz)]
    bucket = case(*((Event.created_at < bounds[i + 1], i) for i in range(TREND_DAYS)), else_=None)
    to_state = metrics.status_field(session, Event.data, "to")
    from_state = metrics.status_field(session, Event.data, "from")
    into_open = case((sa.and_(to_state.is_not(None), to_state.in_(OPEN_STATES)), 1), else_=0)
    out_of_open = case((sa.and_(to_state.is_not(None), from_state.in_(OPEN_STATES)), 1), else_=0)
    rows = session.execute(
        select(
            bucket.label("b"),
            func.sum(case((Event.kind == "request.opened", 1), else_=0)).label("opened"),
            func.count(sa.distinct(case((Event.kind == "request.resolved", Event.request_id), else_=None)))
            .label("resolved"),
            func.sum(into_open - out_of_open).label("net"),
        )
        .where(Event.created_at >= bounds[0], Event.created_at < bounds[-1], Event.request_id.is_not(None))
        .group_by(bucket)
    ).all()
    per_bucket = {int(r.b): (int(r.opened or 0), int(r.resolved or 0), int(r.net or 0)) for r in rows if r.b is not None}
    trend: list[TrendDay] = []
    backlog = backlog_at_end
    for i in range(TREND_DAYS - 1, -1, -1):
        opened_n, resolved_n, net = per_bucket.get(i, (0, 0, 0))
        trend.append(TrendDay(days[i], opened_n, resolved_n, backlog))
        backlog -= net
    return tuple(reversed(trend))

