"""`supportdesk outbox list` and `outbox retry` as a user runs them, on both databases.

Replies are queued through the services with the test clock in January 2026,
and failed with the real delivery-state functions (``claim_due`` then
``mark_failed``), as the e-mail worker does when a relay refuses a recipient.
The command itself runs on the real clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from core.clock import FixedClock
from core.services.outbox import claim_due, mark_failed, mark_sent
from core.store import Store
from tests.cli.conftest import Cli, dump_store
from tests.core.test_outbox_view import queue_replies
from tests.factories import AGENT

ERROR = "550 5.1.1 <jane@acme.test>: Recipient address rejected: User unknown"
FIELDS = ["id", "channel", "topic", "status", "request_key", "attempts", "created_at", "next_attempt_at",
          "sent_at", "last_error"]


def fail_oldest(store: Store, error: str = ERROR) -> int:
    """Claim the oldest due e-mail row and give up on it; returns its id."""
    item = claim_due(store, "email", limit=1)[0]
    mark_failed(store, item.id, error)
    return item.id


def send_oldest(store: Store) -> int:
    item = claim_due(store, "email", limit=1)[0]
    mark_sent(store, item.id)
    return item.id


def test_list_shows_failed_rows_with_their_error(cli: Cli, store: Store) -> None:
    keys = queue_replies(store, 3)
    failed = fail_oldest(store)
    send_oldest(store)

    lines = cli.ok("outbox", "list").out.splitlines()

    assert lines[0].split() == ["ID", "CHANNEL", "TOPIC", "STATUS", "REQUEST", "ATTEMPTS", "CREATED", "NEXT",
                                "ATTEMPT", "ERROR"]
    assert [line.split()[:6] for line in lines[1:]] == [  # newest first; the sent row left out
        ["3", "email", "reply", "pending", keys[2], "0"],
        [str(failed), "email", "reply", "failed", keys[0], "1"],
    ]
    assert lines[2].endswith("550 5.1.1 <jane@acme.test>: Recipient address rejected: Use…")  # cut at 60

    only_failed = cli.ok("outbox", "list", "--failed").out.splitlines()
    assert len(only_failed) == 2 and only_failed[1].split()[:4] == [str(failed), "email", "reply", "failed"]
    assert [line.split()[3] for line in cli.ok("outbox", "list", "--sent").out.splitlines()[1:]] == ["sent"]
    assert cli.ok("outbox", "list", "--channel", "slack").out == "nothing waiting or failed in the outbox " \
                                                                  "(delivered rows: --sent)\n"
    assert cli.ok("outbox", "list", "--failed", "--channel", "slack").out == "no outbox rows match\n"


def test_list_json_field_names(cli: Cli, store: Store) -> None:
    queue_replies(store, 2)
    failed = fail_oldest(store)

    rows = cli.json("outbox", "list")

    assert [list(r) for r in rows] == [FIELDS, FIELDS]
    assert rows[1] == {
        "id": failed, "channel": "email", "topic": "reply", "status": "failed", "request_key": "SR-1",
        "attempts": 1, "created_at": "2026-01-05T09:00:00Z", "next_attempt_at": "2026-01-05T09:02:00Z",
        "sent_at": None, "last_error": ERROR,
    }
    assert [r["id"] for r in cli.json("outbox", "list", "--limit", "1")] == [rows[0]["id"]]
    assert cli.json("outbox", "list", "--sent") == []


def test_retry_makes_a_failed_row_pending_and_due(cli: Cli, store: Store, clock: FixedClock) -> None:
    keys = queue_replies(store, 1)
    failed = fail_oldest(store)

    out = cli.ok("outbox", "retry", str(failed), "--as", AGENT).out

    assert out == (f"outbox row {failed} (email reply for {keys[0]}) is pending again and due now, attempts reset; "
                   "the delivery worker of `supportdesk serve` sends it on its next round\n")
    [row] = cli.json("outbox", "list")
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 0, ERROR)
    assert cli.json("outbox", "list", "--failed") == []
    events = cli.json("requests", "show", keys[0])["events"]
    assert (events[-1]["kind"], events[-1]["actor"], events[-1]["data"]) == (
        "outbox.retried", f"agent:{AGENT}", {"outbox_id": failed, "channel": "email", "topic": "reply"})
    assert cli.json("audit", "verify")["ok"] is True

    clock.set(datetime.now(timezone.utc) + timedelta(seconds=1))  # the command ran on the real clock
    assert [(i.id, i.attempts) for i in claim_due(store, "email")] == [(failed, 1)]


def test_retry_json(cli: Cli, store: Store) -> None:
    queue_replies(store, 1)
    failed = fail_oldest(store)
    row = cli.json("outbox", "retry", str(failed), "--as", AGENT)
    assert list(row) == FIELDS
    assert (row["id"], row["status"], row["attempts"]) == (failed, "pending", 0)


def test_retry_of_a_sent_row_or_an_unknown_id_is_refused_and_changes_nothing(cli: Cli, store: Store) -> None:
    queue_replies(store, 2)
    sent = send_oldest(store)
    failed = fail_oldest(store)
    rows = dump_store(store)

    assert cli.refused("outbox", "retry", str(sent), "--as", AGENT) == (
        f"supportdesk: outbox row {sent} was sent at 2026-01-05T09:00:00Z; only a failed or waiting row can be retried")
    assert cli.refused("outbox", "retry", "999", "--as", AGENT) == "supportdesk: there is no outbox row 999"
    assert "no agent has the Slack user id 'UNOBODY'" in cli.refused("outbox", "retry", str(failed), "--as", "UNOBODY")

    assert dump_store(store) == rows


def test_bad_arguments(cli: Cli, store: Store) -> None:
    queue_replies(store, 1)
    rows = dump_store(store)
    assert cli.refused("outbox", "list", "--limit", "0") == "supportdesk: --limit must be at least 1"
    assert "invalid int value: 'ten'" in cli.usage_error("outbox", "list", "--limit", "ten")
    assert "not allowed with argument" in cli.usage_error("outbox", "list", "--failed", "--sent")
    assert "invalid choice: 'fax'" in cli.usage_error("outbox", "list", "--channel", "fax")
    assert "invalid int value: 'SR-1'" in cli.usage_error("outbox", "retry", "SR-1", "--as", AGENT)
    assert "the following arguments are required: --as" in cli.usage_error("outbox", "retry", "1")
    assert dump_store(store) == rows


def test_help_says_what_list_shows_by_default(cli: Cli) -> None:
    result = cli("outbox", "list", "--help")
    assert result.code == 0
    assert "Outbox rows, newest first; by default every row not sent yet (pending and failed)." in " ".join(result.out.split())
