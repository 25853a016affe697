"""Signed Slack requests for tests, built the way Slack builds them.

Why: the app's first line of defence is Bolt's request verification, and the
payload shapes decide how Bolt routes a request (command, action, view,
shortcut, event). Tests that post hand-written dicts with a disabled verifier
prove nothing about either, so every request here is

* shaped like Slack's documented payloads (and bolt-python's own scenario
  tests, ``tests/scenario_tests/test_slash_command.py``, ``test_block_actions.py``,
  ``test_view_submission.py``, ``test_app_using_methods_in_class.py`` for
  ``message_action``, ``test_events_shared_channels.py`` for events), and
* signed exactly as https://api.slack.com/authentication/verifying-requests-from-slack
  documents: ``X-Slack-Signature: v0=`` + hex HMAC-SHA256(signing secret,
  ``v0:{timestamp}:{raw body}``) with ``X-Slack-Request-Timestamp: {timestamp}``.

The signature is computed here with ``hmac`` directly rather than with
``slack_sdk.signature.SignatureVerifier.generate_signature``, so the tests that
check it against the SDK's verifier compare two independent implementations.

Typical use::

    request = signed_interaction(block_actions(button("claim", "REQ-1"), message_ts=ts,
                                               response_url=fake.webhook_url()))
    result = post(f"{app_url}/slack/events", request)
    assert result.status == 200 and result.elapsed < 3
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from tests.slack.fake_slack import Workspace

DEFAULT_SIGNING_SECRET = "supportdesk-test-signing-secret"
VERIFICATION_TOKEN = "deprecated-verification-token"  # Slack still sends it; Bolt ignores it
MAX_AGE_SECONDS = 300  # Slack's replay window; Bolt rejects older timestamps
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

WORKSPACE = Workspace()
_sequence = itertools.count(1)


@dataclass(frozen=True)
class SlackTeam:
    """A workspace as it appears in payloads (``team`` object / ``team_id`` field)."""

    id: str
    domain: str
    enterprise_id: str | None = None


@dataclass(frozen=True)
class SlackUser:
    """A person as it appears in payloads; ``team_id`` is their own org's team."""

    id: str
    username: str
    team_id: str


@dataclass(frozen=True)
class SlackChannel:
    """A conversation as it appears in payloads (``channel`` object / ``channel_id``)."""

    id: str
    name: str


HOME_TEAM = SlackTeam(WORKSPACE.team_id, WORKSPACE.domain, WORKSPACE.enterprise_id)
PARTNER_TEAM = SlackTeam("T0PARTNER", "partner-corp")
AGENT = SlackUser("U0AGENT01", "alice", HOME_TEAM.id)
# A Slack Connect user: can see and click in a shared channel, belongs to another org.
EXTERNAL_USER = SlackUser("U0EXTERN1", "mallory", PARTNER_TEAM.id)
TRIAGE_CHANNEL = SlackChannel("C0TRIAGE1", "support-triage")
DEFAULT_RESPONSE_URL = "https://hooks.slack.com/actions/T0SUPPORT/1/not-a-real-url"


def _unique(prefix: str) -> str:
    return f"{prefix}{next(_sequence):06d}"


def _trigger_id() -> str:
    return f"{int(time.time())}.{_unique('')}.{_unique('trigger')}"


def _action_ts() -> str:
    return f"{time.time():.6f}"


# ---------------------------------------------------------------------- signing


@dataclass(frozen=True)
class Signing:
    """How to sign one request; the defaults make a valid, fresh, first delivery.

    ``stale`` dates the request ``MAX_AGE_SECONDS + 60`` seconds back (signed
    correctly for that time, so only its age is wrong); ``wrong_signature``
    signs with another secret (well-formed, just not ours); ``retry_num`` adds
    Slack's redelivery headers ``X-Slack-Retry-Num`` / ``X-Slack-Retry-Reason``.
    """

    secret: str = DEFAULT_SIGNING_SECRET
    timestamp: int | None = None
    stale: bool = False
    wrong_signature: bool = False
    retry_num: int | None = None
    retry_reason: str = "http_timeout"

    def request_timestamp(self) -> int:
        now = int(time.time()) if self.timestamp is None else self.timestamp
        return now - MAX_AGE_SECONDS - 60 if self.stale else now


