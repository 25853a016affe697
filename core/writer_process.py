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

Serve stops the process by closing its end of the request pipe: the
process makes the calls it has read and ends. Until then serve reads the
answers while it sends what is left, since the process, too, may be
waiting for room in a full pipe.

What a death means for the calls in flight: a call not wholly in the pipe
cannot have been begun (the process begins a call once it has read all of
it), so it is made by the next process, in order, before any call made
after it; a call that was in the pipe may or may not have been made, and
fails with :class:`ChangeUncertain`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import selectors
import signal
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, TypeVar

from core.child_process import begin_child, start_method
from core.errors import ChangeUncertain, StoreUnavailable
from core.settings import Settings
from core.store import Store

T = TypeVar("T")

log = logging.getLogger("supportdesk.core")

# The writer process runs niced below serve (and below the mail processor, at 5): when both cores are busy,
# the process that answers SMTP sessions and Slack requests gets the CPU, and the writes follow a moment
# later. At 10 it gets about a tenth of a core it shares with serve; at 5 a quarter, and serve then answered
# Slack clicks more slowly (bench/slack.py).
WRITER_NICENESS = 10
PROCESS_NAME = "sd-writer"  # in top and ps -o comm
PARENT_CHECK_SECONDS = 1.0
START_TIMEOUT_SECONDS = 60.0  # spawning takes about a second; a machine swapping hard may take much longer

_LENGTH = struct.Struct("!i")  # Connection's frame header for frames under 2 GiB
_LONG_LENGTH = struct.Struct("!Q")  # ... after a header of -1, for longer ones
_REQUEST = struct.Struct("!Q")  # the call's number
_ANSWER = struct.Struct("!Q?")  # the call's number, and whether it returned (else it raised)
_READ_SIZE = 1 << 16
_STOPPING = "serve is stopping, so this change was not made"


@dataclass
class _Call:
    """One call: its number, its whole frame, the caller's future, and how many processes died before it."""

    number: int
    frame: memoryview
    future: asyncio.Future[Any]
    deaths: int = 0


