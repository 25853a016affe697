"""The App Home tab: the pure view, then the real app over HTTP publishing it. Both databases for the latter.

The view is checked the way Slack would take it (every text within its Block
Kit limit, at most 100 blocks, slack_sdk's own validation) and the way an
attacker would try it (a customer's subject or name that mentions
``@channel`` or fakes a link). The app is driven like Slack drives it: a
signed ``app_home_opened`` event on ``/slack/events``, and the
``views.publish`` it makes recorded by the fake Slack.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from slack_sdk.models.views import View

from bot.blocks import FIELD_LIMIT, HEADER_LIMIT, MAX_MODAL_BLOCKS, SECTION_LIMIT, slack_len
from bot.home import home_view, not_an_agent_view
from core import services
from core.services import InboundMail
from core.services.home import APPROVALS_SHOWN, QUEUE_SHOWN
from core.store import Store
from core.views import AgentHome, AgentRef, QueueItem, Share, TeamToday, WaitingApproval
from tests import factories as f
from tests.bot.slack_harness import ALICE, CAROL, STRANGER, RunningSlack, running_slack
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import EXTERNAL_USER, PARTNER_TEAM, Signing, SlackUser, event_callback, signed_event

NOW = datetime(2026, 1, 5, 11, 0, tzinfo=timezone.utc)
INJECTION = "<!channel> <!here> <@U0BOSS01> <https://evil.test|your bank> &amp; <#C0SECRET1>"
# The only markup the view may contain: our agents' mentions and date tokens written by bot/home.py.
OUR_MARKUP = re.compile(r"^<(@U[A-Z0-9]+|!date\^\d+\^[^|>]*\|[^>]*)>$")

# --- building homes ----------------------------------------------------------------------------

AGENT = AgentRef("UAGENT1", "Alice Agent", "alice@support.test", ("agent",), 0, None)
APPROVER = AgentRef("UAPPROVE", "Carol Approver", "carol@support.test", ("agent", "approver"), 50000, "EUR")


def today(**changes: Any) -> TeamToday:
    figures: dict[str, Any] = dict(
        day=date(2026, 1, 5), timezone="UTC", since=datetime(2026, 1, 5, tzinfo=timezone.utc),
        until=datetime(2026, 1, 6, tzinfo=timezone.utc), opened=0, resolved=0, backlog=0, first_responses=0,
        first_response_median_seconds=None, first_response_in_sla=Share(0, 0, None),
        resolution_in_sla=Share(0, 0, None), open_breaches=0)
    figures.update(changes)
    return TeamToday(**figures)


def item(n: int = 1, *, subject: str = "Charged twice", customer: str | None = "Acme Verified Ltd",
         due: datetime | None = NOW + timedelta(hours=2), status: str = "assigned",
         priority: str = "normal") -> QueueItem:
    return QueueItem(key=f"SR-{n}", subject=subject, status=status, priority=priority, customer_name=customer,
                     requester="jane@acme.test", next_due_at=due, breached=due is not None and due < NOW,
                     created_at=NOW - timedelta(hours=n))


def approval(n: int = 1, *, subject: str = "Charged twice", amount: int = 1250) -> WaitingApproval:
    return WaitingApproval(id=n, kind="credit", amount_minor=amount, currency="EUR", request_key=f"SR-{100 + n}",
                           request_subject=subject, requested_by="UAGENT1", requested_by_name="Alice Agent",
                           requested_at=NOW - timedelta(hours=2))


def home(agent: AgentRef = APPROVER, *, queue: tuple[QueueItem, ...] = (), queue_total: int | None = None,
         approvals: tuple[WaitingApproval, ...] = (), more: bool = False, figures: TeamToday | None = None) -> AgentHome:
    return AgentHome(agent=agent, as_of=NOW, queue=queue,
                     queue_total=len(queue) if queue_total is None else queue_total,
                     decides_approvals="approver" in agent.roles, approvals=approvals, more_approvals=more,
                     today=figures or today())


# --- reading views -----------------------------------------------------------------------------


def texts(view: dict[str, Any]) -> Iterator[tuple[str, str, int]]:
    """(block type, text, its Block Kit limit) for every text in the view."""
    for block in view["blocks"]:
        kind = block["type"]
        if kind == "header":
            yield kind, block["text"]["text"], HEADER_LIMIT
        elif kind == "section":
            if "text" in block:
                yield kind, block["text"]["text"], SECTION_LIMIT
            for field in block.get("fields", ()):
                yield "field", field["text"], FIELD_LIMIT
        elif kind == "context":
            for element in block["elements"]:
                yield kind, element["text"], FIELD_LIMIT


def shown(view: dict[str, Any]) -> str:
    return "\n".join(text for _, text, _ in texts(view))


def assert_slack_takes(view: dict[str, Any]) -> None:
    """Within every limit a Home tab has, by our count and by slack_sdk's validation."""
    assert view["type"] == "home" and 1 <= len(view["blocks"]) <= MAX_MODAL_BLOCKS
    for kind, text, limit in texts(view):
        assert text.strip() and slack_len(text) <= limit, (kind, slack_len(text))
    for block in view["blocks"]:
        assert len(block.get("fields", ())) <= 10 and len(block.get("elements", ())) <= 10
    View(**view).validate_json()


