"""Progress while a local job runs, and the summary when it ends."""
from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, TextIO, Tuple

from transforms import counting

_LOGGER = logging.getLogger("pipeline")


def progress_line(total: Optional[int], done: int, errors: int,
                  elapsed_s: float) -> str:
    """"1,234/5,000 images (24.7%), 3 errors, 410 img/s, ETA 9 s"; without
    a total (None: not counted before the run) "1,234 images, ..."."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if total is None:
        return f"{done:,} images, {errors:,} errors, {rate:.0f} img/s"
    share = 100.0 * done / total if total else 0.0
    eta = f"{(total - done) / rate:.0f} s" if rate > 0 and done < total \
        else "-"
    return (f"{done:,}/{total:,} images ({share:.1f}%), {errors:,} errors, "
            f"{rate:.0f} img/s, ETA {eta}")


class ProgressReporter:
    """A thread that reports progress: a line rewritten in place about
    twice a second on a terminal, a plain log line every `quiet_interval_s`
    otherwise (CI logs stay short).

    Counts come from `transforms.counting`'s totals, which only see work
    done in this process: with the in-process runner that is all of it.
    Other runners report the same figures as Beam counters (images_labeled,
    images_failed_<stage>, images_skipped_done) in their own UI.
    """

    def __init__(self, total: Optional[int], stream: TextIO = sys.stderr,
                 quiet_interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self._total = total
        self._stream = stream
        self._interactive = hasattr(stream, "isatty") and stream.isatty()
        self._interval = 0.5 if self._interactive else quiet_interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="progress")
        self._started = 0.0
        self._skipped = 0

    def start(self) -> "ProgressReporter":
        counting.reset()
        self._started = self._clock()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and report the final counts (N/N when every
        input is done)."""
        self._stop.set()
        self._thread.join()
        self._report()
        if self._interactive:
            self._stream.write("\n")
            self._stream.flush()

    def line(self) -> str:
        counts = counting.snapshot()
        self._skipped = counts.get("images_skipped_done", 0)
        failed = sum(n for name, n in counts.items()
                     if name.startswith("images_failed_"))
        done = counts.get("images_labeled", 0) + failed
        return progress_line(None if self._total is None else
                             self._total - self._skipped, done, failed,
                             self._clock() - self._started)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._report()

    def _report(self) -> None:
        if self._interactive:
            self._stream.write("\r" + self.line().ljust(78))
            self._stream.flush()
        else:
            _LOGGER.info("progress: %s", self.line())


def top_labels(label_files: List[str], n: int = 10
               ) -> List[Tuple[str, int]]:
    """The n most frequent top-1 labels over the given Parquet files
    (reads only the `label` column)."""
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    from transforms.schema import read_columns  # pylint: disable=import-outside-toplevel
    counts: Dict[str, int] = collections.Counter()
    for path in label_files:
        with FileSystems.open(path) as handle:
            counts.update(read_columns(handle, ["label"]).column("label")
                          .to_pylist())
    return counts.most_common(n)


def errors_by_type(counters: Dict[str, int]) -> List[Tuple[str, int]]:
    """("stage/ErrorType", count) from the `errors:<stage>/<type>` counters,
    most frequent first."""
    pairs = [(name.split(":", 1)[1], n) for name, n in counters.items()
             if name.startswith("errors:") and n]
    return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))


def summary_lines(total_inputs: Optional[int], counters: Dict[str, int],
                  wall_s: float, labeling_s: float, output: str,
                  labels: Optional[List[Tuple[str, int]]] = None
                  ) -> List[str]:
    """The end-of-run summary, one fact per line."""
    labeled = counters.get("images_labeled", 0)
    failed = {name[len("images_failed_"):]: n for name, n in counters.items()
              if name.startswith("images_failed_") and n}
    errors = sum(failed.values())
    by_stage = ", ".join(f"{stage} {n}" for stage, n in sorted(failed.items()))
    skipped = counters.get("images_skipped_done", 0)
    if total_inputs is None:  # the launch checks only sampled the input
        total_inputs = labeled + errors + skipped
    if total_inputs and skipped >= total_inputs and not labeled + errors:
        return [f"nothing to do: all {total_inputs} inputs are already in "
                f"{output}"]
    lines = [
        f"inputs        {total_inputs}",
        f"already done  {skipped} (kept from earlier runs)" if skipped else "",
        f"labeled       {labeled}",
        f"errors        {errors}" + (f" ({by_stage})" if by_stage else ""),
    ]
    lines += [f"  {n:>6}  {kind}" for kind, n in errors_by_type(counters)]
    lines += [
        f"wall time     {wall_s:.1f} s (start-up and checks "
        f"{wall_s - labeling_s:.1f} s, labeling {labeling_s:.1f} s)",
        f"images/s      {total_inputs / max(wall_s, 1e-9):.1f} overall, "
        f"{total_inputs / max(labeling_s, 1e-9):.1f} while labeling",
        f"module loads  {counters.get('module_loads', 0)} (one per worker "
        "process holding the module)",
    ]
    if labels:
        lines.append("top labels    " + ", ".join(
            f"{label} ({n})" for label, n in labels))
    lines.append(f"output        {output}")
    return [line for line in lines if line]
