"""A fake Slack Web API served over real HTTP on 127.0.0.1, for the Slack app's tests.

Why a real HTTP server instead of mocking ``WebClient``: the things that go
wrong with Slack in production happen in the transport — the SDK's URL joining,
form versus JSON bodies, the ``Authorization`` header, HTTP 429 with
``Retry-After``, 5xx pages, refused connections, slow answers — and the SDK's
retry handlers only see those if a real socket produces them. A mock would
answer whatever the test author believed Slack answers; this fake answers with
the shapes Slack documents (https://api.slack.com/methods) and records exactly
what the app sent.

Usage::

    with FakeSlack() as slack:
        client = WebClient(token=slack.token, base_url=slack.base_url)
        client.chat_postMessage(channel="C0TRIAGE1", text="hi")
        [call] = slack.calls("chat.postMessage")

or the ``fake_slack`` pytest fixture at the bottom of this module.

``base_url`` ends with ``/api/``: the SDK builds URLs with ``urljoin``, so a
base URL without the trailing slash drops its last path segment. slack-sdk
3.48 appends the slash itself, but the project allows older releases that did
not; a request that misses ``/api/`` is recorded and answered
``unknown_method``, so the mistake shows.

Everything is thread-safe: the server answers each request on its own thread,
the app under test may call from an event loop or a thread pool, and the test
inspects from the main thread.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

DEFAULT_TOKEN = "xoxb-supportdesk-test"
# The app-level token Socket Mode opens its connections with (``SLACK_APP_TOKEN``).
DEFAULT_APP_TOKEN = "xapp-1-A0SUPPORT-1-supportdesk-test"
# Methods Slack answers only for the app-level token, and only from the Authorization header.
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})

# Arguments Slack accepts as JSON text inside a form-encoded body. They are
# decoded so a test reads the same structure whether the client sent form or JSON.
JSON_ARGUMENTS = ("blocks", "attachments", "view", "metadata")

Answer = tuple[int, dict[str, str], bytes]
MethodHandler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Workspace:
    """The identity ``auth.test`` reports; the app's single-workspace install."""

    team_id: str = "T0SUPPORT"
    team: str = "Support Desk Test"
    domain: str = "supportdesk-test"
    enterprise_id: str | None = None
    app_id: str = "A0SUPPORT"
    bot_id: str = "B0SUPBOT1"
    bot_user_id: str = "U0SUPBOT1"
    bot_name: str = "supportdesk"

    @property
    def url(self) -> str:
        """The workspace URL, as ``auth.test`` and permalinks use it."""
        return f"https://{self.domain}.slack.com/"


@dataclass(frozen=True)
class Call:
    """One request the fake received, with what it answered.

    Calls answered with an injected fault (429, 5xx, ``ok: false``) are
    recorded too, so a test can count retries.
    """

    method: str  # "chat.postMessage", or "webhook" for response_url posts
    args: dict[str, Any]
    authorization: str | None
    at: float  # time.time() when the request arrived
    http_method: str
    path: str
    content_type: str
    raw_body: bytes
    headers: dict[str, str]  # names lower-cased
    status: int
    response: dict[str, Any] | None  # None when the body was not JSON (5xx)

    @property
    def token(self) -> str | None:
        """The token the caller presented: bearer header first, then a ``token`` argument."""
        if self.authorization and self.authorization.startswith("Bearer "):
            return self.authorization[len("Bearer "):]
        token = self.args.get("token")
        return token if isinstance(token, str) else None

    @property
    def ok(self) -> bool:
        """True when the fake answered HTTP 200 with ``"ok": true``."""
        return self.status == 200 and bool(self.response and self.response.get("ok"))


@dataclass
class _Fault:
    """An injected failure for the next ``remaining`` matching calls."""

    method: str | None  # None: every Web API method; response_url posts only as "webhook"
    remaining: int
    status: int
    error: str
    retry_after: int | None = None

    def matches(self, method: str) -> bool:
        wanted = self.method == method or (self.method is None and method != "webhook")
        return self.remaining > 0 and wanted