@dataclass(frozen=True)
class SignedRequest:
    """A raw body and the headers Slack would send with it."""

    body: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.body.decode()


def signature(body: bytes, timestamp: int | str, secret: str = DEFAULT_SIGNING_SECRET) -> str:
    """``v0=`` + hex HMAC-SHA256(secret, ``v0:{timestamp}:{body}``), as Slack computes it."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def sign(body: bytes, content_type: str, signing: Signing = Signing()) -> SignedRequest:
    """Attach Slack's signature, timestamp and (optionally) retry headers to ``body``."""
    timestamp = signing.request_timestamp()
    secret = "not-" + signing.secret if signing.wrong_signature else signing.secret
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": signature(body, timestamp, secret),
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
    }
    if signing.retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(signing.retry_num)
        headers["X-Slack-Retry-Reason"] = signing.retry_reason
    return SignedRequest(body, headers)


def signed_slash_command(fields: Mapping[str, str], signing: Signing = Signing()) -> SignedRequest:
    """A slash command is a plain form post."""
    return sign(urlencode(fields).encode(), FORM, signing)


def signed_interaction(payload: Mapping[str, Any], signing: Signing = Signing()) -> SignedRequest:
    """Interactivity (actions, views, shortcuts) is a form post with one ``payload=<json>`` field."""
    return sign(urlencode({"payload": json.dumps(payload)}).encode(), FORM, signing)


def signed_event(payload: Mapping[str, Any], signing: Signing = Signing()) -> SignedRequest:
    """The Events API posts JSON."""
    return sign(json.dumps(payload).encode(), JSON, signing)


# ------------------------------------------------------------ slash commands


def slash_command(command: str = "/support", text: str = "", *, user: SlackUser = AGENT,
                  team: SlackTeam = HOME_TEAM, channel: SlackChannel = TRIAGE_CHANNEL,
                  response_url: str = DEFAULT_RESPONSE_URL, trigger_id: str | None = None,
                  api_app_id: str = WORKSPACE.app_id) -> dict[str, str]:
    """The form fields Slack posts for ``/command text``."""
    fields = {
        "token": VERIFICATION_TOKEN, "team_id": team.id, "team_domain": team.domain,
        "channel_id": channel.id, "channel_name": channel.name, "user_id": user.id,
        "user_name": user.username, "command": command, "text": text,
        "api_app_id": api_app_id, "is_enterprise_install": "false",
        "response_url": response_url, "trigger_id": trigger_id or _trigger_id(),
    }
    if team.enterprise_id:
        fields["enterprise_id"] = team.enterprise_id
    return fields


# ------------------------------------------------------------ block actions


def button(action_id: str, value: str, *, block_id: str = "actions", text: str = "Button") -> dict[str, Any]:
    """One clicked button, as it appears in ``actions``."""
    return {"action_id": action_id, "block_id": block_id, "type": "button", "value": value,
            "text": {"type": "plain_text", "text": text, "emoji": True}, "action_ts": _action_ts()}


def static_select(action_id: str, value: str, *, label: str | None = None,
                  block_id: str = "actions") -> dict[str, Any]:
    """A choice made in a ``static_select`` menu."""
    option = {"text": {"type": "plain_text", "text": label or value, "emoji": True}, "value": value}
    return {"action_id": action_id, "block_id": block_id, "type": "static_select",
            "selected_option": option, "action_ts": _action_ts()}


def users_select(action_id: str, selected_user: str, *, block_id: str = "actions") -> dict[str, Any]:
    """A person picked in a ``users_select`` menu (e.g. assign to)."""
    return {"action_id": action_id, "block_id": block_id, "type": "users_select",
            "selected_user": selected_user, "action_ts": _action_ts()}


