"""Filing accepted mail: parse the stored bytes, then let the store decide.

Runs after the ``250``, so nothing here may lose a message: a message that
cannot be parsed is quarantined with its raw bytes kept; a failure while
filing is counted and retried, and a message that keeps failing is
quarantined too, so it never blocks the mail behind it. Filing marks the raw
row filed in the same transaction, so a processor killed at any moment files
every message exactly once when it comes back.

:func:`process_pending` files waiting mail in batches, one transaction per
batch (a commit per message was most of the cost), and can parse the next
batch in worker processes while the store files the current one: parsing is
CPU work that needs no database. :func:`process_one` files a single message
in its own transaction (``quarantine release``).

``serve`` runs :func:`run_processor` in its background process
(:mod:`cli.background`): parsing is CPU work, and a second process gives the
SMTP listener its own core.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Protocol, Union

from core.errors import StoreUnavailable
from core.services.correspondence import InboundMail, NewAttachment
from core.services.mail_intake import (
    FilingResult,
    IncomingMail,
    StoredRawMail,
    file_inbound,
    file_inbound_batch,
    load_inbound,
    load_inbound_many,
    pending_inbound,
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
# One transaction files at most this many messages: enough that the commit
# (an fsync on SQLite) no longer counts, few enough that the SQLite write lock,
# which the SMTP listener's acceptance also needs, is held for tens of
# milliseconds only.
FILING_BATCH = 50
# ... and at most about this many raw bytes, so a run of large messages is not
# all held in memory (and sent to a parser process) at once.
BATCH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Unreadable:
    """The parser refused the message: it is quarantined as ``unparseable``, raw bytes kept."""

    error: str


@dataclass(frozen=True)
class ReadFailed:
    """Reading a parsed message raised: counted against the message like a failure to file it."""

    error: str


Reading = Union[IncomingMail, Unreadable, ReadFailed]


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


def read_stored(stored: StoredRawMail, settings: Settings) -> Reading:
    """Parse one stored message and read what the store needs. No database, so a worker process can run it.

    A message an agent released is read as well as its broken bytes allow
    instead of being quarantined again.
    """
    try:
        parsed = parse_mail(stored.raw)
    except ParseError as exc:
        if not stored.released:
            return Unreadable(str(exc))
        parsed = None
    try:
        return read_incoming(stored, parsed if parsed is not None else salvage(stored.raw), settings)
    except Exception as exc:  # noqa: BLE001 - counted against this message, never the ones after it
        log.exception("reading mail %s failed", stored.id)
        return ReadFailed(f"{exc.__class__.__name__}: {exc}")


def read_batch(batch: Sequence[StoredRawMail], settings: Settings) -> list[Reading]:
    """:func:`read_stored` for a batch: what a parser process is sent, one batch per round trip."""
    return [read_stored(stored, settings) for stored in batch]


def process_one(store: Store, inbound_id: int) -> FilingResult | None:
    """File one received message in its own transaction. Returns None when it must be tried again later.

    A store outage is raised (the caller waits and retries everything);
    anything else is counted against the message.
    """
    stored = load_inbound(store, inbound_id)
    if stored.status != "received":
        return None
    reading = read_stored(stored, store.settings)
    if not isinstance(reading, IncomingMail):
        return _set_aside(store, inbound_id, reading)
    try:
        return file_inbound(store, inbound_id, reading)
    except StoreUnavailable:
        raise
    except Exception as exc:  # one bad message must not stop the others; it is retried, then quarantined
        log.exception("filing mail %s failed", inbound_id)
        record_filing_failure(store, inbound_id, f"{exc.__class__.__name__}: {exc}")
        return None


def process_pending(
    store: Store,
    limit: int = 200,
    *,
    batch_size: int = FILING_BATCH,
    batch_bytes: int = BATCH_BYTES,
    readers: Executor | None = None,
    read_ahead: int = 1,
    on_batch: Callable[[list[FilingResult]], None] | None = None,
) -> list[FilingResult]:
    """File up to ``limit`` waiting messages, oldest first, ``batch_size`` (and about ``batch_bytes``) to a transaction.

    With ``readers`` (a process pool, see :func:`reader_pool`) the next
    ``read_ahead`` batches are parsed there while this process files the
    current one. Messages that failed are counted against themselves and
    left out of the result; a store outage is raised. ``on_batch`` hears
    each batch's results as soon as it is filed (a progress bar).
    """
    results: list[FilingResult] = []
    batches = _pending_batches(store, limit, batch_size, batch_bytes)
    for batch, readings in _read_ahead(batches, store.settings, readers, read_ahead):
        filed = file_batch(store, batch, readings)
        results.extend(filed)
        if on_batch is not None:
            on_batch(filed)
    return results


def file_batch(store: Store, batch: Sequence[StoredRawMail], readings: Sequence[Reading]) -> list[FilingResult]:
    """File a batch in order: each run of readable mail in one transaction, the rest set aside one by one.

    Cutting runs at unreadable messages keeps the audit trail in the order
    the messages arrived, as filing them one at a time would.
    """
    results: list[FilingResult] = []
    run: list[tuple[int, IncomingMail]] = []
    for stored, reading in zip(batch, readings, strict=True):
        if isinstance(reading, IncomingMail):
            run.append((stored.id, reading))
            continue
        results.extend(_file_run(store, run))
        run = []
        result = _set_aside(store, stored.id, reading)
        if result is not None:
            results.append(result)
    results.extend(_file_run(store, run))
    return results


@contextmanager
def reader_pool(workers: int) -> Iterator[Executor | None]:
    """Worker processes that parse mail for :func:`process_pending`; None (parse here) for ``workers`` 0.

    Spawned, not forked: a fork would copy the parent's database connections.
    The workers start importing at once, so that cost overlaps whatever the
    caller does next.
    """
    if workers <= 0:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for _ in range(workers):
            pool.submit(_warm_up)
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _warm_up() -> None:
    """Nothing: submitted once per worker so each starts (and imports this module) right away."""


def _pending_batches(store: Store, limit: int, batch_size: int, batch_bytes: int) -> Iterator[list[StoredRawMail]]:
    """Up to ``limit`` waiting messages in batches of at most ``batch_size`` messages and about ``batch_bytes``."""
    after, listed = 0, 0
    while listed < limit:
        page = pending_inbound(store, limit=min(500, limit - listed), after_id=after)
        if not page:
            return
        listed += len(page)
        after = page[-1][0]
        ids: list[int] = []
        size = 0
        for inbound_id, message_size in page:
            if ids and (len(ids) >= batch_size or size + message_size > batch_bytes):
                yield load_inbound_many(store, ids)
                ids, size = [], 0
            ids.append(inbound_id)
            size += message_size
        if ids:
            yield load_inbound_many(store, ids)


def _read_ahead(
    batches: Iterator[list[StoredRawMail]], settings: Settings, readers: Executor | None, ahead: int
) -> Iterator[tuple[list[StoredRawMail], list[Reading]]]:
    """Each batch with its readings; with ``readers``, ``ahead`` batches are being parsed while one is filed."""
    depth = max(ahead, 0) if readers is not None else 0  # parsing here: nothing gains from loading early
    queued: deque[tuple[list[StoredRawMail], Future[list[Reading]] | None]] = deque()
    for batch in batches:
        queued.append((batch, _submit(readers, batch, settings)))
        if len(queued) > depth:
            yield _collect(*queued.popleft(), settings)
    while queued:
        yield _collect(*queued.popleft(), settings)


def _submit(readers: Executor | None, batch: list[StoredRawMail], settings: Settings) -> Future[list[Reading]] | None:
    if readers is None:
        return None
    try:
        return readers.submit(read_batch, batch, settings)
    except (BrokenProcessPool, RuntimeError):  # the pool died or was shut down: parse here instead
        log.warning("the mail parser processes are gone; parsing in the filing process")
        return None


def _collect(
    batch: list[StoredRawMail], future: Future[list[Reading]] | None, settings: Settings
) -> tuple[list[StoredRawMail], list[Reading]]:
    """A batch's readings: from its parser process, or read here if no parser process has taken it yet.

    Filing takes about as long as parsing, so the readings are normally
    waiting. When they are not, and a parser process has the batch in hand,
    this process waits for it: reading the batch here as well would throw one
    copy's work away, and the parser process would then start every later
    batch late too, so that half the mail was parsed twice. A batch no parser
    process has taken is withdrawn from the pool and read here.
    """
    if future is not None and not future.cancel():  # cancel() fails once a parser process has taken it
        try:
            return batch, future.result()
        except BrokenProcessPool:
            log.warning("a mail parser process died; parsing its batch in the filing process")
    return batch, read_batch(batch, settings)


def _file_run(store: Store, run: list[tuple[int, IncomingMail]]) -> list[FilingResult]:
    """One transaction for a run of readable messages; if it fails, its messages are filed one at a time.

    A failed batch changed nothing. Filing its messages again, each in its
    own transaction, files the good ones and counts the one at fault alone
    (:func:`record_filing_failure`), whether it failed in Python or at the
    database, where a flush or commit for the whole batch names no message.
    """
    if not run:
        return []
    try:
        return file_inbound_batch(store, run)
    except StoreUnavailable as exc:
        if not _lost_a_lock_race(exc):
            raise
        # Two processors batching replies to the same requests in opposite
        # orders can deadlock on PostgreSQL; one message per transaction cannot.
        log.warning("a batch of %d messages collided with another processor; filing them one at a time", len(run))
    except Exception:  # noqa: BLE001 - isolate the message at fault by filing one by one
        log.exception("filing a batch of %d messages failed; filing them one at a time", len(run))
    return [r for r in (_file_single(store, i, incoming) for i, incoming in run) if r is not None]


def _lost_a_lock_race(exc: StoreUnavailable) -> bool:
    """PostgreSQL aborted the batch to break a deadlock (or a serialization failure): the store itself is fine."""
    return getattr(getattr(exc.__cause__, "orig", None), "sqlstate", None) in ("40P01", "40001")


def _file_single(store: Store, inbound_id: int, incoming: IncomingMail) -> FilingResult | None:
    try:
        return file_inbound(store, inbound_id, incoming)
    except StoreUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - counted against this message only
        log.exception("filing mail %s failed", inbound_id)
        record_filing_failure(store, inbound_id, f"{exc.__class__.__name__}: {exc}")
        return None


def _set_aside(store: Store, inbound_id: int, reading: Unreadable | ReadFailed) -> FilingResult | None:
    """Quarantine an unreadable message, or count a failed reading against it (None: tried again later)."""
    if isinstance(reading, Unreadable):
        log.info("mail %s is unparseable, quarantined: %s", inbound_id, reading.error)
        return quarantine_unreadable(store, inbound_id, "unparseable", reading.error)
    record_filing_failure(store, inbound_id, reading.error)
    return None


# In serve on SQLite the batch also holds the one write lock that the SMTP
# listener's acceptance needs before every 250: a batch of this many files in
# about 20 ms, which is all a session may wait behind it.
SERVE_SQLITE_BATCH = 8
# In serve a batch also holds at most about this many raw bytes: parsed, a
# message takes several times its size until its batch is filed, and what a
# batch of 50 large messages (8 MB) needed the background process kept after
# it (10 MB more resident than with this, measured with 64 KB messages on
# PostgreSQL; see core.allocator). Messages of 20 KB and less still fill a
# batch of FILING_BATCH; larger ones take more, smaller commits.
SERVE_BATCH_BYTES = 1024 * 1024
# Woken by a commit of accepted mail, the processor waits until the listener
# has been quiet for SETTLE seconds (at most MAX_SETTLE), so that a burst is
# filed in a few full batches after it rather than one message at a time
# during it: the sessions waiting for their 250 come first, and nobody waits
# on filing in real time.
SETTLE = 0.02
MAX_SETTLE = 2.0
# When mail keeps arriving longer than that, filing on SQLite takes turns
# with acceptance for the one write lock: after a batch filed while mail
# arrived, it pauses for SQLITE_YIELD times as long as the batch took, so
# sessions find the lock free about two thirds of the time while filing
# still moves on. PostgreSQL has no such lock and needs no pause.
SQLITE_YIELD = 2.0


class StopFlag(Protocol):
    """What filing needs of its stop signal: a ``threading.Event`` has it, and so has serve's signalled flag."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


