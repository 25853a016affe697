"""Acknowledge first, then work: how every listener runs, and how serve waits for the work on stop.

Slack wants each request answered within 3 s, and the answer (``ack()``)
is all the person clicking waits for. Bolt's default way of running an
async listener after its acknowledgment (``process_before_response=False``)
starts the listener as a task and then checks every 10 ms whether ``ack()``
has been called, so every answer waits at least one such sleep, and under
load the sleeps of many requests queue on the event loop. The app therefore
runs with ``process_before_response=True`` (Bolt returns the answer when the
listener function returns) and wraps each listener with :class:`AckFirst`,
which starts the real listener as a task and returns the moment that task
calls ``ack()``; the rest of the listener (the claim, the modal, the
ephemeral reply) carries on in the task.

A listener without an ``ack`` parameter (the Events API's, which Bolt
acknowledges by itself) returns at once and works in the background as well,
so a slow note never holds Slack's delivery. A listener that fails before
acknowledging fails the request as it would have without the wrapper (Bolt
answers 500 and logs it); one that fails afterwards is logged, since there
is nobody left to answer.

The tasks are kept, so that stopping serve waits for work already
acknowledged (a claim half done) instead of cancelling it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("supportdesk.slack")

Listener = Callable[..., Awaitable[Any]]

PROGRESS_SECONDS = 10.0  # while stopping, how often the log says how many are still working


class AckFirst:
    """Wraps listeners so Bolt sends the acknowledgment as soon as they call ``ack()``; keeps their tasks."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def __call__(self, listener: Listener) -> Listener:
        """The wrapper Bolt registers. ``functools.wraps`` keeps the listener's parameter names, which
        Bolt reads (through ``__wrapped__``) to decide what to pass."""
        takes_ack = "ack" in inspect.signature(listener).parameters

        @functools.wraps(listener)
        async def run(*args: Any, **kwargs: Any) -> None:
            if not takes_ack:
                self._start(listener(*args, **kwargs), acknowledged=None)
                return
            # True once the listener has called ack(), False if it ended first.
            acknowledged: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            kwargs["ack"] = _signalling(kwargs["ack"], acknowledged)
            task = self._start(listener(*args, **kwargs), acknowledged)
            if not await acknowledged:
                task.result()  # the listener ended without acknowledging: its error, if any, is Bolt's to answer

        return run

    @property
    def running(self) -> int:
        """Listeners acknowledged and still working."""
        return len(self._running)

    async def finish(self, timeout: float) -> None:
        """Wait for the work of requests already acknowledged: each was answered, so each should happen.

        Each step of that work is bounded (the Web API client's timeout, the
        store's busy timeout), though a change may first wait its turn behind
        a burst of others in the writer process; after ``timeout`` seconds
        what is left is cancelled and logged, so a stopping serve cannot hang
        on it.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while self._running:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            log.info("waiting for %d Slack request(s) already acknowledged to finish", len(self._running))
            await asyncio.wait(set(self._running), timeout=min(left, PROGRESS_SECONDS))
        still = set(self._running)
        for task in still:
            task.cancel()
        if still:
            log.warning("stopped %d Slack listener(s) still working after %.0f s", len(still), timeout)
            await asyncio.gather(*still, return_exceptions=True)

    def _start(self, work: Awaitable[Any], acknowledged: asyncio.Future[bool] | None) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._running.add(task)

        def ended(finished: asyncio.Task[Any]) -> None:
            self._running.discard(finished)
            if acknowledged is not None and not acknowledged.done():
                acknowledged.set_result(False)  # ended (or failed) before ack(): the wrapper reports it
                return
            if not finished.cancelled() and finished.exception() is not None:
                error = finished.exception()
                log.error("Slack listener failed: %s", error.__class__.__name__, exc_info=error)

        task.add_done_callback(ended)
        return task


def _signalling(ack: Callable[..., Awaitable[Any]], acknowledged: asyncio.Future[bool]) -> Callable[..., Awaitable[Any]]:
    """``ack`` that also resolves ``acknowledged`` once it has set Bolt's response."""

    async def ack_and_signal(*args: Any, **kwargs: Any) -> Any:
        response = await ack(*args, **kwargs)
        if not acknowledged.done():
            acknowledged.set_result(True)
        return response

    return ack_and_signal
