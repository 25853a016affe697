"""Buttons, menus and modals: each acknowledges at once, then asks core to make the change.

The order is always the same: ``ack()`` first (Slack shows an error after
3 s); a modal is opened right after it, while its ``trigger_id`` is fresh;
the change itself is one core service call, which checks every rule again
(role, state, limit, KYC) and is a compare-and-set, so of two people
clicking at once exactly one wins. The loser, and anyone core refuses, gets
one ephemeral sentence saying why (``SR-4 was already claimed by Alice``).
Nobody is told of success in a private message: the card itself changes,
for everyone, when the outbox updates it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot import blocks as b
from bot import modals
from bot.acknowledge import AckFirst
from bot.guard import agent_of
from core import services
from core.errors import ChangeUncertain, InvalidInput, StoreUnavailable, SupportdeskError
from core.facade import AsyncCore
from core.queries import get_message, reply_preview
from core.services.cards import approval_card as approval_card_view
from core.services.cards import request_card
from core.views import ApprovalCard, RequestCard

log = logging.getLogger("supportdesk.slack")

STORE_DOWN = "The store is not answering right now, so nothing was done. Try again in a minute."
CREATE_REQUEST_SHORTCUT = "create_request"  # the message shortcut's callback_id, as in the app manifest
Changed = Callable[[], None]


def register(app: AsyncApp, core: AsyncCore, changed: Changed, ack_first: AckFirst) -> None:
    """Every card action and modal submission; ``changed`` wakes the card delivery after a change."""
    act = _Actions(core, changed)
    app.action(b.ACTION_CLAIM)(ack_first(act.claim))
    app.action(b.ACTION_ASSIGN)(ack_first(act.assign))
    app.action(b.ACTION_RESOLVE)(ack_first(act.open_resolve))
    app.action(b.ACTION_REOPEN)(ack_first(act.reopen))
    app.action(b.ACTION_REPLY)(ack_first(act.open_reply))
    app.action(b.ACTION_REQUEST_APPROVAL)(ack_first(act.open_request_approval))
    app.action(b.ACTION_SET_PRIORITY)(ack_first(act.set_priority))
    app.action(b.ACTION_MORE)(ack_first(act.more))
    app.action(b.ACTION_SHOW_MESSAGE)(ack_first(act.show_message))
    app.action(b.ACTION_APPROVE)(ack_first(act.approve))
    app.action(b.ACTION_REJECT)(ack_first(act.open_reject))
    app.view(modals.RESOLVE)(ack_first(act.submit_resolve))
    app.view(modals.REPLY)(ack_first(act.submit_reply))
    app.view(modals.REQUEST_APPROVAL)(ack_first(act.submit_request_approval))
    app.view(modals.MERGE)(ack_first(act.submit_merge))
    app.view(modals.REJECT)(ack_first(act.submit_reject))
    app.shortcut(CREATE_REQUEST_SHORTCUT)(ack_first(act.open_new_from_message))
    app.view(modals.NEW_REQUEST)(ack_first(act.submit_new))


class _Actions:
    def __init__(self, core: AsyncCore, changed: Changed) -> None:
        self.core = core
        self.changed = changed

    # --- one click, one change ---------------------------------------------------------------

    async def claim(self, ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext,
                    respond: AsyncRespond) -> None:
        await ack()
        key = _value(body)
        await self._change(respond, services.claim, key, actor=agent_of(context).slack_user_id)

    async def assign(self, ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext,
                     respond: AsyncRespond) -> None:
        await ack()
        action = _action(body)
        key = _key_of_card(body)
        to = action.get("selected_user")
        if not key or not to:
            await _tell(respond, "Pick a person to assign the request to.")
            return
        await self._change(respond, services.assign, key, to=to, actor=agent_of(context).slack_user_id)

    async def reopen(self, ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext,
                     respond: AsyncRespond) -> None:
        await ack()
        await self._change(respond, services.reopen, _value(body), actor=agent_of(context).slack_user_id)

    async def set_priority(self, ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext,
                           respond: AsyncRespond) -> None:
        await ack()
        key, priority = b.split_choice((_action(body).get("selected_option") or {}).get("value", ""))
        await self._change(respond, services.set_priority, key, priority, actor=agent_of(context).slack_user_id)

    async def more(self, ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext, respond: AsyncRespond,
                   client: AsyncWebClient) -> None:
        await ack()
        key, choice = b.split_choice((_action(body).get("selected_option") or {}).get("value", ""))
        actor = agent_of(context).slack_user_id
        if choice == b.MORE_MERGE:
            await client.views_open(trigger_id=body["trigger_id"], view=modals.merge_modal(key))
        elif choice == b.MORE_WAIT_ON_CUSTOMER:
            await self._change(respond, services.wait_on_customer, key, actor=actor)
        elif choice == b.MORE_NOT_A_REQUEST:
            await self._change(respond, services.dismiss, key, reason="not a request (from Slack)", actor=actor)
        else:
            await _tell(respond, "That menu entry is not one supportdesk knows.")

    async def approve(self, ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext,
                      respond: AsyncRespond) -> None:
        """Slack has shown the confirmation dialog already (the button carries it)."""
        await ack()
        approval_id = _int(_value(body))
        await self._change(respond, services.decide_approval, approval_id, approve=True,
                           actor=agent_of(context).slack_user_id)

    # --- clicks that open a modal ------------------------------------------------------------

    async def open_resolve(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await client.views_open(trigger_id=body["trigger_id"], view=modals.resolve_modal(_value(body)))

    async def open_reply(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                         respond: AsyncRespond) -> None:
        await ack()
        await self._open(body, client, respond, reply_preview, _value(body), modals.reply_modal)

    async def open_request_approval(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                                    respond: AsyncRespond) -> None:
        await ack()
        key = _value(body)

        def draw(card: RequestCard) -> dict[str, Any]:
            currency = card.disputed_currency or (card.invoice.currency if card.invoice else None)
            return modals.request_approval_modal(key, currency)

        await self._open(body, client, respond, request_card, key, draw)

    async def open_reject(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                          respond: AsyncRespond) -> None:
        await ack()
        approval_id = _int(_value(body))

        def draw(card: ApprovalCard) -> dict[str, Any]:
            amount = b.money(card.amount_minor, card.currency)
            return modals.reject_modal(approval_id, f"{card.kind.replace('_', ' ')} of {amount} on {card.request_key}")

        await self._open(body, client, respond, approval_card_view, approval_id, draw)

    async def show_message(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                           respond: AsyncRespond) -> None:
        await ack()
        await self._open(body, client, respond, get_message, _int(_value(body)),
                         lambda found: b.full_message_modal(found[1]))

    async def _open(self, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond,
                    query: Callable[..., Any], arg: Any, draw: Callable[[Any], dict[str, Any]]) -> None:
        """Read what a modal shows, then open it; if core refuses (gone, not allowed), say why instead."""
        try:
            found = await self.core.read(query, arg)
        except SupportdeskError as exc:
            await _tell(respond, str(exc))
            return
        await client.views_open(trigger_id=body["trigger_id"], view=draw(found))

    async def open_new_from_message(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        """"Create support request" on a message: the form opens with the message's text, and its author's
        e-mail address when Slack tells us (``users:read.email``)."""
        await ack()
        message = body.get("message") or {}
        text = str(message.get("text") or "")
        requester = await _email_of(client, message.get("user"))
        first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
        source = {"channel": str((body.get("channel") or {}).get("id") or ""), "ts": str(message.get("ts") or "")}
        view = modals.new_request_modal(requester=requester, subject=first_line[:120] or None,
                                        body=text[:modals.BODY_MAX] or None, source=source)
        await client.views_open(trigger_id=body["trigger_id"], view=view)

    # --- modal submissions: answer in the modal when the input is wrong ------------------------

    async def submit_new(self, ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext) -> None:
        submitted = modals.values(view)
        source = modals.metadata(view).get("source") or {}
        # The same Slack message logged twice is one request: its Message-ID is fixed by the message.
        message_id = (f"<slack.{source['channel']}.{source['ts']}@slack.invalid>"
                      if source.get("channel") and source.get("ts") else None)
        requester = (submitted.get("requester") or "").strip()
        field = "requester" if "@" not in requester else "subject"
        mail = services.InboundMail(from_address=requester, subject=submitted.get("subject") or "",
                                    body_text=submitted.get("body") or "", message_id=message_id)
        await self._submit(ack, field, services.open_request, channel="slack", mail=mail,
                           priority=submitted.get("priority") or "normal", actor=agent_of(context).slack_user_id)

    async def submit_resolve(self, ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext) -> None:
        submitted = modals.values(view)
        key = modals.metadata(view).get("key", "")
        await self._submit(ack, "note", services.resolve, key, note=submitted.get("note") or "",
                           code=submitted.get("code"), actor=agent_of(context).slack_user_id)

    async def submit_reply(self, ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext) -> None:
        key = modals.metadata(view).get("key", "")
        await self._submit(ack, "body", services.reply, key, modals.values(view).get("body") or "",
                           actor=agent_of(context).slack_user_id)

    async def submit_request_approval(self, ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext) -> None:
        submitted = modals.values(view)
        amount, errors = modals.approval_amount(submitted)
        if amount is None:
            await ack(response_action="errors", errors=errors)
            return
        key = modals.metadata(view).get("key", "")
        await self._submit(ack, "reason", services.request_approval, key, kind=submitted.get("kind") or "",
                           amount=amount, reason=submitted.get("reason") or "", actor=agent_of(context).slack_user_id)

    async def submit_merge(self, ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext) -> None:
        key = modals.metadata(view).get("key", "")
        into = (modals.values(view).get("into") or "").strip().upper()
        await self._submit(ack, "into", services.merge, key, into=into, actor=agent_of(context).slack_user_id)

    async def submit_reject(self, ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext) -> None:
        approval_id = _int(str(modals.metadata(view).get("approval", "")))
        await self._submit(ack, "reason", services.decide_approval, approval_id, approve=False,
                           note=modals.values(view).get("reason") or "", actor=agent_of(context).slack_user_id)

    # --- the two ways a change ends ----------------------------------------------------------

    async def _change(self, respond: AsyncRespond, service: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Make one change; tell the clicker, and only them, if it was refused."""
        try:
            await self.core.call(service, *args, **kwargs)
        except StoreUnavailable as exc:
            await _tell(respond, _store_trouble(exc))
            return
        except SupportdeskError as exc:
            await _tell(respond, str(exc))
            return
        self.changed()

    async def _submit(self, ack: AsyncAck, field: str, service: Callable[..., Any], *args: Any,
                      **kwargs: Any) -> None:
        """Make the change a modal asks for; a refusal is shown under ``field`` and the modal stays open.

        The submission is acknowledged only after core answered (well within
        Slack's 3 s for one transaction), because that answer decides
        whether the modal closes; so the change is made in serve itself
        (``call_before_ack``), never queued behind a burst of clicks' claims.
        """
        try:
            await self.core.call_before_ack(service, *args, **kwargs)
        except StoreUnavailable as exc:
            await ack(response_action="errors", errors={field: _store_trouble(exc)})
            return
        except SupportdeskError as exc:
            await ack(response_action="errors", errors={field: str(exc)[:300]})
            return
        await ack()
        self.changed()


