"""``supportdesk serve``: every configured part in one event loop, with helper processes for CPU work.

It opens the store and brings its schema up to date, then starts each part
that is configured and says, for each one that does not start, why not. It
runs until SIGTERM or SIGINT. The SMTP listener and its commits share the
event loop with the Slack app; filing accepted mail, delivering e-mail and
making the digests (CPU work) run in a background process forked before the
loop starts and supervised by it (``cli.background``), so the listener keeps
a core; with Slack, the changes
the Slack app asks for are made in a writer process (``core.facade``) for
the same reason.
The HTTP listener (``/health``, ``/metrics``, and ``/slack/events`` when
Slack runs in HTTP mode) is serve's own, so it answers with or without Slack.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cli.background import BackgroundProcess
from cli.http_listener import HttpListener
from cli.output import safe_url
from cli.vitals import ServeVitals
from core import migrate
from core.allocator import return_memory_promptly
from core.errors import InvalidInput
from core.leadership import leader_lock
from core.facade import AsyncCore
from core.settings import Settings
from core.store import Store
from intake.acceptance import Acceptor
from intake.listener import SmtpGateway
from notifications.scheduler import Scheduler

if TYPE_CHECKING:
    from bot.app import SlackPart

log = logging.getLogger("supportdesk.serve")


@dataclass(frozen=True)
class PartPlan:
    name: str
    start: bool
    reason: str


def plan_parts(settings: Settings) -> list[PartPlan]:
    """Which parts would start with these settings, and why the others would not. Pure."""
    relay = (f"through the relay {settings.outbound_smtp}" if settings.outbound_smtp
             else f"to the Maildir {settings.outgoing_maildir} (no SUPPORTDESK_OUTBOUND_SMTP set)")
    slack = slack_plan(settings)
    return [
        PartPlan("store", True, safe_url(settings.database_url)),
        PartPlan("smtp listener", True,
                 f"on {settings.smtp_listen} for {', '.join(settings.support_addresses)}"),
        PartPlan("mail processor", True, "files accepted mail, delivers e-mail and makes the digests in a "
                                         "separate process"),
        slack,
        PartPlan("scheduler", True, scheduler_reason(settings, slack.start)),
        PartPlan("outbox delivery", True,
                 f"e-mail {relay}; " + ("Slack cards to the triage channel " + str(settings.triage_channel)
                                        if slack.start else "Slack notifications wait for the Slack app")),
    ]


def scheduler_reason(settings: Settings, slack: bool) -> str:
    """What the scheduler will do with these settings, in one line."""
    places = []
    if slack and settings.digest_channel:
        places.append(f"to {settings.digest_channel}")
    if settings.digest_emails:
        places.append(f"by mail to {', '.join(settings.digest_emails)}")
    digest = (f"daily digest at {settings.digest_time} {settings.timezone} " + " and ".join(places)
              if places else "daily digest recorded but not sent (SUPPORTDESK_DIGEST_CHANNEL and "
                             "SUPPORTDESK_DIGEST_EMAILS unset)")
    alerts = ("SLA alerts in card threads and " + (settings.alerts_channel or settings.triage_channel or "")
              if slack else "SLA sweep every minute (alerts wait for the Slack app)")
    close = f"auto-close {settings.auto_close_days} days after resolution" if settings.auto_close_days else \
        "no auto-close"
    remind = (f"reminders after {settings.waiting_reminder_days} days waiting on the customer"
              if settings.waiting_reminder_days else "no reminders")
    return f"{alerts}; {digest}; {close}; {remind}; runs in one serve process at a time"


def slack_plan(settings: Settings) -> PartPlan:
    """How the Slack app starts, if it does.

    With ``SLACK_APP_TOKEN`` it runs in Socket Mode and needs a bot token and
    a triage channel besides; without, in HTTP mode, it needs a bot token, a
    signing secret and a triage channel.
    """
    if settings.slack_app_token:
        return _socket_mode_plan(settings)
    missing = _unset(("SLACK_BOT_TOKEN", settings.slack_bot_token),
                     ("SLACK_SIGNING_SECRET", settings.slack_signing_secret),
                     ("SUPPORTDESK_TRIAGE_CHANNEL", settings.triage_channel))
    if len(missing) == 3:
        return PartPlan("slack app", False, "not configured: SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET unset "
                                            "(or SLACK_BOT_TOKEN and SLACK_APP_TOKEN for Socket Mode)")
    if missing:
        return PartPlan("slack app", False, f"not configured: {' and '.join(missing)} unset")
    if settings.http_listen is None:
        return PartPlan("slack app", False, "SUPPORTDESK_HTTP_LISTEN is off, and in HTTP mode Slack posts to "
                                            "/slack/events on it: set an address (or SLACK_APP_TOKEN for "
                                            "Socket Mode)")
    return PartPlan("slack app", True, f"HTTP on {settings.http_listen}, Slack posts to /slack/events; "
                                       f"health at /health; cards in {settings.triage_channel}")


def _socket_mode_plan(settings: Settings) -> PartPlan:
    app_token = settings.slack_app_token or ""
    if not app_token.startswith("xapp-"):
        return PartPlan("slack app", False, "SLACK_APP_TOKEN must be the app-level token, which starts with "
                                            "xapp- (the bot token, xoxb-, goes in SLACK_BOT_TOKEN)")
    missing = _unset(("SLACK_BOT_TOKEN", settings.slack_bot_token),
                     ("SUPPORTDESK_TRIAGE_CHANNEL", settings.triage_channel))
    if missing:
        return PartPlan("slack app", False, f"not configured for Socket Mode: {' and '.join(missing)} unset")
    health = (f"health at http://{settings.http_listen}/health" if settings.http_listen is not None
              else "no health endpoint (SUPPORTDESK_HTTP_LISTEN is off)")
    return PartPlan("slack app", True, f"in Socket Mode: the app connects to Slack, no public URL needed; "
                                       f"{health}; cards in {settings.triage_channel}")


def http_plan(settings: Settings) -> PartPlan:
    """Whether the HTTP listener starts, and where health and metrics answer. Pure."""
    listen = settings.http_listen
    if listen is None:
        return PartPlan("http listener", False, "SUPPORTDESK_HTTP_LISTEN is off: no /health and no /metrics")
    slack = slack_plan(settings)
    events = "; Slack posts to /slack/events" if slack.start and not settings.slack_app_token else ""
    return PartPlan("http listener", True, f"on {listen}: health at http://{listen}/health, "
                                           f"metrics at http://{listen}/metrics{events}")


def _unset(*settings: tuple[str, str | None]) -> list[str]:
    return [name for name, value in settings if not value]


# With CPython's default thresholds (700, 10, 10) a busy serve ran a full
# collection every second or so, each walking every object the ORM and Bolt
# keep alive: the event loop stood still for about 100 ms, and every SMTP
# reply and Slack acknowledgment due then waited (bench/slack.py: p99 134 ms;
# with this, 65 ms). Objects alive at start-up are frozen out of the scans,
# and young collections run after 10,000 allocations instead of 700 (50,000
# was faster still but kept 15 MB more garbage alive in serve).
GC_THRESHOLDS = (10_000, 20, 20)


def _tune_garbage_collection() -> None:
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _slack_part(core: AsyncCore, settings: Settings, also_changed: Callable[[], None]) -> SlackPart:
    """Imported only when Slack is configured: Bolt and slack-sdk cost some 20 MB of memory.

    Its HTTP route is mounted on serve's own listener, which runs without Slack too.
    """
    from bot.app import SlackPart

    return SlackPart(core, settings, also_changed=also_changed)



def serve(settings: Settings) -> int:
    # APScheduler logs every run of every job at INFO (the leader election every 10 s); its warnings
    # (a job that missed its time) and errors still show. Our jobs log what they did themselves.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return_memory_promptly()  # before any thread: serve and the background process it forks
    early = _EarlyStop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, early.note)
    store = Store.open(settings)
    background = BackgroundProcess(settings)
    # Only the Slack app makes changes through the façade; with it, they run in a writer process of their own.
    core = AsyncCore(store, writer_process=slack_plan(settings).start)
    try:
        migrate.upgrade(store.engine)
        store.ping()
        for part in (*plan_parts(settings), http_plan(settings)):
            if part.start:
                log.info("%s: started (%s)", part.name, part.reason)
            else:
                log.info("%s: not started (%s)", part.name, part.reason)
        _start_children(store, background, core)
        asyncio.run(_run(store, background, core, early))
    finally:
        background.stop()  # both done already unless the loop ended early
        core.close()
        store.dispose()
    log.info("stopped")
    return 0


class _EarlyStop:
    """SIGTERM or SIGINT before the event loop handles them: noted, and obeyed once the loop runs.

    Left to their defaults, SIGTERM would kill serve outright, leaving the
    children it forked meanwhile to notice on their own, and SIGINT would
    raise KeyboardInterrupt wherever serve happened to be, inside a library's
    clean-up as well. Start-up is short (a migration, two forks); then the
    loop stops everything in order, as it does for a signal that comes later.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    def note(self, signum: int, frame: object) -> None:
        self.signal = signum