class WriterProcess:
    """One process making service calls in the order they were made, replaced when it dies.

    Forked when the process that starts it has a single thread (``serve``
    starts it before its event loop, right after the background process),
    spawned otherwise (a replacement): see :mod:`core.child_process`.

    :meth:`call` runs on the event loop. :meth:`start` blocks, in any
    thread; :meth:`close` blocks, on the loop's thread or once the loop has
    ended (the answers it reads complete the callers' futures). A call once
    made is made even if its caller stops waiting for it (a click
    acknowledged is a change promised).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._child: _Child | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        # Calls waiting for a process to start: new ones, and those a dead process never received.
        self._held: list[_Call] = []
        self._starting: asyncio.Task[None] | None = None

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
        frame = _frame(_REQUEST.pack(number), ForkingPickler.dumps((service, args, kwargs)))
        call = _Call(number, memoryview(frame), loop.create_future())
        child = self._child
        if not self._start_pending():
            if self._closed:
                raise StoreUnavailable(_STOPPING)
            if child is not None and not child.gone:
                child.send(loop, call)
                return await call.future
        self._hold([call], loop)
        return await call.future

    def close(self) -> None:
        """Let the process make the calls already made, then stop it; later calls are refused."""
        with self._lock:
            child, self._child, self._closed = self._child, None, True
        if child is not None:
            child.finish()
        self._refuse_held()

    def _hold(self, calls: list[_Call], loop: asyncio.AbstractEventLoop | None) -> None:
        """Keep calls until a process runs (starting one on ``loop``), in the order they were made."""
        for call in calls:
            if call.deaths >= 2:
                _settle(call.future, False, StoreUnavailable(
                    "the writer process stopped twice in a row, so this change was not made"))
            else:
                self._held.append(call)
        if self._closed or loop is None or loop.is_closed():
            self._refuse_held()
        elif self._held and not self._start_pending():
            self._starting = loop.create_task(self._start_then_send(loop))

    def _start_pending(self) -> bool:
        """Whether a start is under way (on a loop that still runs: a test may have ended the last one)."""
        starting = self._starting
        return starting is not None and not starting.done() and not starting.get_loop().is_closed()

    async def _start_then_send(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            child = await asyncio.to_thread(self._running)
        except StoreUnavailable as exc:
            held, self._held = self._held, []
            for call in held:
                _settle(call.future, False, exc)
            return
        held, self._held = sorted(self._held, key=lambda c: c.number), []
        for call in held:
            child.send(loop, call)

    def _refuse_held(self) -> None:
        held, self._held = self._held, []
        for call in held:
            _settle(call.future, False, StoreUnavailable(_STOPPING))

    def _running(self) -> _Child:
        with self._lock:
            if self._closed:
                raise StoreUnavailable(_STOPPING)
            if self._child is None or self._child.gone:
                if self._child is not None:
                    self._child.reap()
                self._child = _Child.start(self._settings, self._hold)
                log.info("writer process %s started", self._child.pid)
            return self._child


class _Child:
    """One writer process and serve's ends of its two pipes; used from one event loop at a time."""

    def __init__(self, process: Any, requests: Connection, answers: Connection, pid: int,
                 unreached: Callable[[list[_Call], asyncio.AbstractEventLoop | None], None]) -> None:
        self.process = process
        self.pid = pid
        self.gone = False
        self._requests = requests
        self._answers = answers
        self._unreached = unreached
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, _Call] = {}
        # Calls not yet wholly in the pipe, in order: the process cannot have begun them, since it
        # begins a call only once it has read its whole frame. Of the first, _sent bytes are in the pipe.
        self._unsent: deque[_Call] = deque()
        self._sent = 0
        self._incoming = bytearray()
        self._watching = False  # whether the loop watches the request pipe for room

    @classmethod
    def start(cls, settings: Settings,
              unreached: Callable[[list[_Call], asyncio.AbstractEventLoop | None], None]) -> _Child:
        method = start_method()
        forked = method == "fork"
        context = multiprocessing.get_context(method)
        request_reader, request_writer = context.Pipe(duplex=False)
        answer_reader, answer_writer = context.Pipe(duplex=False)
        # A forked child holds copies of our ends too: it closes them, or it would never read end of file.
        ours = (request_writer, answer_reader) if forked else ()
        process = context.Process(target=_writer_main,
                                  args=(settings, os.getpid(), request_reader, answer_writer, ours),
                                  name="supportdesk-writer", daemon=True)
        try:
            try:
                process.start()
            finally:
                request_reader.close()  # the child's ends: with ours closed, its death reads as end of file
                answer_writer.close()
            if not answer_reader.poll(START_TIMEOUT_SECONDS):
                raise TimeoutError(f"no answer in {START_TIMEOUT_SECONDS:.0f} s")
            pid = int(answer_reader.recv_bytes())  # sent once its store is open
        except BaseException as exc:
            if process.pid is not None:
                process.kill()
                process.join(5)
            request_writer.close()
            answer_reader.close()
            if not isinstance(exc, Exception):
                raise
            log.error("the writer process did not start: %s", exc.__class__.__name__, exc_info=exc)
            raise StoreUnavailable("the writer process did not start, so this change was not made") from None
        os.set_blocking(request_writer.fileno(), False)
        os.set_blocking(answer_reader.fileno(), False)
        return cls(process, request_writer, answer_reader, pid, unreached)

    def send(self, loop: asyncio.AbstractEventLoop, call: _Call) -> None:
        """Queue a call for the process; the loop writes it as the pipe takes it."""
        if self.gone:
            self._unreached([_died_before(call)], loop)
            return
        self._attach(loop)
        self._waiting[call.number] = call
        self._unsent.append(call)
        if len(self._unsent) == 1:
            self._write()

    def finish(self) -> None:
        """Send what is unsent, then the stop (the request pipe closed), reading answers all the while
        (the process waits for room in the answer pipe as serve may for room in the request pipe),
        until the process has ended; then collect it."""
        if not self.gone:
            self._detach()
            answers, requests = self._answers.fileno(), self._requests.fileno()
            with selectors.DefaultSelector() as selector:
                selector.register(answers, selectors.EVENT_READ)
                selector.register(requests, selectors.EVENT_WRITE)
                ended = False
                while not ended:
                    for key, _ in selector.select():
                        if key.fd == answers:
                            if not self._read_answers():
                                ended = True
                        elif not self._requests.closed:
                            if self._send_or_gone():
                                selector.unregister(requests)
                                self._requests.close()  # the stop: it ends after the calls it has read
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
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._answers.fileno())
            loop.remove_writer(self._requests.fileno())
        self._watching = False

    def _write(self) -> None:
        """Put unsent frames into the pipe until it is full; the loop calls again when it has room."""
        try:
            done = self._send_some()
        except OSError:  # the process is gone
            self._died()
            return
        assert self._loop is not None
        if done and self._watching:
            self._loop.remove_writer(self._requests.fileno())
            self._watching = False
        elif not done and not self._watching:
            self._loop.add_writer(self._requests.fileno(), self._write)
            self._watching = True

    def _readable(self) -> None:
        if not self._read_answers():  # end of file: the process is gone
            self._died()

    # --- either way ----------------------------------------------------------------------------------------

    def _send_some(self) -> bool:
        """Write unsent frames until the pipe is full (False) or none is left (True)."""
        fd = self._requests.fileno()
        while self._unsent:
            frame = self._unsent[0].frame
            try:
                self._sent += os.write(fd, frame[self._sent:])
            except BlockingIOError:
                return False
            if self._sent < len(frame):
                return False
            self._unsent.popleft()
            self._sent = 0
        return True

    def _send_or_gone(self) -> bool:
        """:meth:`_send_some`, True as well when the process is gone (its answers are still to be read)."""
        try:
            return self._send_some()
        except OSError:
            return True

    def _read_answers(self) -> bool:
        """Read what answers are there; False at end of file."""
        try:
            data = os.read(self._answers.fileno(), _READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self._incoming += data
        for answer in _frames(self._incoming):
            self._take(answer)
        return True

    def _take(self, answer: bytes) -> None:
        number, returned = _ANSWER.unpack_from(answer)
        call = self._waiting.pop(number, None)
        if call is None or call.future.done():
            return
        try:
            value = ForkingPickler.loads(memoryview(answer)[_ANSWER.size:])
        except Exception as exc:  # noqa: BLE001 - an answer serve cannot read is that call's error
            value, returned = exc, False
        _settle(call.future, returned, value)

    def _died(self) -> None:
        """Fail the calls in flight: those never wholly sent go to the next process, the others are uncertain."""
        if self.gone:
            return
        self.gone = True
        loop = self._loop
        self._detach()
        unreached = [_died_before(call) for call in self._unsent]
        self._unsent.clear()
        self._sent = 0
        for call in unreached:
            del self._waiting[call.number]
        if self._waiting or unreached:
            log.error("the writer process stopped unexpectedly; a new one starts with the next change")
        for call in self._waiting.values():
            _settle(call.future, False, ChangeUncertain(
                "the writer process stopped before it answered, so this change may or may not have been "
                "made; look before making it again"))
        self._waiting.clear()
        self._requests.close()
        self._answers.close()
        if unreached:  # to the next process, on the loop they came from (none while serve stops)
            self._unreached(unreached, loop)


def _died_before(call: _Call) -> _Call:
    call.deaths += 1
    return call


def _settle(future: asyncio.Future[Any], returned: bool, value: Any) -> None:
    """Complete a caller's future, whatever the value: one that cannot be set must not hold up the others."""
    if future.done():
        return
    try:
        if returned:
            future.set_result(value)
        else:
            future.set_exception(value)
    except (TypeError, RuntimeError):  # StopIteration cannot be raised into a future; a closed loop
        if not future.done():
            try:
                future.set_exception(RuntimeError(f"the writer process answered with {value!r}"))
            except RuntimeError:
                pass


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


# --- in the writer process --------------------------------------------------------------------------------


def _writer_main(settings: Settings, parent: int, requests: Connection, answers: Connection,
                 serves_ends: tuple[Connection, ...]) -> None:
    """Open a store, say so with the pid, then make each call asked for until serve closes its end.

    ``parent`` is serve's pid, passed rather than read: a serve that died
    already is no parent of ours. ``serves_ends``: serve's ends of the two
    pipes, which a forked process holds copies of and closes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; serve stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for end in serves_ends:
        end.close()
    begin_child(PROCESS_NAME, settings.log_format)
    os.nice(WRITER_NICENESS)
    store = Store.open(settings)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="writer-parent-watch", daemon=True).start()
    answers.send_bytes(str(os.getpid()).encode())
    try:
        while True:
            try:
                request = requests.recv_bytes()
            except EOFError:  # serve closed its end: its stop, after every call it made (or it is gone)
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
