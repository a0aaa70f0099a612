"""Launch-time checks: everything that can be wrong with the configuration is
found here, before any image is read or any job is submitted.

Each check raises LaunchError with one line that names the problem and what
to do about it.
"""
from __future__ import annotations

import datetime
import logging
import os
import urllib.request
import uuid
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.cli_base import UserError, require_cloud_credentials
from transforms.classify import BackendParity, backend_parity
from transforms.decode import decode_image
from transforms.errors import one_line
from transforms.model import (ImageClassifier, ModelLoadError, is_url,
                              load_classifier, resolve_handle)
from transforms.read import read_file_bytes
from transforms.schema import ERRORS_PREFIX, LABELS_PREFIX
from transforms.sources import InputSpec
from transforms.write import (INCOMPLETE_DIR, SUCCESS_FILE,
                              finished_files_pattern, output_path)

_LOGGER = logging.getLogger(__name__)

STANDIN_MARKER = "STANDIN.txt"
_URL_TIMEOUT_S = 30


class LaunchError(UserError):
    """The job cannot start; the message says why and what to do."""


PARITY_SAMPLE = 64  # inputs the backend parity gate compares


@dataclass
class LaunchFacts:
    """What the checks learned, for building and summarising the job."""
    total_inputs: Optional[int]  # None: more than the launch checks sampled
    labels: List[str]
    classifier: ImageClassifier
    is_standin: bool
    parity: Optional[BackendParity] = None


def _read_bytes(location: str) -> bytes:
    if is_url(location):
        with urllib.request.urlopen(location, timeout=_URL_TIMEOUT_S) as resp:
            return resp.read()
    with FileSystems.open(location, compression_type=CompressionTypes
                          .UNCOMPRESSED) as handle:
        return handle.read()


def load_labels(location: str) -> List[str]:
    """The label file: one class name per line (local, Beam FS or URL)."""
    try:
        text = _read_bytes(location).decode("utf-8")
    except Exception as exc:  # pylint: disable=broad-except
        raise LaunchError(f"cannot read label file {location}: "
                          f"{one_line(exc)}; pass --labels PATH") from exc
    labels = text.splitlines()
    while labels and not labels[-1].strip():
        labels.pop()  # a trailing blank line is not a class
    return labels


def list_inputs(file_pattern: Optional[str], manifest: Optional[str]
                ) -> Tuple[Optional[int], List[str]]:
    """(number of inputs, or None when there are more than the sample;
    the first PARITY_SAMPLE URIs). Only the sample is listed or read, so the
    launcher's time and memory do not grow with the input; an empty match
    or manifest is an error."""
    spec = InputSpec(pattern=file_pattern, manifest=manifest)
    try:
        sample = spec.sample(PARITY_SAMPLE)
    except Exception as exc:  # pylint: disable=broad-except
        what = ("list" if file_pattern else "read")
        hint = ("; check the bucket name and your credentials"
                if file_pattern else "")
        raise LaunchError(f"cannot {what} {spec.flag} {spec.location}: "
                          f"{one_line(exc)}{hint}") from exc
    if not sample.uris:
        if file_pattern:
            raise LaunchError(f"--input {file_pattern} matches no files; "
                              "check the path and quote the glob so the "
                              "shell leaves it to the job")
        raise LaunchError(f"--input_manifest {manifest} lists no URIs; give "
                          "one URI per line")
    if sample.complete:
        _LOGGER.info("input: %d images", sample.count)
    else:
        _LOGGER.info("input: at least %d images (sampled; the job lists "
                     "them all)", len(sample.uris))
    return sample.count, list(sample.uris)


def check_backend(args, candidate: ImageClassifier, sample: List[str]
                  ) -> Optional[BackendParity]:
    """Parity gate for a non-default backend, on the job's own first images:
    top-1 agreement with TF ≥ 99.5% and max |Δ probability| ≤ 1e-3.

    Each converted model is gated by the first launch that uses it, and the
    result is kept beside it in the cache; later launches reuse it (and do
    not load TensorFlow at all) unless --recheck_parity."""
    if args.backend == "tf":
        return None
    conversion = candidate.conversion
    recorded = conversion.parity if conversion else None
    if recorded and not args.recheck_parity:
        parity = BackendParity(*(recorded[f] for f in BackendParity._fields))
        _LOGGER.info(
            "backend %s: this conversion passed the parity gate against tf "
            "on %s (%d images: top-1 agreement %.2f%%, max |Δp| %.2e, max "
            "|Δembedding| %.2e); --recheck_parity runs it on this job's "
            "images", args.backend, recorded.get("checked_at", "?"),
            parity.images, 100 * parity.top1_agreement,
            parity.max_prob_delta, parity.max_embedding_delta)
        return parity
    settings = args.decode_settings()
    pixels = []
    for uri in sample:
        try:
            pixels.append(decode_image(read_file_bytes(
                uri, args.max_file_bytes), settings)[0])
        except Exception:  # pylint: disable=broad-except
            continue  # a broken input is the job's business, not the gate's
    if not pixels:
        raise LaunchError(f"cannot check the {args.backend} backend: none "
                          f"of the first {len(sample)} inputs decodes")
    reference = check_model(args.model, args.embedding_model, None,
                            args.model_cache_dir)
    parity = backend_parity(reference, candidate, np.stack(pixels))
    _LOGGER.info(
        "backend %s vs tf on %d images: top-1 agreement %.2f%%, max |Δp| "
        "%.2e, max |Δembedding| %.2e", args.backend, parity.images,
        100 * parity.top1_agreement, parity.max_prob_delta,
        parity.max_embedding_delta)
    if not parity.passes():
        raise LaunchError(
            f"backend {args.backend} fails the parity gate against tf "
            f"(top-1 agreement {100 * parity.top1_agreement:.1f}% < 99.5% or "
            f"max |Δp| {parity.max_prob_delta:.1e} > 1e-3); use --backend tf")
    if conversion:
        conversion.record_parity({**parity._asdict(), "checked_at": datetime
                                  .datetime.now(datetime.timezone.utc)
                                  .isoformat(timespec="seconds")})
    return parity


