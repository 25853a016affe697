"""serve's background process: it files accepted mail and delivers e-mail, niced below serve.

Both are CPU work that needs no SMTP session and no Slack click: parsing and
filing, and for each mail an ORM read, a template, the transport and a write.
In serve's own interpreter e-mail delivery held the GIL that the SMTP
sessions need for their ``250``: at four connections acceptance took 25 to
40 % more mail without it (``bench/intake.py``). Here the kernel
gives serve the CPU first, and the process that files the mail is the one
that knows when acknowledgments are due: it wakes the delivery once a burst
is filed, instead of the delivery finding them at its next look.

The process runs two threads: filing (:func:`intake.processor.run_processor`)
and the e-mail delivery (:func:`notifications.email_delivery.run_email_delivery`).
serve rings one pipe after every commit of accepted mail and another after
anything else it wrote to the outbox (a reply from Slack, a digest), and
restarts the process if it dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from core.log_format import configure_logging
from core.process_name import name_this_process
from core.settings import Settings
from core.store import Store

log = logging.getLogger("supportdesk.intake")

PROCESS_NAME = "sd-background"  # in top and ps -o comm
# Niced below serve: when the two cores are busy, the process that answers SMTP sessions and
# Slack clicks gets the CPU.
NICENESS = 5
# Filing and delivery finish what they hold when stopped: a batch of mail, one e-mail each.
STOP_TIMEOUT = 30.0
# On SQLite every e-mail sent is a write (the row marked sent), and the listener needs the one
# write lock before each 250: while mail arrives or waits to be filed, the delivery waits too,
# but never longer than this, so a long stream of mail delays acknowledgments without starving them.
DELIVERY_GIVES_WAY_AT_MOST = 30.0


class BackgroundProcess:
    """The background process as a child of ``serve``, restarted if it dies.

    ``serve`` rings it from the event loop, so ringing must never block: it
    writes one byte to a non-blocking pipe (a full pipe means a wake-up is
    waiting already). A ``multiprocessing.Event`` would not do: its ``set``
    waits until every sleeping waiter has woken.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._filing = _WakePipe(self._context)
        self._delivery = _WakePipe(self._context)
        self._stop = self._context.Event()
        self._process: Any = None
        self.restarts = 0

    def start(self) -> None:
        self._process = self._context.Process(
            target=_child_main,
            args=(self._settings, self._filing.reader, self._delivery.reader, self._delivery.writer, self._stop),
            name="supportdesk-background", daemon=True,
        )
        self._process.start()

    def mail_committed(self) -> None:
        """Accepted mail is in the store: file it."""
        self._filing.ring()

    def outbox_written(self) -> None:
        """Something other than filing queued e-mail (a reply, a resolution, a digest): deliver it."""
        self._delivery.ring()

    def check(self) -> None:
        """Restart the child if it died; called periodically by ``serve``."""
        if self._process is not None and not self._process.is_alive() and not self._stop.is_set():
            log.error("mail processor exited with %s; restarting it", self._process.exitcode)
            self.restarts += 1
            self.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Let the child finish the batch and the e-mail in hand, then wait for it (both are transactional)."""
        self._stop.set()
        self._filing.ring()
        self._delivery.ring()
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        self._filing.close()
        self._delivery.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_alive(self) -> bool:
        """Whether the child runs now (serve's health answer says so; :meth:`check` restarts a dead one)."""
        return self._process is not None and bool(self._process.is_alive())


class _WakePipe:
    def __init__(self, context: Any) -> None:
        self.reader, self.writer = context.Pipe(duplex=False)
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


def _child_main(settings: Settings, filing_wake: Connection, delivery_wake: Connection, delivery_bell: Connection,
                stop: multiprocessing.synchronize.Event) -> None:
    # Imported here, not by serve: parsing, HTML to text and delivery cost serve some 7 MB it never uses.
    from intake.processor import run_processor
    from notifications.email_delivery import run_email_delivery
    from notifications.mail_transport import transport_for

    name_this_process(PROCESS_NAME)
    configure_logging(logging.INFO, settings.log_format)  # a spawned process: serve's log set-up is not inherited
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    os.nice(NICENESS)
    parent = os.getppid()
    started = time.monotonic()
    store = Store.open(settings)
    # Set once filing has ended: because serve said stop (the ring makes that prompt), because serve
    # is gone, or on an error. Not ``stop`` itself: serve reads that to tell a stop it asked for from
    # a death it should restart the process after.
    finished = threading.Event()
    filing_idle = threading.Event()
    delivery = threading.Thread(
        target=run_email_delivery,
        args=(store, transport_for(settings), finished,
              _waiter(delivery_wake, filing_idle if store.is_sqlite else None, finished)),
        name="email-delivery",
    )
    delivery.start()
    try:
        run_processor(store, filing_wake, stop, parent, caught_up=lambda: _ring(delivery_bell), idle=filing_idle)
    finally:
        finished.set()
        _ring(delivery_bell)
        delivery.join()
        store.dispose()
    log.info("mail processor stopped after %.0f s", time.monotonic() - started)


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

