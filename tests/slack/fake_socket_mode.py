"""A fake of Slack's Socket Mode WebSocket endpoint on 127.0.0.1, for the Slack app's Socket Mode tests.

Why a real WebSocket server: what can go wrong in Socket Mode happens on the
wire — the client asking ``apps.connections.open`` with the right token,
opening the URL it got, acknowledging each envelope by its ``envelope_id``
with the right payload, reconnecting when Slack asks it to — and only a real
socket shows whether slack-sdk's client and Bolt's handler do it.

It speaks the protocol https://api.slack.com/apis/socket-mode documents:

* on connect it sends ``{"type": "hello", "num_connections": …,
  "connection_info": {"app_id": …}, "debug_info": {…}}``;
* :meth:`FakeSocketMode.send` delivers an envelope ``{"envelope_id", "type",
  "payload", "accepts_response_payload", …}`` built by :func:`envelope`,
  :func:`slash_commands`, :func:`interactive` or :func:`events_api`;
* what the app sends back (``{"envelope_id": …, "payload": {…}}``) is
  recorded as an :class:`Ack`;
* :meth:`FakeSocketMode.request_refresh` sends ``{"type": "disconnect",
  "reason": "refresh_requested"}``, as Slack does every few hours.

``apps.connections.open`` is a Web API method, so the fake Web API answers
it: ``fake_slack.offer_socket_mode(socket.url)`` makes it hand out this
server's URL (and only for the app-level token). The server runs its own
event loop on a thread of its own; every method here is called from the
test's thread.

Usage::

    with FakeSocketMode() as socket:
        fake_slack.offer_socket_mode(socket.url)
        ... start the app with SLACK_APP_TOKEN=fake_slack.app_token ...
        socket.wait_for_connections(1)
        envelope_id = socket.send(slash_commands(fields))
        ack = socket.wait_for_ack(envelope_id)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

from tests.slack.fake_slack import Workspace

WORKSPACE = Workspace()
T = TypeVar("T")


@dataclass(frozen=True)
class Ack:
    """One acknowledgment the app sent back on the socket."""

    envelope_id: str
    payload: dict[str, Any] | None  # None when the app acknowledged with no payload
    raw: str
    at: float  # time.time() when it arrived


def envelope(kind: str, payload: Mapping[str, Any], *, accepts_response_payload: bool,
             envelope_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """An envelope of ``kind`` (``slash_commands``, ``interactive``, ``events_api``) around ``payload``."""
    return {"envelope_id": envelope_id or str(uuid.uuid4()), "type": kind, "payload": dict(payload),
            "accepts_response_payload": accepts_response_payload, **extra}


def slash_commands(fields: Mapping[str, str]) -> dict[str, Any]:
    """A slash command: the same fields Slack would form-post, as a JSON object; its ack may carry the answer."""
    return envelope("slash_commands", fields, accepts_response_payload=True)


def interactive(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A click, shortcut or modal submission; only a submission's ack may carry a payload (``response_action``)."""
    return envelope("interactive", payload,
                    accepts_response_payload=payload.get("type") in ("view_submission", "block_suggestion"))


def events_api(payload: Mapping[str, Any], *, retry_attempt: int = 0, retry_reason: str = "") -> dict[str, Any]:
    """An Events API ``event_callback``; a redelivery carries ``retry_attempt`` > 0 and why."""
    return envelope("events_api", payload, accepts_response_payload=False, retry_attempt=retry_attempt,
                    retry_reason=retry_reason)


class FakeSocketMode:
    """Slack's Socket Mode endpoint ``ws://127.0.0.1:<port>/link``; see the module docstring."""

    def __init__(self, *, workspace: Workspace = WORKSPACE) -> None:
        self.workspace = workspace
        self.port = 0
        self._cond = threading.Condition()
        self._acks: list[Ack] = []
        self._open: list[web.WebSocketResponse] = []
        self._connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> FakeSocketMode:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-socket-mode", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        self._run(self._listen())
        return self

    def stop(self) -> None:
        """Close every connection (as Slack going away would) and the listening socket."""
        if self._loop is None or self._thread is None:
            return
        self._run(self._shut_down())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._loop = self._thread = None

    @property
    def url(self) -> str:
        """What ``apps.connections.open`` should hand out."""
        return f"ws://127.0.0.1:{self.port}/link"

    # ------------------------------------------------------------------ talking to the app

    def send(self, message: Mapping[str, Any]) -> str:
        """Send ``message`` on the newest open connection (Slack picks one); returns its ``envelope_id``."""
        with self._cond:
            if not self._open:
                raise AssertionError("no Socket Mode connection is open to send on")
            socket = self._open[-1]
        self._run(socket.send_str(json.dumps(message)))
        return str(message.get("envelope_id", ""))

    def request_refresh(self) -> None:
        """Ask the app to reconnect, as Slack does before it retires a connection."""
        self.send({"type": "disconnect", "reason": "refresh_requested",
                   "debug_info": {"host": f"applink-fake-{self.port}"}})

    # ------------------------------------------------------------------ inspection

    @property
    def connections(self) -> int:
        """How many connections were ever opened."""
        with self._cond:
            return self._connections

    @property
    def open_connections(self) -> int:
        with self._cond:
            return len(self._open)

    def acks(self) -> list[Ack]:
        with self._cond:
            return list(self._acks)

    def wait_for_connections(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until ``count`` connections were opened and one of them is open now."""
        self._wait(lambda: self._connections >= count and bool(self._open), timeout,
                   lambda: f"{count} connection(s), got {self._connections} ({len(self._open)} open)")

    def wait_until_closed(self, timeout: float = 5.0) -> None:
        """Block until no connection is open (the app closed it, or its process ended)."""
        self._wait(lambda: not self._open, timeout, lambda: f"no open connection, {len(self._open)} still open")

    def wait_for_ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:
        """The app's acknowledgment of ``envelope_id``; fails the test when none comes in time."""
        found: list[Ack] = []

        def arrived() -> bool:
            found[:] = [a for a in self._acks if a.envelope_id == envelope_id]
            return bool(found)

        self._wait(arrived, timeout, lambda: f"an ack of {envelope_id}; acks: {[a.raw for a in self._acks]}")
        return found[0]

    def _wait(self, done: Callable[[], bool], timeout: float, wanted: Callable[[], str]) -> None:
        """Wake on every connection and ack (no fixed sleeps); fail the test with ``wanted()`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {wanted()} within {timeout} s")
                self._cond.wait(left)

    # ------------------------------------------------------------------ the server (its own loop)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "the fake Socket Mode server is not running"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_get("/link", self._link)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shut_down(self) -> None:
        with self._cond:
            sockets = list(self._open)
        for socket in sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()  # answers the client's pings itself, as Slack does
        await socket.prepare(request)
        with self._cond:
            self._open.append(socket)
            self._connections += 1
            count = len(self._open)
            self._cond.notify_all()
        await socket.send_json({"type": "hello", "num_connections": count,
                                "debug_info": {"host": f"applink-fake-{self.port}", "build_number": 1,
                                               "approximate_connection_time": 18060},
                                "connection_info": {"app_id": self.workspace.app_id}})
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    self._record(message.data)
        finally:
            with self._cond:
                self._open.remove(socket)
                self._cond.notify_all()
        return socket

    def _record(self, raw: str) -> None:
        data = json.loads(raw)
        ack = Ack(envelope_id=str(data.get("envelope_id", "")), payload=data.get("payload"), raw=raw, at=time.time())
        with self._cond:
            self._acks.append(ack)
            self._cond.notify_all()
