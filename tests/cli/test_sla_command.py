"""`supportdesk sla explain` and `sla sweep` as a user runs them, on both databases.

Requests are opened through the services with the test clock in January
2026, so by the command's real clock their targets are long past.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.store import Store
from tests.cli.conftest import Cli
from tests.factories import open_request, seed


def test_sweep_lists_crossings_once(cli: Cli, store: Store) -> None:
    seed(store)
    key = open_request(store).key
    found = cli.json("sla", "sweep", "--json")
    assert [(c["request_key"], c["target"], c["threshold"]) for c in found] == [
        (key, "first_response", "warning"), (key, "first_response", "breach"),
        (key, "resolution", "warning"), (key, "resolution", "breach"),
    ]
    assert found[0]["crossed_at"] == "2026-01-05T15:00:00Z" and found[1]["due_at"] == "2026-01-05T17:00:00Z"
    assert cli.ok("sla", "sweep").out == "no warnings or breaches are due\n"


def test_sweep_table_and_as_of_a_past_moment(cli: Cli, store: Store) -> None:
    seed(store)
    key = open_request(store).key
    out = cli.ok("sla", "sweep", "--now", "2026-01-05T16:00:00Z").out
    assert out.splitlines()[0].split() == ["REQUEST", "TARGET", "THRESHOLD", "CROSSED", "AT", "DUE", "AT",
                                           "PRIORITY", "ASSIGNEE"]
    assert out.splitlines()[1].split()[:3] == [key, "first_response", "warning"]
    assert len(out.splitlines()) == 2


def test_explain_text_and_json(cli: Cli, store: Store) -> None:
    seed(store)
    key = open_request(store).key
    text = cli.ok("sla", "explain", key, "--now", "2026-01-05T11:30:00Z").out
    assert "policy normal: the default policy for priority normal" in text
    assert "calendar business (UTC): mon 09:00-17:00" in text
    assert "first response: on_track" in text
    assert "  counted   2h 30m business, 2h 30m wall-clock while running, 2h 30m since it started" in text
    assert "  due       Mon 2026-01-05 17:00" in text
    data = cli.json("sla", "explain", key, "--now", "2026-01-05T11:30:00Z", "--json")
    assert data["policy"]["first_response_seconds"] == 8 * 3600
    assert [t["target"] for t in data["targets"]] == ["first_response", "resolution"]
    assert data["targets"][0]["business_seconds"] == 9000 and data["targets"][0]["state"] == "on_track"


def test_refusals(cli: Cli, store: Store) -> None:
    seed(store)
    open_request(store)
    assert "--now may not be in the future" in cli.refused("sla", "sweep", "--now", "2999-01-01T00:00:00Z")
    assert "there is no request SR-42" in cli.refused("sla", "explain", "SR-42")
    assert "is not a time like" in cli.usage_error("sla", "explain", "SR-1", "--now", "yesterday")


def test_policies_and_holidays_come_from_the_config_file(cli: Cli, store: Store, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seed(store)
    key = open_request(store).key
    config = tmp_path / "supportdesk.toml"
    config.write_text(
        '[sla.calendars.business]\ntimezone = "UTC"\nholidays = ["2026-01-06"]\n'
        '[sla.priorities.normal]\nfirst_response = "10h"\n', encoding="utf-8")
    monkeypatch.setenv("SUPPORTDESK_CONFIG", str(config))
    data = cli.json("sla", "explain", key, "--now", "2026-01-05T10:00:00Z", "--json")
    assert data["policy"]["why"] == "the configured policy for priority normal"
    assert data["policy"]["calendar"]["holidays"] == ["2026-01-06"]
    assert data["targets"][0]["due_at"] == "2026-01-07T11:00:00Z"  # 8h Monday, Tuesday off, 2h Wednesday


def test_a_bad_sla_config_is_one_line(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[sla.priorities.urgent]\nfirst_response = "asap"\n', encoding="utf-8")
    monkeypatch.setenv("SUPPORTDESK_CONFIG", str(config))
    assert cli.refused("sla", "sweep") == (
        "supportdesk: [sla.priorities.urgent] first_response: 'asap' is not a duration like 4h, 90m or 1d 2h")
