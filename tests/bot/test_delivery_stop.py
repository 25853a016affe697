"""A stopping serve gives back the Slack rows it has not tried instead of delivering its whole pass first."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from sqlalchemy import select

from bot.client import make_client
from bot.delivery import ChannelPacer, SlackDelivery
from core.facade import AsyncCore
from core.models import OutboxMessage
from core.store import Store
from tests import factories as f
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import TRIAGE_CHANNEL

CARDS = 6


def test_stop_mid_pass_finishes_the_card_in_hand_and_releases_the_rest(store: Store, fake_slack: FakeSlack) -> None:
    settings = replace(store.settings, slack_bot_token=fake_slack.token, slack_api_url=fake_slack.base_url,
                       triage_channel=TRIAGE_CHANNEL.id)
    slack_store = Store(store.engine, store.clock, settings)
    f.seed(slack_store)
    for n in range(CARDS):
        f.open_request(slack_store, subject=f"Question {n}")
    core = AsyncCore(slack_store)
    # One card a second: a whole pass would take CARDS seconds.
    delivery = SlackDelivery(core, make_client(settings), triage_channel=TRIAGE_CHANNEL.id, approvals_channel=None,
                             pacer=ChannelPacer(rate=1.0, burst=1))

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(delivery.run(stop))
        await asyncio.to_thread(fake_slack.wait_for_calls, "chat.postMessage", 1, 30)
        stop.set()
        await asyncio.wait_for(running, 30)

    try:
        asyncio.run(scenario())
    finally:
        core.close()
    posted = len(fake_slack.calls("chat.postMessage"))
    with slack_store.read() as session:
        rows = session.execute(select(OutboxMessage).where(OutboxMessage.topic == "triage_card")
                               .order_by(OutboxMessage.id)).scalars().all()
    sent = [r for r in rows if r.status == "sent"]
    given_back = [r for r in rows if r.status == "pending"]
    assert len(sent) == posted and 1 <= posted < CARDS
    assert len(sent) + len(given_back) == CARDS
    # Due again at once for any other serve, and not counted as a failed attempt.
    assert {(r.attempts, r.next_attempt_at) for r in given_back} == {(0, slack_store.clock.now())}
