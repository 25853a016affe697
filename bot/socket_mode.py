"""Socket Mode: Slack's requests arrive over a WebSocket the app opens, instead of as HTTP posts to us.

For installs that cannot offer Slack a public URL (a firewalled office, a
laptop trial). ``SLACK_APP_TOKEN`` (an app-level ``xapp-`` token with the
``connections:write`` scope) asks for it. Bolt's ``AsyncSocketModeHandler``
(slack-sdk's aiohttp ``SocketModeClient``) runs in ``serve``'s own event
loop, with ``connect_async()`` and ``close_async()``: never
``start_async()``, which sleeps forever, and no thread of its own. Every
envelope goes through the same ``AsyncApp`` as an HTTP post would (same
middleware, same listeners), and its acknowledgment goes back on the socket.

Three things the SDK leaves to its caller, done here:

* **A refused token stops the start.** ``SocketModeClient.connect()`` retries
  every failure forever, a refused token included, one logged traceback
  every few seconds. So the first ``apps.connections.open`` is made here:
  Slack answering ``ok: false`` is a setting to fix and raises
  :class:`~core.errors.InvalidInput`; Slack out of reach is not, and the
  connection is tried again in the background while mail keeps flowing.
* **Each attempt gets a fresh URL.** Once it has a URL, ``connect()`` keeps
  retrying that same one; URLs from ``apps.connections.open`` are one-time
  tickets, so a failed attempt is abandoned after :data:`CONNECT_SECONDS`
  and the next one asks for a new URL.
* **A clean stop.** Envelopes being answered get their acknowledgment before
  the socket closes, and the client's background tasks are awaited after
  ``close_async()`` so none is left pending when the loop ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient

from core.errors import InvalidInput

log = logging.getLogger("supportdesk.slack")
# The SDK's own connection chatter ("A new session (s_…) has been established") under a name of ours.
SDK_LOG = logging.getLogger("supportdesk.slack.socket")

# Bolt's default: the client pings every 10 s and reconnects when pongs stop for four intervals.
PING_SECONDS = 10.0
# How long one attempt may take from apps.connections.open to an open WebSocket.
CONNECT_SECONDS = 15.0
# Back-off between attempts while Slack cannot be reached.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
# How long a stop waits for envelopes being answered (Slack itself waits 3 s for an acknowledgment).
STOP_GRACE_SECONDS = 5.0


class Unreachable(Exception):
    """Slack, or the way to it, is down: worth trying again, unlike a refused token."""


class _AnsweringHandler(AsyncSocketModeHandler):
    """Bolt's handler, remembering which envelopes it is still answering so a stop can wait for them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answering: set[asyncio.Task[Any]] = set()

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        task = asyncio.current_task()
        if task is not None:
            self.answering.add(task)
        try:
            await super().handle(client, req)
        finally:
            if task is not None:
                self.answering.discard(task)


class SocketModeConnection:
    """The app's Socket Mode connection; :meth:`start` and :meth:`stop` from ``serve``'s running loop."""

    def __init__(self, app: AsyncApp, app_token: str, web_client: AsyncWebClient) -> None:
        self._app = app
        self._app_token = app_token
        # The bot client, so apps.connections.open uses SUPPORTDESK_SLACK_API_URL like every other call;
        # the SDK sends the app token for that one method in its Authorization header.
        self._web_client = web_client
        self._handler: _AnsweringHandler | None = None
        self._retrying: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, or keep trying in the background; raises ``InvalidInput`` when Slack refuses the token."""
        # The client schedules a task and opens an aiohttp session as it is built: only inside the running loop.
        self._handler = _AnsweringHandler(self._app, app_token=self._app_token, web_client=self._web_client,
                                          logger=SDK_LOG, ping_interval=PING_SECONDS)
        try:
            await self._connect_once()
        except Unreachable as exc:
            log.warning("Slack cannot be reached for Socket Mode (%s); trying again in the background", exc)
            self._retrying = asyncio.get_running_loop().create_task(self._keep_trying(),
                                                                    name="slack-socket-mode-connect")
        except BaseException:
            await self._close()
            raise

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Let envelopes being answered send their acknowledgment, then close the connection."""
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
            self._retrying = None
        if self._handler is not None and self._handler.answering:
            await asyncio.wait(set(self._handler.answering), timeout=grace_seconds)
        await self._close()

    async def _connect_once(self) -> None:
        assert self._handler is not None
        client = self._handler.client
        client.wss_uri = await self._open_url()
        try:
            await asyncio.wait_for(self._handler.connect_async(), timeout=CONNECT_SECONDS)
        except asyncio.TimeoutError:
            client.wss_uri = None
            raise Unreachable(f"no WebSocket connection within {CONNECT_SECONDS:.0f} s") from None
        log.info("Slack: connected in Socket Mode")

    async def _open_url(self) -> str:
        """A WebSocket URL from ``apps.connections.open``; a refused token is ``InvalidInput``, not a retry."""
        try:
            response = await self._web_client.apps_connections_open(app_token=self._app_token)
        except SlackApiError as exc:
            if exc.response.status_code == 200:  # Slack answered, and said no: only a new setting helps
                raise InvalidInput(_refusal(str(exc.response.get("error")))) from None
            raise Unreachable(f"Slack answered HTTP {exc.response.status_code}") from exc
        except (SlackClientError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Unreachable(str(exc) or exc.__class__.__name__) from exc
        return str(response["url"])

    async def _keep_trying(self) -> None:
        delay = FIRST_RETRY_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                await self._connect_once()
                return
            except Unreachable as exc:
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                log.warning("Slack still cannot be reached for Socket Mode (%s); next try in %.0f s", exc, delay)
            except InvalidInput as exc:
                log.error("%s. The Slack app stays off until serve is restarted with a working token", exc)
                return

    async def _close(self) -> None:
        """``close_async()``, then wait out the client's background tasks it only cancels."""
        handler, self._handler = self._handler, None
        if handler is None:
            return
        await handler.close_async()
        client = handler.client
        tasks = [t for t in (client.message_processor, client.current_session_monitor, client.message_receiver)
                 if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


def _refusal(error: str) -> str:
    return (f"Slack refused SLACK_APP_TOKEN ({error}); it must be an app-level token (xapp-...) "
            "with the connections:write scope, of the same app as SLACK_BOT_TOKEN, and Socket Mode "
            "must be turned on in the app's settings")
