"""What a killed process of this host (HOST: its name, and a container's pid namespace) leaves behind, removed by
the next run that works in the same place.

- Half-written batch files (`<name>.<pid>-<id>-<host>.tmp`): transform._drop_orphans, before an extract writes.
- DuckDB's spill files (`duckdb_temp_<pid>_...`), which DuckDB removes when its connection closes but a killed
  process never closes: the extract's engine spills into a folder of this host inside the batch's cache folder,
  the warehouse into its temp directory (`<warehouse>.tmp`, outside the cache, where clean-cache never looks).
  A killed spilling merge can leave gigabytes there, which no later run touched (found in review).

A file whose process still runs (or whose pid another process took since) is left alone. Best effort: a file
that cannot be removed stays for the next run."""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path

SPILL_PREFIX = "duckdb_temp_"
INIT_PID_NAMESPACE = 0xEFFFFFFC  # the kernel's own pid namespace (PROC_PID_INIT_INO): a machine's, not a container's


def host_tag(hostname: str | None = None, pid_namespace: int | None = None) -> str:
    """This host in the names of files a process leaves: a cache shared by hosts keeps each host's pids apart.
    The host is its name and, in a container, its pid namespace (the inode of /proc/self/ns/pid): two
    containers given the same hostname over one cache volume each number their processes from 1, and one took
    the other's running extract for a dead one's leftovers (the tag was the hostname alone). A machine's own
    namespace keeps the hostname alone, as before (a new tag there left what a killed run of the previous
    version had written to clean-cache: found in review). A container started again is another host: what a
    killed one left goes with its batch folder (`cbm-etl clean-cache`)."""
    if hostname is None:
        hostname = socket.gethostname()
    if pid_namespace is None:
        try:
            pid_namespace = os.stat("/proc/self/ns/pid").st_ino
        except OSError:  # no /proc (not Linux): the hostname alone
            pid_namespace = 0
    ident = hostname if pid_namespace in (0, INIT_PID_NAMESPACE) else f"{hostname}/pid:{pid_namespace}"
    return hashlib.md5(ident.encode()).hexdigest()[:8]


HOST = host_tag()


def running(pid: int) -> bool:
    """Whether process `pid` of this host runs (this one, or another user's, included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or no pid at all: left alone
        return True
    return True


def drop_dead_spill_files(directory: Path) -> int:
    """Remove DuckDB's spill files of processes that no longer run from `directory`; returns how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for p in directory.glob(f"{SPILL_PREFIX}*"):
            pid = p.name[len(SPILL_PREFIX):].split("_", 1)[0]
            if pid.isdigit() and not running(int(pid)):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed += 1
    return removed
