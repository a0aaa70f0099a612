"""Shared fixtures: the third-party data in ../shared, stand-in modules built
once per session, and a runner for the CLI in a subprocess."""
from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
DATA = SHARED / "data"
PHOTOS_DIR = DATA / "photos"
EDGE_DIR = DATA / "edge-cases"
LABELS_FILE = DATA / "imagenet-labels" / "ImageNetLabels.txt"
SYNSETS_FILE = DATA / "imagenet-labels" / "synsets.txt"


def pytest_configure(config):
    if not PHOTOS_DIR.is_dir():
        raise pytest.UsageError(f"test data not found at {DATA}: the suite "
                                "needs ../shared/data beside the project")


def photo_paths() -> List[str]:
    return sorted(glob.glob(str(PHOTOS_DIR / "*.JPEG")))


def edge_manifest() -> List[Dict[str, str]]:
    with open(EDGE_DIR / "MANIFEST.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def standin_dirs(tmp_path_factory) -> Dict[str, str]:
    """The three stand-in modules (same seed), built once per session in a
    subprocess: building a TF1 graph must not leave state in this one."""
    root = tmp_path_factory.mktemp("modules")
    dirs = {fmt: str(root / fmt) for fmt in ("tf1", "tf2",
                                              "tf2-feature-vector")}
    code = ("import sys; from pipeline.standin import build_standin\n"
            "for fmt, d in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    build_standin(d, fmt, seed=0)\n")
    argv = [x for fmt, d in dirs.items() for x in (fmt, d)]
    subprocess.run([sys.executable, "-c", code, *argv], check=True,
                   cwd=PROJECT_ROOT, capture_output=True, timeout=600)
    return dirs


@pytest.fixture(scope="session")
def standin_tf1(standin_dirs) -> str:
    return standin_dirs["tf1"]


def run_cli(args: Sequence[str], env: Optional[Dict[str, str]] = None,
            timeout: float = 600, cwd: Optional[str] = None
            ) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in a subprocess; stdout/stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True,
        text=True, timeout=timeout, cwd=cwd or PROJECT_ROOT,
        env={**os.environ, **(env or {})})


def read_parquet_dir(directory: str, prefix: str) -> pa.Table:
    files = sorted(glob.glob(os.path.join(directory, f"{prefix}-*.parquet")))
    assert files, f"no {prefix}-*.parquet under {directory}"
    return pa.concat_tables([pq.read_table(f) for f in files])
