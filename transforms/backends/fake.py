"""The "fake" backend: a small seeded NumPy classifier with the real ones'
interface, for tests that need a model but not TensorFlow. Not offered on
the command line; its answers are meaningless but depend on the pixels."""
from __future__ import annotations

from typing import Optional

import numpy as np

from transforms.backends.base import (ImageClassifier, ModelLoader, Prepared,
                                      probe)

NAME = "fake"
_POOL = 24  # pixels per side of each averaged block: 96 / 24 = 4 blocks

#: Classifiers this backend has loaded in this process.
LOADS = []


def load(num_classes: int = 1001, embedding_dim: Optional[int] = 8,
         seed: int = 0) -> ImageClassifier:
    """Images → 4×4 block means → tanh(linear) embedding → linear logits."""
    rng = np.random.default_rng(seed)
    inputs = (96 // _POOL) ** 2 * 3
    width = embedding_dim or 8
    to_embedding = rng.normal(0, 1 / np.sqrt(inputs),
                              (inputs, width)).astype(np.float32)
    to_logits = rng.normal(0, 1, (width, num_classes)).astype(np.float32)

    def run(images: np.ndarray):
        blocks = images.reshape(len(images), 96 // _POOL, _POOL,
                                96 // _POOL, _POOL, 3).mean(axis=(2, 4))
        embedding = np.tanh(4 * (blocks.reshape(len(images), -1) - 0.5)
                            @ to_embedding)
        return embedding @ to_logits, (embedding if embedding_dim else None)
    classifier = probe(NAME, run, NAME, NAME)
    LOADS.append(classifier)
    return classifier


def loader(**options) -> ModelLoader:
    return ModelLoader.of(NAME, __name__, **options)


def prepare(handle: str, embedding_handle: Optional[str] = None,
            cache_dir: Optional[str] = None, threads: Optional[int] = None
            ) -> Prepared:
    """The fake model ignores the module: nothing to convert or stage."""
    del handle, embedding_handle, cache_dir, threads
    return Prepared(loader())
