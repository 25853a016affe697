"""The numbers managers read (DESIGN §5): one function per metric, computed in SQL.

The command line, Slack and the digest all call these functions, usually
through :func:`compute_metrics`, so they can never disagree. This module only
reads. It owns the definitions below; nothing else may count these things a
second way.

Period
    ``[since, until)``: ``since`` included, ``until`` excluded, both aware UTC.
    :func:`period_from_dates` builds one from calendar days in the configured
    time zone (``SUPPORTDESK_TIMEZONE``); by default the 7 full days before
    today. "Now" is the store's clock unless a caller passes it.

Definitions
    opened
        requests opened in the period: each has exactly one ``request.opened``
        event, read by ``events(kind, created_at)``.
    first response time
        ``created_at → first_response_at`` (the first customer-visible reply by
        an agent; the automatic acknowledgment never sets it), over the
        requests whose first response happened in the period. Median and p90,
        wall clock. Business hours come from ``first_response_business_seconds``
        (filled by the SLA code): statistics over the requests that have it,
        with their count; a NULL is "not available", never 0, and with none
        available the figures are null.
    time to claim
        ``created_at → first_assigned_at``, over the requests first assigned
        (claimed or assigned) in the period. Median and p90.
    resolution time
        ``created_at → resolution``, over the requests resolved in the period:
        those with a ``request.resolved`` event in the period, the latest such
        event of the request within the period being its resolution. Median,
        mean, p90. Business hours from ``resolution_business_seconds`` only
        where that resolution is still the request's current one
        (``resolved_at`` equals it): the column describes the current
        resolution, so a request reopened or resolved again since has no
        business figure for this period.
    backlog
        requests neither resolved nor closed at the snapshot moment
        ``min(until, now)``, by age at that moment: under 1 day, 1 to 3 days,
        3 to 7 days, 7 days or more (lower bounds included: a request exactly
        one day old is in "1 to 3 days"). When ``until`` is at or after now,
        the current status; for a past ``until``, the status at ``until``,
        reconstructed from the events (see Cost).
    reopen rate
        of the requests resolved in the period, the share reopened at least
        once: ``reopen_count > 0``. That count is kept in the same transaction
        as the events it counts (``request.reopened``, and
        ``request.customer_replied`` from ``resolved``), so the column and the
        trail agree. It is read as of now: a resolution reopened after the
        period counts as reopened for that period too, because the
        resolution did not hold.
    accuracy rate
        of the same requests, the share without rework: never reopened
        (``reopen_count = 0``) and no rejected approval, as of now.
    dispute cycle time
        the resolution time of category ``billing_dispute``; median and p90.
    financial impact
        disputed amounts of the requests open now (not resolved or closed),
        per currency; adjustments (credit, refund, write-off) approved and
        rejected with the decision in the period, and pending now, per kind
        and currency. Integer minor units, never floats; currencies are never
        added together.
    SLA compliance
        first response: of the requests first answered in the period that
        have a ``first_response_due_at``, the share answered at or before it.
        Resolution: of the requests resolved in the period (as above) that
        have a ``resolution_due_at``, the share whose resolution (the latest
        in the period) came at or before it. A NULL due time is "no target"
        and is left out. Breaches open now, among requests neither resolved
        nor closed now: no first response and ``first_response_due_at`` past;
        ``next_reply_due_at`` past; ``resolution_due_at`` past. A count per
        target and the number of requests with at least one. (Resolved and
        closed requests are left out of "open" breaches: a duplicate merged
        without a reply is not a breach anybody can still act on.)

Splits
    ``by``: ``category``, ``priority``, ``channel`` or ``assignee`` (Slack
    user id; null for unassigned). A request counts under the value it has
    now, also for past periods and the past backlog.

Durations and rounding
    Both databases keep microseconds, so every duration is computed in SQL as
    exact integer microseconds (:func:`_epoch_us`). Percentiles use linear
    interpolation between closest ranks, the definition of PostgreSQL's
    ``percentile_cont``: for p, with n sorted values v[0..n-1], h = p(n-1),
    value = v[floor h] + (h - floor h)(v[floor h + 1] - v[floor h]). It is
    computed with ``ROW_NUMBER()`` and integer arithmetic (p in hundredths),
    so it is exact and identical on SQLite and PostgreSQL. Means are exact
    sums. Values stay exact (:class:`fractions.Fraction` seconds) until they
    are shown: JSON and text round to whole seconds, half up (0.5 s becomes
    1 s). Rates are shown to 4 decimals, half up, next to their exact
    numerator and denominator.

Cost
    Every query starts from an indexed time column bounded by the period
    (``events(kind, created_at)``, ``requests.first_response_at``,
    ``requests.first_assigned_at``, ``approvals.decided_at``) or from an
    index on status or due time (``requests(status, created_at)``,
    ``requests(status, resolution_due_at)``, ``requests.next_reply_due_at``,
    ``requests(first_response_at, first_response_due_at)`` for unanswered
    requests). The backlog at a past moment T reads the requests open now
    plus the events since T (``events.created_at``): a request changed since
    T had, at T, the "from" status of its first status-changing event after
    T. So a digest for yesterday replays one day of events; a backlog a year
    back replays a year of them, and costs accordingly.

A report reads everything in one transaction (one snapshot: SQLite's WAL
read transaction, PostgreSQL's REPEATABLE READ), so its numbers describe one
moment even while agents keep working.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from fractions import Fraction
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import and_, case, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause, Select, Subquery

from core.errors import InvalidInput
from core.lifecycle import DONE_STATES, Status
from core.models import Agent, Approval, Event, Request
from core.store import Store
from core.views import iso, money_json

SPLITS = ("category", "priority", "channel", "assignee")
DEFAULT_DAYS = 7
DISPUTE_CATEGORY = "billing_dispute"
OPEN_STATES = tuple(s.value for s in Status if s not in DONE_STATES)
US_PER_SECOND = 1_000_000
# Percentiles in hundredths, so the interpolation stays in integers.
MEDIAN, P90 = 50, 90
BUCKETS = ("age_under_1d", "age_1d_to_3d", "age_3d_to_7d", "age_over_7d")

Key = str | None
"""A group's value of the split (a category, a Slack user id, ...); None without a split or for "unassigned"."""
T = TypeVar("T")

