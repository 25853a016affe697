"""What a new user reads: hints for common slips, and the same shape of output every time."""

from __future__ import annotations

import re

import pytest

from core import services
from core.errors import InvalidInput
from core.store import Store
from tests.cli.conftest import Cli
from tests.factories import AGENTS_CSV


@pytest.mark.parametrize("group", ["requests", "approvals", "import", "db", "audit", "agents"])
def test_a_group_without_its_action_names_what_is_missing(bare_cli: Cli, group: str) -> None:
    outcome = bare_cli(group)
    assert outcome.code == 2
    assert f"supportdesk {group}: error: the following arguments are required" in outcome.err


def test_write_off_is_accepted_with_a_hyphen(seeded: Cli) -> None:
    seeded.ok("requests", "open", "--from", "billing@acme.test", "--subject", "Old debt", "--as", "UAGENT1")
    seeded.ok("requests", "claim", "SR-1", "--as", "UAGENT1")
    approval = seeded.json("approvals", "request", "SR-1", "--kind", "write-off", "--amount", "10",
                           "--currency", "EUR", "--reason", "uncollectable", "--as", "UAGENT1")
    assert approval["kind"] == "write_off"


def test_times_have_one_width_and_events_keep_the_hashed_precision(seeded: Cli) -> None:
    detail = seeded.json("requests", "open", "--from", "billing@acme.test", "--subject", "x", "--as", "UAGENT1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", detail["created_at"])
    shown = seeded.json("requests", "show", "SR-1", "--json")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["created_at"]) for e in shown["events"])


def test_an_agent_without_a_limit_has_none_in_json(seeded: Cli) -> None:
    agents = {a["slack_user_id"]: a for a in seeded.json("agents", "list", "--json")}
    assert agents["UAGENT1"]["approval_limit"] is None
    assert agents["UAPPROVE"]["approval_limit"] == {"amount_minor": 50000, "currency": "EUR"}


def test_a_semicolon_separated_file_gets_a_hint(store: Store) -> None:
    content = AGENTS_CSV.replace(",", ";")
    with pytest.raises(InvalidInput, match="seems to use ';' between columns; save it with commas"):
        services.import_agents(store, content)


def test_an_address_listed_twice_in_one_row_counts_once(store: Store) -> None:
    content = ("external_ref,name,emails,domains,kyc_status\n"
               "C-1,One,a@one.test;A@One.test,one.test;one.test,verified\n")
    result = services.import_customers(store, content)
    assert (result.created, result.rows) == (1, 1)
