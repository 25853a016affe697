"""Slack's requests over HTTP: the ``POST /slack/events`` handler.

:func:`events_handler` turns an aiohttp request into a Bolt request and
back: Bolt's adapter hands it the raw body, so the signature is checked on
exactly the bytes Slack signed. ``serve`` mounts that handler on its own
HTTP listener (``cli.http_listener``, which also answers ``/health`` and
``/metrics`` with or without Slack).

In Socket Mode Slack's requests come over the app's own WebSocket and the
app verifies no signatures, so there is no handler to mount (a post to
``/slack/events`` is 404).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def events_handler(app: AsyncApp) -> Handler:
    """The ``POST /slack/events`` handler of ``app``, for whichever aiohttp application mounts it."""

    async def slack_events(request: web.Request) -> web.StreamResponse:
        bolt_request = await to_bolt_request(request)
        bolt_response = await app.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    return slack_events
