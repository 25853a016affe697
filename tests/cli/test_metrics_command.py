"""``supportdesk metrics`` from a user's side, on SQLite and PostgreSQL.

A short history is made through the service functions with the fixed clock
(January 2026); the command then runs in-process with the wall clock, so the
period is given explicitly and the backlog is the one at its end.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from core import services
from core.clock import FixedClock
from core.models import Request
from core.services import InboundMail
from core.store import Store
from tests import factories as f
from tests.cli.conftest import Cli

UTC = timezone.utc
WEEK = ("--since", "2026-01-05", "--until", "2026-01-12")


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def history(store: Store, clock: FixedClock) -> None:
    """R1 billing dispute, answered in 1 h and resolved in 2 h; R2 technical, claimed by AGENT2 after 1 h and
    answered after 3 h, still open; R3 general, untouched."""
    clock.set(at(4))
    f.seed(store)
    clock.set(at(5, 9))
    r1 = f.open_request(store, invoice="INV-100", disputed="120.00").key
    clock.set(at(5, 9, 30))
    services.claim(store, r1, actor=f.AGENT)
    clock.set(at(5, 10))
    services.reply(store, r1, "On it", actor=f.AGENT)
    clock.set(at(5, 11))
    services.resolve(store, r1, note="Refunded", actor=f.AGENT)
    clock.set(at(6, 9))
    r2 = services.open_request(store, channel="email", category="technical",
                               mail=InboundMail("jane@acme.test", "Login fails", "Help")).key
    clock.set(at(6, 10))
    services.claim(store, r2, actor=f.AGENT2)
    clock.set(at(6, 12))
    services.reply(store, r2, "Try again", actor=f.AGENT2)
    clock.set(at(7, 9))
    services.open_request(store, channel="email", mail=InboundMail("jane@acme.test", "Question", "Hi"))
    # The SLA code fills these from its policies; plain SQL clears them so the numbers here do not depend
    # on those policies.
    with store.engine.begin() as conn:
        conn.execute(update(Request).values(
            first_response_due_at=None, next_reply_due_at=None, resolution_due_at=None,
            first_response_business_seconds=None, resolution_business_seconds=None))


def test_metrics_json_for_a_week(cli: Cli, history: None) -> None:
    result = cli.json("metrics", *WEEK)
    assert result["period"] == {"since": "2026-01-05T00:00:00Z", "until": "2026-01-12T00:00:00Z", "timezone": "UTC"}
    assert result["by"] is None and result["groups"] == []
    # First responses 3600 and 10800: median 7200, p90 3600 + .9(7200) = 10080.
    assert result["first_response"] == {"count": 2, "median_seconds": 7200, "p90_seconds": 10080,
                                        "business_count": 0, "business_median_seconds": None,
                                        "business_p90_seconds": None}
    # Claims 1800 and 3600: median 2700, p90 1800 + .9(1800) = 3420.
    assert result["time_to_claim"] == {"count": 2, "median_seconds": 2700, "p90_seconds": 3420}
    assert result["resolution"]["count"] == 1 and result["resolution"]["mean_seconds"] == 7200
    assert result["dispute_cycle"] == {"count": 1, "median_seconds": 7200, "p90_seconds": 7200}
    # At Jan 12 00:00: R2 5 d 15 h old, R3 4 d 15 h.
    assert result["backlog"] == {"as_of": "2026-01-12T00:00:00Z", "total": 2, "age_under_1d": 0,
                                 "age_1d_to_3d": 0, "age_3d_to_7d": 2, "age_over_7d": 0}
    assert result["reopen_rate"] == {"rate": 0.0, "numerator": 0, "denominator": 1}
    assert result["accuracy_rate"] == {"rate": 1.0, "numerator": 1, "denominator": 1}
    assert result["financial_impact"] == {"disputed_open": [], "approved": [], "rejected": [], "pending": []}
    assert result["sla_compliance"]["first_response"] == {"rate": None, "numerator": 0, "denominator": 0}
    assert result["sla_compliance"]["breaches_open"]["requests"] == 0
    assert type(result["first_response"]["median_seconds"]) is int


def test_metrics_split_by_assignee(cli: Cli, history: None) -> None:
    result = cli.json("metrics", *WEEK, "--by", "assignee")
    assert result["by"] == "assignee"
    assert [g["key"] for g in result["groups"]] == ["UAGENT1", "UAGENT2", None]
    one, two, nobody = result["groups"]
    assert one["first_response"]["median_seconds"] == 3600 and one["resolution"]["count"] == 1
    assert two["first_response"]["median_seconds"] == 10800 and two["backlog"]["age_3d_to_7d"] == 1
    assert nobody["backlog"]["total"] == 1 and nobody["first_response"]["count"] == 0
    assert result["first_response"]["count"] == 2  # the whole is there too


def test_metrics_days_are_local_days(cli: Cli, history: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORTDESK_TIMEZONE", "Europe/Berlin")
    result = cli.json("metrics", "--since", "2026-01-05", "--until", "2026-01-06")
    assert result["period"] == {"since": "2026-01-04T23:00:00Z", "until": "2026-01-05T23:00:00Z",
                                "timezone": "Europe/Berlin"}
    assert result["first_response"]["count"] == 1  # R1's, 10:00 UTC on the 5th
    assert result["backlog"]["as_of"] == "2026-01-05T23:00:00Z"


def test_default_period_is_the_last_seven_full_days(cli: Cli, history: None) -> None:
    result = cli.json("metrics")
    today = datetime.now(UTC).date()  # the command uses the wall clock; the default zone is UTC
    assert result["period"]["until"] == f"{today}T00:00:00Z"
    assert result["period"]["since"] == f"{today - timedelta(days=7)}T00:00:00Z"
    assert result["first_response"]["count"] == 0
    # The history is older than a week: both open requests are in the oldest bucket.
    assert result["backlog"]["age_over_7d"] == 2


def test_metrics_as_a_table(cli: Cli, history: None) -> None:
    out = cli.ok("metrics", *WEEK).out
    assert out.startswith("metrics for 2026-01-05 to 2026-01-11 (UTC), computed ")
    lines = out.splitlines()
    assert any(line.split() == ["first", "response", "2", "2h", "00m", "2h", "48m"] for line in lines), out
    assert any(line.split() == ["resolution", "1", "2h", "00m", "2h", "00m", "2h", "00m"] for line in lines), out
    assert "backlog at 2026-01-12 00:00 UTC: 2 open (under 1 day 0, 1-3 days 0, 3-7 days 2, 7 days or more 0)" in out
    assert any(line.split()[:3] == ["reopened", "0.0%", "0"] for line in lines), out
    assert any(line.split()[:2] == ["accurate", "(no"] and "100.0%" in line for line in lines), out
    assert "SLA breaches open now: first response 0, next reply 0, resolution 0 (0 requests)" in out


def test_metrics_table_by_category(cli: Cli, history: None) -> None:
    out = cli.ok("metrics", *WEEK, "--by", "category").out
    section = out.split("\nby category\n", 1)[1].splitlines()
    assert section[0].split()[:3] == ["CATEGORY", "ANSWERED", "RESP"]
    assert [row.split()[0] for row in section[1:]] == ["billing_dispute", "general", "technical"]
    assert section[3].split()[:4] == ["technical", "1", "3h", "00m"]


@pytest.mark.parametrize("argv, message", [
    (("--since", "2026-13-01"), "--since '2026-13-01' is not a date like 2026-01-31"),
    (("--until", "5 Jan"), "--until '5 Jan' is not a date like 2026-01-31"),
    (("--since", "2026-01-12", "--until", "2026-01-05"), "is empty"),
    (("--since", "2026-01-05", "--until", "2026-01-05"), "is empty"),
    (("--by", "customer"), "choose one of category, priority, channel, assignee"),
])
def test_refusals(cli: Cli, argv: tuple[str, ...], message: str) -> None:
    assert message in cli.refused("metrics", *argv)
