"""Turning an :class:`OutgoingEmail` view into an RFC 5322 message, safely.

Every value that reaches a header may have come from a stranger: the
subject and Message-IDs of the customer's mail, names from a CSV import. We
strip CR, LF, NUL and every other control character from them ourselves
(RT's ``AddSubjectTag`` does the same) instead of trusting the ``email``
package: CPython 3.11.7 lacks the ``verify_generated_headers`` guard of
CVE-2024-6923, so a header value with a line break could become a header of
its own. As a last check the finished bytes are parsed back and must hold
exactly the headers we set.

Mail nobody typed carries the RFC 3834 markers (``Auto-Submitted``), the
Microsoft and ``Precedence`` equivalents, and our own loop header, which the
intake gateway (``intake/classify.py`` uses the same name) recognises and
refuses to answer. Replies an agent wrote carry none of them: a customer's
auto-responder may rightly answer those.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser

from core.reply_tokens import reply_address
from core.services.outbox import OutgoingEmail
from core.settings import Settings
from templates import render

LOOP_HEADER = "X-Supportdesk-Loop"
AUTO_SUBMITTED = {"acknowledgment": "auto-replied", "resolution_notice": "auto-generated"}
# RT keeps the first 4 and the last 6 References; we keep the thread root and the 9 latest.
MAX_REFERENCES = 10
MAX_ADDRESS_LENGTH = 254  # RFC 5321 §4.5.3.1.3, the longest path that fits
# Headers built from pre-folded text (the id lists) are written as we fold
# them: the default refolding would turn an id longer than a line into an
# RFC 2047 encoded word, which no mail client matches against its ids.
POLICY = policy.SMTP.clone(refold_source="none")

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_TOKEN = re.compile(r"[0-9a-z]{1,32}")
_ADDRESS_SPECIALS = set('<>()[]\\,;:"')


class RenderError(Exception):
    """The mail cannot be built; sending it later would not help."""


def build_message(email: OutgoingEmail, settings: Settings) -> EmailMessage:
    """The complete message for ``email``: headers made safe, body rendered from its template."""
    message = EmailMessage(policy=POLICY)
    sender = settings.support_addresses[0]
    message["From"] = Address(display_name=_sender_name(email), addr_spec=sender)
    message["To"] = ", ".join(_recipients(email))
    message["Reply-To"] = reply_address(sender, _token(email.reply_token))
    message["Subject"] = header_text(email.subject)
    message["Date"] = email.date
    message["Message-ID"] = _own_message_id(email.message_id)
    _set_id_list(message, "In-Reply-To", [email.in_reply_to] if email.in_reply_to else [])
    _set_id_list(message, "References", capped_references(email.references))
    if email.is_automatic:
        mark_automatic(message, email.topic, settings.mail_domain)
    set_body(message, body_text(email))
    check_headers(message)
    return message


def body_text(email: OutgoingEmail) -> str:
    """The text of the mail, from ``templates/email/<topic>.txt.j2``; plain data in, text out."""
    return render(
        f"email/{email.topic}.txt.j2",
        request_key=header_text(email.request_key),
        subject=header_text(email.request_subject),
        customer_name=header_text(email.customer_name) if email.customer_name else None,
        author_name=header_text(email.author_name) if email.author_name else None,
        body_text=plain_text(email.body_text) if email.body_text is not None else None,
        resolution_note=plain_text(email.resolution_note) if email.resolution_note else None,
    )


def header_text(value: str) -> str:
    """``value`` on one line: control characters and line separators become spaces, runs of space one."""
    cleaned = "".join(" " if _is_breaking(ch) else ch for ch in value)
    return " ".join(cleaned.split())


def plain_text(value: str) -> str:
    """Multi-line text for a body: line ends made uniform, other control characters (NUL, ESC ...) gone."""
    lines = value.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in lines if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def message_id(value: str | None) -> str | None:
    """A Message-ID fit for a header, or None when what is left is not ``<something>``."""
    if not value:
        return None
    compact = "".join(ch for ch in value if not _is_breaking(ch) and not ch.isspace())
    return compact if _MESSAGE_ID.fullmatch(compact) else None


def capped_references(ids: Iterable[str]) -> list[str]:
    """Valid ids without repeats, at most :data:`MAX_REFERENCES`: the thread's root and the latest ones."""
    unique = list(dict.fromkeys(i for i in (message_id(raw) for raw in ids) if i))
    if len(unique) <= MAX_REFERENCES:
        return unique
    return unique[:1] + unique[-(MAX_REFERENCES - 1):]


