"""The throughput benchmark's own instruments (benchmarks/throughput.py)."""
from __future__ import annotations

import subprocess
import sys

from benchmarks.throughput import PeakRss, ceiling
from tests.conftest import LABELS_FILE


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


def test_plain_loop_labels_every_corpus_image_once(tmp_path, standin_tf1,
                                                   monkeypatch):
    """(d0) does the job's work: one row per corpus file, with the labels
    the module gives each image (batches are not mixed up between the
    decode threads)."""
    import numpy as np
    import pyarrow.parquet as pq
    from benchmarks import throughput
    from pipeline.options import parse_args
    from transforms.classify import classify_batch
    from transforms.imaging import DecodeSettings, ImageBytes, decode_batch
    from transforms.model import load_classifier
    monkeypatch.setattr(throughput, "LABELS", LABELS_FILE)
    corpus = tmp_path / "corpus"
    throughput.make_corpus(corpus, 150)
    output = tmp_path / "loop.parquet"
    cli_args, _ = parse_args(["--input", "x", "--output", "y",
                              "--max_batch_size", "64"])
    rate = throughput.measure_plain_loop(corpus, output, standin_tf1, "tf",
                                         cli_args)
    assert rate > 0
    rows = {r["uri"]: r for r in pq.read_table(output).to_pylist()}
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
