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
  they were raised. If the process dies, a new one makes the calls the
  dead one never received; those it had received and not answered fail
  with :class:`ChangeUncertain` (they may or may not have been made). See
  :mod:`core.writer_process`.

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
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from core.clock import SystemClock
from core.store import Store
from core.writer_process import WriterProcess

T = TypeVar("T")

POSTGRES_WORKERS = 8
READ_WORKERS = 4


class AsyncCore:
    def __init__(self, store: Store, workers: int | None = None, *, writer_process: bool = False) -> None:
        """``writer_process``: run :meth:`call` in a process of its own (see the module's docstring).

        That process opens its own store from ``store.settings`` with the wall clock, so it needs
        a store on the wall clock too.
        """
        self.store = store
        self._writer: WriterProcess | None = None
        self._pool: Executor
        self._before_ack: Executor
        if writer_process:
            if not isinstance(store.clock, SystemClock):
                raise ValueError("a writer process keeps the wall clock; this store has another clock")
            self._writer = WriterProcess(store.settings)
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
