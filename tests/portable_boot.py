"""A small Python stand-in for the Beam SDK container's `boot` program, used
by tests/test_portable_runner.py as the worker pool's
`--container_executable` (one process per SDK worker).

Like the real boot (the entry point of the apache/beam_python SDK images
that Dataflow runs), it asks the runner's provision service for the
pipeline options and the staged artifacts, fetches the artifacts
(`--setup_file` is staged as `workflow.tar.gz`), optionally installs the
staged package (LABELER_BOOT_INSTALL=1: `pip install --no-deps` into a
per-worker directory first on sys.path, as Dataflow's boot installs it into
the container), and then runs Beam's own `sdk_worker_main`.

For the test it also leaves evidence in its worker directory:
  boot.json   pid, interpreter, cwd, sys.path[0], fetched artifacts
  worker.log  the harness's log records (pid, file:line of the code that
              logged, message), e.g. transforms/classify.py's "model ... loaded in process"

Run with `python -I` (isolated: no script directory, PYTHONPATH or user
site on sys.path), so only the virtualenv's site-packages can provide
`pipeline` and `transforms`.
"""
import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys


def _fetch_artifacts(info, endpoint, dest):
    """Download every staged artifact; returns [{name, sha256, path}]."""
    import grpc  # pylint: disable=import-outside-toplevel
    from apache_beam.portability import common_urns  # pylint: disable=import-outside-toplevel
    from apache_beam.portability.api import (beam_artifact_api_pb2,  # pylint: disable=import-outside-toplevel
                                             beam_artifact_api_pb2_grpc,
                                             beam_runner_api_pb2)
    fetched = []
    if not info.dependencies:
        return fetched
    os.makedirs(dest, exist_ok=True)
    stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(
        grpc.insecure_channel(endpoint))
    resolved = stub.ResolveArtifacts(beam_artifact_api_pb2.ResolveArtifactsRequest(
        artifacts=info.dependencies)).replacements
    for index, artifact in enumerate(resolved):
        name = f"artifact-{index}"
        if artifact.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                artifact.role_payload).staged_name
        path = os.path.join(dest, os.path.basename(name))
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            for chunk in stub.GetArtifact(
                    beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact)):
                digest.update(chunk.data)
                out.write(chunk.data)
        fetched.append({"name": name, "path": path,
                        "sha256": digest.hexdigest()})
    return fetched


def main():
    parser = argparse.ArgumentParser()
    for flag in ("id", "logging_endpoint", "artifact_endpoint",
                 "provision_endpoint", "control_endpoint"):
        parser.add_argument(f"--{flag}", required=True)
    args, _ = parser.parse_known_args()

    worker_dir = os.path.join(os.environ["LABELER_BOOT_DIR"],
                              f"worker-{args.id}")
    os.makedirs(worker_dir, exist_ok=True)
    os.chdir(worker_dir)
    # The worker pool pipes (and never reads) stdout: send both to a file.
    log_fd = os.open("worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(process)d %(levelname)s %(pathname)s:%(lineno)d %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)

    import grpc  # pylint: disable=import-outside-toplevel
    from google.protobuf import json_format, text_format  # pylint: disable=import-outside-toplevel
    from apache_beam.portability.api import (beam_provision_api_pb2,  # pylint: disable=import-outside-toplevel
                                             beam_provision_api_pb2_grpc,
                                             endpoints_pb2)
    provision = beam_provision_api_pb2_grpc.ProvisionServiceStub(
        grpc.insecure_channel(args.provision_endpoint))
    info = provision.GetProvisionInfo(
        beam_provision_api_pb2.GetProvisionInfoRequest(),
        metadata=[("worker_id", args.id)]).info
    artifacts = _fetch_artifacts(info, args.artifact_endpoint,
                                 os.path.join(worker_dir, "staged"))

    installed_to = None
    if os.environ.get("LABELER_BOOT_INSTALL") == "1":
        workflow = [a["path"] for a in artifacts
                    if a["name"].endswith("workflow.tar.gz")]
        if not workflow:
            raise SystemExit("LABELER_BOOT_INSTALL=1 but no workflow.tar.gz "
                             f"was staged: {artifacts}")
        installed_to = os.path.join(worker_dir, "site")
        # Dependencies are in the venv already (as in a custom container);
        # the staged package itself is what is under test here.
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                        "--no-build-isolation", "--no-index", "--quiet",
                        "--target", installed_to, workflow[0]], check=True)
        sys.path.insert(0, installed_to)

    def descriptor(url):
        return text_format.MessageToString(
            endpoints_pb2.ApiServiceDescriptor(url=url))

    os.environ.update({
        "WORKER_ID": args.id,
        "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(args.control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": descriptor(args.logging_endpoint),
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "SEMI_PERSISTENT_DIRECTORY": worker_dir,
    })
    with open("boot.json", "w", encoding="utf-8") as out:
        json.dump({"pid": os.getpid(), "worker_id": args.id,
                   "executable": sys.executable, "prefix": sys.prefix,
                   "cwd": os.getcwd(), "sys_path": sys.path,
                   "artifacts": artifacts, "installed_to": installed_to},
                  out, indent=1)

    from apache_beam.runners.worker import sdk_worker_main  # pylint: disable=import-outside-toplevel
    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
