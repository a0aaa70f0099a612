"""The job on flaky object storage: a fault-injecting proxy (tests/
fault_proxy.py) between the pipeline and the GCS emulator.

Three CLI runs over the same 150 photos and stand-in module in the emulator,
run concurrently (each mostly waits on retry back-off or TF start-up):

  clean   straight to the emulator                       -> out-clean
  flaky   20% of requests fail (503, 429, connection reset before and after
          forwarding), plus every 2nd upload and batch request, so Beam's
          Parquet writes and finalize see faults too    -> out-flaky
  broken  every GET of one photo fails (503), for good    -> out-broken

Every request of a run goes through its proxy: the launch checks (input
glob, output probe, model copy into a fresh --model_cache_dir), the reads,
the model loads of the workers, the Parquet writes and their finalize.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import io
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from tests.conftest import LABELS_FILE, PHOTOS_DIR, run_cli
from tests.fault_proxy import FaultProxy
from tests.gcs_emulator import GcsEmulator

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

BUCKET = "flaky"
FAULT_RATE = 0.2
FAULT_MODES = ("503", "429", "reset", "reset_after")
UNREADABLE = "n01514668_cock.JPEG"
# The GCS client retries one call for up to 120 s; the read step must not
# multiply that by its own retries (6 attempts would be ~12 minutes).
BROKEN_RUN_LIMIT_S = 300


def upload_tree(emu: GcsEmulator, local_dir: str, prefix: str) -> int:
    bucket = emu.client().bucket(BUCKET)
    count = 0
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
            bucket.blob(f"{prefix}/{relative}").upload_from_filename(path)
            count += 1
    return count


def read_gcs_rows(emu: GcsEmulator, directory: str, kind: str
                  ) -> Dict[str, dict]:
    """Rows of <directory>/<kind>-*.parquet in the bucket, by uri."""
    bucket = emu.client().bucket(BUCKET)
    tables = [pq.read_table(io.BytesIO(blob.download_as_bytes()))
              for blob in bucket.list_blobs(prefix=f"{directory}/{kind}-")
              if blob.name.endswith(".parquet")]
    assert tables, f"no {kind}-*.parquet under gs://{BUCKET}/{directory}"
    rows = pa.concat_tables(tables).to_pylist()
    by_uri = {row["uri"]: row for row in rows}
    assert len(by_uri) == len(rows), f"duplicate uris in {directory}/{kind}"
    return by_uri


@dataclass
class Run:
    name: str
    output: str
    returncode: int
    stderr: str
    seconds: float
    cache_dir: str
    stats: Dict[str, int]


@pytest.fixture(scope="module")
def emulator():
    with GcsEmulator() as emu:
        emu.create_bucket(BUCKET)
        yield emu


@pytest.fixture(scope="module")
def storage(emulator, standin_tf1):
    emu = emulator
    photos = emu.upload_dir(str(PHOTOS_DIR), BUCKET, "photos", "*.JPEG")
    assert len(photos) == 150
    assert f"gs://{BUCKET}/photos/{UNREADABLE}" in photos
    assert upload_tree(emu, standin_tf1, "module") >= 3
    return emu, photos


@pytest.fixture(scope="module")
def runs(storage, tmp_path_factory) -> Dict[str, Run]:
    emu, _ = storage
    flaky = FaultProxy(emu.endpoint, fault_rate=FAULT_RATE, seed=20251126,
                       modes=FAULT_MODES,
                       fail_every={"upload": 2, "batch": 2}).start()
    broken = FaultProxy(emu.endpoint, always_fail=[
        ("GET", f"photos/{UNREADABLE}")], always_fail_mode="503").start()
    proxies = {"clean": None, "flaky": flaky, "broken": broken}

    def job(name: str) -> Run:
        proxy = proxies[name]
        env = proxy.env(emu.env()) if proxy else emu.env()
        cache = str(tmp_path_factory.mktemp(f"module-cache-{name}"))
        output = f"out-{name}"
        started = time.monotonic()
        result = run_cli([
            "--input", f"gs://{BUCKET}/photos/*.JPEG",
            "--output", f"gs://{BUCKET}/{output}",
            "--model", f"gs://{BUCKET}/module",
            "--model_cache_dir", cache,
            "--labels", str(LABELS_FILE),
            "--direct_running_mode", "in_memory"], env=env, timeout=600)
        return Run(name, output, result.returncode, result.stderr,
                   time.monotonic() - started, cache,
                   proxy.stats() if proxy else {})

    try:
        with concurrent.futures.ThreadPoolExecutor(len(proxies)) as pool:
            futures = {name: pool.submit(job, name) for name in proxies}
            results = {name: f.result() for name, f in futures.items()}
    finally:
        flaky.stop()
        broken.stop()
    return results


def _summary(runs: Dict[str, Run]) -> str:
    lines = []
    for run in runs.values():
        stats = run.stats
        faults = {k[len("faults."):]: v for k, v in sorted(stats.items())
                  if k.startswith("faults.")}
        lines.append(
            f"{run.name:6s} rc={run.returncode} {run.seconds:5.1f} s"
            + (f", {stats.get('requests', 0)} requests, "
               f"{stats.get('faults', 0)} faults {faults}" if stats else ""))
    return "\n".join(lines)


def _assert_ok(run: Run) -> None:
    assert run.returncode == 0, (
        f"{run.name} run failed (rc={run.returncode}):\n{run.stderr[-6000:]}")


def _cached_module_files(run: Run) -> List[str]:
    return [name for _, _, files in os.walk(run.cache_dir) for name in files]


def test_clean_run_labels_every_photo(storage, runs):
    emu, photos = storage
    run = runs["clean"]
    _assert_ok(run)
    labels = read_gcs_rows(emu, run.output, "labels")
    assert sorted(labels) == sorted(photos)
    assert read_gcs_rows(emu, run.output, "errors") == {}
    assert "saved_model.pb" in _cached_module_files(run)


def test_flaky_run_gives_the_clean_runs_rows(storage, runs, capsys):
    with capsys.disabled():
        print("\n" + _summary(runs))
    emu, _ = storage
    _assert_ok(runs["clean"])
    run = runs["flaky"]
    _assert_ok(run)
    clean = read_gcs_rows(emu, runs["clean"].output, "labels")
    flaky = read_gcs_rows(emu, run.output, "labels")
    assert read_gcs_rows(emu, run.output, "errors") == {}
    assert sorted(flaky) == sorted(clean)
    for uri, row in flaky.items():
        _assert_same_labels(row, clean[uri])
    # The module copy went through the faulty proxy, into a fresh cache.
    assert "saved_model.pb" in _cached_module_files(run)
    # Only finished outputs are left: committed files, their commit
    # records, the manifest and the staged model; no temporary files.
    names = emu.list(BUCKET, f"{run.output}/")
    assert names and all(
        n.endswith((".parquet", "/_SUCCESS.json")) or "/_attempts/" in n or
        "/_model/" in n for n in names), names
    assert not any("_incomplete" in n for n in names), names


# Batches form by timing, and TF's CPU kernels round differently for a
# batch of one (measured: logits differ by up to 8e-6 against the same image
# in a batch of 64; batches of 7-63 are bit-identical). Scores and
# embeddings are compared that closely, labels exactly.
SCORE_TOLERANCE = 1e-5


def _assert_same_labels(row: dict, expected: dict) -> None:
    uri = row["uri"]
    assert row["label"] == expected["label"], uri
    assert row["top_k_indices"] == expected["top_k_indices"], uri
    np.testing.assert_allclose(row["top_k_scores"], expected["top_k_scores"],
                               rtol=0, atol=SCORE_TOLERANCE, err_msg=uri)
    np.testing.assert_allclose(row["embedding"], expected["embedding"],
                               rtol=0, atol=SCORE_TOLERANCE, err_msg=uri)


def test_faults_were_injected_everywhere(runs):
    stats = runs["flaky"].stats
    requests, faults = stats["requests"], stats["faults"]
    assert requests >= 300, stats  # 150 photos: metadata + media each
    # ~20% at random, plus every 2nd upload and batch request.
    assert 0.14 * requests <= faults <= 0.30 * requests, stats
    for mode in FAULT_MODES:
        assert stats.get(f"faults.{mode}", 0) > 0, stats
    for kind in ("json", "download", "upload", "batch"):
        assert stats.get(f"requests.{kind}", 0) > 0, stats
        assert stats.get(f"faults.{kind}", 0) > 0, stats
    assert stats.get("forwarded", 0) > 0
    assert stats.get("handler_errors", 0) == 0, stats  # no proxy bugs


def test_unreadable_object_becomes_a_read_error(storage, runs):
    emu, photos = storage
    run = runs["broken"]
    _assert_ok(run)
    assert run.stats.get("always_failed", 0) >= 2, run.stats  # retried
    assert run.seconds < BROKEN_RUN_LIMIT_S, (
        f"{run.seconds:.0f} s: the read step retried the storage client's "
        "own retries")
    errors = read_gcs_rows(emu, run.output, "errors")
    unreadable = f"gs://{BUCKET}/photos/{UNREADABLE}"
    assert list(errors) == [unreadable], errors
    error = errors[unreadable]
    assert error["stage"] == "read", error
    assert error["error_type"] and error["message"], error
    assert "503" in error["message"], error
    labels = read_gcs_rows(emu, run.output, "labels")
    assert sorted(labels) == sorted(set(photos) - {unreadable})
    clean = read_gcs_rows(emu, runs["clean"].output, "labels")
    for uri, row in labels.items():
        _assert_same_labels(row, clean[uri])


# --- the proxy itself ---------------------------------------------------------

def _raw(endpoint: str, method: str, path: str, body=None, headers=None,
         chunked: bool = False):
    """One request on a fresh connection: (status, body) or the exception."""
    parsed = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port,
                                      timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {},
                     encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return exc
    finally:
        conn.close()


def test_proxy_forwards_intact_and_fails_as_told(emulator):
    emu = emulator
    bucket = emu.client().bucket(BUCKET)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    upload = (f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=")
    with FaultProxy(emu.endpoint) as proxy:
        client = gcs.Client(
            project=emu.project, credentials=AnonymousCredentials(),
            client_options={"api_endpoint": proxy.endpoint})
        # Resumable upload in 256 KiB chunks, as Beam's BlobWriter does
        # (308 answers; a session URL that must point back at the proxy),
        # then download, through the proxy.
        with client.bucket(BUCKET).blob("proxy/resumable").open(
                "wb", chunk_size=256 * 1024) as writer:
            for start in range(0, len(payload), 100_000):
                writer.write(payload[start:start + 100_000])
        assert bucket.blob("proxy/resumable").download_as_bytes() == payload
        assert client.bucket(BUCKET).blob("proxy/resumable") \
            .download_as_bytes() == payload
        reloaded = client.bucket(BUCKET).get_blob("proxy/resumable")
        assert reloaded.media_link.startswith(proxy.endpoint)
        # A chunked (streamed) request body arrives whole.
        chunks = (payload[i:i + 65536] for i in range(0, 1 << 20, 65536))
        status, _ = _raw(proxy.endpoint, "POST", upload + "proxy/chunked",
                         body=chunks, chunked=True,
                         headers={"Content-Type": "application/octet-stream"})
        assert status == 200
        assert bucket.blob("proxy/chunked").download_as_bytes() == \
            payload[:1 << 20]
        stats = proxy.stats()
        assert stats["requests"] == stats["forwarded"], stats
        assert stats["requests.upload"] >= 14, stats  # 13 chunks + start
        assert stats.get("faults", 0) == 0

    for mode in ("503", "429", "reset", "reset_after"):
        name = f"proxy/victim-{mode}"
        bucket.blob(name).upload_from_string(b"x")
        with FaultProxy(emu.endpoint, fault_rate=1.0, modes=[mode]) as proxy:
            outcome = _raw(proxy.endpoint, "DELETE",
                           f"/storage/v1/b/{BUCKET}/o/" +
                           urllib.parse.quote(name, safe=""))
            # An upload is never reset after forwarding (see fault_proxy).
            upload_outcome = _raw(proxy.endpoint, "POST",
                                  upload + f"proxy/new-{mode}", b"x")
            stats = proxy.stats()
        assert stats["faults"] == 2, stats
        if mode in ("503", "429"):
            assert outcome[0] == upload_outcome[0] == int(mode), outcome
        else:
            for result in (outcome, upload_outcome):
                assert isinstance(result, (
                    ConnectionError, http.client.RemoteDisconnected)), result
        # Only reset_after let the DELETE through to the emulator.
        assert bucket.blob(name).exists() == (mode != "reset_after"), mode
        assert not bucket.blob(f"proxy/new-{mode}").exists(), mode

    rule = [("GET", "proxy/resumable")]
    with FaultProxy(emu.endpoint, always_fail=rule) as proxy:
        path = f"/storage/v1/b/{BUCKET}/o/proxy%2Fresumable"
        assert _raw(proxy.endpoint, "GET", path)[0] == 503
        assert _raw(proxy.endpoint, "GET", path + "x")[0] == 503  # substring
        assert _raw(proxy.endpoint, "GET",
                    f"/storage/v1/b/{BUCKET}/o/proxy%2Fchunked")[0] == 200
        assert proxy.stats()["always_failed"] == 2
