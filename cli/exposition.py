"""``serve``'s figures in the Prometheus text exposition format. Pure: figures in, text out.

Two kinds of figures: what this process counted since it started (SMTP
replies, Slack Web API failures; counters, which Prometheus turns into
rates and which restart at zero with the process) and what the store holds
now (mail waiting or quarantined, notifications undelivered, open requests
and breaches; gauges, the same from every ``serve`` sharing the store, so
aggregate them with ``max``, not ``sum``). When the store did not answer,
``supportdesk_store_up`` is 0 and its gauges are left out rather than shown
as zeros that would look like good news.

prometheus-client writes the format (escaping, HELP and TYPE lines, the
``_total`` suffix). Each scrape gets a registry of its own holding one
collector of that scrape's figures: nothing is registered in the library's
global default registry, which would also add its own process metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from core.ops_figures import StoreFigures

# The classic text format every Prometheus-compatible scraper reads. Our names and labels are plain ASCII,
# so the text is the same in the newer 1.0.0 version (which prometheus-client 0.22+ calls "latest").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "supportdesk_"


@dataclass(frozen=True)
class ProcessFigures:
    """What this ``serve`` counted since it started, and which of its parts run."""

    smtp_accepted: int = 0
    smtp_rejected_recipients: int = 0
    smtp_temporary_failures: int = 0
    smtp_refused_busy: int = 0
    slack_mode: str = "off"  # "http", "socket_mode" or "off"
    slack_errors: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (method, error) -> answers
    slack_rate_limited: Mapping[str, int] = field(default_factory=dict)  # method -> 429 answers
    scheduler_leader: bool = False
    mail_processor_alive: bool = False
    mail_processor_restarts: int = 0


def render(process: ProcessFigures, store: StoreFigures | None, store_seconds: float | None = None) -> bytes:
    """The exposition text; ``store`` None when the store did not answer, ``store_seconds`` how long it took."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(metric_families(process, store, store_seconds)))
    return generate_latest(registry)


def metric_families(process: ProcessFigures, store: StoreFigures | None,
                    store_seconds: float | None = None) -> list[Metric]:
    """Every metric family of one scrape, in the order they are shown."""
    families: list[Metric] = [
        _counter("smtp_messages_accepted", "Messages the SMTP listener answered 250 (committed to the store) "
                                           "since serve started.", process.smtp_accepted),
        _counter("smtp_recipients_rejected", "RCPT TO addresses refused with 550 (not a support address) "
                                             "since serve started.", process.smtp_rejected_recipients),
        _counter("smtp_temporary_failures", "Messages answered 451/452 (not stored; the sender retries) "
                                            "since serve started.", process.smtp_temporary_failures),
        _counter("smtp_sessions_refused_busy", "SMTP connections refused with 421 because "
                                               "SUPPORTDESK_SMTP_MAX_SESSIONS were open, since serve started.",
                 process.smtp_refused_busy),
        _labelled(CounterMetricFamily(PREFIX + "slack_api_errors", "Slack Web API answers that were errors "
                                      "(Slack's error code, http_5xx, or connection_error), each attempt "
                                      "counted, since serve started.", labels=("method", "error")),
                  {(method, error): n for (method, error), n in process.slack_errors.items()}),
        _labelled(CounterMetricFamily(PREFIX + "slack_api_rate_limited", "Slack Web API answers 429 "
                                      "(rate limited; retried after Retry-After) since serve started.",
                                      labels=("method",)),
                  {(method,): n for method, n in process.slack_rate_limited.items()}),
        _labelled(GaugeMetricFamily(PREFIX + "slack_mode", "1 for how this process reaches Slack's requests "
                                    "(http, socket_mode or off).", labels=("mode",)),
                  {(mode,): int(mode == process.slack_mode) for mode in ("http", "socket_mode", "off")}),
        _gauge("scheduler_leader", "1 while this process runs the scheduled jobs (one serve process at a time).",
               int(process.scheduler_leader)),
        _gauge("mail_processor_up", "1 while the mail processor (the child process that files accepted mail) "
                                    "runs.", int(process.mail_processor_alive)),
        _counter("mail_processor_restarts", "Times the mail processor died and was restarted since serve started.",
                 process.mail_processor_restarts),
        _gauge("store_up", "1 when the store answered this scrape, 0 when it did not (its figures are then "
                           "left out).", int(store is not None)),
    ]
    if store is None:
        return families
    if store_seconds is not None:
        families.append(_gauge("store_read_seconds", "How long reading the store's figures took in this scrape.",
                               store_seconds))
    families += [
        _gauge("inbound_mail_waiting", "Accepted mail not filed yet by the mail processor.", store.mail_waiting),
        _labelled(GaugeMetricFamily(PREFIX + "inbound_mail_quarantined", "Mail in quarantine now (not released), "
                                    "by reason code.", labels=("reason",)),
                  {(reason,): n for reason, n in store.mail_quarantined.items()}),
        _labelled(GaugeMetricFamily(PREFIX + "outbox_messages", "Notifications not delivered: pending (due or "
                                    "waiting to be retried) or failed (given up, for a person to look at), "
                                    "by channel.", labels=("channel", "status")),
                  dict(store.outbox)),
        _labelled(GaugeMetricFamily(PREFIX + "outbox_overdue_seconds", "How long the most overdue notification "
                                    "has been due and not delivered, by channel (rows waiting out a retry, held "
                                    "for business hours or being sent are not due); 0 when none.",
                                    labels=("channel",)),
                  {(channel,): seconds for channel, seconds in store.overdue_seconds.items()}),
        _labelled(GaugeMetricFamily(PREFIX + "sla_breaches_open", "SLA targets of open requests past their due "
                                    "time now, by target.", labels=("target",)),
                  {(target,): n for target, n in store.open_breaches.items()}),
        _labelled(GaugeMetricFamily(PREFIX + "requests_open", "Requests not resolved or closed, by status.",
                                    labels=("status",)),
                  {(status,): n for status, n in store.open_requests.items()}),
    ]
    return families


class _Figures(Collector):
    """One scrape's families, handed to the registry that writes them."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _labelled(family: CounterMetricFamily | GaugeMetricFamily,
              samples: Mapping[tuple[str, ...], float]) -> CounterMetricFamily | GaugeMetricFamily:
    for labels, value in sorted(samples.items()):
        family.add_metric(list(labels), value)
    return family
