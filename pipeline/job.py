"""Assembling the labeling job from the steps in transforms/:

    uri → bytes → batch → decoded 96×96 tensors | errors → logits +
        embeddings → rows → Parquet

Errors from every step are flattened into one errors output.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import apache_beam as beam

from pipeline.options import one_local_worker
from transforms.classify import Classify, HubClassifierHandler
from transforms.decode import (DecodeAndPreprocess, DecodeSettings,
                               allowed_formats)
from transforms.errors import ERRORS_TAG, redact
from transforms.read import ReadImages, uri_scheme
from transforms.rows import ToLabelRows
from transforms.schema import ERRORS_PREFIX, LABELS_PREFIX
from transforms.write import (FinishOutput, WriteErrors, WriteLabels,
                              finished_files_pattern)


def input_schemes(args: argparse.Namespace) -> Sequence[str]:
    """Filesystems input URIs may be on: --input_schemes, or else the
    filesystem of --input / --input_manifest itself."""
    if args.input_schemes:
        return [s.strip().lower() for s in args.input_schemes.split(",")
                if s.strip()]
    return [uri_scheme(args.input or args.input_manifest)]


# Concurrent reads per worker process from object storage, to hide its
# latency; local files are read inline (threads only add GIL hand-offs).
REMOTE_READ_THREADS = 8


def decode_settings(args: argparse.Namespace) -> DecodeSettings:
    return DecodeSettings(
        max_pixels=args.max_pixels,
        allowed_formats=allowed_formats(args.allowed_formats.split(",")),
        fast_jpeg=args.fast_jpeg)


def batches_in_flight(decode_threads: int) -> int:
    """Batches submitted and not yet classified: two per decode thread and
    two more, so decoding goes on while the bundle thread runs inference on
    a finished one, and a thread that finishes while the bundle thread waits
    on an older batch starts on the next at once (one per thread left it
    idle then)."""
    return 2 * (decode_threads + 1)


def build(pipeline: beam.Pipeline, args: argparse.Namespace,
          labels: Sequence[str], run_id: str) -> None:
    """Add the labeling transforms to `pipeline`; files are named by run_id."""
    exclude = ([finished_files_pattern(args.output, prefix)
                for prefix in (LABELS_PREFIX, ERRORS_PREFIX)]
               if args.resume else [])
    images = pipeline | "ReadImages" >> ReadImages(
        args.input, args.input_manifest, max_bytes=args.max_file_bytes,
        allowed_schemes=input_schemes(args), exclude_outputs=exclude,
        threads=args.read_threads or (
            1 if input_schemes(args) == ["file"] else REMOTE_READ_THREADS),
        spread=not one_local_worker(pipeline.options))
    decoded = images["images"] | "DecodeAndPreprocess" >> DecodeAndPreprocess(
        decode_settings(args), args.decode_threads,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.max_batch_size,
        batches_in_flight=batches_in_flight(args.decode_threads))
    handler = HubClassifierHandler(
        args.model, labels, top_k=args.top_k,
        embedding_model=args.embedding_model,
        model_cache_dir=args.model_cache_dir, backend=args.backend,
        inference_threads=args.inference_threads)
    classified = decoded["images"] | "Classify" >> Classify(handler)
    label_files = (classified["results"]
                   | "ToLabelRows" >> ToLabelRows(args.backend)
                   | "WriteLabels" >> WriteLabels(args.output, run_id,
                                                  args.rows_per_file))
    error_files = ((images[ERRORS_TAG], decoded[ERRORS_TAG],
                    classified[ERRORS_TAG])
                   | "AllErrors" >> beam.Flatten()
                   | "WriteErrors" >> WriteErrors(args.output, run_id,
                                                  args.rows_per_file))
    _ = ((label_files, error_files)
         | "AllFiles" >> beam.Flatten()
         | "FinishOutput" >> FinishOutput(
             args.output, run_id, {"model": redact(args.model),
                                   "backend": args.backend,
                                   "resumed": bool(args.resume)}))
