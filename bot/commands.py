"""The slash command (``/sd`` by default): one handler per verb, each answer ephemeral to the agent who typed it.

Bolt acknowledges first (within Slack's 3 s) with a short "working on it"
only when the answer needs the store; every answer then goes to the
command's ``response_url``. A refusal from core (not an agent, wrong state,
somebody else was faster) is shown as its own sentence; the change itself,
when there is one, reaches the channel through the request's card, which
the outbox updates.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot import command_text as ct
from bot import modals
from bot.acknowledge import AckFirst
from bot.blocks import ACTION_DIGEST_LIST, escape, money, triage_card
from bot.metrics_text import metrics_period, metrics_text
from bot.guard import agent_of
from core import services
from core.errors import ChangeUncertain, StoreUnavailable, SupportdeskError
from core.facade import AsyncCore
from core.metrics import compute_metrics
from core.queries import ADJUSTMENT_DAYS, RequestFilter, breached_requests, customer_summary, list_requests
from core.services.cards import request_card
from core.services.mail_intake import list_quarantine
from core.services.sla import explain
from core.views import RequestView

log = logging.getLogger("supportdesk.slack")

LIST_LIMIT = 20
QUARANTINE_LIMIT = 15
STORE_DOWN = "The store is not answering right now, so nothing was done. Try again in a minute."


def register(app: AsyncApp, core: AsyncCore, command: str, ack_first: AckFirst) -> None:
    """Route ``command`` (e.g. ``/sd``) to :func:`answer`."""

    @app.command(command)
    @ack_first
    async def on_command(ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext,
                         respond: AsyncRespond, client: AsyncWebClient) -> None:
        parsed = ct.parse(body.get("text", ""))
        if isinstance(parsed, ct.Usage):
            await ack(response_type="ephemeral", text=_usage(parsed, command))
            return
        await ack()
        if isinstance(parsed, ct.New):
            await client.views_open(trigger_id=body["trigger_id"], view=modals.new_request_modal())
            return
        reply = await answer(core, parsed, agent_of(context).slack_user_id, command)
        await respond(response_type="ephemeral", replace_original=False, **reply)

    @app.action(ACTION_DIGEST_LIST)
    @ack_first
    async def on_digest_list(ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext,
                             respond: AsyncRespond) -> None:
        """A digest's drill-down button: the list behind a figure, as ``/sd list …`` would show it, to the clicker."""
        await ack()
        which = str(((body.get("actions") or [{}])[0]).get("value") or "")
        parsed: ct.Command = ct.Quarantine() if which == "quarantine" else ct.ListRequests(which)
        if which != "quarantine" and which not in ct.LIST_VIEWS:
            parsed = ct.Usage(f"there is no list called {which!r}")
        reply = (await answer(core, parsed, agent_of(context).slack_user_id, command)
                 if not isinstance(parsed, ct.Usage) else {"text": _usage(parsed, command)})
        await respond(response_type="ephemeral", replace_original=False, **reply)


async def answer(core: AsyncCore, command: ct.Command, actor: str, name: str) -> dict[str, Any]:
    """The ephemeral message (``text`` and maybe ``blocks``) that answers one parsed command."""
    handler = _HANDLERS.get(type(command))
    if handler is None:
        return {"text": ct.help_text(name)}
    try:
        return await handler(core, command, actor)
    except ChangeUncertain as exc:
        return {"text": f":warning: {escape(str(exc))}"}
    except StoreUnavailable:
        return {"text": STORE_DOWN}
    except SupportdeskError as exc:
        return {"text": f":no_entry_sign: {escape(str(exc))}"}


def _usage(usage: ct.Usage, name: str) -> str:
    help_text = ct.help_text(name)
    return f"{usage.problem.capitalize()}.\n\n{help_text}" if usage.problem else help_text


async def _show(core: AsyncCore, command: ct.Show, _actor: str) -> dict[str, Any]:
    card = await core.read(request_card, command.key)
    text, blocks = triage_card(card, now=core.store.clock.now())
    return {"text": text, "blocks": blocks}


async def _list(core: AsyncCore, command: ct.ListRequests, actor: str) -> dict[str, Any]:
    if command.view == "breached":
        requests = await core.read(breached_requests, LIST_LIMIT)
    else:
        where = {
            "open": RequestFilter(status="open", limit=LIST_LIMIT),
            "mine": RequestFilter(status="open", assignee=actor, limit=LIST_LIMIT),
            "unassigned": RequestFilter(status="new", limit=LIST_LIMIT),
            "waiting": RequestFilter(status="waiting_on_customer", limit=LIST_LIMIT),
        }[command.view]
        requests = await core.read(list_requests, where)
    if not requests:
        return {"text": f"No {command.view} requests."}
    lines = [_request_line(r) for r in requests]
    more = "" if len(requests) < LIST_LIMIT else f"\n_The newest {LIST_LIMIT} are shown._"
    return {"text": f"*{command.view.capitalize()} requests*\n" + "\n".join(lines) + more}


