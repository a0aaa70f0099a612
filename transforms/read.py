"""Step 1: URI → bytes.

Inputs are a glob on any Beam filesystem (local, gs://, ...) or a manifest
file listing one URI per line. Files are read through Beam's `FileSystems`,
so every filesystem Beam knows works, and each element is keyed by its URI
from here to the output.
"""
from __future__ import annotations

import io
import logging
import os
from typing import (Iterable, List, Optional, Sequence,
                    Union)

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import retry

from transforms.errors import (ERRORS_TAG, METRICS_NAMESPACE, STAGE_READ,
                               ImageError, error_record)
from transforms import tally
# Re-exported: callers import them from here too.
from transforms.sources import parse_manifest_line, uri_scheme  # pylint: disable=unused-import
from transforms.imaging import ImageBytes
from transforms.threaded import ThreadedDoFn, threaded_pardo

_LOGGER = logging.getLogger(__name__)

def check_uri_allowed(uri: str, allowed_schemes: Sequence[str]) -> None:
    """Refuse URIs outside the filesystems the job was configured for.

    Manifests are untrusted input: without this a manifest could point the
    job at any path or bucket the workers can reach.
    """
    scheme = uri_scheme(uri)
    if scheme not in allowed_schemes:
        raise ImageError(
            "UriNotAllowed",
            f"URI scheme {scheme!r} is not allowed for this job "
            f"(allowed: {', '.join(sorted(allowed_schemes))})")


_PERMANENT_HTTP_CODES = frozenset({400, 401, 403, 404, 410, 412})

try:  # raised by google-cloud-storage's own retry when its deadline is up
    from google.api_core.exceptions import RetryError as _ClientRetryError
except ImportError:  # pragma: no cover - no GCP client libraries installed
    _ClientRetryError = ()


def _is_transient(exc: BaseException) -> bool:
    """Retry storage hiccups, not answers that will never change.

    Not either: a storage client that already retried until its own
    deadline (GCS: 120 s of backoff inside one FileSystems.open/read).
    Retrying that again would turn one unreadable object into ~12 minutes.
    """
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError,
                        ImageError, _ClientRetryError)):
        return False
    # google.api_core / apitools errors carry the HTTP status in `code`.
    return getattr(exc, "code", None) not in _PERMANENT_HTTP_CODES


def _local_size(handle) -> Optional[int]:
    """The size of an open local file; None for other filesystems."""
    try:
        return os.fstat(handle.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


@retry.with_exponential_backoff(num_retries=5, initial_delay_secs=0.5,
                                retry_filter=_is_transient)
def read_file_bytes(uri: str, max_bytes: int) -> bytes:
    """Read a whole file via Beam's FileSystems, refusing files over max_bytes.

    At most max_bytes + 1 bytes are read, so an oversized file never sits in
    memory whatever its metadata says. Transient storage errors are retried
    with exponential backoff; the last error is raised.
    """
    # UNCOMPRESSED: an image named *.gz must not be inflated on the way in.
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED
                          ) as handle:
        size = _local_size(handle)
        if size is None or size >= max_bytes:
            data = handle.read(max_bytes + 1)
        else:
            # Sized to the file: read(max_bytes + 1) would first allocate
            # the whole limit (64 MiB) for every image and then shrink it.
            data = handle.read(size + 1)
            if len(data) > size:  # it grew while we read: up to the limit
                data += handle.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise ImageError("FileTooLarge",
                         f"file is larger than the limit of {max_bytes} bytes")
    return data


class ReadImageBytes(ThreadedDoFn):
    """URI (or FileMetadata) → ImageBytes, or an ErrorRecord (stage read).

    Emits ImageBytes on the main output and ErrorRecords on ERRORS_TAG.
    Reads run on `threads` threads: waiting on storage (and on the
    filesystem) then overlaps with decoding and inference.
    """

    def __init__(self, max_bytes: int, allowed_schemes: Sequence[str],
                 threads: int = 1):
        super().__init__(threads)
        self._max_bytes = max_bytes
        self._allowed_schemes = tuple(allowed_schemes)

    def work(self, element: Union[FileMetadata, str]
             ) -> List[Union[ImageBytes, beam.pvalue.TaggedOutput]]:
        uri = _uri_of(element)
        try:
            check_uri_allowed(uri, self._allowed_schemes)
            data = read_file_bytes(uri, self._max_bytes)
        except Exception as exc:  # pylint: disable=broad-except
            _LOGGER.debug("read failed for %s", uri, exc_info=True)
            return [beam.pvalue.TaggedOutput(
                ERRORS_TAG, error_record(uri, STAGE_READ, exc))]
        return [ImageBytes(uri, data)]

    def emitted(self, output) -> None:
        if isinstance(output, ImageBytes):
            _IMAGES_READ.inc()
            _BYTES_READ.inc(len(output.data))


