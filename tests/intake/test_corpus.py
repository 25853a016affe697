"""Replay real-world mail nobody here wrote (tests/corpus, see its SOURCES.md) through the gateway.

Every message is answered, stored byte for byte, filed or quarantined with a
reason, and readable: no undecoded charset escapes or mojibake in what an agent
sees. Bounces and automatic replies are recognised as machine mail and never
acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from core.models import Message, ReceivedMail
from core.store import Store
from intake.processor import process_pending
from tests.intake.gateway import running_gateway

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MACHINE = {"bounce", "auto_reply", "read_receipt"}
MOJIBAKE = ("\x1b$B", "\x1b(B", "+AD4", "Ã©", "Ã¼", "â€™", "\ufffd\ufffd\ufffd")


@dataclass(frozen=True)
class Sample:
    path: Path
    category: str

    @property
    def name(self) -> str:
        return str(self.path.relative_to(CORPUS))

    def wire_bytes(self) -> bytes:
        """As an MTA would relay it: CRLF line ends, no mbox ``From `` line."""
        data = self.path.read_bytes()
        if data.startswith(b"From "):
            data = data.split(b"\n", 1)[1]
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return data if data.endswith(b"\r\n") else data + b"\r\n"


def samples() -> list[Sample]:
    lines = (CORPUS / "index.tsv").read_text(encoding="utf-8").splitlines()
    return [Sample(CORPUS / line.split("\t")[0], line.split("\t")[1]) for line in lines if line.strip()]


def test_the_corpus_is_there_and_indexed() -> None:
    found = samples()
    assert len(found) >= 60
    assert all(s.path.is_file() for s in found)
    assert sum(s.category == "bounce" for s in found) >= 30


def test_every_real_world_message_is_answered_stored_filed_and_readable(store: Store) -> None:
    found = samples()
    replies: dict[str, int] = {}
    with running_gateway(store) as gw, gw.client() as client:
        client.ehlo("mx.corpus.test")
        for sample in found:
            sender = "" if sample.category == "bounce" else "sender@corpus.test"
            client.mail(sender or "<>")
            client.rcpt("support@localhost")
            code, _ = client.data(sample.wire_bytes())
            replies[sample.name] = code
            client.rset()
    assert {name: code for name, code in replies.items() if code != 250} == {}

    while process_pending(store, limit=500):
        pass
    with store.read() as session:
        rows = {row.raw: row for row in session.execute(select(ReceivedMail)).scalars()}
        messages = {m.id: m for m in session.execute(select(Message)).scalars()}

    unreadable: list[str] = []
    machine_acknowledged: list[str] = []
    for sample in found:
        row = rows.get(sample.wire_bytes())
        assert row is not None, f"{sample.name} was answered 250 but is not stored byte for byte"
        assert row.status in ("processed", "quarantined"), f"{sample.name} was never filed: {row.last_error}"
        assert row.reason not in ("processing_failed",), f"{sample.name}: {row.last_error}"
        if row.message_row_id is not None:
            stored = messages[row.message_row_id]
            text = (stored.full_text or stored.body_text) + (stored.subject or "")
            if any(marker in text for marker in MOJIBAKE):
                unreadable.append(sample.name)
        if sample.category in MACHINE and row.outcome == "opened":
            machine_acknowledged.append(sample.name)
    assert unreadable == []
    assert machine_acknowledged == [], "machine mail opened a request (and may have been acknowledged)"


def test_bounces_are_recognised_as_bounces_not_only_by_their_null_sender(store: Store) -> None:
    """Sent with an ordinary envelope sender, a DSN must still be known by its content."""
    bounces = [s for s in samples() if s.category == "bounce"]
    with running_gateway(store) as gw, gw.client() as client:
        for sample in bounces:
            client.sendmail("relay@corpus.test", ["support@localhost"], sample.wire_bytes())
    while process_pending(store, limit=500):
        pass
    with store.read() as session:
        reasons = {row.raw: row.reason for row in session.execute(select(ReceivedMail)).scalars()}
    missed = [s.name for s in bounces if reasons[s.wire_bytes()] not in ("bounce",)]
    assert missed == [], f"{len(missed)} of {len(bounces)} bounces not recognised"


@pytest.mark.parametrize("category", sorted(MACHINE - {"bounce"}))
def test_automatic_replies_and_receipts_are_machine_mail(store: Store, category: str) -> None:
    chosen = [s for s in samples() if s.category == category]
    if not chosen:
        pytest.fail(f"the corpus has no {category} sample")
    with running_gateway(store) as gw, gw.client() as client:
        for sample in chosen:
            client.sendmail("sender@corpus.test", ["support@localhost"], sample.wire_bytes())
    while process_pending(store, limit=500):
        pass
    with store.read() as session:
        outcomes = {row.raw: (row.outcome, row.reason) for row in session.execute(select(ReceivedMail)).scalars()}
    wrong = {s.name: outcomes[s.wire_bytes()] for s in chosen if outcomes[s.wire_bytes()][0] == "opened"}
    assert wrong == {}
