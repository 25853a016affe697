"""``core.log_format`` and ``SUPPORTDESK_LOG_FORMAT``: readable lines by default, one JSON object a line on request."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from core.db import make_engine
from core.errors import InvalidInput
from core.log_format import TEXT_FORMAT, JsonFormatter, formatter_for
from core.settings import load_settings
from core.store import Store


def record(message: str, *args: object, level: int = logging.INFO, exc_info: object = None,
           **extra: object) -> logging.LogRecord:
    """A record as ``logging.getLogger("supportdesk.test").info(message, *args, extra=extra)`` makes it."""
    return logging.getLogger("supportdesk.test").makeRecord(
        "supportdesk.test", level, __file__, 1, message, args, exc_info, extra=extra or None)  # type: ignore[arg-type]


def test_a_json_line_has_time_level_logger_message_and_the_extra_fields() -> None:
    line = JsonFormatter().format(record("accepted %d bytes from %s", 512, "192.0.2.1", request_key="SR-7",
                                         attempts=2))
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message", "request_key", "attempts"}
    assert (entry["level"], entry["logger"], entry["message"]) == ("INFO", "supportdesk.test",
                                                                   "accepted 512 bytes from 192.0.2.1")
    assert (entry["request_key"], entry["attempts"]) == ("SR-7", 2)
    assert datetime.fromisoformat(entry["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_a_json_line_stays_one_line_with_a_traceback_and_odd_values() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        failed = record("filing mail %s failed", 41, level=logging.ERROR, exc_info=sys.exc_info(),
                        when=datetime(2026, 1, 5), what={1, 2})
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["message"] == "filing mail 41 failed"
    assert "Traceback" in entry["exception"] and "ValueError: bad\nthing" in entry["exception"]
    assert entry["when"] == "2026-01-05 00:00:00" and entry["what"] == "{1, 2}"


def test_the_text_format_is_the_readable_line() -> None:
    formatter = formatter_for("text")
    assert not isinstance(formatter, JsonFormatter) and formatter._fmt == TEXT_FORMAT
    assert formatter.format(record("hello %s", "there")).endswith(" INFO supportdesk.test: hello there")
    assert isinstance(formatter_for("json"), JsonFormatter)


@pytest.mark.parametrize(("value", "expected"), [("json", "json"), ("JSON ", "json"), ("text", "text")])
def test_the_setting_takes_text_or_json(value: str, expected: str) -> None:
    assert load_settings({"SUPPORTDESK_LOG_FORMAT": value}).log_format == expected
    assert load_settings({}).log_format == "text"


def test_an_unknown_log_format_is_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match=r"SUPPORTDESK_LOG_FORMAT='yaml' must be text or json"):
        load_settings({"SUPPORTDESK_LOG_FORMAT": "yaml"})
    with pytest.raises(ValueError, match="unknown log format"):
        formatter_for("yaml")


@pytest.mark.parametrize("value", ["off", "OFF", "", " "])
def test_the_http_listener_can_be_turned_off(value: str) -> None:
    assert load_settings({"SUPPORTDESK_HTTP_LISTEN": value}).http_listen is None
    assert str(load_settings({}).http_listen) == "127.0.0.1:3000"
    with pytest.raises(InvalidInput, match="SUPPORTDESK_HTTP_LISTEN='nope' must look like host:port"):
        load_settings({"SUPPORTDESK_HTTP_LISTEN": "nope"})


MARKER = "PAPAYA-3141 the customer's own words"
_BOGUS_ROW = text("INSERT INTO inbound_mail (sha256, raw, size, source, recipients, received_at, status, attempts, "
                  "subject) VALUES ('0', :raw, 1, 'smtp', '', :at, 'bogus', 0, :subject)")


def _violation(engine: Engine) -> IntegrityError:
    """A real CHECK constraint violation of a row holding a customer's words."""
    try:
        with engine.begin() as conn:
            conn.execute(_BOGUS_ROW, {"raw": MARKER.encode(), "at": datetime(2026, 1, 5), "subject": MARKER})
    except IntegrityError as exc:
        return exc
    pytest.fail("the CHECK constraint on inbound_mail.status did not hold")


def test_our_engines_never_put_statement_parameters_into_an_error(store: Store) -> None:
    error = _violation(store.engine)
    assert "SQL parameters hidden" in str(error) and "PAPAYA" not in str(error).split("[SQL:")[1]


def test_a_database_error_s_row_values_stay_out_of_both_formats(store: Store) -> None:
    """Behind the engine's own hiding, the formats cut row values too (PostgreSQL's DETAIL line quotes the row)."""
    marker = MARKER
    revealing = make_engine(store.engine.url.render_as_string(hide_password=False), hide_parameters=False)
    try:
        error = _violation(revealing)
    finally:
        revealing.dispose()
    failed = record("filing mail %s failed: %s", 7, "see below", level=logging.ERROR,
                    exc_info=(type(error), error, error.__traceback__))
    assert marker in "".join(traceback.format_exception(*failed.exc_info))  # type: ignore[misc]
    for formatter in (formatter_for("text"), formatter_for("json")):
        out = formatter.format(failed)
        failed.exc_text = None  # each formatter formats the traceback itself
        assert "IntegrityError" in out and "PAPAYA" not in out, out
        assert "parameters left out of the log" in out


def test_row_values_are_cut_from_messages_too() -> None:
    line = ('(psycopg.errors.CheckViolation) new row violates check constraint\n'
            'DETAIL:  Failing row contains (1, secret body).\n'
            "[SQL: INSERT INTO t VALUES (%(a)s)]\n[parameters: {'a': 'secret body'}]")
    for formatter in (formatter_for("text"), formatter_for("json")):
        out = formatter.format(record("%s", line))
        assert "secret" not in out and "new row violates check constraint" in out and "[SQL: INSERT" in out
