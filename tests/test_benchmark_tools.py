"""The throughput benchmark's own instruments (benchmarks/throughput.py)."""
from __future__ import annotations

import subprocess
import sys

from benchmarks.throughput import PeakRss, ceiling


def test_peak_rss_sums_the_whole_process_tree():
    # A shell whose grandchild holds 150 MB: only the tree sum sees it.
    child = ("import time; b = bytearray(150 * 2**20); b[::4096] = "
             "b'x' * len(b[::4096]); time.sleep(1.5)")
    process = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "{child}"; true'])
    rss = PeakRss(process.pid, interval=0.05)
    process.wait()
    peak_mb = rss.stop()
    assert 150 < peak_mb < 400, peak_mb


def test_ceiling_is_the_rate_of_both_halves_in_turn():
    assert ceiling(600, 300) == 200


def test_streamed_rate_keeps_every_thread_busy():
    """Tasks of uneven length (10 and 30 ms, 10 images each) on 2 threads:
    2 tasks per 20 ms on average, i.e. 1,000 images/s. Waiting for both
    threads after every pair would measure ~667 (each pair takes 30 ms)."""
    import concurrent.futures
    import time
    from benchmarks.throughput import _streamed_rate

    def work(duration):
        time.sleep(duration)
        return 10

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        rate = _streamed_rate(pool, 2, work, [0.010, 0.030], seconds=1.0)
    assert 850 < rate < 1100, rate
