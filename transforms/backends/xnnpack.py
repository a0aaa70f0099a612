"""The "xnnpack" backend: the module converted to TFLite, run by LiteRT's
interpreter with the XNNPACK delegate.

Launcher side (`prepare`): the module is converted once per machine (cached
by the module's content hash beside a record of its kind and of the parity
gate it passed) and staged with the job. Worker side (`load`): the staged
file is read (any Beam filesystem), checked against the hash the launcher
gated and run with LiteRT alone; TensorFlow is never imported there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Optional

import numpy as np

from transforms.backends.base import (ImageClassifier, ModelLoader,
                                      ModelLoadError, Prepared, probe)
from transforms.backends.handles import (default_cache_dir, is_beam_remote,
                                         module_fingerprint, resolve_handle)

NAME = "xnnpack"
_LOGGER = logging.getLogger(__name__)
_CONVERT_LOCK = threading.Lock()


def usable_cores() -> int:
    """The interpreter's threads: this process's share of the cores."""
    from transforms.cores import cores_per_process  # pylint: disable=import-outside-toplevel
    return cores_per_process()


class _TfliteRunner:
    """A LiteRT interpreter (XNNPACK delegate) as a batch function.

    Interpreters are not thread-safe; calls are serialised with a lock (the
    interpreter itself runs on `threads` threads)."""

    def __init__(self, model: bytes, threads: int):
        from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
        self._model = model  # the interpreter reads from this buffer
        self._interpreter = Interpreter(model_content=model,
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


def _read(path: str) -> bytes:
    if is_beam_remote(path):
        from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
        with FileSystems.open(path) as handle:
            return handle.read()
    with open(path[len("file://"):] if path.startswith("file://") else path,
              "rb") as handle:
        return handle.read()


def load(model_path: str, sha256: Optional[str] = None,
         threads: Optional[int] = None, kind: str = "tflite",
         handle: Optional[str] = None) -> ImageClassifier:
    """The converted model at `model_path` (local or any Beam filesystem),
    which must hash to `sha256` when given, on `threads` threads (default:
    the usable cores)."""
    try:
        model = _read(model_path)
    except Exception as exc:  # pylint: disable=broad-except
        raise ModelLoadError(f"cannot read converted model {model_path}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc
    if sha256 and hashlib.sha256(model).hexdigest() != sha256:
        raise ModelLoadError(f"converted model {model_path} is not the one "
                             "the launch checked (its hash differs)")
    return probe(handle or model_path,
                 _TfliteRunner(model, threads or usable_cores()), kind, NAME)


def convert_to_tflite(classifier: ImageClassifier) -> bytes:
    """A "tf" classifier's function as a float32 TFLite model."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [classifier.concrete_fn], classifier.trackables[0])
    return converter.convert()


def _write_atomically(path: str, data: bytes) -> None:
    partial = f"{path}.partial-{os.getpid()}-{threading.get_ident()}"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


class Conversion:
    """A converted model in the cache, with its record: the module's kind
    and, once a launch has checked it, the parity gate's result.

    The record names the converted file's hash, so a gate result never
    applies to a different file."""

    def __init__(self, base: str):
        self.name = os.path.basename(base)
        self.model_path = base + ".tflite"
        self.record_path = base + ".json"
        with open(self.model_path, "rb") as handle:
            self.sha256 = hashlib.sha256(handle.read()).hexdigest()
        with open(self.record_path, encoding="utf-8") as handle:
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
        _write_atomically(self.record_path,
                          json.dumps(self._record, indent=1).encode())


def convert(handle: str, embedding_handle: Optional[str] = None,
            cache_dir: Optional[str] = None) -> Conversion:
    """The module converted to TFLite, once per machine: cached under
    `cache_dir` by the module's content hash. TensorFlow is imported only
    when the cache has no conversion yet."""
    module_dirs = [resolve_handle(handle, cache_dir)]
    if embedding_handle:
        module_dirs.append(resolve_handle(embedding_handle, cache_dir))
    conversions = cache_dir or default_cache_dir()
    os.makedirs(conversions, exist_ok=True)
    base = os.path.join(conversions,
                        f"{NAME}-{module_fingerprint(*module_dirs)}")
    with _CONVERT_LOCK:
        if not (os.path.exists(base + ".tflite") and
                os.path.exists(base + ".json")):
            from transforms.backends import tf as tf_backend  # pylint: disable=import-outside-toplevel
            reference = tf_backend.prepare(handle, embedding_handle,
                                           cache_dir).local()
            _LOGGER.info("converting %s to TFLite for the %s backend",
                         handle, NAME)
            _write_atomically(base + ".tflite", convert_to_tflite(reference))
            _write_atomically(base + ".json", json.dumps(
                {"kind": reference.kind}).encode())
    return Conversion(base)


class PreparedConversion(Prepared):
    """A cached conversion: loaded locally from the cache, staged as a copy
    of the converted file and its record."""

    def __init__(self, conversion: Conversion, handle: str,
                 threads: Optional[int]):
        self.conversion = conversion
        self._handle = handle
        self._threads = threads
        super().__init__(self._loader(conversion.model_path))

    def _loader(self, model_path: str) -> ModelLoader:
        return ModelLoader.of(NAME, __name__, model_path=model_path,
                              sha256=self.conversion.sha256,
                              threads=self._threads,
                              kind=self.conversion.kind, handle=self._handle)

    @property
    def gate(self) -> Optional[dict]:
        return self.conversion.parity

    def record_gate(self, result: dict) -> None:
        self.conversion.record_parity(result)

    def stage(self, location: str) -> ModelLoader:
        from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
        staged = FileSystems.join(location, self.conversion.name)
        for source, suffix in ((self.conversion.model_path, ".tflite"),
                               (self.conversion.record_path, ".json")):
            with open(source, "rb") as src, \
                    FileSystems.create(staged + suffix) as dst:
                dst.write(src.read())
        _LOGGER.info("staged the %s model for the workers at %s.tflite",
                     NAME, staged)
        return self._loader(staged + ".tflite")


def prepare(handle: str, embedding_handle: Optional[str] = None,
            cache_dir: Optional[str] = None, threads: Optional[int] = None
            ) -> PreparedConversion:
    """Convert (or find the cached conversion of) the module."""
    return PreparedConversion(convert(handle, embedding_handle, cache_dir),
                              handle, threads)