def _store_trouble(exc: StoreUnavailable) -> str:
    """What to tell the user when the store did not answer: nothing was done, or it cannot be known."""
    return str(exc)[:300] if isinstance(exc, ChangeUncertain) else STORE_DOWN


def _action(body: dict[str, Any]) -> dict[str, Any]:
    actions = body.get("actions") or [{}]
    return actions[0]


def _value(body: dict[str, Any]) -> str:
    value = _action(body).get("value")
    if not value:
        raise InvalidInput("this button carries no value")
    return str(value)


def _key_of_card(body: dict[str, Any]) -> str | None:
    """The request a users_select belongs to: its block id names it, else the card's own buttons do."""
    block_id = str(_action(body).get("block_id") or "")
    if block_id.startswith(b.REQUEST_ACTIONS_BLOCK + ":"):
        return block_id.split(":", 1)[1]
    message = body.get("message") or {}
    return b.card_request_key(message.get("blocks") or [])


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidInput(f"{value!r} is not an id") from exc


async def _email_of(client: AsyncWebClient, user_id: object) -> str | None:
    """The Slack user's profile e-mail, or None when Slack does not say (no scope, a bot, an error)."""
    if not isinstance(user_id, str) or not user_id:
        return None
    try:
        response = await client.users_info(user=user_id)
    except Exception:  # noqa: BLE001 - prefilling is a convenience; the agent types the address instead
        return None
    email = ((response.get("user") or {}).get("profile") or {}).get("email")
    return str(email) if email else None


async def _tell(respond: AsyncRespond, text: str) -> None:
    """One ephemeral sentence to the person who clicked; failing to show it changes nothing."""
    try:
        await respond(text=f":no_entry_sign: {b.escape(text)}", response_type="ephemeral", replace_original=False)
    except Exception:  # noqa: BLE001 - the refusal stands even if Slack does not show it
        log.warning("could not show a refusal to the user", exc_info=True)