def run_processor(store: Store, wake: Connection, stop: StopFlag, parent: int,
                  caught_up: Callable[[], None] = lambda: None, idle: threading.Event | None = None) -> None:
    """File a batch at a time until ``stop`` is set or ``parent`` is gone, giving way to the listener.

    Every byte on ``wake`` means mail was committed. ``caught_up`` is called
    when nothing is left to file after something was: the acknowledgments
    that filing queued can go out now, once the burst is filed, rather than
    compete with it for the store. ``idle`` is set while nothing is left to
    file and no mail is arriving, and cleared otherwise.
    """
    idle = idle or threading.Event()
    batch_size = SERVE_SQLITE_BATCH if store.is_sqlite else FILING_BATCH
    give_way = SQLITE_YIELD if store.is_sqlite else 0.0
    os.set_blocking(wake.fileno(), False)
    filed_since_caught_up = False
    while not stop.is_set() and os.getppid() == parent:  # a killed serve must not leave us behind
        drain_wakes(wake)
        started = time.monotonic()
        try:
            done = process_pending(store, limit=batch_size, batch_size=batch_size, batch_bytes=SERVE_BATCH_BYTES)
        except StoreUnavailable as exc:
            log.warning("mail processor waits for the store: %s", exc)
            stop.wait(2.0)
            continue
        if done:
            idle.clear()
            filed_since_caught_up = True
            if give_way and wake.poll(0):  # mail was accepted while this batch was filed
                _settle(wake, give_way * (time.monotonic() - started))
            continue
        idle.set()
        if filed_since_caught_up:
            filed_since_caught_up = False
            caught_up()
        if wake.poll(1.0):
            idle.clear()
            _settle(wake, MAX_SETTLE)


def _settle(wake: Connection, longest: float) -> None:
    """Wait while wake-ups keep coming less than SETTLE apart, for at most ``longest`` seconds."""
    deadline = time.monotonic() + longest
    while (left := deadline - time.monotonic()) > 0:
        drain_wakes(wake)
        if not wake.poll(min(SETTLE, left)):
            return


def drain_wakes(wake: Connection) -> None:
    """Empty a wake pipe: however many times it was rung, one look at the store answers them all."""
    try:
        while os.read(wake.fileno(), 4096):
            pass
    except BlockingIOError:
        pass
