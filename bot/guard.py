"""Who may use the app, and each Slack event handled once: Bolt middleware that runs before any listener.

Every interactive request (slash command, button, modal, shortcut) must come
from a user of our own workspace who is in the agents directory; anyone else
(a Slack Connect guest from another organisation, a colleague nobody set up)
gets one ephemeral line and nothing happens. What each role may do is
decided again in core at the moment of the change (claim needs an agent,
approve an approver within their limit, and so on): this gate only keeps
strangers out early and tells them why.

Who is an agent is remembered for :data:`DIRECTORY_TTL` seconds, so the
path to the acknowledgment does not wait for the database on every click;
core checks the agent again, from the store, when it makes the change.

Events API deliveries are claimed by ``event_id`` in the store before any
listener runs (:func:`core.services.slack_state.first_sighting`), so a retry
Slack sends to this or another instance is answered ``200`` and ignored.
An event is acknowledged as soon as its listener has started (Bolt
acknowledges events itself, and :mod:`bot.acknowledge` returns at once for
listeners without ``ack``), so a listener that fails is not retried by Slack
either way; claiming first loses nothing. The claim is made in serve itself
(``call_before_ack``): the acknowledgment waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncBoltContext, AsyncRespond
from slack_bolt.response import BoltResponse

from core.facade import AsyncCore
from core.queries import find_agent
from core.services.slack_state import first_sighting
from core.views import AgentRef

log = logging.getLogger("supportdesk.slack")

DIRECTORY_TTL = 30.0

Next = Callable[[], Awaitable[None]]

NOT_AN_AGENT = (
    "You are not set up as a supportdesk agent, so this did nothing. "
    "An admin can add you with `supportdesk import agents` (your Slack user id is `{user}`)."
)
OTHER_WORKSPACE = "supportdesk only takes requests from members of its own workspace, so this did nothing."


def agent_of(context: AsyncBoltContext) -> AgentRef:
    """The directory entry of the user behind this request, as the gate found it."""
    agent = context.get("agent")
    if not isinstance(agent, AgentRef):
        raise RuntimeError("agent_of() used on a request the agents gate did not see")
    return agent


class AgentDirectory:
    """``find_agent`` with a short memory: a click is acknowledged without a database round trip."""

    def __init__(self, core: AsyncCore, ttl: float = DIRECTORY_TTL) -> None:
        self._core = core
        self._ttl = ttl
        self._known: dict[str, tuple[AgentRef | None, float]] = {}
        self._loading: dict[str, asyncio.Future[AgentRef | None]] = {}

    async def find(self, user_id: str) -> AgentRef | None:
        now = time.monotonic()
        cached = self._known.get(user_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        pending = self._loading.get(user_id)
        if pending is None:  # clicks of one person arriving together share one lookup
            pending = asyncio.ensure_future(self._core.read(find_agent, user_id))
            self._loading[user_id] = pending
            pending.add_done_callback(lambda _: self._loading.pop(user_id, None))
        agent = await asyncio.shield(pending)
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[user_id] = (agent, time.monotonic() + self._ttl)
        return agent


def make_middleware(core: AsyncCore) -> list[Callable[..., Awaitable[Any]]]:
    """The app's global middleware: event de-duplication, then the agents gate.

    One middleware rather than two: Bolt prepares the arguments of each one
    for every request, and this runs before every acknowledgment.
    """
    directory = AgentDirectory(core)

    async def gate(body: dict[str, Any], context: AsyncBoltContext, respond: AsyncRespond,
                   next: Next) -> BoltResponse | None:
        kind = body.get("type")
        if kind == "event_callback" and body.get("event_id"):
            if not await core.call_before_ack(first_sighting, str(body["event_id"])):
                log.info("Slack event %s was handled already; this copy is ignored", body["event_id"])
                return BoltResponse(status=200, body="")
        if kind in ("event_callback", "url_verification", "app_rate_limited"):
            await next()  # events are not commands: their listeners decide whom they concern
            return None
        user_id, user_team = _user_of(body)
        home = home_team(context)
        if user_team and home and user_team != home:
            log.info("refused %s from %s of workspace %s (ours is %s)", _kind(body), user_id, user_team, home)
            return await _refusal(body, respond, OTHER_WORKSPACE)
        agent = await directory.find(user_id) if user_id else None
        if agent is None:
            log.info("refused %s from %s: not in the agents directory", _kind(body), user_id)
            return await _refusal(body, respond, NOT_AN_AGENT.format(user=user_id or "unknown"))
        context["agent"] = agent
        await next()
        return None

    return [gate]


def _user_of(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """The acting user's id and workspace, from a command (flat form fields) or an interaction payload."""
    user = body.get("user")
    if isinstance(user, dict):
        return user.get("id"), user.get("team_id")
    return body.get("user_id"), body.get("user_team") or None


def home_team(context: AsyncBoltContext) -> str | None:
    """The workspace our bot token belongs to (from ``auth.test``, which Bolt calls and caches)."""
    result = context.authorize_result
    return (result.team_id if result is not None else None) or None


def _kind(body: dict[str, Any]) -> str:
    return f"command {body['command']}" if "command" in body else str(body.get("type"))


async def _refusal(body: dict[str, Any], respond: AsyncRespond | None, text: str) -> BoltResponse:
    """Acknowledge, and say why in one ephemeral line.

    A slash command shows the acknowledgment's own text; a click or a
    shortcut has no such place, so the line goes to its ``response_url``;
    a modal submission is just closed.
    """
    if "command" in body:
        return BoltResponse(status=200, body={"response_type": "ephemeral", "text": text})
    if respond is not None and (body.get("response_url") or _first_response_url(body)):
        try:
            await respond(text=text, response_type="ephemeral", replace_original=False)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - the refusal stands even if Slack does not show it
            log.warning("could not tell the user why their %s was refused", _kind(body), exc_info=True)
    if body.get("type") == "view_submission":
        return BoltResponse(status=200, body={"response_action": "clear"})
    return BoltResponse(status=200, body="")


def _first_response_url(body: dict[str, Any]) -> str | None:
    urls = body.get("response_urls") or []
    return urls[0].get("response_url") if urls and isinstance(urls[0], dict) else None
