"""``cli.exposition``: serve's figures as Prometheus text, read back with prometheus-client's own parser."""

from __future__ import annotations

from datetime import datetime, timezone

from prometheus_client.parser import text_string_to_metric_families

from cli.exposition import ProcessFigures, render
from core.ops_figures import StoreFigures

AT = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
STORE = StoreFigures(
    at=AT, mail_waiting=3, mail_quarantined={"auto_reply": 2, "bounce": 0},
    outbox={("email", "pending"): 1, ("email", "failed"): 0, ("slack", "pending"): 4, ("slack", "failed"): 1},
    overdue_seconds={"email": 12.5, "slack": 0.0},
    open_breaches={"first_response": 1, "next_reply": 0, "resolution": 2},
    open_requests={"new": 5, "assigned": 1, "waiting_on_customer": 0, "pending_approval": 0},
)
PROCESS = ProcessFigures(
    smtp_accepted=7, smtp_rejected_recipients=2, smtp_temporary_failures=1, smtp_refused_busy=0,
    slack_mode="http", slack_errors={("chat.postMessage", "channel_not_found"): 3, ("views.open", "http_503"): 1},
    slack_rate_limited={"chat.update": 2}, scheduler_leader=True, mail_processor_alive=True,
    mail_processor_restarts=1,
)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_every_family_has_the_prefix_help_and_a_type() -> None:
    text = render(PROCESS, STORE, 0.004).decode()
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("supportdesk_") and f.documentation for f in families)
    assert {f.type for f in families} == {"counter", "gauge"}
    helps = [line for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(families)


def test_process_counters_and_parts() -> None:
    found = samples(render(PROCESS, STORE))
    assert found[("supportdesk_smtp_messages_accepted_total", ())] == 7
    assert found[("supportdesk_smtp_recipients_rejected_total", ())] == 2
    assert found[("supportdesk_smtp_temporary_failures_total", ())] == 1
    assert found[("supportdesk_smtp_sessions_refused_busy_total", ())] == 0
    assert found[("supportdesk_slack_api_errors_total",
                  (("error", "channel_not_found"), ("method", "chat.postMessage")))] == 3
    assert found[("supportdesk_slack_api_errors_total", (("error", "http_503"), ("method", "views.open")))] == 1
    assert found[("supportdesk_slack_api_rate_limited_total", (("method", "chat.update"),))] == 2
    assert [m for (name, labels), v in found.items() if name == "supportdesk_slack_mode" and v == 1
            for _, m in labels] == ["http"]
    assert found[("supportdesk_scheduler_leader", ())] == 1
    assert found[("supportdesk_mail_processor_up", ())] == 1
    assert found[("supportdesk_mail_processor_restarts_total", ())] == 1


def test_store_gauges() -> None:
    found = samples(render(PROCESS, STORE, 0.004))
    assert found[("supportdesk_store_up", ())] == 1
    assert found[("supportdesk_store_read_seconds", ())] == 0.004
    assert found[("supportdesk_inbound_mail_waiting", ())] == 3
    assert found[("supportdesk_inbound_mail_quarantined", (("reason", "auto_reply"),))] == 2
    assert found[("supportdesk_inbound_mail_quarantined", (("reason", "bounce"),))] == 0
    assert found[("supportdesk_outbox_messages", (("channel", "slack"), ("status", "failed")))] == 1
    assert found[("supportdesk_outbox_messages", (("channel", "slack"), ("status", "pending")))] == 4
    assert found[("supportdesk_outbox_overdue_seconds", (("channel", "email"),))] == 12.5
    assert found[("supportdesk_sla_breaches_open", (("target", "resolution"),))] == 2
    assert found[("supportdesk_requests_open", (("status", "new"),))] == 5


def test_a_store_that_did_not_answer_is_store_up_0_without_its_gauges() -> None:
    found = samples(render(PROCESS, None))
    assert found[("supportdesk_store_up", ())] == 0
    assert found[("supportdesk_smtp_messages_accepted_total", ())] == 7  # the process's own figures stay
    store_families = ("inbound_mail", "outbox", "sla_breaches", "requests_open", "store_read")
    assert not [name for name, _ in found if any(name.startswith("supportdesk_" + f) for f in store_families)]


def test_without_slack_its_families_are_empty_and_the_mode_is_off() -> None:
    found = samples(render(ProcessFigures(), None))
    assert not [name for name, _ in found if name.startswith("supportdesk_slack_api")]
    assert found[("supportdesk_slack_mode", (("mode", "off"),))] == 1
    assert found[("supportdesk_slack_mode", (("mode", "http"),))] == 0


def test_label_values_are_escaped() -> None:
    odd = ProcessFigures(slack_errors={('chat."post"', "a\\b\nc"): 1})
    found = samples(render(odd, None))
    assert found[("supportdesk_slack_api_errors_total", (("error", "a\\b\nc"), ("method", 'chat."post"')))] == 1


def test_nothing_lands_in_the_library_s_global_registry() -> None:
    from prometheus_client import REGISTRY

    before = {s.name for family in REGISTRY.collect() for s in family.samples}
    render(PROCESS, STORE)
    after = {s.name for family in REGISTRY.collect() for s in family.samples}
    assert not any(name.startswith("supportdesk_") for name in after) and before == after
