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
from transforms.imaging import decode_image, warm_up
from transforms.errors import one_line
from transforms import backends
from transforms.backends import (AUTO, REFERENCE, ImageClassifier,
                                 ModelLoader, ModelLoadError, Prepared)
from transforms.backends.handles import is_url, resolve_handle
from transforms.read import read_file_bytes
from transforms.schema import ERRORS_PREFIX, LABELS_PREFIX
from transforms.sources import InputSpec
from transforms.manifest import SUCCESS_FILE, output_path
from transforms.write import (ATTEMPTS_DIR, INCOMPLETE_DIR,
                              finished_files_pattern, parse_file_name)

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
    classifier: ImageClassifier  # this process's copy of the job's model
    is_standin: bool
    backend: str                 # the backend chosen: the `backend` column
    loader: ModelLoader          # what workers load
    parity: Optional[BackendParity] = None  # the gate the backend passed
    backend_reason: str = ""     # why this backend, in one line

    def backend_record(self) -> dict:
        """The backend decision, for the output's manifest."""
        return {"backend": self.backend, "reason": self.backend_reason,
                "parity": self.parity._asdict() if self.parity else None}


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


#: Where the launcher stages a converted model for the workers, under
#: --output (any Beam filesystem), so it travels with the job.
MODEL_STAGING_DIR = "_model"


def model_staging_location(output: str) -> str:
    return FileSystems.join(output.rstrip("/"), MODEL_STAGING_DIR)


@dataclass
class BackendChoice:
    """The launch's backend decision."""
    backend: str
    loader: ModelLoader
    classifier: ImageClassifier
    parity: Optional[BackendParity]
    reason: str


class _NotUsable(Exception):
    """A backend cannot be used for this job (message: why, one line)."""


def _loaded(loader: ModelLoader) -> ImageClassifier:
    try:
        return loader()
    except ModelLoadError as exc:
        raise _NotUsable(str(exc)) from exc
    except Exception as exc:  # pylint: disable=broad-except
        raise _NotUsable(f"cannot load it: {one_line(exc)}") from exc


def _prepared(name: str, args) -> Prepared:
    try:
        return backends.prepare(name, args.model, args.embedding_model,
                                args.model_cache_dir, args.inference_threads)
    except ModelLoadError as exc:
        raise _NotUsable(str(exc)) from exc
    except Exception as exc:  # pylint: disable=broad-except
        raise _NotUsable(f"cannot prepare it: {one_line(exc)}") from exc


def _gate(name: str, prepared: Prepared, args, sample: List[str]
          ) -> BackendParity:
    """Parity gate against the reference backend on the job's own first
    images: top-1 agreement ≥ 99.5% and max |Δ probability| ≤ 1e-3.

    A passed result is recorded with the prepared model; later launches
    with the same model reuse it (and do not load the reference, nor import
    TensorFlow) unless --recheck_parity."""
    recorded = prepared.gate
    if recorded and not args.recheck_parity:
        parity = BackendParity(*(recorded[f] for f in BackendParity._fields))
        _LOGGER.info(
            "backend %s: this conversion passed the parity gate against %s "
            "on %s (%d images: top-1 agreement %.2f%%, max |Δp| %.2e, max "
            "|Δembedding| %.2e); --recheck_parity runs it on this job's "
            "images", name, REFERENCE, recorded.get("checked_at", "?"),
            parity.images, 100 * parity.top1_agreement,
            parity.max_prob_delta, parity.max_embedding_delta)
        return parity
    settings = args.decode_settings()
    warm_up()  # decoder warnings go to the debug log, not the console
    pixels = []
    for uri in sample:
        try:
            pixels.append(decode_image(read_file_bytes(
                uri, args.max_file_bytes), settings)[0])
        except Exception:  # pylint: disable=broad-except
            continue  # a broken input is the job's business, not the gate's
    if not pixels:
        raise _NotUsable(f"its parity gate cannot run: none of the first "
                         f"{len(sample)} inputs decodes")
    reference = _loaded(_prepared(REFERENCE, args).local)
    parity = backend_parity(reference, _loaded(prepared.local),
                            np.stack(pixels))
    prepared.local.forget()  # workers load the staged copy
    _LOGGER.info(
        "backend %s vs %s on %d images: top-1 agreement %.2f%%, max |Δp| "
        "%.2e, max |Δembedding| %.2e", name, REFERENCE, parity.images,
        100 * parity.top1_agreement, parity.max_prob_delta,
        parity.max_embedding_delta)
    if not parity.passes():
        raise _NotUsable(
            f"it fails the parity gate against {REFERENCE} (top-1 agreement "
            f"{100 * parity.top1_agreement:.1f}%, at least 99.5% needed; max "
            f"|Δp| {parity.max_prob_delta:.1e}, at most 1e-3; max "
            f"|Δembedding| {parity.max_embedding_delta:.1e}, inf when the "
            "outputs' shapes differ)")
    prepared.record_gate({**parity._asdict(), "checked_at": datetime.datetime
                          .now(datetime.timezone.utc)
                          .isoformat(timespec="seconds")})
    return parity


