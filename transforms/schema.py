"""The output schemas: the one place that defines what the Parquet files hold.

labels-*.parquet, one row per labeled image:

| column         | type                  | meaning                                          |
|----------------|-----------------------|--------------------------------------------------|
| uri            | string                | input: absolute local path, or URI as given      |
| label          | string                | top-1 class name                                 |
| score          | float32               | top-1 softmax probability                        |
| top_k_indices  | list<int32>           | top-k class indices (0..1000; 0 = background)    |
| top_k_labels   | list<string>          | their class names                                |
| top_k_scores   | list<float32>         | their softmax probabilities, descending          |
| embedding      | list<float32> (1280)  | image feature vector; null if the module has none|
| width, height  | int32                 | upright size in pixels, before cropping          |
| format         | string                | decoder's format name (JPEG, PNG, ...)           |
| model          | string                | module handle the labels came from               |
| backend        | string                | inference backend (tf, xnnpack)                  |
| labeled_at     | timestamp[us, UTC]    | when the batch was classified                    |

errors-*.parquet, one row per image that could not be labeled:

| column     | type               | meaning                                        |
|------------|--------------------|------------------------------------------------|
| uri        | string             | input URI                                      |
| stage      | string             | read, decode or classify                       |
| error_type | string             | e.g. FileTooLarge, TooManyPixels, OSError      |
| message    | string             | one line saying what was wrong                 |
| failed_at  | timestamp[us, UTC] | when it was recorded                           |
"""
from __future__ import annotations

import datetime
from typing import Any, BinaryIO, Dict, List, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.errors import ErrorRecord

LABELS_PREFIX = "labels"
ERRORS_PREFIX = "errors"
PARQUET_SUFFIX = ".parquet"

_TIMESTAMP = pa.timestamp("us", tz="UTC")

LABELS_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("top_k_indices", pa.list_(pa.int32())),
    pa.field("top_k_labels", pa.list_(pa.string())),
    pa.field("top_k_scores", pa.list_(pa.float32())),
    pa.field("embedding", pa.list_(pa.float32())),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("format", pa.string()),
    pa.field("model", pa.string()),
    pa.field("backend", pa.string()),
    pa.field("labeled_at", _TIMESTAMP),
])

ERRORS_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("stage", pa.string()),
    pa.field("error_type", pa.string()),
    pa.field("message", pa.string()),
    pa.field("failed_at", _TIMESTAMP),
])


def dictionary_columns(schema: pa.Schema) -> List[str]:
    """Parquet column paths worth dictionary-encoding: the repetitive
    strings. Dictionary-encoding floats (scores, 1280-d embeddings) only
    costs CPU, and unique strings (uri, message) gain nothing."""
    unique = {"uri", "message"}
    columns = []
    for field in schema:
        if field.name in unique:
            continue
        if pa.types.is_string(field.type):
            columns.append(field.name)
        elif pa.types.is_list(field.type) and \
                pa.types.is_string(field.type.value_type):
            columns.append(f"{field.name}.list.element")
    return columns


def statistics_columns(schema: pa.Schema) -> List[str]:
    """Parquet column paths worth min/max statistics: all but the
    embedding. Its min/max over 1280 floats per row says nothing a reader
    could filter on, and computing them costs about as much as the rest of
    the writing."""
    columns = []
    for field in schema:
        if field.name == "embedding":
            continue
        columns.append(f"{field.name}.list.element"
                       if pa.types.is_list(field.type) else field.name)
    return columns


def read_columns(handle: BinaryIO, columns: Sequence[str]) -> pa.Table:
    """Some columns of one Parquet file, from an open (Python) file object.

    Read on the calling thread only: no dataset scanner, no pre-buffering,
    no thread pool. `pq.read_table` reads through Arrow's I/O threads even
    with use_threads=False, and an Arrow thread that takes the GIL to call
    the Python file while the interpreter exits aborts the process
    ("terminate called without an active exception"; apache/arrow#34314).
    """
    return pq.ParquetFile(handle, pre_buffer=False).read(
        columns=list(columns), use_threads=False)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def error_row(record: ErrorRecord) -> Dict[str, Any]:
    """An ErrorRecord as a row of ERRORS_SCHEMA."""
    return {"uri": record.uri, "stage": record.stage,
            "error_type": record.error_type, "message": record.message,
            "failed_at": utc_now()}
