"""The async façade: how the asyncio front ends call the synchronous core.

The SMTP listener, the Slack app and the scheduler share one event loop; a
service call blocks on the database, so it runs on a small thread pool
instead. On SQLite the pool has one thread, because SQLite has one writer
anyway and queueing in Python is cheaper than spinning on the busy lock.

Reads (:meth:`AsyncCore.read`) have a pool of their own: in WAL mode SQLite
readers never wait for the writer, so a lookup on the way to a Slack
acknowledgment does not queue behind a burst of claims.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from core.store import Store

T = TypeVar("T")

POSTGRES_WORKERS = 8
READ_WORKERS = 4


class AsyncCore:
    def __init__(self, store: Store, workers: int | None = None) -> None:
        self.store = store
        size = workers or (1 if store.is_sqlite else POSTGRES_WORKERS)
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="supportdesk-db")
        self._reads = ThreadPoolExecutor(max_workers=READ_WORKERS, thread_name_prefix="supportdesk-db-read")

    async def call(self, service: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``service(self.store, *args, **kwargs)`` on the database pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(service, self.store, *args, **kwargs))

    async def read(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read-only ``query(self.store, ...)`` on the read pool; it must not write."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reads, functools.partial(query, self.store, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._reads.shutdown(wait=True)
