"""Making a digest: which one is due, its figures rendered to text and a chart, recorded once.

:func:`due_digests` is the pure rule of what should exist by now: the daily
digest of yesterday once today's digest time has passed (the day before
yesterday's until then), and the weekly summary of last week once Monday's
digest time has passed. Only the latest of each is due: a process that was
down for three days sends one digest when it comes back, not three, and a
digest already recorded is never made again.

:func:`make_digest` reads the figures (``core.digest``), renders them with
the jinja2 templates and draws the chart, then records the result
(``core.services.digests``), whose event queues the Slack post and the
e-mail copies. serve runs it in its background process
(``cli.background``): the metrics read a lot, and the process that answers
SMTP sessions and Slack clicks should not wait for the CPU they take.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from core.digest import DigestFigures, Kind, digest_figures, monday_of, week_label
from core.services.digests import DigestView, RenderedDigest, find_digest, record_digest
from core.store import Store
from notifications.chart import short_date, trend_chart
from templates import render

SYSTEM_ACTOR = "system:scheduler"


@dataclass(frozen=True)
class DueDigest:
    kind: Kind
    first_day: date

    @property
    def period(self) -> str:
        return self.first_day.isoformat() if self.kind == "daily" else week_label(self.first_day)


def due_digests(now: datetime, tz: ZoneInfo, digest_time: str) -> tuple[DueDigest, DueDigest]:
    """The latest daily digest and weekly summary whose sending time has passed at ``now``. Pure."""
    local = now.astimezone(tz)
    hour, minute = (int(part) for part in digest_time.split(":"))
    # The latest local day whose digest time has come.
    sending_day = local.date() if local.time() >= time(hour, minute) else local.date() - timedelta(days=1)
    daily = DueDigest("daily", sending_day - timedelta(days=1))
    weekly = DueDigest("weekly", monday_of(sending_day) - timedelta(days=7))
    return daily, weekly


def render_digest(figures: DigestFigures, tz: ZoneInfo) -> RenderedDigest:
    """Text for Slack and e-mail, and the chart, from the figures. Pure apart from drawing."""
    data = figures.to_json()
    period = figures.current.period
    first_day = period.since.astimezone(tz).date()
    last_day = (period.until.astimezone(tz) - timedelta(seconds=1)).date()
    if figures.kind == "daily":
        title = f"Support digest for {first_day:%A} {short_date(first_day)} {first_day.year}"
        period_text, compared_text, compare_days = f"{first_day.isoformat()} ({tz.key})", "the 7 days before, per day", 7
    else:
        title = f"Support summary for week {figures.label}"
        period_text = f"{first_day.isoformat()} to {last_day.isoformat()} ({tz.key})"
        compared_text, compare_days = "the week before", 1
    text = render(
        "slack/digest.md.j2", title=title, period_text=period_text, compared_text=compared_text,
        compare_days=compare_days, current=data["current"], previous=data["previous"],
        top_categories=data["top_categories"], mail=data["mail"],
    )
    trend = figures.trend
    chart = trend_chart([d.day for d in trend], [d.opened for d in trend], [d.resolved for d in trend],
                        [d.backlog for d in trend],
                        title=f"New, resolved and open requests, 14 days to {short_date(trend[-1].day)}")
    email_text = render("email/digest.txt.j2", text=text, kind=figures.kind, first_day=first_day.isoformat())
    return RenderedDigest(
        kind=figures.kind, period=figures.label, since=period.since, until=period.until, figures=data,
        slack_text=text, email_subject=title, email_text=email_text, chart_png=chart,
    )


def make_digest(store: Store, due: DueDigest, *, now: datetime | None = None,
                actor: str = SYSTEM_ACTOR) -> DigestView | None:
    """Make and record the digest ``due`` unless it exists; the new digest, or None when it existed."""
    if find_digest(store, due.kind, due.period) is not None:
        return None
    figures = digest_figures(store, due.kind, due.first_day, now)
    rendered = render_digest(figures, store.settings.tz)
    return record_digest(store, rendered, emails=store.settings.digest_emails, actor=actor)


def preview_digest(store: Store, due: DueDigest, *, now: datetime | None = None) -> RenderedDigest:
    """The digest as it would be made now, without recording or sending it."""
    return render_digest(digest_figures(store, due.kind, due.first_day, now), store.settings.tz)
