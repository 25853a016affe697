"""What the kernel says about a process, read from /proc: for the benchmarks' and the soak's memory figures.

Linux only, like the machines the benchmarks run on. Every reader answers
"nothing" (None, 0 or "") for a process that is gone, since the processes
measured are killed on purpose.
"""

from __future__ import annotations

import os


def stat_fields(pid: int, thread: int | None = None) -> list[str] | None:
    """The fields of /proc/PID/stat (or of one thread's, /proc/PID/task/TID/stat) after the command name
    (state, ppid, ...), or None once it is gone."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].decode().split()


def children_of(pid: int) -> list[int]:
    """Direct children, found by their parent id (this kernel has no /proc/*/task/*/children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def status_kb(pid: int, key: str, file: str = "status") -> int:
    """A ``Key:  123 kB`` line of /proc/PID/status (or another such file), in kB; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/{file}") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    """Resident set size: every page the process has in memory, shared ones included."""
    return status_kb(pid, "VmRSS:")


def pss_kb(pid: int) -> int:
    """Proportional set size: pages shared between processes are divided among them, not counted twice."""
    return status_kb(pid, "Pss:", "smaps_rollup")


def cmdline(pid: int) -> str:
    """The command line, arguments separated by spaces; "" once the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user + system) a process, or one of its threads, has used so far; 0 once it is gone."""
    fields = stat_fields(pid, thread)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def comm(pid: int) -> str:
    """The process's name as ``top`` and ``ps -o comm`` show it (serve's children set theirs); "" once gone."""
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""
