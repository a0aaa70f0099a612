"""Step 3: batches of decoded images → logits + embedding → top-k labels.

`HubClassifierHandler` is a RunInference `ModelHandler` for pre-batched
input: its elements are DecodedBatches (images are batched before decoding,
in transforms/decode.py, so that they are decoded straight into the array
the model takes), and RunInference skips its own batching.
RunInference loads the module once per worker process through Beam's
`Shared`, so every thread of a worker uses the same copy. Beam's own
TFModelHandler* cannot load TF1 Hub format modules; loading lives in
transforms/model.py.

Per batch, one forward pass gives both logits and embeddings; softmax, top-k
and the label lookup are vectorised over the batch, so nothing per image
touches the model or builds Python lists of 1001 scores.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import (Any, Dict, Iterable, NamedTuple, Optional, Sequence,
                    Tuple)

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (ModelHandler, PredictionResult,
                                           RunInference)

from transforms.decode import DecodedBatch
from transforms.errors import (ERRORS_TAG, METRICS_NAMESPACE, STAGE_CLASSIFY,
                               error_record, redact)
from transforms.model import ImageClassifier, load_classifier
from transforms.schema import utc_now

_LOGGER = logging.getLogger(__name__)

# Module loads in this process not yet counted in the `module_loads` metric.
_UNREPORTED_LOADS: list = []


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
    """How far a candidate backend is from the TF reference on some images."""
    images: int
    top1_agreement: float      # fraction of images with the same top-1
    max_prob_delta: float      # max |Δ softmax probability|
    max_embedding_delta: float  # max |Δ embedding| (0 without embeddings)

    def passes(self, min_agreement: float = 0.995,
               max_prob_delta: float = 1e-3) -> bool:
        return (self.top1_agreement >= min_agreement and
                self.max_prob_delta <= max_prob_delta)


def backend_parity(reference: ImageClassifier, candidate: ImageClassifier,
                   pixels: np.ndarray, batch_size: int = 64) -> BackendParity:
    """Compare two backends' outputs on the same preprocessed images."""
    agree, prob_delta, embedding_delta = 0, 0.0, 0.0
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start:start + batch_size]
        ref_logits, ref_embedding = reference(batch)
        cand_logits, cand_embedding = candidate(batch)
        ref_probs, cand_probs = softmax(ref_logits), softmax(cand_logits)
        agree += int((ref_probs.argmax(1) == cand_probs.argmax(1)).sum())
        prob_delta = max(prob_delta,
                         float(np.abs(ref_probs - cand_probs).max()))
        if ref_embedding is not None and cand_embedding is not None:
            embedding_delta = max(embedding_delta, float(
                np.abs(ref_embedding - cand_embedding).max()))
    return BackendParity(len(pixels), agree / max(1, len(pixels)),
                         prob_delta, embedding_delta)


class HubClassifierHandler(ModelHandler[DecodedBatch, PredictionResult,
                                        ImageClassifier]):
    """RunInference handler for the TF-Hub MobileNet V2 classifier.

    Its examples are images, and its input comes pre-batched: each element
    is a DecodedBatch (batched before decoding, see transforms/decode.py),
    which RunInference hands to `run_inference` as one batch, one
    ready-made array per model call. Yields one
    PredictionResult(example=ImageFacts, inference=Classifications,
    model_id=handle) per batch.
    """

    def __init__(self, model: str, labels: Sequence[str], *, top_k: int = 5,
                 embedding_model: Optional[str] = None,
                 model_cache_dir: Optional[str] = None, backend: str = "tf",
                 inference_threads: Optional[int] = None):
        super().__init__()
        self._model = model
        self._model_id = redact(model)  # as written to Parquet and logs
        self._embedding_model = embedding_model
        self._labels = tuple(labels)
        self._label_array = np.asarray(self._labels, dtype=object)
        self._top_k = top_k
        self._model_cache_dir = model_cache_dir
        self.backend = backend
        self._inference_threads = inference_threads

    def load_model(self) -> ImageClassifier:
        """Called by RunInference through Beam's Shared: once per process."""
        classifier, loaded_now = load_classifier(
            self._model, self._embedding_model, self._model_cache_dir,
            self.backend, self._inference_threads)
        _LOGGER.info("module %s %s in process %d (%s backend)", self._model_id,
                     "loaded" if loaded_now else "reused from the launch "
                     "check", os.getpid(), self.backend)
        # Counted per process holding a copy (a local run's launch check and
        # its in-process runner share one). Loading runs in DoFn.setup,
        # where Beam keeps no metrics: the first batch reports it.
        _UNREPORTED_LOADS.append(classifier.handle)
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
        while _UNREPORTED_LOADS:
            _UNREPORTED_LOADS.pop()
            Metrics.counter(METRICS_NAMESPACE, "module_loads").inc()
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


def _failed_batch_errors(failed: Tuple[DecodedBatch, BaseException]
                         ) -> Iterable:
    """RunInference's dead letter (batch, exception) → one ErrorRecord per
    image, so a failed batch loses nothing."""
    batch, exc = failed
    for uri in batch.uris:
        yield error_record(uri, STAGE_CLASSIFY, exc)


class Classify(beam.PTransform):
    """PCollection[DecodedBatch] →
    {"results": PredictionResult, ERRORS_TAG: ErrorRecord}."""

    def __init__(self, handler: HubClassifierHandler):
        super().__init__()
        self._handler = handler

    def expand(self, images):
        results, failures = (
            images
            | "RunInference" >> RunInference(self._handler)
            .with_exception_handling())
        errors = (failures.failed_inferences
                  | "FailedBatchErrors" >> beam.FlatMap(_failed_batch_errors))
        return {"results": results, ERRORS_TAG: errors}
