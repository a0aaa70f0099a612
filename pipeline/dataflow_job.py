"""The Dataflow job description, written offline.

    python -m pipeline --config configs/dataflow.yaml --input ... --output ...
        --dataflow_job_file job.json --dry_run=True

Beam 2.77 alone cannot do this: with `--dry_run` DataflowRunner builds the
job and returns before the description is made, and `--dataflow_job_file`
alone writes the file only on the way to staging in GCS and submitting
the job. Here DataflowRunner builds the job with `--dry_run`, then Beam's
own DataflowApplicationClient.create_job_description makes the description
with every staged artifact (the sdist of setup.py, pipeline.pb, the pickled
main session) written to `<job file>.staged/` instead of uploaded: the
description names their gs:// staging locations as a submitted job would.

No launch check runs (they read gs:// and load the module): nothing reaches
Google Cloud, and no credentials are looked up (`--no_auth`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict

from pipeline.cli_base import UsageError
from transforms.data import IMAGENET_LABELS

_LOGGER = logging.getLogger("pipeline")

DATAFLOW_RUNNERS = ("DataflowRunner", "dataflow")


def _is_true(value: Any) -> bool:
    # Beam's --dry_run takes any string, and treats "False" as true.
    return str(value).strip().lower() in ("true", "1", "yes")


def offline_description_requested(options) -> bool:
    """Whether this launch writes the job description instead of running:
    DataflowRunner with --dry_run and --dataflow_job_file. A --dry_run that
    cannot mean that is a usage error (the job would run for real, or build
    a description and drop it)."""
    from apache_beam.options.pipeline_options import (  # pylint: disable=import-outside-toplevel
        DebugOptions, StandardOptions, TestOptions)
    dry_run = options.view_as(TestOptions).dry_run
    if dry_run in (None, False):
        return False
    if not _is_true(dry_run):
        raise UsageError(f"--dry_run {dry_run}: give --dry_run=True, or "
                         "leave it out to run the job")
    runner = options.view_as(StandardOptions).runner or ""
    if runner.rsplit(".", 1)[-1] not in DATAFLOW_RUNNERS:
        raise UsageError("--dry_run applies to --runner DataflowRunner only "
                         "(it writes the Dataflow job description); leave "
                         "it out to run the job here")
    if not options.view_as(DebugOptions).dataflow_job_file:
        raise UsageError("--dry_run builds the Dataflow job without "
                         "submitting it: add --dataflow_job_file PATH to "
                         "write its description")
    return True


def _offline_labels(location: str):
    from pipeline.checks import load_labels  # pylint: disable=import-outside-toplevel
    if "://" not in location and os.path.exists(location):
        return load_labels(location)
    _LOGGER.info("dry run: --labels %s is not read (remote); the "
                 "description carries the packaged label file", location)
    return load_labels(str(IMAGENET_LABELS))


def _local_staging_client(options, directory: Path):
    """Beam's DataflowApplicationClient, writing what it would upload into
    `directory` (the description keeps the gs:// staging names)."""
    from apache_beam.runners.dataflow.internal import apiclient  # pylint: disable=import-outside-toplevel

    class LocalStagingClient(apiclient.DataflowApplicationClient):
        def stage_file(self, gcs_or_local_path, file_name, stream,
                       mime_type="application/octet-stream",
                       total_size=None):
            del gcs_or_local_path, mime_type, total_size
            with open(directory / file_name, "wb") as handle:
                handle.write(stream.read())

    return LocalStagingClient(options)


def _describe_transforms(dataflow_job) -> None:
    """Name the job's transforms in the description's pipelineDescription
    (Runner v2 keeps them only in the staged pipeline.pb); the service fills
    this field itself on submission and ignores it on input."""
    from apache_beam.portability import common_urns  # pylint: disable=import-outside-toplevel
    from google.cloud.dataflow_v1beta3 import types  # pylint: disable=import-outside-toplevel
    kinds = {common_urns.primitives.PAR_DO.urn: types.KindType.PAR_DO_KIND,
             common_urns.primitives.GROUP_BY_KEY.urn:
                 types.KindType.GROUP_BY_KEY_KIND,
             common_urns.primitives.FLATTEN.urn: types.KindType.FLATTEN_KIND,
             common_urns.primitives.IMPULSE.urn: types.KindType.READ_KIND}
    transforms = dataflow_job.proto_pipeline.components.transforms
    dataflow_job.proto.pipeline_description = types.PipelineDescription(
        original_pipeline_transform=[
            types.TransformSummary(
                id=transform_id, name=transform.unique_name,
                kind=kinds.get(transform.spec.urn,
                               types.KindType.UNKNOWN_KIND))
            for transform_id, transform in sorted(transforms.items())
            if transform.unique_name])


def write_job_description(config, options) -> Dict[str, Any]:
    """Build the job on DataflowRunner without submitting it and write its
    description to --dataflow_job_file; returns the description."""
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    from apache_beam.options.pipeline_options import (  # pylint: disable=import-outside-toplevel
        DebugOptions, GoogleCloudOptions, TestOptions)
    from pipeline import job  # pylint: disable=import-outside-toplevel
    from transforms import backends  # pylint: disable=import-outside-toplevel
    from transforms.write import new_run_id  # pylint: disable=import-outside-toplevel

    job_file = Path(options.view_as(DebugOptions).dataflow_job_file)
    if "://" in str(job_file):
        raise UsageError(f"--dataflow_job_file {job_file}: with --dry_run "
                         "give a local path (nothing is uploaded)")
    options.view_as(TestOptions).dry_run = True
    options.view_as(GoogleCloudOptions).no_auth = True
    _LOGGER.info("dry run: no launch checks, nothing staged or submitted; "
                 "workers would load the %s backend (a real launch chooses "
                 "it in its checks)", backends.REFERENCE)
    loader = backends.prepare(backends.REFERENCE, config.model,
                              config.embedding_model,
                              config.model_cache_dir).local
    pipeline = beam.Pipeline(options=options)
    job.build(pipeline, config, _offline_labels(config.labels),
              new_run_id(), loader)
    dataflow_job = pipeline.run().job
    staged = job_file.with_name(job_file.name + ".staged")
    staged.mkdir(parents=True, exist_ok=True)
    _local_staging_client(dataflow_job.options, staged) \
        .create_job_description(dataflow_job)
    _describe_transforms(dataflow_job)
    description = json.loads(dataflow_job.json())
    job_file.write_text(json.dumps(description, indent=2, sort_keys=True))
    _LOGGER.info("Dataflow job description written to %s; what the launch "
                 "would upload to %s is in %s", job_file,
                 options.view_as(GoogleCloudOptions).staging_location,
                 staged)
    return description
