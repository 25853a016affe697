"""Handing a finished message over: to an SMTP relay, or into a local Maildir.

A send either succeeds, or raises :class:`TemporaryFailure` (try again
later: the relay is down, busy or answered ``4xx``) or
:class:`PermanentFailure` (the relay refused this recipient or this message
with ``5xx``; sending it again would get the same answer). RFC 5321 §4.2.1
draws that line by the first digit of the reply code.

Trouble with the relay itself (it cannot be reached, refuses our login or
our sender address, lacks STARTTLS) is temporary on purpose, whatever its
code: it is a configuration matter that an operator fixes once, after which
every waiting mail should go out, not be marked failed one by one.

Error texts never contain the relay password; the transport opens one
connection per message and keeps no state between sends, so one instance
may serve several threads.
"""

from __future__ import annotations

import logging
import mailbox
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from core.settings import Settings
from notifications.mail_render import envelope_problem

log = logging.getLogger(__name__)

SMTP_TIMEOUT_SECONDS = 30.0
MAX_REPLY_TEXT = 200


class DeliveryFailure(Exception):
    """The message was not handed over."""


class TemporaryFailure(DeliveryFailure):
    """Try again later."""


class PermanentFailure(DeliveryFailure):
    """Do not try again: the answer would be the same."""


class Transport(Protocol):
    def send(self, msg: EmailMessage, envelope_from: str, recipients: Sequence[str]) -> None:
        """Hand ``msg`` over for ``recipients``; raise a :class:`DeliveryFailure` when it was not."""
        ...


class SmtpRelay:
    """The configured outbound relay (``SUPPORTDESK_OUTBOUND_SMTP``), spoken to with smtplib."""

    def __init__(self, settings: Settings, ssl_context: ssl.SSLContext | None = None,
                 timeout: float = SMTP_TIMEOUT_SECONDS) -> None:
        if settings.outbound_smtp is None:
            raise ValueError("SmtpRelay needs settings.outbound_smtp")
        self._address = settings.outbound_smtp
        self._starttls = settings.outbound_smtp_starttls
        self._user = settings.outbound_smtp_user
        self._password = settings.outbound_smtp_password
        # Tests pass a context that trusts their self-signed certificate.
        self._ssl_context = ssl_context
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"SmtpRelay({self._address}, starttls={self._starttls}, user={self._user!r})"

    def send(self, msg: EmailMessage, envelope_from: str, recipients: Sequence[str]) -> None:
        _check_envelope(envelope_from, recipients)
        try:
            self._transaction(msg.as_bytes(), envelope_from, recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _refused(exc.recipients) from None
        except smtplib.SMTPDataError as exc:
            raise _by_code(exc.smtp_code, f"the relay refused the message: {self._reply(exc)}") from None
        except smtplib.SMTPSenderRefused as exc:
            raise TemporaryFailure(f"the relay refused our sender {exc.sender!r}: {self._reply(exc)}") from None
        except smtplib.SMTPAuthenticationError as exc:
            raise TemporaryFailure(f"the relay refused our login as {self._user!r}: {self._reply(exc)}") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise TemporaryFailure(f"the relay at {self._address} lacks what we need: {self._redact(str(exc))}") from None
        except smtplib.SMTPResponseException as exc:
            raise TemporaryFailure(f"the relay at {self._address} answered {self._reply(exc)}") from None
        except (smtplib.SMTPException, ssl.SSLError, ssl.CertificateError, OSError) as exc:
            raise TemporaryFailure(
                f"cannot talk to the relay at {self._address}: {exc.__class__.__name__}: {self._redact(str(exc))}"
            ) from None

    def _transaction(self, raw: bytes, envelope_from: str, recipients: Sequence[str]) -> None:
        """Connect, STARTTLS and log in as configured, send, quit."""
        with smtplib.SMTP(self._address.host, self._address.port, timeout=self._timeout) as smtp:
            smtp.ehlo()
            if self._starttls:
                # Never fall back to plain text: a relay without STARTTLS raises here.
                smtp.starttls(context=self._ssl_context or ssl.create_default_context())
                smtp.ehlo()
            if self._user:
                smtp.login(self._user, self._password or "")
            refused = smtp.sendmail(envelope_from, list(recipients), raw)
        if refused:
            # Accepted for some recipients: sending again would duplicate it for them.
            log.warning("the relay accepted the mail but refused %s", ", ".join(sorted(refused)))

    def _reply(self, exc: smtplib.SMTPResponseException) -> str:
        return f"{exc.smtp_code} {self._redact(_reply_text(exc.smtp_error))}"

    def _redact(self, text: str) -> str:
        """Belt and braces: no relay reply or library message may carry our password into a log or a row."""
        return text.replace(self._password, "***") if self._password else text


class MaildirTransport:
    """Writes each message into a Maildir (``new/``), for running without a relay.

    ``mailbox.Maildir.add`` writes into ``tmp/`` and renames into ``new/``,
    so a reader never sees half a message.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)

    def __repr__(self) -> str:
        return f"MaildirTransport({str(self._path)!r})"

    def send(self, msg: EmailMessage, envelope_from: str, recipients: Sequence[str]) -> None:
        _check_envelope(envelope_from, recipients)
        # Files in a Maildir use the local line ending, not SMTP's CRLF.
        raw = msg.as_bytes(policy=msg.policy.clone(linesep="\n"))
        try:
            mailbox.Maildir(self._path, create=True).add(raw)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write to the Maildir {self._path}: {exc.strerror or exc}") from None


def transport_for(settings: Settings) -> SmtpRelay | MaildirTransport:
    """The relay when one is configured, else the Maildir in ``outgoing_maildir``."""
    if settings.outbound_smtp is not None:
        return SmtpRelay(settings)
    return MaildirTransport(settings.outgoing_maildir)


def _check_envelope(envelope_from: str, recipients: Sequence[str]) -> None:
    """Refuse what must not reach an SMTP command; the renderer checks too, this edge checks again."""
    if not recipients:
        raise PermanentFailure("the message has no recipients")
    for address in (envelope_from, *recipients):
        problem = envelope_problem(address)
        if problem is not None:
            raise PermanentFailure(f"invalid envelope address: {problem}")


def _refused(recipients: dict[str, tuple[int, bytes]]) -> DeliveryFailure:
    """All recipients were refused: permanent only if every refusal was a 5xx."""
    details = "; ".join(f"{address}: {code} {_reply_text(text)}" for address, (code, text) in recipients.items())
    if all(500 <= code < 600 for code, _ in recipients.values()):
        return PermanentFailure(f"the relay refused the recipient ({details})")
    return TemporaryFailure(f"the relay deferred the recipient ({details})")


def _by_code(code: int, message: str) -> DeliveryFailure:
    return PermanentFailure(message) if 500 <= code < 600 else TemporaryFailure(message)


def _reply_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())[:MAX_REPLY_TEXT]
