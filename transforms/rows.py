"""Step 4a: a classified image → one row of the labels schema."""
from __future__ import annotations

from typing import Any, Dict

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult

from transforms import tally
from transforms.errors import METRICS_NAMESPACE


def label_row(result: PredictionResult, backend: str = "tf"
              ) -> Dict[str, Any]:
    """PredictionResult(DecodedImage, Classification) → LABELS_SCHEMA row.

    NumPy arrays are handed to pyarrow as they are (no per-value lists).
    """
    image, answer = result.example, result.inference
    return {
        "uri": image.uri,
        "label": answer.top_k_labels[0],
        "score": float(answer.top_k_scores[0]),
        "top_k_indices": answer.top_k_indices,
        "top_k_labels": list(answer.top_k_labels),
        "top_k_scores": answer.top_k_scores,
        "embedding": answer.embedding,
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "model": result.model_id,
        "backend": backend,
        "labeled_at": answer.labeled_at,
    }


class ToLabelRows(beam.PTransform):
    """PCollection[PredictionResult] → PCollection[dict] (LABELS_SCHEMA)."""

    def __init__(self, backend: str = "tf"):
        super().__init__()
        self._backend = backend

    def expand(self, results):
        return results | "ToRow" >> beam.ParDo(_ToLabelRow(self._backend))


class _ToLabelRow(beam.DoFn):
    def __init__(self, backend: str):
        self._backend = backend
        self._labeled = Metrics.counter(METRICS_NAMESPACE, "images_labeled")

    def process(self, result: PredictionResult):
        self._labeled.inc()
        tally.add("labeled")
        yield label_row(result, self._backend)
