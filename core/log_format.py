"""How log records are written: a readable line (the default), or one JSON object a line for a log shipper.

``SUPPORTDESK_LOG_FORMAT=json`` gives every record as one line of JSON with
``time`` (ISO 8601 UTC, milliseconds), ``level``, ``logger``, ``message``,
any fields the call passed with ``extra=``, and ``exception`` (the
traceback) when there is one. Keeping message bodies, tokens and passwords out is first the log calls'
duty (they log ids, counts, addresses and reason codes only); the
operations tests run a real ``serve`` with mail and Slack traffic and look
for them in its log. One thing a log call cannot control is the text of a
database error in a traceback: SQLAlchemy appends the statement's
parameters (our engines are made with ``hide_parameters``, so theirs say
only that they were hidden) and PostgreSQL a ``DETAIL: Failing row contains
(...)``, which can be a customer's mail. Both formats cut those two out,
whatever logs them.

Here in core because both ``serve`` and its mail processor (a child
process of its own, in intake) set up their logging with it.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


# What a database error carries of the row it was writing: SQLAlchemy's "[parameters: ...]" (one line, the
# values are repr'd) and PostgreSQL's "DETAIL:  Failing row contains (...)" / "Key (...)=(...)" lines.
_ROW_VALUES = (
    (re.compile(r"\[parameters: .*\]"), "[parameters left out of the log]"),
    (re.compile(r"^(\s*)DETAIL: .*$", re.MULTILINE), r"\1DETAIL: (left out of the log: it may repeat row values)"),
)


def without_row_values(text: str) -> str:
    """``text`` with the values of a database row cut out (see the module docstring)."""
    for pattern, replacement in _ROW_VALUES:
        text = pattern.sub(replacement, text)
    return text


class TextFormatter(logging.Formatter):
    """The readable line, with database row values cut out of messages and tracebacks."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return without_row_values(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line; values JSON cannot hold are written as their ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": without_row_values(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = without_row_values(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = without_row_values(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # One line whatever the message holds: json.dumps escapes newlines inside strings.
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of ``SUPPORTDESK_LOG_FORMAT`` (already checked by the settings)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; expected one of {', '.join(LOG_FORMATS)}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(level: int, log_format: str = "text") -> None:
    """Log to stderr at ``level`` in ``log_format``, as :func:`logging.basicConfig` does.

    Like ``basicConfig`` it leaves a root logger that already has handlers
    alone (a host program, or pytest, set up its own).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_for(log_format))
    logging.basicConfig(level=level, handlers=[handler])
