"""Step 1: URI → bytes, with retries for transient storage errors and a
size limit: local paths with the operating system's open(), every other
scheme through Beam's `FileSystems` (every filesystem Beam knows)."""
from __future__ import annotations

import io
import os
from typing import Optional, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import retry

from transforms.errors import ImageError
from transforms.sources import uri_scheme


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


def _open(uri: str):
    """A binary handle on the file. Local paths skip FileSystems: its
    per-call scheme lookup and wrappers are paid once per image."""
    if uri_scheme(uri) == "file":
        return open(uri[len("file://"):] if uri.startswith("file://")
                    else uri, "rb")
    # UNCOMPRESSED: an image named *.gz must not be inflated on the way in.
    return FileSystems.open(uri,
                            compression_type=CompressionTypes.UNCOMPRESSED)


@retry.with_exponential_backoff(num_retries=5, initial_delay_secs=0.5,
                                retry_filter=_is_transient)
def read_file_bytes(uri: str, max_bytes: int) -> bytes:
    """Read a whole file, refusing files over max_bytes.

    At most max_bytes + 1 bytes are read, so an oversized file never sits in
    memory whatever its metadata says. Transient storage errors are retried
    with exponential backoff; the last error is raised.
    """
    with _open(uri) as handle:
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
