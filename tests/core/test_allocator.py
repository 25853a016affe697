"""The allocator settings give freed large blocks back to the system, where the defaults keep them."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh interpreter frees one 4 MB block (glibc then raises its mmap threshold above 4 MB), then makes
# 300 blocks of 200 KB with a small object between each two, and frees the blocks: what stays resident of
# the 60 MB is printed, in kB.
KEPT_AFTER_FREE = """
import sys
from core.allocator import return_memory_promptly
if sys.argv[1] == "tuned" and not return_memory_promptly():
    sys.exit(3)  # not glibc
def resident():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
big = bytearray(4 * 1024 * 1024)
big[::4096] = b"x" * len(big[::4096])
del big
before = resident()
blocks, pins = [], []
for _ in range(300):
    block = bytearray(200 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    blocks.append(block)
    pins.append(bytearray(1024))  # a small live object after each block: the heap cannot shrink past it
del blocks
print(resident() - before)
"""


def kept_kb(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", KEPT_AFTER_FREE, mode], capture_output=True, text=True,
                          timeout=60)
    if done.returncode == 3:
        pytest.skip("not glibc: the settings do not apply")
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_on_glibc_freed_large_blocks_leave_the_process_instead_of_staying_in_its_heap() -> None:
    tuned, default = kept_kb("tuned"), kept_kb("default")

    assert tuned < 5_000, f"{tuned} kB of 60 MB freed stayed resident"
    assert default > 40_000, f"the defaults kept only {default} kB: this test no longer shows a difference"
