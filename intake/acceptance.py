"""Commit-before-250: the raw message is in the store before the SMTP session hears ``250``.

Sessions hand their message to one :class:`Acceptor`, which makes one commit
at a time and puts every message that arrived while the previous commit ran
into the next transaction. Under load that is one commit for many messages;
alone, a message waits for nothing but its own commit.

On PostgreSQL the commit is awaited on the event loop itself
(:class:`core.services.mail_intake.PostgresAcceptance`): one connection of
the acceptor's own, in autocommit, never pinged (the pool's "pre-ping", a
``SELECT 1`` round trip before every transaction, was a third of the time a
lone message's commit took). A connection that was lost since is found by
the commit itself; the batch is then tried once more at once on a new
connection, which is safe because storing the same bytes twice is a no-op.

SQLite's driver cannot wait without blocking, so there the commit runs on a
single writer thread: a session's message goes straight to the thread when
no commit runs, and the thread settles the sessions' futures with one
callback. The acceptance commit shares one write lock with the mail
processor and the outbox delivery. SQLite's own busy handler sleeps 1, 2, 5,
10, 15, 20, 25 ms and more between tries, so a session could wait tens of
milliseconds after the lock was already free; the acceptor therefore opens
its connections with no busy wait and retries every half millisecond itself,
for as long as the store's own busy timeout allows; then the sessions answer
``451``.

Either way the session hears ``250`` only after a commit succeeded, and the
commit does not depend on the session: a session that goes away leaves its
message to be committed all the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from core.db import SQLITE_BUSY_TIMEOUT_MS, make_engine
from core.errors import ConnectionLost, StoreBusy
from core.services.mail_intake import PostgresAcceptance, RawMail, accept_raw_mail
from core.store import Store

log = logging.getLogger("supportdesk.intake")

MAX_BATCH_MESSAGES = 128
MAX_BATCH_BYTES = 64 * 1024 * 1024
LOCK_RETRY = 0.0005  # seconds between tries for SQLite's write lock


class Acceptor:
    """Group commit of raw mail for every SMTP session of the process."""

    def __init__(self, store: Store, on_committed: Callable[[], None] | None = None) -> None:
        self._store, self._lock_wait = _store_for_acceptance(store)
        self._own_store = self._store is not store
        self._on_committed = on_committed
        self._queue: deque[tuple[RawMail, asyncio.Future[None]]] = deque()
        # PostgreSQL: commits awaited on the loop; SQLite: commits on one writer thread.
        self._on_loop = None if self._store.is_sqlite else PostgresAcceptance(self._store)
        self._executor = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake-commit")
                          if self._on_loop is None else None)
        self._commit_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()  # no commit runs (and so nothing is queued: a message starts one at once)
        self._idle.set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def accept(self, item: RawMail) -> None:
        """Return once ``item`` is committed; raise if it could not be.

        The commit does not depend on the session: when the client gives up
        and its session is cancelled, the message in hand is still committed,
        and the client's retry is recognised as the same bytes.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._idle.is_set():
            self._commit_next()
        await future

    async def close(self) -> None:
        """Commit what is queued, then let go of the commit thread or the connection.

        Not done at the first moment no commit runs: a commit that ends
        starts the next batch in the same step (so ``_idle`` may be clear
        again when this wakes), so wait until none runs and none is queued.
        """
        while not (self._idle.is_set() and not self._queue):
            await self._idle.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._on_loop is not None:
            await self._on_loop.close()
        if self._own_store:
            self._store.dispose()

    def _commit_next(self) -> None:
        """On the loop: start the commit of the queued messages, as one batch."""
        assert self._loop is not None, "Acceptor.start() was not called"
        batch = self._take_batch()
        self._idle.clear()
        if self._on_loop is not None:
            self._commit_task = self._loop.create_task(self._commit_on_loop(batch))
            return
        assert self._executor is not None
        loop = self._loop

        def commit() -> None:
            try:
                self._commit_now([item for item, _ in batch])
            except Exception as exc:  # every waiting session answers 451; the message is not ours yet
                loop.call_soon_threadsafe(self._committed, batch, exc)
            else:
                loop.call_soon_threadsafe(self._committed, batch, None)

        self._executor.submit(commit)

    async def _commit_on_loop(self, batch: list[tuple[RawMail, asyncio.Future[None]]]) -> None:
        """PostgreSQL: commit on the loop; once more at once on a new connection if the one held was lost."""
        assert self._on_loop is not None
        items = [item for item, _ in batch]
        try:
            try:
                await self._on_loop.accept(items)
            except ConnectionLost:
                log.info("the acceptance connection to the database was lost; committing again on a new one")
                await self._on_loop.accept(items)
        except Exception as exc:  # every waiting session answers 451; the message is not ours yet
            self._committed(batch, exc)
        else:
            self._committed(batch, None)

    def _committed(self, batch: list[tuple[RawMail, asyncio.Future[None]]], error: Exception | None) -> None:
        """On the loop: answer the batch's sessions, then start on what queued up meanwhile."""
        for _, future in batch:
            if future.done():  # the session went away
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        self._idle.set()
        if self._queue:
            self._commit_next()
        if error is None and self._on_committed is not None:
            self._on_committed()

    def _take_batch(self) -> list[tuple[RawMail, asyncio.Future[None]]]:
        batch: list[tuple[RawMail, asyncio.Future[None]]] = []
        size = 0
        while self._queue and len(batch) < MAX_BATCH_MESSAGES and (not batch or size < MAX_BATCH_BYTES):
            item = self._queue.popleft()
            batch.append(item)
            size += len(item[0].raw)
        return batch

    def _commit_now(self, items: Sequence[RawMail]) -> None:
        """On the commit thread (SQLite): commit; retry while the lock is held elsewhere.

        (A file has no connection to lose: that retry is PostgreSQL's, in :meth:`_commit_on_loop`.)
        """
        deadline = time.monotonic() + self._lock_wait
        while True:
            try:
                accept_raw_mail(self._store, items)
                return
            except StoreBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(LOCK_RETRY)


def _store_for_acceptance(store: Store) -> tuple[Store, float]:
    """The same database through connections of the acceptor's own, and how long to wait for SQLite's lock."""
    if store.is_sqlite:
        return _without_busy_wait(store)
    return store, 0.0  # PostgresAcceptance opens a connection of its own, outside the pool


def _without_busy_wait(store: Store) -> tuple[Store, float]:
    """The same SQLite database with connections that fail at once when locked, and how long ``store`` would wait.

    An in-memory database is returned as it is: another connection would be another database.
    """
    url = store.engine.url
    if url.database in (None, "", ":memory:"):
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