def _start_children(store: Store, background: BackgroundProcess, core: AsyncCore) -> None:
    """Fork the background process, and the writer process if Slack runs, while serve has one thread.

    No connection is open either: each child opens a store of its own, and a
    connection it inherited would be one socket used by two processes.
    Objects alive now are frozen out of the garbage collector's scans, in
    serve and in the children, so none of them writes to the pages they
    share merely by collecting (``cli.background``). The background process
    comes first: it must not hold copies of the writer's pipes, whose end of
    file tells each side that the other is gone.
    """
    store.engine.dispose()
    gc.collect()
    gc.freeze()
    background.start()
    core.start()


async def _run(store: Store, background: BackgroundProcess, core: AsyncCore, early: _EarlyStop) -> None:
    settings = store.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if early.signal is not None:
        log.info("%s while starting: stopping", signal.Signals(early.signal).name)
        return  # serve's clean-up stops the children; nothing else has started
    acceptor = Acceptor(store, on_committed=background.mail_committed)
    acceptor.start()
    gateway = SmtpGateway(settings, acceptor)
    slack = _slack_part(core, settings, background.outbox_written) if slack_plan(settings).start else None
    vitals = ServeVitals(core, gateway.counters, background,
                         slack_mode=("off" if slack is None else "socket_mode" if slack.socket_mode else "http"),
                         slack_counters=slack.api_counters if slack is not None else None)
    listener = (HttpListener(settings.http_listen, vitals, slack_events=slack.events_handler if slack else None)
                if settings.http_listen is not None else None)
    try:
        await _start_listening(settings, gateway, listener, slack)
    except BaseException:
        await acceptor.close()  # the children: serve's clean-up stops them
        raise

    def outbox_written() -> None:
        background.outbox_written()
        if slack is not None:
            slack.delivery.wake.set()

    scheduler = Scheduler(store, leader_lock(store), outbox_written=outbox_written,
                          make_digest_with=background.make_digest)
    scheduler.start()
    vitals.scheduler = scheduler
    _tune_garbage_collection()
    log.info("supportdesk is running; stop it with Ctrl-C or SIGTERM")
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=5.0)
            except asyncio.TimeoutError:
                background.check()
    finally:
        log.info("stopping: finishing mail in transfer, then the mail processor and deliveries")
        await _stop_step("the scheduler", scheduler.stop())
        vitals.scheduler = None
        if listener is not None:
            await _stop_step("the HTTP listener", listener.stop())
        if slack is not None:
            await _stop_step("the Slack app", slack.stop())
        await _stop_step("the SMTP listener", gateway.stop())
        await _stop_step("the commits of accepted mail", acceptor.close())
        await _stop_step("the mail processor and e-mail delivery", loop.run_in_executor(None, background.stop))
        core.close()
        counters = gateway.counters
        log.info("mail: %d accepted, %d recipients refused, %d temporary failures, %d sessions refused (busy)",
                 counters.accepted, counters.rejected_recipients, counters.temporary_failures, counters.refused_busy)


