"""Untrusted input and secrets: manifests can only point where the job was
configured to read, nothing is run through a shell, credentials in URLs
never reach logs or Parquet, size limits hold, bad modules fail at launch."""
from __future__ import annotations

import functools
import http.server
import threading

import pytest

from tests.conftest import (LABELS_FILE, PHOTOS_DIR, photo_paths,
                            read_parquet_dir, run_cli)
from transforms.errors import redact

SECRET = "SeCrEtToKeN123"


@pytest.fixture
def label_server():
    """The label file over HTTP on 127.0.0.1, as a signed URL would be."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(LABELS_FILE.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_redact_removes_tokens_and_passwords():
    text = ("GET https://u:pw@storage.googleapis.com/b/o?X-Goog-Signature="
            "abc&X-Goog-Credential=me failed; see gs://bucket/a.jpg")
    cleaned = redact(text)
    assert "pw" not in cleaned and "abc" not in cleaned and "me " not in \
        cleaned
    assert "storage.googleapis.com/b/o" in cleaned
    assert "gs://bucket/a.jpg" in cleaned


@pytest.mark.slow
def test_signed_url_secrets_stay_out_of_logs_and_parquet(
        standin_tf1, label_server, tmp_path):
    labels_url = (f"{label_server}/{LABELS_FILE.name}?X-Goog-Signature="
                  f"{SECRET}")
    manifest = tmp_path / "inputs.txt"
    manifest.write_text("\n".join(photo_paths()[:3]) + "\n")
    output = tmp_path / "out"
    result = run_cli(["--input_manifest", str(manifest), "--output",
                      str(output), "--model", standin_tf1, "--labels",
                      labels_url, "--direct_running_mode", "in_memory",
                      "--verbose"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stderr and SECRET not in result.stdout
    for path in output.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq
                data = str(pq.read_table(path).to_pylist()).encode()
            assert SECRET.encode() not in data, path


@pytest.mark.slow
def test_manifest_cannot_reach_other_filesystems(standin_tf1, tmp_path):
    manifest = tmp_path / "inputs.csv"
    pwned = tmp_path / "pwned"
    manifest.write_text("\n".join([
        photo_paths()[0],
        "gs://someone-elses-bucket/secret.jpg",
        f"$(touch {pwned})",
        f"; touch {pwned}",
    ]) + "\n")
    output = tmp_path / "out"
    result = run_cli(["--input_manifest", str(manifest), "--output",
                      str(output), "--model", standin_tf1, "--labels",
                      str(LABELS_FILE), "--direct_running_mode", "in_memory"])
    assert result.returncode == 0, result.stderr[-3000:]
    errors = {r["uri"]: r for r in
              read_parquet_dir(str(output), "errors").to_pylist()}
    assert errors["gs://someone-elses-bucket/secret.jpg"]["error_type"] == \
        "UriNotAllowed"
    assert errors["gs://someone-elses-bucket/secret.jpg"]["stage"] == "read"
    assert not pwned.exists()  # URIs are never given to a shell
    assert len(errors) == 3
    assert read_parquet_dir(str(output), "labels").num_rows == 1


@pytest.mark.slow
def test_file_size_limit_is_enforced_before_reading(standin_tf1, tmp_path):
    output = tmp_path / "out"
    result = run_cli(["--input", str(PHOTOS_DIR / "n01[45]*.JPEG"), "--output",
                      str(output), "--model", standin_tf1, "--labels",
                      str(LABELS_FILE), "--max_file_bytes", "110000",
                      "--direct_running_mode", "in_memory"])
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = {str(p): p.stat().st_size for p in PHOTOS_DIR.glob("n01[45]*.JPEG")}
    errors = {r["uri"]: r for r in
              read_parquet_dir(str(output), "errors").to_pylist()}
    labels = read_parquet_dir(str(output), "labels").column("uri").to_pylist()
    for uri, size in sizes.items():
        if size > 110000:
            assert errors[uri]["error_type"] == "FileTooLarge"
            assert errors[uri]["stage"] == "read"
        else:
            assert uri in labels
    assert any(size > 110000 for size in sizes.values()) and \
        any(size <= 110000 for size in sizes.values())


@pytest.mark.slow
def test_wrong_shaped_module_fails_at_launch(standin_dirs, tmp_path):
    """A feature-vector module given as the classifier: 1280 outputs, not
    1001 classes."""
    result = run_cli(["--input", str(PHOTOS_DIR / "*.JPEG"), "--output",
                      str(tmp_path / "out"), "--model",
                      standin_dirs["tf2-feature-vector"], "--labels",
                      str(LABELS_FILE)])
    assert result.returncode == 2
    assert "1001 lines" in result.stderr and "1280 classes" in result.stderr
    assert not list((tmp_path / "out").glob("labels-*"))
