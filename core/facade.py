"""The async façade: how the asyncio front ends call the synchronous core.

The SMTP listener, the Slack app and the scheduler share one event loop; a
service call blocks on the database, so it cannot run on the loop itself.

Writes (:meth:`AsyncCore.call`) run in one of two places:

- a small thread pool in the same process (one thread on SQLite, which has
  one writer anyway, so queueing in Python is cheaper than spinning on the
  busy lock; several on PostgreSQL, to overlap round trips). This is the
  default, and what tests with a controlled clock use;
- with ``writer_process=True`` (what ``serve`` uses with Slack), a process
  of its own, niced below serve. A service call is several milliseconds of Python
  (ORM, SLA clocks, the audit chain); in serve's interpreter that work
  shares one lock with the event loop, and a burst of Slack clicks queued
  behind it halved how fast serve could acknowledge the next clicks. In a
  process of its own it runs on the other core, and when both cores are
  busy the kernel gives the loop, which answers Slack and SMTP, the CPU
  first. The call is sent by reference (module and name), its arguments and
  its result (views, plain data) pickled, errors raised again in serve as
  they were raised. If the process dies, the calls it had not answered
  fail with :class:`ChangeUncertain` (they may or may not have been made),
  and the next call starts a new one.

Reads (:meth:`AsyncCore.read`) have a thread pool of their own in serve: in
WAL mode SQLite readers never wait for the writer, so a lookup on the way to
a Slack acknowledgment does not queue behind a burst of claims. For the same
reason the writes that must happen *before* an acknowledgment (claiming a
Slack event's id, so a retry is not handled twice; a modal's submission,
whose answer decides whether the modal closes) have
:meth:`AsyncCore.call_before_ack`, which stays in this process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, TypeVar

from core.clock import SystemClock
from core.errors import ChangeUncertain, StoreUnavailable
from core.log_format import configure_logging
from core.settings import Settings
from core.store import Store

T = TypeVar("T")

log = logging.getLogger("supportdesk.core")

POSTGRES_WORKERS = 8
READ_WORKERS = 4
# The writer process runs niced below serve (and below the mail processor, at 5): when both cores are busy,
# the process that answers SMTP sessions and Slack requests gets the CPU, and the writes follow a moment
# later. At 10 it gets about a tenth of a core it shares with serve; at 5 a quarter, and serve then answered
# Slack clicks more slowly (bench/slack.py).
WRITER_NICENESS = 10
PARENT_CHECK_SECONDS = 1.0
START_TIMEOUT_SECONDS = 60.0  # spawning takes about a second; a machine swapping hard may take much longer


class AsyncCore:
    def __init__(self, store: Store, workers: int | None = None, *, writer_process: bool = False) -> None:
        """``writer_process``: run :meth:`call` in a process of its own (see the module's docstring).

        That process opens its own store from ``store.settings`` with the wall clock, so it needs
        a store on the wall clock too.
        """
        self.store = store
        self._writer: _WriterProcess | None = None
        self._pool: Executor
        self._before_ack: Executor
        if writer_process:
            if not isinstance(store.clock, SystemClock):
                raise ValueError("a writer process keeps the wall clock; this store has another clock")
            self._writer = _WriterProcess(store.settings)
            self._before_ack = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supportdesk-db-ack")
        else:
            size = workers or (1 if store.is_sqlite else POSTGRES_WORKERS)
            self._pool = self._before_ack = ThreadPoolExecutor(max_workers=size, thread_name_prefix="supportdesk-db")
        self._reads = ThreadPoolExecutor(max_workers=READ_WORKERS, thread_name_prefix="supportdesk-db-read")

    def start(self) -> None:
        """Start the writer process now (blocking, about a second) rather than on the first call."""
        if self._writer is not None:
            self._writer.start()

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid, when there is one and it runs."""
        return self._writer.pid if self._writer is not None else None

    async def call(self, service: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``service(store, *args, **kwargs)`` where writes run; errors are raised here as raised there."""
        if self._writer is not None:
            return await self._writer.call(service, args, kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(service, self.store, *args, **kwargs))

    async def call_before_ack(self, service: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`call` for a short write Slack's acknowledgment waits for: in this process, never queued
        behind the writer process's backlog (a burst of clicks) while Slack's 3 seconds run."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._before_ack,
                                          functools.partial(service, self.store, *args, **kwargs))

    async def read(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read-only ``query(self.store, ...)`` on the read pool; it must not write."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reads, functools.partial(query, self.store, *args, **kwargs))

    def close(self) -> None:
        """Finish the calls queued (a click acknowledged is a change promised), then stop."""
        if self._writer is not None:
            self._writer.close()
        else:
            self._pool.shutdown(wait=True)
        self._before_ack.shutdown(wait=True)
        self._reads.shutdown(wait=True)


class _WriterProcess:
    """One spawned process running service calls one at a time, replaced when it dies."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self.pid: int | None = None  # the running writer's, as it told us when it started
        self._closed = False
        self._lock = threading.Lock()

    def start(self) -> ProcessPoolExecutor:
        """The running pool, started first if there is none; :class:`StoreUnavailable` if it cannot start."""
        with self._lock:
            if self._closed:
                raise StoreUnavailable("serve is stopping, so this change was not made")
            if self._pool is None:
                pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_writer_main, initargs=(self._settings,))
                try:
                    pid = pool.submit(_ready).result(timeout=START_TIMEOUT_SECONDS)  # up, and its store opened
                except Exception as exc:
                    pool.shutdown(wait=False, cancel_futures=True)
                    log.error("the writer process did not start: %s", exc.__class__.__name__, exc_info=exc)
                    raise StoreUnavailable("the writer process did not start, so this change was not made") from None
                self._pool, self.pid = pool, pid
                log.info("writer process %s started", pid)
            return self._pool

    async def call(self, service: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        for _ in range(2):
            pool = self._pool or await asyncio.to_thread(self.start)
            try:
                future = pool.submit(_run, service, args, kwargs)
            except BrokenProcessPool:  # it died while idle: this call never reached it, so a new one may make it
                self._forget(pool)
                continue
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._forget(pool)
                raise ChangeUncertain("the writer process stopped before it answered, so this change may or may "
                                      "not have been made; look before making it again") from None
        raise StoreUnavailable("the writer process stopped twice in a row, so this change was not made")

    def close(self) -> None:
        """Let the process finish what is queued, then stop it; later calls are refused."""
        with self._lock:
            pool, self._pool, self.pid, self._closed = self._pool, None, None, True
        if pool is not None:
            pool.shutdown(wait=True)

    def _forget(self, pool: ProcessPoolExecutor) -> None:
        """A dead process: the next call starts a new one."""
        with self._lock:
            if self._pool is pool:
                self._pool, self.pid = None, None
                log.error("the writer process stopped unexpectedly; a new one starts with the next change")
        pool.shutdown(wait=False, cancel_futures=True)


_store: Store | None = None


def _writer_main(settings: Settings) -> None:
    """The writer process's start: its own log set-up and store; serve alone decides when it stops."""
    global _store
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; serve stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(WRITER_NICENESS)
    configure_logging(logging.INFO, settings.log_format)  # a spawned process: serve's log set-up is not inherited
    _store = Store.open(settings)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="writer-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A serve killed outright (kill -9, OOM) must not leave its writer behind, waiting for calls forever.

    A change in hand when that happens is rolled back with the connection, as in serve itself.
    """
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _ready() -> int:
    """The writer's pid, once its store is open."""
    assert _store is not None, "the writer process has no store"
    return os.getpid()


def _run(service: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    assert _store is not None, "the writer process has no store"
    return service(_store, *args, **kwargs)
