"""SLA alerts and digests in Slack, through the real Slack part and the fake Slack Web API. Both databases.

The clock is the store's fixed clock (Monday 5 January 2026, 09:00 UTC): the
default policy for a normal request is 8 business hours to the first
response, Monday to Friday 09:00-17:00, warning at three quarters (6 h).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from core import services
from core.models import OutboxMessage, SlackAlert
from core.services import InboundMail
from core.services.sla import sweep
from core.store import Store
from notifications.digest_job import DueDigest, make_digest
from tests import factories as f
from tests.bot.slack_harness import ALERTS_CHANNEL, ALICE, DIGEST_CHANNEL, RunningSlack, running_slack
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import TRIAGE_CHANNEL, block_actions, button, signed_interaction

UTC = timezone.utc


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def slack(store: Store, fake_slack: FakeSlack) -> RunningSlack:
    f.seed(store)
    with running_slack(store, fake_slack) as running:
        yield running


def email_request(slack: RunningSlack, subject: str = "Charged twice") -> str:
    return services.open_request(
        slack.store, channel="email",
        mail=InboundMail(from_address="jane@acme.test", subject=subject, body_text="Help.",
                         message_id=f"<{subject.replace(' ', '.')}@acme.test>"),
    ).key


def posts(fake: FakeSlack, channel: str, *, thread: bool | None = None) -> list[dict]:
    return [c.args for c in fake.calls("chat.postMessage") if c.ok and c.args.get("channel") == channel
            and (thread is None or bool(c.args.get("thread_ts")) == thread)]


def alert_posts(fake: FakeSlack) -> list[dict]:
    return [a for a in posts(fake, TRIAGE_CHANNEL.id, thread=True) + posts(fake, ALERTS_CHANNEL)
            if "SLA" in a.get("text", "")]


def test_a_warning_goes_to_the_cards_thread_once_and_says_met_when_answered(slack: RunningSlack,
                                                                            fake_slack: FakeSlack) -> None:
    clock = slack.store.clock
    key = email_request(slack)
    services.claim(slack.store, key, actor=f.AGENT)
    slack.deliver()
    (card,) = posts(fake_slack, TRIAGE_CHANNEL.id, thread=False)
    card_ts = fake_slack.calls("chat.postMessage")[0].response["ts"]

    clock.set(at(5, 15))  # 6 business hours: the warning
    assert [(c.request_key, c.threshold) for c in sweep(slack.store)] == [(key, "warning")]
    slack.deliver()
    (warning,) = alert_posts(fake_slack)
    assert warning["thread_ts"] == card_ts and "reply_broadcast" not in warning
    assert "SLA warning" in warning["text"] and "<@UAGENT1>" in warning["blocks"][0]["text"]["text"]

    clock.set(at(5, 15, 30))
    assert sweep(slack.store) == []  # recorded once
    slack.deliver()
    assert len(alert_posts(fake_slack)) == 1

    clock.set(at(5, 16))
    services.reply(slack.store, key, "Refund on its way.", actor=f.AGENT)
    slack.deliver()
    updates = [c.args for c in fake_slack.calls("chat.update") if c.ok and c.args["ts"] != card_ts]
    assert updates and "Met at" in updates[-1]["blocks"][0]["text"]["text"]
    assert len(alert_posts(fake_slack)) == 1  # updated in place, never re-posted


def test_a_breach_goes_to_the_alerts_channel_naming_the_managers_and_nobody_as_assignee(
        slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    slack.deliver()
    slack.store.clock.set(at(5, 15))
    sweep(slack.store)
    slack.deliver()
    (warning,) = alert_posts(fake_slack)
    assert warning.get("reply_broadcast") is True  # unclaimed: the whole channel sees it
    assert "Nobody has claimed it yet" in warning["blocks"][0]["text"]["text"]

    slack.store.clock.set(at(5, 17, 1))
    assert [c.threshold for c in sweep(slack.store)] == ["breach"]
    slack.deliver()
    (breach,) = posts(fake_slack, ALERTS_CHANNEL)
    text = breach["blocks"][0]["text"]["text"]
    assert "SLA breached" in text and key in text
    assert "<@UBIGBOSS>" in text and "<@UMANAGER>" in text  # the managers of the directory

    services.claim(slack.store, key, actor=f.AGENT2)  # reassigned: the alert names who has it now
    slack.deliver()
    updated = [c.args for c in fake_slack.calls("chat.update") if c.ok and c.args["channel"] == ALERTS_CHANNEL]
    assert updated and "<@UAGENT2>" in updated[-1]["blocks"][0]["text"]["text"]


def test_alerts_found_at_night_wait_for_the_next_business_morning(slack: RunningSlack,
                                                                   fake_slack: FakeSlack) -> None:
    clock = slack.store.clock
    clock.set(at(5, 16))
    email_request(slack)
    slack.deliver()
    clock.set(at(6, 20))  # the warning (Tue 14:00) and the breach (Tue 16:00) found at 20:00
    assert sorted(c.threshold for c in sweep(slack.store)) == ["breach", "warning"]
    slack.deliver()
    assert alert_posts(fake_slack) == []
    with slack.store.read() as session:
        held = session.execute(select(OutboxMessage.next_attempt_at).where(OutboxMessage.topic == "sla_alert")).all()
    assert {row[0] for row in held} == {at(7, 9)}
    clock.set(at(7, 9))
    slack.deliver()
    assert len(alert_posts(fake_slack)) == 2


def test_urgent_round_the_clock_alerts_go_out_at_night(store: Store, fake_slack: FakeSlack) -> None:
    sla = {"sla": {"priorities": {"urgent": {"calendar": "24x7"}}}}
    urgent_store = Store(store.engine, store.clock, replace(store.settings, extra=sla))
    f.seed(urgent_store)
    with running_slack(urgent_store, fake_slack) as slack:
        urgent_store.clock.set(at(5, 22))
        key = email_request(slack)
        services.set_priority(slack.store, key, "urgent", actor=f.AGENT)
        slack.deliver()
        urgent_store.clock.set(at(5, 22, 46))  # 45 min of a 1 h first response: warned at once, at night
        sweep(slack.store)
        slack.deliver()
        assert len(alert_posts(fake_slack)) == 1


def test_a_restart_between_post_and_update_posts_nothing_twice(store: Store, fake_slack: FakeSlack) -> None:
    f.seed(store)
    with running_slack(store, fake_slack) as slack:
        key = email_request(slack)
        slack.deliver()
        store.clock.set(at(5, 15))
        sweep(slack.store)
        slack.deliver()
    with running_slack(store, fake_slack) as slack:  # a new process: the same store
        sweep(slack.store)
        services.claim(slack.store, key, actor=f.AGENT)
        slack.deliver()
        assert len(alert_posts(fake_slack)) == 1
    with store.read() as session:
        assert session.execute(select(func.count()).select_from(SlackAlert)).scalar() == 1


def test_a_rate_limited_alert_is_retried_after_retry_after(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    email_request(slack)
    slack.deliver()
    slack.store.clock.set(at(5, 15))
    sweep(slack.store)
    fake_slack.rate_limit("chat.postMessage", times=2, retry_after=1)  # the client itself waits out one
    report = slack.deliver()
    assert report.retried >= 1 and alert_posts(fake_slack) == []
    slack.store.clock.advance(timedelta(seconds=1))
    slack.deliver()
    assert len(alert_posts(fake_slack)) == 1


# --- the digest ------------------------------------------------------------------------------


def test_the_digest_is_posted_with_its_chart_and_its_buttons_open_the_lists(slack: RunningSlack,
                                                                           fake_slack: FakeSlack) -> None:
    email_request(slack, "First")
    email_request(slack, "Second")
    slack.store.clock.set(at(6, 9, 30))
    made = make_digest(slack.store, DueDigest("daily", date(2026, 1, 5)))
    assert made is not None
    slack.deliver()
    (message,) = posts(fake_slack, DIGEST_CHANNEL)
    assert message["text"] == "Support digest for Monday Jan 5 2026"
    assert "• New: *2*" in message["blocks"][0]["text"]["text"]
    buttons = message["blocks"][-1]["elements"]
    assert [b["value"] for b in buttons] == ["breached", "unassigned", "waiting", "open", "quarantine"]
    (complete,) = [c for c in fake_slack.calls("files.completeUploadExternal") if c.ok]
    uploaded = fake_slack.file(complete.response["files"][0]["id"])
    assert uploaded["content"] == made.chart_png and uploaded["channel"] == DIGEST_CHANNEL

    slack.deliver()  # nothing more: the post and the chart are recorded
    assert len(posts(fake_slack, DIGEST_CHANNEL)) == 1 and len(fake_slack.calls("files.completeUploadExternal")) == 1

    slack.post(signed_interaction(block_actions(
        button("digest_list", "unassigned", block_id=f"digest_{made.id}"), user=ALICE,
        response_url=fake_slack.webhook_url())))
    (answer,) = fake_slack.wait_for_webhook_posts(1, timeout=5)
    assert answer.args["response_type"] == "ephemeral" and "SR-1" in answer.args["text"] \
        and "SR-2" in answer.args["text"]


def test_a_failed_chart_upload_is_retried_without_posting_the_message_again(slack: RunningSlack,
                                                                           fake_slack: FakeSlack) -> None:
    slack.store.clock.set(at(6, 9, 30))
    make_digest(slack.store, DueDigest("daily", date(2026, 1, 5)))
    fake_slack.fail("files.getUploadURLExternal", "fatal_error", times=1)
    assert slack.deliver().retried == 1
    slack.store.clock.advance(timedelta(minutes=1))
    slack.deliver()
    assert len(posts(fake_slack, DIGEST_CHANNEL)) == 1
    assert len([c for c in fake_slack.calls("files.completeUploadExternal") if c.ok]) == 1
    with slack.store.read() as session:
        statuses = session.execute(select(OutboxMessage.status).where(OutboxMessage.topic == "digest")).scalars()
        assert list(statuses) == ["sent"]


def test_an_alert_of_a_request_closed_without_an_answer_says_it_ended(slack: RunningSlack,
                                                                      fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    slack.deliver()
    slack.store.clock.set(at(5, 17, 1))
    sweep(slack.store)
    slack.deliver()
    services.dismiss(slack.store, key, reason="A thank-you note.", actor=f.AGENT)
    slack.deliver()
    edits = [c.args for c in fake_slack.calls("chat.update") if c.ok and c.args["channel"] == ALERTS_CHANNEL]
    assert edits and "No longer running: the request is closed" in edits[-1]["blocks"][0]["text"]["text"]
