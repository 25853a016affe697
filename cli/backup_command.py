"""``supportdesk db backup FILE``: an online, checked copy of a SQLite store (see :mod:`core.backup`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli import output
from core.backup import backup_sqlite
from core.store import Store


def register(db_actions: Any) -> None:
    """Add ``backup`` to the ``supportdesk db`` commands."""
    about = ("copy a SQLite database to FILE while serve keeps running, then check the copy "
             "(integrity, audit chain); PostgreSQL: use pg_dump")
    p = db_actions.add_parser("backup", help=about, description=about[0].upper() + about[1:] + ".")
    p.add_argument("file", type=Path, metavar="FILE", help="a new file; an existing one is never overwritten")
    p.add_argument("--json", action="store_true", help="print JSON (stable field names; see README)")
    p.set_defaults(handler=_backup)


def _backup(args: argparse.Namespace, store: Store) -> int:
    report = backup_sqlite(store, args.file)
    if args.json:
        output.emit_json({
            "path": str(report.path),
            "size_bytes": report.size_bytes,
            "seconds": round(report.seconds, 3),
            "schema_revision": report.schema_revision,
            "requests": report.requests,
            "audit_events": report.audit.checked,
            "audit_tip_hash": report.audit.tip_hash,
        })
        return 0
    print(f"backed up to {report.path} ({report.size_bytes / 1_048_576:.1f} MiB in {report.seconds:.1f} s): "
          f"{report.requests} requests; integrity ok; audit chain verified through event {report.audit.tip_seq} "
          f"({report.audit.tip_hash[:16]}…); schema {report.schema_revision}")
    return 0