_requests = Request.__table__
_assignee = Agent.__table__.alias("assignee")


# --- the period -----------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """``[since, until)`` in aware UTC: ``since`` included, ``until`` excluded."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("a Period needs timezone-aware datetimes")
        object.__setattr__(self, "since", self.since.astimezone(timezone.utc))
        object.__setattr__(self, "until", self.until.astimezone(timezone.utc))
        if self.since >= self.until:
            raise InvalidInput(f"the period is empty: {iso(self.since)} is not before {iso(self.until)}")

    def to_json(self) -> dict[str, Any]:
        return {"since": iso(self.since), "until": iso(self.until)}


def period_from_dates(since: date | None, until: date | None, tz: tzinfo, today: date) -> Period:
    """Whole days in ``tz``: from the start of ``since`` to the start of ``until`` (not included).

    ``until`` defaults to ``today`` and ``since`` to 7 days before ``until``,
    so the default is the last 7 full days: a period that is still running
    would give numbers that change while people read them.
    """
    end = until if until is not None else today
    start = since if since is not None else end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        default = "" if until is not None else ", and it is today unless given"
        raise InvalidInput(
            f"the period from {start} to {end} is empty: the first day must come before the end day "
            f"(the end day itself is not counted{default})"
        )
    return Period(_start_of_day(start, tz), _start_of_day(end, tz))


