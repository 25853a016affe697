"""Reading what an agent typed after the slash command. Pure, so every shape of input is easy to test.

Slack sends the text after ``/sd`` as typed, except that with "escape
channels, users, and links" on (our manifest turns it on) a mentioned user
arrives as ``<@U123|alice>``. Anything we do not understand becomes a
:class:`Usage` with the help text, never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

USER_MENTION = re.compile(r"^<@([UW][A-Z0-9]{2,})(?:\|[^>]*)?>$")
LIST_VIEWS = ("open", "mine", "unassigned", "waiting", "breached")

HELP = """*supportdesk* — `{cmd} <what>`:
• `{cmd} new` — log a request for a customer (a form opens)
• `{cmd} show SR-12` — the request's card, here, for you
• `{cmd} list [open|mine|unassigned|waiting|breached]` — up to 20 requests, newest first
• `{cmd} claim SR-12` — take it
• `{cmd} assign SR-12 @someone` — give it to another agent
• `{cmd} resolve SR-12 what was done` — resolve with a note for the customer
• `{cmd} reopen SR-12` — reopen a resolved request
• `{cmd} sla SR-12` — its clocks: policy, due times, state
• `{cmd} customer C-1001` — KYC status, open requests, invoices, adjustments of the last 90 days
• `{cmd} metrics [today|yesterday|7d|30d|2026-01-01..2026-02-01]` — the team's figures (default: the last 7 days)
• `{cmd} quarantine` — mail that was set aside, with the reason
• `{cmd} help` — this list"""


@dataclass(frozen=True)
class Show:
    key: str


@dataclass(frozen=True)
class ListRequests:
    view: str  # one of LIST_VIEWS


@dataclass(frozen=True)
class Claim:
    key: str


@dataclass(frozen=True)
class Assign:
    key: str
    to: str  # a Slack user id


@dataclass(frozen=True)
class Resolve:
    key: str
    note: str


@dataclass(frozen=True)
class Reopen:
    key: str


@dataclass(frozen=True)
class Sla:
    key: str


@dataclass(frozen=True)
class Quarantine:
    pass


@dataclass(frozen=True)
class New:
    pass


@dataclass(frozen=True)
class CustomerInfo:
    ref: str


@dataclass(frozen=True)
class Metrics:
    period: str  # today, yesterday, 7d, 30d or FIRST..END (END not counted)


@dataclass(frozen=True)
class Usage:
    """Help, asked for or not; ``problem`` says what was wrong with the input, if anything."""

    problem: str | None = None


Command = (Show | ListRequests | Claim | Assign | Resolve | Reopen | Sla | Quarantine | New | CustomerInfo | Metrics
           | Usage)
METRIC_PERIODS = re.compile(r"^(today|yesterday|\d{1,3}d|\d{4}-\d{2}-\d{2}\.\.\d{4}-\d{2}-\d{2})$")


def parse(text: str) -> Command:
    """The command in ``text``; :class:`Usage` (with the problem) for anything else."""
    words = (text or "").split()
    if not words or words[0].lower() in ("help", "?", "-h", "--help"):
        return Usage()
    verb, args = words[0].lower(), words[1:]
    if verb == "list":
        view = args[0].lower() if args else "open"
        if len(args) > 1 or view not in LIST_VIEWS:
            return Usage(f"`list` takes one of {', '.join(LIST_VIEWS)}")
        return ListRequests(view)
    if verb == "quarantine":
        return Quarantine() if not args else Usage("`quarantine` takes nothing after it")
    if verb == "new":
        return New() if not args else Usage("`new` takes nothing after it; a form opens")
    if verb == "customer":
        if len(args) != 1:
            return Usage("`customer` takes one customer reference, like C-1001")
        return CustomerInfo(args[0])
    if verb == "metrics":
        period = args[0].lower() if args else "7d"
        if len(args) > 1 or not METRIC_PERIODS.match(period):
            return Usage("`metrics` takes today, yesterday, a number of days like 7d, or FIRST..END dates")
        return Metrics(period)
    if verb in ("show", "claim", "reopen", "sla"):
        if len(args) != 1:
            return Usage(f"`{verb}` takes one request key, like SR-12")
        return {"show": Show, "claim": Claim, "reopen": Reopen, "sla": Sla}[verb](args[0].upper())
    if verb == "assign":
        if len(args) != 2:
            return Usage("`assign` takes a request key and a person, like `assign SR-12 @alice`")
        match = USER_MENTION.match(args[1])
        if match is None:
            return Usage(f"`assign` needs a person picked with @ (got {_shown(args[1])})")
        return Assign(args[0].upper(), match.group(1))
    if verb == "resolve":
        if len(args) < 2:
            return Usage("`resolve` takes a request key and a note for the customer, like `resolve SR-12 refunded`")
        note = (text or "").strip().split(None, 2)[2]
        return Resolve(args[0].upper(), note)
    return Usage(f"there is no `{_shown(verb)}` command")


def help_text(command: str) -> str:
    return HELP.format(cmd=command)


def _shown(word: str) -> str:
    """Echo a piece of input safely in a code span: no backticks, no mention or link syntax, short."""
    cleaned = word.replace("`", "'").replace("<", "‹").replace(">", "›")
    return cleaned[:40] + ("…" if len(cleaned) > 40 else "")
