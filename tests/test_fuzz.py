"""Fuzzing the decode step: mutated photos and edge-case images through
transforms.imaging.decode_batch, in worker processes (a C-decoder segfault is a
counted crash, not a dead pytest).

The generator and the runner live in benchmarks/fuzz_decode.py (the same
code as `python -m benchmarks.fuzz_decode --n 10000` for longer runs).
"""
from __future__ import annotations

import collections
import io
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import fuzz_decode as fuzz
from tests.conftest import DATA, EDGE_DIR, PHOTOS_DIR, PROJECT_ROOT
from transforms.imaging import ImageBytes, decode_batch, decode_image
from transforms.errors import ImageError

N_CASES = 2500                 # every 5th from an edge-case seed: 2000 photos
SEED = 20251126
PER_IMAGE_LIMIT_S = 10.0       # a case still running after this is a hang
EDGE_EVERY_INDEX = fuzz.EDGE_EVERY - 1  # the first case from an edge-case seed


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> fuzz.FuzzReport:
    return fuzz.run_fuzz(N_CASES, SEED, workers=2, data_dir=DATA,
                         per_image_timeout_s=PER_IMAGE_LIMIT_S,
                         log_dir=str(tmp_path_factory.mktemp("fuzz-logs")))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_case_is_a_valid_tensor_or_an_error_record(report, capsys):
    summary = "\n".join(report.lines())
    with capsys.disabled():
        print("\n" + summary)
    assert [r.index for r in report.results] == list(range(N_CASES)), summary
    # No crash, hang, invalid output, escaped exception or MemoryError.
    assert not report.failures, summary + "".join(
        f"\n--- worker log for case {i} ---\n{log}"
        for i, log in report.worker_logs.items())
    counts = report.counts()
    assert counts[fuzz.OUTCOME_TENSOR] + counts[fuzz.OUTCOME_ERROR] == N_CASES


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cases_cover_photos_formats_and_mutations(report):
    photo_cases = [r for r in report.results if r.seed_kind == "photo"]
    assert len(photo_cases) >= 2000
    edge_formats = {r.seed_name.rsplit(".", 1)[-1].lower()
                    for r in report.results if r.seed_kind == "edge"}
    assert {"png", "gif", "webp", "bmp"} <= edge_formats, edge_formats
    assert edge_formats & {"tif", "tiff"}, edge_formats
    kinds = collections.Counter(op.split("@")[0].split(":")[0].split(" ")[0]
                                .split("[")[0] for r in report.results
                                for op in r.ops)
    for kind in ("truncate", "bitflip", "bytes", "header", "dims", "dup",
                 "delete", "insert"):
        assert kinds[kind] >= 20, kinds
    # Both ends are exercised, not just "everything fails to open".
    counts = report.counts()
    assert counts[fuzz.OUTCOME_TENSOR] > N_CASES // 10, counts
    assert counts[fuzz.OUTCOME_ERROR] > N_CASES // 10, counts


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_image_finished_within_the_time_limit(report):
    """Measured in the worker (the parent's watchdog kills at the same
    limit, and bounds each chunk too)."""
    over = [r.describe() for r in report.results
            if r.seconds >= PER_IMAGE_LIMIT_S]
    assert not over, over


def test_cases_are_reproducible_from_seed_and_index():
    photos, edges = fuzz.seed_files(DATA)
    assert {s.path for s in photos} == {str(p) for p in
                                        PHOTOS_DIR.glob("*.JPEG")}
    assert all(s.path.startswith(str(EDGE_DIR)) for s in edges)
    seeds = fuzz.Seeds.load(photos, edges)
    first = [fuzz.make_case(seeds, SEED, i) for i in range(30)]
    again = [fuzz.make_case(seeds, SEED, i) for i in reversed(range(30))]
    assert first == again[::-1]
    other = [fuzz.make_case(seeds, SEED + 1, i) for i in range(30)]
    assert [c.data for c in first] != [c.data for c in other]
    originals = {s.name: data for s, data in seeds.photos + seeds.edges}
    assert sum(c.data != originals[c.seed_name] for c in first) >= 28


