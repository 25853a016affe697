"""``bot.client``'s counters of failed Web API answers: the real client against the fake Slack over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.client import SlackApiCounters, make_client
from core.settings import Settings
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import TRIAGE_CHANNEL


def call(fake: FakeSlack, counters: SlackApiCounters, method: str, **args: Any) -> Any:
    """One call with a fresh client (and its own aiohttp session), as the app makes it."""
    settings = Settings(slack_bot_token=fake.token, slack_api_url=fake.base_url)

    async def run() -> Any:
        return await make_client(settings, counters).api_call(method, json=args)

    return asyncio.run(run())


def test_successful_calls_count_nothing(fake_slack: FakeSlack) -> None:
    counters = SlackApiCounters()
    call(fake_slack, counters, "chat.postMessage", channel=TRIAGE_CHANNEL.id, text="hi")
    assert counters == SlackApiCounters()


def test_an_error_answer_is_counted_by_method_and_slack_s_code(fake_slack: FakeSlack) -> None:
    counters = SlackApiCounters()
    fake_slack.fail("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackApiError):
        call(fake_slack, counters, "chat.postMessage", channel="C0NOWHERE", text="hi")
    assert counters.errors == {("chat.postMessage", "channel_not_found"): 1}
    assert not counters.rate_limited


def test_a_429_is_counted_once_per_answer_and_the_retry_that_succeeds_is_not(fake_slack: FakeSlack) -> None:
    counters = SlackApiCounters()
    fake_slack.rate_limit("chat.update", times=1, retry_after=1)
    fake_slack.seed_message(TRIAGE_CHANNEL.id, "card", ts="1700000000.000100")
    call(fake_slack, counters, "chat.update", channel=TRIAGE_CHANNEL.id, ts="1700000000.000100", text="new")
    assert counters.rate_limited == {"chat.update": 1}
    assert not counters.errors
    assert len(fake_slack.calls("chat.update")) == 2


def test_server_errors_count_each_attempt_and_an_unreachable_slack_counts_as_connection_error(
        fake_slack: FakeSlack) -> None:
    counters = SlackApiCounters()
    fake_slack.server_error("views.publish", times=3, status=503)  # the first try and both retries
    with pytest.raises(SlackApiError):
        call(fake_slack, counters, "views.publish", user_id="U0AGENT01", view={"type": "home", "blocks": []})
    assert counters.errors == {("views.publish", "http_503"): 3}
    fake_slack.down()
    with pytest.raises((SlackClientError, OSError)):
        call(fake_slack, counters, "auth.test")
    assert counters.errors[("auth.test", "connection_error")] == 3


def test_a_client_made_without_counters_counts_nowhere(fake_slack: FakeSlack) -> None:
    settings = Settings(slack_bot_token=fake_slack.token, slack_api_url=fake_slack.base_url)
    handlers = make_client(settings).retry_handlers
    assert [type(h).__name__ for h in handlers] == ["AsyncConnectionErrorRetryHandler",
                                                    "AsyncRateLimitErrorRetryHandler", "AsyncServerErrorRetryHandler"]
    assert type(make_client(settings, SlackApiCounters()).retry_handlers[0]).__name__ == "CountingHandler"
