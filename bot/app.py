"""The Slack app: one Bolt ``AsyncApp`` in ``serve``'s event loop, and everything it is wired to.

:class:`SlackPart` is what ``serve`` starts and stops: the Bolt app with
its middleware (each event once, agents only) and listeners (the slash
command, card buttons and modals, thread notes), the way Slack's requests
reach it, and the outbox worker that posts and updates cards. All of them
reach the store only through core's service functions, through :class:`core.facade.AsyncCore`.

Slack's requests arrive one of two ways, with everything else the same:
HTTP mode (Slack posts signed requests to ``/slack/events``) or, when
``SLACK_APP_TOKEN`` is set, Socket Mode (:mod:`bot.socket_mode`: the app
opens a WebSocket to Slack and the requests come over it). In ``serve`` the
HTTP listener is serve's own (it answers ``/health`` and ``/metrics`` with
or without Slack) and mounts :attr:`SlackPart.events_handler`; by itself
the part runs a listener of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from slack_bolt.app.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot import actions, commands, events, home
from bot.acknowledge import AckFirst
from bot.client import SlackApiCounters, make_client
from bot.delivery import SlackDelivery
from bot.guard import make_middleware
from bot.server import Handler, events_handler
from bot.socket_mode import SocketModeConnection
from core.errors import InvalidInput
from core.facade import AsyncCore
from core.settings import Settings

log = logging.getLogger("supportdesk.slack")

# How long a stopping serve waits at most for work already acknowledged (a claim, a modal being opened):
# a service call takes milliseconds and a Web API attempt times out after 10 s, so this is only reached by
# a backlog of thousands of clicks; it leaves the other steps of stopping room within the 60 s the README's
# systemd unit gives serve.
LISTENER_GRACE_SECONDS = 20.0


def create_app(core: AsyncCore, client: AsyncWebClient, settings: Settings, changed: actions.Changed,
               ack_first: AckFirst | None = None) -> AsyncApp:
    """The Bolt app: over HTTP it verifies every request with the signing secret.

    Every listener runs through ``ack_first`` (:mod:`bot.acknowledge`): Slack
    gets its answer the moment the listener calls ``ack()``, and the work
    after it goes on in a task that ``ack_first`` keeps.

    In Socket Mode (``SLACK_APP_TOKEN`` set) requests arrive on the WebSocket
    the app itself opened with its app token, so there is no signature to
    check and no secret is needed; verification is off only then, and the
    HTTP listener offers no ``/slack/events`` for unsigned posts to reach.
    """
    socket_mode = bool(settings.slack_app_token)
    if not socket_mode and not settings.slack_signing_secret:
        raise InvalidInput("SLACK_SIGNING_SECRET is not set; Slack requests cannot be verified without it")
    app = AsyncApp(
        client=client,
        # "" rather than None: Bolt would otherwise read SLACK_SIGNING_SECRET from the environment itself.
        signing_secret=settings.slack_signing_secret or "",
        request_verification_enabled=not socket_mode,
        # Unhandled payloads are logged by Bolt; a 404 makes Slack show the user an error, as it should.
        raise_error_for_unhandled_request=False,
        # Bolt returns the answer when the listener function returns; AckFirst returns at ack() (see there).
        process_before_response=True,
        logger=_bolt_logger(),
    )
    for middleware in make_middleware(core):
        app.middleware(middleware)
    ack_first = ack_first or AckFirst()
    # Bolt tries listeners in the order registered: card buttons, the most frequent requests, first.
    actions.register(app, core, changed, ack_first)
    commands.register(app, core, settings.slash_command, ack_first)
    events.register(app, core, ack_first)
    home.register(app, core, ack_first)

    @app.error
    async def on_error(error: Exception) -> None:
        log.error("Slack listener failed: %s", error.__class__.__name__, exc_info=error)

    return app


class _TokenFromEnvironment(logging.Filter):
    """Drop Bolt's warning that the SLACK_BOT_TOKEN it found in the environment "will be unused".

    Bolt reads that variable itself even when it is handed a client, and our
    client is built from the same token: the warning would only alarm an
    admin reading the start-up log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "will be unused" not in record.getMessage()


def _bolt_logger() -> logging.Logger:
    bolt = logging.getLogger("supportdesk.slack.bolt")
    if not any(isinstance(f, _TokenFromEnvironment) for f in bolt.filters):
        bolt.addFilter(_TokenFromEnvironment())
    return bolt


class SlackPart:
    """The Slack app as one part of ``serve``: Slack's requests (over HTTP or Socket Mode) plus card delivery."""

    def __init__(self, core: AsyncCore, settings: Settings, client: AsyncWebClient | None = None,
                 also_changed: Callable[[], None] | None = None) -> None:
        """``also_changed`` is called with every change made in Slack too (serve wakes its e-mail delivery:
        a reply written in Slack goes out at once). In HTTP mode the caller mounts :attr:`events_handler`
        on its HTTP listener (serve's ``cli.http_listener``)."""
        # Every failed answer of the Web API, for serve's metrics (only of the client made here).
        self.api_counters = SlackApiCounters()
        self.client = client or make_client(settings, self.api_counters)
        self.delivery = SlackDelivery(core, self.client, triage_channel=settings.triage_channel,
                                      approvals_channel=settings.approvals_channel,
                                      alerts_channel=settings.alerts_channel, digest_channel=settings.digest_channel)

        def changed() -> None:
            self.delivery.wake.set()
            if also_changed is not None:
                also_changed()

        # The listeners' work after their acknowledgment: stop() waits for it.
        self.listeners = AckFirst()
        self.app = create_app(core, self.client, settings, changed=changed, ack_first=self.listeners)
        self.socket_mode = (SocketModeConnection(self.app, settings.slack_app_token, self.client)
                            if settings.slack_app_token else None)
        # Slack posts its requests here in HTTP mode; None in Socket Mode (nothing would verify a post).
        self.events_handler: Handler | None = events_handler(self.app) if self.socket_mode is None else None
        self._stop = asyncio.Event()
        self._delivery_task: asyncio.Task[None] | None = None

    async def start(self, *, run_delivery: bool = True) -> None:
        """Connect (Socket Mode); with ``run_delivery`` (always, in ``serve``) deliver the outbox in the background.

        Raises ``InvalidInput`` when Slack refuses the app token; nothing is left running then.
        """
        if self.socket_mode is not None:
            await self.socket_mode.start()
        if run_delivery:
            self._delivery_task = asyncio.get_running_loop().create_task(self.delivery.run(self._stop),
                                                                         name="slack-delivery")

    async def stop(self) -> None:
        """Stop taking requests, finish the work of those acknowledged, then let the delivery finish its pass.

        In HTTP mode serve has stopped its listener (no new requests) before this.
        """
        if self.socket_mode is not None:
            await self.socket_mode.stop()
        await self.listeners.finish(LISTENER_GRACE_SECONDS)
        self._stop.set()
        if self._delivery_task is not None:
            await self._delivery_task
            self._delivery_task = None
