"""The Dataflow job description, written offline by the CLI
(`--dataflow_job_file PATH --dry_run=True` with configs/dataflow.yaml).

Nothing may reach Google: the CLI runs with no credentials, and every proxy
variable and the metadata server point at a closed local port, so a
request would fail rather than leave the machine.
"""
from __future__ import annotations

import base64
import bz2
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import PHOTOS_DIR, PROJECT_ROOT

pytestmark = pytest.mark.slow

CONFIG = PROJECT_ROOT / "configs" / "dataflow.yaml"
INPUT = "gs://your-bucket/images/*.jpg"
OUTPUT = "gs://your-bucket/labels/run-001"
CLOSED = "http://127.0.0.1:9"


def _offline_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "NO_PROXY",
                        "no_proxy")}
    env.update(HTTPS_PROXY=CLOSED, HTTP_PROXY=CLOSED, https_proxy=CLOSED,
               http_proxy=CLOSED, GCE_METADATA_HOST="127.0.0.1:9",
               GCE_METADATA_IP="127.0.0.1:9",
               CLOUDSDK_CONFIG="/nonexistent", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _cli(*argv: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *argv],
                          cwd=cwd, env=_offline_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    job_file = tmp_path_factory.mktemp("dataflow") / "job.json"
    run = _cli("--config", str(CONFIG), "--input", INPUT, "--output", OUTPUT,
               "--dataflow_job_file", str(job_file), "--dry_run=True")
    assert run.returncode == 0, run.stderr[-3000:]
    return {"run": run, "job_file": job_file,
            "description": json.loads(job_file.read_text()),
            "staged": job_file.with_name(job_file.name + ".staged")}


def test_job_description_has_the_configs_worker_pool(described):
    config = yaml.safe_load(CONFIG.read_text())
    description = described["description"]
    environment = description["environment"]
    (pool,) = environment["workerPools"]
    assert description["type"] == "JOB_TYPE_BATCH"
    assert pool["machineType"] == config["machine_type"]
    assert pool["autoscalingSettings"]["maxNumWorkers"] == \
        config["max_num_workers"]
    assert pool["diskSizeGb"] == config["disk_size_gb"]
    assert environment["serviceAccountEmail"] == \
        config["service_account_email"]
    assert environment["tempStoragePrefix"].startswith(
        "storage.googleapis.com/your-bucket/tmp/")
    assert "use_runner_v2" in environment["experiments"]
    # One SDK process per vCPU: the job sizes its threads for that.
    assert "use_multiple_sdk_containers" in environment["experiments"]
    options = environment["sdkPipelineOptions"]["options"]
    assert options["project"] == config["project"]
    assert options["region"] == config["region"]
    assert options["setup_file"] == config["setup_file"]
    (image,) = pool["sdkHarnessContainerImages"]
    assert image["containerImage"].endswith(
        f"/beam_python{sys.version_info.major}.{sys.version_info.minor}"
        "_sdk:2.77.0")


def test_job_description_names_the_jobs_transforms(described):
    transforms = {t["name"]: t.get("kind") for t in described["description"]
                  ["pipelineDescription"]["originalPipelineTransform"]}
    for name in ("InputUris", "ChunkUris", "LabelChunks", "FinishOutput"):
        assert name in transforms, sorted(transforms)
    assert transforms["LabelChunks/LabelChunk"] == "PAR_DO_KIND"
    assert any(kind == "GROUP_BY_KEY_KIND" and name.startswith("ChunkUris/")
               for name, kind in transforms.items())


def _pickled_dofns(proto) -> dict:
    """Step name → its DoFn's pickled bytes (Beam stores them compressed
    and base64-encoded)."""
    from apache_beam.portability.api import beam_runner_api_pb2  # pylint: disable=import-outside-toplevel
    found = {}
    for transform in proto.components.transforms.values():
        if transform.spec.urn != "beam:transform:pardo:v1":
            continue
        payload = base64.b64decode(beam_runner_api_pb2.ParDoPayload
                                   .FromString(transform.spec.payload)
                                   .do_fn.payload)
        try:
            found[transform.unique_name] = bz2.decompress(payload)
        except OSError:
            found[transform.unique_name] = zlib.decompress(payload)
    return found


def test_staged_files_are_written_locally_under_gcs_names(described):
    from apache_beam.portability.api import beam_runner_api_pb2  # pylint: disable=import-outside-toplevel
    staged = described["staged"]
    names = {p.name for p in staged.iterdir()}
    assert {"workflow.tar.gz", "pipeline.pb", "pickled_main_session"} <= names
    (pool,) = described["description"]["environment"]["workerPools"]
    for package in pool["packages"]:
        assert package["name"] in names
        assert package["location"].startswith(
            "storage.googleapis.com/your-bucket/staging/")
    proto = beam_runner_api_pb2.Pipeline.FromString(
        (staged / "pipeline.pb").read_bytes())
    (env,) = proto.components.environments.values()
    assert env.urn == "beam:env:docker:v1"
    # The job's own options reach its steps (pickled into them).
    pickled = _pickled_dofns(proto)
    assert OUTPUT.encode() in pickled["LabelChunks/LabelChunk"]
    assert OUTPUT.encode() in pickled["FinishOutput/Finish"]
    assert any(INPUT.encode() in fn for name, fn in pickled.items()
               if name.startswith("InputUris/"))
    assert "Starting GCS upload" not in described["run"].stderr


def test_dry_run_without_a_job_file_is_refused_in_one_line():
    run = _cli("--config", str(CONFIG), "--input", INPUT, "--output", OUTPUT,
               "--dry_run=True")
    assert run.returncode == 2
    lines = [l for l in run.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "--dataflow_job_file" in lines[0], run.stderr


def test_dry_run_on_the_local_runner_is_refused(tmp_path):
    output = tmp_path / "out"
    run = _cli("--input", str(PHOTOS_DIR / "*.JPEG"), "--output", str(output),
               "--dry_run=True")
    assert run.returncode == 2, run.stderr[-2000:]
    assert "DataflowRunner" in run.stderr
    assert not output.exists()
