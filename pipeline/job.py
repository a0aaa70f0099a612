"""Assembling the labeling job from the steps in transforms/:

    input → URIs → chunks (fixed sets of URIs) → per chunk: bytes → decoded
        96×96 tensors | errors → logits + embeddings → rows → Parquet files
        → commit records → _SUCCESS.json

Every input URI ends up in exactly one row, of labels or of errors, however
the runner retries or splits the work (see transforms/write.py).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (DebugOptions, DirectOptions,
                                                  PipelineOptions,
                                                  StandardOptions)

from transforms.backends import ModelLoader
from transforms.classify import ClassifierHandler
from transforms.cores import ONE_PER_CORE
from transforms.errors import redact
from transforms.label_chunks import ChunkSettings, ChunkUris, LabelChunks
from transforms.sources import InputSpec
from transforms.write import RECORDS_TAG, FinishOutput, ReadCommitted

# Concurrent reads per worker process from object storage, to hide its
# latency; local files are read on the decode threads.
REMOTE_READ_THREADS = 8


def processes_per_machine(options: PipelineOptions) -> int:
    """Worker processes sharing one machine under these options: the local
    runner's processes, or Dataflow's (one per vCPU unless one SDK
    container is asked for)."""
    runner = str(options.view_as(StandardOptions).runner or "")
    if "Dataflow" not in runner:
        direct = options.view_as(DirectOptions)
        return (direct.direct_num_workers or 1) \
            if direct.direct_running_mode == "multi_processing" else 1
    experiments = options.view_as(DebugOptions).experiments or []
    if "no_use_multiple_sdk_containers" in experiments:
        return 1
    given = options.get_all_options(drop_default=True)
    parallelism = given.get("sdk_worker_parallelism")  # its default is 1
    return int(parallelism) if parallelism else ONE_PER_CORE


def chunk_settings(config, run_id: str, backend: str,
                   processes: int = 1) -> ChunkSettings:
    schemes = tuple(config.allowed_schemes())
    return ChunkSettings(
        output=config.output, run_id=run_id, decode=config.decode_settings(),
        max_file_bytes=config.max_file_bytes, allowed_schemes=schemes,
        batch_size=config.max_batch_size,
        decode_threads=config.decode_threads,
        read_threads=config.read_threads or (
            1 if schemes == ("file",) else REMOTE_READ_THREADS),
        backend=backend, processes_per_machine=processes,
        max_bytes_in_flight=config.max_bytes_in_flight)


def input_spec(config) -> InputSpec:
    return InputSpec(pattern=config.input, manifest=config.input_manifest,
                     allowed_schemes=tuple(config.allowed_schemes()))


def build(pipeline: beam.Pipeline, config, labels: Sequence[str],
          run_id: str, loader: ModelLoader,
          details: Optional[Dict[str, Any]] = None,
          source: Optional[beam.PTransform] = None) -> None:
    """Add the labeling transforms to `pipeline`; files are named by run_id.
    `loader` is what workers load (the backend the launch checks chose);
    `source` (PBegin → PCollection[str] of URIs) replaces the config's glob
    or manifest."""
    handler = ClassifierHandler(loader, labels, model_id=config.model,
                                top_k=config.top_k)
    done, kept = None, []
    if config.resume:
        committed = pipeline | "ReadCommitted" >> ReadCommitted(config.output)
        done, kept = committed["uris"], [committed[RECORDS_TAG]]
    uris = pipeline | "InputUris" >> (source or input_spec(config).uris())
    records = (uris
               | "ChunkUris" >> ChunkUris(config.rows_per_file, done)
               | "LabelChunks" >> LabelChunks(
                   chunk_settings(config, run_id, loader.backend,
                                  processes_per_machine(pipeline.options)),
                   handler))
    _ = ((records, *kept)
         | "AllRecords" >> beam.Flatten()
         | "FinishOutput" >> FinishOutput(
             config.output, run_id, {"model": redact(config.model),
                                     "backend": loader.backend,
                                     "resumed": bool(config.resume),
                                     **(details or {})}))
