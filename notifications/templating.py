"""The jinja2 environment for the text we send: one, built on first use.

Templates live in the top-level ``templates/`` folder, a package only so
that they install with the code; they are loaded from wherever it is.
``StrictUndefined`` turns a misspelt or missing variable into an error
instead of a silently empty sentence in a customer's inbox. Templates get
plain data only; nothing here reads settings or the database.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

import templates

TEMPLATE_ROOT = Path(templates.__file__).resolve().parent


@functools.cache
def environment() -> Environment:
    """The one environment; plain text, so nothing is HTML-escaped."""
    return Environment(
        loader=FileSystemLoader(TEMPLATE_ROOT),
        undefined=StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(name: str, **context: Any) -> str:
    """Render template ``name`` (e.g. ``email/reply.txt.j2``); raises a jinja2 error when it cannot."""
    return environment().get_template(name).render(**context)
