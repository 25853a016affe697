"""The App Home tab: an agent's queue, the approvals waiting for them, today's team figures.

Slack sends ``app_home_opened`` whenever someone opens the app (the Home or
the Messages tab); for the Home tab the app answers with ``views.publish``.
The tab is read fresh every time (one :func:`core.services.home.agent_home`
call on the read pool) rather than pushed on every change: it is opened far
less often than requests change, and a stale Home tab would mislead.

Who sees what:

- an agent in the directory sees their home;
- anyone else of our workspace sees a home that says they are not set up and
  how an admin adds them (their Slack user id, ``supportdesk import agents``);
- a user of another workspace (Slack Connect) gets nothing published: the
  app shows them nothing of ours.

Retried deliveries of the same event are dropped by the ``event_id`` gate
in :mod:`bot.guard` before this listener runs.

:func:`home_view` is pure, like :mod:`bot.blocks`: every string that came
from a customer (subject, customer name, address) goes through
:func:`bot.blocks.escape` once and is cut to its Block Kit limit, so a
subject cannot mention ``@channel`` or spoof a link; the only markup is
written here (mentions of our own agents, a date token).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.acknowledge import AckFirst
from bot.blocks import (
    FIELD_LIMIT,
    HEADER_LIMIT,
    MAX_FIELDS,
    SECTION_LIMIT,
    clip,
    escape,
    mention,
    money,
    relative,
)
from bot.guard import home_team
from core.errors import StoreUnavailable
from core.facade import AsyncCore
from core.services.home import APPROVALS_SHOWN, QUEUE_SHOWN, agent_home
from core.views import AgentHome, QueueItem, Share, TeamToday, WaitingApproval

log = logging.getLogger("supportdesk.slack")

Block = dict[str, Any]

# The builder draws at most QUEUE_SHOWN + APPROVALS_SHOWN lines (what core
# reads), one block each, and a dozen blocks around them: far below the 100
# blocks Slack allows a Home tab, however long the lists are.
# How much of each outside string one line shows.
SUBJECT_SHOWN = 200
NAME_SHOWN = 100

_PRIORITY_ICONS = {"urgent": "🔴", "high": "🟠", "normal": "⚪", "low": "🔵"}
_STATUS_WORDS = {
    "new": "new",
    "assigned": "assigned",
    "waiting_on_customer": "waiting on customer",
    "pending_approval": "pending approval",
}
_KIND_WORDS = {"credit": "Credit", "refund": "Refund", "write_off": "Write-off"}


# --- the listener ------------------------------------------------------------------


def register(app: AsyncApp, core: AsyncCore, ack_first: AckFirst) -> None:
    """Answer ``app_home_opened`` (acknowledged as soon as the listener starts: see :mod:`bot.acknowledge`)."""

    @app.event("app_home_opened")
    @ack_first
    async def on_home_opened(event: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient) -> None:
        await publish_home(core, client, event, home_team(context))


async def publish_home(core: AsyncCore, client: AsyncWebClient, event: dict[str, Any],
                       home_team: str | None) -> bool:
    """Publish the Home tab of the user who opened it; False when nothing was published (and why is logged)."""
    user = event.get("user")
    if event.get("tab") != "home" or not isinstance(user, str) or not user:
        return False  # the Messages tab, or no one to publish for
    if _from_another_workspace(event, home_team):
        log.info("no Home tab for %s of another workspace", user)
        return False
    try:
        home = await core.read(agent_home, user)
    except StoreUnavailable as exc:
        log.warning("the Home tab of %s could not be read now: %s", user, exc)
        return False
    view = home_view(home, now=home.as_of) if home is not None else not_an_agent_view(user)
    try:
        await client.views_publish(user_id=user, view=view)
    except SlackApiError as exc:
        log.warning("Slack refused the Home tab of %s: %s", user, exc.response.get("error"))
        return False
    return True


def _from_another_workspace(event: dict[str, Any], home_team: str | None) -> bool:
    """A Slack Connect user: the event names a team (``user_team`` or ``team``) that is not ours."""
    if not home_team:
        return False
    teams = {event.get("user_team"), event.get("team")}
    return any(team and team != home_team for team in teams)




# --- the views (pure) -----------------------------------------------------------------


def home_view(home: AgentHome, *, now: datetime) -> Block:
    """The Home tab of an agent: queue, approvals, today's figures; at most 100 blocks, every text within its limit."""
    blocks = [
        _header("supportdesk"),
        _context(f"Hello {escape(home.agent.name)} · as of {_when(now)} · open this tab again to refresh"),
        {"type": "divider"},
        *_queue_blocks(home, now),
        {"type": "divider"},
        *_approval_blocks(home, now),
        {"type": "divider"},
        *_figure_blocks(home.today),
    ]
    return {"type": "home", "blocks": blocks}


def not_an_agent_view(user_id: str) -> Block:
    """The Home tab of someone not in the agents directory: why it is empty, and how to get added."""
    return {"type": "home", "blocks": [
        _header("supportdesk"),
        _section("You are not set up as a supportdesk agent yet, so there is nothing to show you here."),
        _section(f"An admin can add you to the agents file and run `supportdesk import agents`. "
                 f"Your Slack user id is `{escape(user_id)}`."),
    ]}


