"""The job against real object storage: a GCS emulator on 127.0.0.1 holds
the photos, the module and the output (`gs://` input, output and model)."""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import (LABELS_FILE, PHOTOS_DIR, photo_paths,
                            read_parquet_dir, run_cli)
from tests.gcs_emulator import GcsEmulator

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

BUCKET = "labeler-test"


@pytest.fixture(scope="module")
def emulator():
    with GcsEmulator() as emu:
        emu.create_bucket(BUCKET)
        yield emu


def upload_tree(emu: GcsEmulator, local_dir: str, prefix: str) -> None:
    bucket = emu.client().bucket(BUCKET)
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
            bucket.blob(f"{prefix}/{relative}").upload_from_filename(path)


def read_gcs_parquet(emu: GcsEmulator, prefix: str) -> pa.Table:
    bucket = emu.client().bucket(BUCKET)
    tables = [pq.read_table(io.BytesIO(blob.download_as_bytes()))
              for blob in bucket.list_blobs(prefix=prefix)
              if blob.name.endswith(".parquet")]
    assert tables, f"no Parquet under gs://{BUCKET}/{prefix}"
    return pa.concat_tables(tables)


def test_gs_input_output_and_model(emulator, standin_tf1, tmp_path):
    photos = emulator.upload_dir(str(PHOTOS_DIR), BUCKET, "photos", "*.JPEG")
    assert len(photos) == 150
    upload_tree(emulator, standin_tf1, "modules/standin")
    bucket = emulator.client().bucket(BUCKET)
    bucket.blob("photos/not-an-image.JPEG").upload_from_string(b"hello")
    result = run_cli([
        "--input", f"gs://{BUCKET}/photos/*.JPEG",
        "--output", f"gs://{BUCKET}/out",
        "--model", f"gs://{BUCKET}/modules/standin",
        "--model_cache_dir", str(tmp_path / "cache"),
        "--labels", str(LABELS_FILE)], env=emulator.env())
    assert result.returncode == 0, result.stderr[-4000:]
    # The module really came from the bucket, into the local cache.
    # (The cache also keeps the xnnpack conversion's files beside it.)
    cached = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(cached) == 1 and (cached[0] / "saved_model.pb").exists()

    labels = read_gcs_parquet(emulator, "out/labels-")
    errors = read_gcs_parquet(emulator, "out/errors-")
    labeled = labels.column("uri").to_pylist()
    assert sorted(labeled) == sorted(photos)
    assert errors.column("uri").to_pylist() == [
        f"gs://{BUCKET}/photos/not-an-image.JPEG"]
    assert set(labels.column("model").to_pylist()) == {
        f"gs://{BUCKET}/modules/standin"}
    # Only committed files, their commit records, the manifest and the
    # staged model remain.
    names = emulator.list(BUCKET, "out/")
    assert f"gs://{BUCKET}/out/_SUCCESS.json" in names
    assert all(n.endswith(".parquet") or n.endswith("_SUCCESS.json") or
               "/out/_attempts/" in n or "/out/_model/" in n
               for n in names), names
    assert not any("_incomplete" in n for n in names), names


def test_local_and_gs_runs_agree(emulator, standin_tf1, tmp_path):
    """Labels from gs:// equal labels from local disk for the same bytes."""
    local_out = tmp_path / "local"
    paths = photo_paths()[:12]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths) + "\n")
    result = run_cli(["--input_manifest", str(listing), "--output",
                      str(local_out), "--model", standin_tf1, "--labels",
                      str(LABELS_FILE), "--direct_running_mode", "in_memory"])
    assert result.returncode == 0, result.stderr[-3000:]
    gs_manifest = f"gs://{BUCKET}/lists/twelve.txt"
    emulator.client().bucket(BUCKET).blob("lists/twelve.txt") \
        .upload_from_string("\n".join(
            f"gs://{BUCKET}/photos/{os.path.basename(p)}" for p in paths))
    result = run_cli(["--input_manifest", gs_manifest, "--output",
                      f"gs://{BUCKET}/out12", "--model", standin_tf1,
                      "--labels", str(LABELS_FILE),
                      "--direct_running_mode", "in_memory"],
                     env=emulator.env())
    assert result.returncode == 0, result.stderr[-3000:]
    local_rows = {os.path.basename(r["uri"]): r for r in
                  read_parquet_dir(str(local_out), "labels").to_pylist()}
    gs_rows = {os.path.basename(r["uri"]): r
               for r in read_gcs_parquet(emulator, "out12/labels-")
               .to_pylist()}
    assert local_rows.keys() == gs_rows.keys() and len(gs_rows) == 12
    for name, row in gs_rows.items():
        assert row["top_k_indices"] == local_rows[name]["top_k_indices"]
        # Batches form by timing; a batch of one may round differently.
        np.testing.assert_allclose(row["embedding"],
                                   local_rows[name]["embedding"],
                                   rtol=0, atol=1e-5, err_msg=name)


def test_unreachable_bucket_is_one_clear_line(emulator, standin_tf1,
                                              tmp_path):
    result = run_cli(["--input", "gs://no-such-bucket/images/*.jpg",
                      "--output", str(tmp_path / "out"), "--model",
                      standin_tf1, "--labels", str(LABELS_FILE)],
                     env=emulator.env())
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("ERROR")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "gs://no-such-bucket/images/*.jpg" in errors[0]
    assert not (tmp_path / "out").exists()
