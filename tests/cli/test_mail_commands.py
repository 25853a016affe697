"""``supportdesk ingest`` and ``supportdesk quarantine``, as a user types them. Both databases."""

from __future__ import annotations

import email.policy
import mailbox
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import select

from core.db import make_engine
from core.models import OutboxMessage
from tests.cli.conftest import Cli
from tests.conftest import Database


def eml(sender: str, subject: str, *, message_id: str, in_reply_to: str | None = None,
        headers: dict[str, str] | None = None, body: str = "Hello.\n") -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = "support@localhost"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()


def test_ingest_files_a_folder_a_maildir_and_an_mbox_once(seeded: Cli, tmp_path: Path, database: Database) -> None:
    folder = tmp_path / "eml"
    folder.mkdir()
    (folder / "one.eml").write_bytes(eml("ops@pending.test", "Invoice INV-200 wrong", message_id="<one@pending.test>",
                                         body="I was charged EUR 120.00 too much on INV-200.\n"))
    (folder / "two.eml").write_bytes(eml("ops@pending.test", "Re: Invoice", message_id="<two@pending.test>",
                                         in_reply_to="<one@pending.test>"))
    maildir = mailbox.Maildir(tmp_path / "Maildir", create=True)
    maildir.add(eml("stranger@else.test", "Hello there", message_id="<three@else.test>"))
    box = mailbox.mbox(tmp_path / "archive.mbox", create=True)
    box.add(eml("jane@acme.test", "Account locked", message_id="<four@acme.test>"))
    box.add(eml("robot@else.test", "Out of office", message_id="<five@else.test>",
                headers={"Auto-Submitted": "auto-replied"}))
    box.flush()
    paths = [str(folder), str(tmp_path / "Maildir"), str(tmp_path / "archive.mbox")]

    summary = seeded.json("ingest", *paths)
    assert (summary["messages"], summary["new"], summary["already_stored"]) == (5, 5, 0)
    assert summary["filed"] == {"joined": 1, "opened": 3, "quarantined": 1}

    again = seeded.json("ingest", *paths)
    assert (again["new"], again["already_stored"], again["filed"]) == (0, 5, {})

    requests = seeded.json("requests", "list", "--status", "all")
    assert sorted(r["subject"] for r in requests) == ["Account locked", "Hello there", "Invoice INV-200 wrong"]
    first = seeded.json("requests", "show", "SR-1")
    assert first["invoice"]["number"] == "INV-200" and first["category"] == "billing_dispute"
    assert first["disputed_amount"] == {"amount_minor": 12000, "currency": "EUR"}
    assert [m["direction"] for m in first["messages"]] == ["inbound", "inbound"]
    # A file carries no sender authentication: a KYC-verified customer is never linked from it.
    locked = next(r for r in requests if r["subject"] == "Account locked")
    shown = seeded.json("requests", "show", locked["key"])
    assert shown["customer"] is None and "unverified_sender" in shown["messages"][0]["flags"]
    [held] = seeded.json("quarantine", "list")
    assert (held["reason"], held["from"], held["subject"]) == ("auto_reply", "robot@else.test", "Out of office")
    # Mail that is ingested was written long ago: its senders are not sent an acknowledgment now.
    engine = make_engine(database.url)
    with engine.connect() as connection:
        assert connection.execute(select(OutboxMessage.topic).where(OutboxMessage.channel == "email")).all() == []
    engine.dispose()


def test_ingest_prints_a_summary_line(seeded: Cli, tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(eml("jane@acme.test", "A", message_id="<a@acme.test>"))
    out = seeded.ok("ingest", str(tmp_path / "a.eml")).out
    assert out.startswith("ingested 1 messages (1 new, 0 already stored); filed: 1 opened;")


def test_ingest_refuses_a_missing_path_before_storing_anything(seeded: Cli, tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(eml("jane@acme.test", "A", message_id="<a@acme.test>"))
    message = seeded.refused("ingest", str(tmp_path / "a.eml"), str(tmp_path / "nope"))
    assert "nope: no such file or folder" in message
    assert seeded.json("requests", "list", "--status", "all") == []


def test_ingest_refuses_a_folder_without_mail(seeded: Cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no .eml files" in seeded.refused("ingest", str(tmp_path / "empty"))


def test_quarantine_list_show_and_release(seeded: Cli, tmp_path: Path) -> None:
    raw = eml("robot@else.test", "Automatic reply: away", message_id="<away@else.test>",
              headers={"Auto-Submitted": "auto-replied"})
    (tmp_path / "away.eml").write_bytes(raw)
    seeded.ok("ingest", str(tmp_path / "away.eml"))
    assert seeded.ok("quarantine", "list").out.splitlines()[1].split()[3] == "auto_reply"
    [held] = seeded.json("quarantine", "list")

    shown = seeded.ok("quarantine", "show", str(held["id"])).out
    assert "auto_reply" in shown and "robot@else.test" in shown
    assert seeded.ok("quarantine", "show", str(held["id"]), "--raw").out.encode() == raw

    assert "no quarantined mail or it" not in seeded.refused("quarantine", "release", str(held["id"]), "--as", "UMANAGER")
    released = seeded.json("quarantine", "release", str(held["id"]), "--as", "UAGENT1")
    assert released == {"id": held["id"], "outcome": "opened", "request": "SR-1"}
    assert seeded.ok("quarantine", "list").out.strip() == "no quarantined mail"
    [listed] = seeded.json("quarantine", "list", "--all")
    assert listed["released_by"] == "UAGENT1"
    assert "not in quarantine" in seeded.refused("quarantine", "release", str(held["id"]), "--as", "UAGENT1")
    assert "there is no quarantined mail 999" in seeded.refused("quarantine", "release", "999", "--as", "UAGENT1")