def block_actions(*actions: dict[str, Any], user: SlackUser = AGENT, team: SlackTeam = HOME_TEAM,
                  channel: SlackChannel = TRIAGE_CHANNEL, message_ts: str = "1700000000.000100",
                  message: dict[str, Any] | None = None, response_url: str = DEFAULT_RESPONSE_URL,
                  trigger_id: str | None = None, api_app_id: str = WORKSPACE.app_id) -> dict[str, Any]:
    """A click on an interactive element of a message the bot posted.

    ``message_ts`` is the card's ts (``container.message_ts``), the key a
    listener uses for ``chat.update``. For a Slack Connect click pass
    ``user=EXTERNAL_USER`` (``user.team_id`` differs from ``team.id``).
    """
    if not actions:
        raise ValueError("block_actions needs at least one action")
    message = message or {"type": "message", "user": WORKSPACE.bot_user_id, "bot_id": WORKSPACE.bot_id,
                          "text": "support request", "ts": message_ts, "blocks": []}
    return {
        "type": "block_actions",
        "user": {"id": user.id, "username": user.username, "name": user.username, "team_id": user.team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel.id, "is_ephemeral": False},
        "trigger_id": trigger_id or _trigger_id(),
        "team": _team_object(team),
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel.id, "name": channel.name},
        "message": message,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": list(actions),
    }


# ------------------------------------------------------------ views and shortcuts