_IMAGES_READ = Metrics.counter(METRICS_NAMESPACE, "images_read")
_BYTES_READ = Metrics.counter(METRICS_NAMESPACE, "bytes_read")


def _uri_of(element: Union[FileMetadata, str]) -> str:
    return element.path if isinstance(element, FileMetadata) else element


def read_uri_column(readable_file) -> List[str]:
    """The `uri` column of one finished output file (for --resume)."""
    from transforms.schema import read_columns  # pylint: disable=import-outside-toplevel
    with readable_file.open() as handle:
        return read_columns(handle, ["uri"]).column("uri").to_pylist()


class _KeepUnfinished(beam.DoFn):
    """After CoGroupByKey on the URI: keep one input element per URI, unless
    the URI is already in a finished output file."""

    def __init__(self):
        self._skipped = Metrics.counter(METRICS_NAMESPACE,
                                        "images_skipped_done")

    def process(self, keyed):
        _, groups = keyed
        inputs, done = list(groups["inputs"]), list(groups["done"])
        if not inputs:
            return
        if done:
            self._skipped.inc()
            tally.add("skipped")
            return
        yield inputs[0]


class ReadImages(beam.PTransform):
    """Read every input image's bytes, keyed by URI.

    Exactly one of `file_pattern` (a glob on any Beam filesystem) or
    `manifest` (a text/CSV file of URIs, itself on any Beam filesystem) is
    given. Returns a dict of PCollections: "images" (ImageBytes) and
    ERRORS_TAG (ErrorRecord).

    `exclude_outputs`: globs of finished Parquet files whose `uri` column
    lists images not to read again (resuming a run). Matching nothing is
    fine.

    Matched files are reshuffled so that reading and everything fused after
    it spreads over all workers (the match itself is a single element);
    manifest URIs are de-duplicated, which also redistributes them. With
    `spread=False` (one local worker: nothing to spread) matched files go
    straight to reading, so it starts as the glob lists them instead of
    after a shuffle of every URI.
    """

    def __init__(self, file_pattern: Optional[str] = None,
                 manifest: Optional[str] = None, *,
                 max_bytes: int, allowed_schemes: Iterable[str],
                 exclude_outputs: Sequence[str] = (), threads: int = 1,
                 spread: bool = True):
        super().__init__()
        self._threads = threads
        self._spread = spread
        if (file_pattern is None) == (manifest is None):
            raise ValueError("give exactly one of file_pattern or manifest")
        self._file_pattern = file_pattern
        self._manifest = manifest
        self._max_bytes = max_bytes
        self._allowed_schemes = tuple(allowed_schemes)
        self._exclude_outputs = tuple(exclude_outputs)

    def expand(self, pbegin):
        if self._file_pattern is not None:
            files = pbegin | "MatchFiles" >> fileio.MatchFiles(
                self._file_pattern)
            if self._spread or self._exclude_outputs:
                # Plain URIs from here: cheaper to shuffle than FileMetadata.
                # (Sizes are enforced while reading: at most max_bytes + 1.)
                files = files | "Paths" >> beam.Map(
                    lambda metadata: metadata.path)
        else:
            files = (pbegin
                     | "ReadManifest" >> beam.io.ReadFromText(self._manifest)
                     | "ParseManifest" >> beam.FlatMap(
                         lambda line: [u] if (u := parse_manifest_line(line))
                         else []))
        if self._exclude_outputs:
            files = self._without_finished(pbegin, files)
        elif self._file_pattern is not None:
            if self._spread:
                files = files | "Spread" >> beam.Reshuffle()
        else:
            files = files | "Deduplicate" >> beam.Distinct()
        results = files | "ReadBytes" >> threaded_pardo(
            ReadImageBytes(self._max_bytes, self._allowed_schemes,
                           self._threads)
        ).with_outputs(ERRORS_TAG, main="images")
        return {"images": results.images, ERRORS_TAG: results[ERRORS_TAG]}

    def _without_finished(self, pbegin, files):
        """Anti-join on the URI; also de-duplicates and redistributes."""
        done = (pbegin
                | "FinishedOutputs" >> beam.Create(self._exclude_outputs)
                | "MatchFinished" >> fileio.MatchAll(
                    fileio.EmptyMatchTreatment.ALLOW)
                | "OpenFinished" >> fileio.ReadMatches()
                | "FinishedUris" >> beam.FlatMap(read_uri_column)
                | "KeyDone" >> beam.Map(lambda uri: (uri, None)))
        keyed = files | "KeyInputs" >> beam.Map(lambda e: (_uri_of(e), e))
        return ({"inputs": keyed, "done": done}
                | "JoinFinished" >> beam.CoGroupByKey()
                | "KeepUnfinished" >> beam.ParDo(_KeepUnfinished()))
