"""Step 3: batches of decoded images → logits + embedding → top-k labels.

`ClassifierHandler` is a RunInference `ModelHandler` for pre-batched
input: its elements are DecodedBatches (a chunk's images are decoded
straight into the array the model takes). The chunk DoFn
(transforms/label_chunks.py) calls it per batch, with the model loaded once
per worker process through Beam's `Shared` (`SharedClassifier`), as
RunInference does; it does not run RunInference itself, because a chunk is
labeled and committed in one call. Beam's own TFModelHandler* cannot load
TF1 Hub format modules; each backend's loading lives in transforms/backends/.

Per batch, one forward pass gives both logits and embeddings; softmax, top-k
and the label lookup are vectorised over the batch, so nothing per image
touches the model or builds Python lists of 1001 scores.
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import time
from typing import (Any, Dict, Iterable, NamedTuple, Optional, Sequence,
                    Tuple)

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.utils.shared import Shared

from transforms.imaging import DecodedBatch
from transforms.errors import METRICS_NAMESPACE, redact
from transforms.backends import ImageClassifier, ModelLoader
from transforms.schema import utc_now

_LOGGER = logging.getLogger(__name__)

#: RunInference's own model-load metric (a distribution of load times in
#: ms): its count is the number of model loads.
MODEL_LOAD_METRIC = "load_model_latency_milli_secs"


class Classifications(NamedTuple):
    """The model's answers for a batch of images, one row per image."""
    top_k_indices: np.ndarray        # int32 [n, k], best first
    top_k_labels: np.ndarray         # str (object) [n, k]
    top_k_scores: np.ndarray         # float32 [n, k], softmax probabilities
    embeddings: Optional[np.ndarray]  # float32 [n, 1280], or None
    labeled_at: datetime.datetime    # when the batch was classified (UTC)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices [B, k] and values [B, k] of the k largest per row, descending;
    ties go to the lower index, as a stable sort would."""
    k = min(k, probabilities.shape[1])
    candidates = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(probabilities, candidates, axis=1)
    order = np.lexsort((candidates, -values), axis=1)
    indices = np.take_along_axis(candidates, order, axis=1)
    return indices.astype(np.int32), np.take_along_axis(probabilities,
                                                        indices, axis=1)


def classify_batch(classifier: ImageClassifier, pixels: np.ndarray,
                   labels: np.ndarray, k: int) -> Classifications:
    """[n, 96, 96, 3] float32 → Classifications (one forward pass)."""
    logits, embeddings = classifier(pixels)
    probabilities = softmax(logits.astype(np.float32))
    indices, scores = top_k(probabilities, k)
    return Classifications(indices, labels[indices],  # vectorised lookup
                           scores.astype(np.float32), embeddings, utc_now())


class BackendParity(NamedTuple):
    """How far a candidate backend is from the TF reference on some images.
    Outputs of another shape (classes, embedding width, an embedding
    missing on one side) are infinitely far."""
    images: int
    top1_agreement: float      # fraction of images with the same top-1
    max_prob_delta: float      # max |Δ softmax probability|
    max_embedding_delta: float  # max |Δ embedding| (0 without embeddings)

    def passes(self, min_agreement: float = 0.995,
               max_prob_delta: float = 1e-3) -> bool:
        return (self.top1_agreement >= min_agreement and
                self.max_prob_delta <= max_prob_delta and
                math.isfinite(self.max_embedding_delta))


def _max_delta(reference: Optional[np.ndarray],
               candidate: Optional[np.ndarray]) -> float:
    if reference is None and candidate is None:
        return 0.0
    if reference is None or candidate is None or \
            reference.shape != candidate.shape:
        return math.inf
    return float(np.abs(reference - candidate).max())


def backend_parity(reference: ImageClassifier, candidate: ImageClassifier,
                   pixels: np.ndarray, batch_size: int = 64) -> BackendParity:
    """Compare two backends' outputs on the same preprocessed images."""
    agree, prob_delta, embedding_delta = 0, 0.0, 0.0
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start:start + batch_size]
        ref_logits, ref_embedding = reference(batch)
        cand_logits, cand_embedding = candidate(batch)
        ref_probs, cand_probs = softmax(ref_logits), softmax(cand_logits)
        if ref_probs.shape == cand_probs.shape:
            agree += int((ref_probs.argmax(1) == cand_probs.argmax(1)).sum())
        prob_delta = max(prob_delta, _max_delta(ref_probs, cand_probs))
        embedding_delta = max(embedding_delta,
                              _max_delta(ref_embedding, cand_embedding))
    return BackendParity(len(pixels), agree / max(1, len(pixels)),
                         prob_delta, embedding_delta)


