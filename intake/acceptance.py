"""Commit-before-250: the raw message is in the store before the SMTP session hears ``250``.

Sessions hand their message to one :class:`Acceptor`, which commits on a
single writer thread (the event loop never waits on the database) and puts
every message that arrived while the previous commit ran into the next
transaction. Under load that is one commit for many messages; alone, a
message waits for nothing but its own commit.

On SQLite the acceptance commit shares one write lock with the mail
processor and the outbox delivery. SQLite's own busy handler sleeps 1, 2, 5,
10, 15, 20, 25 ms and more between tries, so a session could wait tens of
milliseconds after the lock was already free; the acceptor therefore opens
its connections with no busy wait and retries every half millisecond itself,
for as long as the store's own busy timeout allows; then the sessions answer
``451``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from core.db import SQLITE_BUSY_TIMEOUT_MS, make_engine
from core.errors import StoreBusy
from core.services.mail_intake import RawMail, accept_raw_mail
from core.store import Store

log = logging.getLogger("supportdesk.intake")

MAX_BATCH_MESSAGES = 128
MAX_BATCH_BYTES = 64 * 1024 * 1024
LOCK_RETRY = 0.0005  # seconds between tries for SQLite's write lock


class Acceptor:
    """Group commit of raw mail for every SMTP session of the process."""

    def __init__(self, store: Store, on_committed: Callable[[], None] | None = None) -> None:
        self._store, self._lock_wait = _without_busy_wait(store)
        self._own_store = self._store is not store
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
        if self._own_store:
            self._store.dispose()

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
            await loop.run_in_executor(self._executor, self._commit_now, [item for item, _ in batch])
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


    def _commit_now(self, items: Sequence[RawMail]) -> None:
        """On the writer thread: commit, retrying at once while another writer holds SQLite's lock."""
        deadline = time.monotonic() + self._lock_wait
        while True:
            try:
                accept_raw_mail(self._store, items)
                return
            except StoreBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(LOCK_RETRY)


def _without_busy_wait(store: Store) -> tuple[Store, float]:
    """The same SQLite database with connections that fail at once when locked, and how long ``store`` would wait.

    Other stores are returned as they are (PostgreSQL has no database-wide
    write lock), with no retrying.
    """
    url = store.engine.url
    if not store.is_sqlite or url.database in (None, "", ":memory:"):
        return store, 0.0
    busy_timeout_ms = SQLITE_BUSY_TIMEOUT_MS
    try:
        connection = store.engine.raw_connection()  # not engine.connect(): that would begin a write transaction
        try:
            busy_timeout_ms = connection.execute("PRAGMA busy_timeout").fetchone()[0]
        finally:
            connection.close()
    except Exception:  # noqa: BLE001 - a database that cannot be opened fails at the first commit, with a 451
        log.debug("could not read the SQLite busy timeout; using the default", exc_info=True)
    engine = make_engine(url.render_as_string(hide_password=False), connect_args={"timeout": 0})
    return Store(engine, store.clock, store.settings), busy_timeout_ms / 1000


def _consume_exception(future: asyncio.Future[None]) -> None:
    # A session that went away no longer awaits its future; its failure is logged by the handler, not by asyncio.
    if not future.cancelled():
        future.exception()
