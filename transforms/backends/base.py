"""What every backend gives: an `ImageClassifier`, one forward pass per batch.

No TensorFlow, LiteRT or Beam import here: workers of any backend import it.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

IMAGE_SHAPE = (96, 96, 3)


class ModelLoadError(Exception):
    """The module or converted model cannot be resolved, loaded or used."""


class ImageClassifier:
    """One forward pass: images [B, 96, 96, 3] in [0, 1] → (logits [B, C],
    embeddings [B, D] or None).

    `concrete_fn` and `trackables` are the TF function and the loaded modules
    behind a "tf" classifier (other backends are converted from them); None
    for the others.
    """

    def __init__(self, handle: str, fn: Callable, num_classes: int,
                 embedding_dim: Optional[int], kind: str, backend: str,
                 concrete_fn: Any = None, trackables: Sequence[Any] = ()):
        self.handle = handle
        self._fn = fn
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.kind = kind  # "tf1-hub", "tf2", or the backend's own
        self.backend = backend
        self.concrete_fn = concrete_fn
        self.trackables = tuple(trackables)  # keep the loaded modules alive

    def __call__(self, images: np.ndarray
                 ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return self._fn(images)


def probe(handle: str, run: Callable, kind: str, backend: str, **extra: Any
          ) -> ImageClassifier:
    """Run one blank image through `run` to learn and check the output
    shapes; the classifier that calls `run`."""
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
                           kind, backend, **extra)


_LOADED: Dict["ModelLoader", ImageClassifier] = {}
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelLoader:
    """What a worker needs to load the classifier: the backend's name (as
    written in the `backend` column), its module and the keyword arguments
    of the module's `load`. Picklable, and loaded once per process: a local
    run's workers reuse the copy its launch checks loaded."""
    backend: str
    module: str
    options: Tuple[Tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, backend: str, module: str, **options: Any) -> "ModelLoader":
        return cls(backend, module, tuple(sorted(options.items())))

    def load(self) -> Tuple[ImageClassifier, bool]:
        """(classifier, loaded_now): loaded_now is False when this process
        already holds it."""
        with _LOAD_LOCK:
            if self in _LOADED:
                return _LOADED[self], False
            backend = importlib.import_module(self.module)
            classifier = backend.load(**dict(self.options))
            _LOADED[self] = classifier
            return classifier, True

    def forget(self) -> None:
        """Drop this process's copy (e.g. a reference only the launch
        checks needed)."""
        with _LOAD_LOCK:
            _LOADED.pop(self, None)

    def __call__(self) -> ImageClassifier:
        return self.load()[0]


class Prepared:
    """A backend made ready by the launcher: `local` loads it in the
    launching process (for the launch checks), `stage` copies what workers
    need with the job and gives their loader. Backends that need nothing
    staged and no gate (the reference) use this class as it is."""

    def __init__(self, local: ModelLoader):
        self.local = local

    @property
    def gate(self) -> Optional[dict]:
        """A parity gate result recorded for exactly this model, or None."""
        return None

    def record_gate(self, result: dict) -> None:
        """Keep a passed gate result with the prepared model."""

    def stage(self, location: str) -> ModelLoader:
        """Stage the model under `location` (any Beam filesystem); the
        loader workers use."""
        del location  # nothing to stage: workers load the module itself
        return self.local