class ClassifierHandler(ModelHandler[DecodedBatch, PredictionResult,
                                     ImageClassifier]):
    """RunInference handler for an image classifier of any backend.

    `loader` says what to load (a backend's module and its options, see
    transforms/backends/); the handler loads it once per process. Its
    examples are images, and its input comes pre-batched: each element is a
    DecodedBatch (a chunk's images decoded straight into the array the
    model takes, see transforms/label_chunks.py), handed to `run_inference`
    as one batch, one ready-made array per model call. Yields one
    PredictionResult(example=DecodedBatch.facts,
    inference=Classifications, model_id=model_id) per batch.

    Loads are counted by RunInference itself: its distribution
    MODEL_LOAD_METRIC has one entry per load.
    """

    def __init__(self, loader: ModelLoader, labels: Sequence[str], *,
                 model_id: str, top_k: int = 5):
        super().__init__()
        self.loader = loader
        self.backend = loader.backend
        self._model_id = redact(model_id)  # as written to Parquet and logs
        self._labels = tuple(labels)
        self._label_array = np.asarray(self._labels, dtype=object)
        self._top_k = top_k

    @property
    def label_array(self) -> np.ndarray:
        return self._label_array

    def load_model(self) -> ImageClassifier:
        """Called by RunInference through Beam's Shared: once per process."""
        classifier, loaded_now = self.loader.load()
        _LOGGER.info("model %s %s in process %d (%s backend)", self._model_id,
                     "loaded" if loaded_now else "reused from the launch "
                     "checks", os.getpid(), self.backend)
        if classifier.num_classes != len(self._labels):
            raise ValueError(
                f"module has {classifier.num_classes} classes but the label "
                f"file has {len(self._labels)} lines")
        return classifier

    def should_skip_batching(self) -> bool:
        # Elements are DecodedBatches already (the Beam API's "pre-batched"
        # input, as with_no_batching() gives).
        return True

    def run_inference(self, batch: DecodedBatch, model: ImageClassifier,
                      inference_args: Optional[Dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        # The example keeps the files' facts, not the pixels: downstream
        # needs no pixels, and Beam would pickle them to sample sizes.
        return [PredictionResult(batch.facts, classify_batch(
            model, batch.pixels, self._label_array, self._top_k),
            self._model_id)]

    def get_num_bytes(self, batch: DecodedBatch) -> int:
        # The default pickles the whole batch just to measure it.
        return batch.pixels.nbytes

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


class SharedClassifier:
    """The handler's classifier once per worker process through Beam's
    Shared, for DoFns that call the model themselves (not via RunInference).
    The load is counted in RunInference's own load metric, as RunInference
    does it: DoFn.setup keeps no metrics, so `report_load` (call it when
    processing) records a load made in `acquire` (call it in setup)."""

    def __init__(self, handler: ClassifierHandler):
        self._handler = handler
        self._shared = Shared()
        self._unreported_ms: Optional[int] = None

    def acquire(self) -> ImageClassifier:
        def load() -> ImageClassifier:
            started = time.monotonic()
            classifier = self._handler.load_model()
            self._unreported_ms = int(1000 * (time.monotonic() - started))
            return classifier
        return self._shared.acquire(load, tag=repr(self._handler.loader))

    def report_load(self) -> None:
        if self._unreported_ms is not None:
            Metrics.distribution(METRICS_NAMESPACE, MODEL_LOAD_METRIC).update(
                self._unreported_ms)
            self._unreported_ms = None