@dataclass
class _State:
    """Mutable Slack-side state; always accessed under ``FakeSlack._cond``."""

    calls: list[Call] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    latency: dict[str | None, float] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    home_views: dict[str, str] = field(default_factory=dict)
    # Rate limits as Slack enforces them: method -> (calls per second per channel, burst), and the buckets.
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    buckets: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    # Files: id -> {"id", "filename", "length", "title", "content" (bytes), "channel", "thread_ts", "complete"}
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    used_trigger_ids: set[str] = field(default_factory=set)
    socket_mode_url: str | None = None
    last_ts_micros: int = 0
    next_id: int = 1


class FakeSlack:
    """A Slack Web API double on ``127.0.0.1:<ephemeral port>``; see the module docstring."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, workspace: Workspace | None = None,
                 users: Iterable[Mapping[str, Any]] = (), app_token: str = DEFAULT_APP_TOKEN) -> None:
        self.token = token
        self.app_token = app_token
        self.workspace = workspace or Workspace()
        self.port = 0
        self._cond = threading.Condition(threading.RLock())
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._methods: dict[str, MethodHandler] = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "conversations.info": self._conversations_info,
            "users.info": self._users_info,
        }
        self.add_user(self.workspace.bot_user_id, name=self.workspace.bot_name, is_bot=True)
        for user in users:
            self._state.users[user["id"]] = dict(user)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> FakeSlack:
        """Listen on an ephemeral port (or, after ``down()``, the same port again)."""
        with self._lifecycle:
            if self._server is not None:
                return self
            server = _Server(("127.0.0.1", self.port), _Handler)
            server.fake = self
            self.port = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"fake-slack-{self.port}", daemon=True)
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Close the listening socket; new connections are refused until ``start()``/``up()``."""
        with self._lifecycle:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None and thread is not None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def down(self) -> None:
        """Simulate Slack being unreachable: connections to the port are refused."""
        self.stop()

    def up(self) -> None:
        """Come back on the same port after ``down()``; recorded calls and state are kept."""
        self.start()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What to pass as ``WebClient(base_url=...)``; note the trailing slash."""
        return f"{self.root_url}/api/"

    def webhook_url(self, name: str = "") -> str:
        """A ``response_url`` to put in payloads; ``name`` tells several apart."""
        return f"{self.root_url}/webhook/{name}" if name else f"{self.root_url}/webhook"

    # -------------------------------------------------------------- configuration

    def add_user(self, user_id: str, *, team_id: str | None = None, name: str | None = None,
                 real_name: str | None = None, email: str | None = None, is_bot: bool = False,
                 is_admin: bool = False, deleted: bool = False) -> dict[str, Any]:
        """Make ``users.info`` know a user; ``team_id`` other than ours is a Slack Connect user."""
        name = name or user_id.lower()
        user = {
            "id": user_id, "team_id": team_id or self.workspace.team_id, "name": name,
            "deleted": deleted, "real_name": real_name or name, "tz": "Europe/London",
            "is_admin": is_admin, "is_owner": False, "is_bot": is_bot, "is_app_user": False,
            "is_restricted": False, "is_ultra_restricted": False, "updated": 1700000000,
            "profile": {"real_name": real_name or name, "display_name": name,
                        "email": email or f"{name}@example.com",
                        "team": team_id or self.workspace.team_id},
        }
        if is_bot:
            user["profile"].pop("email")
            user["profile"]["bot_id"] = self.workspace.bot_id
        with self._cond:
            self._state.users[user_id] = user
        return user

    def add_channel(self, channel_id: str, *, name: str | None = None, is_private: bool = False,
                    is_member: bool = True, is_archived: bool = False) -> dict[str, Any]:
        """Make ``conversations.info`` answer a specific channel (others are synthesised)."""
        channel = self._channel_shape(channel_id, name=name, is_private=is_private,
                                      is_member=is_member, is_archived=is_archived)
        with self._cond:
            self._state.channels[channel_id] = channel
        return channel

    def seed_message(self, channel: str, text: str = "", *, blocks: list[dict[str, Any]] | None = None,
                     ts: str | None = None) -> str:
        """Pretend the bot posted a message earlier (e.g. before a restart); returns its ts.

        Lets a test build a click on an existing card without going through the
        app's own posting code first, and still have ``chat.update`` succeed.
        """
        with self._cond:
            ts = ts or self._next_ts()
            self._state.messages[(channel, ts)] = self._message_shape(ts, text, blocks)
        return ts

    def offer_socket_mode(self, url: str | None) -> None:
        """The WebSocket URL ``apps.connections.open`` hands out (a ``FakeSocketMode``'s); None withdraws it.

        Slack gives each call a fresh ``wss://`` URL with a one-time ticket;
        a test double on loopback offers the same ``ws://`` URL every time.
        """
        with self._cond:
            self._state.socket_mode_url = url

    # ----------------------------------------------------------------------- faults

    def rate_limit(self, method: str | None = None, *, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with HTTP 429 and ``Retry-After``.

        ``method=None`` means every Web API method; response_url posts are
        only faulted when named ``"webhook"``, here and in the knobs below.
        """
        self._add_fault(_Fault(method, times, 429, "ratelimited", retry_after))

    def limit_rate(self, method: str, per_second: float, *, burst: float = 1.0) -> None:
        """Enforce a rate on ``method`` per channel, as Slack does for posting: a token bucket of ``burst``
        refilled at ``per_second``; a call finding it empty gets 429 with the seconds until the next token."""
        with self._cond:
            self._state.limits[method] = (per_second, burst)

    def server_error(self, method: str | None = None, *, times: int = 1, status: int = 503) -> None:
        """Answer the next ``times`` calls with an HTTP 5xx and an HTML page, as a load balancer does."""
        if not 500 <= status <= 599:
            raise ValueError(f"server_error needs a 5xx status, not {status}")
        self._add_fault(_Fault(method, times, status, "server_error"))

    def fail(self, method: str | None, error: str, *, times: int = 1) -> None:
        """Answer the next ``times`` calls with HTTP 200 ``{"ok": false, "error": error}``."""
        self._add_fault(_Fault(method, times, 200, error))

    def set_latency(self, seconds: float, method: str | None = None) -> None:
        """Delay every answer (to ``method`` only, if given) by ``seconds``; 0 removes it."""
        with self._cond:
            if seconds > 0:
                self._state.latency[method] = seconds
            else:
                self._state.latency.pop(method, None)

    def clear_faults(self) -> None:
        """Drop pending faults and latency, e.g. between phases of one test."""
        with self._cond:
            self._state.faults.clear()
            self._state.latency.clear()

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be at least 1")
        with self._cond:
            self._state.faults.append(fault)

    # ------------------------------------------------------------------- inspection

    def calls(self, method: str | None = None) -> list[Call]:
        """Every recorded call (of ``method``), oldest first, faulted ones included."""
        with self._cond:
            return [c for c in self._state.calls if method is None or c.method == method]

    def last_call(self, method: str) -> Call:
        """The latest call of ``method``; fails the test if there was none."""
        calls = self.calls(method)
        assert calls, f"no {method} call was made; calls: {self.summary()}"
        return calls[-1]

    def webhook_posts(self, name: str | None = None) -> list[Call]:
        """Posts to ``webhook_url(name)`` (all webhook posts if ``name`` is None)."""
        posts = self.calls("webhook")
        return posts if name is None else [p for p in posts if p.path == urlsplit(self.webhook_url(name)).path]

    def wait_for_calls(self, method: str, count: int = 1, timeout: float = 2.0) -> list[Call]:
        """Block until at least ``count`` calls of ``method`` arrived; return them.

        Listeners run after Bolt has acked, so a test must wait for their API
        calls. This wakes as soon as a call is recorded (no fixed sleeps) and
        fails the test with the calls seen so far when ``timeout`` passes.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.calls(method)
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} {method} call(s) within {timeout}s, "
                                         f"got {len(found)}; calls: {self.summary()}")
                self._cond.wait(left)

    def wait_for_webhook_posts(self, count: int = 1, timeout: float = 2.0) -> list[Call]:
        """``wait_for_calls`` for ``respond()``/``response_url`` posts."""
        return self.wait_for_calls("webhook", count, timeout)

    def summary(self) -> list[str]:
        """A one-line-per-call digest for assertion messages."""
        return [f"{c.method} -> {c.status} {(c.response or {}).get('error', '')}".rstrip() for c in self.calls()]

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The current state of a message the bot posted (after any ``chat.update``)."""
        with self._cond:
            found = self._state.messages.get((channel, ts))
            return _copy(found) if found is not None else None

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Messages the bot posted (in ``channel``), oldest first."""
        with self._cond:
            keys = sorted(k for k in self._state.messages if channel is None or k[0] == channel)
            return [{**_copy(self._state.messages[k]), "channel": k[0]} for k in keys]

    def view(self, view_id: str) -> dict[str, Any] | None:
        """The current state of a modal or Home view the app opened or published."""
        with self._cond:
            found = self._state.views.get(view_id)
            return _copy(found) if found is not None else None

    # ------------------------------------------------------------ request handling

    def handle(self, http_method: str, target: str, headers: Mapping[str, str], raw_body: bytes) -> Answer:
        """Answer one HTTP request; called by the server thread, usable directly too."""
        path = urlsplit(target).path
        method = _method_for(path)
        lowered = {name.lower(): value for name, value in headers.items()}  # urllib sends "Content-type"
        content_type = lowered.get("content-type", "")
        authorization = lowered.get("authorization")
        if method == "upload":  # the bytes of a file, to the URL files.getUploadURLExternal gave
            return self._upload(http_method, path, lowered, raw_body)
        args = _parse_args(target, content_type, raw_body)
        self._sleep_latency(method)
        status, extra_headers, response = self._answer(method, args, authorization)
        body = json.dumps(response).encode() if response is not None else _error_page(status)
        call = Call(method=method, args=args, authorization=authorization, at=time.time(),
                    http_method=http_method, path=path, content_type=content_type, raw_body=raw_body,
                    headers=lowered, status=status, response=response)
        with self._cond:
            self._state.calls.append(call)
            self._cond.notify_all()
        kind = "application/json; charset=utf-8" if response is not None else "text/html; charset=utf-8"
        return status, {"Content-Type": kind, **extra_headers}, body

    def file(self, file_id: str) -> dict[str, Any] | None:
        """A file the app uploaded: its name, title, bytes, and where it was shared once complete."""
        with self._cond:
            found = self._state.files.get(file_id)
            return dict(found) if found is not None else None

    def _upload(self, http_method: str, path: str, headers: dict[str, str], raw_body: bytes) -> Answer:
        file_id = path.rsplit("/", 1)[-1]
        with self._cond:
            fault = self._take_fault("upload")
            known = self._state.files.get(file_id)
            if fault is not None:
                status = fault.status if fault.status >= 400 else 500
            elif known is None:
                status = 404
            else:
                known["content"] = raw_body
                status = 200
            call = Call(method="upload", args={"file_id": file_id}, authorization=headers.get("authorization"),
                        at=time.time(), http_method=http_method, path=path,
                        content_type=headers.get("content-type", ""), raw_body=raw_body, headers=headers,
                        status=status, response=None)
            self._state.calls.append(call)
            self._cond.notify_all()
        body = f"OK - {len(raw_body)}".encode() if status == 200 else _error_page(status)
        return status, {"Content-Type": "text/plain"}, body

    def _sleep_latency(self, method: str) -> None:
        with self._cond:
            delay = max(self._state.latency.get(method, 0.0), self._state.latency.get(None, 0.0))
        if delay:
            time.sleep(delay)

    def _answer(self, method: str, args: dict[str, Any],
                authorization: str | None) -> tuple[int, dict[str, str], dict[str, Any] | None]:
        with self._cond:
            fault = self._take_fault(method)
            if fault is not None:
                return _fault_answer(fault)
            if method == "webhook":
                return 200, {}, {"ok": True}
            if method not in self._methods:
                return 200, {}, {"ok": False, "error": "unknown_method"}
            wait = self._rate_limited(method, str(args.get("channel") or args.get("channel_id") or ""))
            if wait:
                return 429, {"Retry-After": str(wait)}, {"ok": False, "error": "ratelimited"}
            auth_error = self._auth_error(method, authorization, args)
            if auth_error:
                return 200, {}, {"ok": False, "error": auth_error}
            # A copy: the stored message or view changes later, the recorded answer must not.
            return 200, {}, _copy(self._methods[method](args))

    def _rate_limited(self, method: str, channel: str) -> int:
        """Whole seconds to wait before ``method`` may post to ``channel`` again; 0 when it may now."""
        limit = self._state.limits.get(method)
        if limit is None:
            return 0
        rate, burst = limit
        now = time.monotonic()
        tokens, counted = self._state.buckets.get((method, channel), (burst, now))
        tokens = min(burst, tokens + (now - counted) * rate)
        if tokens < 1.0:
            self._state.buckets[(method, channel)] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / rate))
        self._state.buckets[(method, channel)] = (tokens - 1.0, now)
        return 0

    def _take_fault(self, method: str) -> _Fault | None:
        for fault in self._state.faults:
            if fault.matches(method):
                fault.remaining -= 1
                return fault
        return None

    def _auth_error(self, method: str, authorization: str | None, args: Mapping[str, Any]) -> str | None:
        """Slack's answer to the wrong kind of token: a bot token where an app token belongs, or the reverse."""
        token = None
        if authorization and authorization.startswith("Bearer "):
            token = authorization[len("Bearer "):]
        elif isinstance(args.get("token"), str):
            if method in APP_TOKEN_METHODS:
                return "invalid_auth"  # documented: this method takes its token from the header only
            token = args["token"]
        if not token:
            return "not_authed"
        wanted = self.app_token if method in APP_TOKEN_METHODS else self.token
        if token == wanted:
            return None
        return "not_allowed_token_type" if token in (self.token, self.app_token) else "invalid_auth"

    # ----------------------------------------------------- Web API methods (locked)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        ws = self.workspace
        return {"ok": True, "url": ws.url, "team": ws.team, "user": ws.bot_name, "team_id": ws.team_id,
                "user_id": ws.bot_user_id, "bot_id": ws.bot_id, "enterprise_id": ws.enterprise_id,
                "is_enterprise_install": False}

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        url = self._state.socket_mode_url
        if url is None:  # not a Slack error: the test forgot to start a FakeSocketMode and offer its URL
            return {"ok": False, "error": "fake_slack_offers_no_socket_mode_url"}
        return {"ok": True, "url": url}

    def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        error = _post_arguments_error(args)
        if error:
            return {"ok": False, "error": error}
        channel = _conversation_id(str(args["channel"]))
        ts = self._next_ts()
        message = self._message_shape(ts, args.get("text", ""), args.get("blocks"))
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        self._state.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        message = self._state.messages.get((channel, ts))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if "text" in args:
            message["text"] = args["text"]
        if "blocks" in args:  # Slack keeps the old blocks when none are sent; [] clears them
            message["blocks"] = args["blocks"]
        message["edited"] = {"user": self.workspace.bot_user_id, "ts": self._next_ts()}
        return {"ok": True, "channel": channel, "ts": ts, "text": message.get("text", ""), "message": message}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        """The app deletes a card it posted twice (two workers raced); the message is gone afterwards."""
        channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if self._state.messages.pop((channel, ts), None) is None:
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        error = _post_arguments_error(args)
        if error:
            return {"ok": False, "error": error}
        if not args.get("user"):
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "message_ts": self._next_ts()}  # ephemeral: never stored, so never updatable

    def _chat_get_permalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel", "")), str(args.get("message_ts", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not ts:
            return {"ok": False, "error": "message_not_found"}
        link = f"{self.workspace.url}archives/{channel}/p{ts.replace('.', '')}"
        return {"ok": True, "channel": channel, "permalink": link}

    def _files_get_upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("filename") or not str(args.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = self._next_id("F")
        self._state.files[file_id] = {"id": file_id, "filename": args["filename"], "length": int(args["length"]),
                                      "title": None, "content": None, "channel": None, "thread_ts": None,
                                      "complete": False}
        return {"ok": True, "file_id": file_id, "upload_url": f"{self.root_url}/upload/{file_id}"}

    def _files_complete_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files")
        if isinstance(files, str):
            files = json.loads(files)
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}
        done = []
        for entry in files:
            found = self._state.files.get(str(entry.get("id")))
            if found is None or found["content"] is None or len(found["content"]) != found["length"]:
                return {"ok": False, "error": "file_not_found"}
            found.update(title=entry.get("title"), channel=args.get("channel_id"), thread_ts=args.get("thread_ts"),
                         complete=True)
            done.append({"id": found["id"], "name": found["filename"], "title": found["title"]})
        return {"ok": True, "files": done}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        error = self._exchange_trigger(args) or _view_argument_error(args)
        if error:
            return {"ok": False, "error": error}
        view = self._new_view(args["view"], previous_view_id=None)
        return {"ok": True, "view": view}

    def _views_push(self, args: dict[str, Any]) -> dict[str, Any]:
        error = self._exchange_trigger(args) or _view_argument_error(args)
        if error:
            return {"ok": False, "error": error}
        view = self._new_view(args["view"], previous_view_id=self._latest_modal_id())
        return {"ok": True, "view": view}

    def _views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        error = _view_argument_error(args)
        if error:
            return {"ok": False, "error": error}
        current = self._find_view(args.get("view_id"), args.get("external_id"))
        if current is None:
            return {"ok": False, "error": "not_found"}
        if args.get("hash") and args["hash"] != current["hash"]:
            return {"ok": False, "error": "hash_conflict"}
        current.update(self._view_fields(args["view"]))
        current["hash"] = self._next_hash()
        return {"ok": True, "view": current}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = str(args.get("user_id", ""))
        if user_id not in self._state.users:
            return {"ok": False, "error": "user_not_found"}
        error = _view_argument_error(args)
        if error:
            return {"ok": False, "error": error}
        existing = self._state.home_views.get(user_id)
        if existing is not None:
            view = self._state.views[existing]
            view.update(self._view_fields(args["view"]))
            view["hash"] = self._next_hash()
        else:
            view = self._new_view(args["view"], previous_view_id=None)
            self._state.home_views[user_id] = view["id"]
        return {"ok": True, "view": view}

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        channel_id = str(args.get("channel", ""))
        channel = self._state.channels.get(channel_id)
        if channel is None and channel_id[:1] in ("C", "G", "D"):
            channel = self._channel_shape(channel_id)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "channel": channel}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self._state.users.get(str(args.get("user", "")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user}

    # ------------------------------------------------------------ shapes and ids

    def _next_ts(self) -> str:
        """A message ts like Slack's: wall-clock microseconds, unique and increasing."""
        micros = max(int(time.time() * 1_000_000), self._state.last_ts_micros + 1)
        self._state.last_ts_micros = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        number = self._state.next_id
        self._state.next_id += 1
        return f"{prefix}{number:08d}"

    def _next_hash(self) -> str:
        return f"{int(time.time())}.{self._next_id('h')}"

    def _message_shape(self, ts: str, text: str, blocks: list[dict[str, Any]] | None) -> dict[str, Any]:
        ws = self.workspace
        message: dict[str, Any] = {"type": "message", "user": ws.bot_user_id, "bot_id": ws.bot_id,
                                   "app_id": ws.app_id, "team": ws.team_id, "text": text, "ts": ts}
        if blocks is not None:
            message["blocks"] = blocks
        return message

    def _channel_shape(self, channel_id: str, *, name: str | None = None, is_private: bool = False,
                       is_member: bool = True, is_archived: bool = False) -> dict[str, Any]:
        is_im = channel_id.startswith("D")
        return {"id": channel_id, "name": name or channel_id.lower(), "is_channel": not is_im and not is_private,
                "is_group": False, "is_im": is_im, "is_private": is_private or is_im, "is_archived": is_archived,
                "is_member": is_member, "is_ext_shared": False, "context_team_id": self.workspace.team_id,
                "created": 1700000000}

    def _exchange_trigger(self, args: Mapping[str, Any]) -> str | None:
        """Slack lets a trigger_id open one view, once; a second use is ``exchanged_trigger_id``."""
        trigger_id = args.get("trigger_id")
        if not trigger_id:
            return "invalid_arguments"
        if trigger_id in self._state.used_trigger_ids:
            return "exchanged_trigger_id"
        self._state.used_trigger_ids.add(trigger_id)
        return None

    def _new_view(self, requested: Mapping[str, Any], *, previous_view_id: str | None) -> dict[str, Any]:
        ws = self.workspace
        view_id = self._next_id("V")
        view = {"id": view_id, "team_id": ws.team_id, "type": "modal", "blocks": [], "private_metadata": "",
                "callback_id": "", "state": {"values": {}}, "hash": self._next_hash(), "clear_on_close": False,
                "notify_on_close": False, "root_view_id": view_id, "previous_view_id": previous_view_id,
                "app_id": ws.app_id, "external_id": "", "app_installed_team_id": ws.team_id, "bot_id": ws.bot_id}
        view.update(self._view_fields(requested))
        self._state.views[view_id] = view
        return view

    @staticmethod
    def _view_fields(requested: Mapping[str, Any]) -> dict[str, Any]:
        allowed = ("type", "title", "submit", "close", "blocks", "private_metadata", "callback_id",
                   "clear_on_close", "notify_on_close", "external_id", "submit_disabled")
        return {k: v for k, v in requested.items() if k in allowed}

    def _find_view(self, view_id: Any, external_id: Any) -> dict[str, Any] | None:
        if view_id:
            return self._state.views.get(str(view_id))
        if external_id:
            return next((v for v in self._state.views.values() if v.get("external_id") == external_id), None)
        return None

    def _latest_modal_id(self) -> str | None:
        modals = [v["id"] for v in self._state.views.values() if v.get("type") == "modal"]
        return modals[-1] if modals else None


# -------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    """Threaded, so a slow (latency-injected) answer does not hold up concurrent calls.

    The listen backlog is raised from socketserver's 5: with a burst of
    concurrent clients (a double-click race, a fan-out) the kernel would drop
    the extra connection attempts and the clients would retry them a second later.
    """

    daemon_threads = True
    request_queue_size = 128
    fake: FakeSlack


class _Handler(BaseHTTPRequestHandler):
    """Hands each request to ``FakeSlack.handle``; one connection per request (HTTP/1.0)."""

    server: _Server

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:  # the async SDK sends conversations.info / users.info as GET
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        status, answer_headers, body = self.server.fake.handle(self.command, self.path, headers, raw_body)
        self.send_response(status)
        for name, value in answer_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; the call log is the record."""


def _method_for(path: str) -> str:
    if path.startswith("/api/"):
        return path[len("/api/"):]
    if path == "/webhook" or path.startswith("/webhook/"):
        return "webhook"
    if path.startswith("/upload/"):
        return "upload"
    return path  # answered as an unknown method, and recorded, so a wrong base_url is visible


def _parse_args(target: str, content_type: str, raw_body: bytes) -> dict[str, Any]:
    """Query string plus body, decoded the way Slack does for form and JSON bodies."""
    args: dict[str, Any] = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
    if raw_body and content_type.startswith("application/json"):
        decoded = json.loads(raw_body)
        if isinstance(decoded, dict):
            args.update(decoded)
    elif raw_body:
        args.update(parse_qsl(raw_body.decode("utf-8"), keep_blank_values=True))
    for name in JSON_ARGUMENTS:
        if isinstance(args.get(name), str):
            try:
                args[name] = json.loads(args[name])
            except json.JSONDecodeError:
                pass  # Slack would answer invalid_blocks; keep what was sent so the test can see it
    return args


def _fault_answer(fault: _Fault) -> tuple[int, dict[str, str], dict[str, Any] | None]:
    if fault.status == 429:
        return 429, {"Retry-After": str(fault.retry_after)}, {"ok": False, "error": "ratelimited"}
    if fault.status >= 500:
        return fault.status, {}, None
    return 200, {}, {"ok": False, "error": fault.error}


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of JSON-shaped data, detached from the fake's live state."""
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied


def _error_page(status: int) -> bytes:
    return f"<html><body><h1>{status} {HTTPStatus(status).phrase}</h1></body></html>".encode()


def _post_arguments_error(args: Mapping[str, Any]) -> str | None:
    if not args.get("channel"):
        return "channel_not_found"
    if not (args.get("text") or args.get("blocks") or args.get("attachments")):
        return "no_text"
    return None


def _view_argument_error(args: Mapping[str, Any]) -> str | None:
    return None if isinstance(args.get("view"), dict) else "invalid_arguments"


def _conversation_id(channel: str) -> str:
    """Posting to a user id lands in the DM with them; Slack answers with the D… id.

    The app must store the returned channel, not the user id, or a later
    ``chat.update`` misses: the fake keeps that behaviour so the bug shows.
    """
    return "D" + channel[1:] if channel[:1] in ("U", "W") else channel


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A running ``FakeSlack`` for one test, stopped afterwards."""
    with FakeSlack() as fake:
        yield fake
