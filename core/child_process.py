"""How serve starts its helper processes (the background process, the Slack writer), and what each does first.

**Forked while the parent has one thread, spawned otherwise.** serve starts
its helpers before its event loop, any thread or any database connection
exist: a forked child begins as a copy of serve that shares every page of
the interpreter, SQLAlchemy and the models with it until one of them writes
to the page, and no multiprocessing resource tracker starts. A fork is only
safe while no other thread can hold a lock the child would inherit, so a
replacement for a helper that died, started in a serve that runs threads by
then, is spawned: a fresh interpreter, which shares nothing.

**What a child does first**, either way (:func:`begin_child`): freeze the
objects it began with out of the garbage collector's scans (a collection
would write to every page it shares with serve), apply the allocator's
settings (``core.allocator``; a forked child has serve's already), name
itself for ``top`` and ``ps`` (``core.process_name``), and log as serve does
(a forked child keeps serve's handlers; a spawned one sets them up).
"""

from __future__ import annotations

import gc
import logging
import threading

from core.allocator import return_memory_promptly
from core.log_format import configure_logging
from core.process_name import name_this_process


def start_method() -> str:
    """``"fork"`` while this process runs a single thread, ``"spawn"`` otherwise (see the module's docstring)."""
    return "fork" if threading.active_count() == 1 else "spawn"


def begin_child(name: str, log_format: str) -> None:
    """The first steps of one of serve's helper processes, from its main thread."""
    gc.freeze()
    return_memory_promptly()
    name_this_process(name)
    configure_logging(logging.INFO, log_format)
