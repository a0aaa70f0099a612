"""Where an input URI points, independent of the directory a job runs in."""
from __future__ import annotations

import os


def absolute_uri(uri: str) -> str:
    """A local path made absolute (relative to the current directory, `~`
    expanded); a URI with a scheme (gs://, s3://, ...) unchanged.

    The output's `uri` column then names each image wherever it is read."""
    if "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))
