"""``supportdesk digest`` from an admin's side: preview, send, send again, refuse bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from sqlalchemy import func, select

from core.models import Digest, OutboxMessage
from core.store import Store
from tests.cli.conftest import Cli
from tests.notifications.test_digest import fortnight  # noqa: F401  (the shared history)

DAY = ("--date", "2026-01-14")


def test_print_shows_the_same_figures_as_metrics(cli: Cli, fortnight: list[str]) -> None:  # noqa: F811
    digest = cli.json("digest", *DAY, "--print")
    metrics = cli.json("metrics", "--since", "2026-01-14", "--until", "2026-01-15")
    digest["current"].pop("computed_at"), metrics.pop("computed_at")  # each run reads the wall clock
    assert digest["current"] == metrics


def test_print_shows_the_text_and_records_nothing(cli: Cli, store: Store, fortnight: list[str],  # noqa: F811
                                                  tmp_path: Path) -> None:
    chart = tmp_path / "trend.png"
    out = cli.ok("digest", *DAY, "--chart", str(chart)).out
    assert out.startswith("*Support digest for Wednesday Jan 14 2026*") and "• New: *2*" in out
    assert struct.unpack(">II", chart.read_bytes()[16:24]) == (900, 400)
    with store.read() as session:
        assert session.execute(select(func.count()).select_from(Digest)).scalar() == 0


def test_send_records_once_then_sends_again(cli: Cli, store: Store, fortnight: list[str],  # noqa: F811
                                            monkeypatch) -> None:
    monkeypatch.setenv("SUPPORTDESK_DIGEST_EMAILS", "boss@acme.test")
    assert cli.ok("digest", *DAY, "--send").out == "daily digest 2026-01-14 made and queued for sending\n"
    assert cli.ok("digest", *DAY, "--send").out == "daily digest 2026-01-14 queued for sending again\n"
    with store.read() as session:
        assert session.execute(select(func.count()).select_from(Digest)).scalar() == 1
        payloads = session.execute(select(OutboxMessage.payload).where(OutboxMessage.topic == "digest")).scalars()
        assert [json.loads(p)["to"] for p in payloads] == ["boss@acme.test", "boss@acme.test"]


def test_a_weekly_summary_by_any_day_of_its_week(cli: Cli, fortnight: list[str]) -> None:  # noqa: F811
    figures = cli.json("digest", "--kind", "weekly", "--date", "2026-01-08")
    assert figures["period_label"] == "2026-W02" and figures["current"]["opened"] == 14


def test_bad_input_is_refused_and_changes_nothing(cli: Cli, store: Store, fortnight: list[str],  # noqa: F811
                                                  tmp_path: Path) -> None:
    assert "is not a day" in cli.refused("digest", "--date", "14.01.2026")
    assert "has not ended yet" in cli.refused("digest", "--date", "2999-01-01", "--send")
    assert "cannot write the chart" in cli.refused("digest", *DAY, "--chart", str(tmp_path / "no" / "x.png"))
    cli.usage_error("digest", "--print", "--send")
    cli.usage_error("digest", "--kind", "monthly")
    with store.read() as session:
        assert session.execute(select(func.count()).select_from(Digest)).scalar() == 0
