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

from tests.test_listing_scale import _OBJECT_METADATA, _SeededEmulator
from transforms.sources import (NameRange, _NameRangeTracker,
                                claim_in_order, names_under, split_name)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _names() -> List[str]:
    """Names as buckets hold them: sequential, hashed, nested, unicode."""
    rng = random.Random(7)
    names = [f"p/img{i:05d}.jpg" for i in range(600)]
    names += [f"p/{rng.getrandbits(64):016x}.jpg" for _ in range(600)]
    names += [f"p/dir{d}/x{i}.jpg" for d in range(3) for i in range(50)]
    names += ["p/a b.jpg", "p/é.jpg", "p/~.jpg", "p/日本.jpg", "p/"]
    return sorted(set(names))


def _gcs_listing(names: List[str], listed: NameRange, delimiter: bool):
    """(name, is_dir) as GCS lists `listed` under "p/": objects from
    start_offset to end_offset; with the delimiter, objects below a
    sub-directory roll up into its prefix (which may sort below the start
    offset, when the range starts inside it)."""
    seen = set()
    for name in names:
        if name < listed.start or (listed.stop is not None and
                                   name >= listed.stop):
            continue
        rest = name[len("p/"):]
        if delimiter and "/" in rest:
            sub = "p/" + rest.split("/", 1)[0] + "/"
            if sub not in seen:
                seen.add(sub)
                yield sub, True
        else:
            yield name, False


def _list(names: List[str], first: NameRange, split_every: int,
          fraction: float, delimiter: bool) -> List[str]:
    """Process `first` and every residual split off it, as a runner would:
    claim the listing's entries in order (the DoFn's own loop), asking for
    a split every `split_every` claims."""
    emitted, pending, claims = [], [first], 0
    while pending:
        tracker = _NameRangeTracker(pending.pop())
        listing = _gcs_listing(names, tracker.current_restriction(),
                               delimiter)
        for name, _ in claim_in_order(listing, tracker):
            emitted.append(name)
            claims += 1
            if claims % split_every == 0:
                split = tracker.try_split(fraction)
                if split is not None:
                    primary, residual = split
                    assert primary.stop == residual.start
                    assert primary.stop > name  # claimed names stay
                    pending.append(residual)
        tracker.check_done()
    return emitted


@pytest.mark.parametrize("split_every", [1, 7, 250])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.99])
@pytest.mark.parametrize("delimiter", [False, True])
def test_every_entry_in_exactly_one_range(split_every, fraction, delimiter):
    names = _names()
    expected = sorted(name for name, _ in _gcs_listing(
        names, names_under("p/"), delimiter))
    emitted = _list(names, names_under("p/"), split_every, fraction,
                    delimiter)
    assert sorted(emitted) == expected  # none lost, none twice


def test_a_range_starting_inside_a_directory_leaves_it_to_the_one_before():
    names = [f"p/dir/{i:03d}.jpg" for i in range(100)] + ["p/z.jpg"]
    tracker = _NameRangeTracker(NameRange("p/dir/050", "p0"))
    listing = _gcs_listing(names, tracker.current_restriction(), True)
    assert list(claim_in_order(listing, tracker)) == [("p/z.jpg", False)]
    tracker.check_done()


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
    # Called again for each residual: split only the first bundle, once.
    if splits:
        return
    splits.append(0)
    yield  # let the listing start
    for _ in range(200):
        result = yield 0.5  # of what remains
        if result is not None and result.residual_roots:
            splits.append(1)
            return
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
    listing as it runs, and every match comes out exactly once. (Ranges
    that start inside a sub-directory: the test of claim_in_order above.)"""
    root = tmp_path / "gcs"
    names = [f"{i:05d}.jpg" for i in range(3000)] + ["notes.txt"]
    pattern = "gs://listing/top/*.jpg"
    for name in names:
        path = root / "listing" / "top" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.setxattr(path, "user.metadata", _OBJECT_METADATA)
    expected = [f"gs://listing/top/{n}" for n in names if n.endswith(".jpg")]
    with _SeededEmulator(str(root)) as emu:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, pattern,
             json.dumps(expected)], env={**os.environ, **emu.env()},
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["splits"] >= 1, (report, proc.stderr[-3000:])
