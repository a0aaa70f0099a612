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
import json
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

BACKENDS = ("tf", "xnnpack")

_LOADED: Dict[Tuple[str, Optional[str], str], "ImageClassifier"] = {}
_LOAD_LOCK = threading.RLock()  # re-entrant: xnnpack loads the TF module


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
    embeddings [B, D] or None).

    `concrete_fn` is the TF function behind a "tf" backend classifier
    (images → tuple of outputs); other backends are converted from it.
    """

    def __init__(self, handle: str, fn: Callable, num_classes: int,
                 embedding_dim: Optional[int], kind: str,
                 backend: str = "tf", concrete_fn=None, trackables=(),
                 conversion: Optional["Conversion"] = None):
        self.handle = handle
        self._fn = fn
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.kind = kind  # "tf1-hub" or "tf2"
        self.backend = backend
        self.concrete_fn = concrete_fn
        self.trackables = trackables  # keep the loaded modules alive
        self.conversion = conversion  # converted backends: the cached file

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


def _tf1_concrete_fn(loaded):
    """The TF1 Hub module's two signatures, pruned into one function."""
    images_in, logits_out = _signature_tensor_names(
        loaded, CLASSIFICATION_SIGNATURE)
    features_in, features_out = _signature_tensor_names(
        loaded, FEATURE_VECTOR_SIGNATURE)
    if images_in != features_in:
        raise ModelLoadError("the two signatures take different inputs")
    graph = loaded.graph
    return loaded.prune(
        feeds=[graph.get_tensor_by_name(images_in)],
        fetches=(graph.get_tensor_by_name(logits_out),
                 graph.get_tensor_by_name(features_out)))


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


def _tf2_concrete_fn(loaded, embedding_loaded):
    """A TF2 classifier (+ optional feature-vector module) as one function."""
    tf, _ = _import_tf()
    classify = _tf2_callable(loaded)
    embed = _tf2_callable(embedding_loaded) if embedding_loaded else None

    @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE],
                                                tf.float32)])
    def both(images):
        if embed is None:
            return (classify(images),)
        return classify(images), embed(images)
    return both.get_concrete_function()


def _tf_classifier(handle: str, concrete_fn, kind: str, trackables
                   ) -> ImageClassifier:
    tf, _ = _import_tf()

    def run(images: np.ndarray):
        outputs = concrete_fn(tf.constant(images, dtype=tf.float32))
        logits = outputs[0].numpy()
        return logits, (outputs[1].numpy() if len(outputs) > 1 else None)
    return _probe(handle, run, kind, concrete_fn=concrete_fn,
                  trackables=trackables)


def _probe(handle: str, run: Callable, kind: str, **extra
           ) -> ImageClassifier:
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
                           kind, **extra)


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
        return _tf_classifier(handle, _tf1_concrete_fn(loaded), "tf1-hub",
                              (loaded,))
    embedding_loaded = None
    if embedding_handle:
        embedding_loaded = hub.load(resolve_handle(embedding_handle,
                                                   cache_dir))
    else:
        _LOGGER.warning("module %s gives logits only and no embedding module "
                        "was given: the embedding column will be null", handle)
    return _tf_classifier(handle, _tf2_concrete_fn(loaded, embedding_loaded),
                          "tf2", (loaded, embedding_loaded))


class _TfliteRunner:
    """A TFLite interpreter (XNNPACK delegate) as a batch function.

    Interpreters are not thread-safe; calls are serialised with a lock (the
    interpreter itself runs on `threads` threads)."""

    def __init__(self, model_path: str, threads: int):
        try:  # LiteRT: the interpreter without importing all of TF
            from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
        except ImportError:
            tf, _ = _import_tf()
            Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
        self._interpreter = Interpreter(model_path=model_path,
                                        num_threads=threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        # Outputs are named "...:0" (logits), "...:1" (embedding), in the
        # order of the converted function's results.
        details = sorted(self._interpreter.get_output_details(),
                         key=lambda d: int(d["name"].rsplit(":", 1)[-1])
                         if ":" in d["name"] else 0)
        self._outputs = [d["index"] for d in details]
        self._batch = None
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray):
        images = np.ascontiguousarray(images, dtype=np.float32)
        with self._lock:
            if images.shape[0] != self._batch:
                self._interpreter.resize_tensor_input(self._input,
                                                      list(images.shape))
                self._interpreter.allocate_tensors()
                self._batch = images.shape[0]
            self._interpreter.set_tensor(self._input, images)
            self._interpreter.invoke()
            outputs = [self._interpreter.get_tensor(i).copy()
                       for i in self._outputs]
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)


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


