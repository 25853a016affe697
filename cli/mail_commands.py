"""``supportdesk ingest`` and ``supportdesk quarantine``: mail that did not come over SMTP, and mail set aside.

``ingest`` sends ``.eml`` files, Maildir folders and mbox files through the
same pipeline as the listener: the raw bytes are stored first (a file seen
before is recognised by its SHA-256 and not stored twice), then filed. Every
path is checked before anything is stored, so a typo stores nothing.
"""

from __future__ import annotations

import argparse
import functools
import mailbox
import os
import sys
import time
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli import output
from core.errors import InvalidInput
from core.services.mail_intake import (
    FilingResult,
    RawMail,
    accept_raw_mail,
    list_quarantine,
    load_inbound,
    release_quarantined,
)
from core.store import Store
from core.views import QuarantinedMailView
# intake.processor (parsing, HTML to text) is imported by the commands that file mail, not here:
# `supportdesk serve` loads this module for its command line and never parses mail itself.

STORE_BATCH = 200
# Filing: messages per transaction, and how many are filed per call of
# process_pending (the parser processes work one batch ahead within a call).
FILING_BATCH = 100
FILING_ROUND = 5000
# Fewer messages than this are parsed here: starting a parser process costs
# about as much as parsing a couple of hundred messages.
PARALLEL_FROM = 2 * FILING_BATCH


def parser_workers(messages: int) -> int:
    """Processes that parse while this one files: one per spare core, at most two; none on one core."""
    if messages < PARALLEL_FROM:
        return 0
    return max(0, min(2, (os.cpu_count() or 1) - 1))


def register(top: Any) -> None:
    p = top.add_parser("ingest", help="file .eml files, Maildir folders and mbox files as received mail")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on a terminal")
    p.set_defaults(handler=_ingest)

    q = top.add_parser("quarantine", help="mail that did not open or join a normal request").add_subparsers(
        title="quarantine commands", metavar="ACTION", required=True)
    p = q.add_parser("list", help="quarantined mail, newest first, with the reason")
    p.add_argument("--all", action="store_true", help="include mail released since")
    p.add_argument("--json", action="store_true", help="print JSON (stable field names; see README)")
    p.set_defaults(handler=_quarantine_list)

    p = q.add_parser("show", help="one quarantined message; --raw prints its bytes as received")
    p.add_argument("id", type=int)
    p.add_argument("--raw", action="store_true")
    p.set_defaults(handler=_quarantine_show)

    p = q.add_parser("release", help="file a quarantined message as customer mail (never acknowledged)")
    p.add_argument("id", type=int)
    p.add_argument("--as", dest="actor", required=True, metavar="SLACK_USER_ID",
                   help="the agent doing this, by Slack user id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_quarantine_release)


# --- ingest ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One message to ingest: where it came from (for errors) and how to read it."""

    label: str
    path: Path
    mbox_key: str | None = None

    def read(self) -> bytes:
        if self.mbox_key is None:
            return self.path.read_bytes()
        return _open_mbox(self.path).get_bytes(self.mbox_key)


def find_sources(paths: list[Path]) -> list[Source]:
    """Every message under ``paths``; refuses the whole command on the first path that is not mail."""
    sources: list[Source] = []
    for path in paths:
        if path.is_dir():
            sources.extend(_folder(path))
        elif path.is_file():
            sources.extend(_mbox(path) if _looks_like_mbox(path) else [Source(str(path), path)])
        else:
            raise InvalidInput(f"{path}: no such file or folder")
    return sources


def _folder(path: Path) -> list[Source]:
    if (path / "cur").is_dir() or (path / "new").is_dir():  # a Maildir
        files = [f for sub in ("new", "cur") if (path / sub).is_dir() for f in sorted((path / sub).iterdir())]
        return [Source(str(f), f) for f in files if f.is_file() and not f.name.startswith(".")]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".eml", ".msg", ".mbox", ""))
    found: list[Source] = []
    for file in files:
        if _looks_like_mbox(file):
            found.extend(_mbox(file))
        elif file.suffix.lower() == ".eml":
            found.append(Source(str(file), file))
    if not found:
        raise InvalidInput(f"{path}: no .eml files, mbox files or Maildir (cur/, new/) found there")
    return found


def _looks_like_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


@functools.lru_cache(maxsize=8)
def _open_mbox(path: Path) -> mailbox.mbox:
    """One parsed table of contents per mbox file, however many messages are read from it."""
    return mailbox.mbox(path, create=False)


def _mbox(path: Path) -> list[Source]:
    box = _open_mbox(path)
    return [Source(f"{path}#{n + 1}", path, key) for n, key in enumerate(box.keys())]