def _start_of_day(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(timezone.utc)


def check_split(by: str | None) -> str | None:
    """The split's name, or :class:`InvalidInput` naming the ones there are."""
    if by is None:
        return None
    value = by.strip().lower()
    if value not in SPLITS:
        raise InvalidInput(f"cannot split metrics by {by!r}; choose one of {', '.join(SPLITS)}")
    return value


def backlog_moment(period: Period, now: datetime) -> datetime:
    """The moment the backlog describes: the period's end, or now if the period has not ended."""
    return min(period.until, now.astimezone(timezone.utc))


# --- results ----------------------------------------------------------------------


def whole_seconds(value: Fraction | None) -> int | None:
    """Round exact seconds half up (1.5 s -> 2 s); the one rounding every shown duration gets."""
    return None if value is None else math.floor(value + Fraction(1, 2))


@dataclass(frozen=True)
class Distribution:
    """Durations of ``count`` requests in exact seconds; None when there are none."""

    count: int = 0
    median: Fraction | None = None
    p90: Fraction | None = None
    mean: Fraction | None = None

    def to_json(self, prefix: str = "", *, mean: bool = False) -> dict[str, Any]:
        fields = {
            f"{prefix}count": self.count,
            f"{prefix}median_seconds": whole_seconds(self.median),
            f"{prefix}p90_seconds": whole_seconds(self.p90),
        }
        if mean:
            fields[f"{prefix}mean_seconds"] = whole_seconds(self.mean)
        return fields


@dataclass(frozen=True)
class FirstResponse:
    wall: Distribution = Distribution()
    business: Distribution = Distribution()

    def to_json(self) -> dict[str, Any]:
        return {**self.wall.to_json(), **self.business.to_json("business_")}


@dataclass(frozen=True)
class Resolution:
    wall: Distribution = Distribution()
    business: Distribution = Distribution()

    def to_json(self) -> dict[str, Any]:
        return {**self.wall.to_json(mean=True), **self.business.to_json("business_", mean=True)}


@dataclass(frozen=True)
class Rate:
    """``numerator`` of ``denominator``; the rate is None when there is nothing to divide."""

    numerator: int = 0
    denominator: int = 0

    @property
    def value(self) -> Fraction | None:
        return Fraction(self.numerator, self.denominator) if self.denominator else None

    def to_json(self) -> dict[str, Any]:
        value = self.value
        shown = None if value is None else math.floor(value * 10_000 + Fraction(1, 2)) / 10_000
        return {"rate": shown, "numerator": self.numerator, "denominator": self.denominator}


@dataclass(frozen=True)
class Backlog:
    """Open requests at ``as_of`` by age bucket."""

    as_of: datetime
    age_under_1d: int = 0
    age_1d_to_3d: int = 0
    age_3d_to_7d: int = 0
    age_over_7d: int = 0

    @property
    def total(self) -> int:
        return self.age_under_1d + self.age_1d_to_3d + self.age_3d_to_7d + self.age_over_7d

    def to_json(self) -> dict[str, Any]:
        return {"as_of": iso(self.as_of), "total": self.total, **{b: getattr(self, b) for b in BUCKETS}}


@dataclass(frozen=True)
class MoneyTotal:
    """A sum of amounts in one currency (of one kind, for adjustments) and how many made it."""

    currency: str
    amount_minor: int
    count: int
    kind: str | None = None


@dataclass(frozen=True)
class FinancialImpact:
    disputed_open: tuple[MoneyTotal, ...] = ()
    approved: tuple[MoneyTotal, ...] = ()
    rejected: tuple[MoneyTotal, ...] = ()
    pending: tuple[MoneyTotal, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def adjustments(totals: tuple[MoneyTotal, ...]) -> list[dict[str, Any]]:
            return [{"kind": t.kind, "amount": money_json(t.amount_minor, t.currency), "count": t.count}
                    for t in totals]

        return {
            "disputed_open": [{"amount": money_json(t.amount_minor, t.currency), "requests": t.count}
                              for t in self.disputed_open],
            "approved": adjustments(self.approved),
            "rejected": adjustments(self.rejected),
            "pending": adjustments(self.pending),
        }


@dataclass(frozen=True)
class SlaCompliance:
    first_response: Rate = Rate()
    resolution: Rate = Rate()
    first_response_breaches: int = 0
    next_reply_breaches: int = 0
    resolution_breaches: int = 0
    breached_requests: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "first_response": self.first_response.to_json(),
            "resolution": self.resolution.to_json(),
            "breaches_open": {
                "first_response": self.first_response_breaches,
                "next_reply": self.next_reply_breaches,
                "resolution": self.resolution_breaches,
                "requests": self.breached_requests,
            },
        }


@dataclass(frozen=True)
class MetricSet:
    """Every metric for one group of requests (or for all of them)."""

    opened: int
    first_response: FirstResponse
    time_to_claim: Distribution
    resolution: Resolution
    backlog: Backlog
    reopen_rate: Rate
    accuracy_rate: Rate
    dispute_cycle: Distribution
    financial_impact: FinancialImpact
    sla_compliance: SlaCompliance

    def to_json(self) -> dict[str, Any]:
        return {
            "opened": self.opened,
            "first_response": self.first_response.to_json(),
            "time_to_claim": self.time_to_claim.to_json(),
            "resolution": self.resolution.to_json(),
            "backlog": self.backlog.to_json(),
            "reopen_rate": self.reopen_rate.to_json(),
            "accuracy_rate": self.accuracy_rate.to_json(),
            "dispute_cycle": self.dispute_cycle.to_json(),
            "financial_impact": self.financial_impact.to_json(),
            "sla_compliance": self.sla_compliance.to_json(),
        }


@dataclass(frozen=True)
class MetricsReport:
    """The whole answer: every metric over all requests, and per group when split."""

    period: Period
    now: datetime
    timezone: str
    by: str | None
    overall: MetricSet
    groups: tuple[tuple[Key, MetricSet], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "period": {**self.period.to_json(), "timezone": self.timezone},
            "computed_at": iso(self.now),
            "by": self.by,
            **self.overall.to_json(),
            "groups": [{"key": key, **metrics.to_json()} for key, metrics in self.groups],
        }


# --- the report -------------------------------------------------------------------


def compute_metrics(store: Store, period: Period, by: str | None = None, now: datetime | None = None, *,
                    figures_of_now: MetricSet | None = None) -> MetricsReport:
    """Every metric of DESIGN §5 over ``period``, overall and (with ``by``) per group, from one snapshot.

    The figures "of now" (breaches open now; disputed amounts open and
    adjustments pending now) do not depend on the period. A caller that has
    them already for the same ``now`` (the digest, comparing two periods)
    passes that report's overall set as ``figures_of_now`` and they are not
    read a second time; they are the most expensive part of a report.
    """
    split = check_split(by)
    if now is not None and now.tzinfo is None:
        raise ValueError("compute_metrics needs a timezone-aware now")
    if figures_of_now is not None and split is not None:
        raise ValueError("figures_of_now is for a report without a split")
    moment = (now or store.clock.now()).astimezone(timezone.utc)
    with store.read() as session:
        _one_snapshot(session)
        overall = _metric_sets(session, period, None, moment, read_now=figures_of_now is None)[None]
        groups = _metric_sets(session, period, split, moment) if split else {}
    if figures_of_now is not None:
        overall = _with_figures_of_now(overall, figures_of_now)
    return MetricsReport(period, moment, store.settings.timezone, split, overall,
                         tuple((key, groups[key]) for key in _ordered(groups)))


def _with_figures_of_now(metrics: MetricSet, source: MetricSet) -> MetricSet:
    impact, sla = source.financial_impact, source.sla_compliance
    return replace(
        metrics,
        financial_impact=replace(metrics.financial_impact, disputed_open=impact.disputed_open, pending=impact.pending),
        sla_compliance=replace(metrics.sla_compliance, first_response_breaches=sla.first_response_breaches,
                               next_reply_breaches=sla.next_reply_breaches,
                               resolution_breaches=sla.resolution_breaches, breached_requests=sla.breached_requests),
    )


def _one_snapshot(session: Session) -> None:
    """Make every query of this session read the same snapshot.

    SQLite's read transaction in WAL mode already does; PostgreSQL's default
    READ COMMITTED would let the nine metrics see nine different moments.
    """
    if _dialect(session) == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def _metric_sets(session: Session, period: Period, by: str | None, now: datetime,
                 read_now: bool = True) -> dict[Key, MetricSet]:
    results: dict[str, Mapping[Key, Any]] = {
        "opened": opened(session, period, by),
        "first_response": first_response_time(session, period, by),
        "time_to_claim": time_to_claim(session, period, by),
        "resolution": resolution_time(session, period, by),
        "backlog": backlog(session, period, by, now=now),
        "reopen_rate": reopen_rate(session, period, by),
        "accuracy_rate": accuracy_rate(session, period, by),
        "dispute_cycle": dispute_cycle_time(session, period, by),
        "financial_impact": financial_impact(session, period, by, read_now=read_now),
        "sla_compliance": sla_compliance(session, period, by, now=now, read_now=read_now),
    }
    empty: dict[str, Any] = {
        "opened": 0, "first_response": FirstResponse(), "time_to_claim": Distribution(), "resolution": Resolution(),
        "backlog": Backlog(backlog_moment(period, now)), "reopen_rate": Rate(), "accuracy_rate": Rate(),
        "dispute_cycle": Distribution(), "financial_impact": FinancialImpact(), "sla_compliance": SlaCompliance(),
    }
    keys = _keys(by, *results.values())
    return {key: MetricSet(**{name: found.get(key, empty[name]) for name, found in results.items()}) for key in keys}


# --- one function per metric ------------------------------------------------------
#
# Each takes a read session (from Store.read()), the period and an optional
# split, and returns {group key: result}. Without a split the only key is
# None and it is always there; with one, only the groups that have data.


def opened(session: Session, period: Period, by: str | None = None) -> dict[Key, int]:
    """Requests opened in the period, by their ``request.opened`` event."""
    by = check_split(by)
    base = sa.join(Event.__table__, _requests, Request.id == Event.request_id) if by else Event.__table__
    stmt = select(_key(by).label("g"), func.count().label("n")).select_from(_from_requests(by, base) if by else base) \
        .where(Event.kind == "request.opened", _in_period(Event.created_at, period))
    found = {row.g: int(row.n) for row in session.execute(_grouped(by, _key(by), stmt)) if row.n}
    return _filled(by, found, 0)


def first_response_time(session: Session, period: Period, by: str | None = None) -> dict[Key, FirstResponse]:
    """created → first agent reply, over requests first answered in the period; wall clock and business."""
    by = check_split(by)
    answered = _in_period(Request.first_response_at, period)
    wall = _distributions(session, by, US_PER_SECOND, _select_from_requests(
        by, _duration_us(session, Request.created_at, Request.first_response_at)).where(answered))
    business = _distributions(session, by, 1, _select_from_requests(
        by, Request.first_response_business_seconds).where(
            answered, Request.first_response_business_seconds.is_not(None)))
    return {key: FirstResponse(wall.get(key, Distribution()), business.get(key, Distribution()))
            for key in _keys(by, wall, business)}


def time_to_claim(session: Session, period: Period, by: str | None = None) -> dict[Key, Distribution]:
    """created → first assignment, over requests first assigned in the period."""
    by = check_split(by)
    rows = _select_from_requests(by, _duration_us(session, Request.created_at, Request.first_assigned_at)).where(
        _in_period(Request.first_assigned_at, period))
    return _filled(by, _distributions(session, by, US_PER_SECOND, rows), Distribution())


def resolution_time(session: Session, period: Period, by: str | None = None) -> dict[Key, Resolution]:
    """created → latest resolution in the period, over requests resolved in the period."""
    by = check_split(by)
    wall = _resolution_distributions(session, period, by)
    resolved = _resolutions(period)
    business = _distributions(session, by, 1, _select_from_resolved(
        resolved, by, Request.resolution_business_seconds).where(
            Request.resolution_business_seconds.is_not(None),
            # The column describes the request's current resolution only.
            Request.resolved_at == resolved.c.resolved_at,
        ))
    return {key: Resolution(wall.get(key, Distribution()), business.get(key, Distribution()))
            for key in _keys(by, wall, business)}


def dispute_cycle_time(session: Session, period: Period, by: str | None = None) -> dict[Key, Distribution]:
    """Resolution time of billing disputes resolved in the period."""
    by = check_split(by)
    found = _resolution_distributions(session, period, by, Request.category == DISPUTE_CATEGORY)
    return _filled(by, found, Distribution())


def backlog(session: Session, period: Period, by: str | None = None, *, now: datetime) -> dict[Key, Backlog]:
    """Requests not resolved or closed at ``min(until, now)``, by age then."""
    by = check_split(by)
    moment = backlog_moment(period, now)
    key = _key(by)
    is_open_now = Request.status.in_(OPEN_STATES)
    if period.until >= now:
        rows = select(key.label("g"), Request.created_at.label("created_at"), sa.literal_column("1").label("w")) \
            .select_from(_from_requests(by)).where(is_open_now)
    else:
        rows = _backlog_rows_at(session, by, moment)
    counted = rows.subquery("counted")

    def aged(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((condition, counted.c.w), else_=0)), 0)

    one, three, seven = (moment - timedelta(days=d) for d in (1, 3, 7))
    created = counted.c.created_at
    stmt = _grouped(by, counted.c.g, select(
        _group_column(by, counted.c.g),
        aged(created > one).label("age_under_1d"),
        aged(and_(created <= one, created > three)).label("age_1d_to_3d"),
        aged(and_(created <= three, created > seven)).label("age_3d_to_7d"),
        aged(created <= seven).label("age_over_7d"),
    ).select_from(counted))
    found = {}
    for row in session.execute(stmt):
        result = Backlog(moment, *(int(getattr(row, b)) for b in BUCKETS))
        if by is None or result.total:
            found[row.g] = result
    return _filled(by, found, Backlog(moment))


