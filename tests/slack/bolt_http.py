"""Serve a Bolt ``AsyncApp`` over real HTTP on 127.0.0.1 for end-to-end tests.

Why not ``app.async_dispatch(AsyncBoltRequest(...))``: that skips the HTTP
layer — raw-body handling, header case, content types, the status and body the
adapter actually writes — which is where signature checks break in production.
Why not ``app.start()``: it binds 0.0.0.0 on a fixed port and blocks.

slack-bolt 1.30's ``slack_bolt.adapter.aiohttp`` exposes only the two
converters ``to_bolt_request`` / ``to_aiohttp_response`` (there is no
``AsyncSlackRequestHandler`` there); this wires them into an aiohttp
application exactly as Bolt's own ``AsyncSlackAppServer`` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp

EVENTS_PATH = "/slack/events"


def web_application(app: AsyncApp, path: str = EVENTS_PATH) -> web.Application:
    """An aiohttp application that hands every POST on ``path`` to ``app``."""

    async def handle(request: web.Request) -> web.Response:
        bolt_response = await app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(bolt_response)

    application = web.Application()
    application.router.add_post(path, handle)
    return application


@asynccontextmanager
async def serve_async_app(app: AsyncApp, path: str = EVENTS_PATH) -> AsyncIterator[str]:
    """Listen on an ephemeral port of 127.0.0.1 in the running loop; yield the request URL.

    The server runs in the caller's event loop, so post to it with
    ``signing.post_async`` (a thread), never with a blocking call in the loop.
    """
    runner = web.AppRunner(web_application(app, path), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        await runner.cleanup()