def check_output(output: str, overwrite: bool, resume: bool = False) -> int:
    """Refuse an output that already holds results unless --overwrite
    (delete them) or --resume (keep them); clear files a killed run left
    half-written; prove the output is writable with a probe file.

    Returns the number of finished result files kept (for --resume)."""
    def matching(pattern: str) -> List[str]:
        try:
            return [m.path for m in
                    FileSystems.match([pattern])[0].metadata_list]
        except Exception:  # pylint: disable=broad-except
            return []  # nothing there yet (or not listable: the probe says)
    finished = [path for prefix in (LABELS_PREFIX, ERRORS_PREFIX)
                for path in matching(finished_files_pattern(output, prefix))]
    if finished and not (overwrite or resume):
        raise LaunchError(f"--output {output} already holds results "
                          f"({len(finished)} files); pass --resume to label "
                          "only what is missing, --overwrite to replace them, "
                          "or choose another --output")
    leftovers = matching(output_path(output, INCOMPLETE_DIR) + "/*")
    stale = leftovers + (finished if overwrite else []) + \
        matching(output_path(output, SUCCESS_FILE))
    if stale:
        FileSystems.delete(stale)
    probe = FileSystems.join(output.rstrip("/"),
                             f".write-probe-{uuid.uuid4().hex}")
    try:
        if "://" not in output:
            os.makedirs(output, exist_ok=True)
        FileSystems.create(probe).close()
        FileSystems.delete([probe])
    except Exception as exc:  # pylint: disable=broad-except
        raise LaunchError(f"--output {output} is not writable: "
                          f"{one_line(exc)}; choose another --output or "
                          "grant write access") from exc
    return 0 if overwrite else len(finished)


def check_model(handle: str, embedding_handle: Optional[str],
                labels: Optional[List[str]], cache_dir: Optional[str],
                backend: str = "tf", threads: Optional[int] = None
                ) -> ImageClassifier:
    """Load the module for `backend` (in this process; local runs reuse it)
    and check its classes against the label file (unless labels is None)."""
    try:
        classifier, _ = load_classifier(handle, embedding_handle, cache_dir,
                                        backend, threads)
    except ModelLoadError as exc:
        raise LaunchError(f"{exc}; pass --model with a readable module "
                          "(a local or gs:// directory)") from exc
    except Exception as exc:  # pylint: disable=broad-except
        hint = (" (no network? pass --model with a local or gs:// copy)"
                if is_url(handle) else
                "; use --backend tf" if backend != "tf" else "")
        raise LaunchError(f"cannot load module {handle} for the {backend} "
                          f"backend: {one_line(exc)}{hint}") from exc
    if labels is not None and classifier.num_classes != len(labels):
        raise LaunchError(
            f"label file has {len(labels)} lines but module {handle} has "
            f"{classifier.num_classes} classes; pass the module's label file "
            "with --labels")
    return classifier


def is_standin(handle: str, cache_dir: Optional[str]) -> bool:
    """Whether the module is this project's random-weight stand-in."""
    try:
        return os.path.exists(os.path.join(resolve_handle(handle, cache_dir),
                                           STANDIN_MARKER))
    except Exception:  # pylint: disable=broad-except
        return False


def run_checks(args) -> LaunchFacts:
    """All launch checks, cheapest first."""
    require_cloud_credentials(args.cloud_locations())
    total, sample = list_inputs(args.input, args.input_manifest)
    check_output(args.output, args.overwrite, args.resume)
    labels = load_labels(args.labels)
    classifier = check_model(args.model, args.embedding_model, labels,
                             args.model_cache_dir, args.backend,
                             args.inference_threads)
    if args.top_k > classifier.num_classes:
        raise LaunchError(f"--top_k {args.top_k} is more than the module's "
                          f"{classifier.num_classes} classes; give --top_k "
                          f"{classifier.num_classes} or less")
    parity = check_backend(args, classifier, sample)
    standin = is_standin(args.model, args.model_cache_dir)
    return LaunchFacts(total, labels, classifier, standin, parity)