def reopen_rate(session: Session, period: Period, by: str | None = None) -> dict[Key, Rate]:
    """Of the requests resolved in the period, those reopened at least once."""
    by = check_split(by)
    return _resolved_share(session, period, by, Request.reopen_count > 0)


def accuracy_rate(session: Session, period: Period, by: str | None = None) -> dict[Key, Rate]:
    """Of the requests resolved in the period, those never reopened and with no rejected approval."""
    by = check_split(by)
    rejected = sa.exists().where(Approval.request_id == Request.id, Approval.status == "rejected") \
        .correlate(_requests)
    return _resolved_share(session, period, by, and_(Request.reopen_count == 0, ~rejected))


def financial_impact(session: Session, period: Period, by: str | None = None, *,
                     read_now: bool = True) -> dict[Key, FinancialImpact]:
    """Disputed amounts still open, and adjustments approved, rejected (in the period) and pending (now).

    Without ``read_now`` only the decisions of the period are read (see ``compute_metrics``).
    """
    by = check_split(by)
    key = _key(by)
    disputed = select(key.label("g"), Request.disputed_currency.label("currency"), sa.null().label("kind"),
                      func.sum(Request.disputed_amount_minor).label("amount"), func.count().label("n")) \
        .select_from(_from_requests(by)) \
        .where(Request.status.in_(OPEN_STATES), Request.disputed_amount_minor.is_not(None),
               Request.disputed_currency.is_not(None)) \
        .group_by(*_split_columns(by, key), Request.disputed_currency)
    adjustments = _from_requests(by, sa.join(Approval.__table__, _requests, Request.id == Approval.request_id))

    def adjusted(*where: ColumnElement[bool]) -> Select[Any]:
        return select(key.label("g"), Approval.currency.label("currency"), Approval.kind.label("kind"),
                      Approval.status.label("status"), func.sum(Approval.amount_minor).label("amount"),
                      func.count().label("n")) \
            .select_from(adjustments).where(*where) \
            .group_by(*_split_columns(by, key), Approval.status, Approval.kind, Approval.currency)

    decided = adjusted(_in_period(Approval.decided_at, period), Approval.status.in_(("approved", "rejected")))
    pending = adjusted(Approval.status == "pending")
    totals: dict[Key, dict[str, list[MoneyTotal]]] = {}
    statements = (("disputed_open", disputed), (None, decided), ("pending", pending)) if read_now else ((None, decided),)
    for part, stmt in statements:
        for row in session.execute(stmt).all():
            into = part or row.status
            totals.setdefault(row.g, {}).setdefault(into, []).append(
                MoneyTotal(row.currency, int(row.amount), int(row.n), row.kind))
    found = {
        key_: FinancialImpact(**{part: tuple(sorted(items, key=lambda t: (t.currency, t.kind or "")))
                                 for part, items in parts.items()})
        for key_, parts in totals.items()
    }
    return _filled(by, found, FinancialImpact())


