"""The throughput benchmark's own instruments (benchmarks/throughput.py)."""
from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading

import pytest

from benchmarks.throughput import (PeakMemory, _streamed_rate, ceiling,
                                   rate_in_window)
from tests.conftest import LABELS_FILE


def test_peak_memory_sums_the_whole_process_tree():
    # A shell whose grandchild holds 150 MB of its own pages: only the
    # tree's sum sees them, in RSS and in PSS alike.
    child = ("import time; b = bytearray(150 * 2**20); b[::4096] = "
             "b'x' * len(b[::4096]); time.sleep(1.5)")
    process = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "{child}"; true'])
    memory = PeakMemory(process.pid, interval=0.05)
    process.wait()
    rss_mb, pss_mb = memory.stop()
    assert 150 < rss_mb < 400, rss_mb
    assert 150 < pss_mb <= rss_mb, (pss_mb, rss_mb)


def test_ceiling_is_the_rate_of_both_halves_in_turn():
    assert ceiling(600, 300) == 200


def test_a_task_cut_by_the_window_counts_in_proportion():
    # Thread 1: 10 images over [0, 2]; thread 2: 10 images over [1, 3].
    # The window opens when both are busy (1) and closes at 2: half of
    # each task lies inside, 10 images in 1 s.
    assert rate_in_window([(0.0, 2.0, 10), (1.0, 3.0, 10)], 2, 2.0) == \
        pytest.approx(10.0)


def test_streamed_rate_on_a_fake_clock():
    """One thread, tasks that take 10 and 30 ms of a clock they advance
    themselves: 20 images per 40 ms, 500 images/s whatever the real time."""
    now = [0.0]

    def work(duration):
        now[0] += duration
        return 10

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        rate = _streamed_rate(pool, 1, work, [0.010, 0.030], seconds=1.0,
                              clock=lambda: now[0])
    assert rate == pytest.approx(500)


def test_streamed_rate_submits_a_task_as_each_finishes():
    """While one long task holds a thread, the other thread goes on with
    new short tasks: more of them finish than were submitted at first (2
    per thread), so none waited for the long one."""
    short_done = threading.Semaphore(0)
    waited = []
    ticks = [0]

    def work(kind):
        ticks[0] += 1
        if kind == "long":
            # Released by the sixth short task; the timeout only keeps a
            # broken implementation from hanging the test.
            waited.append(all(short_done.acquire(timeout=10)
                              for _ in range(6)))
        else:
            short_done.release()
        return 1

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        _streamed_rate(pool, 2, work, ["long"] + ["short"] * 30, seconds=20,
                       clock=lambda: ticks[0])
    assert waited and waited[0]


@pytest.mark.slow
def test_plain_loop_labels_every_corpus_image_once(tmp_path, standin_tf1,
                                                   monkeypatch):
    """(d0) does the job's work: one row per corpus file, with the labels
    the module gives each image (batches are not mixed up between the
    decode threads), in one labels file per chunk of --rows_per_file."""
    import numpy as np
    import pyarrow.parquet as pq
    from benchmarks import throughput
    from pipeline.options import parse_args
    from transforms.classify import classify_batch
    from transforms.imaging import DecodeSettings, ImageBytes, decode_batch
    from transforms.backends import load_classifier
    monkeypatch.setattr(throughput, "LABELS", LABELS_FILE)
    corpus = tmp_path / "corpus"
    throughput.make_corpus(corpus, 150)
    output = tmp_path / "loop"
    config, _ = parse_args(["--input", "x", "--output", "y",
                            "--backend", "tf", "--rows_per_file", "100"])
    rate = throughput.measure_plain_loop(corpus, output, standin_tf1, "tf",
                                         config)
    assert rate > 0
    labels_files = sorted(output.glob("labels-*.parquet"))
    assert len(labels_files) == 2
    rows = {r["uri"]: r for f in labels_files
            for r in pq.read_table(f).to_pylist()}
    files = sorted(str(p) for p in corpus.iterdir())
    assert sorted(rows) == files
    sample = files[::19]  # 8 images from different batches
    pixels = decode_batch([ImageBytes(f, open(f, "rb").read())
                           for f in sample], DecodeSettings(10**8, ("JPEG",))
                          )[0].pixels
    labels = np.asarray(LABELS_FILE.read_text().splitlines(), dtype=object)
    classifier, _ = load_classifier(standin_tf1)
    expected = classify_batch(classifier, pixels, labels, 5)
    for i, uri in enumerate(sample):
        assert rows[uri]["top_k_indices"] == list(expected.top_k_indices[i])
        assert abs(rows[uri]["score"] - expected.top_k_scores[i, 0]) < 1e-5
        assert len(rows[uri]["embedding"]) == 1280