def convert_to_tflite(classifier: ImageClassifier) -> bytes:
    """The classifier's TF function as a float32 TFLite model."""
    tf, _ = _import_tf()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [classifier.concrete_fn], classifier.trackables[0])
    return converter.convert()


class Conversion:
    """A converted model in the cache, with its record: the module's kind
    and, once a launch has checked it, the parity gate's result.

    The record names the converted file's hash, so a gate result never
    applies to a different file."""

    def __init__(self, base: str):
        self.model_path = base + ".tflite"
        self._record_path = base + ".json"
        with open(self.model_path, "rb") as handle:
            self.sha256 = hashlib.sha256(handle.read()).hexdigest()
        with open(self._record_path, encoding="utf-8") as handle:
            self._record = json.load(handle)

    @property
    def kind(self) -> str:
        return self._record["kind"]

    @property
    def parity(self) -> Optional[dict]:
        """The recorded gate result for this file, or None."""
        parity = self._record.get("parity")
        if parity and parity.get("tflite_sha256") == self.sha256:
            return parity
        return None

    def record_parity(self, result: dict) -> None:
        """Keep a passed gate result beside the converted file."""
        self._record["parity"] = {**result, "tflite_sha256": self.sha256}
        _write_atomically(self._record_path,
                          json.dumps(self._record, indent=1).encode())


def _load_xnnpack(handle: str, embedding_handle: Optional[str],
                  cache_dir: Optional[str], threads: int) -> ImageClassifier:
    """TFLite + XNNPACK, converted from the TF module once per machine: the
    converted model is cached by the module's content hash, so later
    workers skip loading the module with TF altogether."""
    module_dirs = [resolve_handle(handle, cache_dir)]
    if embedding_handle:
        module_dirs.append(resolve_handle(embedding_handle, cache_dir))
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    base = os.path.join(cache_dir, f"xnnpack-{module_fingerprint(*module_dirs)}")
    if not (os.path.exists(base + ".tflite") and os.path.exists(base + ".json")):
        reference, _ = load_classifier(handle, embedding_handle, cache_dir)
        _LOGGER.info("converting %s to TFLite for the xnnpack backend", handle)
        _write_atomically(base + ".tflite", convert_to_tflite(reference))
        _write_atomically(base + ".json", json.dumps(
            {"kind": reference.kind}).encode())
    conversion = Conversion(base)
    return _probe(handle, _TfliteRunner(conversion.model_path, threads),
                  conversion.kind, backend="xnnpack", conversion=conversion)


def _write_atomically(path: str, data: bytes) -> None:
    partial = f"{path}.partial-{os.getpid()}-{threading.get_ident()}"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


def load_classifier(handle: str, embedding_handle: Optional[str] = None,
                    cache_dir: Optional[str] = None, backend: str = "tf",
                    threads: Optional[int] = None
                    ) -> Tuple[ImageClassifier, bool]:
    """Load (or reuse) the module in this process, for `backend`:
    "tf" (TensorFlow, the default) or "xnnpack" (TFLite with XNNPACK).

    Returns (classifier, loaded_now): loaded_now is False when this process
    had already loaded it, e.g. during the launch-time checks of a local run.
    """
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; choose from "
                             f"{', '.join(BACKENDS)}")
    key = (handle, embedding_handle, backend)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key], False
        if backend == "xnnpack":
            classifier = _load_xnnpack(handle, embedding_handle, cache_dir,
                                       threads or _usable_cores())
        else:
            classifier = _load_uncached(handle, embedding_handle, cache_dir)
        _LOADED[key] = classifier
        return classifier, True


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