def sla_compliance(session: Session, period: Period, by: str | None = None, *, now: datetime,
                   read_now: bool = True) -> dict[Key, SlaCompliance]:
    """Targets met by first responses and resolutions in the period, and breaches open now (with ``read_now``)."""
    by = check_split(by)
    key = _key(by)
    epoch = _epoch_function(session)
    first = _rates(session, by, select(
        key.label("g"), func.count().label("den"),
        func.sum(case((epoch(Request.first_response_at) <= epoch(Request.first_response_due_at), 1), else_=0))
        .label("num"),
    ).select_from(_from_requests(by)).where(
        _in_period(Request.first_response_at, period), Request.first_response_due_at.is_not(None)))
    resolved = _resolutions(period)
    resolution = _rates(session, by, select(
        key.label("g"), func.count().label("den"),
        func.sum(case((epoch(resolved.c.resolved_at) <= epoch(Request.resolution_due_at), 1), else_=0))
        .label("num"),
    ).select_from(_resolved_from(resolved, by)).where(Request.resolution_due_at.is_not(None)))
    breaches = _open_breaches(session, by, now) if read_now else {}
    return {
        k: SlaCompliance(first.get(k, Rate()), resolution.get(k, Rate()), *breaches.get(k, (0, 0, 0, 0)))
        for k in _keys(by, first, resolution, breaches)
    }