def test_one_case_replays_through_the_documented_command(tmp_path):
    """`python -m benchmarks.fuzz_decode --case N --dump FILE` rebuilds case
    N of the seed, writes its bytes and decodes it as the fuzzer does."""
    index = EDGE_EVERY_INDEX
    dump = tmp_path / f"case-{index}"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.fuzz_decode", "--case", str(index),
         "--seed", str(SEED), "--data", str(DATA), "--dump", str(dump)],
        capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
        check=False)
    assert run.returncode == 0, run.stderr
    photos, edges = fuzz.seed_files(DATA)
    case = fuzz.make_case(fuzz.Seeds.load(photos, edges), SEED, index)
    assert dump.read_bytes() == case.data
    assert run.stdout.startswith(f"case {index}: {case.seed_name}: ")
    decoded, errors = decode_batch([ImageBytes(case.uri, case.data)],
                                   fuzz.default_settings())
    outcome = fuzz.check_decoded(decoded, errors, case.uri)
    assert outcome[0] in (fuzz.OUTCOME_TENSOR, fuzz.OUTCOME_ERROR)
    assert repr(outcome) in run.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_runner_reports_crashes_and_hangs_and_goes_on(tmp_path):
    """The harness itself: a worker that dies (abort, like a segfault in a
    C decoder) or stops answering is a counted failure of that one case;
    the remaining cases still run."""
    report = fuzz.run_fuzz(12, SEED, workers=2, data_dir=DATA, chunk_size=4,
                           per_image_timeout_s=3.0, log_dir=str(tmp_path),
                           inject={2: "crash", 9: "hang"})
    outcomes = {r.index: r.outcome for r in report.results}
    assert sorted(outcomes) == list(range(12)), outcomes
    assert outcomes[2] == fuzz.OUTCOME_CRASH
    assert outcomes[9] == fuzz.OUTCOME_HANG
    assert {o for i, o in outcomes.items() if i not in (2, 9)} <= {
        fuzz.OUTCOME_TENSOR, fuzz.OUTCOME_ERROR}, outcomes
    assert "Fatal Python error" in report.worker_logs["2"]  # faulthandler


# --- regressions for what the fuzzer found -----------------------------------

def _apng_declaring(width: int, height: int) -> bytes:
    data = bytearray((EDGE_DIR / "ball.png").read_bytes())  # APNG
    data[16:24] = struct.pack(">II", width, height)
    fuzz.png_fix_crcs(data)
    return bytes(data)


def test_apng_with_huge_declared_size_is_refused_before_allocation():
    """Pillow's APNG reader fills a w*h RGBA frame inside Image.open, before
    any size check: 20000x20000 cost 1.5 GB and ~2 s there (40000x40000:
    6 GB; a 65535-square one more than this machine has)."""
    started = time.perf_counter()
    with pytest.raises(ImageError) as err:
        decode_image(_apng_declaring(20000, 20000), fuzz.default_settings())
    assert err.value.error_type == "TooManyPixels"
    assert time.perf_counter() - started < 0.5
    # Within the limit the APNG still opens (and fails on its short data).
    pixels, *_ = decode_image((EDGE_DIR / "ball.png").read_bytes(),
                              fuzz.default_settings())
    assert pixels.shape == (96, 96, 3)


def test_unreadable_exif_does_not_fail_a_decodable_jpeg():
    """A corrupt EXIF block (Pillow raises SyntaxError "not a TIFF file")
    leaves the pixels alone: decoded unrotated, as viewers show it."""
    original = sorted(PHOTOS_DIR.glob("*.JPEG"))[0].read_bytes()
    body = b"Exif\x00\x00" + b"second\x00\x00garbage-not-tiff" * 4
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    damaged = original[:2] + app1 + original[2:]
    from PIL import Image
    with Image.open(io.BytesIO(damaged)) as image:
        with pytest.raises(Exception):
            image.getexif()
    settings = fuzz.default_settings()
    expected, width, height, fmt = decode_image(original, settings)
    pixels, width2, height2, fmt2 = decode_image(damaged, settings)
    np.testing.assert_array_equal(pixels, expected)
    assert (width2, height2, fmt2) == (width, height, fmt)