# --- the view: safety and limits ---------------------------------------------------------------


def test_a_customers_subject_and_name_cannot_mention_anyone_or_fake_a_link() -> None:
    view = home_view(home(queue=(item(subject=INJECTION, customer=f"Acme {INJECTION}"),),
                          approvals=(approval(subject=INJECTION),)), now=NOW)
    text = shown(view)
    assert "&lt;!channel&gt;" in text and "&lt;https://evil.test|your bank&gt;" in text
    assert "&amp;amp;" in text  # a typed entity shows as typed, it is not decoded into markup
    tokens = re.findall(r"<[^<>]*>", text)
    assert tokens and all(OUR_MARKUP.match(token) for token in tokens), tokens
    assert "<@UAGENT1>" in text  # who asked: one of our agents, mentioned on purpose


def test_line_breaks_in_a_subject_do_not_break_the_one_line_per_request() -> None:
    view = home_view(home(queue=(item(subject="first line\nsecond line\r\n\tthird"),)), now=NOW)
    (line,) = [text for _, text, _ in texts(view) if "SR-1" in text]
    assert "\n" not in line and "first line second line third" in line


def test_full_lists_of_huge_strings_stay_within_every_limit() -> None:
    subject = "💸" * 3000 + "<!channel>" * 500
    queue = tuple(item(n, subject=subject, customer="Ⓒ" * 5000) for n in range(1, 31))
    approvals = tuple(approval(n, subject=subject, amount=10 ** 15) for n in range(1, 31))
    view = home_view(home(queue=queue, queue_total=1000, approvals=approvals, more=True), now=NOW)
    assert_slack_takes(view)
    text = shown(view)
    assert sum(1 for n in range(1, 31) if f"SR-{n} " in text) == QUEUE_SHOWN
    assert len(re.findall(r"#\d+ · Credit", text)) == APPROVALS_SHOWN
    assert "…and 980 more requests in your queue." in text and "More are waiting." in text


def test_each_queue_line_says_what_burns() -> None:
    queue = (
        item(1, due=NOW - timedelta(minutes=15), priority="urgent"),
        item(2, due=NOW + timedelta(hours=2)),
        item(3, due=None, status="waiting_on_customer"),
        item(4, due=None, customer=None),
    )
    view = home_view(home(queue=queue), now=NOW)
    lines = {n: next(text for _, text, _ in texts(view) if f"SR-{n} " in text) for n in range(1, 5)}
    assert lines[1].startswith("🔴 SR-1 · *Charged twice* · Acme Verified Ltd") and "overdue by 15 min" in lines[1]
    assert "due in 2 h" in lines[2]
    assert "waiting on customer" in lines[3] and "SLA paused" in lines[3]
    assert "jane@acme.test (no customer linked)" in lines[4] and "no SLA due time" in lines[4]
    assert "*My queue* · 4 open requests, most urgent first" in shown(view)


def test_approval_lines_say_what_how_much_on_what_and_who_asked() -> None:
    view = home_view(home(approvals=(approval(7, amount=1250),)), now=NOW)
    (line,) = [text for _, text, _ in texts(view) if text.startswith("#7")]
    assert line == "#7 · Credit of *12.50 EUR* · SR-107 Charged twice · asked by <@UAGENT1> 2 h 00 min ago"


# --- the view: empty states, figures, strangers ------------------------------------------------


def test_empty_states_are_worded_for_people() -> None:
    text = shown(home_view(home(APPROVER), now=NOW))
    assert "Nothing in your queue." in text and "No approvals are waiting for you." in text
    assert "*First response, median*\n— (no first response yet)" in text
    assert "*First response in SLA*\n— (none to count yet)" in text
    assert "You do not decide approvals: that needs the approver role." in shown(home_view(home(AGENT), now=NOW))
    assert_slack_takes(home_view(home(AGENT), now=NOW))


def test_the_team_figures_show_todays_numbers() -> None:
    figures = today(opened=7, resolved=3, backlog=12, first_responses=4, first_response_median_seconds=5430,
                    first_response_in_sla=Share(3, 4, 0.75), resolution_in_sla=Share(2, 3, 0.6667),
                    open_breaches=1, timezone="Europe/Berlin")
    text = shown(home_view(home(figures=figures), now=NOW))
    for expected in ("*Today's team figures* · 2026-01-05 (Europe/Berlin), so far", "*Opened*\n7",
                     "*Resolved*\n3", "*Backlog now*\n12", "*First response, median*\n1 h 30 min (of 4)",
                     "*First response in SLA*\n75.0% (3 of 4)", "*Resolution in SLA*\n66.7% (2 of 3)",
                     "*SLA breaches open now*\n1 request",
                     "`supportdesk metrics --json --since 2026-01-05 --until 2026-01-06`"):
        assert expected in text, expected


