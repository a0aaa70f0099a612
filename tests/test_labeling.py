"""The plain functions a chunk is labeled with (transforms/labeling.py,
transforms/label_chunks.py, transforms/cores.py), without running Beam."""
from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.job import processes_per_machine
from tests.conftest import PROJECT_ROOT, photo_paths
from transforms import cores
from transforms.errors import ErrorRecord
from transforms.label_chunks import chunk_count, chunk_of
from transforms.labeling import (FileSlots, lower_this_thread_priority,
                                 merge_counts, pipelined, process_pool,
                                 reads_within_slots, top_labels)


def test_pipelined_keeps_order_and_bounds_work_ahead():
    started, finished = [], []
    lock = threading.Lock()

    def prepare(item):
        with lock:
            started.append(item)
            ahead = len(started) - len(finished)
        return item, ahead

    def finish(prepared):
        finished.append(prepared[0])
        return prepared

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pipelined(range(50), prepare, finish, pool, 3))
    assert [item for item, _ in results] == list(range(50))
    assert max(ahead for _, ahead in results) <= 3


@pytest.mark.parametrize("threads", [0, 4])
def test_files_in_flight_never_exceed_the_slots(threads):
    """However many reads run ahead, at most `slots` files are read and not
    yet used, and every URI comes out once, in order."""
    photos = photo_paths()[:40]
    slots = FileSlots(2)
    alive, peak = [0], [0]
    lock = threading.Lock()

    def read(uri):
        if uri.endswith("3.JPEG"):
            return ErrorRecord(uri, "read", "OSError", "unreadable")
        with open(uri, "rb") as handle:
            data = handle.read()
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        return uri, data

    errors = []
    pool = concurrent.futures.ThreadPoolExecutor(threads) if threads else None
    seen = []
    for uri, data in reads_within_slots(photos, read, slots, errors, pool,
                                        lookahead=threads or 1):
        assert data
        seen.append(uri)
        with lock:
            alive[0] -= 1
    if pool:
        pool.shutdown()
    failed = [e.uri for e in errors]
    assert seen + failed and sorted(seen + failed) == sorted(photos)
    assert seen == [p for p in photos if p not in failed]
    assert failed == [p for p in photos if p.endswith("3.JPEG")]
    assert peak[0] <= 2
    assert slots.take(wait=False) and slots.take(wait=False)  # all given back


def test_decode_threads_run_at_a_lower_priority():
    """The model's thread is the critical path: pool threads yield to it."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    pool = process_pool("niceness-test", 3,
                        lambda: lower_this_thread_priority(7))
    seen = set(pool.map(lambda _: os.getpriority(
        os.PRIO_PROCESS, threading.get_native_id()), range(12)))
    assert seen == {max(own, 7)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own


def test_chunk_ids_are_the_same_in_every_process():
    uris = [f"gs://bucket/images/{i:05d}.jpg" for i in range(200)]
    code = ("import sys; from transforms.label_chunks import chunk_of\n"
            "print(' '.join(chunk_of(u, 7) for u in sys.argv[1:]))")
    seen = set()
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, *uris], check=True,
                             capture_output=True, text=True, cwd=PROJECT_ROOT,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        seen.add(out.stdout.strip())
    assert seen == {" ".join(chunk_of(u, 7) for u in uris)}
    counts = {c: 0 for c in {chunk_of(u, 7) for u in uris}}
    for uri in uris:
        counts[chunk_of(uri, 7)] += 1
    assert len(counts) == 7 and min(counts.values()) > 10  # spread out
    assert chunk_count(0, 5000) == 1 and chunk_count(10001, 5000) == 3


@pytest.mark.parametrize("flags, expected", [
    ([], 1),
    (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 2),
    (["--runner=DataflowRunner"], cores.ONE_PER_CORE),
    (["--runner=DataflowRunner",
      "--experiments=no_use_multiple_sdk_containers"], 1),
    (["--runner=DataflowRunner", "--sdk_worker_parallelism=3"], 3),
])
def test_processes_sharing_a_worker_machine(flags, expected):
    assert processes_per_machine(PipelineOptions(flags)) == expected


def test_each_process_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(cores, "machine_cores", lambda: 8)
    try:
        cores.share_machine(1)
        assert cores.cores_per_process() == 8
        cores.share_machine(4)
        assert cores.cores_per_process() == 2
        cores.share_machine(cores.ONE_PER_CORE)
        assert cores.cores_per_process() == 1
        assert cores.memory_per_process() * 8 <= \
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    finally:
        cores.share_machine(1)


def test_counts_merge_and_rank():
    merged = merge_counts([
        {"labeled": 3, "failed": 1, "errors_by_type": {"read/OSError": 1},
         "label_counts": {"tench": 2, "goldfish": 1}},
        {"labeled": 2, "failed": 2, "errors_by_type": {"read/OSError": 1,
                                                      "decode/X": 1},
         "label_counts": {"goldfish": 2}}])
    assert merged == {"labeled": 5, "failed": 3,
                      "errors_by_type": {"read/OSError": 2, "decode/X": 1},
                      "label_counts": {"tench": 2, "goldfish": 3}}
    assert top_labels(merged["label_counts"], 1) == [("goldfish", 3)]
