"""`setup.py` as a Dataflow `--setup_file`, proved through Beam's portable
path; the Dataflow configs; the Dataflow job description built offline.

Portable runner (the core): the package is built exactly as Beam's stager
builds it for `--setup_file` (an sdist), installed with its dependencies from
the package index into a separate, cached virtualenv (tests/portable_env.py),
and Beam's job service and external worker pool run from that virtualenv
with a working directory outside the project. The CLI, launched from the
project as a user would, submits the 150 photos with `--runner
PortableRunner --environment_type EXTERNAL --setup_file ...`. Each SDK worker
is started through tests/portable_boot.py, a small stand-in for the SDK
container's boot program, which records evidence: which interpreter and
which `transforms/classify.py` the worker ran, and what was staged.

Three runs, each must give the DirectRunner's rows:
  * installed: the package is pre-installed in the workers' environment
    (like a custom container);
  * staged: every worker pip-installs the `workflow.tar.gz` that Beam staged
    from `--setup_file` (what Dataflow's boot does) and imports it from
    there;
  * plain: Beam's worker pool without a boot program (how the docs' EXTERNAL
    recipe for Flink/Spark runs it); staged files are ignored there.

Beam's Python job service starts one SDK worker per environment (it ignores
--direct_num_workers), so each run has one worker process.

The first run builds the virtualenv (minutes; downloads TensorFlow etc.);
later runs reuse it (see tests/portable_env.py).
"""
from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from tests import portable_env
from tests.conftest import (LABELS_FILE, PHOTOS_DIR, PROJECT_ROOT,
                            photo_paths, read_parquet_dir, run_cli)

pytestmark = [pytest.mark.timeout(3600), pytest.mark.slow]

CONFIGS = PROJECT_ROOT / "configs"
TOLERANCE = 1e-5


def _summary_value(stderr: str, name: str) -> int:
    match = re.search(rf"{name}\s+(\d+)", stderr)
    assert match, f"no '{name}' in summary:\n{stderr[-3000:]}"
    return int(match.group(1))


def _rows_by_uri(output: str) -> Dict[str, dict]:
    rows = read_parquet_dir(output, "labels").to_pylist()
    by_uri = {row["uri"]: row for row in rows}
    assert len(by_uri) == len(rows), "duplicate uris in labels output"
    return by_uri


def _assert_same_rows(expected: Dict[str, dict], actual: Dict[str, dict]):
    assert sorted(actual) == sorted(expected)
    for uri, want in expected.items():
        got = actual[uri]
        assert got["label"] == want["label"], uri
        assert list(got["top_k_indices"]) == list(want["top_k_indices"]), uri
        assert list(got["top_k_labels"]) == list(want["top_k_labels"]), uri
        np.testing.assert_allclose(got["top_k_scores"], want["top_k_scores"],
                                   atol=TOLERANCE, err_msg=uri)
        np.testing.assert_allclose(got["score"], want["score"],
                                   atol=TOLERANCE, err_msg=uri)
        assert (got["embedding"] is None) == (want["embedding"] is None), uri
        if want["embedding"] is not None:
            np.testing.assert_allclose(got["embedding"], want["embedding"],
                                       atol=TOLERANCE, err_msg=uri)
        for column in ("width", "height", "format", "model"):
            assert got[column] == want[column], (uri, column)


def _log_tails(paths: List[Path], chars: int = 2500) -> str:
    parts = []
    for path in paths:
        if path.exists():
            text = path.read_text(errors="replace")
            parts.append(f"----- {path} (last {chars} chars) -----\n"
                         f"{text[-chars:]}")
    return "\n".join(parts)


# --- the package and the cached virtualenv ------------------------------

@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The project copied out of the work tree and its sdist, built as
    Beam's stager builds `--setup_file`."""
    root = tmp_path_factory.mktemp("package")
    tree = portable_env.copy_project(root / "src")
    sdist = portable_env.build_sdist(tree / "setup.py", root / "dist")
    return {"tree": tree, "setup_file": tree / "setup.py", "sdist": sdist,
            "facts": portable_env.sdist_facts(sdist)}


@pytest.fixture(scope="module")
def worker_venv(package):
    started = time.time()
    with portable_env.cached_venv(package["sdist"]) as venv:
        state = ("built" if venv.built_s is not None else "cached") + \
            (", package reinstalled" if venv.reinstalled_s else "")
        sys.stderr.write(f"\n[portable] venv {venv.path}: {state} in "
                         f"{time.time() - started:.0f} s\n")
        yield venv