# --- shared pieces of SQL ---------------------------------------------------------


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _epoch_function(session: Session) -> Any:
    dialect = _dialect(session)
    return lambda moment: _epoch_us(dialect, moment)


def _epoch_us(dialect: str, moment: ColumnElement[Any]) -> ColumnElement[int]:
    """Microseconds since 1970 as an exact integer, the same on both databases.

    SQLite keeps UTCDateTime as text ``YYYY-MM-DD HH:MM:SS.ffffff``:
    ``strftime('%s')`` of the whole text would round the fraction through a
    millisecond Julian day (…59.9999995 s becomes the next second), so it gets
    only the first 19 characters and the six digits are added as they are.
    PostgreSQL's ``EXTRACT(EPOCH …)`` is an exact numeric since version 14.
    """
    if dialect == "sqlite":
        return (sa.cast(func.strftime("%s", func.substr(moment, 1, 19)), sa.BigInteger) * US_PER_SECOND
                + sa.cast(func.substr(moment, 21, 6), sa.BigInteger))
    return sa.cast(sa.extract("epoch", moment) * US_PER_SECOND, sa.BigInteger)


def _duration_us(session: Session, start: ColumnElement[Any], end: ColumnElement[Any]) -> ColumnElement[int]:
    epoch = _epoch_function(session)
    return epoch(end) - epoch(start)


def status_field(session: Session, data: ColumnElement[str], which: str) -> ColumnElement[str]:
    """``data.status.from`` or ``.to`` of an event (JSON text); NULL when the event changed no status."""
    if _dialect(session) == "sqlite":
        return func.json_extract(data, f"$.status.{which}")
    return func.jsonb_extract_path_text(sa.cast(data, JSONB), "status", which)


def _in_period(column: Any, period: Period) -> ColumnElement[bool]:
    return and_(column >= period.since, column < period.until)


def _key(by: str | None) -> ColumnElement[Any]:
    """The split's value for a request row (requests joined as ``requests``, the assignee as ``assignee``)."""
    if by is None:
        return sa.cast(sa.null(), sa.String)
    if by == "assignee":
        return _assignee.c.slack_user_id
    return getattr(Request, by)


def _from_requests(by: str | None, base: FromClause | None = None) -> FromClause:
    """``requests`` (or ``base``, which joins it), plus the assignee's row when splitting by assignee."""
    source = _requests if base is None else base
    if by == "assignee":
        source = sa.outerjoin(source, _assignee, _assignee.c.id == Request.assignee_id)
    return source


def _select_from_requests(by: str | None, value: ColumnElement[Any]) -> Select[Any]:
    return select(_key(by).label("g"), value.label("v")).select_from(_from_requests(by))


def _split_columns(by: str | None, key: ColumnElement[Any]) -> tuple[ColumnElement[Any], ...]:
    return (key,) if by else ()


def _group_column(by: str | None, column: ColumnElement[Any]) -> ColumnElement[Any]:
    # Without a split the outer query has no GROUP BY, so it may not name the inner key column.
    return column.label("g") if by else sa.cast(sa.null(), sa.String).label("g")


def _grouped(by: str | None, column: ColumnElement[Any], stmt: Select[Any]) -> Select[Any]:
    return stmt.group_by(column) if by else stmt


