"""The writer process: service calls made one at a time in a process of its own, driven by serve's event loop.

Why a process: see :mod:`core.facade`. How serve talks to it: two pipes,
read and written by the event loop itself. A call is pickled and written
straight into the request pipe (what does not fit waits in a buffer until
the loop sees the pipe writable), and the loop reads answers off the answer
pipe as they arrive and completes the caller's future. No thread of serve
takes part: ``ProcessPoolExecutor``, used before, moved every call and every
answer through a management thread and a feeder thread, which took serve's
GIL for about a quarter of the CPU serve spent per Slack click
(``bench/slack.py``).

Frames are those of :class:`multiprocessing.connection.Connection` (a
4-byte big-endian length, then the bytes), so the process reads and writes
with ``recv_bytes``/``send_bytes``. A request is the call's number, then the
pickled ``(service, args, kwargs)``; an answer is the number, whether the
call returned, then the pickled result or exception. The number travels
outside the pickle so that a call the process cannot unpickle is still
answered (with the error) rather than lost.

What a death means for the calls in flight: a call whose bytes never
entered the pipe did not reach the process, and is made by the next one; a
call that did may or may not have been made, and fails with
:class:`ChangeUncertain`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import signal
import struct
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, TypeVar

from core.errors import ChangeUncertain, StoreUnavailable
from core.log_format import configure_logging
from core.settings import Settings
from core.store import Store

T = TypeVar("T")

log = logging.getLogger("supportdesk.core")

# The writer process runs niced below serve (and below the mail processor, at 5): when both cores are busy,
# the process that answers SMTP sessions and Slack requests gets the CPU, and the writes follow a moment
# later. At 10 it gets about a tenth of a core it shares with serve; at 5 a quarter, and serve then answered
# Slack clicks more slowly (bench/slack.py).
WRITER_NICENESS = 10
PARENT_CHECK_SECONDS = 1.0
START_TIMEOUT_SECONDS = 60.0  # spawning takes about a second; a machine swapping hard may take much longer

_LENGTH = struct.Struct("!i")  # Connection's frame header for frames under 2 GiB
_LONG_LENGTH = struct.Struct("!Q")  # ... after a header of -1, for longer ones
_REQUEST = struct.Struct("!Q")  # the call's number
_ANSWER = struct.Struct("!Q?")  # the call's number, and whether it returned (else it raised)
_READ_SIZE = 1 << 16


class WriterProcess:
    """One spawned process running service calls in the order they were made, replaced when it dies.

    :meth:`call` runs on the event loop. :meth:`start` blocks, in any
    thread; :meth:`close` blocks, on the loop's thread or once the loop has
    ended (the answers it reads complete the callers' futures).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._child: _Child | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._starting: asyncio.Future[_Child] | None = None

    @property
    def pid(self) -> int | None:
        """The running writer's pid, when one runs."""
        child = self._child
        return child.pid if child is not None and not child.gone else None

    def start(self) -> None:
        """Start the process (about a second) unless one runs; :class:`StoreUnavailable` if it cannot start."""
        self._running()

    async def call(self, service: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        """``service(store, *args, **kwargs)`` in the writer process; its error is raised here as raised there."""
        loop = asyncio.get_running_loop()
        number = next(self._numbers)
        request = _frame(_REQUEST.pack(number), ForkingPickler.dumps((service, args, kwargs)))
        for _ in range(2):
            child = self._child
            if child is None or child.gone:
                child = await self._started()
            try:
                return await child.call(loop, number, request)
            except _NotReached:  # it died before this call was in its pipe: a new one may make it
                continue
        raise StoreUnavailable("the writer process stopped twice in a row, so this change was not made")

    async def _started(self) -> _Child:
        """A running process, started (in a thread) if none runs.

        Every call waiting for it shares one start, and they go on in the
        order they were made: the calls a dead process never received are
        made by the next one in their order.
        """
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(asyncio.to_thread(self._running))
        return await asyncio.shield(self._starting)

    def close(self) -> None:
        """Let the process make the calls already made, then stop it; later calls are refused."""
        with self._lock:
            child, self._child, self._closed = self._child, None, True
        if child is not None:
            child.finish()

    def _running(self) -> _Child:
        with self._lock:
            if self._closed:
                raise StoreUnavailable("serve is stopping, so this change was not made")
            if self._child is None or self._child.gone:
                if self._child is not None:
                    self._child.reap()
                self._child = _Child.spawn(self._settings)
                log.info("writer process %s started", self._child.pid)
            return self._child


class _NotReached(Exception):
    """The process died before the call was wholly in its pipe, so it cannot have begun it."""


class _Child:
    """One writer process and serve's ends of its two pipes; used from one event loop at a time."""

    def __init__(self, process: Any, requests: Connection, answers: Connection, pid: int) -> None:
        self.process = process
        self.pid = pid
        self.gone = False
        self._requests = requests
        self._answers = answers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        # Frames not yet wholly in the pipe, in order: calls the process cannot have begun, since it
        # begins a call only once it has read the whole frame.
        self._unsent: deque[tuple[int, memoryview]] = deque()
        self._incoming = bytearray()
        self._watching = False  # whether the loop watches the request pipe for room

    @classmethod
    def spawn(cls, settings: Settings) -> _Child:
        context = multiprocessing.get_context("spawn")
        request_reader, request_writer = context.Pipe(duplex=False)
        answer_reader, answer_writer = context.Pipe(duplex=False)
        process = context.Process(target=_writer_main, args=(settings, request_reader, answer_writer),
                                  name="supportdesk-writer", daemon=True)
        try:
            process.start()
        finally:
            request_reader.close()  # the child's ends: with ours closed, its death reads as end of file
            answer_writer.close()
        try:
            if not answer_reader.poll(START_TIMEOUT_SECONDS):
                raise TimeoutError(f"no answer in {START_TIMEOUT_SECONDS:.0f} s")
            pid = int(answer_reader.recv_bytes())  # sent once its store is open
        except Exception as exc:
            process.kill()
            process.join(5)
            request_writer.close()
            answer_reader.close()
            log.error("the writer process did not start: %s", exc.__class__.__name__, exc_info=exc)
            raise StoreUnavailable("the writer process did not start, so this change was not made") from None
        os.set_blocking(request_writer.fileno(), False)
        os.set_blocking(answer_reader.fileno(), False)
        return cls(process, request_writer, answer_reader, pid)

    async def call(self, loop: asyncio.AbstractEventLoop, number: int, request: bytes) -> Any:
        if self.gone:
            raise _NotReached()
        self._attach(loop)
        future = loop.create_future()
        self._waiting[number] = future
        self._unsent.append((number, memoryview(request)))
        if len(self._unsent) == 1:
            self._write()
        return await future

    def finish(self) -> None:
        """Send what is unsent and the stop, read every answer, and wait for the process to end.

        Blocking, on the event loop's thread (or once the loop has ended): the answers complete
        their callers' futures.
        """
        self._detach()
        if not self.gone:
            os.set_blocking(self._requests.fileno(), True)
            os.set_blocking(self._answers.fileno(), True)
            try:
                while self._unsent:
                    _write_all(self._requests, self._unsent[0][1])
                    self._unsent.popleft()
                _write_all(self._requests, memoryview(_LENGTH.pack(0)))  # the stop, after every call made
                while data := os.read(self._answers.fileno(), _READ_SIZE):
                    self._received(data)
            except OSError:  # it died
                pass
        self._died()
        self.process.join()

    def reap(self) -> None:
        """Collect a dead process (it is killed first, should it linger)."""
        self.process.kill()
        self.process.join(5)

    # --- on the event loop -----------------------------------------------------------------------------

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            return
        self._detach()
        self._loop = loop
        loop.add_reader(self._answers.fileno(), self._readable)
        if self._unsent:
            loop.add_writer(self._requests.fileno(), self._write)
            self._watching = True

    def _detach(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._answers.fileno())
            self._loop.remove_writer(self._requests.fileno())
        self._watching = False

    def _write(self) -> None:
        """Put unsent frames into the pipe until it is full; the loop calls again when it has room."""
        fd = self._requests.fileno()
        while self._unsent:
            number, frame = self._unsent[0]
            try:
                written = os.write(fd, frame)
            except BlockingIOError:
                written = 0
            except OSError:  # the process is gone
                self._died()
                return
            if written < len(frame):
                self._unsent[0] = (number, frame[written:])
                if not self._watching:
                    assert self._loop is not None
                    self._loop.add_writer(fd, self._write)
                    self._watching = True
                return
            self._unsent.popleft()
        if self._watching:
            assert self._loop is not None
            self._loop.remove_writer(fd)
            self._watching = False

    def _readable(self) -> None:
        try:
            data = os.read(self._answers.fileno(), _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # end of file: the process is gone
            self._died()
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        self._incoming += data
        for answer in _frames(self._incoming):
            self._take(answer)

    def _take(self, answer: bytes) -> None:
        number, returned = _ANSWER.unpack_from(answer)
        future = self._waiting.pop(number, None)
        if future is None or future.done():
            return
        try:
            value = ForkingPickler.loads(memoryview(answer)[_ANSWER.size:])
        except Exception as exc:  # noqa: BLE001 - an answer serve cannot read is that call's error
            value, returned = exc, False
        if returned:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _died(self) -> None:
        """Fail the calls in flight: those never sent were not reached, the others are uncertain."""
        if self.gone:
            return
        self.gone = True
        self._detach()
        unreached = {number for number, _ in self._unsent}
        self._unsent.clear()
        if self._waiting:
            log.error("the writer process stopped unexpectedly; a new one starts with the next change")
        for number, future in self._waiting.items():
            if future.done():
                continue
            if number in unreached:
                future.set_exception(_NotReached())
            else:
                future.set_exception(ChangeUncertain(
                    "the writer process stopped before it answered, so this change may or may not have been "
                    "made; look before making it again"))
        self._waiting.clear()
        self._requests.close()
        self._answers.close()


def _frame(*parts: bytes) -> bytes:
    size = sum(len(part) for part in parts)
    if size > 0x7FFFFFFF:
        return b"".join((_LENGTH.pack(-1), _LONG_LENGTH.pack(size), *parts))
    return b"".join((_LENGTH.pack(size), *parts))


def _frames(buffer: bytearray) -> list[bytes]:
    """The whole frames at the start of ``buffer``, removed from it; a partial frame stays."""
    frames: list[bytes] = []
    start = 0
    while len(buffer) - start >= _LENGTH.size:
        size = _LENGTH.unpack_from(buffer, start)[0]
        header = _LENGTH.size
        if size == -1:
            if len(buffer) - start < _LENGTH.size + _LONG_LENGTH.size:
                break
            size = _LONG_LENGTH.unpack_from(buffer, start + _LENGTH.size)[0]
            header += _LONG_LENGTH.size
        if len(buffer) - start < header + size:
            break
        frames.append(bytes(buffer[start + header:start + header + size]))
        start += header + size
    del buffer[:start]
    return frames


def _write_all(connection: Connection, data: memoryview) -> None:
    """The rest of a frame part of which is in the pipe already (blocking)."""
    while data:
        data = data[os.write(connection.fileno(), data):]


# --- in the writer process --------------------------------------------------------------------------------


def _writer_main(settings: Settings, requests: Connection, answers: Connection) -> None:
    """Open a store, say so with the pid, then make each call asked for until serve says stop or is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; serve stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(WRITER_NICENESS)
    configure_logging(logging.INFO, settings.log_format)  # a spawned process: serve's log set-up is not inherited
    store = Store.open(settings)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="writer-parent-watch", daemon=True).start()
    answers.send_bytes(str(os.getpid()).encode())
    try:
        while True:
            try:
                request = requests.recv_bytes()
            except EOFError:  # serve is gone
                break
            if not request:  # serve's stop, after every call it made
                break
            answers.send_bytes(_answer(store, request))
    finally:
        store.dispose()


def _answer(store: Store, request: bytes) -> bytes:
    number = _REQUEST.unpack_from(request)[0]
    try:
        service, args, kwargs = ForkingPickler.loads(memoryview(request)[_REQUEST.size:])
        result, returned = service(store, *args, **kwargs), True
    except BaseException as exc:  # noqa: BLE001 - raised again in serve, where the caller decides
        result, returned = exc, False
    try:
        return _ANSWER.pack(number, returned) + ForkingPickler.dumps(result)
    except Exception as exc:  # noqa: BLE001 - the caller still gets an answer
        unsendable = RuntimeError(f"the writer process could not send back {type(result).__name__}: {exc}")
        return _ANSWER.pack(number, False) + ForkingPickler.dumps(unsendable)


def _exit_with_parent(parent: int) -> None:
    """A serve killed outright (kill -9, OOM) must not leave its writer behind, waiting for calls forever.

    A change in hand when that happens is rolled back with the connection, as in serve itself.
    """
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)