def _request_line(r: RequestView) -> str:
    who = f"<@{r.assignee}>" if r.assignee else "unassigned"
    return f"`{r.key}` {r.status.replace('_', ' ')} · {r.priority} · {who} · {escape(r.subject)[:120]}"


async def _claim(core: AsyncCore, command: ct.Claim, actor: str) -> dict[str, Any]:
    view = await core.call(services.claim, command.key, actor=actor)
    return {"text": f"You have {view.key}: {escape(view.subject)}"}


async def _assign(core: AsyncCore, command: ct.Assign, actor: str) -> dict[str, Any]:
    view = await core.call(services.assign, command.key, to=command.to, actor=actor)
    return {"text": f"{view.key} is now with <@{command.to}>."}


async def _resolve(core: AsyncCore, command: ct.Resolve, actor: str) -> dict[str, Any]:
    view = await core.call(services.resolve, command.key, note=command.note, actor=actor)
    return {"text": f"{view.key} is resolved; the customer gets the resolution notice."}


async def _reopen(core: AsyncCore, command: ct.Reopen, actor: str) -> dict[str, Any]:
    view = await core.call(services.reopen, command.key, actor=actor)
    return {"text": f"{view.key} is open again ({view.status.replace('_', ' ')})."}


async def _sla(core: AsyncCore, command: ct.Sla, _actor: str) -> dict[str, Any]:
    explanation = (await core.read(explain, command.key)).to_json()
    lines = [f"*{explanation['key']}* — policy {escape(explanation['policy']['name'])}"
             f" ({escape(explanation['policy']['why'])})"]
    for target in explanation["targets"]:
        due = f"due {target['due_at']}" if target["due_at"] else "no due time"
        met = f", met {target['met_at']}" if target["met_at"] else ""
        lines.append(f"• {target['target'].replace('_', ' ')}: *{target['state'].replace('_', ' ')}*, {due}{met}")
    return {"text": "\n".join(lines)}


async def _quarantine(core: AsyncCore, _command: ct.Quarantine, _actor: str) -> dict[str, Any]:
    held = await core.read(list_quarantine, limit=QUARANTINE_LIMIT)
    if not held:
        return {"text": "No mail is in quarantine."}
    lines = [
        f"`{m.id}` {m.reason or '?'} · {escape(m.from_address or m.envelope_from or 'no sender')}"
        f" · {escape(m.subject or '(no subject)')[:80]}"
        for m in held
    ]
    return {"text": "*Quarantined mail* (release with `supportdesk quarantine release ID`)\n" + "\n".join(lines)}


async def _customer(core: AsyncCore, command: ct.CustomerInfo, _actor: str) -> dict[str, Any]:
    summary = await core.read(customer_summary, command.ref)
    c = summary.customer
    lines = [f"*{escape(c.name)}* ({escape(c.external_ref)}) — KYC *{c.kyc_status}*"]
    lines.append(f"*Open requests* ({len(summary.open_requests)})" if summary.open_requests else "No open requests.")
    for r in summary.open_requests:
        disputed = (f" · disputed {money(r.disputed_amount_minor, r.disputed_currency)}"
                    if r.disputed_amount_minor is not None and r.disputed_currency else "")
        lines.append(_request_line(r) + disputed)
    if summary.invoices:
        lines.append("*Invoices*")
        lines += [f"• {escape(i.number)} {money(i.amount_minor, i.currency)} due {i.due_on.isoformat()} · {i.status}"
                  for i in summary.invoices]
    lines.append(f"*Adjustments, last {ADJUSTMENT_DAYS} days*" if summary.adjustments
                 else f"No adjustments in the last {ADJUSTMENT_DAYS} days.")
    lines += [f"• {a.kind.replace('_', ' ')} {money(a.amount_minor, a.currency)} on `{a.request_key}` · {a.status}"
              f" · asked {a.requested_at.date().isoformat()}" for a in summary.adjustments]
    return {"text": "\n".join(lines)}


async def _metrics(core: AsyncCore, command: ct.Metrics, _actor: str) -> dict[str, Any]:
    store = core.store
    now = store.clock.now()
    period = metrics_period(command.period, now.astimezone(store.settings.tz).date(), store.settings.tz)
    report = (await core.read(compute_metrics, period, None, now)).to_json()
    return {"text": metrics_text(report, command.period)}


Handler = Callable[[AsyncCore, Any, str], Awaitable[dict[str, Any]]]
_HANDLERS: dict[type, Handler] = {
    ct.Show: _show,
    ct.ListRequests: _list,
    ct.Claim: _claim,
    ct.Assign: _assign,
    ct.Resolve: _resolve,
    ct.Reopen: _reopen,
    ct.Sla: _sla,
    ct.Quarantine: _quarantine,
    ct.CustomerInfo: _customer,
    ct.Metrics: _metrics,
}
