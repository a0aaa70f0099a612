"""Launch-time checks: everything that can be wrong with the configuration is
found here, before any image is read or any job is submitted.

Each check raises LaunchError with one line that names the problem and what
to do about it.
"""
from __future__ import annotations

import logging
import os
import urllib.request
import uuid
from dataclasses import dataclass
from typing import List, Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.model import (ImageClassifier, ModelLoadError, is_url,
                              load_classifier, resolve_handle)
from transforms.read import parse_manifest_line
from transforms.schema import ERRORS_PREFIX, LABELS_PREFIX
from transforms.write import output_path

_LOGGER = logging.getLogger(__name__)

STANDIN_MARKER = "STANDIN.txt"
_URL_TIMEOUT_S = 30


class LaunchError(Exception):
    """The job cannot start; the message says why and what to do."""


@dataclass
class LaunchFacts:
    """What the checks learned, for building and summarising the job."""
    total_inputs: int
    labels: List[str]
    classifier: ImageClassifier
    is_standin: bool


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
                          f"{_one_line(exc)}; pass --labels PATH") from exc
    labels = text.splitlines()
    while labels and not labels[-1].strip():
        labels.pop()  # a trailing blank line is not a class
    return labels


def count_inputs(file_pattern: Optional[str], manifest: Optional[str]) -> int:
    """Number of input files; an empty match or manifest is an error."""
    if file_pattern:
        try:
            matched = FileSystems.match([file_pattern])[0].metadata_list
        except Exception as exc:  # pylint: disable=broad-except
            raise LaunchError(f"cannot list --input {file_pattern}: "
                              f"{_one_line(exc)}") from exc
        if not matched:
            raise LaunchError(f"--input {file_pattern} matches no files")
        return len(matched)
    try:
        text = _read_bytes(manifest).decode("utf-8", errors="replace")
    except Exception as exc:  # pylint: disable=broad-except
        raise LaunchError(f"cannot read --input_manifest {manifest}: "
                          f"{_one_line(exc)}") from exc
    uris = {uri for line in text.splitlines()
            if (uri := parse_manifest_line(line))}
    if not uris:
        raise LaunchError(f"--input_manifest {manifest} lists no URIs")
    return len(uris)


def check_output(output: str, overwrite: bool) -> None:
    """Refuse an output that already holds results (unless --overwrite);
    prove it is writable by creating and deleting a probe file."""
    existing = []
    for prefix in (LABELS_PREFIX, ERRORS_PREFIX):
        try:
            pattern = output_path(output, prefix) + "-*"
            existing += FileSystems.match([pattern])[0].metadata_list
        except Exception:  # pylint: disable=broad-except
            pass  # nothing there yet (or not listable: the probe will say)
    if existing and not overwrite:
        raise LaunchError(f"--output {output} already holds results "
                          f"({len(existing)} files); pass --overwrite to "
                          "replace them or choose another --output")
    if existing:
        FileSystems.delete([m.path for m in existing])
    probe = FileSystems.join(output.rstrip("/"),
                             f".write-probe-{uuid.uuid4().hex}")
    try:
        if "://" not in output:
            os.makedirs(output, exist_ok=True)
        FileSystems.create(probe).close()
        FileSystems.delete([probe])
    except Exception as exc:  # pylint: disable=broad-except
        raise LaunchError(f"--output {output} is not writable: "
                          f"{_one_line(exc)}") from exc


def check_model(handle: str, embedding_handle: Optional[str],
                labels: List[str], cache_dir: Optional[str]
                ) -> ImageClassifier:
    """Load the module (in this process; local runs reuse it) and check its
    classes against the label file."""
    try:
        classifier, _ = load_classifier(handle, embedding_handle, cache_dir)
    except ModelLoadError as exc:
        raise LaunchError(f"{exc}; pass --model with a readable module "
                          "(a local or gs:// directory)") from exc
    except Exception as exc:  # pylint: disable=broad-except
        hint = (" (no network? pass --model with a local or gs:// copy)"
                if is_url(handle) else "")
        raise LaunchError(f"cannot load module {handle}: "
                          f"{_one_line(exc)}{hint}") from exc
    if classifier.num_classes != len(labels):
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
    total = count_inputs(args.input, args.input_manifest)
    check_output(args.output, args.overwrite)
    labels = load_labels(args.labels)
    classifier = check_model(args.model, args.embedding_model, labels,
                             args.model_cache_dir)
    standin = is_standin(args.model, args.model_cache_dir)
    return LaunchFacts(total, labels, classifier, standin)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
