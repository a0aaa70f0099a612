"""Labeling a list of URIs, as plain functions (no Beam): the body of the
job's one DoFn per chunk (transforms/label_chunks.py).

    uris → batches → (read + decode on a thread pool) → classify on the
        calling thread → label rows | error records

Reading and decoding release the GIL (storage I/O, libjpeg-turbo, Pillow),
so a pool works a few batches ahead while the calling thread runs the model
on the oldest one: the two halves overlap instead of taking turns.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import sys
import threading
from typing import (Any, Callable, Counter, Deque, Dict, Iterable, Iterator,
                    List, NamedTuple, Optional, Sequence, Tuple, TypeVar)

import pyarrow as pa

from transforms.errors import ErrorRecord

T = TypeVar("T")
R = TypeVar("R")


def batches_of(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of `size` items (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def pipelined(items: Iterable[T], prepare: Callable[[T], R],
              finish: Callable[[R], Any], pool: concurrent.futures.Executor,
              in_flight: int) -> Iterator[Any]:
    """`finish(prepare(item))` for every item, in order: `prepare` runs on
    `pool`, at most `in_flight` items ahead; `finish` runs on the calling
    thread as soon as the oldest prepared item is ready."""
    pending: Deque[concurrent.futures.Future] = collections.deque()
    for item in items:
        pending.append(pool.submit(prepare, item))
        while pending and (pending[0].done() or len(pending) >= in_flight):
            yield finish(pending.popleft().result())
    while pending:
        yield finish(pending.popleft().result())


def lower_this_thread_priority(niceness: int) -> None:
    """Give the calling thread this nice value (Linux: niceness is per
    thread), so pool threads take the cores whenever the model's thread
    does not need them. Elsewhere, or if refused, it keeps its priority."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except OSError:
        logging.getLogger(__name__).debug(
            "could not lower the priority of a pool thread", exc_info=True)


_POOLS: Dict[Tuple[str, int], concurrent.futures.ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def process_pool(name: str, threads: int,
                 initializer: Optional[Callable[[], None]] = None
                 ) -> concurrent.futures.ThreadPoolExecutor:
    """One thread pool per (name, size) in this process, shared by every
    bundle thread: the threads follow the process's share of the cores, not
    the number of bundles running at once."""
    with _POOLS_LOCK:
        key = (name, threads)
        if key not in _POOLS:
            _POOLS[key] = concurrent.futures.ThreadPoolExecutor(
                threads, thread_name_prefix=name, initializer=initializer)
        return _POOLS[key]


class FileSlots:
    """At most `slots` input files read and not yet decoded in this process,
    so slots × the file size limit bounds the encoded bytes in flight. A
    holder takes one slot per file and gives it back once the file is
    decoded, never waiting for a second slot while it holds one."""

    def __init__(self, slots: int):
        self.slots = max(1, slots)
        self._semaphore = threading.Semaphore(self.slots)

    def take(self, wait: bool = True) -> bool:
        return self._semaphore.acquire(blocking=wait)

    def give(self) -> None:
        self._semaphore.release()


_SLOTS: Dict[int, FileSlots] = {}


def process_file_slots(slots: int) -> FileSlots:
    """One FileSlots per size in this process, shared by every thread."""
    with _POOLS_LOCK:
        return _SLOTS.setdefault(slots, FileSlots(slots))


def reads_within_slots(uris: Sequence[str], read: Callable[[str], Any],
                       slots: FileSlots, errors: List[ErrorRecord],
                       pool: Optional[concurrent.futures.Executor] = None,
                       lookahead: int = 1) -> Iterator[Any]:
    """`read(uri)` for each URI, in order, yielding what was read; each file
    holds a slot until the consumer asks for the next one (it has used this
    one). ErrorRecords go to `errors` instead. With `pool`, up to
    `lookahead` reads run ahead on it."""
    def handed(result) -> Iterator[Any]:
        try:
            if isinstance(result, ErrorRecord):
                errors.append(result)
            else:
                yield result
        finally:
            slots.give()
    if pool is None:
        for uri in uris:
            slots.take()
            yield from handed(read(uri))
        return
    pending: Deque[concurrent.futures.Future] = collections.deque()
    for uri in uris:
        while not (len(pending) < lookahead and slots.take(wait=False)):
            if not pending:
                slots.take()  # holds none: waiting cannot deadlock
                break
            yield from handed(pending.popleft().result())
        pending.append(pool.submit(read, uri))
    while pending:
        yield from handed(pending.popleft().result())


class ChunkCounts(NamedTuple):
    """What one chunk's attempt produced, as the job's summary counts it."""
    labeled: int
    failed: int
    errors_by_type: Dict[str, int]   # "<stage>/<error_type>" → images
    label_counts: Dict[str, int]     # top-1 label → images

    @classmethod
    def of(cls, rows: Sequence[pa.RecordBatch],
           errors: Sequence[ErrorRecord]) -> "ChunkCounts":
        labels: Counter[str] = collections.Counter()
        for batch in rows:
            labels.update(batch.column(batch.schema.get_field_index("label"))
                          .to_pylist())
        by_type = collections.Counter(f"{e.stage}/{e.error_type}"
                                      for e in errors)
        return cls(sum(b.num_rows for b in rows), len(errors),
                   dict(by_type), dict(labels))


def merge_counts(parts: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Sum the count fields of chunk records (see ChunkCounts)."""
    labeled = failed = 0
    by_type: Counter[str] = collections.Counter()
    labels: Counter[str] = collections.Counter()
    for part in parts:
        labeled += part.get("labeled", 0)
        failed += part.get("failed", 0)
        by_type.update(part.get("errors_by_type", {}))
        labels.update(part.get("label_counts", {}))
    return {"labeled": labeled, "failed": failed,
            "errors_by_type": dict(by_type), "label_counts": dict(labels)}


def top_labels(label_counts: Dict[str, int], n: int = 10
               ) -> List[Tuple[str, int]]:
    """The n most frequent top-1 labels, most frequent first (ties by name)."""
    return sorted(label_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
