"""Acknowledge first, then work (``bot.acknowledge``): the answer never waits for what comes after ``ack()``.

The wrapper itself is driven with plain coroutines on a real event loop; the
app is driven over HTTP with the fake Slack made slow, so that the work
after an acknowledgment (opening a modal) takes seconds: the click is still
answered first, and stopping the Slack part waits for that work instead of
cancelling it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from bot.acknowledge import AckFirst
from core import services
from core.store import Store
from tests import factories as f
from tests.bot.slack_harness import ALICE, running_slack
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import block_actions, button, signed_interaction

SLOW_SLACK_SECONDS = 2.0


class _Ack:
    """Stands in for Bolt's ``AsyncAck``: remembers that it was called."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


def test_the_wrapper_returns_at_ack_and_the_rest_runs_on_in_a_task_it_keeps() -> None:
    async def scenario() -> None:
        ack_first = AckFirst()
        go_on = asyncio.Event()
        finished: list[str] = []

        async def listener(ack: Any, body: dict[str, Any]) -> None:
            await ack(text="ok")
            await go_on.wait()
            finished.append(body["key"])

        ack = _Ack()
        await ack_first(listener)(ack=ack, body={"key": "SR-1"})
        assert ack.calls == [{"text": "ok"}] and finished == [] and ack_first.running == 1
        go_on.set()
        await ack_first.finish(timeout=5)
        assert finished == ["SR-1"] and ack_first.running == 0

    asyncio.run(scenario())


def test_bolt_still_sees_the_listeners_parameter_names() -> None:
    """Bolt passes only the arguments a listener names (read through ``__wrapped__``)."""
    from slack_bolt.util.utils import get_arg_names_of_callable

    async def listener(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()

    assert get_arg_names_of_callable(AckFirst()(listener)) == ["ack", "body", "respond"]


def test_a_failure_before_ack_is_raised_to_bolt_and_one_after_it_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        ack_first = AckFirst()

        async def fails_first(ack: Any) -> None:
            raise ValueError("no such request")

        async def fails_after(ack: Any) -> None:
            await ack()
            raise KeyError("late")

        with pytest.raises(ValueError, match="no such request"):
            await ack_first(fails_first)(ack=_Ack())
        await ack_first(fails_after)(ack=_Ack())
        await ack_first.finish(timeout=5)

    with caplog.at_level(logging.ERROR, logger="supportdesk.slack"):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if r.getMessage() == "Slack listener failed: KeyError"]
    assert len(failures) == 1 and "no such request" not in caplog.text


def test_a_listener_without_ack_returns_at_once_and_bolt_acknowledges_for_it() -> None:
    async def scenario() -> None:
        ack_first = AckFirst()
        go_on = asyncio.Event()

        async def on_event(event: dict[str, Any]) -> None:
            await go_on.wait()

        await ack_first(on_event)(event={"type": "message"})
        assert ack_first.running == 1
        go_on.set()
        await ack_first.finish(timeout=5)
        assert ack_first.running == 0

    asyncio.run(scenario())


def test_finish_cancels_what_outlasts_its_time_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> bool:
        ack_first = AckFirst()
        cancelled = asyncio.Event()

        async def never_ends(ack: Any) -> None:
            await ack()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        await ack_first(never_ends)(ack=_Ack())
        await ack_first.finish(timeout=0.05)
        return cancelled.is_set() and ack_first.running == 0

    with caplog.at_level(logging.WARNING, logger="supportdesk.slack"):
        assert asyncio.run(scenario())
    assert "stopped 1 Slack listener(s) still working" in caplog.text


def test_a_click_is_answered_before_the_modal_it_opens_and_stopping_waits_for_the_modal(
    store: Store, fake_slack: FakeSlack
) -> None:
    """Over HTTP: with Slack taking seconds to open a modal, the click's answer does not wait for it."""
    f.seed(store)
    key = f.open_request(store).key
    services.claim(store, key, actor=ALICE.id)
    fake_slack.set_latency(SLOW_SLACK_SECONDS, "views.open")
    with running_slack(store, fake_slack) as slack:
        answer = slack.post(signed_interaction(block_actions(button("reply", key), user=ALICE,
                                                             response_url=fake_slack.webhook_url())))
        assert answer.status == 200
        # views.open is recorded only once Slack has answered it, seconds after the click was answered.
        assert fake_slack.calls("views.open") == []
    # Leaving the block stopped the Slack part: it waited for the acknowledged work to end.
    (opened,) = fake_slack.calls("views.open")
    assert opened.args["view"]["callback_id"] == "reply_modal"