def _queue_blocks(home: AgentHome, now: datetime) -> list[Block]:
    if not home.queue:
        return [_section("*My queue*"), _section("Nothing in your queue.")]
    shown = home.queue[:QUEUE_SHOWN]
    blocks = [_section(f"*My queue* · {_count(home.queue_total, 'open request')}, most urgent first")]
    blocks += [_section(_queue_line(item, now)) for item in shown]
    hidden = max(home.queue_total, len(home.queue)) - len(shown)
    if hidden > 0:
        blocks.append(_context(f"…and {_count(hidden, 'more request')} in your queue."))
    return blocks


def _queue_line(item: QueueItem, now: datetime) -> str:
    """One line: priority, key, subject, customer, status and the SLA moment that matters next."""
    icon = _PRIORITY_ICONS.get(item.priority, "⚪")
    who = _one_line(item.customer_name, NAME_SHOWN) if item.customer_name else \
        f"{_one_line(item.requester, NAME_SHOWN)} (no customer linked)"
    status = _STATUS_WORDS.get(item.status, escape(item.status))
    return f"{icon} {escape(item.key)} · *{_one_line(item.subject, SUBJECT_SHOWN)}* · {who} · {status} · " \
           f"{_due_text(item, now)}"


def _due_text(item: QueueItem, now: datetime) -> str:
    if item.next_due_at is None:
        return "SLA paused" if item.status == "waiting_on_customer" else "no SLA due time"
    if item.breached:
        return f"🔥 {relative(item.next_due_at, now)}"
    return f"⏰ {relative(item.next_due_at, now)}"


def _approval_blocks(home: AgentHome, now: datetime) -> list[Block]:
    title = _section("*Approvals waiting for you*")
    if not home.decides_approvals:
        return [title, _section("You do not decide approvals: that needs the approver role.")]
    if not home.approvals:
        return [title, _section("No approvals are waiting for you.")]
    blocks = [title] + [_section(_approval_line(a, now)) for a in home.approvals[:APPROVALS_SHOWN]]
    more = " More are waiting." if home.more_approvals or len(home.approvals) > APPROVALS_SHOWN else ""
    blocks.append(_context(f"Only those you may approve: within your limit, not on your own requests, for a "
                           f"KYC-verified customer. Decide them on their cards in the approvals channel.{more}"))
    return blocks


def _approval_line(approval: WaitingApproval, now: datetime) -> str:
    kind = _KIND_WORDS.get(approval.kind, escape(approval.kind))
    return (f"#{approval.id} · {kind} of *{money(approval.amount_minor, approval.currency)}* · "
            f"{escape(approval.request_key)} {_one_line(approval.request_subject, SUBJECT_SHOWN)} · "
            f"asked by {mention(approval.requested_by)} {_ago(approval.requested_at, now)}")


def _figure_blocks(today: TeamToday) -> list[Block]:
    day = today.day.isoformat()
    tomorrow = (today.day + timedelta(days=1)).isoformat()
    return [
        _section(f"*Today's team figures* · {day} ({escape(today.timezone)}), so far"),
        _fields([
            f"*Opened*\n{today.opened}",
            f"*Resolved*\n{today.resolved}",
            f"*Backlog now*\n{today.backlog}",
            f"*First response, median*\n{_median_text(today)}",
            f"*First response in SLA*\n{_share_text(today.first_response_in_sla)}",
            f"*Resolution in SLA*\n{_share_text(today.resolution_in_sla)}",
            f"*SLA breaches open now*\n{_count(today.open_breaches, 'request')}",
        ]),
        _context(f"The numbers of `supportdesk metrics --json --since {day} --until {tomorrow}`."),
    ]


def _median_text(today: TeamToday) -> str:
    if today.first_response_median_seconds is None:
        return "— (no first response yet)"
    return f"{_duration(today.first_response_median_seconds)} (of {today.first_responses})"


def _share_text(share: Share) -> str:
    if share.rate is None:
        return "— (none to count yet)"
    return f"{share.rate * 100:.1f}% ({share.numerator} of {share.denominator})"


# --- small pieces --------------------------------------------------------------------


def _one_line(text: str | None, limit: int) -> str:
    """Outside text for one line: whitespace collapsed (a subject's line breaks would split the line), escaped, cut."""
    collapsed = " ".join((text or "").split())
    return clip(escape(collapsed), limit) if collapsed else "—"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _duration(seconds: int) -> str:
    """Whole seconds as a person reads them: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _ago(moment: datetime, now: datetime) -> str:
    seconds = int((now - moment).total_seconds())
    return "just now" if seconds < 60 else f"{_duration(seconds)} ago"


def _when(moment: datetime) -> str:
    """A date token: Slack shows it in the reader's own time zone, with UTC as the fallback text."""
    utc = moment.astimezone(timezone.utc)
    return f"<!date^{int(utc.timestamp())}^{{date_short_pretty}} {{time}}|{utc:%Y-%m-%d %H:%M} UTC>"


def _header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": clip(text, HEADER_LIMIT), "emoji": True}}


def _mrkdwn(text: str, limit: int) -> Block:
    # verbatim: no automatic linking of bare addresses or channel names in outside text.
    return {"type": "mrkdwn", "text": clip(text, limit), "verbatim": True}


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text, SECTION_LIMIT)}


def _fields(texts: list[str]) -> Block:
    return {"type": "section", "fields": [_mrkdwn(t, FIELD_LIMIT) for t in texts[:MAX_FIELDS]]}


def _context(text: str) -> Block:
    return {"type": "context", "elements": [_mrkdwn(text, FIELD_LIMIT)]}
