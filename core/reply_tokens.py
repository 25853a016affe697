"""Reply tokens: how a customer's answer finds its request. Pure.

Every request gets an unguessable token. It sits in the address customers
reply to (``support+3f9a…@example.com``; ``support.3f9a…@`` too, for the
mail systems that drop ``+`` parts) and in every Message-ID we make
(``<unique.3f9a…@example.com>``), so an answer threads even when the mail
client drops ``In-Reply-To``, and a stranger cannot attach mail to somebody
else's request by guessing a number.
"""

from __future__ import annotations

import re
import secrets
import uuid

TOKEN_BYTES = 8
_TOKEN = r"[0-9a-f]{%d}" % (TOKEN_BYTES * 2)
_OUR_MESSAGE_ID = re.compile(r"^<[0-9a-z.\-]+\.(" + _TOKEN + r")@([^<>@\s]+)>$")
_TOKEN_ONLY = re.compile("^" + _TOKEN + "$")


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def reply_address(support_address: str, token: str) -> str:
    """``support@example.com`` + token -> ``support+token@example.com``."""
    local, _, domain = support_address.partition("@")
    return f"{local}+{token}@{domain}"


def new_message_id(token: str, domain: str, prefix: str = "") -> str:
    """A Message-ID of ours that carries the request's token."""
    unique = f"{prefix}.{uuid.uuid4().hex}" if prefix else uuid.uuid4().hex
    return f"<{unique}.{token}@{domain}>"


def stable_message_id(token: str, domain: str, name: str) -> str:
    """A Message-ID fixed by ``name`` (e.g. an outbox row), so a retried send keeps its id."""
    safe = re.sub(r"[^0-9a-z.\-]", "-", name.lower())
    return f"<{safe}.{token}@{domain}>"


def token_in_message_id(message_id: str, domains: frozenset[str]) -> str | None:
    """The token inside one of our Message-IDs, or None for anybody else's."""
    match = _OUR_MESSAGE_ID.match(message_id.strip().lower())
    if match is None or match.group(2) not in domains:
        return None
    return match.group(1)


def token_in_address(address: str, support_addresses: tuple[str, ...]) -> str | None:
    """The token of ``support+TOKEN@domain`` or ``support.TOKEN@domain``, or None."""
    local, _, domain = address.strip().lower().rpartition("@")
    for support in support_addresses:
        support_local, _, support_domain = support.rpartition("@")
        if domain != support_domain:
            continue
        for separator in ("+", "."):
            head, sep, tail = local.partition(support_local + separator)
            if sep and not head and _TOKEN_ONLY.match(tail):
                return tail
    return None


def is_postmaster(address: str, support_addresses: tuple[str, ...]) -> bool:
    """``postmaster`` alone or at one of our domains (RFC 5321 §4.5.1 says it must be accepted)."""
    local, at, domain = address.strip().lower().partition("@")
    return local == "postmaster" and (not at or domain in support_domains(support_addresses))


def is_our_recipient(address: str, support_addresses: tuple[str, ...]) -> bool:
    """Whether the gateway accepts mail for ``address``: a support address, its token variants, postmaster."""
    value = address.strip().lower()
    return (
        value in support_addresses
        or token_in_address(value, support_addresses) is not None
        or is_postmaster(value, support_addresses)
    )


def support_domains(support_addresses: tuple[str, ...]) -> frozenset[str]:
    return frozenset(a.rpartition("@")[2] for a in support_addresses)