async def _stop_step(what: str, step: Awaitable[object]) -> None:
    """One step of stopping: a failure is logged and the steps after it still run.

    The later steps matter most (mail in transfer answered, the mail processor
    stopped rather than orphaned), so none may be skipped because an earlier
    one, say the HTTP listener's, went wrong.
    """
    try:
        await step
    except Exception:  # noqa: BLE001 - logged, and stopping goes on
        log.exception("stopping %s failed; stopping the rest", what)


async def _start_listening(settings: Settings, gateway: SmtpGateway, listener: HttpListener | None,
                           slack: SlackPart | None) -> None:
    """SMTP, then HTTP, then Slack; a part that cannot start stops those started before it, and says why."""
    try:
        await gateway.start()
    except OSError as exc:
        raise InvalidInput(f"the SMTP listener cannot listen on {settings.smtp_listen}: {exc.strerror}") from exc
    try:
        if listener is not None:
            try:
                await listener.start()
            except OSError as exc:
                # asyncio words it "error while attempting to bind on address (...)": say just the reason.
                reason = os.strerror(exc.errno) if exc.errno else exc.strerror
                raise InvalidInput(f"the HTTP listener cannot listen on {settings.http_listen}: {reason} "
                                   "(set SUPPORTDESK_HTTP_LISTEN to a free address, or off)") from exc
        if slack is not None:
            try:
                await slack.start()  # InvalidInput when Slack refuses the app token
            except BaseException:
                if listener is not None:
                    await listener.stop()
                raise
    except BaseException:
        await gateway.stop()
        raise
