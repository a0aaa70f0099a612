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
from apache_beam.io import fileio

from transforms.backends import ModelLoader
from transforms.classify import ClassifierHandler
from transforms.imaging import DecodeSettings, allowed_formats
from transforms.errors import redact
from transforms.label_chunks import ChunkSettings, ChunkUris, LabelChunks
from transforms.read import parse_manifest_line, uri_scheme
from transforms.write import RECORDS_TAG, FinishOutput, ReadCommitted

# Concurrent reads per worker process from object storage, to hide its
# latency; local files are read on the decode threads.
REMOTE_READ_THREADS = 8


def input_schemes(config) -> Sequence[str]:
    """Filesystems input URIs may be on: --input_schemes, or else the
    filesystem of --input / --input_manifest itself."""
    if config.input_schemes:
        return [s.strip().lower() for s in config.input_schemes.split(",")
                if s.strip()]
    return [uri_scheme(config.input or config.input_manifest)]


def decode_settings(config) -> DecodeSettings:
    return DecodeSettings(
        max_pixels=config.max_pixels,
        allowed_formats=allowed_formats(config.allowed_formats.split(",")),
        fast_jpeg=config.fast_jpeg)


def chunk_settings(config, run_id: str, backend: str) -> ChunkSettings:
    schemes = tuple(input_schemes(config))
    return ChunkSettings(
        output=config.output, run_id=run_id, decode=decode_settings(config),
        max_file_bytes=config.max_file_bytes, allowed_schemes=schemes,
        batch_size=config.max_batch_size,
        decode_threads=config.decode_threads,
        read_threads=config.read_threads or (
            1 if schemes == ("file",) else REMOTE_READ_THREADS),
        backend=backend)


def input_uris(pipeline: beam.Pipeline, config):
    """The input's URIs (repeats allowed: chunking removes them)."""
    if config.input:
        return (pipeline
                | "MatchFiles" >> fileio.MatchFiles(config.input)
                | "Paths" >> beam.Map(lambda metadata: metadata.path))
    return (pipeline
            | "ReadManifest" >> beam.io.ReadFromText(config.input_manifest)
            | "ParseManifest" >> beam.FlatMap(
                lambda line: [u] if (u := parse_manifest_line(line)) else []))


def build(pipeline: beam.Pipeline, config, labels: Sequence[str],
          run_id: str, loader: ModelLoader,
          details: Optional[Dict[str, Any]] = None) -> None:
    """Add the labeling transforms to `pipeline`; files are named by run_id.
    `loader` is what workers load (the backend the launch checks chose)."""
    handler = ClassifierHandler(loader, labels, model_id=config.model,
                                top_k=config.top_k)
    done, kept = None, []
    if config.resume:
        committed = pipeline | "ReadCommitted" >> ReadCommitted(config.output)
        done, kept = committed["uris"], [committed[RECORDS_TAG]]
    records = (input_uris(pipeline, config)
               | "ChunkUris" >> ChunkUris(config.rows_per_file, done)
               | "LabelChunks" >> LabelChunks(
                   chunk_settings(config, run_id, loader.backend), handler))
    _ = ((records, *kept)
         | "AllRecords" >> beam.Flatten()
         | "FinishOutput" >> FinishOutput(
             config.output, run_id, {"model": redact(config.model),
                                     "backend": loader.backend,
                                     "resumed": bool(config.resume),
                                     **(details or {})}))
