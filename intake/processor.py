"""Filing accepted mail: parse the stored bytes, then let the store decide.

Runs after the ``250``, so nothing here may lose a message: a message that
cannot be parsed is quarantined with its raw bytes kept; a failure while
filing is counted and retried, and a message that keeps failing is
quarantined too, so it never blocks the mail behind it. Filing is one
transaction per message that also marks the raw row filed, so a processor
killed at any moment files every message exactly once when it comes back.

``serve`` runs this in a separate process (:class:`ProcessorProcess`): parsing
is CPU work, and a second process gives the SMTP listener its own core.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import multiprocessing.synchronize
import signal
import time
from typing import Any

from core.errors import StoreUnavailable
from core.services.correspondence import InboundMail, NewAttachment
from core.services.mail_intake import (
    FilingResult,
    IncomingMail,
    StoredRawMail,
    file_inbound,
    load_inbound,
    pending_inbound_ids,
    quarantine_unreadable,
    record_filing_failure,
)
from core.settings import Settings
from core.store import Store
from intake.classify import classify_machine_mail, parse_bounce
from intake.extract import authenticate, find_amounts, find_invoice_numbers, find_subject_keys
from intake.extract import DEFAULT_INVOICE_PATTERN
from intake.parsing import ParsedMail, ParseError, parse_mail, salvage

log = logging.getLogger("supportdesk.intake")

FINANCE_TEXT_LIMIT = 200_000


def read_incoming(stored: StoredRawMail, parsed: ParsedMail, settings: Settings) -> IncomingMail:
    """Everything the store needs to file one message, read from its parsed form. Pure."""
    automatic = classify_machine_mail(parsed, stored.envelope_from, loop_token=settings.mail_domain)
    bounce = parse_bounce(parsed, stored.raw) if automatic == "bounce" else None
    auth = authenticate(parsed, settings.authserv_ids)
    finance_text = f"{parsed.subject}\n{parsed.reply_text}"[:FINANCE_TEXT_LIMIT]
    mail = InboundMail(
        from_address=parsed.from_address or "",
        subject=parsed.subject,
        body_text=parsed.reply_text,
        message_id=parsed.message_id,
        to_addresses=parsed.to + parsed.cc,
        in_reply_to=parsed.in_reply_to[0] if parsed.in_reply_to else None,
        references=parsed.references,
        attachments=tuple(
            NewAttachment(a.filename, a.content_type, a.content, is_inline=a.is_inline, content_id=a.content_id)
            for a in parsed.attachments
        ),
        full_text=parsed.text,
        auth_verdict=auth.verdict,
        auth_summary=auth.summary,
    )
    return IncomingMail(
        mail=mail,
        automatic=automatic,
        bounced_recipients=bounce.failed_recipients if bounce else (),
        bounced_message_ids=bounce.original_message_ids if bounce else (),
        subject_keys=find_subject_keys(parsed.subject),
        invoice_numbers=find_invoice_numbers(finance_text, settings.invoice_pattern or DEFAULT_INVOICE_PATTERN),
        amounts=find_amounts(finance_text),
    )


def process_one(store: Store, inbound_id: int) -> FilingResult | None:
    """File one received message. Returns None when it must be tried again later.

    A store outage is raised (the caller waits and retries everything);
    anything else is counted against the message.
    """
    stored = load_inbound(store, inbound_id)
    if stored.status != "received":
        return None
    try:
        parsed = parse_mail(stored.raw)
    except ParseError as exc:
        if not stored.released:
            log.info("mail %s is unparseable, quarantined: %s", inbound_id, exc)
            return quarantine_unreadable(store, inbound_id, "unparseable", str(exc))
        parsed = salvage(stored.raw)
    try:
        return file_inbound(store, inbound_id, read_incoming(stored, parsed, store.settings))
    except StoreUnavailable:
        raise
    except Exception as exc:  # one bad message must not stop the others; it is retried, then quarantined
        log.exception("filing mail %s failed", inbound_id)
        record_filing_failure(store, inbound_id, f"{exc.__class__.__name__}: {exc}")
        return None


def process_pending(store: Store, limit: int = 200) -> list[FilingResult]:
    """File up to ``limit`` waiting messages, oldest first."""
    results: list[FilingResult] = []
    after = 0
    while len(results) < limit:
        ids = pending_inbound_ids(store, limit=min(100, limit - len(results)), after_id=after)
        if not ids:
            break
        for inbound_id in ids:
            result = process_one(store, inbound_id)
            if result is not None:
                results.append(result)
        after = ids[-1]
    return results


def run_processor(settings: Settings, wake: multiprocessing.synchronize.Event,
                  stop: multiprocessing.synchronize.Event) -> None:
    """The processor's main loop: file what waits, then sleep until woken (or a second passes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    store = Store.open(settings)
    try:
        while not stop.is_set() and os.getppid() == parent:  # a killed serve must not leave us behind
            wake.clear()
            try:
                done = process_pending(store)
            except StoreUnavailable as exc:
                log.warning("mail processor waits for the store: %s", exc)
                stop.wait(2.0)
                continue
            if not done:
                wake.wait(1.0)
    finally:
        store.dispose()


class ProcessorProcess:
    """The mail processor as a child process of ``serve``, restarted if it dies."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._wake = self._context.Event()
        self._stop = self._context.Event()
        self._process: Any = None
        self.restarts = 0

    def start(self) -> None:
        self._process = self._context.Process(
            target=_child_main, args=(self._settings, self._wake, self._stop), name="supportdesk-mail-processor",
            daemon=True,
        )
        self._process.start()

    def wake(self) -> None:
        self._wake.set()

    def check(self) -> None:
        """Restart the child if it died; called periodically by ``serve``."""
        if self._process is not None and not self._process.is_alive() and not self._stop.is_set():
            log.error("mail processor exited with %s; restarting it", self._process.exitcode)
            self.restarts += 1
            self.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the child finish the message in hand, then wait for it (filing is transactional either way)."""
        self._stop.set()
        self._wake.set()
        if self._process is None:
            return
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None


def _child_main(settings: Settings, wake: multiprocessing.synchronize.Event,
                stop: multiprocessing.synchronize.Event) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    run_processor(settings, wake, stop)
    log.info("mail processor stopped after %.0f s", time.monotonic() - started)
