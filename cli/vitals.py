"""What a running ``serve`` says about itself: the answers of ``GET /health`` and ``GET /metrics``.

It holds references to serve's live parts (the SMTP listener's counters, the
mail processor, the scheduler, the Slack part's Web API counters) and reads
them as they are; it changes nothing. The store is read off the event loop
on the read pool (:class:`core.facade.AsyncCore`), with a time limit: a
store that hangs or fails makes ``/health`` answer 503 and
``/metrics`` report ``supportdesk_store_up 0``; neither raises. Scrapes that
arrive while a read is under way share it, so a stuck database holds one
read thread, not one per scrape.

No import of the Slack app here: serve without Slack must not load Bolt.
The Slack part's counters arrive as plain mappings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from cli.exposition import ProcessFigures, render
from core.facade import AsyncCore
from core.ops_figures import StoreFigures, read_store_figures
from core.store import Store

log = logging.getLogger("supportdesk.serve")

T = TypeVar("T")

# A scrape or health check gives up on the store after this long (Prometheus' default scrape timeout is 10 s).
STORE_TIMEOUT_SECONDS = 5.0


class SmtpCounters(Protocol):
    """What the SMTP listener counted (``intake.listener.IntakeCounters``)."""

    accepted: int
    rejected_recipients: int
    temporary_failures: int
    refused_busy: int


class ApiCounters(Protocol):
    """What the Slack Web API answered badly (``bot.client.SlackApiCounters``)."""

    @property
    def errors(self) -> Mapping[tuple[str, str], int]: ...

    @property
    def rate_limited(self) -> Mapping[str, int]: ...


class MailProcessor(Protocol):
    @property
    def is_alive(self) -> bool: ...

    restarts: int


class Leader(Protocol):
    leading: bool


@dataclass
class ServeVitals:
    """The live parts of one serve; ``scheduler`` and ``slack_counters`` are set once those parts exist."""

    core: AsyncCore
    smtp: SmtpCounters
    processor: MailProcessor
    slack_mode: str = "off"  # "http", "socket_mode" or "off"
    slack_counters: ApiCounters | None = None
    scheduler: Leader | None = None
    store_timeout: float = STORE_TIMEOUT_SECONDS
    _figures: _Shared[StoreFigures] = field(init=False)
    _ping: _Shared[bool] = field(init=False)

    def __post_init__(self) -> None:
        self._figures = _Shared(lambda: self.core.read(read_store_figures))
        self._ping = _Shared(lambda: self.core.read(_store_answers))

    def process_figures(self) -> ProcessFigures:
        """This process's counters and parts as they are now (read in the loop's thread, where they change)."""
        slack = self.slack_counters
        return ProcessFigures(
            smtp_accepted=self.smtp.accepted,
            smtp_rejected_recipients=self.smtp.rejected_recipients,
            smtp_temporary_failures=self.smtp.temporary_failures,
            smtp_refused_busy=self.smtp.refused_busy,
            slack_mode=self.slack_mode,
            slack_errors=dict(slack.errors) if slack is not None else {},
            slack_rate_limited=dict(slack.rate_limited) if slack is not None else {},
            scheduler_leader=bool(self.scheduler is not None and self.scheduler.leading),
            mail_processor_alive=self.processor.is_alive,
            mail_processor_restarts=self.processor.restarts,
        )

    async def metrics(self) -> bytes:
        """The Prometheus text of this scrape; the store's figures left out (``store_up 0``) if it failed."""
        started = time.perf_counter()
        figures = await self._within_time("metrics", self._figures)
        return render(self.process_figures(), figures,
                      time.perf_counter() - started if figures is not None else None)

    async def health(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and JSON body: 503 when the store does not answer, else 200.

        ``status`` is ``ok`` when the store answers and every part runs,
        ``degraded`` otherwise. A dead mail processor alone does not make it
        503: serve restarts it within seconds and mail keeps being accepted
        meanwhile, so a load balancer should not take the process away.
        """
        store_ok = bool(await self._within_time("health", self._ping))
        process = self.process_figures()
        parts = {
            "smtp": True,
            "slack": process.slack_mode,
            "scheduler": self.scheduler is not None,
            "scheduler_leader": process.scheduler_leader,
            "mail_processor": process.mail_processor_alive,
        }
        healthy = store_ok and process.mail_processor_alive and self.scheduler is not None
        return (200 if store_ok else 503), {"status": "ok" if healthy else "degraded", "store": store_ok,
                                            "parts": parts}

    async def _within_time(self, what: str, read: _Shared[T]) -> T | None:
        try:
            return await asyncio.wait_for(read.result(), timeout=self.store_timeout)
        except asyncio.TimeoutError:
            log.warning("%s: the store did not answer within %.0f s", what, self.store_timeout)
        except Exception as exc:  # noqa: BLE001 - a health check or a scrape reports a failure, it never raises
            log.warning("%s: the store did not answer: %s", what, _reason(exc))
        return None


def _store_answers(store: Store) -> bool:
    store.ping()
    return True


def _reason(exc: Exception) -> str:
    """The first line of the error: never a statement with its parameters (SQLAlchemy appends them below)."""
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0][:200]}" if lines else exc.__class__.__name__


class _Shared(Generic[T]):
    """One read at a time: callers that come while it runs wait for the same result."""

    def __init__(self, start: Callable[[], Awaitable[T]]) -> None:
        self._start = start
        self._running: asyncio.Future[T] | None = None

    async def result(self) -> T:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._start())
            # Read here, so a failure whose every waiter timed out is not reported as never retrieved.
            self._running.add_done_callback(lambda done: done.cancelled() or done.exception())
        # shield: a caller that times out must not cancel the read the others are waiting for.
        return await asyncio.shield(self._running)
