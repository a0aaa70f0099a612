"""How much of the machine this worker process has: the cores and memory it
shares with the other SDK processes on the machine (Dataflow runs one per
vCPU by default). Thread pools and in-flight bytes are sized from this
share, not from the whole machine."""
from __future__ import annotations

import os
from typing import Optional

#: Worker processes on this machine: 1 (this one alone) until told.
_PROCESSES: Optional[int] = 1
ONE_PER_CORE = 0


def share_machine(processes: int) -> None:
    """Declare how many worker processes share this machine (ONE_PER_CORE:
    one per core, as Dataflow runs them); call it before making pools or
    loading the model."""
    global _PROCESSES  # pylint: disable=global-statement
    _PROCESSES = processes


def machine_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def processes_on_machine() -> int:
    return machine_cores() if _PROCESSES == ONE_PER_CORE else max(1, _PROCESSES)


def cores_per_process() -> int:
    """This process's share of the cores (at least one)."""
    return max(1, machine_cores() // processes_on_machine())


def memory_per_process() -> int:
    """This process's share of the machine's physical memory, in bytes."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // processes_on_machine()
