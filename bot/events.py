"""Events API listeners: what agents write in a card's thread becomes an internal note.

Only a reply in the thread of a triage card counts, written by a person in
the agents directory of our own workspace; the bot's own posts (the mail
mirrored into the thread), edits, joins and other subtypes are ignored.
Notes never reach the customer: mail goes out only through the "Reply to
customer" modal.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.acknowledge import AckFirst
from bot.blocks import escape
from bot.guard import home_team
from core.errors import StoreUnavailable, SupportdeskError
from core.facade import AsyncCore
from core.queries import find_agent
from core.services import add_note
from core.services.slack_state import CardPlace, request_of_card

log = logging.getLogger("supportdesk.slack")

# Message subtypes that are still somebody typing in the thread.
PERSON_SUBTYPES = frozenset({None, "thread_broadcast", "file_share"})
NOTE_LIMIT = 40_000


NOT_KEPT = ("Your note on {key} was not kept: {why} Slack does not send it again, so please post it "
            "once more in a minute.")


def register(app: AsyncApp, core: AsyncCore, ack_first: AckFirst) -> None:
    @app.event("message")
    @ack_first
    async def on_message(event: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient) -> None:
        await note_from_thread(core, event, home_team(context), client)


async def note_from_thread(core: AsyncCore, event: dict[str, Any], home_team: str | None,
                           client: AsyncWebClient | None = None) -> str | None:
    """Store a thread reply on its card as an internal note; returns the request key, or None when ignored.

    Slack does not deliver an event twice once it was acknowledged, so a note
    the store could not take is not silently lost: its author is told, in a
    private line in the thread, to post it again.
    """
    if event.get("subtype") not in PERSON_SUBTYPES or event.get("bot_id"):
        return None
    thread_ts, channel, user = event.get("thread_ts"), event.get("channel"), event.get("user")
    text = (event.get("text") or "").strip()
    if not thread_ts or thread_ts == event.get("ts") or not channel or not user or not text:
        return None  # not a reply in a thread, or nothing to keep
    if home_team and event.get("user_team") and event["user_team"] != home_team:
        log.info("ignored a thread reply from %s of another workspace", user)
        return None
    key: str | None = None
    try:
        key = await core.read(request_of_card, CardPlace(str(channel), str(thread_ts)))
        if key is None:
            return None
        if await core.read(find_agent, str(user)) is None:
            log.info("ignored a reply on the card of %s from %s, who is not an agent", key, user)
            return None
        await core.call(add_note, key, text[:NOTE_LIMIT], actor=str(user))
    except StoreUnavailable as exc:
        log.warning("a note from Slack could not be stored now: %s", exc)
        await _tell_author(client, event, NOT_KEPT.format(key=key or "the request",
                                                          why="the store is not answering right now."))
        return None
    except SupportdeskError as exc:
        log.info("a note from Slack was refused: %s", exc)
        await _tell_author(client, event, NOT_KEPT.format(key=key or "the request", why=f"{exc}."))
        return None
    return key


async def _tell_author(client: AsyncWebClient | None, event: dict[str, Any], text: str) -> None:
    if client is None:
        return
    try:
        await client.chat_postEphemeral(channel=str(event["channel"]), user=str(event["user"]),
                                        thread_ts=str(event["thread_ts"]), text=escape(text))
    except Exception:  # noqa: BLE001 - the warning is in the log either way
        log.warning("could not tell %s that their note was not kept", event.get("user"), exc_info=True)


