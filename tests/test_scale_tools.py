"""The scale benchmark's tools (benchmarks/scale.py): its corpus, its
memory sampler and its first-commit watcher."""
from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

from PIL import Image

from benchmarks import scale
from transforms.sources import iter_matches, manifest_uris


def test_corpus_is_tiny_different_decodable_jpegs_in_both_forms(tmp_path):
    corpus = tmp_path / "corpus"
    manifest = scale.make_corpus(corpus, 25)
    paths = scale.corpus_paths(corpus, 25)
    data = [open(p, "rb").read() for p in paths]
    assert len(set(data)) == 25  # no two files alike
    for blob in data:
        assert 200 < len(blob) < 1500
        with Image.open(io.BytesIO(blob)) as image:
            assert image.format == "JPEG" and image.size == (8, 8)
            image.load()
    assert list(manifest_uris(str(manifest))) == paths
    assert sorted(iter_matches(f"{corpus}/{scale.GLOB_SUFFIX}")) == paths


_PARENT = r"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c",
    "import sys; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]);"
    " print('ready', flush=True); sys.stdin.read()"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
child.stdout.readline()
print("ready", flush=True)
sys.stdin.read()
child.stdin.close(); child.wait()
"""


def test_tree_rss_counts_workers_apart_from_the_launcher():
    launcher = subprocess.Popen([sys.executable, "-c", _PARENT],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert launcher.stdout.readline().strip() == b"ready"
        sampler = scale.TreeRss(launcher.pid, interval=0.05)
        deadline = time.monotonic() + 60
        while sampler.workers_kb < 300 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        memory = sampler.stop()
    finally:
        launcher.stdin.close()
        launcher.wait()
    assert memory["workers_rss_mb"] >= 300
    assert memory["launcher_rss_mb"] < 100
    assert memory["tree_rss_mb"] >= memory["workers_rss_mb"] + \
        memory["launcher_rss_mb"] - 1


def test_first_commit_watcher_sees_only_commit_records(tmp_path):
    found = {}
    stop = threading.Event()
    watcher = threading.Thread(target=scale.first_commit_watcher,
                               args=(tmp_path, time.perf_counter(), stop,
                                     found))
    watcher.start()
    try:
        attempts = tmp_path / "_attempts"
        attempts.mkdir()
        (attempts / "run.finishing").write_bytes(b"")
        time.sleep(0.5)  # several polls: a non-record is not a commit
        assert "first_commit_s" not in found
        (attempts / "run-c000000-1.json").write_text("{}")
        watcher.join(timeout=30)
    finally:
        stop.set()
        watcher.join()
    assert found["first_commit_s"] > 0
