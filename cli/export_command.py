"""``supportdesk requests export KEY [--format html|json] [--output FILE]``: a request's record for auditors.

The record is read by :func:`core.record.read_request_record` in one read
transaction and written as one self-contained file: JSON (the documented
``supportdesk.request_record`` layout) or HTML rendered from that same JSON
(templates/export/), so the two never disagree. Nothing is written to the
store. A file is written whole or not at all: into a temporary file beside
it, renamed over the target at the end, so an interrupted export never
leaves half a record where a reviewer expects a whole one.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from cli import output
from core.errors import InvalidInput
from core.record import RequestRecord, read_request_record
from core.store import Store
from templates import render_html

FORMATS = ("html", "json")
HTML_SUFFIXES = (".html", ".htm")
TEMPLATE = "export/request_record.html.j2"


def register(actions: Any) -> None:
    """Add ``export`` to the ``requests`` commands."""
    p = actions.add_parser(
        "export", help="the whole record of one request (timeline, mail, approvals, audit hashes) as HTML or JSON")
    p.add_argument("key")
    p.add_argument("--format", choices=FORMATS,
                   help="html or json; default: html when --output ends in .html or .htm, json otherwise")
    p.add_argument("--output", "-o", type=Path, metavar="FILE",
                   help="write the record to FILE (replaced whole) instead of standard output")
    p.set_defaults(handler=_export)


def choose_format(explicit: str | None, target: Path | None) -> str:
    """The format asked for, else what the file name says, else JSON (what a pipe most likely wants)."""
    if explicit is not None:
        return explicit
    if target is not None and target.suffix.lower() in HTML_SUFFIXES:
        return "html"
    return "json"


def render_record(record: RequestRecord, fmt: str) -> str:
    """The record as the text of one file in ``fmt``."""
    document = record.to_json()
    if fmt == "html":
        return render_html(TEMPLATE, record=document)
    buffer = io.StringIO()
    output.emit_json(document, buffer)
    return buffer.getvalue()


def _export(args: argparse.Namespace, store: Store) -> int:
    fmt = choose_format(args.format, args.output)
    if args.output is not None:
        _check_target(args.output)
    record = read_request_record(store, args.key)
    text = render_record(record, fmt)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_whole(args.output, text)
        chain = "verified" if record.chain.ok else "NOT verified"
        print(f"{record.request.key} exported to {args.output} ({fmt}, {len(record.timeline)} events; "
              f"audit chain {chain} up to #{record.head_seq})")
    if not record.chain.ok:
        # The record is written all the same (it is the evidence), but like `audit verify` the exit status says so.
        print(f"supportdesk: warning: the audit chain does not verify ({record.chain.problem}); "
              f"the record says so; run `supportdesk audit verify`", file=sys.stderr)
        return 1
    return 0


def _check_target(target: Path) -> None:
    """Refuse before reading anything when the file could not be written."""
    if target.is_dir():
        raise InvalidInput(f"{target} is a folder; give a file name, like {target / 'record.html'}")
    parent = target.parent
    if not parent.is_dir():
        raise InvalidInput(f"{target}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InvalidInput(f"{target}: the folder {parent} is not writable")


def write_whole(target: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to a temporary file beside ``target`` and rename it over ``target``."""
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", newline="\n", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            # A temporary file is private (0600); the record gets the mode a new file (or the one it replaces) has.
            os.chmod(handle.name, _mode_for(target))
        os.replace(handle.name, target)
    except OSError as exc:
        Path(handle.name).unlink(missing_ok=True)
        raise InvalidInput(f"{target}: cannot write the record ({exc.strerror or exc})") from None


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
