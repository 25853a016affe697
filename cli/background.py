"""serve's background process: it files accepted mail, delivers e-mail and makes the digests, niced below serve.

All three are CPU work that needs no SMTP session and no Slack click:
parsing and filing; for each e-mail an ORM read, a template, the transport
and a write; for a digest the metrics, the text and the chart. In serve's
own interpreter they held the GIL that the SMTP sessions need for their
``250``: at four connections acceptance took 25 to 40 % more mail without
e-mail delivery in it (``bench/intake.py``). Here the kernel gives serve the
CPU first, and the process that files the mail is the one that knows when
acknowledgments are due: it wakes the delivery once a burst is filed,
instead of the delivery finding them at its next look.

The process runs three threads: filing (:func:`intake.processor.run_processor`),
the e-mail delivery (:func:`notifications.email_delivery.run_email_delivery`)
and the digest maker, which makes a digest when serve's scheduler asks
(:meth:`BackgroundProcess.make_digest`). serve rings one pipe after every
commit of accepted mail and another after anything else it wrote to the
outbox (a reply from Slack, a digest), and restarts the process if it dies.

**Forked, while serve has one thread** (``core.child_process``): the child
shares serve's pages and no resource tracker starts, which keeps some 30 MB
out of serve's tree (``bench/intake.py`` prints it); a restart, in a serve
with threads by then, spawns a fresh interpreter, at the price of that
memory until serve restarts. The parent tells the child to
stop with SIGTERM, not a shared ``multiprocessing.Event``: an Event made for
a fork cannot be handed to a spawned process, and one made for a spawn needs
the resource tracker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from core.child_process import begin_child, start_method
from core.settings import Settings
from core.store import Store

if TYPE_CHECKING:
    from notifications.digest_job import DueDigest

log = logging.getLogger("supportdesk.intake")

PROCESS_NAME = "sd-background"  # in top and ps -o comm
# Niced below serve: when the two cores are busy, the process that answers SMTP sessions and
# Slack clicks gets the CPU.
NICENESS = 5
# Filing, delivery and the digest maker finish what they hold when stopped: a batch of mail, one
# e-mail, one digest; each is one transaction.
STOP_TIMEOUT = 30.0
# On SQLite every e-mail sent is a write (the row marked sent), and the listener needs the one
# write lock before each 250: while mail arrives or waits to be filed, the delivery waits too,
# but never longer than this, so a long stream of mail delays acknowledgments without starving them.
DELIVERY_GIVES_WAY_AT_MOST = 30.0
# How often serve looks for a digest's answer, and the digest maker for the end of the process.
DIGEST_POLL_SECONDS = 0.1
DIGEST_MAKER_LOOKS_FOR_STOP = 0.5
# How often filing, waiting out a store outage, looks whether SIGTERM has come.
STOP_LOOK_SECONDS = 0.5


class BackgroundProcess:
    """The background process as a child of ``serve``, restarted if it dies.

    ``serve`` rings it from the event loop, so ringing must never block: it
    writes one byte to a non-blocking pipe (a full pipe means a wake-up is
    waiting already). A ``multiprocessing.Event`` would not do: its ``set``
    waits until every sleeping waiter has woken.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._filing = _WakePipe()
        self._delivery = _WakePipe()
        # Digests: serve sends (number, due, now) and reads back (number, outcome, value), one at a time.
        self._digest_requests, self._digest_orders = multiprocessing.Pipe(duplex=False)
        self._digest_answers, self._digest_replies = multiprocessing.Pipe(duplex=False)
        self._digest_numbers = itertools.count(1)
        self._one_digest_at_a_time: asyncio.Lock | None = None
        self._stopping = False
        self._process: Any = None
        self.start_method = ""
        self.restarts = 0

    def start(self) -> None:
        """Fork the process if this one has no other thread, spawn it otherwise (see the module's docstring)."""
        self.start_method = start_method()
        context = multiprocessing.get_context(self.start_method)
        process = context.Process(
            target=_child_main,
            args=(self._settings, os.getpid(), self._filing.reader, self._delivery.reader, self._delivery.writer,
                  self._digest_requests, self._digest_replies),
            name="supportdesk-background", daemon=True,
        )
        process.start()
        self._process = process  # only once started: stop() joins it

    def mail_committed(self) -> None:
        """Accepted mail is in the store: file it."""
        self._filing.ring()

    def outbox_written(self) -> None:
        """Something other than filing queued e-mail (a reply, a resolution, a digest): deliver it."""
        self._delivery.ring()

    async def make_digest(self, store: Store, due: DueDigest, now: datetime) -> int | None:
        """Have the process make the digest ``due`` as of ``now``; the new digest's id, or None if it existed.

        The scheduler's way in serve (``store`` is there to fit its
        signature: the process has a store of its own). One digest at a time;
        an answer to an earlier request whose caller stopped waiting is
        skipped. Raises RuntimeError when the digest failed or the process
        died before answering (the scheduler tries again at its next run).
        Cancelled, the request stands: the process finishes the digest in
        one transaction, and a digest is never made twice.
        """
        if self._process is None:
            raise RuntimeError("the background process has not been started")
        if self._one_digest_at_a_time is None:
            self._one_digest_at_a_time = asyncio.Lock()
        async with self._one_digest_at_a_time:
            number = next(self._digest_numbers)
            self._digest_orders.send((number, due, now))
            outcome, value = await self._answer_to(number, self._process)
        if outcome != "made":
            raise RuntimeError(f"making the {due.kind} digest {due.period} failed in the background process: {value}")
        return value if isinstance(value, int) else None

    async def _answer_to(self, number: int, asked: Any) -> tuple[str, Any]:
        """The answer to request ``number``, skipping older ones; ("died", why) if the process ``asked`` ended first.

        ``asked`` is the process running when the request was sent: one
        started since to replace it may never have seen the request.
        """
        while True:
            # Read before the pipe: an answer written before the end is in it by then.
            alive = asked is self._process and asked.is_alive()
            while self._digest_answers.poll():
                answered, outcome, value = self._digest_answers.recv()
                if answered == number:
                    return outcome, value
            if not alive:
                return "died", f"the background process ended ({asked.exitcode})"
            await asyncio.sleep(DIGEST_POLL_SECONDS)

    def check(self) -> None:
        """Restart the child if it died; called periodically by ``serve``."""
        if self._process is not None and not self._process.is_alive() and not self._stopping:
            log.error("background process exited with %s; restarting it", self._process.exitcode)
            self.restarts += 1
            self.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Let the child finish the batch, the e-mail and the digest in hand, then wait for it.

        Each of them is one transaction. Calling it again does nothing more.
        """
        if self._stopping:
            return
        self._stopping = True
        if self._process is not None and self._process.is_alive():
            try:
                os.kill(self._process.pid, signal.SIGTERM)
            except ProcessLookupError:  # it ended just now
                pass
        self._filing.ring()
        self._delivery.ring()
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        for end in (self._filing, self._delivery):
            end.close()
        for connection in (self._digest_requests, self._digest_orders, self._digest_answers, self._digest_replies):
            connection.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_alive(self) -> bool:
        """Whether the child runs now (serve's health answer says so; :meth:`check` restarts a dead one)."""
        return self._process is not None and bool(self._process.is_alive())


class _WakePipe:
    def __init__(self) -> None:
        self.reader, self.writer = multiprocessing.Pipe(duplex=False)
        os.set_blocking(self.writer.fileno(), False)

    def ring(self) -> None:
        _ring(self.writer)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _ring(writer: Connection) -> None:
    try:
        os.write(writer.fileno(), b"\0")
    except (BlockingIOError, BrokenPipeError):  # already rung, or the child is gone and check() restarts it
        pass


def _child_main(settings: Settings, parent: int, filing_wake: Connection, delivery_wake: Connection,
                delivery_bell: Connection, digest_requests: Connection, digest_replies: Connection) -> None:
    """``parent`` is serve's pid, passed rather than read: a serve that died already is no parent of ours."""
    stop = _SignalledStop()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; serve decides
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Imported here, not by serve: parsing, HTML to text and delivery cost serve some 7 MB it never uses.
    from intake.processor import run_processor
    from notifications.email_delivery import run_email_delivery
    from notifications.mail_transport import transport_for

    begin_child(PROCESS_NAME, settings.log_format)
    os.nice(NICENESS)
    started = time.monotonic()
    store = Store.open(settings)
    # Set once filing has ended: because serve said stop (the ring makes that prompt), because serve
    # is gone, or on an error.
    finished = threading.Event()
    filing_idle = threading.Event()
    helpers = [
        threading.Thread(target=run_email_delivery,
                         args=(store, transport_for(settings), finished,
                               _waiter(delivery_wake, filing_idle if store.is_sqlite else None, finished)),
                         name="email-delivery"),
        threading.Thread(target=_make_digests, args=(store, digest_requests, digest_replies, finished),
                         name="digest-maker"),
    ]
    for helper in helpers:
        helper.start()
    try:
        run_processor(store, filing_wake, stop, parent, caught_up=lambda: _ring(delivery_bell), idle=filing_idle)
    finally:
        finished.set()
        _ring(delivery_bell)
        for helper in helpers:
            helper.join()
        store.dispose()
    log.info("background process stopped after %.0f s", time.monotonic() - started)


class _SignalledStop:
    """Set by the SIGTERM handler; read by filing.

    Not a ``threading.Event``: the handler runs in the main thread between
    two of its bytecodes, possibly while that thread holds the Event's own
    lock (in ``wait``), and ``set`` would then wait for it forever. Setting
    an attribute takes no lock.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._set and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, STOP_LOOK_SECONDS))
        return self._set


def _make_digests(store: Store, requests: Connection, replies: Connection, finished: threading.Event) -> None:
    """Make each digest serve asks for and answer with its id (None if it existed) or what went wrong.

    The chart's drawing library is imported at the first digest, so a
    process that never makes one never pays for it.
    """
    while not finished.is_set():
        if not requests.poll(DIGEST_MAKER_LOOKS_FOR_STOP):
            continue
        number, due, now = requests.recv()
        try:
            from notifications.digest_job import make_digest

            made = make_digest(store, due, now=now)
            replies.send((number, "made", made.id if made is not None else None))
        except Exception as exc:  # noqa: BLE001 - reported to serve, whose scheduler logs it and tries again
            log.exception("making the %s digest %s failed", due.kind, due.period)
            replies.send((number, "failed", f"{exc.__class__.__name__}: {exc}"))


def _waiter(wake: Connection, filing_idle: threading.Event | None,
            finished: threading.Event) -> Callable[[float], bool]:
    """``wait(seconds)``: True as soon as the pipe was rung (even before the call), and the rings consumed.

    With ``filing_idle`` (SQLite), it then also waits until filing is idle,
    for at most DELIVERY_GIVES_WAY_AT_MOST seconds, or until the process stops.
    """
    from intake.processor import drain_wakes

    os.set_blocking(wake.fileno(), False)

    def wait(seconds: float) -> bool:
        rung = wake.poll(seconds)
        if rung:
            drain_wakes(wake)
        if filing_idle is not None:
            deadline = time.monotonic() + DELIVERY_GIVES_WAY_AT_MOST
            while not filing_idle.wait(0.1) and not finished.is_set() and time.monotonic() < deadline:
                pass
        return rung

    return wait