def test_someone_not_set_up_is_told_how_to_get_added() -> None:
    view = not_an_agent_view("U0NOBODY1")
    assert_slack_takes(view)
    text = shown(view)
    assert "not set up as a supportdesk agent" in text and "`U0NOBODY1`" in text
    assert "supportdesk import agents" in text
    assert "&lt;!channel&gt;" in shown(not_an_agent_view("<!channel>"))


# --- the real app over HTTP --------------------------------------------------------------------


@pytest.fixture
def slack(store: Store, fake_slack: FakeSlack) -> Iterator[RunningSlack]:
    f.seed(store)
    for user in (ALICE, CAROL, STRANGER):
        fake_slack.add_user(user.id, name=user.username)
    fake_slack.add_user(EXTERNAL_USER.id, team_id=PARTNER_TEAM.id, name=EXTERNAL_USER.username)
    with running_slack(store, fake_slack) as running:
        yield running


def home_opened(user: SlackUser, *, tab: str = "home", **extra: str) -> dict[str, Any]:
    """The ``app_home_opened`` event as Slack documents it (https://docs.slack.dev/reference/events/app_home_opened)."""
    return {"type": "app_home_opened", "user": user.id, "channel": "D" + user.id[1:], "tab": tab,
            "event_ts": f"{time.time():.6f}", **extra}


def open_home(slack: RunningSlack, user: SlackUser, *, event_id: str | None = None, signing: Signing = Signing(),
              **event: str) -> None:
    answer = slack.post(signed_event(event_callback(home_opened(user, **event), event_id=event_id), signing))
    assert answer.status == 200 and answer.elapsed < 3


def published(fake: FakeSlack, count: int = 1) -> list[dict[str, Any]]:
    return [call.args for call in fake.wait_for_calls("views.publish", count, timeout=5)]


def settle() -> None:
    """A listener that was going to publish would have by now: the check for "nothing more happened"."""
    time.sleep(0.3)


def test_an_agent_opening_the_home_tab_gets_their_queue(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    mine = services.open_request(slack.store, channel="email", mail=InboundMail(
        from_address="jane@acme.test", subject="Charged twice <!channel>", body_text="Please help.")).key
    services.claim(slack.store, mine, actor=ALICE.id)
    services.open_request(slack.store, channel="email", mail=InboundMail(
        from_address="jane@acme.test", subject="Somebody else's", body_text="Hello."))

    open_home(slack, ALICE)
    (args,) = published(fake_slack)
    assert args["user_id"] == ALICE.id and args["view"]["type"] == "home"
    text = shown(args["view"])
    assert f"{mine} · *Charged twice &lt;!channel&gt;* · Acme Verified Ltd" in text
    assert "Somebody else's" not in text and "<!channel>" not in json.dumps(args["view"])
    assert "You do not decide approvals" in text and "*Opened*\n2" in text
    assert_slack_takes(args["view"])


def test_an_approver_sees_the_approval_waiting_for_them(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = services.open_request(slack.store, channel="email", mail=InboundMail(
        from_address="jane@acme.test", subject="Refund please", body_text="Twice.")).key
    services.claim(slack.store, key, actor=ALICE.id)
    services.request_approval(slack.store, key, kind="refund", amount=f.euros("40.00"), reason="Duplicate",
                              actor=ALICE.id)
    open_home(slack, CAROL)
    (args,) = published(fake_slack)
    assert args["user_id"] == CAROL.id
    assert f"Refund of *40.00 EUR* · {key} Refund please · asked by <@{ALICE.id}>" in shown(args["view"])


def test_someone_not_in_the_directory_gets_the_not_set_up_home(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    open_home(slack, STRANGER)
    (args,) = published(fake_slack)
    assert args["user_id"] == STRANGER.id
    text = shown(args["view"])
    assert "not set up as a supportdesk agent" in text and STRANGER.id in text and "supportdesk import agents" in text


def test_a_retried_event_publishes_once(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    open_home(slack, ALICE, event_id="Ev0HOME0001")
    open_home(slack, ALICE, event_id="Ev0HOME0001", signing=Signing(retry_num=1))
    published(fake_slack)
    settle()
    assert len(fake_slack.calls("views.publish")) == 1


@pytest.mark.parametrize("opening", [
    {"user": EXTERNAL_USER, "user_team": PARTNER_TEAM.id},
    {"user": EXTERNAL_USER, "team": PARTNER_TEAM.id},
    {"user": ALICE, "tab": "messages"},
], ids=["slack-connect-user_team", "slack-connect-team", "messages-tab"])
def test_nothing_is_published_for_another_workspace_or_the_messages_tab(slack: RunningSlack, fake_slack: FakeSlack,
                                                                        opening: dict[str, Any]) -> None:
    open_home(slack, **opening)
    open_home(slack, CAROL)  # a home that is published, to know the first event was handled too
    published(fake_slack)
    settle()
    assert [call.args["user_id"] for call in fake_slack.calls("views.publish")] == [CAROL.id]
