"""Listing gs:// globs against the GCS emulator: what a listing holds does
not grow with the number of objects, directory placeholders are no inputs,
and GlobUris gives every object exactly once.

Beam runs in a child process with the emulator's environment (see
tests/gcs_emulator.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gcs_emulator import GcsEmulator

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUCKET = "listing"
PER_DIR = 1000  # one GCS page per directory


class _SeededEmulator(GcsEmulator):
    """fake-gcs-server on its filesystem backend, over objects written
    straight into its storage directory: uploading 20,000 objects one by
    one takes minutes (each insert costs more as the bucket grows)."""

    def __init__(self, root: str):
        super().__init__()
        self._root = root

    def _command(self, port):
        command = super()._command(port)
        if self.kind != "fake-gcs-server":
            pytest.skip("needs fake-gcs-server's filesystem backend")
        command[command.index("-backend") + 1] = "filesystem"
        return command + ["-filesystem-root", self._root]


# What fake-gcs-server's filesystem backend keeps beside each object.
_OBJECT_METADATA = json.dumps({
    "ContentType": "image/jpeg", "Crc32c": "AAAAAA==", "Size": 0,
    "Md5Hash": "1B2M2Y8AsgTpgAmY7PhCfg==",
    "Created": "2026-01-01T00:00:00Z", "Updated": "2026-01-01T00:00:00Z",
}).encode()


def _seed(root: Path, prefix: str, dirs: int) -> None:
    """`dirs` directories of PER_DIR empty .jpg objects and a .txt each."""
    for d in range(dirs):
        directory = root / BUCKET / prefix / f"d{d:03d}"
        directory.mkdir(parents=True)
        for name in [f"f{i:05d}.jpg" for i in range(PER_DIR)] + ["notes.txt"]:
            path = directory / name
            path.touch()
            os.setxattr(path, "user.metadata", _OBJECT_METADATA)


_CHILD = r"""
import gc, json, sys, tracemalloc
import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from transforms.sources import GlobUris, iter_matches

def held_while(run):
    gc.collect()
    tracemalloc.start()
    result = run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, peak

def count(uris):
    return sum(1 for uri in uris if uri.endswith(".jpg"))

report = {}
for prefix in ("small", "big"):
    pattern = f"gs://listing/{prefix}/**.jpg"
    report[prefix] = dict(zip(("listed", "peak"),
                              held_while(lambda: count(iter_matches(pattern)))))
    report[prefix + "_beam"] = dict(zip(("listed", "peak"), held_while(
        lambda: count(m.path for m in FileSystems.match([pattern])[0]
                      .metadata_list))))

expected = [f"gs://listing/big/d{d:03d}/f{i:05d}.jpg"
            for d in range(20) for i in range(1000)]
with beam.Pipeline(runner=FnApiRunner()) as pipeline:
    assert_that(pipeline | GlobUris("gs://listing/big/d*/*.jpg"),
                equal_to(expected))
print(json.dumps(report))
"""


@pytest.mark.slow
def test_listing_memory_does_not_grow_with_objects(tmp_path):
    """20,000 objects are listed holding no more than 2,000 are (one page
    at a time), where Beam's FileSystems.match holds ten times as much."""
    _seed(tmp_path, "small", 2)
    _seed(tmp_path, "big", 20)
    with _SeededEmulator(str(tmp_path)) as emu:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD], env={**os.environ, **emu.env()},
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    small, big = report["small"], report["big"]
    assert (small["listed"], big["listed"]) == (2 * PER_DIR, 20 * PER_DIR)
    assert report["big_beam"]["listed"] == 20 * PER_DIR
    # What the listing holds: at most one page more than for 2,000.
    assert big["peak"] < 1.25 * small["peak"], report
    # The measure sees a listing that holds its objects.
    assert report["big_beam"]["peak"] > 5 * report["small_beam"]["peak"], \
        report
    assert big["peak"] * 5 < report["big_beam"]["peak"], report


_PLACEHOLDERS_CHILD = r"""
import json, sys
import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from transforms.sources import InputSpec, GlobUris, iter_matches
pattern, expected = sys.argv[1], json.loads(sys.argv[2])
with beam.Pipeline(runner=FnApiRunner()) as pipeline:
    assert_that(pipeline | GlobUris(pattern, fanout_levels=1),
                equal_to(expected))
sample = InputSpec(pattern=pattern).sample(2)
print(json.dumps({"listed": sorted(iter_matches(pattern)),
                  "sample": list(sample.uris), "complete": sample.complete}))
"""


def test_gcs_glob_skips_directory_placeholders():
    names = ["p/", "p/a.jpg", "p/b.jpg", "p/sub/", "p/sub/c.jpg",
             "p/sub/deeper/", "p/sub/deeper/d.jpg", "p/sub/e.txt",
             "q/f.jpg", "p2/g.jpg"]
    expected = ["gs://bucket/p/a.jpg", "gs://bucket/p/b.jpg",
                "gs://bucket/p/sub/c.jpg", "gs://bucket/p/sub/deeper/d.jpg",
                "gs://bucket/p/sub/e.txt"]
    with GcsEmulator() as emu:
        bucket = emu.create_bucket("bucket")
        for name in names:
            bucket.blob(name).upload_from_string(b"x")
        proc = subprocess.run(
            [sys.executable, "-c", _PLACEHOLDERS_CHILD, "gs://bucket/p/**",
             json.dumps(expected)], env={**os.environ, **emu.env()},
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["listed"] == expected
    assert report["sample"] == expected[:2] and not report["complete"]
