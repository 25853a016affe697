"""The writer process's pipes: order, bursts larger than a pipe, answers larger than a read, odd calls, stopping.

The service functions live at module level: the writer process finds them
by reference, importing this module.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import pytest

from core.errors import ChangeUncertain, StoreUnavailable
from core.settings import Settings
from core.store import Store
from core.writer_process import WriterProcess
from tests.conftest import Database

_calls_seen: list[int] = []  # in the writer process: the calls made, in the order made


def note(_store: Store, n: int, payload: bytes = b"") -> tuple[int, int, int]:
    """Which call this was in the writer process's order, next to its own number and payload size."""
    _calls_seen.append(n)
    return len(_calls_seen), n, len(payload)


def big_answer(_store: Store, size: int) -> bytes:
    return os.urandom(size)


def pid_of_writer(_store: Store) -> int:
    return os.getpid()


def sleep_in_writer(_store: Store, seconds: float) -> None:
    threading.Event().wait(seconds)


def unsendable(_store: Store) -> Any:
    return threading.Lock()


def stops_iterating(_store: Store) -> None:
    raise StopIteration("no more")


def note_with_big_answer(store: Store, n: int, payload: bytes = b"") -> tuple[tuple[int, int, int], bytes]:
    return note(store, n, payload), os.urandom(100_000)


def wrong(_store: Store) -> None:
    raise KeyError("nothing by that name")


def _refuse_to_be_read() -> None:
    raise ValueError("this call cannot be read here")


