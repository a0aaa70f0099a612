"""Exactly-once output under the runner's retries, split bundles, changed
per-image outcomes, late duplicate attempts and kill + --resume.

Each attempt is a fresh process with the same run id (tests/retry_harness.py)
that runs the job's whole labeling, write and finish path on Beam's
FnApiRunner. The output is then read the documented ways: the
`labels-*.parquet` / `errors-*.parquet` globs (pyarrow and DuckDB) and the
files `_SUCCESS.json` lists. Every input URI must be in exactly one row.
"""
from __future__ import annotations

import collections
import glob
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.conftest import LABELS_FILE, PROJECT_ROOT, photo_paths, run_cli
from transforms.manifest import committed_files, read_manifest

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

N_INPUTS = 23
RUN_ID = "20261129T000000-retry0"
CRASH_EXIT = 17
BROKEN = b"\xff\xd8\xff\xe0 not a JPEG after all"


@pytest.fixture()
def inputs(tmp_path) -> Path:
    """N_INPUTS photos as real files (one of them, `changing.JPEG`, is
    broken or repaired between attempts)."""
    directory = tmp_path / "in"
    directory.mkdir()
    for i, source in enumerate(photo_paths()[:N_INPUTS - 1]):
        shutil.copy(source, directory / f"img{i:02d}.JPEG")
    shutil.copy(photo_paths()[N_INPUTS], directory / "changing.JPEG")
    return directory


def _job_args(inputs: Path, output: str, model: str,
              extra: Sequence[str] = ()) -> List[str]:
    return ["--input", str(inputs / "*.JPEG"), "--output", output,
            "--model", model, "--labels", str(LABELS_FILE),
            "--rows_per_file", "5", "--max_batch_size", "4", *extra]


def attempt(run_id: str, job_args: Sequence[str], *harness_args: str,
            expect_crash: bool = False, env: Optional[Dict[str, str]] = None
            ) -> subprocess.CompletedProcess:
    process = subprocess.run(
        [sys.executable, "-m", "tests.retry_harness", run_id, *harness_args,
         "--", *job_args], capture_output=True, text=True, timeout=600,
        cwd=PROJECT_ROOT, env={**os.environ, **(env or {})})
    expected = CRASH_EXIT if expect_crash else 0
    assert process.returncode == expected, process.stderr[-3000:]
    return process


def rows_by_glob(output: str, prefix: str) -> List[str]:
    return [uri for path in sorted(glob.glob(f"{output}/{prefix}-*.parquet"))
            for uri in pq.read_table(path, columns=["uri"])
            .column("uri").to_pylist()]


def rows_by_duckdb(output: str, prefix: str) -> List[str]:
    return [row[0] for row in duckdb.sql(
        f"SELECT uri FROM read_parquet('{output}/{prefix}-*.parquet')")
        .fetchall()]


def rows_by_manifest(output: str, prefix: str) -> List[str]:
    return [uri for path in committed_files(output, prefix)
            for uri in pq.read_table(path, columns=["uri"])
            .column("uri").to_pylist()]


def assert_exactly_once(output: str, inputs: Path) -> Dict[str, str]:
    """Every input in exactly one row by every documented reader; returns
    {uri: "labels" | "errors"}."""
    expected = sorted(str(p) for p in inputs.glob("*.JPEG"))
    kinds = None
    for reader in (rows_by_glob, rows_by_duckdb, rows_by_manifest):
        seen = collections.Counter()
        kind = {}
        for prefix in ("labels", "errors"):
            for uri in reader(output, prefix):
                seen[uri] += 1
                kind[uri] = prefix
        repeated = {u: n for u, n in seen.items() if n > 1}
        assert not repeated, f"{reader.__name__}: repeated {repeated}"
        assert sorted(seen) == expected, reader.__name__
        assert kinds is None or kind == kinds
        kinds = kind
    manifest = read_manifest(output)
    counts = collections.Counter(kinds.values())
    assert manifest["counts"]["labeled"] == counts["labels"]
    assert manifest["counts"]["failed"] == counts["errors"]
    assert not os.listdir(os.path.join(output, "_incomplete")) \
        if os.path.isdir(os.path.join(output, "_incomplete")) else True
    return kinds


def test_same_bundle_retry(inputs, standin_tf1, tmp_path):
    output = str(tmp_path / "out")
    args = _job_args(inputs, output, standin_tf1)
    attempt(RUN_ID, args, "--crash_after_commits", "3", expect_crash=True)
    assert len(glob.glob(f"{output}/*-*.parquet")) == 3
    attempt(RUN_ID, args)
    kinds = assert_exactly_once(output, inputs)
    assert set(kinds.values()) == {"labels"}


def test_retry_split_by_a_real_split_request(inputs, standin_tf1, tmp_path):
    output = str(tmp_path / "out")
    args = _job_args(inputs, output, standin_tf1)
    attempt(RUN_ID, args, "--crash_after_commits", "3", expect_crash=True)
    retry = attempt(RUN_ID, args, "--split_stage", "LabelChunks/LabelChunk")
    assert "splits: 0" not in retry.stdout, retry.stdout
    assert_exactly_once(output, inputs)


