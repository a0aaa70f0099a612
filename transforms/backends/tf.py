"""The "tf" backend: the TF-Hub module run by TensorFlow (the reference every
other backend is gated against).

Formats:
  * TF1 Hub format (version 2 of the module): signatures
    `image_classification` and `image_feature_vector` over one set of
    variables. When both take the same input tensor, one pruned function
    fetches both outputs (one forward pass gives logits and the embedding);
    otherwise the two signatures are called one after the other.
  * TF2 SavedModel (versions 4–5): callable on images → logits. An optional
    second module (`embedding_handle`, e.g. the matching feature_vector
    module) provides the embedding.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Tuple

import numpy as np

from transforms.backends.base import (IMAGE_SHAPE, ImageClassifier,
                                      ModelLoader, ModelLoadError, Prepared,
                                      probe)
from transforms.backends.handles import resolve_handle
from transforms.native_log import quiet_tensorflow_import

NAME = "tf"
CLASSIFICATION_SIGNATURE = "image_classification"
FEATURE_VECTOR_SIGNATURE = "image_feature_vector"

_LOGGER = logging.getLogger(__name__)


def _import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_tensorflow_import()  # in worker processes too
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_hub as hub  # pylint: disable=import-outside-toplevel
    _share_cores(tf)
    return tf, hub


def _share_cores(tf) -> None:
    """TF's thread pools sized to this process's share of the cores; only
    possible before TF's runtime starts (later calls keep what it has)."""
    from transforms.cores import cores_per_process  # pylint: disable=import-outside-toplevel
    try:
        if tf.config.threading.get_intra_op_parallelism_threads() == 0:
            tf.config.threading.set_intra_op_parallelism_threads(
                cores_per_process())
            tf.config.threading.set_inter_op_parallelism_threads(
                cores_per_process())
    except RuntimeError:
        pass  # the runtime is already initialized


def _signature_io(loaded, signature: str) -> Tuple[str, str, str]:
    """(input keyword, input tensor name, `default` output tensor name) of a
    TF1 Hub format signature; pruned signature graphs keep the names."""
    sig = loaded.signatures[signature]
    keywords = list(sig.structured_input_signature[1])
    # A signature's inputs are its feeds followed by the captured variables.
    feeds = sig.inputs[:len(sig.inputs) - len(sig.captured_inputs)]
    outputs = sig.structured_outputs
    if len(feeds) != 1 or len(keywords) != 1 or "default" not in outputs:
        raise ModelLoadError(f"signature {signature!r} does not take one "
                             "`images` input and give a `default` output")
    return keywords[0], feeds[0].name, outputs["default"].name


def _images_spec(tf):
    return tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)


def _tf1_concrete_fn(loaded, handle: str):
    """The TF1 Hub module's two signatures as one function: pruned into one
    pass when they share their input, else the two signatures in turn."""
    tf, _ = _import_tf()
    classify_key, images_in, logits_out = _signature_io(
        loaded, CLASSIFICATION_SIGNATURE)
    embed_key, features_in, features_out = _signature_io(
        loaded, FEATURE_VECTOR_SIGNATURE)
    if images_in == features_in:
        graph = loaded.graph
        try:
            return loaded.prune(
                feeds=[graph.get_tensor_by_name(images_in)],
                fetches=(graph.get_tensor_by_name(logits_out),
                         graph.get_tensor_by_name(features_out)))
        except Exception as exc:  # pylint: disable=broad-except
            reason = ("pruning both outputs into one function failed: "
                      f"{' '.join(str(exc).split())[:200]}")
    else:
        reason = (f"the signatures take different input tensors "
                  f"({images_in}, {features_in})")
    _LOGGER.warning("module %s: %s; calling both signatures (two passes per "
                    "batch)", handle, reason)
    classify = loaded.signatures[CLASSIFICATION_SIGNATURE]
    embed = loaded.signatures[FEATURE_VECTOR_SIGNATURE]

    @tf.function(input_signature=[_images_spec(tf)])
    def both(images):
        return (classify(**{classify_key: images})["default"],
                embed(**{embed_key: images})["default"])
    return both.get_concrete_function()


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

    @tf.function(input_signature=[_images_spec(tf)])
    def both(images):
        if embed is None:
            return (classify(images),)
        return classify(images), embed(images)
    return both.get_concrete_function()


def _classifier(handle: str, concrete_fn, kind: str, trackables
                ) -> ImageClassifier:
    tf, _ = _import_tf()

    def run(images: np.ndarray):
        outputs = concrete_fn(tf.constant(images, dtype=tf.float32))
        logits = outputs[0].numpy()
        return logits, (outputs[1].numpy() if len(outputs) > 1 else None)
    return probe(handle, run, kind, NAME, concrete_fn=concrete_fn,
                 trackables=trackables)


def _hub_load(hub, handle: str, module_dir: str):
    try:
        # For TF1 Hub format modules hub.load picks the meta graph with the
        # empty tag set (inference), not the {"train"} one.
        return hub.load(module_dir)
    except Exception as exc:
        raise ModelLoadError(f"cannot load module {handle}: "
                             f"{' '.join(str(exc).split())[:300]}") from exc


def load(handle: str, embedding_handle: Optional[str] = None,
         cache_dir: Optional[str] = None) -> ImageClassifier:
    """The module at `handle` (+ a feature-vector module for TF2
    classifiers without one) as a TensorFlow classifier."""
    _, hub = _import_tf()
    module_dir = resolve_handle(handle, cache_dir)
    _LOGGER.info("loading module %s from %s", handle, module_dir)
    loaded = _hub_load(hub, handle, module_dir)
    signatures = getattr(loaded, "signatures", {})
    if CLASSIFICATION_SIGNATURE in signatures and \
            FEATURE_VECTOR_SIGNATURE in signatures:
        if embedding_handle:
            _LOGGER.warning("module %s has its own feature vector; ignoring "
                            "embedding module %s", handle, embedding_handle)
        return _classifier(handle, _tf1_concrete_fn(loaded, handle),
                           "tf1-hub", (loaded,))
    embedding_loaded = None
    if embedding_handle:
        embedding_loaded = _hub_load(
            hub, embedding_handle, resolve_handle(embedding_handle, cache_dir))
    else:
        _LOGGER.warning("module %s gives logits only and no embedding module "
                        "was given: the embedding column will be null", handle)
    return _classifier(handle, _tf2_concrete_fn(loaded, embedding_loaded),
                       "tf2", (loaded, embedding_loaded))


def prepare(handle: str, embedding_handle: Optional[str] = None,
            cache_dir: Optional[str] = None, threads: Optional[int] = None
            ) -> Prepared:
    """Workers load the module itself: nothing to convert or stage."""
    del threads  # TensorFlow sizes its own thread pools
    return Prepared(ModelLoader.of(NAME, __name__, handle=handle,
                                   embedding_handle=embedding_handle,
                                   cache_dir=cache_dir))
