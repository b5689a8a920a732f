"""This process's memory, as the kernel counts it (GetIndexInfo.process_rss_bytes and the start-up log).

Read from ``/proc/self/statm`` (Linux): resident pages, and the resident pages backed by files or shared
memory (a memory-mapped index shared by several server processes is counted in each of them, and in
``shared``). Elsewhere both are 0 ("unknown"), never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATM = Path("/proc/self/statm")
RESIDENT_FIELD = 1  # statm: size resident shared text lib data dt (in pages)
SHARED_FIELD = 2
BYTES_PER_MB = 1024 * 1024


@dataclass(frozen=True)
class Memory:
    rss_bytes: int  # resident set size (0: unknown)
    shared_bytes: int  # resident pages backed by files or shared memory (mmap'd index pages, libraries)

    def describe(self) -> str:
        return f"RSS {self.rss_bytes / BYTES_PER_MB:.0f} MB ({self.shared_bytes / BYTES_PER_MB:.0f} MB shared)"


def memory() -> Memory:
    """This process's resident memory now; zeros where ``/proc`` is not available."""
    try:
        fields = STATM.read_text().split()
    except OSError:
        return Memory(0, 0)
    page = os.sysconf("SC_PAGE_SIZE")
    return Memory(int(fields[RESIDENT_FIELD]) * page, int(fields[SHARED_FIELD]) * page)
