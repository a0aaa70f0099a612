"""Inference backends, one module each, and their registry.

A backend module gives:
  * `NAME`, the name written in the `backend` column;
  * `load(**options) -> ImageClassifier`, what a worker process calls (via a
    `ModelLoader`, which names the module and the options);
  * `prepare(handle, embedding_handle, cache_dir, threads) -> Prepared`,
    what the launcher calls: convert or check the module once per job and
    stage what workers need.

`auto` is not a backend: it is the launch-time policy of trying AUTO_ORDER
in turn (pipeline/checks.py), each candidate gated against REFERENCE.
Nothing here imports TensorFlow or LiteRT: each backend imports its runtime
when it loads.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Optional, Tuple

from transforms.backends.base import (IMAGE_SHAPE, ImageClassifier,
                                      ModelLoader, ModelLoadError, Prepared)

__all__ = ["AUTO", "AUTO_ORDER", "BACKENDS", "IMAGE_SHAPE", "ImageClassifier",
           "ModelLoadError", "ModelLoader", "Prepared", "REFERENCE", "choices",
           "backend_module", "load_classifier", "prepare", "register"]

#: Backend name → module. Plugins add theirs with `register`.
BACKENDS: Dict[str, str] = {
    "tf": "transforms.backends.tf",
    "xnnpack": "transforms.backends.xnnpack",
}
#: The backend every other one must match (the parity gate) and the one
#: `auto` falls back to.
REFERENCE = "tf"
AUTO = "auto"
#: What `auto` tries, first to pass its gate wins.
AUTO_ORDER = ("xnnpack", REFERENCE)


def register(name: str, module: str) -> None:
    """Add a backend module under `name`."""
    BACKENDS[name] = module


def choices() -> Tuple[str, ...]:
    """The --backend choices: the policy first, then every backend."""
    return (AUTO, *BACKENDS)


def backend_module(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ModelLoadError(f"unknown backend {name!r}; choose from "
                             f"{', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def prepare(name: str, handle: str, embedding_handle: Optional[str] = None,
            cache_dir: Optional[str] = None, threads: Optional[int] = None
            ) -> Prepared:
    """The launcher's side of backend `name` for this module."""
    return backend_module(name).prepare(handle, embedding_handle, cache_dir,
                                        threads)


def load_classifier(handle: str, embedding_handle: Optional[str] = None,
                    cache_dir: Optional[str] = None, backend: str = REFERENCE,
                    threads: Optional[int] = None
                    ) -> Tuple[ImageClassifier, bool]:
    """Load (or reuse) the module in this process for `backend`, without
    staging or gating (tools and tests). Returns (classifier, loaded_now)."""
    return prepare(backend, handle, embedding_handle, cache_dir,
                   threads).local.load()
