"""One huge gs:// prefix is not listed by one worker to the end: its
listing is a splittable DoFn over name ranges (transforms/sources.py), and
every split the runner asks for leaves each name in exactly one range.

Checked two ways: the range tracker on real name lists with splits at
every point, and GlobUris on the GCS emulator while Beam's FnApiRunner
sends real ProcessBundleSplitRequests to the listing."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tests.gcs_emulator import GcsEmulator
from tests.test_listing_scale import _OBJECT_METADATA, _SeededEmulator
from transforms.sources import (NameRange, _NameRangeTracker, names_under,
                                split_name)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _names() -> List[str]:
    """Names as buckets hold them: sequential, hashed, nested, unicode."""
    rng = random.Random(7)
    names = [f"p/img{i:05d}.jpg" for i in range(600)]
    names += [f"p/{rng.getrandbits(64):016x}.jpg" for _ in range(600)]
    names += [f"p/dir{d}/x{i}.jpg" for d in range(3) for i in range(50)]
    names += ["p/a b.jpg", "p/é.jpg", "p/~.jpg", "p/日本.jpg", "p/"]
    return sorted(set(names))


def _list(names: List[str], first: NameRange, split_every: int,
          fraction: float) -> List[str]:
    """Process `first` and every residual split off it, as a runner would:
    list the range's names in order, claim each, ask for a split every
    `split_every` claims."""
    emitted, pending, claims = [], [first], 0
    while pending:
        tracker = _NameRangeTracker(pending.pop())
        listed = tracker.current_restriction()
        for name in names:  # the listing: start_offset ≤ name < end_offset
            if name < listed.start or (listed.stop is not None and
                                       name >= listed.stop):
                continue
            if not tracker.try_claim(name):
                break
            emitted.append(name)
            claims += 1
            if claims % split_every == 0:
                split = tracker.try_split(fraction)
                if split is not None:
                    primary, residual = split
                    assert primary.stop == residual.start
                    assert primary.stop > name  # claimed names stay
                    pending.append(residual)
        else:
            tracker.try_claim(None)
        tracker.check_done()
    return emitted


@pytest.mark.parametrize("split_every", [1, 7, 250])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.99])
def test_every_name_in_exactly_one_range(split_every, fraction):
    names = _names()
    emitted = _list(names, names_under("p/"), split_every, fraction)
    assert sorted(emitted) == names  # none lost, none twice


def test_split_points_lie_strictly_inside_and_are_ascii():
    for low, stop in [("p/img00001.jpg", "p0"), ("p/", "p/img"),
                      ("", None), ("p/z", "p/z!"), ("p/日", "p0")]:
        for fraction in (0.0, 0.3, 0.9):
            point = split_name(low, stop, fraction)
            assert point is not None, (low, stop, fraction)
            assert low < point and (stop is None or point < stop)
            assert point[len(os.path.commonprefix([low, point])):]\
                .isascii()
    assert split_name("p/a", "p/a ", 0.5) is None  # nothing in between


_CHILD = r"""
import json, sys, time
import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.transforms import environments
from apache_beam.testing.util import assert_that, equal_to
from transforms.sources import GlobUris

pattern, expected = sys.argv[1], json.loads(sys.argv[2])
splits = []

def split_listing(num_elements):
    # Called again for each residual: split only the first bundle, twice.
    if splits:
        return
    splits.append(0)
    yield  # let the listing start
    for _ in range(2):
        for _ in range(500):
            result = yield 0.5  # of what remains
            if result is not None and result.residual_roots:
                splits.append(1)
                break
            time.sleep(0.005)

runner = fn_runner.FnApiRunner(
    default_environment=environments.EmbeddedPythonGrpcEnvironment.default())
with fn_runner.split_manager("Glob/ListLevel0/ParDo(_ListGcs)", split_listing):
    with beam.Pipeline(runner=runner) as pipeline:
        assert_that(pipeline | "Glob" >> GlobUris(pattern),
                    equal_to(expected))
print(json.dumps({"splits": sum(splits)}))
"""


@pytest.mark.slow
def test_a_flat_gcs_prefix_is_split_while_it_is_listed(tmp_path):
    """3,000 objects in one prefix (three GCS pages): the runner splits the
    listing as it runs, and every match comes out exactly once."""
    root = tmp_path / "gcs"
    flat = root / "listing" / "flat"
    flat.mkdir(parents=True)
    names = [f"{i:05d}.jpg" for i in range(3000)] + ["notes.txt"]
    for name in names:
        path = flat / name
        path.touch()
        os.setxattr(path, "user.metadata", _OBJECT_METADATA)
    expected = [f"gs://listing/flat/{n}" for n in names if n.endswith(".jpg")]
    with _SeededEmulator(str(root)) as emu:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, "gs://listing/flat/*.jpg",
             json.dumps(expected)], env={**os.environ, **emu.env()},
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["splits"] >= 1, (report, proc.stderr[-3000:])