def view_submission(callback_id: str, values: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                    private_metadata: str = "", user: SlackUser = AGENT, team: SlackTeam = HOME_TEAM,
                    view_id: str | None = None, trigger_id: str | None = None,
                    response_urls: list[dict[str, str]] | None = None,
                    api_app_id: str = WORKSPACE.app_id) -> dict[str, Any]:
    """A modal's Submit: ``values`` is ``{block_id: {action_id: {"type": ..., "value": ...}}}``.

    ``view.app_installed_team_id`` is always our workspace; for a Slack Connect
    submission pass ``user=EXTERNAL_USER`` and, as bolt-python's
    ``connect_channel_payload`` shows Slack doing, ``team=PARTNER_TEAM``.
    """
    view_id = view_id or _unique("V")
    return {
        "type": "view_submission",
        "team": _team_object(team),
        "user": {"id": user.id, "username": user.username, "name": user.username, "team_id": user.team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id or _trigger_id(),
        "view": {
            "id": view_id, "team_id": team.id, "type": "modal", "blocks": [],
            "private_metadata": private_metadata, "callback_id": callback_id,
            "state": {"values": {block: dict(inner) for block, inner in values.items()}},
            "hash": f"{int(time.time())}.{_unique('h')}",
            "title": {"type": "plain_text", "text": "Support"},
            "close": {"type": "plain_text", "text": "Cancel"}, "submit": {"type": "plain_text", "text": "Submit"},
            "previous_view_id": None, "root_view_id": view_id, "app_id": api_app_id, "external_id": "",
            "app_installed_team_id": WORKSPACE.team_id, "bot_id": WORKSPACE.bot_id,
        },
        "response_urls": response_urls or [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def text_input(value: str) -> dict[str, Any]:
    """The state of a ``plain_text_input``, for ``view_submission`` values."""
    return {"type": "plain_text_input", "value": value}


def message_action(callback_id: str, message_text: str, *, message_ts: str = "1700000000.000200",
                   message_user: str = AGENT.id, user: SlackUser = AGENT, team: SlackTeam = HOME_TEAM,
                   channel: SlackChannel = TRIAGE_CHANNEL, response_url: str = DEFAULT_RESPONSE_URL,
                   trigger_id: str | None = None) -> dict[str, Any]:
    """A message shortcut ("More actions" on a message), e.g. "Create support request"."""
    return {
        "type": "message_action",
        "token": VERIFICATION_TOKEN,
        "action_ts": _action_ts(),
        "team": _team_object(team),
        "user": {"id": user.id, "username": user.username, "name": user.username, "team_id": user.team_id},
        "channel": {"id": channel.id, "name": channel.name},
        "is_enterprise_install": False,
        "enterprise": None,
        "callback_id": callback_id,
        "trigger_id": trigger_id or _trigger_id(),
        "message_ts": message_ts,
        "message": {"type": "message", "user": message_user, "text": message_text, "ts": message_ts,
                    "team": team.id},
        "response_url": response_url,
    }


# ------------------------------------------------------------------- Events API


def event_callback(event: Mapping[str, Any], *, team: SlackTeam = HOME_TEAM, event_id: str | None = None,
                   event_time: int | None = None, api_app_id: str = WORKSPACE.app_id,
                   is_ext_shared_channel: bool | None = None) -> dict[str, Any]:
    """The Events API envelope around ``event``; ``event_id`` is what to dedupe retries on.

    ``authorizations`` names the install the event is delivered for (our bot
    in our workspace). ``is_ext_shared_channel`` defaults to whether the
    event's user belongs to another team.
    """
    if is_ext_shared_channel is None:
        is_ext_shared_channel = event.get("user_team", team.id) != team.id
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team.id,
        "enterprise_id": team.enterprise_id,
        "api_app_id": api_app_id,
        "event": dict(event),
        "type": "event_callback",
        "event_id": event_id or _unique("Ev0"),
        "event_time": event_time if event_time is not None else int(time.time()),
        "authorizations": [{"enterprise_id": team.enterprise_id, "team_id": team.id,
                            "user_id": WORKSPACE.bot_user_id, "is_bot": True, "is_enterprise_install": False}],
        "is_ext_shared_channel": is_ext_shared_channel,
        "event_context": _unique("4-"),
    }


def message_event(text: str, *, user: SlackUser = AGENT, channel: SlackChannel = TRIAGE_CHANNEL,
                  ts: str | None = None, thread_ts: str | None = None) -> dict[str, Any]:
    """A ``message`` event posted by ``user``; a Slack Connect user carries their own team."""
    ts = ts or f"{time.time():.6f}"
    event: dict[str, Any] = {
        "type": "message", "channel": channel.id, "user": user.id, "text": text, "ts": ts,
        "event_ts": ts, "channel_type": "channel", "team": user.team_id,
        "user_team": user.team_id, "source_team": user.team_id,
        "client_msg_id": str(uuid.uuid4()),
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def url_verification(challenge: str = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P") -> dict[str, str]:
    """The handshake Slack sends when the Request URL is saved; the app must echo ``challenge``."""
    return {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}


def _team_object(team: SlackTeam) -> dict[str, Any]:
    obj: dict[str, Any] = {"id": team.id, "domain": team.domain}
    if team.enterprise_id:
        obj["enterprise_id"] = team.enterprise_id
    return obj


# ---------------------------------------------------------------------- posting


@dataclass(frozen=True)
class PostResult:
    """What the app answered, and how long it took (Slack gives up after 3 s)."""

    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes
    elapsed: float

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an env proxy


def post(url: str, request: SignedRequest, *, timeout: float = 5.0) -> PostResult:
    """POST ``request`` to ``url`` like Slack does; non-2xx answers are returned, not raised."""
    http_request = urllib.request.Request(url, data=request.body, headers=request.headers, method="POST")
    started = time.perf_counter()
    try:
        with _opener.open(http_request, timeout=timeout) as response:
            status, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    elapsed = time.perf_counter() - started
    return PostResult(status, {k.lower(): v for k, v in headers.items()}, body, elapsed)


async def post_async(url: str, request: SignedRequest, *, timeout: float = 5.0) -> PostResult:
    """``post`` from inside an event loop (e.g. one serving the app) without blocking it."""
    return await asyncio.to_thread(post, url, request, timeout=timeout)
