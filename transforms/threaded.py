"""A DoFn that runs its per-element work on a small thread pool.

Why by hand: Beam's AsyncWrapper needs keyed state and real-time timers
(a streaming design) and the DirectRunner runs a bundle on one thread.
Decoding releases the GIL (libjpeg-turbo, Pillow), so a few threads decode
while the bundle thread runs inference on the batches they feed — the two
halves of the job overlap instead of taking turns.

Results keep their input element's window and timestamp, and every
submitted element is emitted before the bundle finishes.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import sys
import threading
from typing import Any, Deque, Iterable, Iterator, Tuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

_LOGGER = logging.getLogger(__name__)


def lower_this_thread_priority(niceness: int) -> None:
    """Give the calling thread this nice value (Linux: niceness is per
    thread). Elsewhere, or if refused, the thread keeps its priority."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except OSError:
        _LOGGER.debug("could not lower the priority of a pool thread",
                      exc_info=True)


class ThreadedDoFn(beam.DoFn):
    """Subclasses implement `work(element) -> iterable of outputs` (values or
    TaggedOutput); it must be thread-safe and must not raise.

    With threads <= 1 the work runs inline, exactly like a plain DoFn
    (apply it with `threaded_pardo`, which then makes it one).
    At most `max_in_flight` elements (default 4 per thread) are submitted
    and not yet emitted per bundle, so memory stays bounded whatever the
    bundle size. It should cover what downstream holds back at a time (a
    whole batch), or the pool idles while the bundle thread runs inference.
    With `niceness` > 0 the pool threads run at that lower priority (Linux).
    """

    def __init__(self, threads: int, max_in_flight: int = 0,
                 niceness: int = 0):
        self.threads = threads
        self._niceness = niceness
        self._max_in_flight = max(1, max_in_flight or 4 * threads)
        self._pool = None
        self._pending: Deque[Tuple[concurrent.futures.Future, Any, Any]] = \
            collections.deque()

    def work(self, element: Any) -> Iterable[Any]:
        raise NotImplementedError

    def emitted(self, output: Any) -> None:
        """Called on the bundle thread for each output as it is emitted:
        the place for Beam metrics, which pool threads cannot update."""

    def setup(self):
        if self.threads > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix=type(self).__name__,
                initializer=lower_this_thread_priority,
                initargs=(self._niceness,))

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def start_bundle(self):
        self._pending.clear()

    def process(self, element, window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam) -> Iterator[Any]:
        if self._pool is None:
            yield from self.run_inline(element)
            return
        self._pending.append((self._pool.submit(self._run, element),
                              window, timestamp))
        # Emit whatever is done, oldest first; block only when the queue
        # is full, so the bundle thread is free to run downstream work.
        while self._pending and (self._pending[0][0].done() or
                                 len(self._pending) >= self._max_in_flight):
            yield from self._emit(self._pending.popleft())

    def finish_bundle(self) -> Iterator[Any]:
        while self._pending:
            yield from self._emit(self._pending.popleft())

    def run_inline(self, element) -> Iterator[Any]:
        """The work for one element, on the calling thread."""
        for output in self.work(element):
            self.emitted(output)
            yield output

    def _run(self, element):
        return list(self.work(element))

    def _emit(self, pending) -> Iterator[Any]:
        future, window, timestamp = pending
        for output in future.result():
            self.emitted(output)
            if isinstance(output, TaggedOutput):
                yield TaggedOutput(output.tag, WindowedValue(
                    output.value, timestamp, (window,)))
            else:
                yield WindowedValue(output, timestamp, (window,))


class _InlineDoFn(beam.DoFn):
    """A ThreadedDoFn's work on the bundle thread, through Beam's plain
    per-element call: a process() that asks for its window and timestamp
    takes Beam's slower path (~8 µs more per element, measured), which
    only the threaded case needs."""

    def __init__(self, threaded: ThreadedDoFn):
        self._threaded = threaded

    def setup(self):
        self._threaded.setup()

    def teardown(self):
        self._threaded.teardown()

    def process(self, element) -> Iterator[Any]:
        return self._threaded.run_inline(element)


def threaded_pardo(dofn: ThreadedDoFn) -> beam.ParDo:
    """ParDo of `dofn`: on its thread pool, or inline with one thread."""
    return beam.ParDo(dofn if dofn.threads > 1 else _InlineDoFn(dofn))