class ReadOnlyHere:
    """Pickles in serve; unpickling it (in the writer process) raises."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _refuse_to_be_read, ()


def in_a_thread(scenario: Any, seconds: float = 120.0) -> Any:
    """Run ``asyncio.run(scenario())`` in a thread of its own: a hang fails the test instead of stopping the suite."""
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(asyncio.run(scenario())), daemon=True)
    runner.start()
    runner.join(seconds)
    assert not runner.is_alive(), f"still running after {seconds:.0f} s"
    assert outcome, "the scenario raised (its traceback is above)"
    return outcome[0]


@pytest.fixture
def settings(database: Database) -> Settings:
    """Settings of a migrated test database: the writer process opens its own store from them."""
    return Settings(database_url=database.url)


def test_calls_are_made_in_the_order_made_through_a_burst_larger_than_the_pipe(settings: Settings) -> None:
    async def scenario() -> tuple[list[tuple[int, int, int]], bytes]:
        writer = WriterProcess(settings)
        try:
            payload = b"x" * 4096  # 600 calls: some 2.4 MB, where a pipe holds 64 KB
            calls = [writer.call(note, (n, payload), {}) for n in range(600)]
            made = await asyncio.gather(*calls)
            answer = await writer.call(big_answer, (3_000_000,), {})  # many reads of the answer pipe
            return made, answer
        finally:
            writer.close()

    made, answer = asyncio.run(scenario())
    assert made == [(n + 1, n, 4096) for n in range(600)]
    assert len(answer) == 3_000_000


def test_an_error_raised_there_is_raised_here_and_the_next_call_is_made(settings: Settings) -> None:
    async def scenario() -> list[str]:
        writer = WriterProcess(settings)
        seen = []
        try:
            for call in (wrong, unsendable):
                try:
                    await writer.call(call, (), {})
                except Exception as exc:  # noqa: BLE001 - what the test looks at
                    seen.append(f"{type(exc).__name__}: {exc}")
            try:
                await writer.call(note, (1, ReadOnlyHere()), {})
            except ValueError as exc:
                seen.append(f"ValueError: {exc}")
            try:
                await writer.call(note, (2, lambda: None), {})  # cannot be pickled: never sent
            except Exception as exc:  # noqa: BLE001
                seen.append(type(exc).__name__)
            # An exception a future cannot hold, answered together with the next call's answer.
            stopped = asyncio.ensure_future(writer.call(stops_iterating, (), {}))
            after = asyncio.ensure_future(writer.call(note, (3,), {}))
            try:
                await stopped
            except RuntimeError as exc:
                seen.append(f"RuntimeError: {exc}")
            seen.append(str(await after))
            return seen
        finally:
            writer.close()

    seen = in_a_thread(scenario)
    assert seen[0] == "KeyError: 'nothing by that name'"
    assert seen[1].startswith("RuntimeError: the writer process could not send back lock")
    assert seen[2] == "ValueError: this call cannot be read here"
    assert seen[3] in ("PicklingError", "AttributeError")
    assert seen[4] == "RuntimeError: the writer process answered with StopIteration('no more')"
    assert seen[5] == "(1, 3, 0)"  # the four before never reached note(): this is its first call


def test_closing_makes_every_call_already_made_then_refuses_new_ones(settings: Settings) -> None:
    async def scenario() -> tuple[list[tuple[int, int, int]], str]:
        writer = WriterProcess(settings)
        await writer.call(pid_of_writer, (), {})
        pending = [asyncio.ensure_future(writer.call(note, (n, b"y" * 65536), {})) for n in range(40)]
        await asyncio.sleep(0)  # every call written or waiting for room in the pipe, none answered yet
        writer.close()  # blocks until the process has made them all and stopped
        made = await asyncio.gather(*pending)
        with pytest.raises(StoreUnavailable) as refused:
            await writer.call(note, (99,), {})
        return made, str(refused.value)

    made, refused = asyncio.run(scenario())
    assert made == [(n + 1, n, 65536) for n in range(40)]
    assert "serve is stopping" in refused


def test_calls_that_never_entered_a_dead_writers_pipe_are_made_by_the_next_one(settings: Settings) -> None:
    async def scenario() -> tuple[int, list[Any], str]:
        writer = WriterProcess(settings)
        try:
            first = await writer.call(pid_of_writer, (), {})
            in_hand = asyncio.ensure_future(writer.call(sleep_in_writer, (30.0,), {}))
            queued = [asyncio.ensure_future(writer.call(note, (n, b"z" * 65536), {})) for n in range(50)]
            await asyncio.sleep(0.5)  # the sleep has begun; the pipe is full and most calls wait for room
            os.kill(first, signal.SIGKILL)
            with pytest.raises(ChangeUncertain) as uncertain:
                await in_hand
            outcomes = await asyncio.gather(*queued, return_exceptions=True)
            second = await writer.call(pid_of_writer, (), {})
            assert second != first
            return first, outcomes, str(uncertain.value)
        finally:
            writer.close()

    _first, outcomes, uncertain = asyncio.run(scenario())
    assert "may or may not have been made" in uncertain
    made = [o for o in outcomes if isinstance(o, tuple)]
    unsure = [o for o in outcomes if isinstance(o, ChangeUncertain)]
    assert len(made) + len(unsure) == 50  # nothing else: no call lost without a word, none failed otherwise
    assert len(unsure) <= 3  # only those wholly in the dead process's pipe (64 KB holds one such frame)
    assert [n for _, n, _ in made] == sorted(n for _, n, _ in made)  # still in the order made
    assert made[0][0] == 1  # by the new process, the first call it made


def test_closing_with_more_answers_than_a_pipe_holds_does_not_hang(settings: Settings) -> None:
    async def scenario() -> list[int]:
        writer = WriterProcess(settings)
        await writer.call(pid_of_writer, (), {})
        # 3 MB of calls to send and 3 MB of answers to read: neither fits a pipe, so close() must read
        # answers while it sends, or both sides wait for each other for ever.
        pending = [asyncio.ensure_future(writer.call(note_with_big_answer, (n, b"y" * 100_000), {}))
                   for n in range(30)]
        await asyncio.sleep(0)
        writer.close()
        return [made[1] for made, _ in await asyncio.gather(*pending)]

    assert in_a_thread(scenario) == list(range(30))


def test_closing_after_the_writer_died_unseen_collects_it_quietly(settings: Settings) -> None:
    async def scenario() -> tuple[int | None, int]:
        writer = WriterProcess(settings)
        first = await writer.call(pid_of_writer, (), {})
        os.kill(first, signal.SIGKILL)
        while writer.pid is not None:  # the loop sees its pipe end
            await asyncio.sleep(0.01)
        writer.close()
        return writer.pid, first

    pid, first = in_a_thread(scenario)
    assert pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(first, os.WNOHANG)  # collected: no zombie left behind


def test_a_call_made_while_a_new_writer_starts_waits_for_the_calls_made_before_it(settings: Settings) -> None:
    async def scenario() -> tuple[list[Any], tuple[int, int, int]]:
        writer = WriterProcess(settings)
        try:
            first = await writer.call(pid_of_writer, (), {})
            in_hand = asyncio.ensure_future(writer.call(sleep_in_writer, (30.0,), {}))
            queued = [asyncio.ensure_future(writer.call(note, (n, b"z" * 65536), {})) for n in range(10)]
            await asyncio.sleep(0.5)
            os.kill(first, signal.SIGKILL)
            while writer.pid in (first, None):  # until the next process is there, maybe not yet sent to
                await asyncio.sleep(0)
            late = await writer.call(note, (999,), {})
            await asyncio.gather(in_hand, return_exceptions=True)
            return await asyncio.gather(*queued, return_exceptions=True), late
        finally:
            writer.close()

    outcomes, late = in_a_thread(scenario)
    made = [o for o in outcomes if isinstance(o, tuple)]
    assert made and all(late[0] > position for position, _, _ in made)
