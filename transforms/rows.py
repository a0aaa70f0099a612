"""Step 4a: a classified batch of images → rows of the labels schema, as one
Arrow RecordBatch (columns built from the batch's arrays, not per image)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import PredictionResult

from transforms.schema import LABELS_SCHEMA


def _lists(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """[n, k] array → list<value_type> column of n lists of k values."""
    rows, width = values.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(
        offsets, pa.array(values.reshape(-1), type=value_type))


def _repeated(value, rows: int, value_type: pa.DataType) -> pa.Array:
    return pa.array([value] * rows, type=value_type)


def label_batch(result: PredictionResult, backend: str = "tf"
                ) -> pa.RecordBatch:
    """PredictionResult(DecodedBatch.facts, Classifications) → LABELS_SCHEMA
    rows."""
    images, answers = result.example, result.inference
    rows = len(images)
    schema = LABELS_SCHEMA
    embedding_type = schema.field("embedding").type
    columns = {
        "uri": pa.array(images.uris, type=pa.string()),
        "label": pa.array(answers.top_k_labels[:, 0], type=pa.string()),
        "score": pa.array(answers.top_k_scores[:, 0], type=pa.float32()),
        "top_k_indices": _lists(answers.top_k_indices, pa.int32()),
        "top_k_labels": _lists(answers.top_k_labels, pa.string()),
        "top_k_scores": _lists(answers.top_k_scores, pa.float32()),
        "embedding": (pa.nulls(rows, embedding_type)
                      if answers.embeddings is None else
                      _lists(answers.embeddings, pa.float32())),
        "width": pa.array(images.widths, type=pa.int32()),
        "height": pa.array(images.heights, type=pa.int32()),
        "format": pa.array(images.formats, type=pa.string()),
        "model": _repeated(result.model_id, rows, pa.string()),
        "backend": _repeated(backend, rows, pa.string()),
        "labeled_at": _repeated(answers.labeled_at, rows,
                                schema.field("labeled_at").type),
    }
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema],
                                      schema=schema)