def envelope_problem(address: str) -> str | None:
    """Why ``address`` must not go into ``RCPT TO`` (or ``MAIL FROM``), or None when it may.

    smtplib writes the string into the command as it is (intake.md H2), so
    anything beyond a plain ASCII ``local@domain`` is refused here.
    """
    if not address:
        return "the address is empty"
    if not address.isascii() or any(ch.isspace() or not ch.isprintable() for ch in address):
        return f"{header_text(address)!r} contains spaces, control or non-ASCII characters"
    if address.count("@") != 1 or address.startswith("@") or address.endswith("@"):
        return f"{address!r} must have exactly one @ between a local part and a domain"
    if _ADDRESS_SPECIALS & set(address):
        return f"{address!r} contains characters not allowed in a plain address"
    if len(address) > MAX_ADDRESS_LENGTH:
        return f"{address[:40]!r}... is longer than {MAX_ADDRESS_LENGTH} characters"
    return None


def check_headers(message: EmailMessage) -> None:
    """Parse the finished bytes back: any header we did not set means a value broke out of its line."""
    expected = [name.lower() for name in message.keys()]
    parsed = BytesParser(policy=policy.default).parsebytes(message.as_bytes(), headersonly=True)
    found = [name.lower() for name in parsed.keys()]
    if found != expected:
        raise RenderError(f"the mail's headers came out as {found}, not {expected}; refusing to send it")


def _sender_name(email: OutgoingEmail) -> str:
    """Replies show who wrote them; the automatic mail comes from the team."""
    author = header_text(email.author_name) if email.author_name else ""
    return f"{author} (Support)" if author else "Support"


def _recipients(email: OutgoingEmail) -> list[str]:
    if not email.to_addresses:
        raise RenderError("the mail has no recipient")
    for address in email.to_addresses:
        problem = envelope_problem(address)
        if problem is not None:
            raise RenderError(f"invalid recipient: {problem}")
    return list(email.to_addresses)


def _token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise RenderError(f"{header_text(value)!r} is not a reply token")
    return value


def _own_message_id(value: str) -> str:
    checked = message_id(value)
    if checked is None:
        raise RenderError(f"{header_text(value)!r} is not a usable Message-ID")
    return checked


def _set_id_list(message: EmailMessage, name: str, ids: Sequence[str | None]) -> None:
    """Write ids one per line (a fold between ids is always allowed), never re-encoded."""
    valid = [i for i in (message_id(raw) for raw in ids) if i]
    if valid:
        message.set_raw(name, "\n ".join(valid))


def mark_automatic(message: EmailMessage, topic: str, loop_token: str) -> None:
    """RFC 3834 §5 and its vendor cousins: do not auto-answer this; and our own loop marker."""
    message["Auto-Submitted"] = AUTO_SUBMITTED.get(topic, "auto-generated")
    message["X-Auto-Response-Suppress"] = "All"
    message["Precedence"] = "auto_reply"
    message[LOOP_HEADER] = header_text(loop_token)


def set_body(message: EmailMessage, text: str) -> None:
    """``text`` as the message's text/plain body, in UTF-8."""
    # Non-ASCII text goes quoted-printable rather than 8bit: a relay without
    # 8BITMIME then still carries it unchanged.
    message.set_content(text, charset="utf-8", cte=None if text.isascii() else "quoted-printable")


def _is_breaking(ch: str) -> bool:
    """Control characters (CR, LF, NUL, DEL, C1 such as NEL) and Unicode line/paragraph separators."""
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")
