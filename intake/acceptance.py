"""Commit-before-250: the raw message is in the store before the SMTP session hears ``250``.

Sessions hand their message to one :class:`Acceptor`, which commits on a
single writer thread (the event loop never waits on the database) and puts
every message that arrived while the previous commit ran into the next
transaction. Under load that is one commit for many messages; alone, a
message waits for nothing but its own commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from core.services.mail_intake import RawMail, accept_raw_mail
from core.store import Store

log = logging.getLogger("supportdesk.intake")

MAX_BATCH_MESSAGES = 128
MAX_BATCH_BYTES = 64 * 1024 * 1024


class Acceptor:
    """Group commit of raw mail for every SMTP session of the process."""

    def __init__(self, store: Store, on_committed: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_committed = on_committed
        self._queue: list[tuple[RawMail, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake-commit")
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="intake-commit")

    async def accept(self, item: RawMail) -> None:
        """Return once ``item`` is committed; raise if it could not be.

        The commit is shielded: when the client gives up and its session is
        cancelled, the commit still finishes, and the client's retry is
        recognised as the same bytes.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume_exception)
        self._queue.append((item, future))
        self._wake.set()
        await asyncio.shield(future)

    async def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._commit(self._take_batch())
            if self._closing:
                return

    def _take_batch(self) -> list[tuple[RawMail, asyncio.Future[None]]]:
        batch: list[tuple[RawMail, asyncio.Future[None]]] = []
        size = 0
        while self._queue and len(batch) < MAX_BATCH_MESSAGES and (not batch or size < MAX_BATCH_BYTES):
            item = self._queue.pop(0)
            batch.append(item)
            size += len(item[0].raw)
        return batch

    async def _commit(self, batch: list[tuple[RawMail, asyncio.Future[None]]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, accept_raw_mail, self._store, [item for item, _ in batch])
        except Exception as exc:  # every waiting session answers 451; the message is not ours yet
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)
        if self._on_committed is not None:
            self._on_committed()


def _consume_exception(future: asyncio.Future[None]) -> None:
    # A session that went away no longer awaits its future; its failure is logged by the handler, not by asyncio.
    if not future.cancelled():
        future.exception()
