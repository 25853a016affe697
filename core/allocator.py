"""How serve's processes ask the C allocator to give memory back: set once, before the threads start.

CPython keeps small objects in arenas of its own and hands anything over 512
bytes to ``malloc``: message bodies, parsed parts, attachment bytes, result
rows. glibc's ``malloc`` serves a large request with ``mmap`` and returns it
on ``free``, but only up to a threshold that it raises, up to 32 MB, each
time such a block is freed; after the first messages of a burst every later
buffer comes from the heap, and the heap keeps what a burst left, scattered
among live objects. Each thread that allocates may also get an arena of its
own. In serve's background process (filing, e-mail delivery and digests in
three threads) that left 10 to 15 MB more resident after a burst of 64 KB
messages, or a digest, than with the settings below (measured with
``/proc/PID/smaps_rollup`` on PostgreSQL, where filing batches are largest).

The settings: a fixed mmap threshold (it stops rising, so blocks from
128 KiB up are returned as soon as they are freed), the heap trimmed when
its free top passes the same size, and at most two arenas per process.
Smaller blocks still come from the heap; the cost is a system call per large
block, a few microseconds next to the work that made the block.

Only glibc has ``mallopt`` with these parameters; elsewhere (musl, macOS)
nothing changes.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

LARGE_BLOCK = 128 * 1024
ARENAS = 2


def return_memory_promptly() -> bool:
    """Apply the settings to this process (and the children it forks later); whether the C library took them.

    Call it before the process starts threads: the arena limit binds only
    arenas not made yet.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it, and only glibc's mallopt knows these parameters
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("not glibc: the allocator keeps its defaults")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    taken = [mallopt(parameter, value) == 1 for parameter, value in (
        (M_MMAP_THRESHOLD, LARGE_BLOCK), (M_TRIM_THRESHOLD, LARGE_BLOCK), (M_ARENA_MAX, ARENAS))]
    return all(taken)
