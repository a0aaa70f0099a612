"""Process-local running totals, for progress lines of local runs.

Beam's metrics only reach the launcher when the job ends (on Dataflow they
show in the job's UI as it runs). When the job runs inside the launching
process (the local in_memory runner), the DoFns also add to these totals,
which a progress thread can read at any time.
"""
from __future__ import annotations

import threading
from typing import Dict

_LOCK = threading.Lock()
_TOTALS: Dict[str, int] = {}


def add(name: str, amount: int = 1) -> None:
    with _LOCK:
        _TOTALS[name] = _TOTALS.get(name, 0) + amount


def snapshot() -> Dict[str, int]:
    with _LOCK:
        return dict(_TOTALS)


def reset() -> None:
    with _LOCK:
        _TOTALS.clear()
