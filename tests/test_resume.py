"""A run killed with SIGKILL mid-way keeps its committed files, and --resume
labels only what is missing: the union equals a clean run, no URI twice."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import (LABELS_FILE, PROJECT_ROOT, photo_paths,
                            read_parquet_dir, run_cli)

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

N_IMAGES = 900


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """N_IMAGES inputs: the photos again and again under new names."""
    directory = tmp_path_factory.mktemp("corpus")
    photos = photo_paths()
    for i in range(N_IMAGES):
        source = photos[i % len(photos)]
        os.symlink(source, directory / f"img{i:05d}_{os.path.basename(source)}")
    (directory / "img99999_broken.JPEG").write_bytes(b"\xff\xd8broken")
    return directory


def _rows_by_uri(output: Path, prefix: str):
    rows = {}
    for path in sorted(output.glob(f"{prefix}-*.parquet")):
        for row in pq.read_table(path).to_pylist():  # each file complete
            assert row["uri"] not in rows, f"{row['uri']} twice"
            rows[row["uri"]] = row
    return rows


def test_killed_run_then_resume_equals_a_clean_run(corpus, standin_tf1,
                                                   tmp_path):
    common = ["--model", standin_tf1, "--labels", str(LABELS_FILE),
              "--input", str(corpus / "*.JPEG"), "--rows_per_file", "20",
              "--max_batch_size", "16", "--backend", "tf",
              "--direct_running_mode", "multi_processing",
              "--direct_num_workers", "2"]
    # An input that blocks its reader until it is replaced: the run cannot
    # end before it is killed. (--backend tf: no parity gate reads inputs
    # at launch.)
    waiting = corpus / "img99998_waits.JPEG"
    os.mkfifo(waiting)
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--output", str(killed), *common],
        cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if len(list(killed.glob("labels-*.parquet"))) >= 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read()[-3000:]
        os.killpg(process.pid, signal.SIGKILL)  # launcher and workers
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        waiting.unlink()
        os.symlink(photo_paths()[0], waiting)
    partial = _rows_by_uri(killed, "labels")
    assert 0 < len(partial) < N_IMAGES, len(partial)
    assert str(waiting) not in partial
    assert not (killed / "_SUCCESS.json").exists()

    # Without --resume the output is refused, untouched.
    refused = run_cli(["--output", str(killed), *common])
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = run_cli(["--output", str(killed), "--resume", *common])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"already done  {len(partial)}" in resumed.stderr
    assert (killed / "_SUCCESS.json").exists()
    assert not list(killed.glob("_incomplete/*"))

    clean = tmp_path / "clean"
    result = run_cli(["--output", str(clean), *common[:-4],
                      "--direct_running_mode", "in_memory"])
    assert result.returncode == 0, result.stderr[-3000:]

    union_labels = _rows_by_uri(killed, "labels")  # asserts no URI twice
    union_errors = _rows_by_uri(killed, "errors")
    clean_labels = _rows_by_uri(clean, "labels")
    clean_errors = _rows_by_uri(clean, "errors")
    assert not set(union_labels) & set(union_errors)
    assert union_labels.keys() == clean_labels.keys()
    assert len(union_labels) == N_IMAGES + 1  # the waiting one too
    assert union_errors.keys() == clean_errors.keys() == {
        str(corpus / "img99999_broken.JPEG")}
    for uri, row in clean_labels.items():
        other = union_labels[uri]
        assert other["top_k_indices"] == row["top_k_indices"], uri
        assert np.abs(np.array(other["embedding"]) -
                      np.array(row["embedding"])).max() <= 1e-5
        assert (other["width"], other["height"], other["format"]) == \
            (row["width"], row["height"], row["format"])


def test_resume_of_a_finished_run_labels_nothing(standin_tf1, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in photo_paths()[:6]:
        os.symlink(path, photos / os.path.basename(path))
    args = ["--input", str(photos / "*.JPEG"), "--output",
            str(tmp_path / "out"), "--model", standin_tf1, "--labels",
            str(LABELS_FILE), "--direct_running_mode", "in_memory"]
    assert run_cli(args).returncode == 0
    again = run_cli(args + ["--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do: all 6 inputs are already in" in again.stderr
    assert read_parquet_dir(str(tmp_path / "out"), "labels").num_rows == 6
    both = run_cli(args + ["--resume", "--overwrite"])
    assert both.returncode == 2 and "give one" in both.stderr
