"""Slack's requests over HTTP: the ``POST /slack/events`` handler, and a listener of its own for the Slack part alone.

:func:`events_handler` turns an aiohttp request into a Bolt request and
back: Bolt's adapter hands it the raw body, so the signature is checked on
exactly the bytes Slack signed. ``serve`` mounts that handler on its own
HTTP listener (``cli.http_listener``, which also answers ``/health`` and
``/metrics`` with or without Slack); :class:`SlackHttpServer` runs the Slack
part by itself (as the bot's tests do), with a cheap ``/health`` that says
the process answers and whether the store does.

In Socket Mode Slack's requests come over the app's own WebSocket and the
app verifies no signatures, so ``/slack/events`` is not offered at all (a
post there is 404): only ``/health`` is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp

from core.settings import HostPort

log = logging.getLogger("supportdesk.slack")

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/health"
# Slack sends at most a few kilobytes; a view submission with long text a little more.
MAX_BODY_BYTES = 1024 * 1024

HealthCheck = Callable[[], Awaitable[bool]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def events_handler(app: AsyncApp) -> Handler:
    """The ``POST /slack/events`` handler of ``app``, for whichever aiohttp application mounts it."""

    async def slack_events(request: web.Request) -> web.StreamResponse:
        bolt_request = await to_bolt_request(request)
        bolt_response = await app.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    return slack_events


class SlackHttpServer:
    """Bolt behind aiohttp on ``listen``; :meth:`start` and :meth:`stop` from the running loop."""

    def __init__(self, app: AsyncApp, listen: HostPort, store_ok: HealthCheck, *, slack_posts: bool = True) -> None:
        """``slack_posts=False`` (Socket Mode) serves ``/health`` only: nothing would verify a post."""
        self._app = app
        self._listen = listen
        self._store_ok = store_ok
        self._slack_posts = slack_posts
        self._runner: web.AppRunner | None = None
        self._port = listen.port

    @property
    def port(self) -> int:
        """The bound port (useful when ``listen`` asked for port 0)."""
        return self._port

    async def start(self) -> None:
        web_app = web.Application(client_max_size=MAX_BODY_BYTES)
        if self._slack_posts:
            web_app.router.add_post(EVENTS_PATH, events_handler(self._app))
        web_app.router.add_get(HEALTH_PATH, self._health)
        self._runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._listen.host, self._listen.port, reuse_address=True)
        await site.start()
        addresses = self._runner.addresses  # the port the OS gave when listen asked for port 0
        if addresses:
            self._port = addresses[0][1]

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (Slack waits at most 3 s anyway)."""
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), timeout=grace_seconds + 5)
            self._runner = None

    async def _health(self, _request: web.Request) -> web.Response:
        try:
            store_ok = await self._store_ok()
        except Exception:  # noqa: BLE001 - a health check reports, it never raises
            store_ok = False
        status = 200 if store_ok else 503
        return web.json_response({"status": "ok" if store_ok else "degraded", "store": store_ok}, status=status)
