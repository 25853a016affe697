"""serve's background process files accepted mail, delivers e-mail, makes digests and comes back if it dies.

Both databases.

The real child process on the test database, woken the way serve wakes it;
mail goes to a Maildir.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from email import message_from_bytes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from cli.background import NICENESS, PROCESS_NAME, BackgroundProcess
from core.clock import SystemClock
from core.db import make_engine
from core.models import ReceivedMail
from core.services.digests import find_digest
from core.services.mail_intake import RawMail, accept_raw_mail
from core.settings import Settings
from core.store import Store
from intake.processor import run_processor
from notifications.digest_job import DueDigest, due_digests
from tests.conftest import Database
from tests.proc_stats import cmdline, comm, stat_fields
from tests.store_locks import hold_write_lock

SUPPORT = "support@localhost"


def mail(n: int) -> RawMail:
    raw = (f"From: customer{n}@example.test\r\nTo: {SUPPORT}\r\nSubject: Where is my order {n}?\r\n"
           f"Message-ID: <order{n}@example.test>\r\n\r\nIt has not arrived.\r\n").encode()
    return RawMail(raw=raw, envelope_from=f"customer{n}@example.test", recipients=(SUPPORT,))


@pytest.fixture
def wall(database: Database, tmp_path: Path) -> Iterator[Store]:
    """The test database as serve opens it: the wall clock, our support address, a Maildir for mail out."""
    settings = Settings(database_url=database.url, support_addresses=(SUPPORT,),
                        outgoing_maildir=tmp_path / "outgoing-mail")
    store = Store(make_engine(database.url), SystemClock(), settings)
    yield store
    store.dispose()


def sent_mail(store: Store) -> list[Path]:
    new = store.settings.outgoing_maildir / "new"
    return sorted(new.iterdir()) if new.exists() else []


def filed(store: Store) -> list[str]:
    with store.read() as session:
        return list(session.execute(select(ReceivedMail.status)).scalars())


def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextmanager
def another_thread_running() -> Iterator[None]:
    busy = threading.Event()
    other = threading.Thread(target=busy.wait)
    other.start()
    try:
        yield
    finally:
        busy.set()
        other.join()


def test_it_files_committed_mail_sends_the_acknowledgments_and_stops_when_told(wall: Store) -> None:
    background = BackgroundProcess(wall.settings)
    background.start()
    try:
        accept_raw_mail(wall, [mail(1), mail(2)])
        background.mail_committed()
        until(lambda: len(sent_mail(wall)) == 2)
        niceness = int(stat_fields(background.pid)[16])  # type: ignore[arg-type]
    finally:
        background.stop()

    assert not background.is_alive and background.restarts == 0
    assert filed(wall) == ["processed", "processed"]
    assert sorted(message_from_bytes(p.read_bytes())["To"] for p in sent_mail(wall)) == [
        "customer1@example.test", "customer2@example.test"]
    assert niceness == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)


def test_a_killed_background_process_is_started_again_and_files_what_came_meanwhile(wall: Store) -> None:
    background = BackgroundProcess(wall.settings)
    background.start()
    try:
        until(lambda: background.is_alive)
        first = background.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        until(lambda: not background.is_alive)
        accept_raw_mail(wall, [mail(3)])
        background.mail_committed()  # nobody reads the pipe now: the ring waits in it
        background.check()
        until(lambda: len(sent_mail(wall)) == 1)
        second = background.pid
    finally:
        background.stop()

    assert background.restarts == 1 and second != first
    assert filed(wall) == ["processed"]


def test_it_is_forked_while_its_parent_has_one_thread_and_spawned_when_restarted_among_threads(wall: Store) -> None:
    background = BackgroundProcess(wall.settings)
    background.start()
    try:
        until(lambda: comm(background.pid or 0) == PROCESS_NAME)
        first, first_method = background.pid, background.start_method
        assert first is not None
        first_command = cmdline(first)
        os.kill(first, signal.SIGKILL)
        until(lambda: not background.is_alive)
        with another_thread_running():  # as in serve, where the event loop's threads run by now
            background.check()
        until(lambda: comm(background.pid or 0) == PROCESS_NAME)
        second_method, second_command = background.start_method, cmdline(background.pid or 0)
        accept_raw_mail(wall, [mail(4)])
        background.mail_committed()
        until(lambda: len(sent_mail(wall)) == 1)
    finally:
        background.stop()

    assert first_method == "fork" and "spawn_main" not in first_command  # a copy of this process
    assert second_method == "spawn" and "spawn_main" in second_command  # a fresh interpreter
    assert filed(wall) == ["processed"]


def test_it_makes_a_digest_when_asked_once_and_answers_none_the_second_time(wall: Store) -> None:
    settings = wall.settings
    now = wall.clock.now()
    daily, _ = due_digests(now, settings.tz, settings.digest_time)
    background = BackgroundProcess(settings)
    background.start()

    async def twice() -> tuple[int | None, int | None]:
        return await background.make_digest(wall, daily, now), await background.make_digest(wall, daily, now)

    try:
        made, again = asyncio.run(twice())
    finally:
        background.stop()

    digest = find_digest(wall, "daily", daily.period)
    assert digest is not None and made == digest.id and again is None
    assert digest.chart_png.startswith(b"\x89PNG")


def test_a_digest_that_fails_or_finds_the_process_dead_is_an_error_here_and_the_next_one_is_made(wall: Store) -> None:
    settings = wall.settings
    now = wall.clock.now()
    today = DueDigest("daily", now.astimezone(settings.tz).date())  # not over yet
    daily, _ = due_digests(now, settings.tz, settings.digest_time)
    background = BackgroundProcess(settings)
    background.start()
    try:
        with pytest.raises(RuntimeError, match=r"making the daily digest .* failed in the background process: "
                                               r"InvalidInput: the period .* has not ended yet"):
            asyncio.run(background.make_digest(wall, today, now))
        alive_after = background.is_alive
        os.kill(background.pid or 0, signal.SIGKILL)
        until(lambda: not background.is_alive)
        with pytest.raises(RuntimeError, match="the background process ended"):
            asyncio.run(background.make_digest(wall, today, now))
        with another_thread_running():  # so the new process is spawned, as in serve: its digests work too
            background.check()  # it finds that request in the pipe and answers it: nobody listens
        until(lambda: comm(background.pid or 0) == PROCESS_NAME)
        spawned = background.start_method == "spawn" and "spawn_main" in cmdline(background.pid or 0)
        made = asyncio.run(background.make_digest(wall, daily, now))
    finally:
        background.stop()

    assert alive_after  # one failed digest does not take the process down
    assert spawned
    assert find_digest(wall, "daily", today.period) is None
    digest = find_digest(wall, "daily", daily.period)
    assert digest is not None and made == digest.id


def test_a_digest_whose_process_died_with_it_in_hand_is_an_error_even_after_a_new_process_started(
        wall: Store) -> None:
    """The process reads the request, waits for the digests' write lock, and is killed; check() replaces it at
    once. The new process never saw the request: waiting for its answer would wait for ever."""
    settings = wall.settings
    now = wall.clock.now()
    daily, _ = due_digests(now, settings.tz, settings.digest_time)
    background = BackgroundProcess(settings)
    background.start()

    async def killed_in_hand() -> BaseException | int | None:
        asking = asyncio.create_task(background.make_digest(wall, daily, now))
        await asyncio.sleep(1.5)  # the request is read, the figures are read, the INSERT waits for the lock
        os.kill(background.pid or 0, signal.SIGKILL)
        until(lambda: not background.is_alive)
        background.check()
        try:
            return await asyncio.wait_for(asking, 20)
        except (RuntimeError, asyncio.TimeoutError) as exc:
            return exc

    release = hold_write_lock(wall, "digests")
    try:
        outcome = asyncio.run(killed_in_hand())
    finally:
        release()
        background.stop()

    assert isinstance(outcome, RuntimeError) and "the background process ended" in str(outcome), outcome


def test_a_background_process_whose_parent_died_at_once_does_not_stay(wall: Store) -> None:
    """Its parent starts it and exits before the child has even imported what it runs: the child ends too."""
    code = (
        "import os, sys\n"
        "from cli.background import BackgroundProcess\n"
        "from core.settings import Settings\n"
        f"background = BackgroundProcess(Settings(database_url={wall.settings.database_url!r}))\n"
        "background.start()\n"
        "print(background.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    with parent.stdout:  # the child holds a copy of this pipe while it lives: read a line, not to the end
        child = int(parent.stdout.readline())
        try:
            assert parent.wait(60) == 0
            until(lambda: stat_fields(child) is None or stat_fields(child)[0] == "Z",  # type: ignore[index]
                  timeout=20)
        finally:
            if stat_fields(child) is not None and comm(child) == PROCESS_NAME:
                os.kill(child, signal.SIGKILL)  # the test failed: leave nothing behind


def test_filing_says_when_it_has_caught_up_once_per_burst_and_not_when_idle(wall: Store) -> None:
    wake_reader, wake_writer = multiprocessing.Pipe(duplex=False)
    stop, idle = threading.Event(), threading.Event()
    caught_up: list[tuple[int, bool]] = []  # mail filed by then, and whether filing said it was idle
    def note() -> None:
        caught_up.append((filed(wall).count("processed"), idle.is_set()))

    loop = threading.Thread(target=run_processor, args=(wall, wake_reader, stop, os.getppid(), note, idle))
    loop.start()
    try:
        time.sleep(1.5)  # idle: one look at an empty store, then a wait for the pipe
        assert caught_up == [] and idle.is_set()
        accept_raw_mail(wall, [mail(n) for n in range(10, 30)])
        os.write(wake_writer.fileno(), b"\0")
        until(lambda: caught_up != [])
    finally:
        stop.set()
        os.write(wake_writer.fileno(), b"\0")
        loop.join(timeout=30)

    assert not loop.is_alive()
    assert caught_up == [(20, True)]  # once, after the whole burst; idle, so the e-mail delivery may write now
    assert filed(wall) == ["processed"] * 20
