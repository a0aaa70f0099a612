"""The local GCS emulator + test shims work the way the pipeline uses GCS.

Beam always runs in a child process started with
``env={**os.environ, **emu.env()}``: STORAGE_EMULATOR_HOST and the shims in
tests/gcs_shims/sitecustomize.py must be in place from interpreter start,
before Beam or google-auth is imported, and Beam's own worker subprocesses
must inherit them too.

Children started here (each pays a ~1.5-2 s Beam import): one for all the
filesystem checks, one per DirectRunner mode.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gcs_emulator import GcsEmulator

pytestmark = pytest.mark.slow

BUCKET = "bucket"
N_PHOTOS = 5


def _photos_dir() -> Path:
    """Read-only sample photos in shared/ (beside the repo; CI lays a copy of
    shared/ beside its clone). Never copied into the project."""
    candidates = [
        os.environ.get("LABELER_PHOTOS_DIR"),
        Path(__file__).resolve().parents[2] / "shared" / "data" / "photos",
        "/work/shared/data/photos",
    ]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    raise FileNotFoundError(f"sample photos not found in any of {candidates}")


def _run_child(emu, code, *args, timeout=90):
    """Run ``code`` in a fresh interpreter with the emulator environment.
    Returns (CompletedProcess, wall seconds, last stdout line parsed as JSON)."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **emu.env()},
        cwd=str(Path(__file__).resolve().parents[1]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, (
        f"child failed (rc={proc.returncode}, {elapsed:.1f}s)\n"
        f"--- stdout ---\n{proc.stdout[-5000:]}\n--- stderr ---\n{proc.stderr[-10000:]}"
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return proc, elapsed, json.loads(lines[-1])


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def gcs_emulator():
    # Thin wrapper on purpose: this is what moves to tests/conftest.py.
    with GcsEmulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def photos(gcs_emulator, tmp_path_factory):
    """5 real JPEGs uploaded with google-cloud-storage to gs://bucket/photos/.
    Returns {gs_uri: local_path}. Symlinks (not copies) select the 5 files so
    that upload_dir() itself is exercised."""
    src = sorted(_photos_dir().glob("*.JPEG"))[:N_PHOTOS]
    assert len(src) == N_PHOTOS
    link_dir = tmp_path_factory.mktemp("photo_links")
    for p in src:
        (link_dir / p.name).symlink_to(p)
    gcs_emulator.create_bucket(BUCKET)
    uris = gcs_emulator.upload_dir(link_dir, BUCKET, "photos", pattern="*.JPEG")
    assert uris == [f"gs://{BUCKET}/photos/{p.name}" for p in src]
    assert gcs_emulator.list(BUCKET, "photos/") == uris
    return dict(zip(uris, src))


# ------------------------------------------------ FileSystems in a Beam child
FILESYSTEM_CHILD = r'''
import hashlib, json, sys, time
from apache_beam.io.filesystems import FileSystems

out = {}
t0 = time.monotonic()
[result] = FileSystems.match([sys.argv[1]])
out["match"] = {m.path: m.size_in_bytes for m in result.metadata_list}
out["match_seconds"] = time.monotonic() - t0

out["read"] = {}
for path in out["match"]:
    with FileSystems.open(path) as f:
        data = f.read()
    out["read"][path] = [len(data), hashlib.sha256(data).hexdigest()]

missing = sys.argv[2]
out["missing_exists"] = FileSystems.exists(missing)
[mres] = FileSystems.match([missing])
out["missing_match"] = [m.path for m in mres.metadata_list]
t0 = time.monotonic()
try:
    FileSystems.open(missing).read()
    out["missing_open"] = None
except BaseException as e:
    out["missing_open"] = {
        "type": type(e).__module__ + "." + type(e).__qualname__,
        "mro": [c.__qualname__ for c in type(e).__mro__],
        "message": str(e),
        "code": getattr(e, "code", None),
        "is_FileNotFoundError": isinstance(e, FileNotFoundError),
        "seconds": time.monotonic() - t0,
    }
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def filesystem_result(gcs_emulator, photos):
    _, _, out = _run_child(
        gcs_emulator,
        FILESYSTEM_CHILD,
        f"gs://{BUCKET}/photos/*.JPEG",
        f"gs://{BUCKET}/photos/does-not-exist.JPEG",
    )
    return out


@pytest.mark.timeout(120)
def test_match_finds_uploaded_photos_with_sizes(filesystem_result, photos):
    expected = {uri: local.stat().st_size for uri, local in photos.items()}
    assert filesystem_result["match"] == expected


@pytest.mark.timeout(120)
def test_open_reads_identical_bytes(filesystem_result, photos):
    for uri, local in photos.items():
        data = local.read_bytes()
        assert filesystem_result["read"][uri] == [len(data), hashlib.sha256(data).hexdigest()]


@pytest.mark.timeout(120)
def test_missing_object_fails_cleanly(filesystem_result):
    assert filesystem_result["missing_exists"] is False
    assert filesystem_result["missing_match"] == []
    err = filesystem_result["missing_open"]
    assert err is not None, "opening a missing gs:// object did not raise"
    # Beam 2.77 does not translate this into FileNotFoundError: the 404 from
    # BeamBlobReader's blob.reload() (in FileSystems.open, before any read)
    # surfaces as google.api_core.exceptions.NotFound, code 404, message
    # "404 GET http://127.0.0.1:P/storage/v1/b/bucket/o/photos%2F
    # does-not-exist.JPEG?projection=noAcl&prettyPrint=false: Not Found"
    # (fake-gcs-server's wording; real GCS says "No such object: ..."). It is
    # not retried (~5 ms). Callers must catch NotFound (or check
    # FileSystems.exists first), not FileNotFoundError.
    assert err["type"] == "google.api_core.exceptions.NotFound", err
    assert err["code"] == 404, err
    assert err["is_FileNotFoundError"] is False, err
    assert "does-not-exist.JPEG" in err["message"], err
    assert err["seconds"] < 10, f"404 was retried instead of failing fast: {err}"


# ------------------------------------- a Beam pipeline writing Parquet to GCS
PIPELINE_CHILD = r'''
import json, os, sys, time
import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

output, *beam_args = sys.argv[1:]
SCHEMA = pa.schema([
    ("image", pa.string()),
    ("label", pa.string()),
    ("score", pa.float64()),
    ("pid", pa.int64()),    # process that produced the row
    ("shims", pa.bool_()),  # were the test shims active in that process?
])
ROWS = [("a.JPEG", "tench", 0.9), ("b.JPEG", "cock", 0.75),
        ("c.JPEG", "junco", 0.5), ("d.JPEG", "eft", 0.25)]

def to_record(row):
    import os, sys
    site = sys.modules.get("sitecustomize")
    return {"image": row[0], "label": row[1], "score": row[2],
            "pid": os.getpid(), "shims": bool(getattr(site, "_ENABLED", False))}

t0 = time.monotonic()
with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
    (p | beam.Create(ROWS)
       | beam.Map(to_record)
       | beam.io.WriteToParquet(output, SCHEMA, file_name_suffix=".parquet"))
print(json.dumps({"pid": os.getpid(), "pipeline_seconds": time.monotonic() - t0}))
'''

EXPECTED_ROWS = [
    {"image": "a.JPEG", "label": "tench", "score": 0.9},
    {"image": "b.JPEG", "label": "cock", "score": 0.75},
    {"image": "c.JPEG", "label": "junco", "score": 0.5},
    {"image": "d.JPEG", "label": "eft", "score": 0.25},
]


def _run_parquet_pipeline(emu, name, *beam_args):
    import pyarrow as pa
    import pyarrow.parquet as pq

    emu.create_bucket(BUCKET)
    prefix = f"out/{name}/"
    proc, elapsed, info = _run_child(
        emu, PIPELINE_CHILD, f"gs://{BUCKET}/{prefix}labels", "--runner", "DirectRunner", *beam_args
    )
    # Only the final shards remain: the sink's finalize copied them out of the
    # temp dir and deleted it (GcsIO.copy_batch / delete_batch).
    objects = emu.list(BUCKET, prefix)
    assert objects, f"no output written\n{proc.stderr[-5000:]}"
    for uri in objects:
        name_ = uri.rsplit("/", 1)[-1]
        assert name_.startswith("labels-") and name_.endswith(".parquet"), objects
        assert "-of-" in name_, objects
    bucket = emu.client().bucket(BUCKET)
    tables = [
        pq.read_table(io.BytesIO(bucket.blob(uri[len(f"gs://{BUCKET}/"):]).download_as_bytes()))
        for uri in objects
    ]
    rows = pa.concat_tables(tables).to_pylist()
    assert sorted(({k: r[k] for k in ("image", "label", "score")} for r in rows),
                  key=lambda r: r["image"]) == EXPECTED_ROWS
    assert all(r["shims"] for r in rows), rows
    # Beam logs this on every retry of google.auth.default(); with the shim
    # it is never called (worker subprocesses share this stderr).
    assert "_get_credentials_with_retrys" not in proc.stderr, proc.stderr[-5000:]
    return proc, elapsed, info, rows


@pytest.mark.timeout(150)
def test_direct_runner_writes_parquet_to_gcs(gcs_emulator):
    proc, elapsed, info, rows = _run_parquet_pipeline(gcs_emulator, "in_process")
    assert "Bad response" not in proc.stderr


@pytest.mark.timeout(150)
def test_direct_runner_multi_processing_writes_parquet_to_gcs(gcs_emulator):
    proc, elapsed, info, rows = _run_parquet_pipeline(
        gcs_emulator,
        "multi_processing",
        "--direct_running_mode", "multi_processing",
        "--direct_num_workers", "2",
    )
    # The rows were produced in Beam's SDK-worker subprocesses, and the shims
    # were active there (checked in _run_parquet_pipeline) -- they got them
    # only through the inherited PYTHONPATH + LABELER_TEST_GCS_SHIMS.
    assert all(r["pid"] != info["pid"] for r in rows), (info, rows)
    # Guards the credentials shim in the workers: without it every process
    # that creates a GCS client (here the SDK workers, which write the shards
    # and run the sink's finalize) first sits in Beam's google.auth.default()
    # retry/back-off -- 4 retries of 2+4+8+16 s, each fuzzed down to half, so
    # 15-30 s (~27 s typical; measured 25.4 s wall for this pipeline with only
    # the Content-ID shim) -- before falling back to an anonymous client.
    # With the shims it takes ~4-9 s here. The subprocess timeout is generous;
    # this bound catches a shim that silently stopped applying. Because of the
    # fuzz, timing alone is not decisive: the stderr check in
    # _run_parquet_pipeline is the deterministic guard.
    assert elapsed < 25, f"multi-process pipeline took {elapsed:.1f}s (credential retry?)"
