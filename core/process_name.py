"""A name for each of serve's processes, as ``top`` and ``ps -o comm`` show it.

serve's children start either as a copy of serve (forked) or as ``python
-c "from multiprocessing.spawn import ..."``; without a name of their own an
operator (and the benchmarks' memory figures) cannot tell the background
process from serve or from the writer. Linux keeps a 15-character name per
thread; the main thread's is the process's.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

MAX_NAME = 15


def name_this_process(name: str) -> None:
    """Call from the process's main thread. Where the kernel has no such name (not Linux), nothing happens."""
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as comm:
            comm.write(name[:MAX_NAME])
    except OSError:
        log.debug("this system does not name processes", exc_info=True)