@pytest.mark.parametrize("first, second", [("broken", "fine"),
                                           ("fine", "broken")])
def test_retry_with_a_changed_outcome(inputs, standin_tf1, tmp_path, first,
                                      second):
    """error → label and label → error between two attempts that both
    committed every chunk."""
    output = str(tmp_path / "out")
    args = _job_args(inputs, output, standin_tf1)
    changing = inputs / "changing.JPEG"
    good = changing.read_bytes()
    changing.write_bytes(BROKEN if first == "broken" else good)
    attempt(RUN_ID, args, "--crash_before_finish", expect_crash=True)
    changing.write_bytes(BROKEN if second == "broken" else good)
    attempt(RUN_ID, args)
    kinds = assert_exactly_once(output, inputs)
    assert kinds[str(changing)] == ("errors" if second == "broken"
                                    else "labels")


def test_duplicate_attempt_writing_after_the_finish(inputs, standin_tf1,
                                                    tmp_path):
    """A late duplicate attempt (with another outcome for one image)
    commits its chunks after the job finished: nothing it wrote remains."""
    output = str(tmp_path / "out")
    args = _job_args(inputs, output, standin_tf1)
    attempt(RUN_ID, args)
    before = read_manifest(output)
    (inputs / "changing.JPEG").write_bytes(BROKEN)
    attempt(RUN_ID, args, "--crash_before_finish", expect_crash=True)
    assert read_manifest(output) == before
    (inputs / "changing.JPEG").unlink()  # the finished job labeled it
    shutil.copy(photo_paths()[N_INPUTS], inputs / "changing.JPEG")
    kinds = assert_exactly_once(output, inputs)
    assert set(kinds.values()) == {"labels"}


def test_killed_job_with_duplicate_attempts_then_resume(inputs, standin_tf1,
                                                        tmp_path):
    """Two attempts committed every chunk (the second with another outcome
    for one image), then the job was killed; --resume completes it with
    every URI once and labels nothing again."""
    output = str(tmp_path / "out")
    args = _job_args(inputs, output, standin_tf1)
    changing = inputs / "changing.JPEG"
    good = changing.read_bytes()
    attempt(RUN_ID, args, "--crash_before_finish", expect_crash=True)
    changing.write_bytes(BROKEN)
    attempt(RUN_ID, args, "--crash_before_finish", expect_crash=True)
    changing.write_bytes(good)
    labeled_before = len(glob.glob(f"{output}/labels-*.parquet"))
    resumed = run_cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_exactly_once(output, inputs)
    manifest = read_manifest(output)
    assert manifest["resumed"] is True
    new_run = manifest["run_id"]
    assert new_run != RUN_ID
    assert not [f for f in manifest["files"]
                if f"-{new_run}-c" in f], "resume labeled committed images"
    assert len(glob.glob(f"{output}/labels-*.parquet")) < labeled_before


BUCKET = "exactly-once"


def test_object_storage_retry_and_late_attempt(standin_tf1, tmp_path):
    """The same guarantee on gs:// (no atomic rename, prefixes for
    directories): a retry with a changed outcome, then a late duplicate
    attempt after the finish."""
    from tests.gcs_emulator import GcsEmulator  # pylint: disable=import-outside-toplevel
    with GcsEmulator() as emu:
        emu.create_bucket(BUCKET)
        bucket = emu.client().bucket(BUCKET)
        photos = photo_paths()[:N_INPUTS]
        uris = []
        for i, path in enumerate(photos):
            name = f"in/img{i:02d}.JPEG"
            bucket.blob(name).upload_from_filename(path)
            uris.append(f"gs://{BUCKET}/{name}")
        changing = bucket.blob("in/img00.JPEG")
        good = changing.download_as_bytes()
        output = f"gs://{BUCKET}/out"
        args = ["--input", f"gs://{BUCKET}/in/*.JPEG", "--output", output,
                "--model", standin_tf1, "--labels", str(LABELS_FILE),
                "--rows_per_file", "5", "--max_batch_size", "4"]
        changing.upload_from_string(BROKEN)
        attempt(RUN_ID, args, "--crash_before_finish", expect_crash=True,
                env=emu.env())
        changing.upload_from_string(good)
        attempt(RUN_ID, args, env=emu.env())
        changing.upload_from_string(BROKEN)
        attempt(RUN_ID, args, "--crash_before_finish", expect_crash=True,
                env=emu.env())

        def uris_of(prefix: str, names: Sequence[str]) -> List[str]:
            return [uri for name in names if name.startswith(prefix)
                    for uri in pq.read_table(io.BytesIO(bucket.blob(
                        f"out/{name}").download_as_bytes()), columns=["uri"])
                    .column("uri").to_pylist()]
        listed = [b.name[len("out/"):] for b in bucket.list_blobs(
            prefix="out/") if "/" not in b.name[len("out/"):]]
        manifest = json.loads(bucket.blob("out/_SUCCESS.json")
                              .download_as_bytes())
        for names in (listed, manifest["files"]):
            labeled = uris_of("labels-", names)
            failed = uris_of("errors-", names)
            assert sorted(labeled) == sorted(uris), names
            assert failed == []
        assert not list(bucket.list_blobs(prefix="out/_incomplete/"))
