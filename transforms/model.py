"""Loading the TF-Hub module: handle → local directory → one inference function.

Handles:
  * a tfhub.dev / Kaggle URL — resolved by tensorflow_hub (its cache,
    TFHUB_CACHE_DIR);
  * a local directory;
  * a directory on any other Beam filesystem (gs://, s3://, ...) — copied
    with Beam's FileSystems into a local cache, then loaded from there.
    TensorFlow's own gs:// support has fixed endpoints and credentials of
    its own; Beam's filesystems are what the rest of the job already uses.

Formats:
  * TF1 Hub format (version 2 of the module): both signatures,
    `image_classification` and `image_feature_vector`, live in one graph.
    We prune one function that fetches both outputs, so one forward pass
    gives logits and the embedding.
  * TF2 SavedModel (versions 4–5): callable on images → logits. An optional
    second module (`embedding_handle`, e.g. the matching feature_vector
    module) provides the embedding.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from typing import Callable, Dict, Optional, Tuple

import numpy as np

_LOGGER = logging.getLogger(__name__)

IMAGE_SHAPE = (96, 96, 3)
CLASSIFICATION_SIGNATURE = "image_classification"
FEATURE_VECTOR_SIGNATURE = "image_feature_vector"

_LOADED: Dict[Tuple[str, Optional[str]], "ImageClassifier"] = {}
_LOAD_LOCK = threading.Lock()


class ModelLoadError(Exception):
    """The module handle cannot be resolved, loaded or used."""


def _import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_hub as hub  # pylint: disable=import-outside-toplevel
    return tf, hub


def is_url(handle: str) -> bool:
    return handle.startswith(("http://", "https://"))


def _is_beam_remote(handle: str) -> bool:
    return "://" in handle and not is_url(handle) and \
        not handle.startswith("file://")


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


def resolve_handle(handle: str, cache_dir: Optional[str] = None) -> str:
    """Module handle → local directory that tensorflow_hub can load."""
    if handle.startswith("file://"):
        handle = handle[len("file://"):]
    if _is_beam_remote(handle):
        return copy_to_local_cache(handle, cache_dir)
    if is_url(handle):
        _, hub = _import_tf()
        return hub.resolve(handle)
    if not os.path.isdir(handle):
        raise ModelLoadError(f"module directory not found: {handle}")
    return handle


class ImageClassifier:
    """One forward pass: images [B, 96, 96, 3] in [0, 1] → (logits [B, C],
    embeddings [B, D] or None)."""

    def __init__(self, handle: str, fn: Callable, num_classes: int,
                 embedding_dim: Optional[int], kind: str):
        self.handle = handle
        self._fn = fn
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.kind = kind  # "tf1-hub" or "tf2"

    def __call__(self, images: np.ndarray
                 ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return self._fn(images)


def _signature_tensor_names(loaded, signature: str) -> Tuple[str, str]:
    """(input `images` tensor name, output `default` tensor name) of a TF1
    Hub format signature; pruned signature graphs keep the original names."""
    sig = loaded.signatures[signature]
    # A signature's inputs are its feeds followed by the captured variables.
    feeds = sig.inputs[:len(sig.inputs) - len(sig.captured_inputs)]
    outputs = sig.structured_outputs
    if len(feeds) != 1 or "default" not in outputs:
        raise ModelLoadError(f"signature {signature!r} does not take one "
                             "`images` input and give a `default` output")
    return feeds[0].name, outputs["default"].name


def _tf1_classifier(handle: str, loaded) -> ImageClassifier:
    tf, _ = _import_tf()
    images_in, logits_out = _signature_tensor_names(
        loaded, CLASSIFICATION_SIGNATURE)
    features_in, features_out = _signature_tensor_names(
        loaded, FEATURE_VECTOR_SIGNATURE)
    if images_in != features_in:
        raise ModelLoadError("the two signatures take different inputs")
    graph = loaded.graph
    pruned = loaded.prune(
        feeds=[graph.get_tensor_by_name(images_in)],
        fetches=(graph.get_tensor_by_name(logits_out),
                 graph.get_tensor_by_name(features_out)))

    def run(images: np.ndarray):
        logits, features = pruned(tf.constant(images, dtype=tf.float32))
        return logits.numpy(), features.numpy()
    return _probe(handle, run, "tf1-hub")


def _tf2_callable(loaded) -> Callable:
    if callable(loaded):
        return loaded
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelLoadError("module is neither callable nor has a "
                             "serving_default signature")

    def call(images):
        outputs = signature(images)
        if len(outputs) != 1:
            raise ModelLoadError(
                f"serving_default has outputs {sorted(outputs)}; expected one")
        return next(iter(outputs.values()))
    return call


def _tf2_classifier(handle: str, loaded, embedding_loaded
                    ) -> ImageClassifier:
    tf, _ = _import_tf()
    classify = _tf2_callable(loaded)
    embed = _tf2_callable(embedding_loaded) if embedding_loaded else None

    def run(images: np.ndarray):
        batch = tf.constant(images, dtype=tf.float32)
        logits = classify(batch).numpy()
        return logits, (embed(batch).numpy() if embed else None)
    return _probe(handle, run, "tf2")


def _probe(handle: str, run: Callable, kind: str) -> ImageClassifier:
    """Run one blank image to learn and check the output shapes."""
    logits, features = run(np.zeros((1,) + IMAGE_SHAPE, np.float32))
    if logits.ndim != 2 or logits.shape[0] != 1:
        raise ModelLoadError(f"module output has shape {logits.shape}, "
                             "expected [batch, classes]")
    if features is not None and (features.ndim != 2 or
                                 features.shape[0] != 1):
        raise ModelLoadError(f"embedding has shape {features.shape}, "
                             "expected [batch, dims]")
    return ImageClassifier(handle, run, int(logits.shape[1]),
                           None if features is None else int(features.shape[1]),
                           kind)


def _load_uncached(handle: str, embedding_handle: Optional[str],
                   cache_dir: Optional[str]) -> ImageClassifier:
    _, hub = _import_tf()
    module_dir = resolve_handle(handle, cache_dir)
    _LOGGER.info("loading module %s from %s", handle, module_dir)
    try:
        loaded = hub.load(module_dir)
    except Exception as exc:
        raise ModelLoadError(f"cannot load module {handle}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc
    signatures = getattr(loaded, "signatures", {})
    if CLASSIFICATION_SIGNATURE in signatures and \
            FEATURE_VECTOR_SIGNATURE in signatures:
        if embedding_handle:
            _LOGGER.warning("module %s has its own feature vector; ignoring "
                            "embedding module %s", handle, embedding_handle)
        return _tf1_classifier(handle, loaded)
    embedding_loaded = None
    if embedding_handle:
        embedding_loaded = hub.load(resolve_handle(embedding_handle,
                                                   cache_dir))
    else:
        _LOGGER.warning("module %s gives logits only and no embedding module "
                        "was given: the embedding column will be null", handle)
    return _tf2_classifier(handle, loaded, embedding_loaded)


def load_classifier(handle: str, embedding_handle: Optional[str] = None,
                    cache_dir: Optional[str] = None
                    ) -> Tuple[ImageClassifier, bool]:
    """Load (or reuse) the module in this process.

    Returns (classifier, loaded_now): loaded_now is False when this process
    had already loaded it, e.g. during the launch-time checks of a local run.
    """
    key = (handle, embedding_handle)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key], False
        classifier = _load_uncached(handle, embedding_handle, cache_dir)
        _LOADED[key] = classifier
        return classifier, True
