"""The real Slack part of ``serve`` (Bolt app, HTTP listener, card delivery) on loopback, against the fake Slack.

The part runs in an event loop on a thread of its own, as in ``serve``; the
test talks to it only the way Slack would: signed HTTP requests to
``/slack/events``, and the Web API calls it makes, recorded by the fake.
Delivery of the outbox can run by itself (as in production) or be driven one
pass at a time, so a test can say exactly when cards are posted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from bot.app import SlackPart
from cli.background import BackgroundProcess
from cli.http_listener import HttpListener
from cli.vitals import ServeVitals
from bot.delivery import DeliveryReport
from core.facade import AsyncCore
from core.settings import HostPort
from core.store import Store
from intake.listener import IntakeCounters
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import DEFAULT_SIGNING_SECRET, HOME_TEAM, TRIAGE_CHANNEL, PostResult, SignedRequest, SlackUser, post

T = TypeVar("T")

APPROVALS_CHANNEL = "C0APPROVE1"
ALERTS_CHANNEL = "C0ALERTS01"
DIGEST_CHANNEL = "C0DIGEST01"
# The directory of tests.factories, as Slack users of the home workspace.
ALICE = SlackUser("UAGENT1", "alice", HOME_TEAM.id)
BOB = SlackUser("UAGENT2", "bob", HOME_TEAM.id)
CAROL = SlackUser("UAPPROVE", "carol", HOME_TEAM.id)
MALLORY = SlackUser("UMANAGER", "mallory", HOME_TEAM.id)
STRANGER = SlackUser("U0NOBODY1", "stranger", HOME_TEAM.id)


@dataclass
class RunningSlack:
    part: SlackPart
    listener: HttpListener
    store: Store
    loop: asyncio.AbstractEventLoop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.port}/slack/events"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.listener.port}/health"

    def post(self, request: SignedRequest) -> PostResult:
        return post(self.url, request)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def deliver(self) -> DeliveryReport:
        """One delivery pass of the ``slack`` outbox, now."""
        return self.run(self.part.delivery.deliver_due())


@contextmanager
def running_slack(store: Store, fake: FakeSlack, *, deliver_by_itself: bool = False,
                  app_token: str | None = None) -> Iterator[RunningSlack]:
    """The Slack part in HTTP mode, or in Socket Mode with ``app_token`` (then without a signing secret)."""
    settings = replace(
        store.settings,
        slack_bot_token=fake.token,
        slack_app_token=app_token,
        slack_signing_secret=None if app_token else DEFAULT_SIGNING_SECRET,
        slack_api_url=fake.base_url,
        triage_channel=TRIAGE_CHANNEL.id,
        approvals_channel=APPROVALS_CHANNEL,
        alerts_channel=ALERTS_CHANNEL,
        digest_channel=DIGEST_CHANNEL,
    )
    slack_store = Store(store.engine, store.clock, settings)
    core = AsyncCore(slack_store)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="slack-test-loop", daemon=True)
    thread.start()

    async def start() -> tuple[SlackPart, HttpListener]:
        # Mounted on serve's own HTTP listener, as serve mounts it (the mail parts are not running here).
        part = SlackPart(core, settings)
        vitals = ServeVitals(core, IntakeCounters(), BackgroundProcess(settings),
                             slack_mode="socket_mode" if app_token else "http", slack_counters=part.api_counters)
        listener = HttpListener(HostPort("127.0.0.1", 0), vitals, slack_events=part.events_handler)
        await listener.start()
        await part.start(run_delivery=deliver_by_itself)
        return part, listener

    async def stop(part: SlackPart, listener: HttpListener) -> None:
        await listener.stop()
        await part.stop()

    try:
        part, listener = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        try:
            yield RunningSlack(part, listener, slack_store, loop)
        finally:
            asyncio.run_coroutine_threadsafe(stop(part, listener), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        core.close()
