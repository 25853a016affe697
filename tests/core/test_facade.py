"""The async façade runs service calls off the event loop: one writer thread on SQLite, or a writer process."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from core import services
from core.clock import SystemClock
from core.db import make_engine
from core.errors import ChangeUncertain, StoreUnavailable, TransitionRefused
from core.facade import AsyncCore
from core.writer_process import WRITER_NICENESS
from core.queries import get_request_detail
from core.settings import Settings
from core.store import Store
from tests.conftest import Database
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


# --- in a writer process of its own (what serve uses with Slack) -------------------------------------------


def pid_and_niceness(_store: Store) -> tuple[int, int]:
    """A service-shaped function the writer process runs by reference (so it lives at module level)."""
    return os.getpid(), os.getpriority(os.PRIO_PROCESS, 0)


def wall_clock_store(database: Database) -> Store:
    return Store(make_engine(database.url), SystemClock(), Settings(database_url=database.url))


@pytest.fixture
def on_the_wall_clock(store: Store, database: Database) -> Iterator[tuple[Store, str]]:
    """The test database seeded, with one new request, opened again on the wall clock (as serve opens it)."""
    seed(store)
    key = open_request(store).key
    wall = wall_clock_store(database)
    yield wall, key
    wall.dispose()


def test_a_writer_process_makes_the_changes_niced_below_serve_and_raises_their_errors_here(
    store: Store, on_the_wall_clock: tuple[Store, str]
) -> None:
    wall, key = on_the_wall_clock

    async def scenario() -> tuple[tuple[int, int], str, str, int | None, int]:
        core = AsyncCore(wall, writer_process=True)
        try:
            core.start()
            where = await core.call(pid_and_niceness)
            claimed = await core.call(services.claim, key, actor=AGENT)
            with pytest.raises(TransitionRefused) as refused:
                await core.call(services.claim, key, actor=AGENT)
            before_ack, _ = await core.call_before_ack(pid_and_niceness)
            return where, claimed.status, str(refused.value), core.writer_pid, before_ack
        finally:
            core.close()

    (pid, niceness), status, refusal, writer_pid, before_ack = asyncio.run(scenario())
    assert pid != os.getpid() and pid == writer_pid
    assert before_ack == os.getpid()  # the write an acknowledgment waits for never queues behind the writer
    assert niceness == min(19, os.getpriority(os.PRIO_PROCESS, 0) + WRITER_NICENESS)
    assert status == "assigned" and get_request_detail(store, key).request.status == "assigned"
    assert refusal == f"{key} was already claimed by Alice Agent ({AGENT}); it is assigned"


def sleep_in_writer(_store: Store, seconds: float) -> None:
    time.sleep(seconds)


def test_a_dead_writer_process_is_replaced_and_a_change_it_did_not_answer_is_reported_as_uncertain(
    on_the_wall_clock: tuple[Store, str]
) -> None:
    wall, key = on_the_wall_clock

    async def scenario() -> tuple[int, int, int, str, str]:
        core = AsyncCore(wall, writer_process=True)
        try:
            first, _ = await core.call(pid_and_niceness)
            os.kill(first, signal.SIGKILL)  # while idle: the next call never reached it, so it is made by a new one
            for _ in range(100):
                try:
                    second, _ = await core.call(pid_and_niceness)
                    break
                except ChangeUncertain:  # submitted before the pool had seen the death
                    await asyncio.sleep(0.05)
            in_hand = asyncio.ensure_future(core.call(sleep_in_writer, 30.0))
            await asyncio.sleep(0.5)
            os.kill(second, signal.SIGKILL)  # while it answers nothing: that change's fate is unknown to serve
            with pytest.raises(ChangeUncertain) as uncertain:
                await in_hand
            third, _ = await core.call(pid_and_niceness)
            view = await core.call(services.claim, key, actor=AGENT)
            return first, second, third, view.status, str(uncertain.value)
        finally:
            core.close()

    first, second, third, status, uncertain = asyncio.run(scenario())
    assert len({first, second, third}) == 3 and status == "assigned"
    assert "may or may not have been made" in uncertain


def test_a_closed_writer_refuses_changes_instead_of_starting_again(on_the_wall_clock: tuple[Store, str]) -> None:
    wall, _key = on_the_wall_clock

    async def scenario() -> None:
        core = AsyncCore(wall, writer_process=True)
        await core.call(pid_and_niceness)
        core.close()
        with pytest.raises(StoreUnavailable, match="serve is stopping"):
            await core.call(pid_and_niceness)

    asyncio.run(scenario())


def test_a_writer_process_needs_the_wall_clock(store: Store) -> None:
    with pytest.raises(ValueError, match="wall clock"):
        AsyncCore(store, writer_process=True)
