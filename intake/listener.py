"""The SMTP listener: aiosmtpd in the process's own event loop.

What it answers, and why:

- ``RCPT``: our support addresses, their reply-token variants and
  ``postmaster``; anything else ``550 5.1.1`` (a permanent "no such user").
- End of ``DATA``: ``250`` only after the raw bytes and the envelope are
  committed (:mod:`intake.acceptance`); a store that cannot commit gives
  ``451 4.3.0`` (``452 4.3.1`` when the disk is full) so the sender retries.
  No exception ever becomes aiosmtpd's ``500`` or shows its text.
- Size: ``SIZE`` is advertised; too much data is ``552`` (aiosmtpd).
- Long lines: RFC 5321 caps a line at 998 octets, but real mail (HTML from
  some mailers, signed mail through some gateways) breaks it. We accept lines
  up to 64 KiB rather than bounce real customers; longer ones get aiosmtpd's
  ``500 Line too long``.
- At most ``SUPPORTDESK_SMTP_MAX_SESSIONS`` sessions at once; more get
  ``421 4.7.0`` and are closed, which tells the sender to come back later.
- On shutdown new connections are refused, ``MAIL`` gets ``421 4.3.2``,
  messages already being transferred are committed and answered, then the
  remaining sessions get ``421`` and are closed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from core.errors import StoreUnavailable
from core.reply_tokens import is_our_recipient
from core.services.mail_intake import RawMail
from core.settings import Settings
from intake.acceptance import Acceptor

log = logging.getLogger("supportdesk.intake")

MAX_LINE_OCTETS = 64 * 1024
MAX_RECIPIENTS = 100
TEMPORARY_FAILURE = "451 4.3.0 Temporary failure; the message was not accepted, please try again later"
STORAGE_FULL = "452 4.3.1 Insufficient system storage; please try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down; please try again later"
TOO_BUSY = b"421 4.7.0 Too many connections; please try again later\r\n"

# The path nearly every MAIL and RCPT carries: <dot-atom@dot-atom>, ASCII, no route, no comment.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


@dataclass
class IntakeCounters:
    """What the listener did, for logs and the metrics endpoint."""

    accepted: int = 0
    rejected_recipients: int = 0
    temporary_failures: int = 0
    refused_busy: int = 0
    latencies: list[float] = field(default_factory=list)  # end of DATA -> reply, seconds (last 10,000)

    def record_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)
        if len(self.latencies) > 10_000:
            del self.latencies[:5_000]


class GatewayHandler:
    """aiosmtpd hooks: recipient policy and commit-before-250."""

    def __init__(self, settings: Settings, acceptor: Acceptor, counters: IntakeCounters) -> None:
        self._settings = settings
        self._acceptor = acceptor
        self.counters = counters
        self.draining = False

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.draining:
            return SHUTTING_DOWN
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not is_our_recipient(address, self._settings.support_addresses):
            self.counters.rejected_recipients += 1
            return "550 5.1.1 No such mailbox here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        item = RawMail(
            raw=bytes(envelope.original_content or b""),
            # aiosmtpd keeps the null reverse-path (bounces) as "<>"; the store keeps it as "".
            envelope_from="" if (envelope.mail_from or "<>").strip() == "<>" else envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            peer=_peer(session),
            helo=session.host_name or None,
        )
        try:
            await self._acceptor.accept(item)
        except StoreUnavailable as exc:
            self.counters.temporary_failures += 1
            log.warning("mail from %s not accepted, store unavailable: %s", _peer(session), exc)
            return STORAGE_FULL if "full" in str(exc).lower() else TEMPORARY_FAILURE
        except Exception:
            self.counters.temporary_failures += 1
            log.exception("mail from %s not accepted", _peer(session))
            return TEMPORARY_FAILURE
        self.counters.accepted += 1
        self.counters.record_latency(time.perf_counter() - started)
        # Logged once the 250 is on its way (the session writes it before it next waits): at one
        # connection the sender's next command then overlaps the log line instead of waiting for it.
        asyncio.get_running_loop().call_soon(
            log.info, "accepted %d bytes from %s (helo %s): sender %r, %d recipient(s)", len(item.raw), item.peer,
            item.helo, item.envelope_from, len(item.recipients))
        return "250 2.0.0 OK: message accepted"

    async def handle_exception(self, error: Exception) -> str:
        # Must never fail itself: aiosmtpd would answer "500 Error: (...)" with our exception's text.
        try:
            log.error("SMTP session error: %s", error.__class__.__name__, exc_info=error)
        except Exception:  # noqa: BLE001 - logging must not turn a 451 into a 500
            pass
        return TEMPORARY_FAILURE


def _peer(session: Session) -> str | None:
    peer: Any = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer) if peer else None


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with our line-length policy and session bookkeeping."""

    line_length_limit = MAX_LINE_OCTETS

    def __init__(self, gateway: SmtpGateway, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._decode_data:  # smtp_DATA below hands the handler bytes, as the gateway stores them
            raise ValueError("GatewaySMTP keeps mail as bytes: decode_data must be off")
        self._gateway = gateway
        self.in_data = False

    def connection_lost(self, error: Exception | None) -> None:
        self._gateway.sessions.discard(self)
        super().connection_lost(error)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's parsing of a ``MAIL``/``RCPT`` address, with the same answers, made cheaper.

        aiosmtpd 1.4.6 declares a ``typing.Protocol`` inside this method, for
        its type checker only; making that class twice per message took a
        tenth of serve's CPU at four connections. And the email package's
        parser it calls builds a token tree for every address; for the plain
        ``<local@domain>`` that nearly all mail carries a regular expression
        gives the same address and parameters (``tests/intake/test_listener.py``
        compares the two; the one difference, whitespace such as a vertical
        tab before the parameters, which the parser keeps, changes nothing:
        aiosmtpd splits them on whitespace) at a fraction of the cost, which
        at one connection every message waits for. Anything else goes to the
        parser. Same rules otherwise: an address that does not parse (or has
        a local part over aiosmtpd's ``local_part_limit``, when one is set) is
        ``(None, None)``, which aiosmtpd answers ``553``.
        """
        plain = _PLAIN_PATH.match(arg)
        if plain is not None:
            after = arg[plain.end():].lstrip()
            if not after.startswith("("):  # a comment after the path is the parser's to read
                return self._within_limit(plain.group(1), after)
        return self._parsed_address(arg)

    def _parsed_address(self, arg: str) -> tuple[str | None, str | None]:
        """The address and what follows it, as the email package's parser reads them (aiosmtpd's own way)."""
        if not arg:
            return "", ""
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        return self._within_limit(address.addr_spec, rest)

    def _within_limit(self, address: str, rest: str) -> tuple[str | None, str | None]:
        local_part = address.rpartition("@")[0]
        if self.local_part_limit and len(local_part) > self.local_part_limit:
            return None, None
        return address, rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the same answers, reading the message in pieces instead of line by line.

        aiosmtpd 1.4.6 reads the data one line at a time, with a log call, a
        bytearray and a dot test for each line: a 64 KB message is some 900
        lines, and that loop was most of serve's CPU for it (as it is the
        sink's in ``bench/intake.py``). Here the reader is asked for the end
        of data, ``.`` on a line of its own, and hands over everything up to
        it in one piece (at most its 64 KiB limit at a time); the checks
        aiosmtpd makes per line are made on those pieces: the size limit
        (``552`` once the data has ended), lines over ``MAX_LINE_OCTETS``
        (``500``), and the transparency dots removed (RFC 5321 4.5.2).
        ``tests/intake/test_listener.py`` sends the same data to both and
        compares what each stored and answered. One difference is left on
        purpose: data that breaks both limits is refused with either reply
        (aiosmtpd's depends on which line it read first, ours on which piece);
        both are permanent and neither stores anything.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        self.in_data = True
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            content = await self._read_data()
            if content is None:  # the connection ended before the data did
                return
            if isinstance(content, str):
                await self.push(content)
                self._set_post_data_state()
                return
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push("250 OK" if status is MISSING else status)
        finally:
            self.in_data = False

    async def _read_data(self) -> bytes | str | None:
        """The message up to the end of data, dots removed; or the reply for data refused; or None if cut off."""
        reading = _DataReader(self.data_size_limit, self.line_length_limit)
        try:
            while True:
                try:
                    piece = await self._reader.readuntil(_END_OF_LINE_DOT)
                except asyncio.LimitOverrunError as exc:  # no end yet within the reader's limit: take what is safe
                    reading.add(await self._reader.read(exc.consumed))
                    continue
                if reading.add(piece):
                    return reading.result()
        except asyncio.IncompleteReadError:
            log.info("connection closed during DATA")
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if self.transport is not None:
            self.transport.close()
        return None

    def say_goodbye(self, reply: bytes) -> None:
        """Send an unsolicited reply (RFC 5321 allows 421 at any time) and close."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)
            self.transport.close()


_END_OF_LINE_DOT = b".\r\n"  # a line ending in a dot: the end of data when the line is the dot alone


class _DataReader:
    """What aiosmtpd's DATA loop checks line by line, made on pieces that end where a line ends in ``.``.

    Each piece the stream reader gives ends in ``.<CR><LF>``, or anywhere but
    in the last two octets received when it gives part of a longer stretch
    (its limit); the data ends at the first ``.<CR><LF>`` that is a line of
    its own, at the very start or after ``<CR><LF>``, which may have come in
    the piece before.
    """

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self._size_limit = size_limit
        self._line_limit = line_limit
        self._pieces: list[bytes] = []
        self._size = 0  # octets of data so far, the end-of-data line not counted (as aiosmtpd counts)
        self._line = 0  # octets of the line still open at the end of the data so far
        self._tail = b"\r\n"  # the data's last two octets (the start of data is the start of a line)
        self._refusal: str | None = None

    def add(self, piece: bytes) -> bool:
        """Take the next piece; True when it ended the data."""
        ended = piece.endswith(b"\r\n.\r\n") or (len(piece) < 5 and (self._tail + piece).endswith(b"\r\n.\r\n"))
        data = piece[:-3] if ended else piece
        if data:
            self._size += len(data)
            self._check_lines(data)
            self._tail = (self._tail + data[-2:])[-2:]
        if self._refusal is None and self._size_limit and self._size > self._size_limit:
            self._refusal = "552 Error: Too much mail data"
        if self._refusal is None:
            self._pieces.append(data)
        else:
            self._pieces.clear()  # keep nothing of data that will be refused, however much more comes
        return ended

    def result(self) -> bytes | str:
        """The message (transparency dots removed), or the reply that refuses it."""
        if self._refusal is not None:
            return self._refusal
        content = b"".join(self._pieces)
        self._pieces.clear()
        if content.startswith(b"."):
            content = content[1:]
        return content.replace(b"\r\n.", b"\r\n")

    def _check_lines(self, data: bytes) -> None:
        """A line longer than the limit (its <CR><LF> included) refuses the message, as aiosmtpd's 500 does."""
        if self._refusal is not None:
            return
        too_long = False
        if self._tail.endswith(b"\r") and data.startswith(b"\n"):  # a <CR><LF> across two pieces
            too_long = self._line + 1 > self._line_limit
            self._line, data = 0, data[1:]
        first_end = data.find(b"\r\n")
        if first_end == -1:
            self._line += len(data)
        else:
            too_long = too_long or self._line + first_end + 2 > self._line_limit
            last_end = data.rfind(b"\r\n")
            if not too_long and last_end - first_end > self._line_limit:
                too_long = max(map(len, data[first_end + 2:last_end].split(b"\r\n"))) + 2 > self._line_limit
            self._line = len(data) - last_end - 2
        if too_long or self._line > self._line_limit:
            self._refusal = "500 Line too long (see RFC5321 4.5.3.1.6)"


class _TooBusy(asyncio.Protocol):
    def __init__(self, counters: IntakeCounters) -> None:
        self._counters = counters

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._counters.refused_busy += 1
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(TOO_BUSY)
        transport.close()


class SmtpGateway:
    """The listening socket and its sessions."""

    def __init__(self, settings: Settings, acceptor: Acceptor, counters: IntakeCounters | None = None) -> None:
        self.settings = settings
        self.counters = counters or IntakeCounters()
        self.handler = GatewayHandler(settings, acceptor, self.counters)
        self.sessions: set[GatewaySMTP] = set()
        self._server: asyncio.Server | None = None
        self._port = 0

    def _protocol(self) -> asyncio.Protocol:
        if self.handler.draining or len(self.sessions) >= self.settings.smtp_max_sessions:
            return _TooBusy(self.counters)
        session = GatewaySMTP(
            self,
            self.handler,
            hostname=self.settings.mail_domain,
            ident="supportdesk",
            data_size_limit=self.settings.smtp_max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            command_call_limit={"NOOP": 200, "VRFY": 20, "EXPN": 20, "HELP": 50, "*": 1_000_000},
        )
        self.sessions.add(session)
        return session

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            host=host if host is not None else self.settings.smtp_listen.host,
            port=port if port is not None else self.settings.smtp_listen.port,
            reuse_address=True,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        """The port listened on (the real one when started on port 0)."""
        return self._port

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop accepting, let transfers in progress finish and be answered, then close every session."""
        self.handler.draining = True
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_seconds
        while any(s.in_data for s in self.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.say_goodbye(SHUTTING_DOWN.encode() + b"\r\n")
        await asyncio.sleep(0)  # let the transports flush and report connection_lost