def _ingest(args: argparse.Namespace, store: Store) -> int:
    sources = find_sources(args.paths)
    progress = Progress(len(sources), enabled=not args.no_progress and sys.stderr.isatty())
    started = time.perf_counter()
    workers = parser_workers(len(sources))
    from intake.processor import reader_pool

    with reader_pool(workers) as readers:  # the parser processes start while the raw bytes are stored
        new = _store_raw(store, sources, progress)
        outcomes = _file_all(store, readers, workers, progress)
    progress.done()
    elapsed = time.perf_counter() - started
    summary = {
        "messages": len(sources),
        "new": new,
        "already_stored": len(sources) - new,
        "filed": dict(sorted(outcomes.items())),
        "seconds": round(elapsed, 3),
        "messages_per_second": round(len(sources) / elapsed, 1) if elapsed > 0 else None,
    }
    if args.json:
        output.emit_json(summary)
    else:
        filed = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())) or "nothing new to file"
        print(f"ingested {len(sources)} messages ({new} new, {len(sources) - new} already stored); "
              f"filed: {filed}; {summary['messages_per_second']} messages/s")
    return 0


def _store_raw(store: Store, sources: list[Source], progress: Progress) -> int:
    """Store every message's bytes first, as the SMTP listener would; returns how many were new."""
    new = 0
    for start in range(0, len(sources), STORE_BATCH):
        batch = [RawMail(s.read(), None, (), source="ingest") for s in sources[start:start + STORE_BATCH]]
        new += accept_raw_mail(store, batch)
        progress.stored(len(batch))
    return new


def _file_all(store: Store, readers: Executor | None, workers: int, progress: Progress) -> Counter[str]:
    """File everything waiting, parsing ahead in ``readers``; stops when a round files nothing more."""
    from intake.processor import process_pending

    outcomes: Counter[str] = Counter()

    def filed(results: list[FilingResult]) -> None:
        outcomes.update(r.outcome for r in results)
        progress.filed(len(results))

    while process_pending(store, limit=FILING_ROUND, batch_size=FILING_BATCH, readers=readers,
                          read_ahead=max(workers, 1), on_batch=filed):
        pass
    return outcomes


class Progress:
    """One self-rewriting line on stderr while ingesting; silent when not on a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._stored = 0
        self._filed = 0
        self._started = time.perf_counter()
        self._last_draw = 0.0

    def stored(self, n: int) -> None:
        self._stored += n
        self._draw()

    def filed(self, n: int) -> None:
        self._filed += n
        self._draw()

    def done(self) -> None:
        if self.enabled:
            self._draw(force=True)
            sys.stderr.write("\n")

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last_draw < 0.1):
            return
        self._last_draw = now
        width = 30
        done = self._filed if self._stored >= self.total else self._stored
        phase = "filing" if self._stored >= self.total else "storing"
        filled = int(width * done / self.total) if self.total else width
        rate = done / (now - self._started) if now > self._started else 0.0
        sys.stderr.write(f"\r{phase} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} {rate:,.0f}/s ")
        sys.stderr.flush()


# --- quarantine --------------------------------------------------------------------------------------


def _quarantine_list(args: argparse.Namespace, store: Store) -> int:
    items = list_quarantine(store, include_released=args.all)
    if args.json:
        output.emit_json([item.to_json() for item in items])
        return 0
    if not items:
        print("no quarantined mail")
        return 0
    output.table(
        ("ID", "RECEIVED", "REASON", "FROM", "SUBJECT", "REQUEST"),
        ((str(i.id), output.when(i.received_at), _reason(i), i.from_address or "-", output.short(i.subject or "-"),
          i.related_request or "-") for i in items),
    )
    return 0


def _reason(item: QuarantinedMailView) -> str:
    return f"{item.reason} (released by {item.released_by})" if item.released_by else item.reason or "-"


def _quarantine_show(args: argparse.Namespace, store: Store) -> int:
    stored = load_inbound(store, args.id)
    if args.raw:
        sys.stdout.buffer.write(stored.raw)
        return 0
    match = [i for i in list_quarantine(store, include_released=True) if i.id == args.id]
    if match:
        item = match[0]
        print(f"mail {item.id}: {item.reason} — {item.subject or '(no subject)'}")
        print(f"  from {item.from_address or '-'} (envelope {item.envelope_from!r}), {item.size} bytes, "
              f"received {output.when(item.received_at)}")
        if item.related_request:
            print(f"  related to {item.related_request}")
        if item.last_error:
            print(f"  error: {item.last_error}")
    else:
        print(f"mail {stored.id}: {stored.status}, not in quarantine")
    print(f"  recipients: {', '.join(stored.recipients) or '-'}")
    return 0


def _quarantine_release(args: argparse.Namespace, store: Store) -> int:
    from intake.processor import process_one

    release_quarantined(store, args.id, actor=args.actor)
    result = process_one(store, args.id)
    if args.json:
        output.emit_json({"id": args.id, "outcome": result.outcome if result else "pending",
                          "request": result.request_key if result else None})
        return 0
    if result is None:
        print(f"mail {args.id} released; it will be filed by the mail processor")
    else:
        print(f"mail {args.id} released: {result.outcome} {result.request_key or ''}".rstrip())
    return 0