def test_sdist_ships_the_packages_and_declares_the_dependencies(package):
    modules = package["facts"]["modules"]
    for module in ("pipeline/__init__.py", "pipeline/cli.py",
                   "pipeline/job.py", "pipeline/options.py",
                   "transforms/__init__.py", "transforms/classify.py",
                   "transforms/label_chunks.py", "transforms/imaging/decode.py",
                   "transforms/backends/xnnpack.py"):
        assert module in modules, modules
    source_modules = sorted(
        str(Path(p).relative_to(PROJECT_ROOT)) for pkg in ("pipeline",
                                                           "transforms")
        for p in glob.glob(str(PROJECT_ROOT / pkg / "**" / "*.py"),
                           recursive=True))
    assert sorted(m for m in modules if m.startswith(
        ("pipeline/", "transforms/"))) == source_modules
    requires = package["facts"]["requires"]
    for name in ("apache-beam[gcp]", "tensorflow", "tensorflow-hub",
                 "tf-keras", "pyarrow", "pillow", "simplejpeg", "pyyaml"):
        assert re.search(rf"^{re.escape(name)}(?![\w.\[-])", requires, re.M), \
            (name, requires)


def test_venv_imports_the_installed_package_not_the_source_tree(
        worker_venv, tmp_path):
    code = ("import json, sys, pipeline, transforms, transforms.label_chunks, "
            "simplejpeg, tensorflow_hub, apache_beam; print(json.dumps("
            "{'pipeline': pipeline.__file__, 'transforms': transforms.__file__,"
            " 'prefix': sys.prefix, 'beam': apache_beam.__version__}))")
    result = subprocess.run([str(worker_venv.python), "-c", code],
                            capture_output=True, text=True, cwd=tmp_path,
                            env=worker_venv.env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    site = str(worker_venv.path)
    assert found["prefix"] == site
    for name in ("pipeline", "transforms"):
        assert found[name].startswith(site + "/lib/"), found
        assert "site-packages" in found[name], found
        assert not found[name].startswith(str(PROJECT_ROOT)), found
    assert found["beam"].startswith("2.77."), found
    check = subprocess.run([str(worker_venv.python), "-m", "pip", "check"],
                           capture_output=True, text=True, cwd=tmp_path,
                           env=worker_venv.env(), timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr


# --- the runs ------------------------------------------------------------

@pytest.fixture(scope="module")
def direct_rows(tmp_path_factory, standin_tf1):
    """The reference: the same job on the CLI's default DirectRunner."""
    output = tmp_path_factory.mktemp("direct") / "out"
    result = run_cli([
        "--input", str(PHOTOS_DIR / "*.JPEG"), "--output", str(output),
        "--model", standin_tf1, "--labels", str(LABELS_FILE)])
    assert result.returncode == 0, result.stderr[-4000:]
    rows = _rows_by_uri(str(output))
    assert len(rows) == len(photo_paths()) == 150
    return rows


@pytest.fixture(scope="module")
def job_service(worker_venv, tmp_path_factory):
    """Beam's Python job service, from the test venv, outside the project."""
    root = tmp_path_factory.mktemp("job-service")
    port_file = root / "port"
    service = portable_env.Service(
        "job service",
        portable_env.job_service_command(worker_venv.python) + [
            "--port", "0", "--port_file", port_file,
            "--staging_dir", root / "staging"],
        root / "job-service.log", cwd=root, env=worker_venv.env())
    try:
        deadline = time.time() + 120
        while not port_file.exists():
            if service.proc.poll() is not None or time.time() > deadline:
                raise portable_env.EnvError(
                    "job service did not start:\n" + service.log_text()[-3000:])
            time.sleep(0.2)
        yield {"endpoint": f"localhost:{port_file.read_text().strip()}",
               "service": service, "staging_dir": root / "staging"}
    finally:
        service.stop()


def _portable_run(worker_venv, job_service, package, standin, root: Path,
                  install_staged: bool, boot_script: bool = True) -> dict:
    """One CLI run on the portable runner with a fresh worker pool; its SDK
    workers start through tests/portable_boot.py unless not `boot_script`
    (then the pool starts them itself, as `python -c ...SdkHarness`)."""
    boot_dir = root / "workers"
    boot_dir.mkdir()
    boot = root / "boot.sh"
    boot.write_text("#!/bin/sh\n"
                    f'exec "{worker_venv.python}" -I '
                    f'"{portable_env.BOOT_SCRIPT}" "$@"\n')
    boot.chmod(0o755)
    env = worker_venv.env()
    env["LABELER_BOOT_DIR"] = str(boot_dir)
    env["LABELER_BOOT_INSTALL"] = "1" if install_staged else "0"
    pool_cwd = root / "pool-cwd"
    pool_cwd.mkdir()
    for attempt in range(3):
        port = portable_env.free_port()
        pool = portable_env.Service(
            "worker pool",
            [worker_venv.python, "-m",
             "apache_beam.runners.worker.worker_pool_main",
             "--service_port", str(port)] +
            (["--container_executable", boot] if boot_script else []),
            root / f"worker-pool-{attempt}.log", cwd=pool_cwd, env=env)
        if portable_env.wait_for_port(pool, port, timeout=120):
            break
        pool.stop()
    else:
        raise portable_env.EnvError("worker pool did not start:\n" +
                                    pool.log_text()[-3000:])
    output = root / "out"
    try:
        pool_endpoint = f"localhost:{port}"
        started = time.time()
        argv = [
            "--input", str(PHOTOS_DIR / "*.JPEG"), "--output", str(output),
            "--model", standin, "--labels", str(LABELS_FILE),
            "--runner", "PortableRunner",
            "--job_endpoint", job_service["endpoint"],
            "--environment_type", "EXTERNAL",
            "--environment_config", pool_endpoint,
            "--setup_file", str(package["setup_file"]),
            # Dataflow's default with cloudpickle (Beam only defaults it on
            # for service runners): the workers load the CLI's __main__.
            "--save_main_session"]
        try:
            result = run_cli(argv, timeout=900)
        except subprocess.TimeoutExpired as exc:
            logs = [pool.log_path, job_service["service"].log_path] + sorted(
                boot_dir.glob("worker-*/worker.log"))
            raise AssertionError(f"portable run timed out\n{exc.stderr}\n"
                                 + _log_tails(logs)) from exc
        wall = time.time() - started
    finally:
        pool.stop()
    workers = []
    for boot_json in sorted(boot_dir.glob("worker-*/boot.json")):
        record = json.loads(boot_json.read_text())
        record["log"] = (boot_json.parent / "worker.log").read_text(
            errors="replace")
        workers.append(record)
    logs = [pool.log_path, job_service["service"].log_path] + sorted(
        boot_dir.glob("worker-*/worker.log"))
    diagnostics = (f"CLI exit {result.returncode}\n--- CLI stderr ---\n"
                   f"{result.stderr[-4000:]}\n" + _log_tails(logs))
    return {"result": result, "output": str(output), "workers": workers,
            "wall_s": wall, "diagnostics": diagnostics, "pool_env": env,
            "pool_log": pool.log_text()}


@pytest.fixture(scope="module")
def installed_run(worker_venv, job_service, package, standin_tf1,
                  tmp_path_factory):
    return _portable_run(worker_venv, job_service, package, standin_tf1,
                         tmp_path_factory.mktemp("portable-installed"),
                         install_staged=False)


@pytest.fixture(scope="module")
def staged_run(worker_venv, job_service, package, standin_tf1,
               tmp_path_factory):
    return _portable_run(worker_venv, job_service, package, standin_tf1,
                         tmp_path_factory.mktemp("portable-staged"),
                         install_staged=True)


@pytest.fixture(scope="module")
def plain_pool_run(worker_venv, job_service, package, standin_tf1,
                   tmp_path_factory):
    return _portable_run(worker_venv, job_service, package, standin_tf1,
                         tmp_path_factory.mktemp("portable-plain"),
                         install_staged=False, boot_script=False)


# Worker log records (tests/portable_boot.py's format: pid level file:line).
_LOAD_LINE = re.compile(
    r"^(\d+) INFO (\S+):\d+ model \S+ loaded in process ", re.M)
_OUR_CODE_LINE = re.compile(
    r"^\d+ \w+ (\S+/(?:transforms|pipeline)/\w+\.py):\d+ ", re.M)


def _check_workers(run: dict, worker_venv, expected_prefix):
    """Evidence from the worker processes themselves; `expected_prefix(worker)`
    is where that worker's transforms/classify.py must come from."""
    info = run["diagnostics"]
    workers = run["workers"]
    assert workers, "no worker was started through the boot script\n" + info
    loads_per_process: Dict[int, int] = {}
    for worker in workers:
        # The interpreter is the test venv's, started outside the project.
        assert worker["prefix"] == str(worker_venv.path), worker
        assert not worker["cwd"].startswith(str(PROJECT_ROOT)), worker
        assert not any(p.startswith(str(PROJECT_ROOT)) or p in ("", ".")
                       for p in worker["sys_path"]), worker["sys_path"]
        loads = _LOAD_LINE.findall(worker["log"])
        for pid, path in loads:
            # The model's load, logged by transforms/classify.py as the
            # worker ran it: the installed copy.
            assert int(pid) == worker["pid"], (pid, worker["pid"])
            assert path.startswith(expected_prefix(worker)), path
            assert path.endswith("/transforms/classify.py"), path
        loads_per_process[worker["pid"]] = len(loads)
        # Every record our code logged came from the expected copy.
        ours = [path for path in _OUR_CODE_LINE.findall(worker["log"])
                if "/apache_beam/" not in path]  # Beam has a transforms/ too
        for path in ours:
            assert path.startswith(expected_prefix(worker)), path
        assert str(PROJECT_ROOT) + "/transforms" not in worker["log"]
        assert str(PROJECT_ROOT) + "/pipeline" not in worker["log"]
    # Loaded once per worker process that classified, never more.
    assert all(n <= 1 for n in loads_per_process.values()), loads_per_process
    total = sum(loads_per_process.values())
    assert total >= 1, info
    assert _summary_value(run["result"].stderr, "module loads") == total, info
    return loads_per_process


def _check_staged_package(run: dict, package):
    """The staged `workflow.tar.gz` reached every worker and is the sdist
    built from setup.py (same files, same bytes)."""
    for worker in run["workers"]:
        names = [a["name"] for a in worker["artifacts"]]
        assert "pickled_main_session" in names, names
        workflow = [a for a in worker["artifacts"]
                    if a["name"].endswith("workflow.tar.gz")]
        assert len(workflow) == 1, names
        facts = portable_env.sdist_facts(Path(workflow[0]["path"]))
        assert facts["sha256"] == package["facts"]["sha256"], \
            (facts["modules"], package["facts"]["modules"])


def test_portable_runner_with_installed_package_matches_direct_runner(
        installed_run, direct_rows, worker_venv, package):
    run = installed_run
    assert run["result"].returncode == 0, run["diagnostics"]
    stderr = run["result"].stderr
    assert _summary_value(stderr, "inputs") == 150
    assert _summary_value(stderr, "labeled") == 150
    assert _summary_value(stderr, "errors") == 0
    _assert_same_rows(direct_rows, _rows_by_uri(run["output"]))
    site_packages = glob.glob(str(worker_venv.path / "lib" / "python3*" /
                                  "site-packages"))
    assert len(site_packages) == 1
    loads = _check_workers(run, worker_venv, lambda _: site_packages[0] + "/")
    _check_staged_package(run, package)
    sys.stderr.write(f"\n[portable] installed: {len(run['workers'])} worker "
                     f"processes, module loads per pid {loads}, CLI wall "
                     f"{run['wall_s']:.0f} s\n")


def test_portable_runner_installing_the_staged_setup_file_matches_direct(
        staged_run, direct_rows, worker_venv, package):
    run = staged_run
    assert run["result"].returncode == 0, run["diagnostics"]
    assert _summary_value(run["result"].stderr, "labeled") == 150
    _assert_same_rows(direct_rows, _rows_by_uri(run["output"]))
    for worker in run["workers"]:
        assert worker["installed_to"], worker
        assert worker["sys_path"][0] == worker["installed_to"], worker
    # Each worker imported transforms from its own install of the staged
    # package, not from the venv's copy.
    _check_workers(run, worker_venv, lambda worker: worker["installed_to"] + "/")
    _check_staged_package(run, package)
    sys.stderr.write(f"\n[portable] staged: {len(run['workers'])} worker "
                     f"processes, CLI wall {run['wall_s']:.0f} s\n")


def test_plain_worker_pool_matches_direct_runner(plain_pool_run, direct_rows,
                                                 worker_venv):
    """Beam's worker pool as documented for Flink/Spark sidecars, with no
    boot program: it starts each SDK worker as `python -c ...SdkHarness` with
    `python` from its PATH (the test venv's) and ignores staged artifacts,
    so the package must already be installed there. No per-worker evidence
    beyond the pool's log: the harness is started without Beam's logging
    setup."""
    run = plain_pool_run
    assert run["result"].returncode == 0, run["diagnostics"]
    assert not run["workers"]
    assert "Starting worker with command ['python', '-c'" in run["pool_log"]
    python = shutil.which("python", path=run["pool_env"]["PATH"])
    assert python == str(worker_venv.python), python
    _assert_same_rows(direct_rows, _rows_by_uri(run["output"]))
    assert _summary_value(run["result"].stderr, "module loads") == 1


# --- Dataflow: the configs and the job description, offline -------------

DATAFLOW_CONFIGS = ["dataflow.yaml"]
JOB_FLAGS = ["--input", "gs://your-bucket/images/*.jpg",
             "--output", "gs://your-bucket/labels/run-001"]


def _config_keys(path: Path) -> List[str]:
    import yaml  # pylint: disable=import-outside-toplevel
    return list(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("name", DATAFLOW_CONFIGS)
def test_dataflow_config_parses_and_every_key_is_commented(name):
    from apache_beam.options.pipeline_options import (  # pylint: disable=import-outside-toplevel
        DebugOptions, GoogleCloudOptions, SetupOptions, StandardOptions,
        WorkerOptions)
    from pipeline.options import DEFAULT_LABELS, parse_args  # pylint: disable=import-outside-toplevel
    path = CONFIGS / name
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"{name}: no comment on {line!r}"
    args, options = parse_args(["--config", str(path), *JOB_FLAGS])
    cloud = options.view_as(GoogleCloudOptions)
    worker = options.view_as(WorkerOptions)
    debug = options.view_as(DebugOptions)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert cloud.project == "your-project" and cloud.region == "us-central1"
    assert cloud.temp_location == "gs://your-bucket/tmp"
    assert cloud.staging_location == "gs://your-bucket/staging"
    assert cloud.service_account_email.endswith(
        "@your-project.iam.gserviceaccount.com")
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    assert worker.machine_type.startswith("n1-standard-")
    assert worker.max_num_workers >= 1 and worker.disk_size_gb >= 30
    assert "use_runner_v2" in debug.experiments
    # The job's own options, not Beam's (--labels is also a Beam alias of
    # --label, Dataflow job labels: the packaged default must not land
    # there).
    assert args.model.startswith("gs://your-bucket/models/")
    assert args.labels == DEFAULT_LABELS
    assert not cloud.labels
    assert args.input == JOB_FLAGS[1] and args.output == JOB_FLAGS[3]
    keys = _config_keys(path)
    for key in keys:  # nothing silently dropped
        assert getattr(args, key, None) is not None or \
            options.get_all_options().get(key) is not None, key
    if name == "dataflow-gpu.yaml":
        assert cloud.dataflow_service_options == [
            "worker_accelerator=type:nvidia-tesla-t4;count:1;"
            "install-nvidia-driver"]
        assert "no_use_multiple_sdk_containers" in debug.experiments
        assert debug.number_of_worker_harness_threads == 8
        assert worker.sdk_container_image.endswith("image-labeler-gpu:0.1.0")
        assert args.max_batch_size == 256
    else:
        assert not cloud.dataflow_service_options
        assert worker.sdk_container_image is None


def _offline_job_description(config: Path, package, tmp_path, monkeypatch):
    """The Dataflow job description for our pipeline, built without
    credentials or network.

    DataflowRunner with --dry_run=True builds the job (graph, options,
    worker pool) and stops before staging and submission; the rest of the
    submission path, DataflowApplicationClient.create_job_description
    (stage the package and pipeline, fill in the environment), is run here
    with the staging location swapped to a local directory. --no_auth: no
    credentials are looked up (anonymous clients, never called).
    """
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    from apache_beam.options.pipeline_options import GoogleCloudOptions  # pylint: disable=import-outside-toplevel
    from apache_beam.runners.dataflow.internal import apiclient  # pylint: disable=import-outside-toplevel
    from pipeline import job  # pylint: disable=import-outside-toplevel
    from pipeline.checks import load_labels  # pylint: disable=import-outside-toplevel
    from pipeline.options import parse_args  # pylint: disable=import-outside-toplevel
    from transforms.write import new_run_id  # pylint: disable=import-outside-toplevel

    # `setup_file: ./setup.py` is relative to where the job is launched:
    # the project copy (so build output never lands in the work tree).
    monkeypatch.chdir(package["tree"])
    args, options = parse_args(["--config", str(config), *JOB_FLAGS,
                                "--no_auth", "--dry_run=True"])
    pipeline = beam.Pipeline(options=options)  # validates the options
    from transforms import backends  # pylint: disable=import-outside-toplevel
    loader = backends.prepare(backends.REFERENCE, args.model).local
    job.build(pipeline, args, load_labels(str(LABELS_FILE)), new_run_id(),
              loader)
    result = pipeline.run()
    dataflow_job = result.job
    staging = tmp_path / "staging"
    staging.mkdir()
    dataflow_job.options.view_as(GoogleCloudOptions).staging_location = \
        str(staging)
    client = apiclient.DataflowApplicationClient(dataflow_job.options,
                                                 str(staging))
    client.create_job_description(dataflow_job)
    return json.loads(dataflow_job.json()), staging


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", DATAFLOW_CONFIGS)
def test_dataflow_job_description_builds_offline(name, package, tmp_path,
                                                 monkeypatch):
    from apache_beam.portability.api import beam_runner_api_pb2  # pylint: disable=import-outside-toplevel
    description, staging = _offline_job_description(
        CONFIGS / name, package, tmp_path, monkeypatch)
    environment = description["environment"]
    (pool,) = environment["workerPools"]
    staged = sorted(p.name for p in staging.iterdir())
    assert {"workflow.tar.gz", "pipeline.pb",
            "pickled_main_session"} <= set(staged), staged
    assert sorted(p["name"] for p in pool["packages"]) == sorted(
        s for s in staged if s != "pipeline.pb")
    # The staged package is the sdist of setup.py, byte for byte in content.
    workflow = portable_env.sdist_facts(staging / "workflow.tar.gz")
    assert workflow["sha256"] == package["facts"]["sha256"]

    options = environment["sdkPipelineOptions"]["options"]
    assert options["setup_file"] == "./setup.py"
    assert options["project"] == "your-project"
    assert options["region"] == "us-central1"
    assert options["service_account_email"].startswith("image-labeler@")
    assert options["save_main_session"] is True
    assert environment["serviceAccountEmail"] == \
        options["service_account_email"]
    assert environment["tempStoragePrefix"].startswith(
        "storage.googleapis.com/your-bucket/tmp/")
    assert pool["machineType"] == options["machine_type"]
    assert pool["autoscalingSettings"]["maxNumWorkers"] == \
        options["max_num_workers"]
    assert pool["diskSizeGb"] == options["disk_size_gb"]
    assert description["type"] == "JOB_TYPE_BATCH"
    (image,) = pool["sdkHarnessContainerImages"]
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if name == "dataflow-gpu.yaml":
        assert image["containerImage"] == options["sdk_container_image"]
        assert "no_use_multiple_sdk_containers" in environment["experiments"]
        assert "use_multiple_sdk_containers" not in environment["experiments"]
        assert pool["numThreadsPerWorker"] == 8
        assert environment["serviceOptions"] == [
            "worker_accelerator=type:nvidia-tesla-t4;count:1;"
            "install-nvidia-driver"]
    else:
        # Beam's own SDK image for the launcher's Python and Beam version.
        assert image["containerImage"].endswith(
            f"/beam_{python}_sdk:2.77.0"), image["containerImage"]
        assert "use_multiple_sdk_containers" in environment["experiments"]
    assert "use_runner_v2" in environment["experiments"]

    # The portable pipeline Dataflow runs (Runner v2): our steps, one
    # Docker environment whose artifacts are the staged files.
    proto = beam_runner_api_pb2.Pipeline.FromString(
        (staging / "pipeline.pb").read_bytes())
    names = {t.unique_name for t in proto.components.transforms.values()}
    for step in ("InputUris", "ChunkUris", "LabelChunks",
                 "LabelChunks/LabelChunk", "FinishOutput"):
        assert step in names, sorted(names)[:50]
    (env,) = proto.components.environments.values()
    assert env.urn == "beam:env:docker:v1"
    payload = beam_runner_api_pb2.DockerPayload.FromString(env.payload)
    assert payload.container_image == image["containerImage"]
    dependencies = [beam_runner_api_pb2.ArtifactStagingToRolePayload
                    .FromString(d.role_payload).staged_name
                    for d in env.dependencies]
    assert "workflow.tar.gz" in dependencies, dependencies

