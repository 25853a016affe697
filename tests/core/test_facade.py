"""The async façade runs service calls off the event loop, one writer thread on SQLite."""

from __future__ import annotations

import asyncio
import threading

from core import services
from core.facade import AsyncCore
from core.queries import get_request_detail
from core.store import Store
from tests.factories import AGENT, open_request, seed


def test_service_calls_run_on_the_database_pool(store: Store) -> None:
    seed(store)
    key = open_request(store).key
    seen: list[str] = []

    def claim_and_note(s: Store, k: str) -> str:
        seen.append(threading.current_thread().name)
        return services.claim(s, k, actor=AGENT).status

    async def scenario() -> str:
        core = AsyncCore(store)
        try:
            return await core.call(claim_and_note, key)
        finally:
            core.close()

    assert asyncio.run(scenario()) == "assigned"
    assert seen and seen[0].startswith("supportdesk-db")


def test_loop_stays_responsive_while_calls_run(store: Store) -> None:
    seed(store)
    keys = [open_request(store, subject=f"r{i}").key for i in range(5)]

    async def scenario() -> tuple[list[str], int]:
        core = AsyncCore(store)
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        try:
            results = await asyncio.gather(*(core.call(services.claim, k, actor=AGENT) for k in keys))
        finally:
            stop.set()
            await task
            core.close()
        return [r.status for r in results], ticks

    statuses, ticks = asyncio.run(scenario())
    assert statuses == ["assigned"] * 5
    assert ticks > 5  # the loop kept running while the database worked


def test_reads_do_not_queue_behind_a_write_in_progress(store: Store) -> None:
    """A read answers while the one writer thread is busy: it has a pool of its own."""
    seed(store)
    key = open_request(store).key
    writing, release = threading.Event(), threading.Event()

    def slow_write(s: Store) -> None:
        writing.set()
        release.wait(10)

    async def scenario() -> str:
        core = AsyncCore(store)
        try:
            write = asyncio.ensure_future(core.call(slow_write))
            await asyncio.get_running_loop().run_in_executor(None, writing.wait, 10)
            found = await asyncio.wait_for(core.read(get_request_detail, key), timeout=5)
            release.set()
            await write
            return found.request.key
        finally:
            release.set()
            core.close()

    assert asyncio.run(scenario()) == key