def _use_backend(name: str, args, sample: List[str]) -> BackendChoice:
    """Prepare backend `name`, gate it unless it is the reference, stage
    it with the job and load it here; _NotUsable says why not."""
    prepared = _prepared(name, args)
    parity = None if name == REFERENCE else _gate(name, prepared, args,
                                                  sample)
    try:
        loader = prepared.stage(model_staging_location(args.output))
    except Exception as exc:  # pylint: disable=broad-except
        raise _NotUsable(f"cannot stage it under --output: "
                         f"{one_line(exc)}") from exc
    reason = ("the reference backend" if parity is None else
              f"passed the parity gate against {REFERENCE} on "
              f"{parity.images} images")
    return BackendChoice(name, loader, _loaded(loader), parity, reason)


def check_backend(args, sample: List[str]) -> BackendChoice:
    """Choose, prepare and load the job's backend: --backend NAME forces
    one; `auto` takes the first of AUTO_ORDER that prepares and passes its
    gate, with one warning line for each it passes over."""
    forced = args.backend != AUTO
    names = (args.backend,) if forced else backends.AUTO_ORDER
    for index, name in enumerate(names):
        try:
            choice = _use_backend(name, args, sample)
        except _NotUsable as exc:
            if forced or index == len(names) - 1:
                hint = (f"; use --backend {REFERENCE}" if name != REFERENCE
                        else "; pass --model with a readable module (a "
                        "local or gs:// directory)" + (
                            " (no network? pass a local or gs:// copy)"
                            if is_url(args.model) else ""))
                raise LaunchError(f"backend {name}: {exc}{hint}") from exc
            _LOGGER.warning("backend auto: not %s, as %s; trying %s", name,
                            exc, names[index + 1])
            continue
        if choice.backend != REFERENCE:
            # Only the gate needed the reference here.
            _prepared(REFERENCE, args).local.forget()
        _LOGGER.info("backend %s%s: %s", choice.backend,
                     "" if forced else " (chosen by --backend auto)",
                     choice.reason)
        return choice
    raise AssertionError("unreachable: the last backend raises")


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
    unknown = [p for p in finished if parse_file_name(p) is None]
    if resume and unknown:
        raise LaunchError(f"--output {output} holds files of an older layout "
                          f"(e.g. {unknown[0].rsplit('/', 1)[-1]}) that "
                          "--resume cannot account for; label into a new "
                          "--output, or pass --overwrite")
    # While this run goes on the output is unfinished: no manifest. Files
    # being written by a killed run are gone with it.
    stale = matching(output_path(output, INCOMPLETE_DIR) + "/*") + \
        matching(output_path(output, SUCCESS_FILE))
    if overwrite:
        stale += finished + matching(output_path(output, ATTEMPTS_DIR) + "/*")
    for start in range(0, len(stale), 1000):
        FileSystems.delete(stale[start:start + 1000])
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
                backend: str = REFERENCE, threads: Optional[int] = None
                ) -> ImageClassifier:
    """Load the module for `backend` in this process (no staging, no gate)
    and check its classes against the label file (unless labels is None)."""
    try:
        classifier, _ = backends.load_classifier(
            handle, embedding_handle, cache_dir, backend, threads)
    except ModelLoadError as exc:
        raise LaunchError(f"{exc}; pass --model with a readable module "
                          "(a local or gs:// directory)") from exc
    except Exception as exc:  # pylint: disable=broad-except
        hint = (" (no network? pass --model with a local or gs:// copy)"
                if is_url(handle) else
                f"; use --backend {REFERENCE}" if backend != REFERENCE
                else "")
        raise LaunchError(f"cannot load module {handle} for the {backend} "
                          f"backend: {one_line(exc)}{hint}") from exc
    check_classes(classifier, labels, handle)
    return classifier


def check_classes(classifier: ImageClassifier, labels: Optional[List[str]],
                  handle: str) -> None:
    if labels is not None and classifier.num_classes != len(labels):
        raise LaunchError(
            f"label file has {len(labels)} lines but module {handle} has "
            f"{classifier.num_classes} classes; pass the module's label file "
            "with --labels")


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
    choice = check_backend(args, sample)
    classifier = choice.classifier
    check_classes(classifier, labels, args.model)
    if args.top_k > classifier.num_classes:
        raise LaunchError(f"--top_k {args.top_k} is more than the module's "
                          f"{classifier.num_classes} classes; give --top_k "
                          f"{classifier.num_classes} or less")
    standin = is_standin(args.model, args.model_cache_dir)
    return LaunchFacts(total, labels, classifier, standin, choice.backend,
                       choice.loader, choice.parity, choice.reason)

