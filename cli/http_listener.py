"""``serve``'s HTTP listener on ``SUPPORTDESK_HTTP_LISTEN``: ``/health``, ``/metrics``, and Slack's ``/slack/events``.

It runs in every ``serve`` unless ``SUPPORTDESK_HTTP_LISTEN=off``, with or
without Slack: aiohttp in serve's own event loop, no thread of its own.
``GET /health`` and ``GET /metrics`` are answered from
:class:`cli.vitals.ServeVitals`; ``POST /slack/events`` is mounted only when
the Slack app runs in HTTP mode, with the handler the Slack part provides
(``bot.server.events_handler``), so this module never imports Bolt: serve
without Slack stays some 20 MB lighter.

The endpoints carry no secrets and no customer text, but they do tell how
busy the desk is: bind to loopback (the default) or a private address, and
let the monitoring system reach it there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from cli.exposition import CONTENT_TYPE
from cli.vitals import ServeVitals
from core.settings import HostPort

HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
EVENTS_PATH = "/slack/events"
# Slack sends at most a few kilobytes; a view submission with long text a little more.
MAX_BODY_BYTES = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpListener:
    """The listener; :meth:`start` and :meth:`stop` from the running loop."""

    def __init__(self, listen: HostPort, vitals: ServeVitals, *, slack_events: Handler | None = None) -> None:
        """``slack_events``: the Slack part's handler for ``POST /slack/events`` (HTTP mode only)."""
        self._listen = listen
        self._vitals = vitals
        self._slack_events = slack_events
        self._runner: web.AppRunner | None = None
        self._port = listen.port

    @property
    def port(self) -> int:
        """The bound port (the one the OS chose when ``listen`` asked for port 0)."""
        return self._port

    async def start(self) -> None:
        """Listen; raises ``OSError`` (the port is taken, the address is not ours) with nothing left open."""
        web_app = web.Application(client_max_size=MAX_BODY_BYTES)
        web_app.router.add_get(HEALTH_PATH, self._health)
        web_app.router.add_get(METRICS_PATH, self._metrics)
        if self._slack_events is not None:
            web_app.router.add_post(EVENTS_PATH, self._slack_events)
        runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            # SO_REUSEADDR lets a restarted serve bind past old connections in TIME_WAIT; a port another
            # socket listens on still fails here.
            site = web.TCPSite(runner, self._listen.host, self._listen.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        if addresses:
            self._port = int(addresses[0][1])

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop accepting and let requests in progress finish (Slack waits at most 3 s for an answer anyway)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await asyncio.wait_for(runner.cleanup(), timeout=grace_seconds + 5)

    async def _health(self, _request: web.Request) -> web.Response:
        status, body = await self._vitals.health()
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    async def _metrics(self, _request: web.Request) -> web.Response:
        text = await self._vitals.metrics()
        # As a header: the format's version parameter is part of it, which aiohttp's content_type= refuses.
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
