"""The job's counts, through one function: `count(name, amount)`.

Each count goes to Beam's metrics (the runner's counters, in Dataflow's UI
as the job runs, kept only for attempts that succeed) and to this process's
running totals, which the local progress line reads: when the job runs in
the launching process (the in_memory runner) it sees every count as it is
made. Counts are made when a chunk is committed, so each image once.

Names: images_labeled, images_failed_<stage>, errors:<stage>/<type>,
images_skipped_done, chunks_committed.
"""
from __future__ import annotations

import threading
from typing import Dict

from apache_beam.metrics import Metrics

from transforms.errors import METRICS_NAMESPACE

_LOCK = threading.Lock()
_TOTALS: Dict[str, int] = {}


def count(name: str, amount: int = 1) -> None:
    """Add `amount` to the count `name`: a Beam counter and the total."""
    if not amount:
        return
    Metrics.counter(METRICS_NAMESPACE, name).inc(amount)
    with _LOCK:
        _TOTALS[name] = _TOTALS.get(name, 0) + amount


def snapshot() -> Dict[str, int]:
    """This process's totals so far."""
    with _LOCK:
        return dict(_TOTALS)


def reset() -> None:
    with _LOCK:
        _TOTALS.clear()
