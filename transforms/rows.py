"""Step 4a: a classified batch of images → rows of the labels schema, as one
Arrow RecordBatch (columns built from the batch's arrays, not per image)."""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

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


class Classified(NamedTuple):
    """What a labels column is computed from: one classified batch."""
    images: Any        # DecodedBatch facts: uris, widths, heights, formats
    answers: Any       # Classifications
    model_id: str
    backend: str

    @property
    def rows(self) -> int:
        return len(self.images)


def _field(name: str) -> pa.DataType:
    return LABELS_SCHEMA.field(name).type


#: How each column of LABELS_SCHEMA is computed from a classified batch.
#: Adding a column: its field in LABELS_SCHEMA and its entry here.
COLUMNS: Dict[str, Callable[[Classified], pa.Array]] = {
    "uri": lambda c: pa.array(c.images.uris, type=pa.string()),
    "label": lambda c: pa.array(c.answers.top_k_labels[:, 0],
                                type=pa.string()),
    "score": lambda c: pa.array(c.answers.top_k_scores[:, 0],
                                type=pa.float32()),
    "top_k_indices": lambda c: _lists(c.answers.top_k_indices, pa.int32()),
    "top_k_labels": lambda c: _lists(c.answers.top_k_labels, pa.string()),
    "top_k_scores": lambda c: _lists(c.answers.top_k_scores, pa.float32()),
    "embedding": lambda c: (
        pa.nulls(c.rows, _field("embedding"))
        if c.answers.embeddings is None else
        _lists(c.answers.embeddings, pa.float32())),
    "width": lambda c: pa.array(c.images.widths, type=pa.int32()),
    "height": lambda c: pa.array(c.images.heights, type=pa.int32()),
    "format": lambda c: pa.array(c.images.formats, type=pa.string()),
    "model": lambda c: _repeated(c.model_id, c.rows, pa.string()),
    "backend": lambda c: _repeated(c.backend, c.rows, pa.string()),
    "labeled_at": lambda c: _repeated(c.answers.labeled_at, c.rows,
                                      _field("labeled_at")),
}


def label_batch(result: PredictionResult, backend: str = "tf",
                schema: Optional[pa.Schema] = None) -> pa.RecordBatch:
    """PredictionResult(DecodedBatch.facts, Classifications) → rows of
    `schema` (default LABELS_SCHEMA), each column from COLUMNS."""
    schema = schema or LABELS_SCHEMA
    classified = Classified(result.example, result.inference,
                            result.model_id, backend)
    return pa.RecordBatch.from_arrays(
        [COLUMNS[field.name](classified) for field in schema], schema=schema)
