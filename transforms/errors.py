"""Error records: what becomes of an image that fails at any step.

Every step routes failures to a tagged output of `ErrorRecord`s instead of
raising, so one bad file never takes the job down and never vanishes: each
input URI ends up either as a labels row or as an errors row.
"""
from __future__ import annotations

import re
from typing import NamedTuple

#: Name of the tagged output that carries ErrorRecords in every step.
ERRORS_TAG = "errors"

# Stages, in pipeline order; the `stage` column of the errors output.
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_CLASSIFY = "classify"

METRICS_NAMESPACE = "labeling"

_MAX_MESSAGE_CHARS = 500


_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]*)\?[^\s#'\"]*",
                        re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@'\"]+@",
                           re.IGNORECASE)


def redact(text: str) -> str:
    """Remove what may carry credentials from URLs in `text`: query strings
    (signed URLs, tokens) and user:password@. Used for everything that goes
    to logs or Parquet."""
    text = _URL_USERINFO.sub(r"\1<redacted>@", text)
    return _URL_QUERY.sub(r"\1?<redacted>", text)


class ErrorRecord(NamedTuple):
    """One image that could not be labeled, and why."""
    uri: str
    stage: str
    error_type: str
    message: str


class ImageError(Exception):
    """An expected, per-image failure with a stable machine-readable type.

    `error_type` names the problem (e.g. "FileTooLarge", "FormatNotAllowed");
    other exceptions are recorded under their class name.
    """

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, never empty, at most `limit`
    characters: what error rows and one-line CLI errors show."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def error_record(uri: str, stage: str, exc: BaseException) -> ErrorRecord:
    """Turn an exception raised while handling `uri` into an ErrorRecord.

    Safe on any thread: it touches no Beam metrics (errors are counted
    where they are written, see transforms/write.py).
    """
    error_type = getattr(exc, "error_type", None) or type(exc).__name__
    message = redact(one_line(exc, _MAX_MESSAGE_CHARS))
    return ErrorRecord(uri=uri, stage=stage, error_type=error_type,
                       message=message)
