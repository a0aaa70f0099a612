"""Module handle → local directory, and the module's content fingerprint.

Handles:
  * a tfhub.dev / Kaggle URL: resolved by tensorflow_hub (its cache,
    TFHUB_CACHE_DIR);
  * a local directory;
  * a directory on any other Beam filesystem (gs://, s3://, ...): copied
    with Beam's FileSystems into a local cache, then loaded from there.
    TensorFlow's own gs:// support has fixed endpoints and credentials of
    its own; Beam's filesystems are what the rest of the job already uses.

Only URL handles that are not yet in tensorflow_hub's cache import
TensorFlow (through tensorflow_hub).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Optional

from transforms.backends.base import ModelLoadError


def is_url(handle: str) -> bool:
    return handle.startswith(("http://", "https://"))


def is_beam_remote(location: str) -> bool:
    """Whether `location` is on a Beam filesystem other than local files."""
    return "://" in location and not is_url(location) and \
        not location.startswith("file://")


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "image-labeler-modules")


def copy_to_local_cache(handle: str, cache_dir: Optional[str] = None) -> str:
    """Copy a module directory from a Beam filesystem to a local cache.

    The copy is made in a temporary directory and renamed into place, so
    concurrent workers on one machine never load a half-copied module.
    """
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    cache_dir = cache_dir or default_cache_dir()
    root = handle.rstrip("/")
    target = os.path.join(cache_dir,
                          hashlib.sha256(root.encode()).hexdigest()[:20])
    if os.path.isdir(target):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    matches = FileSystems.match([root + "/**"])[0].metadata_list
    if not matches:
        raise ModelLoadError(f"no files under module handle {handle}")
    staging = tempfile.mkdtemp(prefix=".partial-", dir=cache_dir)
    try:
        for meta in matches:
            relative = meta.path[len(root):].lstrip("/")
            if not relative or relative.endswith("/"):
                continue  # directory placeholder objects
            local = os.path.join(staging, *relative.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with FileSystems.open(meta.path) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race; use its copy
            if not os.path.isdir(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def downloaded_hub_module(handle: str) -> Optional[str]:
    """The directory tensorflow_hub's resolver returns for a URL handle it
    has already downloaded, or None (not downloaded yet, or a load format
    other than the default compressed one).

    By hand because tensorflow_hub looks in its cache only after importing
    TensorFlow (seconds and ~0.5 GB at every launch); this is its
    compressed-format cache path (`compressed_module_resolver._module_dir`:
    TFHUB_CACHE_DIR or <temp>/tfhub_modules, then the handle's sha1),
    checked against `hub.resolve` by a test."""
    if os.environ.get("TFHUB_MODEL_LOAD_FORMAT", "") not in (
            "", "AUTO", "COMPRESSED"):
        return None
    cache_dir = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "tfhub_modules")
    module_dir = os.path.join(
        cache_dir, hashlib.sha1(handle.encode("utf8")).hexdigest())
    # A download is renamed into place whole: a non-empty directory is done.
    if os.path.isdir(module_dir) and os.listdir(module_dir):
        return module_dir
    return None


def resolve_handle(handle: str, cache_dir: Optional[str] = None) -> str:
    """Module handle → local directory that tensorflow_hub can load."""
    if handle.startswith("file://"):
        handle = handle[len("file://"):]
    if is_beam_remote(handle):
        return copy_to_local_cache(handle, cache_dir)
    if is_url(handle):
        downloaded = downloaded_hub_module(handle)
        if downloaded:
            return downloaded
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow_hub as hub  # pylint: disable=import-outside-toplevel
        return hub.resolve(handle)
    if not os.path.isdir(handle):
        raise ModelLoadError(f"module directory not found: {handle}")
    return handle


def module_fingerprint(*module_dirs: Optional[str]) -> str:
    """Content hash of module directories (names and bytes of every file)."""
    digest = hashlib.sha256()
    for module_dir in module_dirs:
        if not module_dir:
            continue
        for root, dirs, files in os.walk(module_dir):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, module_dir).encode())
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()[:24]