def _resolutions(period: Period) -> Subquery:
    """Requests resolved in the period, each with its latest resolution in the period.

    Reads ``events(kind, created_at)``: the resolutions of the period and nothing else.
    """
    return select(Event.request_id.label("request_id"), func.max(Event.created_at).label("resolved_at")) \
        .where(Event.kind == "request.resolved", _in_period(Event.created_at, period)) \
        .group_by(Event.request_id).subquery("resolutions")


def _resolved_from(resolved: Subquery, by: str | None) -> FromClause:
    return _from_requests(by, sa.join(resolved, _requests, Request.id == resolved.c.request_id))


def _select_from_resolved(resolved: Subquery, by: str | None, value: ColumnElement[Any]) -> Select[Any]:
    return select(_key(by).label("g"), value.label("v")).select_from(_resolved_from(resolved, by))


def _resolution_distributions(
    session: Session, period: Period, by: str | None, *where: ColumnElement[bool]
) -> dict[Key, Distribution]:
    resolved = _resolutions(period)
    rows = _select_from_resolved(resolved, by, _duration_us(session, Request.created_at, resolved.c.resolved_at))
    return _distributions(session, by, US_PER_SECOND, rows.where(*where))


def _distributions(session: Session, by: str | None, unit: int, rows: Select[Any]) -> dict[Key, Distribution]:
    """Count, median, p90 and mean per group of ``rows`` (``g``, ``v``: an integer of 1/unit seconds).

    One query: rank the values in each group with ROW_NUMBER() and COUNT(),
    then for p (hundredths) take the values at ranks floor(p(n-1)/100) + 1
    and + 2 and interpolate with weight p(n-1) mod 100, all in integers: the
    answer comes back as hundredths of a unit, exactly.
    """
    values = rows.subquery("vals")
    partition = [values.c.g] if by else None
    ranked = select(
        values.c.g,
        values.c.v,
        func.row_number().over(partition_by=partition, order_by=values.c.v).label("rn"),
        func.count().over(partition_by=partition).label("n"),
    ).subquery("ranked")

    def percentile(hundredths: int) -> ColumnElement[int]:
        position = hundredths * (ranked.c.n - 1)  # p(n-1), in hundredths
        lower_rank = position // 100 + 1
        lower = func.max(case((ranked.c.rn == lower_rank, ranked.c.v)))
        upper = func.max(case((ranked.c.rn == lower_rank + 1, ranked.c.v)))
        return lower * 100 + func.coalesce(upper - lower, 0) * func.max(position % 100)

    stmt = _grouped(by, ranked.c.g, select(
        _group_column(by, ranked.c.g),
        func.count().label("n"),
        func.sum(ranked.c.v // unit).label("whole"),
        func.sum(ranked.c.v % unit).label("rest"),
        percentile(MEDIAN).label("median"),
        percentile(P90).label("p90"),
    ).select_from(ranked))
    found: dict[Key, Distribution] = {}
    for row in session.execute(stmt):
        n = int(row.n)
        if n == 0:
            continue
        found[row.g] = Distribution(
            count=n,
            median=Fraction(int(row.median), 100 * unit),
            p90=Fraction(int(row.p90), 100 * unit),
            mean=Fraction(int(row.whole) * unit + int(row.rest), n * unit),
        )
    return _filled(by, found, Distribution())


def _rates(session: Session, by: str | None, stmt: Select[Any]) -> dict[Key, Rate]:
    """Run a ``g, den, num`` query (grouped by the split when there is one)."""
    key = _key(by)
    found = {row.g: Rate(int(row.num or 0), int(row.den)) for row in session.execute(
        stmt.group_by(key) if by else stmt) if row.den}
    return _filled(by, found, Rate())


def _resolved_share(session: Session, period: Period, by: str | None, condition: ColumnElement[bool]) -> dict[Key, Rate]:
    resolved = _resolutions(period)
    return _rates(session, by, select(
        _key(by).label("g"), func.count().label("den"), func.sum(case((condition, 1), else_=0)).label("num"),
    ).select_from(_resolved_from(resolved, by)))


def _backlog_rows_at(session: Session, by: str | None, moment: datetime) -> Select[Any]:
    """Rows ``g, created_at, w`` whose weights sum to the requests open at a past ``moment``.

    Start from the requests open now and created before ``moment`` (weight
    1), then correct the requests whose status changed since: their status at
    ``moment`` is the "from" of their first status-changing event at or
    after it (every transition records ``status: {from, to}`` in the same
    transaction), so each adds 1 if it was open then and takes 1 away if it
    is counted as open now.
    """
    key = _key(by)
    is_open_now = Request.status.in_(OPEN_STATES)
    open_now = select(key.label("g"), Request.created_at.label("created_at"), sa.literal_column("1").label("w")) \
        .select_from(_from_requests(by)).where(is_open_now, Request.created_at < moment)
    changed = _first_changes_since(session, moment)
    was_open = case((changed.c.status.in_(OPEN_STATES), 1), else_=0)
    counted_now = case((is_open_now, 1), else_=0)
    # A request opened at or after ``moment`` has its opening (from: null) as
    # first change: leaving those out is "created before moment" without a
    # range on requests.created_at, which would tempt the planner to start
    # from the requests and probe the events of each.
    corrections = select(key.label("g"), Request.created_at.label("created_at"), (was_open - counted_now).label("w")) \
        .select_from(_from_requests(by, sa.join(changed, _requests, Request.id == changed.c.request_id))) \
        .where(changed.c.status.is_not(None))
    return sa.union_all(open_now, corrections)  # type: ignore[return-value]


def _first_changes_since(session: Session, moment: datetime) -> Subquery:
    """``request_id, status``: each request's status just before its first status change at or after ``moment``.

    Walks events(created_at) from ``moment`` and keeps the events with no
    earlier status change of the same request since then, probing
    (request_id, seq): a cost in proportion to the events since ``moment``.
    Not MIN(seq) ... GROUP BY request_id: SQLite serves that grouping by
    walking the whole trail in (request_id, seq) order, which costs seconds
    at a million requests even for yesterday.
    """
    change, earlier = Event.__table__.alias("change"), Event.__table__.alias("earlier")
    had_earlier_change = sa.exists().where(
        earlier.c.request_id == change.c.request_id, earlier.c.seq < change.c.seq,
        earlier.c.created_at >= moment, status_field(session, earlier.c.data, "to").is_not(None),
    )
    return select(change.c.request_id.label("request_id"),
                  status_field(session, change.c.data, "from").label("status")) \
        .where(change.c.created_at >= moment, change.c.request_id.is_not(None),
               status_field(session, change.c.data, "to").is_not(None), ~had_earlier_change) \
        .subquery("changed")


def open_breaches(now: datetime) -> sa.Subquery:
    """Every target of an open request past its due time at ``now``: (request_id, target 1/2/3, due).

    Target 1 is the first response (while there is none), 2 the next reply,
    3 the resolution. One index range scan per target, by due time. The
    metrics count these rows; ``/sd list breached`` lists their requests.
    """
    is_open = Request.status.in_(OPEN_STATES)
    first, reply, resolution = (sa.literal_column(str(n)) for n in (1, 2, 3))
    return sa.union_all(
        select(Request.id.label("request_id"), first.label("target"), Request.first_response_due_at.label("due"))
        .where(Request.first_response_at.is_(None), Request.first_response_due_at < now, is_open),
        # ``status || ''``: the same test, which no index on status can answer, so the planner (SQLite's
        # has no statistics) reads the few past-due rows of ix_requests_next_reply_due_at_status instead
        # of every open request through an index on status.
        select(Request.id, reply, Request.next_reply_due_at)
        .where(Request.next_reply_due_at < now, Request.status.op("||")("").in_(OPEN_STATES)),
        select(Request.id, resolution, Request.resolution_due_at).where(is_open, Request.resolution_due_at < now),
    ).subquery("breaches")


def _open_breaches(session: Session, by: str | None, now: datetime) -> dict[Key, tuple[int, int, int, int]]:
    """Per group: first-response, next-reply and resolution breaches open now, and the requests with any.

    Three index range scans (one per target, by due time) instead of one
    scan of every open request.
    """
    first, reply, resolution = (sa.literal_column(str(n)) for n in (1, 2, 3))
    breaches = open_breaches(now)
    key = _key(by)

    def count(target: ColumnElement[Any]) -> ColumnElement[int]:
        return func.sum(case((breaches.c.target == target, 1), else_=0))

    totals = (count(first).label("first"), count(reply).label("reply"), count(resolution).label("resolution"),
              func.count(sa.distinct(breaches.c.request_id)).label("requests"))
    if by:
        stmt = select(key.label("g"), *totals) \
            .select_from(_from_requests(by, sa.join(breaches, _requests, Request.id == breaches.c.request_id))) \
            .group_by(key)
    else:
        # Without a split the breaches carry all that is counted: no join back to the requests.
        stmt = select(sa.literal(None).label("g"), *totals).select_from(breaches)
    return {row.g: (int(row.first or 0), int(row.reply or 0), int(row.resolution or 0), int(row.requests))
            for row in session.execute(stmt) if row.requests}


def _filled(by: str | None, found: dict[Key, T], empty: T) -> dict[Key, T]:
    """Without a split, the single group is always there (an empty result, not a missing one)."""
    return found if by else {None: found.get(None, empty)}


def _keys(by: str | None, *results: Iterable[Key]) -> list[Key]:
    if by is None:
        return [None]
    return _ordered({key for result in results for key in result})


def _ordered(keys: Iterable[Key]) -> list[Key]:
    """Group keys in a stable order: by value, "unassigned" (None) last."""
    return sorted(keys, key=lambda k: (k is None, k or ""))
